using System.Diagnostics;
using System.Globalization;

namespace SafeSockets.Benchmarks.Teardown;

/// <summary>Runs one measured round of a command in a child process of this program, optionally inside a fresh network
/// namespace (<c>unshare -n</c>, then the loopback brought up): its own loopback, TIME_WAIT table and reset counters.</summary>
internal static class ChildRuns
{
    /// <summary>Whether this machine lets us make a network namespace (root, util-linux's unshare, iproute2's ip).</summary>
    public static bool CanUnshare()
    {
        try
        {
            using Process? probe = Process.Start(new ProcessStartInfo("unshare", ["-n", "--", "ip", "link", "set", "lo", "up"])
            {
                RedirectStandardError = true,
                RedirectStandardOutput = true,
            });
            return probe is not null && probe.WaitForExit(10_000) && probe.ExitCode == 0;
        }
        catch (System.ComponentModel.Win32Exception)
        {
            return false;
        }
    }

    /// <summary>Runs this program with <paramref name="arguments"/>, bounded by <paramref name="timeout"/>; returns its
    /// standard output, or <see langword="null"/> (after saying why on standard error) if it failed or ran too long.</summary>
    public static async Task<string?> RunAsync(IEnumerable<string> arguments, bool networkNamespace, TimeSpan timeout, string what,
        IReadOnlyDictionary<string, string>? environment = null)
    {
        // Started as `dotnet SafeSockets.Benchmarks.dll` the host is dotnet and needs the assembly; started through the
        // apphost (`dotnet run`, or ./SafeSockets.Benchmarks) the process itself is the program.
        string self = Environment.ProcessPath ?? "dotnet";
        List<string> child = Path.GetFileNameWithoutExtension(self) == "dotnet"
            ? [self, typeof(ChildRuns).Assembly.Location, .. arguments]
            : [self, .. arguments];
        ProcessStartInfo start = networkNamespace
            ? new ProcessStartInfo("unshare", ["-n", "--", "sh", "-c", "ip link set lo up && exec \"$@\"", "sh", .. child])
            : new ProcessStartInfo(child[0], child.Skip(1));
        start.RedirectStandardOutput = true;
        start.RedirectStandardError = true;
        foreach ((string key, string value) in environment ?? new Dictionary<string, string>())
        {
            start.Environment[key] = value;
        }

        using Process process = Process.Start(start) ?? throw new InvalidOperationException($"could not start {what}");
        Task<string> output = process.StandardOutput.ReadToEndAsync();
        Task<string> error = process.StandardError.ReadToEndAsync();
        using var bound = new CancellationTokenSource(timeout);
        try
        {
            await process.WaitForExitAsync(bound.Token);
        }
        catch (OperationCanceledException)
        {
            process.Kill(entireProcessTree: true);
            Console.Error.WriteLine($"{what} did not finish within {timeout.TotalMinutes:N0} minutes; killed.");
            return null;
        }

        string stdout = await output;
        if (process.ExitCode != 0)
        {
            Console.Error.WriteLine($"{what} failed (exit code {process.ExitCode}):");
            Console.Error.WriteLine(stdout);
            Console.Error.WriteLine(await error);
            return null;
        }

        return stdout;
    }

    /// <summary>The lines of a child's output that start with <c>result </c>, split into fields.</summary>
    public static IEnumerable<string[]> Results(string stdout) =>
        stdout.Split('\n').Where(l => l.StartsWith("result ", StringComparison.Ordinal)).Select(l => l.Split(' ', StringSplitOptions.RemoveEmptyEntries));

    public static string Invariant(int value) => value.ToString(CultureInfo.InvariantCulture);
}

/// <summary>Reading <c>--option value</c> pairs: a missing or bad value is an error naming the option.</summary>
internal static class OptionValues
{
    public static string Next(string[] args, ref int i) =>
        i + 1 < args.Length ? args[++i] : throw new ArgumentException($"{args[i]} needs a value.");

    public static int NextPositive(string[] args, ref int i, string name)
    {
        string raw = Next(args, ref i);
        return int.TryParse(raw, NumberStyles.Integer, CultureInfo.InvariantCulture, out int n) && n > 0
            ? n
            : throw new ArgumentException($"{name} must be a positive whole number; got '{raw}'.");
    }
}
