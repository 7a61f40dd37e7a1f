using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using SafeSockets.Diagnostics;

namespace SafeSockets.Benchmarks.Teardown;

/// <summary><c>soak</c> and <c>idle</c>: bounded load runs that check nothing leaks (RSTs, CLOSE_WAIT, descriptors, memory).</summary>
internal static class ReliabilityCommands
{
    /// <summary>N connect/exchange/graceful-close cycles per teardown order (SafeSockets both ends, server on ManagedListener),
    /// K in flight; checks each order for resets, errors, CLOSE_WAIT, descriptors and managed heap growth per cycle.</summary>
    public static async Task<int> SoakAsync(string[] args)
    {
        CheckOptions(args, "soak", "--cycles", "--concurrency", "--ports", "--warmup", "--pattern", "--max-heap-growth-per-cycle");
        int cycles = IntArg(args, "--cycles", 100_000);
        int concurrency = IntArg(args, "--concurrency", 16);
        int ports = IntArg(args, "--ports", 4);
        int warmup = IntArg(args, "--warmup", 500);
        int maxGrowth = IntArg(args, "--max-heap-growth-per-cycle", 100);
        string pattern = StringArg(args, "--pattern", "all");
        IReadOnlyList<string> patterns = pattern == "all" ? SoakPattern.Names
            : SoakPattern.Names.Contains(pattern) ? [pattern]
            : throw new ArgumentException($"--pattern must be client-first, server-first, both or all; got '{pattern}'.");

        Console.WriteLine($"soak: {string.Join(", ", patterns)}: {cycles:N0} graceful cycles each (ManagedConnection both ends, ManagedListener server), "
            + $"{concurrency} in flight, {ports} fresh ports per pattern, {warmup} warm-up cycles not counted; fails over {maxGrowth} B/cycle of managed heap growth; "
            + $"{Environment.ProcessorCount} cores, .NET {Environment.Version}.");
        var results = new List<SoakResult>();
        foreach (string name in patterns)
        {
            SoakResult result = await SoakPatternAsync(SoakPattern.Create(name), cycles, concurrency, ports, warmup, maxGrowth);
            results.Add(result);
            Console.WriteLine($"soak {result.Pattern}: {result.Cycles:N0} cycles in {result.Elapsed.TotalSeconds:N1} s; RST {result.Resets} (kernel OutRsts {result.Kernel.OutRsts}); "
                + $"errors {result.Errors}; CLOSE_WAIT {result.CloseWait}; descriptors {result.Before.Descriptors} -> {result.After.Descriptors}; "
                + $"heap {result.Before.ManagedBytes / 1024.0:N0} -> {result.After.ManagedBytes / 1024.0:N0} KiB = {result.HeapGrowthPerCycle:+#,0.0;-#,0.0;0.0} B/cycle: "
                + (result.Failures.Count == 0 ? "OK" : $"FAILED ({string.Join("; ", result.Failures)})"));
        }

        Console.WriteLine();
        Console.WriteLine($"| measure | {string.Join(" | ", results.Select(r => r.Pattern))} |");
        Console.WriteLine($"|---|{string.Concat(results.Select(_ => "---:|"))}");
        Row("cycles", r => $"{r.Cycles:N0} in {r.Elapsed.TotalSeconds:N1} s");
        Row("cycles/s (overall; median chunk)", r => $"{r.Cycles / r.Elapsed.TotalSeconds:N0}; {r.MedianChunkRate:N0}");
        Row("resets seen by peers", r => $"{r.Resets}");
        Row("kernel OutRsts / EstabResets / TIME_WAIT overflow (system-wide delta)", r => $"{r.Kernel.OutRsts} / {r.Kernel.EstabResets} / {r.Kernel.TimeWaitOverflow:N0}");
        Row("errors (incl. non-graceful closes)", r => $"{r.Errors}");
        Row("CLOSE_WAIT left on the server ports", r => $"{r.CloseWait}");
        Row("TIME_WAIT on the server ports (60 s each)", r => $"{r.TimeWait:N0}");
        Row("open descriptors before / after", r => $"{r.Before.Descriptors} / {r.After.Descriptors}");
        Row("managed heap before / after (after full GC)", r => $"{r.Before.ManagedBytes / 1024.0:N0} KiB / {r.After.ManagedBytes / 1024.0:N0} KiB");
        Row("**managed heap growth per cycle**", r => $"{r.HeapGrowthPerCycle:+#,0.0;-#,0.0;0.0} B");
        Row("working set before / after", r => $"{r.Before.WorkingSet / 1024 / 1024:N0} MiB / {r.After.WorkingSet / 1024 / 1024:N0} MiB");
        Row("result", r => r.Failures.Count == 0 ? "OK" : "FAILED");

        List<SoakResult> failed = [.. results.Where(r => r.Failures.Count > 0)];
        foreach (SoakResult r in failed)
        {
            Console.WriteLine($"soak: FAILED: {r.Pattern}: {string.Join("; ", r.Failures)}");
        }

        Console.WriteLine(failed.Count == 0
            ? $"soak: OK (every pattern: 0 RST, 0 errors, 0 CLOSE_WAIT, descriptors back to baseline, heap growth at most {maxGrowth} B/cycle)"
            : $"soak: FAILED ({string.Join(", ", failed.Select(r => r.Pattern))})");
        return failed.Count == 0 ? 0 : 1;

        void Row(string measure, Func<SoakResult, string> value) =>
            Console.WriteLine($"| {measure} | {string.Join(" | ", results.Select(value))} |");
    }

    /// <summary>One pattern on listener ports of its own (TIME_WAIT left by an earlier pattern is not in its way):
    /// warm-up (not counted: pools fill), heap and descriptors measured, the cycles in chunks, measured again.</summary>
    private static async Task<SoakResult> SoakPatternAsync(SoakPattern strategy, int cycles, int concurrency, int ports, int warmup, int maxGrowth)
    {
        int chunk = Math.Min(cycles, 10_000);
        int chunks = (cycles + chunk - 1) / chunk;
        using var stop = new CancellationTokenSource();
        IReadOnlyList<EndPoint> endPoints = strategy.Start(ports, stop.Token);
        int[] portNumbers = [.. endPoints.Select(e => ((IPEndPoint)e).Port)];
        var settings = new TeardownCommand.Settings { Cycles = warmup, Concurrency = concurrency, Ports = ports, Rounds = chunks };
        TeardownCommand.RoundResult warm = await TeardownCommand.RunRoundAsync(strategy, endPoints, 0, settings);

        Snapshot before = await Snapshot.TakeAsync();
        KernelCounters kernelBefore = KernelCounters.Read();
        long unexpectedBefore = strategy.Unexpected;
        long resetsInWarmup = warm.Effects.PeerResets;
        var clock = Stopwatch.StartNew();
        long resets = 0, errors = 0, done = 0;
        var rates = new List<double>();
        while (done < cycles)
        {
            int n = (int)Math.Min(chunk, cycles - done);
            TeardownCommand.RoundResult r = await TeardownCommand.RunRoundAsync(strategy, endPoints, rates.Count + 1, settings with { Cycles = n });
            resets += r.Effects.PeerResets;
            errors += r.Effects.Errors;
            done += n;
            rates.Add(r.CyclesPerSecond);
        }

        TimeSpan elapsed = clock.Elapsed;
        KernelCounters kernel = KernelCounters.Read() - kernelBefore;
        Snapshot after = await Snapshot.TakeAsync();
        int closeWait = TcpSocketTable.Count(TcpState.CloseWait, portNumbers);
        int timeWait = TcpSocketTable.Count(TcpState.TimeWait, portNumbers);
        errors += strategy.Unexpected - unexpectedBefore;
        await stop.CancelAsync();
        await strategy.StopListenersAsync(TimeSpan.FromSeconds(1)).WaitAsync(TimeSpan.FromSeconds(30));

        double growth = (after.ManagedBytes - before.ManagedBytes) / (double)done;
        var failures = new List<string>();
        if (resets > 0 || kernel.OutRsts > 0 || resetsInWarmup > 0)
        {
            failures.Add($"{resets} resets seen by peers ({resetsInWarmup} in the warm-up), kernel OutRsts {kernel.OutRsts}");
        }

        if (errors > 0)
        {
            failures.Add($"{errors} errors");
        }

        if (closeWait > 0)
        {
            failures.Add($"{closeWait} CLOSE_WAIT left");
        }

        if (after.Descriptors > before.Descriptors + 8)
        {
            failures.Add($"descriptors grew {before.Descriptors} -> {after.Descriptors}");
        }

        if (growth > maxGrowth)
        {
            failures.Add($"managed heap grew {growth:N1} B/cycle (over {maxGrowth})");
        }

        return new SoakResult(strategy.Pattern, done, elapsed, rates.Order().ElementAt(rates.Count / 2), resets, kernel, errors, closeWait, timeWait, before, after, growth, failures);
    }

    private sealed record SoakResult(
        string Pattern,
        long Cycles,
        TimeSpan Elapsed,
        double MedianChunkRate,
        long Resets,
        KernelCounters Kernel,
        long Errors,
        int CloseWait,
        int TimeWait,
        Snapshot Before,
        Snapshot After,
        double HeapGrowthPerCycle,
        IReadOnlyList<string> Failures);

    private const int IdleMemoryLimit = 4096;

    /// <summary>N concurrent idle connections on one ManagedListener (peers in a child process), then StopAsync(grace).</summary>
    public static async Task<int> IdleAsync(string[] args)
    {
        int count = IntArg(args, "--connections", 10_000);
        TimeSpan grace = TimeSpan.FromSeconds(IntArg(args, "--grace", 10));
        Console.WriteLine($"idle: {count} idle connections on one ManagedListener, then StopAsync({grace.TotalSeconds:0} s); peers in a child process (descriptor limit is per process).");

        var options = new ManagedListenerOptions { Backlog = 4096, MaxDrainingConnections = count };
        ManagedListener listener = ManagedListener.Start(new IPEndPoint(IPAddress.Loopback, 0), options);
        int port = ((IPEndPoint)listener.LocalEndPoint).Port;
        var accepted = new List<ManagedConnection>(count);
        Snapshot before = await Snapshot.TakeAsync();

        using Process peers = StartSelf($"idle-peers {port} {count}");
        Task<string> peersOutput = peers.StandardOutput.ReadToEndAsync();
        var clock = Stopwatch.StartNew();
        while (accepted.Count < count)
        {
            accepted.Add(await listener.AcceptAsync().AsTask().WaitAsync(TimeSpan.FromSeconds(60)));
        }

        Console.WriteLine($"accepted {count} in {clock.Elapsed.TotalSeconds:N1} s; active {listener.ActiveConnections}");
        Snapshot held = await Snapshot.TakeAsync();
        clock.Restart();
        await listener.StopAsync(grace).WaitAsync(grace + TimeSpan.FromSeconds(60));
        TimeSpan stopTime = clock.Elapsed;
        string report = await peersOutput.WaitAsync(TimeSpan.FromSeconds(120));
        await peers.WaitForExitAsync();

        int graceful = accepted.Count(c => c.Completion.IsCompletedSuccessfully && c.Completion.Result.Outcome == CloseOutcome.Graceful);
        int aborted = accepted.Count(c => c.Completion.IsCompletedSuccessfully && c.Completion.Result.Outcome == CloseOutcome.Aborted);
        Console.WriteLine();
        Console.WriteLine("| measure | value |");
        Console.WriteLine("|---|---:|");
        Console.WriteLine($"| idle connections held | {count:N0} |");
        double managedPerConnection = (held.ManagedBytes - before.ManagedBytes) / (double)count;
        Console.WriteLine($"| managed memory per idle connection | {managedPerConnection:N0} B |");
        Console.WriteLine($"| working set per idle connection | {(held.WorkingSet - before.WorkingSet) / (double)count:N0} B |");
        Console.WriteLine($"| StopAsync duration (grace {grace.TotalSeconds:0} s) | {stopTime.TotalMilliseconds:N0} ms |");
        Console.WriteLine($"| closed gracefully / aborted at the deadline | {graceful:N0} / {aborted:N0} |");
        Console.WriteLine($"| what the peers saw | {report.Trim()} |");
        // An idle connection must not hold a receive buffer (the loop waits with a zero-byte read): with one, it costs 6 KB.
        bool lean = managedPerConnection < IdleMemoryLimit;
        bool ok = report.Contains($"fin={count} reset=0", StringComparison.Ordinal) && stopTime < grace && listener.ActiveConnections == 0 && lean;
        Console.WriteLine(ok
            ? "idle: OK (every peer saw FIN, none RST, stop within the grace period, no receive buffer held while idle)"
            : $"idle: FAILED{(lean ? "" : $" (an idle connection costs {managedPerConnection:N0} B managed, over {IdleMemoryLimit:N0}: is a receive buffer held while idle?)")}");
        return ok ? 0 : 1;
    }

    /// <summary>The child side of <c>idle</c>: connects, then reads each connection until FIN or RST and reports the counts.</summary>
    public static async Task<int> IdlePeersAsync(string[] args)
    {
        int port = int.Parse(args[0], CultureInfo.InvariantCulture);
        int count = int.Parse(args[1], CultureInfo.InvariantCulture);
        var endPoint = new IPEndPoint(IPAddress.Loopback, port);
        var sockets = new Socket[count];
        using var gate = new SemaphoreSlim(200);
        await Task.WhenAll(Enumerable.Range(0, count).Select(async i =>
        {
            await gate.WaitAsync();
            try
            {
                sockets[i] = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
                await sockets[i].ConnectAsync(endPoint);
            }
            finally
            {
                gate.Release();
            }
        }));

        int fin = 0, reset = 0;
        await Task.WhenAll(sockets.Select(async s =>
        {
            byte[] buffer = new byte[16];
            try
            {
                while (await s.ReceiveAsync(buffer, SocketFlags.None) > 0)
                {
                }

                Interlocked.Increment(ref fin);
                s.Shutdown(SocketShutdown.Send); // a well-behaved peer answers our FIN with its own
            }
            catch (SocketException)
            {
                Interlocked.Increment(ref reset);
            }
        })).WaitAsync(TimeSpan.FromSeconds(120));

        foreach (Socket s in sockets)
        {
            s.Dispose();
        }

        Console.WriteLine($"fin={fin} reset={reset}");
        return 0;
    }

    private static Process StartSelf(string arguments)
    {
        string self = typeof(ReliabilityCommands).Assembly.Location;
        string host = Environment.ProcessPath!;
        bool viaDotnet = Path.GetFileNameWithoutExtension(host).Equals("dotnet", StringComparison.OrdinalIgnoreCase);
        var info = new ProcessStartInfo(host, viaDotnet ? $"\"{self}\" {arguments}" : arguments)
        {
            RedirectStandardOutput = true,
            UseShellExecute = false,
        };
        return Process.Start(info)!;
    }

    /// <summary>A text option (<c>--name value</c>).</summary>
    internal static string StringArg(string[] args, string name, string fallback)
    {
        int i = Array.IndexOf(args, name);
        if (i < 0)
        {
            return fallback;
        }

        return i + 1 < args.Length ? args[i + 1] : throw new ArgumentException($"{name} needs a value.");
    }

    /// <summary>Every argument is one of <paramref name="known"/> followed by its value: a misspelt option is an error, not ignored.</summary>
    internal static void CheckOptions(string[] args, string command, params string[] known)
    {
        for (int i = 0; i < args.Length; i += 2)
        {
            if (!known.Contains(args[i]))
            {
                throw new ArgumentException($"{command}: unknown option '{args[i]}'; known: {string.Join(", ", known)} (each followed by a value).");
            }
        }
    }

    /// <summary>A positive whole-number option (<c>--name N</c>); a bad value is an error, not silently the default.</summary>
    internal static int IntArg(string[] args, string name, int fallback)
    {
        int i = Array.IndexOf(args, name);
        if (i < 0)
        {
            return fallback;
        }

        return i + 1 < args.Length && int.TryParse(args[i + 1], NumberStyles.Integer, CultureInfo.InvariantCulture, out int value) && value > 0
            ? value
            : throw new ArgumentException($"{name} must be a positive whole number.");
    }

    private readonly record struct Snapshot(int Descriptors, long ManagedBytes, long WorkingSet)
    {
        public static async Task<Snapshot> TakeAsync()
        {
            // Let finalizers and pending closes run, then measure.
            await Task.Delay(200);
            GC.Collect();
            GC.WaitForPendingFinalizers();
            GC.Collect();
            int descriptors = Directory.Exists("/proc/self/fd") ? Directory.GetFiles("/proc/self/fd").Length : -1;
            using var process = Process.GetCurrentProcess();
            // Twice: the first full collection can still leave objects a finalizer or a completed close just let go.
            GC.GetTotalMemory(forceFullCollection: true);
            return new Snapshot(descriptors, GC.GetTotalMemory(forceFullCollection: true), process.WorkingSet64);
        }
    }
}
