using System.Buffers;
using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using SafeSockets.Diagnostics;

namespace SafeSockets.Benchmarks.Teardown;

/// <summary><c>hotpath</c>: the library's own per-cycle cost against a minimal raw loop, nothing else in the way.
/// Each run is a fresh process in a fresh network namespace (<c>unshare -n</c>: its own loopback, TIME_WAIT table and
/// reset counters), raw and SafeSockets runs alternate pair by pair, and every ratio is taken within a pair.</summary>
/// <remarks>
/// The cycle is the issue's: connect, a 64-byte request, a 64-byte answer, both FINs, release. Client loops keep K
/// connections in flight (one each); each listener port has one accept loop; a "lock-step" run drives both ends of
/// one connection from one async method. The loops keep no per-cycle bookkeeping at all (buffers come from the shared
/// array pool), so what a run costs is the sockets' and the library's.
/// </remarks>
internal static class HotPathCommand
{
    private const string Usage = """
        hotpath [options]
          --ends a,b,...      what runs at each end (default raw,managed):
                              raw (raw Socket both ends, hand-written graceful), managed (ManagedConnection both ends,
                              server on ManagedListener), server (managed server, raw client), client (managed client,
                              raw server), harness (the teardown command's raw-graceful strategy and harness)
          --shape S           loop: client loops + accept loops (default); lockstep: both ends driven by one async
                              method, in the raw cycle's order (the client half-closes, the server reads to EOF and
                              closes, then the client closes); lockstep-close-first: the same, but the client starts
                              waiting for the server's FIN (CloseAsync, or a pending read) before the server reads
          --concurrency K     connections in flight (default 1)
          --cycles N          measured cycles per run (default 20000; 15000 more warm up first)
          --ports P           listener ports (default 4)
          --pairs R           runs of each kind, alternated (default 5)
          --requests N        requests (64 bytes, answered with 64) per connection (default 1; loop shape only)
          --pause-ms P        the client's pause between two requests on one connection (a keep-alive client's
                              think time; default none)
          --inline            every run with DOTNET_SYSTEM_NET_SOCKETS_INLINE_COMPLETIONS=1 (socket completions on the
                              runtime's event thread) and SafeSockets ends with UnsafePreferInlineScheduling (loop shape)
          --no-netns          run in this machine's network namespace (no unshare)
          --out DIR           also write hotpath.md there
        """;

    private const string InlineCompletionsVariable = "DOTNET_SYSTEM_NET_SOCKETS_INLINE_COMPLETIONS";

    private static readonly byte[] Request = new byte[Strategy.RequestBytes];
    private static readonly byte[] Response = new byte[Strategy.ResponseBytes];

    /// <summary>Orchestrates: starts one child run per kind per pair and reports medians and within-pair ratios.</summary>
    public static async Task<int> RunAsync(string[] args)
    {
        Settings settings;
        try
        {
            settings = Settings.Parse(args);
        }
        catch (ArgumentException ex)
        {
            Console.Error.WriteLine(ex.Message);
            Console.Error.WriteLine(Usage);
            return 2;
        }

        bool netns = settings.NetworkNamespace && ChildRuns.CanUnshare();
        Console.WriteLine($"hotpath: {string.Join(", ", settings.Ends)}; {settings.Shape}, {settings.Concurrency} in flight, {settings.Ports} ports, "
            + (settings.Requests > 1 ? $"{settings.Requests} requests per connection{(settings.PauseMilliseconds > 0 ? $" {settings.PauseMilliseconds} ms apart" : "")}, " : "")
            + $"{settings.Cycles:N0} cycles a run after at least {Settings.Warmup:N0} warm-up (until compilation settles), {settings.Pairs} alternating runs each, "
            + (netns ? "each run a fresh process in a fresh network namespace" : "each run a fresh process (shared network namespace)")
            + $"; {Environment.ProcessorCount} cores, .NET {Environment.Version}.");
        var runs = settings.Ends.ToDictionary(e => e, _ => new List<RunResult>());
        for (int pair = 1; pair <= settings.Pairs; pair++)
        {
            foreach (string ends in settings.Ends)
            {
                RunResult? result = await RunChildAsync(ends, settings, netns);
                if (result is null)
                {
                    return 1;
                }

                runs[ends].Add(result.Value);
                Console.WriteLine($"pair {pair}/{settings.Pairs} {ends,-8} {result.Value.CyclesPerSecond,9:N0} cycles/s  CPU {result.Value.CpuMicrosPerCycle,6:N1} us/cycle  "
                    + $"alloc {result.Value.AllocatedPerCycle,7:N0} B/cycle  OutRsts {result.Value.OutRsts}  CLOSE_WAIT {result.Value.CloseWait}  errors {result.Value.Errors}");
            }
        }

        string baseline = settings.Ends[0];
        string markdown = Markdown(settings, runs, baseline, netns);
        Console.WriteLine();
        Console.WriteLine(markdown);
        if (settings.OutputDirectory is { } dir)
        {
            Directory.CreateDirectory(dir);
            await File.WriteAllTextAsync(Path.Combine(dir, "hotpath.md"), markdown);
        }

        // A graceful cycle that reset, left CLOSE_WAIT or failed is a broken run, not a figure.
        bool broken = runs.Values.SelectMany(r => r).Any(r => r.OutRsts > 0 || r.CloseWait > 0 || r.Errors > 0);
        if (broken)
        {
            Console.Error.WriteLine("hotpath: FAILED: a run saw resets, CLOSE_WAIT or errors (see above).");
        }

        return broken ? 1 : 0;
    }

    private static string Markdown(Settings settings, Dictionary<string, List<RunResult>> runs, string baseline, bool netns)
    {
        var text = new System.Text.StringBuilder();
        string keepAlive = (settings.Requests > 1 ? $" --requests {settings.Requests}" : "") + (settings.PauseMilliseconds > 0 ? $" --pause-ms {settings.PauseMilliseconds}" : "");
        text.AppendLine(CultureInfo.InvariantCulture, $"`hotpath --shape {settings.Shape} --concurrency {settings.Concurrency} --cycles {settings.Cycles} --pairs {settings.Pairs}{keepAlive}` "
            + $"({(netns ? "fresh network namespace per run" : "shared network namespace")}); medians of {settings.Pairs} runs, ratios against `{baseline}` taken within each pair, then the median:");
        text.AppendLine();
        text.AppendLine("| ends | cycles/s | ratio | CPU us/cycle | CPU ratio | alloc B/cycle | OutRsts | CLOSE_WAIT | errors |");
        text.AppendLine("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        List<RunResult> basis = runs[baseline];
        foreach ((string ends, List<RunResult> results) in runs)
        {
            double rate = Median(results.Select(r => r.CyclesPerSecond));
            double cpu = Median(results.Select(r => r.CpuMicrosPerCycle));
            double rateRatio = Median(results.Select((r, i) => r.CyclesPerSecond / basis[i].CyclesPerSecond));
            double cpuRatio = Median(results.Select((r, i) => r.CpuMicrosPerCycle / basis[i].CpuMicrosPerCycle));
            text.AppendLine(CultureInfo.InvariantCulture,
                $"| {ends} | {rate:N0} ({results.Min(r => r.CyclesPerSecond):N0}-{results.Max(r => r.CyclesPerSecond):N0}) | {rateRatio:N2} | {cpu:N1} | {cpuRatio:N2} | "
                + $"{Median(results.Select(r => r.AllocatedPerCycle)):N0} | {results.Sum(r => r.OutRsts)} | {results.Max(r => r.CloseWait)} | {results.Sum(r => r.Errors)} |");
        }

        return text.ToString();
    }

    private static double Median(IEnumerable<double> values)
    {
        double[] sorted = [.. values.Order()];
        return sorted.Length == 0 ? double.NaN : sorted.Length % 2 == 1 ? sorted[sorted.Length / 2] : (sorted[(sorted.Length / 2) - 1] + sorted[sorted.Length / 2]) / 2;
    }

    private static async Task<RunResult?> RunChildAsync(string ends, Settings settings, bool netns)
    {
        string? stdout = await ChildRuns.RunAsync(
            ["hotpath-run", "--ends", ends, "--shape", settings.Shape, "--concurrency", ChildRuns.Invariant(settings.Concurrency),
                "--cycles", ChildRuns.Invariant(settings.Cycles), "--ports", ChildRuns.Invariant(settings.Ports),
                "--requests", ChildRuns.Invariant(settings.Requests), .. (settings.PauseMilliseconds > 0 ? (string[])["--pause-ms", ChildRuns.Invariant(settings.PauseMilliseconds)] : []),
                .. (settings.Inline ? (string[])["--inline"] : [])],
            netns, TimeSpan.FromMinutes(5), $"hotpath: the {ends} run",
            settings.Inline ? new Dictionary<string, string> { [InlineCompletionsVariable] = "1" } : null);
        string[]? result = stdout is null ? null : ChildRuns.Results(stdout).LastOrDefault();
        if (stdout is not null && result is null)
        {
            Console.Error.WriteLine($"hotpath: the {ends} run printed no result:");
            Console.Error.WriteLine(stdout);
        }

        return result is null ? null : RunResult.Parse(string.Join(' ', result));
    }

    /// <summary>One measured run in this process (the child side of <see cref="RunAsync"/>).</summary>
    public static async Task<int> RunOneAsync(string[] args)
    {
        Settings settings = Settings.Parse(args);
        if (settings.Inline && Environment.GetEnvironmentVariable(InlineCompletionsVariable) != "1")
        {
            // Read by the runtime at start-up: a run that set it now would measure the default and call it inline.
            throw new ArgumentException($"--inline needs {InlineCompletionsVariable}=1 in the process's environment (hotpath sets it for its runs).");
        }

        string ends = settings.Ends.Single();

        // The warm-up runs on listeners of its own, disposed before the measured run starts on new ones. Its connections
        // (up to ~95,000 at 8 in flight, more for whichever kind compiles longer) leave their client ends in TIME_WAIT
        // for 60 s, and with the same 4 destination ports the measured cycles then had to find free ephemeral ports
        // among 4 x 28,232 mostly taken (the kernel walks the range and looks each candidate up): the measured window's
        // connect cost depended on how long that kind's warm-up had run. Toward new destination ports every source port
        // is free again.
        int warmupCycles;
        long compiledInWarmup;
        await using (Run warm = Run.Create(ends, settings))
        {
            (warmupCycles, compiledInWarmup) = await WarmUpAsync(warm);
        }

        await using Run run = Run.Create(ends, settings);
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"warm-up {warmupCycles:N0} cycles, {compiledInWarmup:N0} methods compiled"));

        GC.Collect();
        GC.WaitForPendingFinalizers();
        GC.Collect();
        KernelCounters kernelBefore = KernelCounters.Read();
        long allocatedBefore = GC.GetTotalAllocatedBytes(precise: true);
        TimeSpan cpuBefore = Process.GetCurrentProcess().TotalProcessorTime;
        long workItemsBefore = ThreadPool.CompletedWorkItemCount;
        long switchesBefore = ContextSwitches();
        int gen0Before = GC.CollectionCount(0), gen1Before = GC.CollectionCount(1), gen2Before = GC.CollectionCount(2);
        TimeSpan pauseBefore = GC.GetTotalPauseDuration();
        long start = Stopwatch.GetTimestamp();
        PerfControl("enable");
        await run.CyclesAsync(settings.Cycles);
        PerfControl("disable");
        TimeSpan elapsed = Stopwatch.GetElapsedTime(start);
        TimeSpan cpu = Process.GetCurrentProcess().TotalProcessorTime - cpuBefore;
        long allocated = GC.GetTotalAllocatedBytes(precise: true) - allocatedBefore;
        long workItems = ThreadPool.CompletedWorkItemCount - workItemsBefore;
        long switches = ContextSwitches() - switchesBefore;
        TimeSpan pause = GC.GetTotalPauseDuration() - pauseBefore;
        string collections = string.Create(CultureInfo.InvariantCulture,
            $"GC {GC.CollectionCount(0) - gen0Before}/{GC.CollectionCount(1) - gen1Before}/{GC.CollectionCount(2) - gen2Before} (gen0/1/2), paused {pause.TotalMilliseconds:N1} ms");

        // Server ends finish their closes after the client's cycle ends: wait (bounded) before counting what is left.
        int closeWait = 0;
        for (int i = 0; i < 500 && (run.Serving > 0 || (closeWait = TcpSocketTable.Count(TcpState.CloseWait, run.Ports)) > 0); i++)
        {
            await Task.Delay(10);
        }

        KernelCounters kernel = KernelCounters.Read() - kernelBefore;
        var result = run is HarnessRun harness
            ? new RunResult(harness.Last.CyclesPerSecond, harness.Last.CpuMicrosPerCycle, harness.Last.AllocatedPerCycle, kernel.OutRsts, closeWait, run.Errors)
            : new RunResult(settings.Cycles / elapsed.TotalSeconds, cpu.TotalMicroseconds / settings.Cycles, (double)allocated / settings.Cycles,
                kernel.OutRsts, closeWait, run.Errors);
        Console.WriteLine(result.Format());
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"thread-pool work items {(double)workItems / settings.Cycles:N2} per cycle, context switches {(double)switches / settings.Cycles:N2} per cycle, {collections}"));
        return 0;
    }

    /// <summary>Runs cycles until tiered compilation has settled: at least <see cref="Settings.Warmup"/> cycles, then batches
    /// until one of at least a second compiled at most a few methods (bounded: 1 minute more; the child run has 5).</summary>
    /// <remarks>15,000 cycles were not enough at 8 in flight: perf showed SafeSockets' run still executing tier-0 and
    /// instrumented code 5-6 s into the measured window (raw sockets: about 1 s), since it has more methods for the one
    /// background compiler thread to promote on a saturated machine; that was counted as the library's cost per cycle.
    /// A run of either kind is now measured only once compilation has settled.</remarks>
    private static async Task<(int Cycles, long Compiled)> WarmUpAsync(Run run)
    {
        // Settled: a batch of a second or more compiled at most this many methods (the rarely called ones, a timer's or
        // the lazy watch's, reach the runtime's 30 calls one by one for minutes; the hot ones are done by then).
        const int SettledCompiles = 5;
        long compiledBefore = System.Runtime.JitInfo.GetCompiledMethodCount();
        await run.CyclesAsync(Settings.Warmup);
        int cycles = Settings.Warmup;
        long started = Stopwatch.GetTimestamp();
        int batch = 2_000;
        while (Stopwatch.GetElapsedTime(started) < TimeSpan.FromMinutes(1))
        {
            long compiled = System.Runtime.JitInfo.GetCompiledMethodCount();
            long batchStart = Stopwatch.GetTimestamp();
            await run.CyclesAsync(batch);
            cycles += batch;
            TimeSpan took = Stopwatch.GetElapsedTime(batchStart);
            if (took < TimeSpan.FromSeconds(1))
            {
                // Batches of at least a second: the runtime waits 100 ms after the last new method before promoting any.
                batch = (int)Math.Min(100_000, batch * 2);
                continue;
            }

            if (System.Runtime.JitInfo.GetCompiledMethodCount() - compiled <= SettledCompiles)
            {
                break;
            }
        }

        return (cycles, System.Runtime.JitInfo.GetCompiledMethodCount() - compiledBefore);
    }

    /// <summary>Profiles exactly the measured cycles: with <c>SAFESOCKETS_PERF_CTL</c> naming the control FIFO of a
    /// <c>perf record -D -1 --control fifo:PATH</c> attached to this process, the recording is enabled for the measured
    /// cycles only (no warm-up, no JIT, no start-up or shutdown in the profile).</summary>
    private static void PerfControl(string command)
    {
        if (Environment.GetEnvironmentVariable("SAFESOCKETS_PERF_CTL") is { Length: > 0 } fifo)
        {
            File.WriteAllText(fifo, command + "\n");
        }
    }

    /// <summary>Voluntary and involuntary context switches of the whole process so far (getrusage; Linux).</summary>
    internal static long ContextSwitches()
    {
        if (!OperatingSystem.IsLinux())
        {
            return 0;
        }

        // struct rusage: two timevals (4 longs), then 14 longs; ru_nvcsw and ru_nivcsw are the last two.
        long[] usage = new long[18];
        return GetRUsage(0, usage) == 0 ? usage[16] + usage[17] : 0;
    }

    [System.Runtime.InteropServices.DllImport("libc", EntryPoint = "getrusage")]
    private static extern int GetRUsage(int who, [System.Runtime.InteropServices.Out] long[] usage);

    internal readonly record struct RunResult(double CyclesPerSecond, double CpuMicrosPerCycle, double AllocatedPerCycle, long OutRsts, int CloseWait, int Errors)
    {
        public string Format() => string.Create(CultureInfo.InvariantCulture,
            $"result {CyclesPerSecond:R} {CpuMicrosPerCycle:R} {AllocatedPerCycle:R} {OutRsts} {CloseWait} {Errors}");

        public static RunResult Parse(string line)
        {
            string[] f = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
            return new RunResult(double.Parse(f[1], CultureInfo.InvariantCulture), double.Parse(f[2], CultureInfo.InvariantCulture), double.Parse(f[3], CultureInfo.InvariantCulture),
                long.Parse(f[4], CultureInfo.InvariantCulture), int.Parse(f[5], CultureInfo.InvariantCulture), int.Parse(f[6], CultureInfo.InvariantCulture));
        }
    }

    internal sealed record Settings
    {
        // The least warm-up (WarmUpAsync goes on until compilation settles): with 2,000 the JIT's background thread still
        // took 11-14% of the measured CPU (more for SafeSockets, which has more methods to compile), counted as the
        // library's cost per cycle; with 15,000 alone, 8 in flight still ran tier-0 code seconds into the measured window.
        public const int Warmup = 15_000;

        public IReadOnlyList<string> Ends { get; private set; } = ["raw", "managed"];

        public string Shape { get; private set; } = "loop";

        public int Concurrency { get; private set; } = 1;

        public int Cycles { get; private set; } = 20_000;

        public int Ports { get; private set; } = 4;

        public int Pairs { get; private set; } = 5;

        public int Requests { get; private set; } = 1;

        public int PauseMilliseconds { get; private set; }

        public bool NetworkNamespace { get; private set; } = true;

        public bool Inline { get; private set; }

        public string? OutputDirectory { get; private set; }

        public static Settings Parse(string[] args)
        {
            var settings = new Settings();
            string[] known = ["raw", "managed", "server", "client", "harness"];
            for (int i = 0; i < args.Length; i++)
            {
                string Value() => OptionValues.Next(args, ref i);
                int Positive(string name) => OptionValues.NextPositive(args, ref i, name);

                switch (args[i])
                {
                    case "--ends":
                        string[] ends = Value().Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
                        string[] unknown = [.. ends.Where(e => !known.Contains(e))];
                        settings.Ends = unknown.Length == 0 && ends.Length > 0
                            ? ends
                            : throw new ArgumentException($"Unknown --ends {string.Join(", ", unknown)}. Known: {string.Join(", ", known)}.");
                        break;
                    case "--shape":
                        string shape = Value();
                        settings.Shape = shape is "loop" or "lockstep" or "lockstep-close-first"
                            ? shape
                            : throw new ArgumentException($"--shape must be loop, lockstep or lockstep-close-first; got '{shape}'.");
                        break;
                    case "--concurrency": settings.Concurrency = Positive("--concurrency"); break;
                    case "--cycles": settings.Cycles = Positive("--cycles"); break;
                    case "--ports": settings.Ports = Positive("--ports"); break;
                    case "--pairs": settings.Pairs = Positive("--pairs"); break;
                    case "--requests": settings.Requests = Positive("--requests"); break;
                    case "--pause-ms":
                        string pause = Value();
                        settings.PauseMilliseconds = int.TryParse(pause, NumberStyles.Integer, CultureInfo.InvariantCulture, out int ms) && ms >= 0
                            ? ms
                            : throw new ArgumentException($"--pause-ms must be 0 or a positive whole number; got '{pause}'.");
                        break;
                    case "--no-netns": settings.NetworkNamespace = false; break;
                    case "--inline": settings.Inline = true; break;
                    case "--out": settings.OutputDirectory = Value(); break;
                    default: throw new ArgumentException($"Unknown option {args[i]}.");
                }
            }

            if (settings.Shape != "loop" && settings.Requests > 1)
            {
                throw new ArgumentException("--requests runs in the loop shape only.");
            }

            if ((settings.Requests > 1 || settings.PauseMilliseconds > 0) && settings.Ends.Any(e => e == "harness"))
            {
                throw new ArgumentException("--ends harness runs the teardown harness's own cycle (one request): no --requests or --pause-ms.");
            }

            if (settings.PauseMilliseconds > 0 && settings.Requests == 1)
            {
                throw new ArgumentException("--pause-ms is the pause between two requests on one connection: give --requests 2 or more.");
            }

            // Each of the two bounded steps (warm-up, measure) must fit its 2 minutes: the pauses alone take this long at
            // least (Task.Delay runs on the kernel's coarse clock here: about 2 ms more than asked).
            double pausedSeconds = Math.Max(Warmup, settings.Cycles) * (settings.Requests - 1.0) * (settings.PauseMilliseconds > 0 ? settings.PauseMilliseconds + 2 : 0)
                / settings.Concurrency / 1000;
            if (pausedSeconds > 90)
            {
                throw new ArgumentException($"--requests {settings.Requests} --pause-ms {settings.PauseMilliseconds} at --concurrency {settings.Concurrency} would pause about "
                    + $"{pausedSeconds:N0} s per step ({Warmup:N0} warm-up cycles, then {settings.Cycles:N0}); each step is bounded at 2 minutes: raise --concurrency or lower --cycles.");
            }

            if (settings.Inline && (settings.Shape != "loop" || settings.Ends.Any(e => e == "harness")))
            {
                throw new ArgumentException("--inline runs the loop shape's raw and SafeSockets ends only.");
            }

            if (settings.Shape != "loop" && settings.Ends.Any(e => e == "harness"))
            {
                throw new ArgumentException("--ends harness runs the teardown harness, which has no lock-step shape.");
            }

            return settings;
        }
    }

    /// <summary>One kind of run: its listeners and its client side.</summary>
    private abstract class Run : IAsyncDisposable
    {
        private int _errors;
        private int _serving;

        protected Run(Settings settings) => Settings = settings;

        protected Settings Settings { get; }

        /// <summary>The SafeSockets ends' options: the defaults, or with --inline UnsafePreferInlineScheduling.</summary>
        protected ManagedConnectionOptions ConnectionOptions => _connectionOptions ??= Settings.Inline
            ? new ManagedConnectionOptions { UnsafePreferInlineScheduling = true }
            : ManagedConnectionOptions.Default;

        private ManagedConnectionOptions? _connectionOptions;

        public int[] Ports { get; protected set; } = [];

        public int Errors => Volatile.Read(ref _errors);

        public int Serving => Volatile.Read(ref _serving);

        protected CancellationTokenSource Stop { get; } = new();

        public static Run Create(string ends, Settings settings) => (ends, settings.Shape) switch
        {
            ("harness", _) => new HarnessRun(settings),
            (_, "lockstep" or "lockstep-close-first") => new LockstepRun(ends, settings),
            _ => new LoopRun(ends, settings),
        };

        /// <summary>Runs <paramref name="cycles"/> cycles, <see cref="Settings.Concurrency"/> at a time; bounded: a run
        /// that has not finished in 2 minutes throws (the child fails, the parent reports it).</summary>
        public abstract Task CyclesAsync(int cycles);

        public virtual async ValueTask DisposeAsync()
        {
            await Stop.CancelAsync();
            Stop.Dispose();
        }

        protected void Error() => Interlocked.Increment(ref _errors);

        protected void EnterServe() => Interlocked.Increment(ref _serving);

        protected void ExitServe() => Interlocked.Decrement(ref _serving);

        protected static Socket NewSocket() => new(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };

        protected static async ValueTask ReceiveExactlyAsync(Socket socket, int count, byte[] buffer)
        {
            for (int total = 0; total < count;)
            {
                int n = await socket.ReceiveAsync(buffer.AsMemory(0, count - total), SocketFlags.None);
                total += n > 0 ? n : throw new IOException("unexpected end of stream");
            }
        }

        protected static async ValueTask ReceiveExactlyAsync(ManagedConnection connection, int count, byte[] buffer)
        {
            for (int total = 0; total < count;)
            {
                int n = await connection.ReceiveAsync(buffer.AsMemory(0, count - total));
                total += n > 0 ? n : throw new IOException("unexpected end of stream");
            }
        }

        protected static async ValueTask ReadToEndAsync(Socket socket, byte[] buffer)
        {
            while (await socket.ReceiveAsync(buffer, SocketFlags.None) > 0)
            {
            }
        }

        protected static async ValueTask ReadToEndAsync(ManagedConnection connection, byte[] buffer)
        {
            while (await connection.ReceiveAsync(buffer) > 0)
            {
            }
        }

        /// <summary>Whether a request is followed by another on the same connection, after the pause (the keep-alive shape).</summary>
        private async ValueTask<bool> NextRequestAsync(int done)
        {
            if (done >= Settings.Requests)
            {
                return false;
            }

            if (Settings.PauseMilliseconds > 0)
            {
                await Task.Delay(Settings.PauseMilliseconds);
            }

            return true;
        }

        /// <summary>The raw client: connect, request, answer (and more of them with --requests), Shutdown(Send), read to
        /// EOF, Dispose.</summary>
        protected async Task RawClientAsync(EndPoint server, byte[] buffer)
        {
            using Socket client = NewSocket();
            await client.ConnectAsync(server);
            int done = 0;
            do
            {
                await client.SendAsync(Request, SocketFlags.None);
                await ReceiveExactlyAsync(client, Strategy.ResponseBytes, buffer);
            }
            while (await NextRequestAsync(++done));

            client.Shutdown(SocketShutdown.Send);
            await ReadToEndAsync(client, buffer);
        }

        /// <summary>The managed client: connect, request, answer (and more of them with --requests), CloseAsync (FIN,
        /// drain to the peer's FIN, release).</summary>
        protected async Task ManagedClientAsync(EndPoint server, byte[] buffer)
        {
            ManagedConnection client = await ManagedConnection.ConnectAsync(server, ConnectionOptions);
            int done = 0;
            do
            {
                await client.SendAsync(Request);
                await ReceiveExactlyAsync(client, Strategy.ResponseBytes, buffer);
            }
            while (await NextRequestAsync(++done));

            CloseResult result = await client.CloseAsync();
            if (result.Outcome != CloseOutcome.Graceful)
            {
                throw new IOException($"the client's close ended {result.Outcome}");
            }
        }

        /// <summary>The raw server: request, answer (for each request), read to the client's FIN, Shutdown(Send), Dispose.</summary>
        protected async Task RawServeAsync(Socket accepted, byte[] buffer)
        {
            using (accepted)
            {
                for (int i = 0; i < Settings.Requests; i++)
                {
                    await ReceiveExactlyAsync(accepted, Strategy.RequestBytes, buffer);
                    await accepted.SendAsync(Response, SocketFlags.None);
                }

                await ReadToEndAsync(accepted, buffer);
                accepted.Shutdown(SocketShutdown.Send);
            }
        }

        /// <summary>The managed server: request, answer (for each request), read to the client's FIN, CloseAsync.</summary>
        protected async Task ManagedServeAsync(ManagedConnection connection, byte[] buffer)
        {
            await using (connection)
            {
                for (int i = 0; i < Settings.Requests; i++)
                {
                    await ReceiveExactlyAsync(connection, Strategy.RequestBytes, buffer);
                    await connection.SendAsync(Response);
                }

                await ReadToEndAsync(connection, buffer);
                CloseResult result = await connection.CloseAsync();
                if (result.Outcome != CloseOutcome.Graceful)
                {
                    throw new IOException($"the server's close ended {result.Outcome}");
                }
            }
        }
    }

    /// <summary>Client loops (one connection in flight each) against one accept loop per listener port.</summary>
    private sealed class LoopRun : Run
    {
        private readonly List<EndPoint> _endPoints = [];
        private readonly List<IAsyncDisposable> _listeners = [];
        private readonly bool _managedClient;

        public LoopRun(string ends, Settings settings)
            : base(settings)
        {
            _managedClient = ends is "managed" or "client";
            bool managedServer = ends is "managed" or "server";
            for (int i = 0; i < settings.Ports; i++)
            {
                if (managedServer)
                {
                    ManagedListener listener = ManagedListener.Start(new IPEndPoint(IPAddress.Loopback, 0), new ManagedListenerOptions { Backlog = 1024, Connection = ConnectionOptions });
                    _listeners.Add(listener);
                    _endPoints.Add(listener.LocalEndPoint);
                    _ = AcceptManagedAsync(listener);
                }
                else
                {
                    Socket listener = NewSocket();
                    listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
                    listener.Listen(1024);
                    _listeners.Add(new SocketListener(listener));
                    _endPoints.Add(listener.LocalEndPoint!);
                    _ = AcceptRawAsync(listener);
                }
            }

            Ports = [.. _endPoints.Select(e => ((IPEndPoint)e).Port)];
        }

        public override async Task CyclesAsync(int cycles)
        {
            int next = -1;
            async Task ClientLoopAsync()
            {
                byte[] buffer = new byte[256];
                int i;
                while ((i = Interlocked.Increment(ref next)) < cycles)
                {
                    EndPoint server = _endPoints[i % _endPoints.Count];
                    try
                    {
                        await (_managedClient ? ManagedClientAsync(server, buffer) : RawClientAsync(server, buffer));
                    }
                    catch (Exception ex) when (ex is SocketException or IOException or ObjectDisposedException)
                    {
                        Error();
                    }
                }
            }

            Task[] loops = new Task[Settings.Concurrency];
            for (int k = 0; k < loops.Length; k++)
            {
                loops[k] = Task.Run(ClientLoopAsync);
            }

            await Task.WhenAll(loops).WaitAsync(TimeSpan.FromMinutes(2));
        }

        public override async ValueTask DisposeAsync()
        {
            await base.DisposeAsync();
            foreach (IAsyncDisposable listener in _listeners)
            {
                await listener.DisposeAsync();
            }
        }

        private async Task AcceptRawAsync(Socket listener)
        {
            while (true)
            {
                Socket accepted;
                try
                {
                    accepted = await listener.AcceptAsync();
                }
                catch (Exception ex) when (ex is SocketException or ObjectDisposedException)
                {
                    return;
                }

                accepted.NoDelay = true;
                _ = ServeRawAsync(accepted);
            }
        }

        private async Task ServeRawAsync(Socket accepted)
        {
            EnterServe();
            byte[] buffer = ArrayPool<byte>.Shared.Rent(256);
            try
            {
                await RawServeAsync(accepted, buffer);
            }
            catch (Exception ex) when (ex is SocketException or IOException or ObjectDisposedException)
            {
                Error();
            }
            finally
            {
                ArrayPool<byte>.Shared.Return(buffer);
                ExitServe();
            }
        }

        private async Task AcceptManagedAsync(ManagedListener listener)
        {
            while (true)
            {
                ManagedConnection connection;
                try
                {
                    // No token, as the raw accept loop: both end when their listener is disposed.
                    connection = await listener.AcceptAsync();
                }
                catch (Exception ex) when (ex is OperationCanceledException or ObjectDisposedException or InvalidOperationException)
                {
                    return;
                }

                _ = ServeManagedAsync(connection);
            }
        }

        private async Task ServeManagedAsync(ManagedConnection connection)
        {
            EnterServe();
            byte[] buffer = ArrayPool<byte>.Shared.Rent(256);
            try
            {
                await ManagedServeAsync(connection, buffer);
            }
            catch (Exception ex) when (ex is SocketException or IOException or ObjectDisposedException)
            {
                Error();
            }
            finally
            {
                ArrayPool<byte>.Shared.Return(buffer);
                ExitServe();
            }
        }

        private sealed class SocketListener(Socket socket) : IAsyncDisposable
        {
            public ValueTask DisposeAsync()
            {
                socket.Dispose();
                return ValueTask.CompletedTask;
            }
        }
    }

    /// <summary>One async method drives both ends of each connection, step by step (K such flows at once).</summary>
    private sealed class LockstepRun : Run
    {
        private readonly bool _managed;
        private readonly bool _closeFirst;
        private readonly Socket[] _rawListeners = [];
        private readonly ManagedListener[] _managedListeners = [];
        private readonly EndPoint[] _endPoints;

        public LockstepRun(string ends, Settings settings)
            : base(settings)
        {
            if (ends is not ("raw" or "managed"))
            {
                throw new ArgumentException("--shape lockstep runs raw or managed (both ends the same).");
            }

            // One listener per flow: a flow's accept is then its own connection.
            _managed = ends == "managed";
            _closeFirst = settings.Shape == "lockstep-close-first";
            if (_managed)
            {
                _managedListeners = [.. Enumerable.Range(0, settings.Concurrency).Select(_ => ManagedListener.Start(new IPEndPoint(IPAddress.Loopback, 0), new ManagedListenerOptions { Backlog = 16 }))];
                _endPoints = [.. _managedListeners.Select(l => l.LocalEndPoint)];
            }
            else
            {
                _rawListeners = [.. Enumerable.Range(0, settings.Concurrency).Select(_ =>
                {
                    Socket listener = NewSocket();
                    listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
                    listener.Listen(16);
                    return listener;
                })];
                _endPoints = [.. _rawListeners.Select(l => l.LocalEndPoint!)];
            }

            Ports = [.. _endPoints.Select(e => ((IPEndPoint)e).Port)];
        }

        public override async Task CyclesAsync(int cycles)
        {
            int next = -1;
            async Task FlowAsync(int flow)
            {
                byte[] clientBuffer = new byte[256];
                byte[] serverBuffer = new byte[256];
                while (Interlocked.Increment(ref next) < cycles)
                {
                    try
                    {
                        await (_managed ? ManagedCycleAsync(flow, clientBuffer, serverBuffer) : RawCycleAsync(flow, clientBuffer, serverBuffer));
                    }
                    catch (Exception ex) when (ex is SocketException or IOException or ObjectDisposedException)
                    {
                        Error();
                    }
                }
            }

            Task[] flows = new Task[Settings.Concurrency];
            for (int k = 0; k < flows.Length; k++)
            {
                int flow = k;
                flows[k] = Task.Run(() => FlowAsync(flow));
            }

            await Task.WhenAll(flows).WaitAsync(TimeSpan.FromMinutes(2));
        }

        public override async ValueTask DisposeAsync()
        {
            await base.DisposeAsync();
            foreach (Socket listener in _rawListeners)
            {
                listener.Dispose();
            }

            foreach (ManagedListener listener in _managedListeners)
            {
                await listener.DisposeAsync();
            }
        }

        private async Task RawCycleAsync(int flow, byte[] clientBuffer, byte[] serverBuffer)
        {
            using Socket client = NewSocket();
            Task connect = client.ConnectAsync(_endPoints[flow]);
            using Socket server = await _rawListeners[flow].AcceptAsync();
            await connect;
            server.NoDelay = true;
            await client.SendAsync(Request, SocketFlags.None);
            await ReceiveExactlyAsync(server, Strategy.RequestBytes, serverBuffer);
            await server.SendAsync(Response, SocketFlags.None);
            await ReceiveExactlyAsync(client, Strategy.ResponseBytes, clientBuffer);
            client.Shutdown(SocketShutdown.Send);
            if (_closeFirst)
            {
                // The client waits for the server's FIN from now on (a read pending), as a CloseAsync started here does.
                ValueTask clientEnd = ReadToEndAsync(client, clientBuffer);
                await ReadToEndAsync(server, serverBuffer);
                server.Shutdown(SocketShutdown.Send);
                await clientEnd;
            }
            else
            {
                await ReadToEndAsync(server, serverBuffer);
                server.Shutdown(SocketShutdown.Send);
                await ReadToEndAsync(client, clientBuffer);
            }
        }

        private async Task ManagedCycleAsync(int flow, byte[] clientBuffer, byte[] serverBuffer)
        {
            ValueTask<ManagedConnection> connect = ManagedConnection.ConnectAsync(_endPoints[flow]);
            await using ManagedConnection server = await _managedListeners[flow].AcceptAsync();
            await using ManagedConnection client = await connect;
            await client.SendAsync(Request);
            await ReceiveExactlyAsync(server, Strategy.RequestBytes, serverBuffer);
            await server.SendAsync(Response);
            await ReceiveExactlyAsync(client, Strategy.ResponseBytes, clientBuffer);

            CloseResult serverResult, clientResult;
            if (_closeFirst)
            {
                // The client's close sends FIN, then drains until the server's FIN (a read pending meanwhile); the server
                // sees EOF and closes.
                ValueTask<CloseResult> clientClose = client.CloseAsync();
                await ReadToEndAsync(server, serverBuffer);
                serverResult = await server.CloseAsync();
                clientResult = await clientClose;
            }
            else
            {
                // The raw cycle's order: the client half-closes, the server reads to EOF and closes, then the client
                // closes (its drain finds the server's FIN already there).
                await client.ShutdownSendAsync();
                await ReadToEndAsync(server, serverBuffer);
                serverResult = await server.CloseAsync();
                clientResult = await client.CloseAsync();
            }

            if (serverResult.Outcome != CloseOutcome.Graceful || clientResult.Outcome != CloseOutcome.Graceful)
            {
                throw new IOException($"a close ended {clientResult.Outcome} / {serverResult.Outcome}");
            }
        }
    }

    /// <summary>The teardown command's raw-graceful strategy through its own harness (per-cycle timestamps, latency
    /// histogram, progress), to show what the harness adds over the minimal loop.</summary>
    private sealed class HarnessRun : Run
    {
        private readonly Strategy _strategy = new RawGraceful();
        private readonly IReadOnlyList<EndPoint> _endPoints;

        public HarnessRun(Settings settings)
            : base(settings)
        {
            _endPoints = _strategy.Start(settings.Ports, Stop.Token);
            Ports = [.. _endPoints.Select(e => ((IPEndPoint)e).Port)];
        }

        /// <summary>The last round's own figures: the harness measures its cycles itself (its end-of-round kernel
        /// queries, which read every TIME_WAIT socket, are outside them, as they are in the teardown command).</summary>
        public TeardownCommand.RoundResult Last { get; private set; }

        public override async Task CyclesAsync(int cycles)
        {
            TeardownCommand.Settings teardown = new() { Cycles = cycles, Concurrency = Settings.Concurrency, Ports = Settings.Ports };
            Last = await TeardownCommand.RunRoundAsync(_strategy, _endPoints, 1, teardown, quiet: true);
            for (int i = 0; i < Last.Effects.Errors; i++)
            {
                Error();
            }
        }
    }
}
