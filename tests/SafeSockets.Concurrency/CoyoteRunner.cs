using System.Globalization;
using System.Text;
using Microsoft.Coyote;
using Microsoft.Coyote.SystematicTesting;
using Xunit.Abstractions;

namespace SafeSockets.Concurrency;

/// <summary>Runs a test body under Coyote's TestingEngine: many iterations, each under a different schedule of the
/// controlled operations (tasks, awaits, locks, Interlocked, Volatile) in the rewritten assemblies.</summary>
/// <remarks>
/// Environment:
/// <list type="bullet">
/// <item>SAFESOCKETS_COYOTE_ITERATIONS: iterations per test (default <see cref="DefaultIterations"/>, sized for CI on 2 cores).</item>
/// <item>SAFESOCKETS_COYOTE_SEED: the random seed (default: a new one per run, printed in the test output).</item>
/// </list>
/// </remarks>
internal static class CoyoteRunner
{
    /// <summary>Iterations per test in CI: the whole project runs in well under a minute on 2 cores.</summary>
    public const uint DefaultIterations = 300;

    /// <summary>A schedule longer than this is cut (Coyote reports it as a potential livelock only if it keeps going).</summary>
    private const uint MaxSteps = 2000;

    public static uint Iterations =>
        uint.TryParse(Environment.GetEnvironmentVariable("SAFESOCKETS_COYOTE_ITERATIONS"), NumberStyles.None, CultureInfo.InvariantCulture, out uint n) && n > 0
            ? n
            : DefaultIterations;

    private static uint? Seed =>
        uint.TryParse(Environment.GetEnvironmentVariable("SAFESOCKETS_COYOTE_SEED"), NumberStyles.None, CultureInfo.InvariantCulture, out uint seed)
            ? seed
            : null;

    /// <summary>Explores <paramref name="test"/> and returns the engine (its TestReport says what was found).</summary>
    public static TestingEngine Explore(Func<Task> test, ITestOutputHelper output, uint? iterations = null)
    {
        uint seed = Seed ?? (uint)Random.Shared.Next();
        Configuration configuration = Configuration.Create()
            .WithTestingIterations(iterations ?? Iterations)
            .WithMaxSchedulingSteps(MaxSteps)
            .WithRandomGeneratorSeed(seed)
            .WithAtomicOperationRaceCheckingEnabled(true)
            .WithLockAccessRaceCheckingEnabled(true)
            .WithVolatileOperationRaceCheckingEnabled(true)
            .WithPartiallyControlledConcurrencyAllowed(false)
            .WithPotentialDeadlocksReportedAsBugs(true)
            .WithTelemetryEnabled(false);
        var engine = TestingEngine.Create(configuration, test);
        engine.Run();
        TestReport report = engine.TestReport;
        output.WriteLine(
            $"coyote: seed {seed}, {configuration.TestingIterations} iterations, {report.NumOfExploredFairPaths + report.NumOfExploredUnfairPaths} schedules explored, " +
            $"max {report.MaxExploredFairSteps} steps, max concurrency {report.MaxConcurrencyDegree}, bugs {report.NumOfFoundBugs}");
        return engine;
    }

    /// <summary>Explores <paramref name="test"/> and fails with the bug report and the schedule's trace if a bug was found.</summary>
    public static void AssertNoBug(Func<Task> test, ITestOutputHelper output, uint? iterations = null)
    {
        TestingEngine engine = Explore(test, output, iterations);
        TestReport report = engine.TestReport;
        if (report.UncontrolledInvocations.Count > 0)
        {
            output.WriteLine("uncontrolled invocations: " + string.Join(", ", report.UncontrolledInvocations));
        }

        if (report.NumOfFoundBugs == 0)
        {
            return;
        }

        var text = new StringBuilder();
        text.AppendLine(CultureInfo.InvariantCulture, $"Coyote found {report.NumOfFoundBugs} bug(s):");
        foreach (string bug in report.BugReports)
        {
            text.AppendLine(bug);
        }

        text.AppendLine("--- report ---");
        text.AppendLine(engine.GetReport());
        text.AppendLine("--- trace of the buggy schedule (SAFESOCKETS_COYOTE_SEED reproduces the run) ---");
        string trace = engine.ReadableTrace ?? string.Empty;
        text.AppendLine(trace.Length > 20000 ? trace[^20000..] : trace);
        output.WriteLine(text.ToString());
        Assert.Fail(text.ToString());
    }
}
