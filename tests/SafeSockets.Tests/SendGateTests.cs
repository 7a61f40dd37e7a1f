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
        Task wait = gate.CloseAndWait(forGood: false);
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
        Task first = gate.CloseAndWait(forGood: false);
        Task second = gate.CloseAndWait(forGood: false);
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
        Task wait = gate.CloseAndWait(forGood: false);
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
        Task cancelled = gate.CloseAndWait(forGood: false);
        Task other = gate.CloseAndWait(forGood: false);
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
    public void ClosedForGood_NeverOpensAgain()
    {
        var gate = new SendGate();
        Task forGood = gate.CloseAndWait(forGood: true);
        Task halfClose = gate.CloseAndWait(forGood: false);
        gate.Leave(halfClose);
        Assert.True(gate.IsClosed);
        Assert.True(forGood.IsCompletedSuccessfully);
        Assert.False(gate.TryEnter());
    }

    [Fact]
    public void MarkClosedForGood_AfterTheFin_KeepsItClosedWhenTheCloserLeaves()
    {
        var gate = new SendGate();
        Task wait = gate.CloseAndWait(forGood: false);
        gate.MarkClosedForGood();
        gate.Leave(wait);
        Assert.True(gate.IsClosed);
        Assert.False(gate.TryEnter());
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
        Task wait = gate.CloseAndWait(forGood: true);
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
        Task cancelled = gate.CloseAndWait(forGood: false);
        gate.Leave(cancelled);
        gate.Exit();
        Assert.False(cancelled.IsCompleted);
        Task later = gate.CloseAndWait(forGood: false);
        Assert.True(later.IsCompletedSuccessfully);
    }
}
