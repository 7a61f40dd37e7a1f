using SafeSockets.Internal;
using static SafeSockets.Internal.ConnectionLifecycle;

namespace SafeSockets.Tests;

/// <summary>The lifecycle type on its own (no sockets): each transition of docs/lifecycle.md's table, with the one
/// right answer. Schedule exploration of the same type under concurrency is in tests/SafeSockets.Concurrency.</summary>
public sealed class ConnectionLifecycleTests
{
    // Lifecycles made here report their state changes to nobody: the process-wide metrics count real connections only.
    private static readonly TimeSpan s_elapsed = TimeSpan.FromMilliseconds(3);

    [Fact]
    public void New_IsOpenWithTheCreatorsLease()
    {
        var lifecycle = new ConnectionLifecycle(static (_, _) => { });
        Assert.Equal(ConnectionState.Open, lifecycle.State);
        Assert.Equal(1, lifecycle.LeaseCount);
        Assert.False(lifecycle.IsTearingDown);
        Assert.False(lifecycle.IsReleased);
        Assert.Equal(CloseReason.None, lifecycle.Reason);
        Assert.Null(lifecycle.Result);
        Assert.False(lifecycle.GetCompletionTask().IsCompleted);
    }

    [Fact]
    public void HalfCloses_ComposeIntoBothShutdown()
    {
        var lifecycle = new ConnectionLifecycle(static (_, _) => { });
        Assert.True(lifecycle.TryMarkSendShutdown());
        Assert.Equal(ConnectionState.SendShutdown, lifecycle.State);
        Assert.True(lifecycle.SendShutdown);
        Assert.False(lifecycle.TryMarkSendShutdown());

        Assert.True(lifecycle.OnPeerFin());
        Assert.Equal(ConnectionState.BothShutdown, lifecycle.State);
        Assert.True(lifecycle.PeerFinSeen);
        Assert.False(lifecycle.OnPeerFin());
    }

    [Fact]
    public void PeerFin_ThenOurFin_IsBothShutdown()
    {
        var lifecycle = new ConnectionLifecycle(static (_, _) => { });
        Assert.True(lifecycle.OnPeerFin());
        Assert.Equal(ConnectionState.PeerShutdown, lifecycle.State);
        Assert.False(lifecycle.PeerResetSeen);
        Assert.True(lifecycle.TryMarkSendShutdown());
        Assert.Equal(ConnectionState.BothShutdown, lifecycle.State);
    }

    [Fact]
    public void PeerReset_CountsAsThePeersEnd_Once()
    {
        var lifecycle = new ConnectionLifecycle(static (_, _) => { });
        Assert.True(lifecycle.OnPeerReset());
        Assert.True(lifecycle.PeerResetSeen);
        Assert.True(lifecycle.PeerFinSeen);
        Assert.Equal(ConnectionState.PeerShutdown, lifecycle.State);
        Assert.False(lifecycle.OnPeerReset());
        Assert.False(lifecycle.OnPeerFin());
    }

    [Fact]
    public void TryBeginTeardown_FirstWins_AndKeepsItsReason()
    {
        var lifecycle = new ConnectionLifecycle(static (_, _) => { });
        Assert.True(lifecycle.TryBeginTeardown(CloseReason.CloseWaitTimeout));
        Assert.Equal(ConnectionState.Closing, lifecycle.State);
        Assert.True(lifecycle.IsTearingDown);
        Assert.False(lifecycle.IsReleased);
        Assert.False(lifecycle.TryBeginTeardown(CloseReason.Application));
        Assert.Equal(CloseReason.CloseWaitTimeout, lifecycle.Reason);
    }

    [Fact]
    public void Release_IsGrantedOnce_OnlyWhileATeardownRuns()
    {
        var lifecycle = new ConnectionLifecycle(static (_, _) => { });
        Assert.False(lifecycle.TryRelease(out bool early));
        Assert.False(early);
        Assert.False(lifecycle.IsReleased);

        lifecycle.TryBeginTeardown(CloseReason.Application);
        Assert.True(lifecycle.TryRelease(out bool abortive));
        Assert.False(abortive);
        Assert.Equal(ConnectionState.Closed, lifecycle.State);
        Assert.True(lifecycle.IsReleased);
        Assert.False(lifecycle.TryRelease(out _));
    }

    [Fact]
    public async Task Record_WritesOnce_AndCompletesCompletionWithTheSameResult()
    {
        var lifecycle = new ConnectionLifecycle(static (_, _) => { });
        Task<CloseResult> completion = lifecycle.GetCompletionTask();
        lifecycle.TryBeginTeardown(CloseReason.Application);
        lifecycle.TryRelease(out _);

        CloseResult first = lifecycle.Record(CloseOutcome.Graceful, 7, s_elapsed);
        CloseResult second = lifecycle.Record(CloseOutcome.DrainTimedOut, 9, TimeSpan.Zero);

        // Recorded, not yet published: the owner reports the end first, then Completion completes.
        Assert.False(completion.IsCompleted);
        Assert.Equal(first, lifecycle.Result);
        lifecycle.PublishResult();
        lifecycle.PublishResult();

        Assert.Equal(new CloseResult(CloseOutcome.Graceful, 7, s_elapsed), first);
        Assert.Equal(first, second);
        Assert.Equal(first, lifecycle.Result);
        Assert.True(completion.IsCompletedSuccessfully);
        Assert.Equal(first, await completion);
        Assert.Equal(first, await lifecycle.GetCompletionTask());
    }

    [Fact]
    public void Abort_WithNoTeardown_OwnsIt_AndTheReleaseIsAbortive()
    {
        var lifecycle = new ConnectionLifecycle(static (_, _) => { });
        Assert.Equal(AbortAction.RunTeardown, lifecycle.RequestAbort());
        Assert.Equal(CloseReason.Abort, lifecycle.Reason);
        Assert.Equal(ConnectionState.Closing, lifecycle.State);
        Assert.True(lifecycle.TryRelease(out bool abortive));
        Assert.True(abortive);
        Assert.Equal(ConnectionState.Aborted, lifecycle.State);
        Assert.Equal(CloseOutcome.Aborted, lifecycle.Record(CloseOutcome.Aborted, 0, s_elapsed).Outcome);
    }

    [Fact]
    public void Abort_DuringATeardown_Escalates_AndTheOutcomeSaysAborted()
    {
        var lifecycle = new ConnectionLifecycle(static (_, _) => { });
        lifecycle.TryBeginTeardown(CloseReason.Application);
        Assert.Equal(AbortAction.ReleaseNow, lifecycle.RequestAbort());
        Assert.Equal(CloseReason.Abort, lifecycle.Reason);
        Assert.True(lifecycle.TryRelease(out bool abortive));
        Assert.True(abortive);

        // The routine computed Graceful (the drain saw the FIN), but the release reset: the record says Aborted.
        CloseResult result = lifecycle.Record(CloseOutcome.Graceful, 0, s_elapsed);
        Assert.Equal(CloseOutcome.Aborted, result.Outcome);
        Assert.Equal(ConnectionState.Aborted, lifecycle.State);
    }

    [Fact]
    public void Abort_AfterTheRelease_DoesNothing_AndTheOutcomeStaysGraceful()
    {
        var lifecycle = new ConnectionLifecycle(static (_, _) => { });
        lifecycle.TryBeginTeardown(CloseReason.Application);
        lifecycle.TryRelease(out _);
        Assert.Equal(AbortAction.None, lifecycle.RequestAbort());
        Assert.Equal(CloseReason.Application, lifecycle.Reason);
        Assert.Equal(CloseOutcome.Graceful, lifecycle.Record(CloseOutcome.Graceful, 0, s_elapsed).Outcome);
        Assert.Equal(ConnectionState.Closed, lifecycle.State);
        Assert.Equal(AbortAction.None, lifecycle.RequestAbort());
    }

    [Fact]
    public void SendShutdown_AfterTheRelease_IsRefused()
    {
        var lifecycle = new ConnectionLifecycle(static (_, _) => { });
        lifecycle.TryBeginTeardown(CloseReason.Application);
        Assert.True(lifecycle.TryRelease(out _));
        Assert.False(lifecycle.TryMarkSendShutdown());
        Assert.False(lifecycle.SendShutdown);
    }

    [Fact]
    public void SendShutdown_DuringTheTeardownBeforeTheRelease_IsGranted()
    {
        var lifecycle = new ConnectionLifecycle(static (_, _) => { });
        lifecycle.TryBeginTeardown(CloseReason.Application);
        Assert.True(lifecycle.TryMarkSendShutdown());
        Assert.Equal(ConnectionState.Closing, lifecycle.State);
    }

    [Fact]
    public void TryClaimResult_OnlyTheFirstCaller()
    {
        var lifecycle = new ConnectionLifecycle(static (_, _) => { });
        Assert.True(lifecycle.TryClaimResult());
        Assert.False(lifecycle.TryClaimResult());
    }

    [Fact]
    public void Leases_TheLastReleaseTakesTheTeardown()
    {
        var lifecycle = new ConnectionLifecycle(static (_, _) => { });
        Assert.True(lifecycle.TryAcquire());
        Assert.True(lifecycle.TryAcquire());
        Assert.Equal(3, lifecycle.LeaseCount);

        Assert.Equal(ReleaseAction.None, lifecycle.ReleaseCreator());
        Assert.Null(lifecycle.ReleaseCreator());
        Assert.Equal(2, lifecycle.LeaseCount);
        Assert.Equal(ReleaseAction.None, lifecycle.ReleaseReference());
        Assert.Equal(ConnectionState.Open, lifecycle.State);
        Assert.Equal(ReleaseAction.RunTeardown, lifecycle.ReleaseReference());
        Assert.Equal(0, lifecycle.LeaseCount);
        Assert.Equal(ConnectionState.Closing, lifecycle.State);
        Assert.Equal(CloseReason.Application, lifecycle.Reason);
        Assert.False(lifecycle.TryAcquire());
    }

    [Fact]
    public void Leases_TheLastReleaseDuringATeardown_Waits()
    {
        var lifecycle = new ConnectionLifecycle(static (_, _) => { });
        lifecycle.TryBeginTeardown(CloseReason.CloseWaitTimeout);
        Assert.False(lifecycle.TryAcquire());
        Assert.Equal(ReleaseAction.WaitForCompletion, lifecycle.ReleaseCreator());
        Assert.Equal(CloseReason.CloseWaitTimeout, lifecycle.Reason);
    }

    [Fact]
    public void Leases_ReleasingMoreThanWereHeld_IsNotALease()
    {
        var lifecycle = new ConnectionLifecycle(static (_, _) => { });
        Assert.Equal(ReleaseAction.RunTeardown, lifecycle.ReleaseCreator());
        Assert.Equal(ReleaseAction.None, lifecycle.ReleaseReference());
        Assert.Equal(0, lifecycle.LeaseCount);
    }

    [Fact]
    public async Task Completion_AskedForOnlyAfterTheRecord_IsAlreadyComplete()
    {
        var lifecycle = new ConnectionLifecycle(static (_, _) => { });
        Abort(lifecycle);
        Task<CloseResult> completion = lifecycle.GetCompletionTask();
        Assert.True(completion.IsCompletedSuccessfully);
        Assert.Equal(CloseOutcome.Aborted, (await completion).Outcome);
    }

    [Fact]
    public async Task Completion_AskedForTwiceBeforeTheRecord_IsOneTask()
    {
        var lifecycle = new ConnectionLifecycle(static (_, _) => { });
        Task<CloseResult> first = lifecycle.GetCompletionTask();
        Task<CloseResult> second = lifecycle.GetCompletionTask();
        Assert.Same(first, second);
        Abort(lifecycle);
        Assert.Equal(CloseOutcome.Aborted, (await first).Outcome);
    }

    [Fact]
    public void StateChanges_AreReportedOncePerTransition_AndBalanceToReleased()
    {
        var changes = new List<(ConnectionState Before, ConnectionState After)>();
        var lifecycle = new ConnectionLifecycle((before, after) => changes.Add((before, after)));

        lifecycle.TryMarkSendShutdown();
        lifecycle.TryMarkSendShutdown();
        lifecycle.OnPeerFin();
        lifecycle.OnPeerFin();
        lifecycle.TryBeginTeardown(CloseReason.Application);
        lifecycle.RequestAbort();
        lifecycle.TryRelease(out _);
        lifecycle.TryRelease(out _);

        Assert.Equal(
            [
                (ConnectionState.Open, ConnectionState.SendShutdown),
                (ConnectionState.SendShutdown, ConnectionState.BothShutdown),
                (ConnectionState.BothShutdown, ConnectionState.Closing),
                (ConnectionState.Closing, ConnectionState.Closing),
                (ConnectionState.Closing, ConnectionState.Aborted),
            ],
            changes);
    }

    [Fact]
    public void StateChanges_OfThePeersResetAndTheLastLease_AreReported()
    {
        var changes = new List<(ConnectionState Before, ConnectionState After)>();
        var lifecycle = new ConnectionLifecycle((before, after) => changes.Add((before, after)));

        lifecycle.OnPeerReset();
        lifecycle.OnPeerReset();
        lifecycle.ReleaseCreator();

        // An abort after the peer's reset changes nothing: the peer's reset stays the recorded end.
        Assert.Equal(AbortAction.None, lifecycle.RequestAbort());
        Assert.Equal(CloseReason.Application, lifecycle.Reason);
        Assert.True(lifecycle.TryRelease(out bool abortive));
        Assert.False(abortive);

        Assert.Equal(
            [
                (ConnectionState.Open, ConnectionState.PeerShutdown),
                (ConnectionState.PeerShutdown, ConnectionState.Closing),
                (ConnectionState.Closing, ConnectionState.Closed),
            ],
            changes);
    }

    [Fact]
    public void StateChanges_OfAnAbortWithNoTeardown_AreReported()
    {
        var changes = new List<(ConnectionState Before, ConnectionState After)>();
        var lifecycle = new ConnectionLifecycle((before, after) => changes.Add((before, after)));
        Abort(lifecycle);
        Assert.Equal([(ConnectionState.Open, ConnectionState.Closing), (ConnectionState.Closing, ConnectionState.Aborted)], changes);
    }

    private static void Abort(ConnectionLifecycle lifecycle)
    {
        Assert.Equal(AbortAction.RunTeardown, lifecycle.RequestAbort());
        Assert.True(lifecycle.TryRelease(out _));
        lifecycle.Record(CloseOutcome.Aborted, 0, s_elapsed);
        lifecycle.PublishResult();
    }

    [Fact]
    public void Abort_AfterThePeersResetIsRecorded_BeforeItsTeardownBegan_DoesNothing()
    {
        var lifecycle = new ConnectionLifecycle(static (_, _) => { });
        Assert.True(lifecycle.OnPeerReset());
        Assert.Equal(AbortAction.None, lifecycle.RequestAbort());
        Assert.True(lifecycle.TryBeginTeardown(CloseReason.PeerReset));
        Assert.True(lifecycle.TryRelease(out bool abortive));
        Assert.False(abortive);
    }
}
