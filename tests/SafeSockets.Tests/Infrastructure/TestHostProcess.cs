using System.Diagnostics;

namespace SafeSockets.Tests.Infrastructure;

/// <summary>Runs tests/SafeSockets.TestHost (built beside this assembly) in a process of its own: for what one process
/// cannot show (a private network namespace, a runtime setting read at start-up). It prints one fact per line,
/// "key=value"; the test judges them.</summary>
internal static class TestHostProcess
{
    /// <summary>Runs the host with <paramref name="arguments"/> and returns the facts it printed; fails unless it exited by
    /// itself with code 0 within <paramref name="exitWithin"/> (120 s if not given), and kills it if it did not.</summary>
    public static async Task<Dictionary<string, string>> RunAsync(string[] arguments, bool unshare = false, IReadOnlyDictionary<string, string>? environment = null, TimeSpan? exitWithin = null)
    {
        string host = AppContext.BaseDirectory.Replace("SafeSockets.Tests", "SafeSockets.TestHost", StringComparison.Ordinal);
        string dll = Path.Combine(host, "SafeSockets.TestHost.dll");
        Assert.True(File.Exists(dll), $"{dll} is missing (the test project builds it)");
        string dotnet = Environment.ProcessPath is { } path && Path.GetFileNameWithoutExtension(path) == "dotnet" ? path : "dotnet";

        ProcessStartInfo start = unshare
            ? new ProcessStartInfo("unshare", ["-n", dotnet, dll, .. arguments])
            : new ProcessStartInfo(dotnet, [dll, .. arguments]);
        start.RedirectStandardOutput = true;
        start.RedirectStandardError = true;
        start.UseShellExecute = false;
        foreach ((string key, string value) in environment ?? new Dictionary<string, string>())
        {
            start.Environment[key] = value;
        }

        TimeSpan bound = exitWithin ?? TimeSpan.FromSeconds(120);
        using Process process = Process.Start(start)!;

        // The output ends when the process does (killed below if it does not exit in time); read within a bound of its own.
        using var readTimeout = new CancellationTokenSource(bound + TimeSpan.FromSeconds(30));
        Task<string> output = process.StandardOutput.ReadToEndAsync(readTimeout.Token);
        Task<string> errors = process.StandardError.ReadToEndAsync(readTimeout.Token);
        using var timeout = new CancellationTokenSource(bound);
        try
        {
            await process.WaitForExitAsync(timeout.Token);
        }
        catch (OperationCanceledException)
        {
            process.Kill(entireProcessTree: true);
            Assert.Fail($"the host did not exit within {bound.TotalSeconds:F0} s and was killed. stdout: {await ReadOrNoteAsync(output)} stderr: {await ReadOrNoteAsync(errors)}");
        }

        string stdout = await output;
        Assert.True(process.ExitCode == 0, $"the host failed ({process.ExitCode}){(unshare ? "; unshare needs root" : "")}. stdout: {stdout} stderr: {await errors}");
        return stdout
            .Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
            .Select(line => line.Split('=', 2))
            .Where(pair => pair.Length == 2)
            .ToDictionary(pair => pair[0], pair => pair[1]);
    }

    private static async Task<string> ReadOrNoteAsync(Task<string> read)
    {
        try
        {
            return await read;
        }
        catch (OperationCanceledException)
        {
            return "(not read in time)";
        }
    }
}
