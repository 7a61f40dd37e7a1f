namespace SafeSockets.Benchmarks.Teardown;

/// <summary><c>alloc</c>: bytes allocated per connect → exchange → graceful close cycle, both ends in process, SafeSockets
/// against raw sockets doing the same (the cycles of <see cref="ConnectTeardownBenchmarks"/>). Exits non-zero if SafeSockets
/// allocates more than raw + 1 KiB per cycle (issue #3's target), so CI catches a regression.</summary>
/// <remarks>Allocation, unlike time, is nearly deterministic, so a short run is a fair check; BenchmarkDotNet's
/// <c>[MemoryDiagnoser]</c> gives the same figures more slowly.</remarks>
internal static class AllocCommand
{
    private const int TargetOverRaw = 1024;

    public static async Task<int> RunAsync(string[] args)
    {
        int cycles = ReliabilityCommands.IntArg(args, "--cycles", 5000);
        var cycle = new ConnectTeardownBenchmarks();
        cycle.Setup();
        try
        {
            Console.WriteLine($"alloc: {cycles} cycles each (after {cycles / 5} to warm up), raw and SafeSockets alternating, 3 rounds.");
            var raw = new List<double>();
            var managed = new List<double>();
            for (int round = 0; round < 3; round++)
            {
                raw.Add(await MeasureAsync(cycle.RawCycleAsync, cycles));
                managed.Add(await MeasureAsync(cycle.ManagedCycleAsync, cycles));
            }

            double rawMedian = Median(raw);
            double managedMedian = Median(managed);
            Console.WriteLine();
            Console.WriteLine("| cycle (both ends) | bytes per cycle, median of 3 (min-max) |");
            Console.WriteLine("|---|---:|");
            Console.WriteLine($"| raw Socket, hand-written graceful close | {rawMedian:N0} ({raw.Min():N0}-{raw.Max():N0}) |");
            Console.WriteLine($"| ManagedConnection, CloseAsync | {managedMedian:N0} ({managed.Min():N0}-{managed.Max():N0}) |");
            bool ok = managedMedian <= rawMedian + TargetOverRaw;
            Console.WriteLine(ok
                ? $"alloc: OK (SafeSockets {managedMedian - rawMedian:+#,0;-#,0} B per cycle against raw; target at most +{TargetOverRaw})"
                : $"alloc: FAILED (SafeSockets {managedMedian - rawMedian:+#,0;-#,0} B per cycle against raw; target at most +{TargetOverRaw})");
            return ok ? 0 : 1;
        }
        finally
        {
            cycle.Cleanup();
        }
    }

    private static async Task<double> MeasureAsync(Func<Task> run, int cycles)
    {
        for (int i = 0; i < cycles / 5; i++)
        {
            await run();
        }

        GC.Collect();
        GC.WaitForPendingFinalizers();
        long before = GC.GetTotalAllocatedBytes(precise: true);
        for (int i = 0; i < cycles; i++)
        {
            await run();
        }

        return (GC.GetTotalAllocatedBytes(precise: true) - before) / (double)cycles;
    }

    private static double Median(List<double> values) => values.Order().ElementAt(values.Count / 2);
}
