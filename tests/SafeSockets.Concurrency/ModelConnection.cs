using Microsoft.Coyote.Specifications;
using SafeSockets.Internal;

namespace SafeSockets.Concurrency;

/// <summary>How the model's receive loop ended (ManagedConnection.LoopExit, less the cases the model cannot produce).</summary>
internal enum ModelLoopExit
{
    PeerFin,
    PeerReset,
    DrainStopped,
    Aborted,
}

/// <summary>What a model half-close did.</summary>
internal enum HalfCloseResult
{
    /// <summary>This call shut the send side (its FIN).</summary>
    FinSent,

    /// <summary>The send side was already shut (by another call, or found so after the wait): nothing to do.</summary>
    AlreadyShut,

    /// <summary>The wait for sends in flight was cancelled: no FIN, sending works again (unless another closer holds the gate).</summary>
    Cancelled,

    /// <summary>The teardown began (ObjectDisposedException in the real code).</summary>
    Closing,

    /// <summary>The peer reset the connection (ConnectionResetException).</summary>
    PeerReset,
}

/// <summary>What a model send did.</summary>
internal enum SendResult
{
    Sent,

    /// <summary>The gate refused it (a half-close or the teardown holds it; InvalidOperationException in the real code).</summary>
    Refused,

    /// <summary>The teardown had begun (ObjectDisposedException).</summary>
    Closing,

    /// <summary>The socket was released under it (our abort): the send failed.</summary>
    Failed,
}

/// <summary>One CloseAsync call: whether it claimed the result first, whether it owned the teardown, and what it returned.</summary>
internal readonly record struct CloseCall(bool ClaimedFirst, bool OwnedTeardown, CloseResult Result);

/// <summary>
/// A model of <see cref="ManagedConnection"/>'s teardown protocol over the real <see cref="ConnectionLifecycle"/> and
/// <see cref="SendGate"/>, with the socket simulated (no I/O): the same calls, in the same order, as
/// ManagedConnection.Teardown.cs, .Send.cs and .Leases.cs make; the kernel's side is counters and flags that the
/// checks read. Events the real connection gets from the socket or its timers (the peer's FIN or reset, the CLOSE_WAIT
/// guard, the drain and flush bounds) are methods the tests call from their own tasks.
/// </summary>
/// <remarks>Every wait in the model is finite: a send always completes (after its hold, if any, is released by the
/// test), and a teardown's drain always ends because starting the drain schedules its bound (a task that fires it), as
/// the real teardown schedules a deadline.</remarks>
internal sealed class ModelConnection
{
    private static readonly CloseResult s_alreadyClosed = new(CloseOutcome.AlreadyClosed, 0, TimeSpan.Zero);

    private readonly object _record = new();
    private readonly List<CloseResult> _recorded = [];
    private readonly List<CloseCall> _closeCalls = [];
    private readonly List<string> _endSteps = [];
    private readonly List<Task> _background = [];

    // The receive loop: ends once, with the first of the peer's FIN or reset, a drain stop, or the socket's release.
    private readonly TaskCompletionSource<ModelLoopExit> _loop = new(TaskCreationOptions.RunContinuationsAsynchronously);

    // The teardown's flush bound (WaitBoundedAsync's timeout): fired only by a test that opts in.
    private readonly TaskCompletionSource _flushBound = new(TaskCreationOptions.RunContinuationsAsynchronously);

    // The simulated socket and what the peer saw.
    private int _disposals;
    private int _lingerZeroDisposals;
    private int _finsSent;
    private int _abortCalls;
    private volatile bool _socketDisposed;

    // ManagedConnection's drain state: why it was stopped (first wins), and whether the teardown took the input.
    private int _drainStop;
    private volatile bool _inputTaken;

    // FIN with sends in flight is allowed only after a flush that timed out (the teardown's step 2 wakes a stuck send).
    private volatile bool _unflushedFinAllowed;

    private readonly List<string> _trace = [];

    // The lifecycle's state-change reports (what the connections-by-state metric adds up): +1 to after, -1 to before.
    private readonly int[] _stateNet = new int[Enum.GetValues<ConnectionState>().Length];

    public ModelConnection(bool scheduleDrainBound = true)
    {
        ScheduleDrainBoundOnDrain = scheduleDrainBound;
        _stateNet[(int)ConnectionState.Open] = 1;
        Lifecycle = new ConnectionLifecycle(OnStateChanged);
    }

    /// <summary>The net count the state-change reports leave in each state: exactly 1 in the current state, 0 elsewhere,
    /// once every transition has been reported.</summary>
    public int[] StateNet
    {
        get
        {
            lock (_stateNet)
            {
                return [.. _stateNet];
            }
        }
    }

    private void OnStateChanged(ConnectionState before, ConnectionState after)
    {
        lock (_stateNet)
        {
            _stateNet[(int)before]--;
            _stateNet[(int)after]++;
        }
    }

    public ConnectionLifecycle Lifecycle { get; }

    public SendGate Gate { get; } = new();

    /// <summary>Whether starting the drain schedules its bound (the real teardown always does).</summary>
    public bool ScheduleDrainBoundOnDrain { get; }

    /// <summary>How many times the socket was disposed.</summary>
    public int Disposals => Volatile.Read(ref _disposals);

    /// <summary>How many of those disposals set linger 0 (a reset on purpose).</summary>
    public int LingerZeroDisposals => Volatile.Read(ref _lingerZeroDisposals);

    /// <summary>How many times shutdown(SHUT_WR) was called: the FINs the peer got from us.</summary>
    public int FinsSent => Volatile.Read(ref _finsSent);

    public int AbortCalls => Volatile.Read(ref _abortCalls);

    /// <summary>The peer reset the connection (the peer's RST, not ours).</summary>
    public bool PeerSentReset { get; private set; }

    public IReadOnlyList<CloseResult> Recorded
    {
        get
        {
            lock (_record)
            {
                return [.. _recorded];
            }
        }
    }

    public IReadOnlyList<CloseCall> CloseCalls
    {
        get
        {
            lock (_record)
            {
                return [.. _closeCalls];
            }
        }
    }

    /// <summary>What the model did, in order (printed with a failed check: a readable trace of the schedule).</summary>
    public string TraceText
    {
        get
        {
            lock (_trace)
            {
                return "model trace:\n  " + string.Join("\n  ", _trace);
            }
        }
    }

    public void Log(string step)
    {
        lock (_trace)
        {
            _trace.Add(step);
        }
    }

    // ---- The application's calls ----

    /// <summary>ManagedConnection.CloseAsync without a token.</summary>
    public async Task<CloseResult> CloseAsync()
    {
        bool first = Lifecycle.TryClaimResult();
        Log($"CloseAsync: TryClaimResult -> {first}");
        if (Lifecycle.TryBeginTeardown(CloseReason.Application))
        {
            Log("CloseAsync: TryBeginTeardown won, runs the teardown");
            CloseResult owned = await TeardownAsync();
            CloseResult reported = first ? owned : new CloseResult(CloseOutcome.AlreadyClosed, 0, TimeSpan.Zero);
            Note(new CloseCall(first, OwnedTeardown: true, reported));
            Log($"CloseAsync (owner, first={first}) returns {reported.Outcome}");
            return reported;
        }

        CloseResult result = await Lifecycle.GetCompletionTask();
        CloseResult returned = first ? result : s_alreadyClosed;
        Note(new CloseCall(first, OwnedTeardown: false, returned));
        Log($"CloseAsync (waiter, first={first}) returns {returned.Outcome}");
        return returned;
    }

    /// <summary>ManagedConnection.Abort.</summary>
    public void Abort()
    {
        Interlocked.Increment(ref _abortCalls);
        ConnectionLifecycle.AbortAction action = Lifecycle.RequestAbort();
        Log($"Abort: RequestAbort -> {action}");
        switch (action)
        {
            case ConnectionLifecycle.AbortAction.RunTeardown:
                _inputTaken = true;
                Gate.CloseForGood();
                ReleaseSocket();
                RecordResult(CloseOutcome.Aborted);
                break;
            case ConnectionLifecycle.AbortAction.ReleaseNow:
                ReleaseSocket();
                break;
        }
    }

    /// <summary>ManagedConnection.DisposeAsync.</summary>
    public async Task DisposeAsync()
    {
        ConnectionLifecycle.ReleaseAction? released = Lifecycle.ReleaseCreator();
        Log($"DisposeAsync: ReleaseCreator -> {released?.ToString() ?? "null"}");
        if (released is { } action)
        {
            await OnReferenceReleased(action);
            return;
        }

        if (Lifecycle.IsTearingDown)
        {
            await Lifecycle.GetCompletionTask();
        }
    }

    /// <summary>ManagedConnection.Acquire: a lease, or <see langword="null"/> where the real call throws.</summary>
    public ModelLease? Acquire()
    {
        bool acquired = Lifecycle.TryAcquire();
        Log($"Acquire: TryAcquire -> {acquired}");
        return acquired ? new ModelLease(this) : null;
    }

    /// <summary>ConnectionLease.DisposeAsync's release of one reference.</summary>
    internal Task ReleaseReferenceAsync()
    {
        ConnectionLifecycle.ReleaseAction action = Lifecycle.ReleaseReference();
        Log($"lease: ReleaseReference -> {action}");
        return OnReferenceReleased(action);
    }

    /// <summary>ManagedConnection.SendAsync with a non-empty buffer: through the gate, a yield (the kernel takes the bytes),
    /// and out of the gate. <paramref name="hold"/> keeps the send in flight until the test completes it.</summary>
    public async Task<SendResult> SendAsync(Task? hold = null)
    {
        if (Lifecycle.IsTearingDown)
        {
            return SendResult.Closing;
        }

        if (!Gate.TryEnter())
        {
            Log("send: refused by the gate");
            return SendResult.Refused;
        }

        Log("send: entered the gate");
        try
        {
            await Task.Yield();
            if (hold is not null)
            {
                await hold;
            }

            if (_socketDisposed)
            {
                return SendResult.Failed;
            }

            // The bytes reach the kernel now: our FIN must not be out before them (unless the teardown gave up on the flush).
            Specification.Assert(
                FinsSent == 0 || _unflushedFinAllowed,
                "A send that entered the gate was handed to the kernel after our FIN (FIN sent while a send was in flight).\n{0}",
                TraceText);
            return SendResult.Sent;
        }
        finally
        {
            Gate.Exit();
            Log("send: left the gate");
        }
    }

    /// <summary>ManagedConnection.ShutdownSendAsync; <paramref name="cancel"/> completing is its token being cancelled.</summary>
    public async Task<HalfCloseResult> ShutdownSendAsync(Task? cancel = null)
    {
        if (Lifecycle.IsTearingDown)
        {
            return HalfCloseResult.Closing;
        }

        if (Lifecycle.SendShutdown)
        {
            return HalfCloseResult.AlreadyShut;
        }

        Task drained = Gate.CloseAndWait();
        Log($"half-close: CloseAndWait -> {(drained.IsCompleted ? "drained" : "waiting")}");
        bool finSent = false;
        try
        {
            // drained.WaitAsync(cancellationToken): a wait already complete wins over the token.
            if (!drained.IsCompleted)
            {
                if (cancel is null)
                {
                    await drained;
                }
                else if (!await Controlled.FirstAsync(drained, cancel))
                {
                    Log("half-close: cancelled");
                    return HalfCloseResult.Cancelled;
                }
            }

            if (Lifecycle.IsTearingDown)
            {
                return HalfCloseResult.Closing;
            }

            if (Lifecycle.PeerResetSeen)
            {
                return HalfCloseResult.PeerReset;
            }

            switch (SendFin(allowInFlight: false, "half-close"))
            {
                case FinResult.NotFirst:
                    return HalfCloseResult.AlreadyShut;
                case FinResult.SocketGone:
                    // Granted the FIN, but the teardown released the socket before Shutdown(Send) ran: the real call
                    // throws ObjectDisposedException (our FIN goes out with the close, not with this call).
                    finSent = true;
                    return HalfCloseResult.Closing;
                default:
                    finSent = true;
                    return HalfCloseResult.FinSent;
            }
        }
        finally
        {
            if (finSent || Lifecycle.SendShutdown)
            {
                // Our FIN is out: this closer never leaves, so the gate stays closed for good.
                Log("half-close: stays a closer (closed for good)");
            }
            else
            {
                Gate.Leave(drained);
                Log("half-close: Leave");
            }
        }
    }

    // ---- Events from the socket and the timers ----

    /// <summary>The receive loop saw the peer's FIN. <paramref name="guardFires"/>: the CLOSE_WAIT guard it arms later
    /// comes due with the application idle (a task that runs the guard's close).</summary>
    public void PeerFin(bool guardFires = false)
    {
        if (_socketDisposed || !Lifecycle.OnPeerFin())
        {
            return;
        }

        Log("peer: FIN seen");
        _loop.TrySetResult(ModelLoopExit.PeerFin);
        if (guardFires)
        {
            Track(Task.Run(GuardFires));
        }
    }

    /// <summary>The peer reset the connection (seen by the loop, a send or the kernel view).</summary>
    public void PeerReset()
    {
        if (_socketDisposed || !Lifecycle.OnPeerReset())
        {
            return;
        }

        PeerSentReset = true;
        Log("peer: RST seen");
        _loop.TrySetResult(ModelLoopExit.PeerReset);
        RequestTeardown(CloseReason.PeerReset);
    }

    /// <summary>The CLOSE_WAIT guard comes due (OnGuardDeadline with no activity since the peer's FIN).</summary>
    public void GuardFires()
    {
        if (Lifecycle.IsReleased || Lifecycle.IsTearingDown || !Lifecycle.PeerFinSeen)
        {
            return;
        }

        Log("guard: fires");
        RequestTeardown(CloseReason.CloseWaitTimeout);
    }

    /// <summary>A drain bound (time, idle, or a listener's budget) fires: StopDrain.</summary>
    public void DrainBoundFires()
    {
        if (Lifecycle.IsReleased)
        {
            return;
        }

        if (Interlocked.CompareExchange(ref _drainStop, 1, 0) != 0)
        {
            return;
        }

        Log($"drain bound: fires (input taken: {_inputTaken})");
        if (_inputTaken)
        {
            // The teardown owns the loop: its pending read ends now.
            _loop.TrySetResult(ModelLoopExit.DrainStopped);
        }

        // Otherwise recorded only; the teardown applies it when its drain begins.
    }

    /// <summary>The teardown's flush bound fires (WaitBoundedAsync times out).</summary>
    public void FlushBoundFires() => _flushBound.TrySetResult();

    /// <summary>Waits until every task the model started by itself (detached teardowns, the guard, drain bounds) has
    /// ended, including those started meanwhile.</summary>
    public async Task BackgroundDoneAsync()
    {
        while (true)
        {
            Task[] started;
            lock (_record)
            {
                started = [.. _background];
            }

            await Task.WhenAll(started);
            lock (_record)
            {
                if (_background.Count == started.Length)
                {
                    return;
                }
            }
        }
    }

    // ---- The teardown (ManagedConnection.TeardownAsync) ----

    private void RequestTeardown(CloseReason reason)
    {
        if (Lifecycle.TryBeginTeardown(reason))
        {
            Log($"RequestTeardown({reason}): won, detached teardown");
            Track(TeardownAsync());
        }
    }

    private Task OnReferenceReleased(ConnectionLifecycle.ReleaseAction action) => action switch
    {
        ConnectionLifecycle.ReleaseAction.RunTeardown => TeardownAsync(),
        ConnectionLifecycle.ReleaseAction.WaitForCompletion => Lifecycle.GetCompletionTask(),
        _ => Task.CompletedTask,
    };

    private async Task<CloseResult> TeardownAsync()
    {
        // 0. No more reads by the application, no more sends.
        _inputTaken = true;
        Task sendsDone = Gate.CloseAndWait();
        Log($"teardown: CloseAndWait -> {(sendsDone.IsCompleted ? "drained" : "waiting")}");

        // 1. Flush, bounded.
        bool flushed = await Controlled.FirstAsync(sendsDone, _flushBound.Task);
        if (!flushed)
        {
            _unflushedFinAllowed = true;
        }

        // 2. FIN, even when the flush did not finish (it wakes a stuck send); then the stuck sends' grace.
        SendFin(allowInFlight: !flushed, "teardown");
        if (!flushed)
        {
            await sendsDone;
        }

        // 3. Drain: the loop reads until the peer's FIN, within the bounds.
        if (!_loop.Task.IsCompleted)
        {
            if (Volatile.Read(ref _drainStop) != 0)
            {
                _loop.TrySetResult(ModelLoopExit.DrainStopped);
            }
            else if (ScheduleDrainBoundOnDrain)
            {
                Track(Task.Run(DrainBoundFires));
            }
        }

        ModelLoopExit exit = await _loop.Task;
        Log($"teardown: loop ended ({exit}), flushed: {flushed}");

        // 4. Release; 5. Record.
        ReleaseSocket();
        return RecordResult(DecideOutcome(exit, flushed));
    }

    /// <summary>ManagedConnection.DecideOutcome, for the exits the model has.</summary>
    private CloseOutcome DecideOutcome(ModelLoopExit exit, bool flushed)
    {
        if (exit == ModelLoopExit.PeerReset || Lifecycle.PeerResetSeen)
        {
            return CloseOutcome.PeerReset;
        }

        if (!flushed)
        {
            return CloseOutcome.DrainTimedOut;
        }

        return exit switch
        {
            ModelLoopExit.PeerFin => Lifecycle.Reason == CloseReason.CloseWaitTimeout ? CloseOutcome.CloseWaitTimedOut : CloseOutcome.Graceful,
            ModelLoopExit.DrainStopped => CloseOutcome.DrainTimedOut,
            _ => CloseOutcome.Aborted,
        };
    }

    private enum FinResult
    {
        NotFirst,
        Sent,
        SocketGone,
    }

    /// <summary>SendFinForTeardown / ShutdownSendOnce: shutdown(SHUT_WR) if the lifecycle says this caller is the first.</summary>
    private FinResult SendFin(bool allowInFlight, string who)
    {
        if (!Lifecycle.TryMarkSendShutdown())
        {
            Log($"{who}: TryMarkSendShutdown refused");
            return FinResult.NotFirst;
        }

        int inFlight = Gate.InFlight;
        Log($"{who}: TryMarkSendShutdown granted, {inFlight} send(s) in flight");
        Specification.Assert(
            allowInFlight || inFlight == 0,
            "TryMarkSendShutdown granted our FIN ({0}) with {1} send(s) in flight.\n{2}",
            who,
            inFlight,
            TraceText);

        // The Shutdown(Send) call, after the lifecycle's lock was left: the socket may be gone by now.
        if (_socketDisposed)
        {
            Log($"{who}: Shutdown(Send) on a released socket (ObjectDisposedException)");
            return FinResult.SocketGone;
        }

        Interlocked.Increment(ref _finsSent);
        Log($"{who}: FIN sent");
        return FinResult.Sent;
    }

    /// <summary>ManagedConnection.ReleaseSocket: dispose if the lifecycle grants it, with linger 0 if abortive.</summary>
    private void ReleaseSocket()
    {
        if (!Lifecycle.TryRelease(out bool abortive))
        {
            return;
        }

        int disposals = Interlocked.Increment(ref _disposals);
        Log($"socket disposed (linger 0: {abortive})");
        Specification.Assert(disposals == 1, "The socket was disposed {0} times.\n{1}", disposals, TraceText);
        if (abortive)
        {
            Interlocked.Increment(ref _lingerZeroDisposals);
        }

        _socketDisposed = true;

        // A pending read fails on the disposed socket: the loop ends.
        _loop.TrySetResult(ModelLoopExit.Aborted);
    }

    private CloseResult RecordResult(CloseOutcome outcome)
    {
        // As ManagedConnection.Finish: the result is recorded, the listener hears of the end (Completed), Completion gets
        // the result, and the listener hears that (Published).
        CloseResult result = Lifecycle.Record(outcome, 0, TimeSpan.Zero);
        bool publishedEarly = Lifecycle.GetCompletionTask().IsCompleted;
        NoteEnd("completed");
        Specification.Assert(!publishedEarly, "Completion had its result before the listener heard of the end.\n{0}", TraceText);
        Lifecycle.PublishResult();
        NoteEnd("published");
        Log($"Record({outcome}) -> {result.Outcome}");
        lock (_record)
        {
            Specification.Assert(
                _recorded.Count == 0 || _recorded[0] == result,
                "Record returned {0} after it had returned {1}.\n{2}",
                result,
                _recorded.Count == 0 ? result : _recorded[0],
                TraceText);
            _recorded.Add(result);
        }

        return result;
    }

    private void NoteEnd(string step)
    {
        lock (_record)
        {
            _endSteps.Add(step);
        }
    }

    /// <summary>What the end told the listener, in order (ManagedConnection.Finish's Completed and Published callbacks).</summary>
    public IReadOnlyList<string> EndSteps
    {
        get
        {
            lock (_record)
            {
                return [.. _endSteps];
            }
        }
    }

    private void Note(CloseCall call)
    {
        lock (_record)
        {
            _closeCalls.Add(call);
        }
    }

    private void Track(Task task)
    {
        lock (_record)
        {
            _background.Add(task);
        }
    }
}

/// <summary>ConnectionLease: releases its reference once.</summary>
internal sealed class ModelLease(ModelConnection connection)
{
    private int _released;

    public Task DisposeAsync() =>
        Interlocked.Exchange(ref _released, 1) != 0 ? Task.CompletedTask : connection.ReleaseReferenceAsync();
}
