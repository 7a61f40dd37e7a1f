using Xunit.Abstractions;

namespace SafeSockets.Concurrency;

/// <summary>The first bug schedule exploration found in the rebuilt lifecycle: CloseAsync claims the result
/// (TryClaimResult) and takes the teardown (TryBeginTeardown) in two steps, so of two concurrent calls the one that
/// claimed second could win the teardown and return the result too (two results, no AlreadyClosed). Fixed: the owner
/// of the teardown returns AlreadyClosed unless it also claimed first. This test failed before the fix.</summary>
public sealed class CloseClaimRaceTests(ITestOutputHelper output)
{
    [Fact]
    public void Two_concurrent_closes_exactly_one_gets_the_result()
    {
        CoyoteRunner.AssertNoBug(
            async () =>
            {
                var c = new ModelConnection();
                Task<CloseResult> a = Task.Run(c.CloseAsync);
                Task<CloseResult> b = Task.Run(c.CloseAsync);
                await Controlled.All(a, b);
                await Invariants.CheckAsync(c, teardownExpected: true);
            },
            output);
    }
}
