using SafeSockets.Tests.Infrastructure;

namespace SafeSockets.Tests;

/// <summary>The library's own threads (the lazy watch's, ManagedConnection.Watch.cs; the system clock's deadline waiter,
/// Internal/DeadlineQueue.cs) must not keep an application alive: one that returns from <c>Main</c> with connections
/// still open (an error path that skips the cleanup) must exit. A foreground thread would hold the process for good
/// (the watch's thread never ends; the waiter sleeps until its deadline). Only a process of its own can show it
/// (tests/SafeSockets.TestHost, <c>exit-with-connections-open</c>).</summary>
[Collection(ExclusiveTests.Name)] // starts a process: between its fork and exec the child holds a copy of every descriptor, delaying other tests' closes (session 13)
public sealed class ProcessExitTests
{
    [Fact]
    public async Task ApplicationReturningFromMain_WithAWatchedConnectionAndADeadlineQueued_ExitsByItself()
    {
        // The host fails the test (and is killed) unless it exits with code 0 within the bound; it takes well under a
        // second when the threads are background threads.
        Dictionary<string, string> facts = await TestHostProcess.RunAsync(["exit-with-connections-open"], exitWithin: TimeSpan.FromSeconds(20));

        // Both threads were running when Main returned, and nothing had been closed.
        Assert.Equal("True", facts["watched"]);
        Assert.Equal("1", facts["watchThreadsStarted"]);
        Assert.Equal("1", facts["deadlinesQueued"]);
        Assert.Equal("True", facts["deadlineWaiterRunning"]);
        Assert.Equal("Open", facts["state"]);
        Assert.Equal("True", facts["returning"]);
    }
}
