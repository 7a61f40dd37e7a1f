using Microsoft.Coyote.Specifications;
using Microsoft.Coyote.SystematicTesting;
using Xunit.Abstractions;

namespace SafeSockets.Concurrency;

/// <summary>The harness can fail: a deliberately broken recorder, like the pre-lifecycle code, must be caught.</summary>
public sealed class HarnessSelfTests(ITestOutputHelper output)
{
    /// <summary>"First result wins" done wrong: the winner claims with a CAS and writes the result after its (asynchronous)
    /// teardown; a loser returns the field at once, possibly before the winner wrote it.</summary>
    private sealed class BrokenFirstResultWins
    {
        private int _claimed;
        private CloseResult _result;

        public async Task<CloseResult> CloseAsync(long bytes)
        {
            if (Interlocked.CompareExchange(ref _claimed, 1, 0) == 0)
            {
                await Task.Yield(); // the teardown
                _result = new CloseResult(CloseOutcome.Graceful, bytes, TimeSpan.FromSeconds(1));
                return _result;
            }

            return _result; // the bug: read before the winner's write
        }
    }

    [Fact]
    public void The_engine_reports_a_first_result_wins_race()
    {
        TestingEngine engine = CoyoteRunner.Explore(
            async () =>
            {
                var recorder = new BrokenFirstResultWins();
                Task<CloseResult> a = Task.Run(() => recorder.CloseAsync(1));
                Task<CloseResult> b = Task.Run(() => recorder.CloseAsync(2));
                await Controlled.All(a, b);
                Specification.Assert(a.Result == b.Result, "Two closes saw different results: {0} and {1}.", a.Result, b.Result);
            },
            output,
            iterations: 200);

        Assert.True(engine.TestReport.NumOfFoundBugs > 0, "Coyote did not find the planted race: the harness cannot fail.");
        output.WriteLine(string.Join(Environment.NewLine, engine.TestReport.BugReports));
    }
}
