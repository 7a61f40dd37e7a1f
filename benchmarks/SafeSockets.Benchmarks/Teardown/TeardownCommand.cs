using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text;
using SafeSockets.Diagnostics;

namespace SafeSockets.Benchmarks.Teardown;

/// <summary><c>teardown</c>: high-rate connect → exchange → teardown cycles on loopback for each strategy, interleaved
/// round by round, counting the kernel's side effects (RSTs, TIME_WAIT, CLOSE_WAIT) as well as time.</summary>
internal static class TeardownCommand
{
    private const string Usage = """
        teardown [options]
          --strategies a,b,c   strategies to run (default: all); --list shows them
          --cycles N           cycles per strategy per round (default 3000)
          --rounds R           rounds; strategies are interleaved A B C A B C ... (default 5)
          --concurrency K      cycles in flight at once (default 8)
          --ports P            listener ports per strategy (default 4; see the TIME_WAIT note)
          --duration S         stop starting new rounds after S seconds (default 100)
          --out DIR            output folder (default teardown-results/<utc time>)
        """;

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

        if (settings.List)
        {
            foreach (Strategy s in Strategies.All())
            {
                Console.WriteLine($"{s.Name,-26} {s.Description}");
            }

            return 0;
        }

        Console.WriteLine($"SafeSockets teardown comparison: {settings.Strategies.Count} strategies x {settings.Rounds} rounds x {settings.Cycles} cycles, {settings.Concurrency} in flight, {settings.Ports} listener ports each.");
        Console.WriteLine($"Machine: {Environment.ProcessorCount} cores, {RuntimeInfo()}; DOTNET_SYSTEM_NET_SOCKETS_INLINE_COMPLETIONS={Environment.GetEnvironmentVariable("DOTNET_SYSTEM_NET_SOCKETS_INLINE_COMPLETIONS") ?? "unset"}.");
        Console.WriteLine("Note: connections are spread over several listener ports because with one destination ip:port and the client");
        Console.WriteLine("closing first, TIME_WAIT reuse caps Linux loopback at ~14k cycles/s; rounds are interleaved so TIME_WAIT built up");
        Console.WriteLine("by one strategy weighs on all alike (TCPTimeWaitOverflow is reported). Disposing a .NET Socket with a receive pending");
        Console.WriteLine("and no Shutdown(Send) sends RST: no strategy here does that (raw-unread and the aborts reset on purpose, by unread data or linger 0).");

        using var stop = new CancellationTokenSource();
        var endPoints = new Dictionary<Strategy, IReadOnlyList<EndPoint>>();
        foreach (Strategy strategy in settings.Strategies)
        {
            endPoints[strategy] = strategy.Start(settings.Ports, stop.Token);
        }

        // Warm-up (not reported): JIT, thread pool growth and connection pools settle before anything is measured.
        foreach (Strategy strategy in settings.Strategies)
        {
            await RunRoundAsync(strategy, endPoints[strategy], 0, settings with { Cycles = Math.Min(settings.Cycles, 300) });
        }

        var results = settings.Strategies.ToDictionary(s => s, _ => new List<RoundResult>());
        var deadline = Stopwatch.StartNew();
        for (int round = 1; round <= settings.Rounds; round++)
        {
            if (deadline.Elapsed > settings.Duration)
            {
                Console.WriteLine($"Duration limit reached after {round - 1} rounds.");
                break;
            }

            foreach (Strategy strategy in settings.Strategies)
            {
                results[strategy].Add(await RunRoundAsync(strategy, endPoints[strategy], round, settings));
            }
        }

        Console.WriteLine();
        await stop.CancelAsync();

        RoundResult baseline = Summarize(results.First(r => r.Key.Name == "raw-graceful").Value);
        var rows = results.Where(r => r.Value.Count > 0).Select(r => Row.From(r.Key, r.Value, results.ContainsKey(r.Key) ? baseline : null)).ToList();
        string markdown = Report.Markdown(rows, settings);
        Console.WriteLine(markdown);

        Directory.CreateDirectory(settings.OutputDirectory);
        await File.WriteAllTextAsync(Path.Combine(settings.OutputDirectory, "teardown.md"), markdown);
        await File.WriteAllTextAsync(Path.Combine(settings.OutputDirectory, "teardown.csv"), Report.Csv(rows));
        await File.WriteAllTextAsync(Path.Combine(settings.OutputDirectory, "teardown.svg"), Report.Svg(rows));
        Console.WriteLine($"Wrote teardown.md, teardown.csv and teardown.svg to {Path.GetFullPath(settings.OutputDirectory)}");

        // A graceful strategy of ours that reset or leaked CLOSE_WAIT is a failure of the library, not a figure.
        List<Row> broken = [.. rows.Where(r => r.Strategy.Ours && r.Strategy.Graceful && (r.Effects.PeerResets > 0 || r.Effects.CloseWait > 0 || r.Effects.BytesLost > 0))];
        foreach (Row row in broken)
        {
            Console.Error.WriteLine($"FAILED: {row.Strategy.Name} saw {row.Effects.PeerResets} resets, {row.Effects.CloseWait} CLOSE_WAIT, {row.Effects.BytesLost} bytes lost.");
        }

        return broken.Count == 0 ? 0 : 1;
    }

    private static string RuntimeInfo() => $".NET {Environment.Version}, {System.Runtime.InteropServices.RuntimeInformation.OSDescription}";

    private static RoundResult Summarize(List<RoundResult> rounds) => rounds.Count == 0 ? default : rounds.OrderBy(r => r.CyclesPerSecond).ElementAt(rounds.Count / 2);

    internal static async Task<RoundResult> RunRoundAsync(Strategy strategy, IReadOnlyList<EndPoint> endPoints, int round, Settings settings, bool quiet = false)
    {
        strategy.Observed.Clear();
        int[] ports = [.. endPoints.Select(e => ((IPEndPoint)e).Port)];
        double[] latencies = new double[settings.Cycles];
        int next = -1;
        int done = 0;
        int errors = 0;

        GC.Collect();
        KernelCounters kernelBefore = KernelCounters.Read();
        long allocatedBefore = GC.GetTotalAllocatedBytes(precise: true);
        TimeSpan cpuBefore = Process.GetCurrentProcess().TotalProcessorTime;
        var clock = Stopwatch.StartNew();

        // One bound for the whole round, not a timer per cycle (the harness's own per-cycle work must cost next to nothing:
        // a token source with a timeout and a WaitAsync per cycle were 0.4 KB and two timer-queue operations per cycle). A
        // cycle that hangs holds its worker; at the bound the round ends and every cycle not done counts as an error.
        TimeSpan bound = TimeSpan.FromSeconds(60 + (settings.Cycles / 100.0));
        using var roundTimeout = new CancellationTokenSource(bound);
        async Task WorkerAsync()
        {
            int i;
            while ((i = Interlocked.Increment(ref next)) < settings.Cycles && !roundTimeout.IsCancellationRequested)
            {
                long start = Stopwatch.GetTimestamp();
                try
                {
                    await strategy.RunClientAsync(endPoints[i % endPoints.Count], roundTimeout.Token);
                }
                catch (SocketException ex) when (ex.SocketErrorCode == SocketError.ConnectionReset)
                {
                    strategy.Observed.Reset();
                }
                catch (ConnectionResetException)
                {
                    strategy.Observed.Reset();
                }
                catch (Exception ex) when (ex is SocketException or IOException or TimeoutException or OperationCanceledException or ObjectDisposedException)
                {
                    Interlocked.Increment(ref errors);
                }

                latencies[i] = Stopwatch.GetElapsedTime(start).TotalMicroseconds;
                Interlocked.Increment(ref done);
            }
        }

        Task all = Task.WhenAll(Enumerable.Range(0, settings.Concurrency).Select(_ => Task.Run(WorkerAsync)));
        // Carriage-return progress only on a terminal; redirected (CI logs, files) each round is one line at its end.
        bool progress = !quiet && !Console.IsOutputRedirected;
        while (!all.IsCompleted && !roundTimeout.IsCancellationRequested)
        {
            await Task.WhenAny(all, Task.Delay(250, roundTimeout.Token));
            if (!progress)
            {
                continue;
            }

            double rate = Volatile.Read(ref done) / Math.Max(clock.Elapsed.TotalSeconds, 1e-3);
            Console.Write($"\r{strategy.Name,-26} {(round == 0 ? "warm-up" : $"round {round}/{settings.Rounds}")}  {Volatile.Read(ref done),7}/{settings.Cycles} cycles  {rate,9:N0} cycles/s   ");
        }

        if (all.IsCompleted)
        {
            await all;
        }
        else
        {
            Console.Error.WriteLine($"{strategy.Name}: the round did not finish within {bound.TotalSeconds:N0} s; {settings.Cycles - Volatile.Read(ref done)} cycles count as errors.");
            Interlocked.Add(ref errors, settings.Cycles - Volatile.Read(ref done));
        }

        TimeSpan elapsed = clock.Elapsed;
        TimeSpan cpu = Process.GetCurrentProcess().TotalProcessorTime - cpuBefore;
        long allocated = GC.GetTotalAllocatedBytes(precise: true) - allocatedBefore;

        // Let the server side finish its closes (bounded), then ask the kernel what is left on this strategy's ports.
        var settle = Stopwatch.StartNew();
        while ((strategy.Serving > 0 || TcpSocketTable.Count(TcpState.CloseWait, ports) > 0) && settle.Elapsed < TimeSpan.FromSeconds(5))
        {
            await Task.Delay(10);
        }

        KernelCounters kernel = KernelCounters.Read() - kernelBefore;
        Array.Sort(latencies);
        var result = new RoundResult(
            settings.Cycles / elapsed.TotalSeconds,
            Percentile(latencies, 0.50),
            Percentile(latencies, 0.99),
            cpu.TotalMicroseconds / settings.Cycles,
            (double)allocated / settings.Cycles,
            new SideEffects(
                strategy.Observed.Resets,
                kernel.OutRsts,
                kernel.EstabResets,
                kernel.TimeWaitOverflow,
                TcpSocketTable.Count(TcpState.TimeWait, ports),
                TcpSocketTable.Count(TcpState.CloseWait, ports),
                strategy.Observed.BytesLost,
                errors));
        string label = round == 0 ? "warm-up" : $"round {round}/{settings.Rounds}";
        string line = $"{strategy.Name,-26} {label}  {result.CyclesPerSecond,9:N0} cycles/s  p99 {result.P99Micros,8:N0} us  RST {result.Effects.PeerResets}/{result.Effects.OutRsts}  TIME_WAIT {result.Effects.TimeWait}  CLOSE_WAIT {result.Effects.CloseWait}";
        if (!quiet)
        {
            Console.WriteLine(progress ? "\r" + line.PadRight(118) : line);
        }

        return result;
    }

    private static double Percentile(double[] sorted, double p) => sorted.Length == 0 ? 0 : sorted[Math.Min(sorted.Length - 1, (int)(p * sorted.Length))];

    /// <summary>What a run left behind, besides time: resets, TIME_WAIT and CLOSE_WAIT, bytes lost, errors.</summary>
    internal readonly record struct SideEffects(
        long PeerResets,
        long OutRsts,
        long EstabResets,
        long TimeWaitOverflow,
        int TimeWait,
        int CloseWait,
        long BytesLost,
        int Errors)
    {
        /// <summary>Over several rounds: counts add up; TIME_WAIT is what the last round left, CLOSE_WAIT the worst.</summary>
        public static SideEffects Over(IReadOnlyList<RoundResult> rounds) => new(
            rounds.Sum(r => r.Effects.PeerResets),
            rounds.Sum(r => r.Effects.OutRsts),
            rounds.Sum(r => r.Effects.EstabResets),
            rounds.Sum(r => r.Effects.TimeWaitOverflow),
            rounds[^1].Effects.TimeWait,
            rounds.Max(r => r.Effects.CloseWait),
            rounds.Sum(r => r.Effects.BytesLost),
            rounds.Sum(r => r.Effects.Errors));
    }

    internal readonly record struct RoundResult(
        double CyclesPerSecond,
        double P50Micros,
        double P99Micros,
        double CpuMicrosPerCycle,
        double AllocatedPerCycle,
        SideEffects Effects);

    internal sealed record Row(
        Strategy Strategy,
        double MedianRate,
        double MinRate,
        double MaxRate,
        double P50,
        double P99,
        double Cpu,
        double Allocated,
        SideEffects Effects,
        double Ratio)
    {
        public static Row From(Strategy strategy, List<RoundResult> rounds, RoundResult? baseline)
        {
            static double Median(IEnumerable<double> values)
            {
                double[] sorted = [.. values.Order()];
                return sorted[sorted.Length / 2];
            }

            double median = Median(rounds.Select(r => r.CyclesPerSecond));
            return new Row(
                strategy,
                median,
                rounds.Min(r => r.CyclesPerSecond),
                rounds.Max(r => r.CyclesPerSecond),
                Median(rounds.Select(r => r.P50Micros)),
                Median(rounds.Select(r => r.P99Micros)),
                Median(rounds.Select(r => r.CpuMicrosPerCycle)),
                Median(rounds.Select(r => r.AllocatedPerCycle)),
                SideEffects.Over(rounds),
                baseline is { CyclesPerSecond: > 0 } b ? median / Median([b.CyclesPerSecond]) : double.NaN);
        }
    }

    internal sealed record Settings
    {
        public IReadOnlyList<Strategy> Strategies { get; private set; } = SafeSockets.Benchmarks.Teardown.Strategies.All();

        public int Cycles { get; internal set; } = 3000;

        public int Rounds { get; internal set; } = 5;

        public int Concurrency { get; internal set; } = 8;

        public int Ports { get; internal set; } = 4;

        public TimeSpan Duration { get; private set; } = TimeSpan.FromSeconds(100);

        public string OutputDirectory { get; private set; } = Path.Combine("teardown-results", DateTime.UtcNow.ToString("yyyyMMdd-HHmmss", CultureInfo.InvariantCulture));

        public bool List { get; private set; }

        public static Settings Parse(string[] args)
        {
            var settings = new Settings();
            for (int i = 0; i < args.Length; i++)
            {
                string Value() => OptionValues.Next(args, ref i);
                int Positive(string name) => OptionValues.NextPositive(args, ref i, name);

                switch (args[i])
                {
                    case "--strategies":
                        string[] names = Value().Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
                        IReadOnlyList<Strategy> all = SafeSockets.Benchmarks.Teardown.Strategies.All();
                        string[] unknown = [.. names.Where(n => all.All(s => s.Name != n))];
                        if (unknown.Length > 0)
                        {
                            throw new ArgumentException($"Unknown strategies: {string.Join(", ", unknown)}. Known: {string.Join(", ", all.Select(s => s.Name))}.");
                        }

                        // The raw graceful baseline always runs: every ratio is against it.
                        settings.Strategies = [.. all.Where(s => s.Name == "raw-graceful" || names.Contains(s.Name))];
                        break;
                    case "--cycles": settings.Cycles = Positive("--cycles"); break;
                    case "--rounds": settings.Rounds = Positive("--rounds"); break;
                    case "--concurrency": settings.Concurrency = Positive("--concurrency"); break;
                    case "--ports": settings.Ports = Positive("--ports"); break;
                    case "--duration": settings.Duration = TimeSpan.FromSeconds(Positive("--duration")); break;
                    case "--out": settings.OutputDirectory = Value(); break;
                    case "--list": settings.List = true; break;
                    default: throw new ArgumentException($"Unknown option {args[i]}.");
                }
            }

            return settings;
        }
    }
}
