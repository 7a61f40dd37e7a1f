using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using SafeSockets.Diagnostics;

namespace SafeSockets.Benchmarks.Teardown;

/// <summary><c>soak</c> and <c>idle</c>: bounded load runs that check nothing leaks (RSTs, CLOSE_WAIT, descriptors, memory).</summary>
internal static class ReliabilityCommands
{
    /// <summary>N connect/exchange/graceful-close cycles (SafeSockets both ends, server on ManagedListener), K in flight.</summary>
    public static async Task<int> SoakAsync(string[] args)
    {
        int cycles = IntArg(args, "--cycles", 100_000);
        int concurrency = IntArg(args, "--concurrency", 16);
        int ports = IntArg(args, "--ports", 4);
        int chunk = Math.Min(cycles, 10_000);

        Console.WriteLine($"soak: {cycles} graceful cycles (ManagedConnection both ends, ManagedListener server), {concurrency} in flight, {ports} ports; {Environment.ProcessorCount} cores, .NET {Environment.Version}.");
        var strategy = new ManagedGraceful();
        using var stop = new CancellationTokenSource();
        IReadOnlyList<EndPoint> endPoints = strategy.Start(ports, stop.Token);
        var settings = new TeardownCommand.Settings { Cycles = 500, Concurrency = concurrency, Ports = ports, Rounds = 1 };
        await TeardownCommand.RunRoundAsync(strategy, endPoints, 0, settings); // warm-up

        Snapshot before = await Snapshot.TakeAsync();
        KernelCounters kernelBefore = KernelCounters.Read();
        var clock = Stopwatch.StartNew();
        long resets = 0, errors = 0, done = 0;
        var rates = new List<double>();
        while (done < cycles)
        {
            int n = (int)Math.Min(chunk, cycles - done);
            TeardownCommand.RoundResult r = await TeardownCommand.RunRoundAsync(strategy, endPoints, (int)(done / chunk) + 1, settings with { Cycles = n });
            resets += r.Effects.PeerResets;
            errors += r.Effects.Errors;
            done += n;
            rates.Add(r.CyclesPerSecond);
        }

        TimeSpan elapsed = clock.Elapsed;
        int[] portNumbers = [.. endPoints.Select(e => ((IPEndPoint)e).Port)];
        KernelCounters kernel = KernelCounters.Read() - kernelBefore;
        Snapshot after = await Snapshot.TakeAsync();
        int closeWait = TcpSocketTable.Count(TcpState.CloseWait, portNumbers);
        int timeWait = TcpSocketTable.Count(TcpState.TimeWait, portNumbers);
        await stop.CancelAsync();

        Console.WriteLine();
        Console.WriteLine("| measure | value |");
        Console.WriteLine("|---|---:|");
        Console.WriteLine($"| cycles | {done:N0} in {elapsed.TotalSeconds:N1} s |");
        Console.WriteLine($"| cycles/s (overall; median of {rates.Count} chunks) | {done / elapsed.TotalSeconds:N0}; {rates.Order().ElementAt(rates.Count / 2):N0} |");
        Console.WriteLine($"| resets seen by peers | {resets} |");
        Console.WriteLine($"| kernel OutRsts / EstabResets (system-wide delta) | {kernel.OutRsts} / {kernel.EstabResets} |");
        Console.WriteLine($"| errors | {errors} |");
        Console.WriteLine($"| CLOSE_WAIT left on the server ports | {closeWait} |");
        Console.WriteLine($"| TIME_WAIT on the server ports (clients closed first; 60 s each) | {timeWait:N0} |");
        Console.WriteLine($"| open descriptors before / after | {before.Descriptors} / {after.Descriptors} |");
        Console.WriteLine($"| managed heap before / after (after full GC) | {before.ManagedBytes / 1024:N0} KiB / {after.ManagedBytes / 1024:N0} KiB |");
        Console.WriteLine($"| working set before / after | {before.WorkingSet / 1024 / 1024:N0} MiB / {after.WorkingSet / 1024 / 1024:N0} MiB |");

        bool ok = resets == 0 && kernel.OutRsts == 0 && errors == 0 && closeWait == 0
            && after.Descriptors <= before.Descriptors + 8
            && after.ManagedBytes <= before.ManagedBytes + 4 * 1024 * 1024;
        Console.WriteLine(ok ? "soak: OK (0 RST, 0 CLOSE_WAIT, descriptors and memory back to baseline)" : "soak: FAILED");
        return ok ? 0 : 1;
    }

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
            return new Snapshot(descriptors, GC.GetTotalMemory(forceFullCollection: true), process.WorkingSet64);
        }
    }
}
