using SafeSockets.Internal;

namespace SafeSockets.Tests;

/// <summary>The send gate on its own (no sockets): sends in flight, closers that wait for them, a closer that gives up.</summary>
public sealed class SendGateTests
{
    [Fact]
    public void Open_LetsSendsThrough_AndCountsThem()
    {
        var gate = new SendGate();
        Assert.False(gate.IsClosed);
        Assert.True(gate.TryEnter());
        Assert.True(gate.TryEnter());
        Assert.Equal(2, gate.InFlight);
        gate.Exit();
        Assert.Equal(1, gate.InFlight);
        gate.Exit();
        Assert.Equal(0, gate.InFlight);
    }

    [Fact]
    public void CloseAndWait_WithNothingInFlight_IsDoneAtOnce_AndRefusesSends()
    {
        var gate = new SendGate();
        Task wait = gate.CloseAndWait();
        Assert.True(wait.IsCompletedSuccessfully);
        Assert.True(gate.IsClosed);
        Assert.False(gate.TryEnter());
        Assert.Equal(0, gate.InFlight);
    }

    [Fact]
    public void CloseAndWait_CompletesWhenTheLastSendLeaves_NotBefore()
    {
        var gate = new SendGate();
        gate.TryEnter();
        gate.TryEnter();
        Task first = gate.CloseAndWait();
        Task second = gate.CloseAndWait();
        Assert.False(first.IsCompleted);
        Assert.False(second.IsCompleted);
        Assert.False(gate.TryEnter());

        gate.Exit();
        Assert.False(first.IsCompleted);
        Assert.False(second.IsCompleted);
        gate.Exit();
        Assert.True(SpinWait.SpinUntil(() => first.IsCompletedSuccessfully && second.IsCompletedSuccessfully, TimeSpan.FromSeconds(10)));
    }

    [Fact]
    public void Leave_TheOnlyCloser_OpensTheGateAgain_AndItsWaitNeverCompletes()
    {
        var gate = new SendGate();
        gate.TryEnter();
        Task wait = gate.CloseAndWait();
        gate.Leave(wait);
        Assert.False(gate.IsClosed);
        Assert.True(gate.TryEnter());
        Assert.Equal(2, gate.InFlight);
        gate.Exit();
        gate.Exit();
        Assert.False(wait.IsCompleted);
    }

    [Fact]
    public void Leave_WhileAnotherCloserWaits_KeepsTheGateClosed_AndTheOtherStillCompletes()
    {
        var gate = new SendGate();
        gate.TryEnter();
        Task cancelled = gate.CloseAndWait();
        Task other = gate.CloseAndWait();
        gate.Leave(cancelled);
        Assert.True(gate.IsClosed);
        Assert.False(gate.TryEnter());

        gate.Exit();
        Assert.True(SpinWait.SpinUntil(() => other.IsCompletedSuccessfully, TimeSpan.FromSeconds(10)));
        Assert.False(cancelled.IsCompleted);

        // The last closer leaves too: open again.
        gate.Leave(other);
        Assert.False(gate.IsClosed);
    }

    [Fact]
    public void ACloserThatNeverLeaves_KeepsItClosedForGood()
    {
        var gate = new SendGate();
        Task forGood = gate.CloseAndWait();
        Task halfClose = gate.CloseAndWait();
        gate.Leave(halfClose);
        Assert.True(gate.IsClosed);
        Assert.True(forGood.IsCompletedSuccessfully);
        Assert.False(gate.TryEnter());
    }

    [Fact]
    public void CloseForGood_ThenACancelledHalfClose_StaysClosed()
    {
        var gate = new SendGate();
        gate.CloseForGood();
        Task halfClose = gate.CloseAndWait();
        gate.Leave(halfClose);
        Assert.True(gate.IsClosed);
        Assert.False(gate.TryEnter());
    }

    [Fact]
    public void ReleasedWaiters_AreNotKept()
    {
        var gate = new SendGate();
        gate.TryEnter();
        Task first = gate.CloseAndWait();
        Task second = gate.CloseAndWait();
        Assert.Equal(2, gate.Waiting);
        gate.Leave(second);
        Assert.Equal(1, gate.Waiting);
        gate.Exit();
        Assert.Equal(0, gate.Waiting);
        Assert.True(SpinWait.SpinUntil(() => first.IsCompletedSuccessfully, TimeSpan.FromSeconds(10)));
    }

    [Fact]
    public void CloseForGood_WithoutWaiting_RefusesSends_ButLetsOnesInFlightFinish()
    {
        var gate = new SendGate();
        gate.TryEnter();
        gate.CloseForGood();
        Assert.True(gate.IsClosed);
        Assert.False(gate.TryEnter());
        Assert.Equal(1, gate.InFlight);
        Task wait = gate.CloseAndWait();
        Assert.False(wait.IsCompleted);
        gate.Exit();
        Assert.True(SpinWait.SpinUntil(() => wait.IsCompletedSuccessfully, TimeSpan.FromSeconds(10)));
        Assert.Equal(0, gate.InFlight);
    }

    [Fact]
    public void Exit_OfAnOpenGate_ReleasesNoWaiter()
    {
        var gate = new SendGate();
        gate.TryEnter();
        Task cancelled = gate.CloseAndWait();
        gate.Leave(cancelled);
        gate.Exit();
        Assert.False(cancelled.IsCompleted);
        Task later = gate.CloseAndWait();
        Assert.True(later.IsCompletedSuccessfully);
    }

    [Fact]
    public void CloseForGood_ThenTwoCancelledHalfCloses_StaysClosed()
    {
        var gate = new SendGate();
        gate.CloseForGood();
        Task first = gate.CloseAndWait();
        Task second = gate.CloseAndWait();
        gate.Leave(first);
        Assert.True(gate.IsClosed);
        gate.Leave(second);
        Assert.True(gate.IsClosed);
        Assert.False(gate.TryEnter());
    }

    [Fact]
    public async Task EnterAndExit_FromSeveralThreadsAtOnce_CountEveryEntryExactlyOnce()
    {
        // Contended compare-and-swap: a lost or double-counted entry would leave the count off (and could set the closed bit).
        var gate = new SendGate();
        var start = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        Task[] workers = [.. Enumerable.Range(0, 4).Select(_ => Task.Run(async () =>
        {
            await start.Task;
            for (int i = 0; i < 200_000; i++)
            {
                Assert.True(gate.TryEnter());
                gate.Exit();
            }
        }))];
        start.SetResult();
        await Task.WhenAll(workers).WaitAsync(TimeSpan.FromSeconds(60));
        Assert.Equal(0, gate.InFlight);
        Assert.False(gate.IsClosed);
    }
}
