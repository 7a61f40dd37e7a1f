using System.Diagnostics;

namespace SafeSockets.Tests;

/// <summary>A peer that vanishes without FIN or RST (power loss, a dropped NAT entry), for real: in a private network
/// namespace made for the run (`unshare -n`, as root), the loopback link is taken down under an established connection.
/// With keep-alive at 1 s / 1 s / 2 probes the kernel gives up after about 3 s and the connection ends by itself.</summary>
public sealed class VanishedPeerTests
{
    [Fact]
    public async Task PeerVanishes_KeepAliveGivesUp_ConnectionEndsByItselfAsPeerUnreachable()
    {
        if (!OperatingSystem.IsLinux())
        {
            return; // network namespaces are Linux's; CI runs on Linux as root and runs this test
        }

        // The host program sits beside this test assembly's folder, built in the same configuration.
        string host = AppContext.BaseDirectory.Replace("SafeSockets.Tests", "SafeSockets.TestHost", StringComparison.Ordinal);
        string dll = Path.Combine(host, "SafeSockets.TestHost.dll");
        Assert.True(File.Exists(dll), $"{dll} is missing (the test project builds it)");
        string dotnet = Environment.ProcessPath is { } path && Path.GetFileNameWithoutExtension(path) == "dotnet" ? path : "dotnet";

        var start = new ProcessStartInfo("unshare", ["-n", dotnet, dll, "vanished-peer"])
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        using Process process = Process.Start(start)!;
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(120));
        Task<string> output = process.StandardOutput.ReadToEndAsync(timeout.Token);
        Task<string> errors = process.StandardError.ReadToEndAsync(timeout.Token);
        try
        {
            await process.WaitForExitAsync(timeout.Token);
        }
        catch (OperationCanceledException)
        {
            process.Kill(entireProcessTree: true);
            throw;
        }

        string stdout = await output;
        Assert.True(process.ExitCode == 0, $"the host failed ({process.ExitCode}); unshare needs root. stdout: {stdout} stderr: {await errors}");
        Dictionary<string, string> facts = stdout
            .Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
            .Select(line => line.Split('=', 2))
            .Where(pair => pair.Length == 2)
            .ToDictionary(pair => pair[0], pair => pair[1]);

        Assert.Equal("1", facts["received"]);
        Assert.Equal(nameof(CloseOutcome.PeerUnreachable), facts["outcome"]);
        Assert.Equal("True", facts["peerClosed"]);
        Assert.Equal(nameof(ConnectionState.Closed), facts["state"]);
        Assert.Equal(nameof(PeerUnreachableException), facts["pendingRead"]);
        Assert.Equal(nameof(PeerUnreachableException), facts["laterSend"]);
        Assert.Equal("peer_unreachable", facts["metricOutcome"]);
        Assert.Contains("11", facts["logEvents"].Split(','));

        // 1 s idle + 2 probes 1 s apart: about 3 s; well under the 60 s the host waits.
        double seconds = double.Parse(facts["seconds"], System.Globalization.CultureInfo.InvariantCulture);
        Assert.InRange(seconds, 1.0, 30.0);
    }
}
