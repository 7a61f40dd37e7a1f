using System.IO.Pipelines;
using System.Net.Sockets;
using System.Runtime.CompilerServices;
using Microsoft.Extensions.Logging;
using SafeSockets.Diagnostics;
using SafeSockets.Internal;

namespace SafeSockets;

// The teardown: the one routine that flushes, sends FIN, drains, releases the socket and records the result
// (TeardownAsync), and the parties that only ask for it: CloseAsync, DisposeAsync and the last lease, Abort, the
// CLOSE_WAIT guard, a peer's reset, an unexpected fault, the drain bounds, a listener's draining budget.
public sealed partial class ManagedConnection
{
    // How long a teardown waits for a send that was stuck on a full window to fail once our send side is
    // shut down (shutdown wakes it with EPIPE at once; this only bounds a misbehaving platform).
    private static readonly TimeSpan s_stuckSendGrace = TimeSpan.FromSeconds(1);

    // When the teardown began (a timestamp of the settings' clock); written by its owner before anything reads it.
    private long _closeStart;

    // The drain: bytes the application never read that the teardown discarded, and when the last of them arrived.
    private long _bytesDrained;
    private long _drainActivity;

    // Why the drain was stopped early (a DrainStop); set once.
    private int _drainStop;

    // The peer's FIN, and the application's last activity after it (a send handed over, a read): the guard's clock.
    private long _peerFinTimestamp;
    private long _lastActivity;

    // The last byte received or handed to the kernel (IdleTimeout's clock; written only when the bound is on), and
    // whether the receive loop is paused behind bytes the application has not read (not idle either).
    private long _lastIo;

    // The receive loop's pause behind a full input, in one word: running; paused; or paused and counted by an abort.
    // An abort that finds the loop paused counts what the kernel holds then (it takes the pause: paused -> counted);
    // the loop, woken, finds its pause taken and reads no more. Whichever of the two takes the pause first wins, once.
    private int _inputPause;
    private const int InputRunning = 0;
    private const int InputPausedState = 1;
    private const int InputPausedCountedByAbort = 2;

    private bool InputPaused => Volatile.Read(ref _inputPause) != InputRunning;

    // A ReceiveAsync the teardown woke completes the input's reader (the pipe then drops what the loop advances): raised
    // first, so a loop read not yet handed over is counted by the loop and never advanced.
    private bool _readerCompletedByTeardown;

    // The kernel gave up on the peer (keep-alive or retransmissions timed out): latched, so whoever looks after it (a
    // running teardown, a failing send) says unreachable, not reset.
    private bool _peerUnreachable;

    // How many times the socket was actually disposed; tests assert exactly one. Counted where it happens, not guarded.
    private int _releases;

    // The input is given back (reader completed, pooled pipe returned) when both the loop has ended and the socket is
    // released: whoever of the two comes last does it.
    private int _inputHolds = 2;
    private bool _inputReturnable;

    // This connection's place in its DeadlineQueue (-1: none), its due time and its purpose; changed only under the queue's lock.
    private int _deadlineIndex = -1;
    private long _deadlineDue;
    private DeadlinePurpose _deadlinePurpose;

    /// <summary>Why a drain ended before the peer's FIN.</summary>
    private enum DrainStop
    {
        None,
        Bound,
        Cancelled,
        Budget,
        ProtocolFinished,
    }

    /// <summary>The bytes drained so far (counted as they are read), for tests.</summary>
    internal long BytesDrainedForTest => Interlocked.Read(ref _bytesDrained);

    /// <summary>How many times the socket was disposed; tests assert it is exactly one.</summary>
    internal int ReleaseCount => Volatile.Read(ref _releases);

    /// <summary>The result, once the connection is finished.</summary>
    internal CloseResult? FinalResult => _lifecycle.Result;

    /// <summary>Closes gracefully: flush, FIN, read and discard until the peer's FIN (within the drain bounds), then release the socket.</summary>
    /// <param name="cancellationToken">Cuts the close short: the socket is still released (possibly with a reset if
    /// unread data arrived), then <see cref="OperationCanceledException"/> is thrown.</param>
    /// <returns>How the close ended. The first call reports how the connection ended, whoever ended it (including a close
    /// the connection did by itself, <see cref="CloseOutcome.CloseWaitTimedOut"/>, or <see cref="Abort"/>): exactly
    /// <see cref="Completion"/>'s result. Later calls return <see cref="CloseOutcome.AlreadyClosed"/>. It never throws
    /// for a peer's misbehaviour.</returns>
    public ValueTask<CloseResult> CloseAsync(CancellationToken cancellationToken = default)
    {
        // Claiming the result and owning the teardown are two different things: a later call can win the teardown after
        // an earlier one claimed the result (found by schedule exploration, tests/SafeSockets.Concurrency).
        bool first = _lifecycle.TryClaimResult();
        if (_lifecycle.TryBeginTeardown(CloseReason.Application))
        {
            return OwnedCloseAsync(first, cancellationToken);
        }

        return WaitForTeardownAsync(first, cancellationToken);
    }

    /// <summary>Closes with a reset (RST) on purpose: linger 0, then release. Data in flight either way is lost.</summary>
    /// <remarks>The only operation that sends RST deliberately. It also cuts a graceful close in progress short (the
    /// outcome is then <see cref="CloseOutcome.Aborted"/>). Calling it after the socket was released does nothing.</remarks>
    public void Abort()
    {
        switch (_lifecycle.RequestAbort())
        {
            case ConnectionLifecycle.AbortAction.RunTeardown:
                // Nothing to flush or drain: the whole teardown is the release, here and now.
                _closeStart = _settings.TimeProvider.GetTimestamp();
                try
                {
                    // Stryker disable once Statement : ReleaseSocket below cancels the deadline too; one that fires in between finds the teardown begun and returns
                    _settings.Deadlines.Cancel(this);

                    // A loop paused behind a full input is counted while still paused (TakeInputForTeardown).
                    bool counted = TakeInputForTeardown(countPausedLoop: true);

                    // A parked loop stays parked, and nobody else can wake it, until the socket is released: it must not
                    // read now. What the kernel holds unread is lost with the reset: counted, as a loop's read would have.
                    bool held = _park.TryHold();
                    try
                    {
                        // Also when a wake is on its way (a watch resumes the loop from the pool, or the watch's zero-byte
                        // read waits for it): the loop has not read since it parked, and once it runs it sees the abort and
                        // reads nothing.
                        if (!counted && (held || _park.IsWaking))
                        {
                            CountUnreadInKernel();
                        }

                        _sendGate.CloseForGood();
                        StopSendLoop();
                        ReleaseSocket();
                    }
                    finally
                    {
                        if (held)
                        {
                            // It ends now, without a read (it finds the socket released).
                            _park.Drain();
                            _park.Resume();
                        }
                    }
                }
                finally
                {
                    // Whatever happened above, the one result is recorded and everyone waiting is told.
                    Finish(_lifecycle.Record(CloseOutcome.Aborted, Interlocked.Read(ref _bytesDrained), _settings.TimeProvider.GetElapsedTime(_closeStart)));
                }

                break;
            case ConnectionLifecycle.AbortAction.ReleaseNow:
                // The running teardown wakes up (its reads and sends fail), finds the socket released and records Aborted.
                ReleaseSocket();
                break;
        }
    }

    /// <summary>Releases the creator's reference: with no <see cref="ConnectionLease"/> outstanding this is the graceful
    /// close of <see cref="CloseAsync"/>; otherwise the connection stays open until the last lease is released.</summary>
    /// <returns>A task that completes once the reference is released (and, if it was the last, the socket too).</returns>
    /// <remarks>Calling it more than once releases the creator's reference only once; later calls wait for the close if one is under way.</remarks>
    public ValueTask DisposeAsync()
    {
        if (_lifecycle.ReleaseCreator() is { } action)
        {
            return OnReferenceReleased(action);
        }

        return _lifecycle.IsTearingDown ? IgnoreResult(Completion) : default;
    }

    /// <summary>A graceful close on behalf of a listener (a refused connection, or every one at stop): like CloseAsync, but
    /// it does not take the application's result (its own first CloseAsync still reports the end).</summary>
    internal Task<CloseResult> CloseForListenerAsync()
    {
        if (_lifecycle.TryBeginTeardown(CloseReason.Application))
        {
            RunDetached(TeardownAsync(CancellationToken.None));
        }

        return Completion;
    }

    /// <summary>Asks for the teardown on behalf of someone who does not wait for it (the guard, a reset, a fault).</summary>
    private void RequestTeardown(CloseReason reason)
    {
        if (_lifecycle.TryBeginTeardown(reason))
        {
            RunDetached(TeardownAsync(CancellationToken.None));
        }
    }

    private ValueTask OnReferenceReleased(ConnectionLifecycle.ReleaseAction action) => action switch
    {
        ConnectionLifecycle.ReleaseAction.RunTeardown => IgnoreResult(TeardownAsync(CancellationToken.None)),
        ConnectionLifecycle.ReleaseAction.WaitForCompletion => IgnoreResult(Completion),
        _ => default,
    };

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    private async ValueTask<CloseResult> OwnedCloseAsync(bool first, CancellationToken cancellationToken)
    {
        CloseResult result;
        if (!cancellationToken.CanBeCanceled)
        {
            result = await TeardownAsync(cancellationToken).ConfigureAwait(false);
        }
        else
        {
            using CancellationTokenRegistration registration = cancellationToken.UnsafeRegister(static s => ((ManagedConnection)s!).StopDrain(DrainStop.Cancelled), this);
            result = await TeardownAsync(cancellationToken).ConfigureAwait(false);
        }

        cancellationToken.ThrowIfCancellationRequested();
        return first ? result : AlreadyClosed;
    }

    private static CloseResult AlreadyClosed => new(CloseOutcome.AlreadyClosed, 0, TimeSpan.Zero);

    private async ValueTask<CloseResult> WaitForTeardownAsync(bool first, CancellationToken cancellationToken)
    {
        CloseResult result = await Completion.WaitAsync(cancellationToken).ConfigureAwait(false);
        return first ? result : AlreadyClosed;
    }

    /// <summary>The teardown; runs once, for whoever won the lifecycle's teardown. It never throws: an unexpected
    /// exception is logged and recorded as <see cref="CloseOutcome.Faulted"/>, and the socket is released whatever happens.</summary>
    /// <param name="cancellationToken">The owning CloseAsync's token: cuts the flush short (the drain is cut by its registration).</param>
    /// <param name="tls">A TLS close that already drained above TCP: its start, bytes and the bound it hit.</param>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    private async ValueTask<CloseResult> TeardownAsync(CancellationToken cancellationToken, TlsDrain? tls = null)
    {
        TimeProvider clock = _settings.TimeProvider;
        _closeStart = tls?.Start ?? clock.GetTimestamp();
        Interlocked.Add(ref _bytesDrained, tls?.Bytes ?? 0);
        LoopExit exit = LoopExit.Aborted;
        // Stryker disable once Boolean : read only after step 1 assigns it, or after a fault (the outcome is then Faulted whatever it says)
        bool flushed = false;
        bool faulted = false;
        try
        {
            // 0. No more guard, no more reads by the application, no more sends.
            // Stryker disable once Statement : the drain bound replaces the deadline and the release cancels it; a guard or idle bound that fires meanwhile finds the teardown begun and returns
            _settings.Deadlines.Cancel(this);
            TakeInputForTeardown();

            // A parked loop starts draining now: on this thread for its first read (it then goes on on the pool, so a peer
            // that keeps sending does not hold the closer's thread).
            _park.Drain();
            StopSendLoop();
            Task sendsDone = _sendGate.CloseAndWait();

            // 1. Flush: wait until every send in flight (and what Transport.Output had flushed) is handed to the kernel.
            flushed = await WaitBoundedAsync(sendsDone, _closeStart + _settings.DrainTimeoutTicks, cancellationToken).ConfigureAwait(false);

            // 2. FIN. Even when the flush did not finish: shutting the send side wakes a send stuck on a zero window (EPIPE).
            SendFinForTeardown();
            if (!flushed)
            {
                await WaitBoundedAsync(sendsDone, clock.GetTimestamp() + _settings.ToTicks(s_stuckSendGrace), CancellationToken.None).ConfigureAwait(false);
            }

            // 3. Drain: the receive loop reads and discards until the peer's FIN, within the bounds. A teardown can begin
            // (a reset seen by the loop's first read, on another thread) while the constructor is still storing the
            // loop's task: wait for the store, it is the constructor's last step.
            for (SpinWait spin = default; !Volatile.Read(ref _receiveLoopStored);)
            {
                spin.SpinOnce();
            }

            if (!_receiveLoop.IsCompleted)
            {
                Volatile.Write(ref _drainActivity, clock.GetTimestamp());
                _settings.DrainStarted?.Invoke(this);
                if (Volatile.Read(ref _drainStop) != (int)DrainStop.None || cancellationToken.IsCancellationRequested)
                {
                    // Cut before it began (a cancelled close, the protocol above saw the peer's end, or the budget).
                    // Stryker disable once Conditional : a drain stopped by a cancelled close and one stopped by a bound both end as DrainTimedOut; and when a reason was recorded earlier, it stays
                    StopDrain(cancellationToken.IsCancellationRequested ? DrainStop.Cancelled : DrainStop.Bound, force: true);
                }
                else
                {
                    ScheduleDrainBound();
                }
            }

            exit = await _receiveLoop.ConfigureAwait(false);
        }
#pragma warning disable CA1031 // The teardown must release the socket and record a result whatever happens; the fault is logged and recorded.
        catch (Exception ex)
#pragma warning restore CA1031
        {
            // Stryker disable once all : a defensive catch-all; nothing above throws unless the library has a bug
            faulted = true;
            // Stryker disable once all : as above
            Log.UnexpectedError(_settings.Logger, "teardown", RemoteEndPoint?.ToString(), ex);
        }

        // 4. Release: the one place a graceful teardown disposes the socket (Abort may have done it already, abortively).
        try
        {
            ReleaseSocket();
        }
#pragma warning disable CA1031 // Logged and recorded; the result below is written whatever happens.
        catch (Exception ex)
#pragma warning restore CA1031
        {
            // Stryker disable once all : a defensive catch-all; disposing a socket does not throw unless the library has a bug
            faulted = true;
            // Stryker disable once all : as above
            Log.UnexpectedError(_settings.Logger, "teardown", RemoteEndPoint?.ToString(), ex);
        }

        // 5. Record: once; Completion and CloseAsync's first caller get this very result.
        CloseOutcome outcome = faulted ? CloseOutcome.Faulted : DecideOutcome(exit, flushed, tls?.Bound);
        CloseResult result = _lifecycle.Record(outcome, Interlocked.Read(ref _bytesDrained), clock.GetElapsedTime(_closeStart));
        Finish(result);
        return result;
    }

    /// <summary>What the teardown's steps amount to (an abortive release overrides it with Aborted in the lifecycle).</summary>
    private CloseOutcome DecideOutcome(LoopExit exit, bool flushed, CloseOutcome? tlsBound)
    {
        if (exit == LoopExit.Faulted || _lifecycle.Reason == CloseReason.Faulted)
        {
            return CloseOutcome.Faulted;
        }

        if (_lifecycle.Reason == CloseReason.PeerUnreachable || Volatile.Read(ref _peerUnreachable))
        {
            return CloseOutcome.PeerUnreachable;
        }

        if (exit == LoopExit.PeerReset || _lifecycle.PeerResetSeen)
        {
            return CloseOutcome.PeerReset;
        }

        if (!flushed)
        {
            return CloseOutcome.DrainTimedOut;
        }

        CloseOutcome outcome = exit switch
        {
            LoopExit.PeerFin => _lifecycle.Reason switch
            {
                CloseReason.CloseWaitTimeout => CloseOutcome.CloseWaitTimedOut,
                CloseReason.IdleTimeout => CloseOutcome.IdleTimedOut,
                _ => CloseOutcome.Graceful,
            },
            LoopExit.DrainLimitExceeded => CloseOutcome.DrainLimitExceeded,
            LoopExit.DrainStopped => (DrainStop)Volatile.Read(ref _drainStop) switch
            {
                DrainStop.Budget => CloseOutcome.DrainBudgetExceeded,
                DrainStop.ProtocolFinished => CloseOutcome.Graceful,
                _ => CloseOutcome.DrainTimedOut,
            },
            _ => CloseOutcome.Aborted,
        };
        return outcome == CloseOutcome.Graceful && tlsBound is { } bound ? bound : outcome;
    }

    /// <summary>Waits for <paramref name="task"/> until <paramref name="dueTimestamp"/>; <see langword="false"/> if the time or the token ran out first.</summary>
    private async ValueTask<bool> WaitBoundedAsync(Task task, long dueTimestamp, CancellationToken cancellationToken)
    {
        if (task.IsCompleted)
        {
            return true;
        }

        TimeProvider clock = _settings.TimeProvider;
        TimeSpan left = clock.GetElapsedTime(clock.GetTimestamp(), dueTimestamp);
        if (left <= TimeSpan.Zero)
        {
            return false;
        }

        try
        {
            await task.WaitAsync(left, clock, cancellationToken).ConfigureAwait(false);
            return true;
        }
        catch (TimeoutException)
        {
            return false;
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
            return false;
        }
    }

    /// <summary>Step 2: our FIN, unless it was sent already (or the socket is gone).</summary>
    private void SendFinForTeardown()
    {
        if (!_lifecycle.TryMarkSendShutdown())
        {
            return;
        }

        try
        {
            _socket.Shutdown(SocketShutdown.Send);
        }
        catch (SocketException ex) when (SocketErrors.IsConnectionReset(ex.SocketErrorCode))
        {
            // The peer reset first; recorded as the outcome.
            OnPeerResetDuringTeardown();
        }
        catch (ObjectDisposedException)
        {
            // Abort released the socket meanwhile; the outcome is Aborted.
        }
    }

    private void OnPeerResetDuringTeardown() => _lifecycle.OnPeerReset();

    /// <summary>Counts the bytes the kernel received that nobody read (the loop is parked and held): an abort discards them.</summary>
    private void CountUnreadInKernel()
    {
        try
        {
            int unread = _socket.Available;
            if (unread > 0)
            {
                Interlocked.Add(ref _bytesDrained, unread);
            }
        }
        catch (Exception ex) when (ex is SocketException or ObjectDisposedException)
        {
            // Reset already, or released: nothing to count.
        }
    }

    /// <summary>Disposes the socket if the lifecycle grants it (once), with linger 0 if the teardown is an abort.</summary>
    private void ReleaseSocket()
    {
        if (!_lifecycle.TryRelease(out bool abortive))
        {
            return;
        }

        Interlocked.Increment(ref _releases);
        try
        {
            if (abortive)
            {
                try
                {
                    _socket.LingerState = new LingerOption(true, 0);
                }
                catch (Exception ex) when (ex is SocketException or ObjectDisposedException)
                {
                    // Already reset by the peer (the close below sends nothing either way), or the application disposed
                    // the adopted socket itself (then the receive loop reports it as a fault).
                }
            }

            _socket.Dispose();
        }
        finally
        {
            ReturnSendArgs();
            Volatile.Write(ref _park.Owner, null);

            // A loop still parked (a step before the drain failed) ends now, without a read: it finds the socket released.
            _park.Drain();
            _settings.Deadlines.Cancel(this);
            Volatile.Read(ref _extras)?.FinProbe?.Dispose();
            LetGoOfInput();
        }
    }

    /// <summary>After the result is recorded: metrics, logs, the listener (its slot freed), and PeerClosed's waiters; then
    /// Completion (so whoever awaits it finds those in place); then the listener again (only this can end its stop, so
    /// a stop's caller finds every Completion done).</summary>
    /// <remarks>Nothing the application's logger (Internal/ContainedLogger.cs) or a meter listener throws in the report
    /// leaves here: it would reach an <c>Abort</c>'s caller, or a detached teardown's work item, which would crash the
    /// process. The listener hears of the end and Completion completes whatever happened: a stop must not wait for a
    /// connection that has ended.</remarks>
    private void Finish(CloseResult result)
    {
        try
        {
            try
            {
                Report(result);
            }
#pragma warning disable CA1031 // A meter listener's exception (the logger's are contained already): nowhere to report it.
            catch (Exception)
#pragma warning restore CA1031
            {
                // Dropped: see the remarks.
            }

            _settings.Completed?.Invoke(this);
            FirePeerClosed();
        }
        finally
        {
            BeforePublishForTest?.Invoke(this);
            _lifecycle.PublishResult();

            // The listener's stop waits for this, not for Completed above: a stop is over once every Completion has its result.
            _settings.Published?.Invoke(this);
            AfterPublishForTest?.Invoke(this);
        }
    }

    /// <summary>One of the input's two holders (the loop's end, the release) lets go; the last gives the input back.</summary>
    private void LetGoOfInput()
    {
        if (Interlocked.Decrement(ref _inputHolds) != 0)
        {
            return;
        }

        Volatile.Read(ref _extras)?.ReceiveCts?.Dispose();
        if (!Volatile.Read(ref _inputReturnable) || HasIo(IoPipe))
        {
            // A ReceiveAsync or the application's Transport reader owns the reader; they complete it. (Or, rarely, an
            // escalated Abort got here while the teardown was still discarding: the pipe is then collected, not pooled.)
            return;
        }

        // Unread data is discarded (and counted, if the result is not recorded yet). The reader is completed after the
        // writer, so the pooled pipe keeps its buffer segment for the next connection. After an error the writer's
        // exception would be thrown by reading: just complete.
        PipeReader reader = _input.Reader;
        if (!_lifecycle.PeerResetSeen && Volatile.Read(ref _extras)?.LoopFault is null)
        {
            DiscardUnreadInput();
        }

        reader.Complete();
        if (_inputPooled)
        {
            s_inputPipePool.Return(_input);
        }
    }

    /// <summary>Metrics and logs for a finished connection.</summary>
    private void Report(CloseResult result)
    {
        Instruments instruments = _settings.Instruments;
        ConnectionTags tags = MetricTags;
        ReadOnlySpan<KeyValuePair<string, object?>> ended = tags.Ended(result.Outcome);
        instruments.Closed.Add(1, ended);
        instruments.CloseDuration.Record(result.Elapsed.TotalSeconds, ended);
        if (instruments.ConnectionDuration.Enabled)
        {
            instruments.ConnectionDuration.Record(_settings.TimeProvider.GetElapsedTime(_openedTimestamp).TotalSeconds, ended);
        }

        if (result.BytesDrained > 0)
        {
            instruments.Drained.Add(result.BytesDrained, tags.Common);
        }

        long peerFin = Volatile.Read(ref _peerFinTimestamp);
        if (peerFin != 0 && instruments.PeerFinToClose.Enabled)
        {
            instruments.PeerFinToClose.Record(_settings.TimeProvider.GetElapsedTime(peerFin).TotalSeconds, tags.Common);
        }

        switch (result.Outcome)
        {
            case CloseOutcome.CloseWaitTimedOut:
                instruments.ForcedCloses.Add(1, tags.Common);
                if (_settings.Logger.IsEnabled(LogLevel.Warning))
                {
                    Log.ForcedCloseAfterPeerFin(_settings.Logger, Volatile.Read(ref _extras)?.LocalEndPoint?.ToString(), RemoteEndPoint?.ToString(), _settings.CloseWaitTimeout);
                }

                break;
            case CloseOutcome.Aborted:
                instruments.Aborts.Add(1, tags.Common);
                Log.Aborted(_settings.Logger, RemoteEndPoint?.ToString());
                break;
            case CloseOutcome.PeerReset:
                Log.ResetByPeer(_settings.Logger, RemoteEndPoint?.ToString());
                break;
            case CloseOutcome.IdleTimedOut:
                Log.IdleTimedOut(_settings.Logger, RemoteEndPoint?.ToString(), _settings.IdleTimeout);
                break;
            case CloseOutcome.DrainTimedOut or CloseOutcome.DrainLimitExceeded or CloseOutcome.DrainBudgetExceeded:
                Log.DrainBoundHit(_settings.Logger, RemoteEndPoint?.ToString(), result.Outcome, result.BytesDrained, result.Elapsed);
                break;
        }
    }

    /// <summary>Runs a teardown nobody awaits, and observes it: it does not throw by design, and if it ever did, the
    /// exception is logged rather than lost.</summary>
    private void RunDetached(ValueTask<CloseResult> teardown)
    {
        // Stryker disable once Block : observing a teardown that never throws (TeardownAsync catches everything): a defensive net for a library bug
        if (!teardown.IsCompleted)
        {
            _ = ObserveAsync(teardown);
        }
        else
        {
            _ = teardown.Result;
        }
    }

    private async Task ObserveAsync(ValueTask<CloseResult> teardown)
    {
        try
        {
            // Stryker disable once Statement : observing a teardown that never throws: a defensive net for a library bug
            await teardown.ConfigureAwait(false);
        }
#pragma warning disable CA1031 // Observed and logged: nothing may fault unobserved.
        catch (Exception ex)
#pragma warning restore CA1031
        {
            // Stryker disable once all : as above
            Log.UnexpectedError(_settings.Logger, "teardown", RemoteEndPoint?.ToString(), ex);
        }
    }

    // ---- The CLOSE_WAIT guard: an inactivity bound after the peer's FIN (HAProxy's `timeout client-fin`) ----

    /// <summary>After the peer's FIN: close by ourselves if the application then does nothing for CloseWaitTimeout.</summary>
    /// <remarks>The guard is a deadline in the shared <see cref="DeadlineQueue"/>. On Linux it also comes due every 250 ms
    /// to ask the kernel whether the peer has since reset (after a FIN no read can see a reset: recv keeps returning 0).</remarks>
    private void StartCloseWaitGuard(long now)
    {
        if (_settings.CloseWaitTimeoutTicks == 0)
        {
            QueueGuardClose();
            return;
        }

        if (SendInFlight())
        {
            // A send is under way at the peer's FIN: its progress is measured from here, so even the first look (which
            // comes at CloseWaitTimeout when that is under the 250 ms probe period) can tell.
            GetExtras().GuardAckedBytes = TcpConnectionInfo.ReadBytesAcked(_socket);
        }

        ScheduleGuard(now, Math.Min(now + _settings.CloseWaitTimeoutTicks, IdleDeadline(now)));
    }

    /// <summary>Arms (or moves) the guard. It never takes the slot from a drain bound, and a teardown that began
    /// meanwhile (and may already have cleared the deadlines) does not find a guard left behind.</summary>
    private void ScheduleGuard(long now, long deadline)
    {
        long due = OperatingSystem.IsLinux() ? Math.Min(deadline, now + _settings.ToTicks(s_finProbePeriod)) : deadline;
        _settings.Deadlines.Schedule(this, due, DeadlinePurpose.CloseWaitGuard);
        if (_lifecycle.IsTearingDown)
        {
            _settings.Deadlines.Cancel(this, DeadlinePurpose.CloseWaitGuard);
        }
    }

    /// <summary>The application did something with the connection after the peer's FIN: the guard counts from now.</summary>
    /// <remarks>Called on every send and receive; costs one volatile read before the peer's FIN.</remarks>
    private void NoteActivity()
    {
        if (_lifecycle.State is ConnectionState.PeerShutdown or ConnectionState.BothShutdown)
        {
            Volatile.Write(ref _lastActivity, _settings.TimeProvider.GetTimestamp());
        }
    }

    /// <summary>Runs in the receive loop right after a read that got bytes for the application, before they are flushed to
    /// the input, for the connection given; for tests (process-wide; a field: one load on the hot path when unset).</summary>
    internal static Action<ManagedConnection>? AfterReadForTest
    {
        get => Volatile.Read(ref s_afterReadForTest);
        set => Volatile.Write(ref s_afterReadForTest, value);
    }

    private static Action<ManagedConnection>? s_afterReadForTest;

    /// <summary>Runs right after a teardown took the input (before it wakes a reader), for the connection given; for tests
    /// (process-wide).</summary>
    internal static Action<ManagedConnection>? AfterInputTakenForTest { get; set; }

    /// <summary>Runs after the listener and the metrics heard of a connection's end, before its Completion completes, for
    /// the connection given; for tests (process-wide).</summary>
    internal static Action<ManagedConnection>? BeforePublishForTest { get; set; }

    /// <summary>Runs after Completion completed and the listener heard of it, for the connection given; for tests (process-wide).</summary>
    internal static Action<ManagedConnection>? AfterPublishForTest { get; set; }

    /// <summary>Runs right after an abort took a paused loop's pause, for the connection given; for tests (process-wide).</summary>
    internal static Action<ManagedConnection>? AfterAbortTookPauseForTest { get; set; }

    /// <summary>Runs between the guard's first look at our send side and its read of the kernel's view, for the connection
    /// given; for tests (a process-wide hook: it must check which connection it is called for).</summary>
    internal static Action<ManagedConnection>? BeforeGuardReadsKernelForTest { get; set; }

    private bool BeforeGuardReadsKernel()
    {
        BeforeGuardReadsKernelForTest?.Invoke(this);
        return true;
    }

    private void OnGuardDeadline()
    {
        if (_lifecycle.IsTearingDown || !_lifecycle.PeerFinSeen)
        {
            return;
        }

        // After the peer's FIN a read cannot see a reset, the kernel can: TCP_CLOSE with our send side still open can
        // only be a reset. (Once our FIN is out too, TCP_CLOSE is also the end of an ordinary close of both sides.)
        // Our send side is looked at again after the kernel's view: our FIN is marked before it is sent, so a close that
        // sent it between the first look and the kernel's read (both FINs then acknowledged: TCP_CLOSE too, at once on
        // loopback) is seen by the second look, not taken for a reset (RaceTests caught the guard calling such a close
        // PeerReset, once in a run of 100 rounds).
        if (OperatingSystem.IsLinux() && !_lifecycle.SendShutdown && BeforeGuardReadsKernel() && TcpConnectionInfo.Read(_socket) is { IsAvailable: true, State: TcpState.Close }
            && !_lifecycle.SendShutdown && !_lifecycle.IsTearingDown)
        {
            // Never on this thread: the deadline queue's one waiter must stay free for other connections.
            // Stryker disable once Boolean : preferLocal only picks the pool's local or global queue (and a thread outside the pool has no local one); the work item runs either way
            ThreadPool.UnsafeQueueUserWorkItem(static s => s.OnPeerReset(), this, preferLocal: false);
            return;
        }

        long now = _settings.TimeProvider.GetTimestamp();
        if (!SendInFlight())
        {
            // No send: the next one starts a new measure of progress.
            if (Volatile.Read(ref _extras) is { } extras)
            {
                extras.GuardAckedBytes = -1;
            }
        }
        else if (SendIsMakingProgress())
        {
            // A send still making progress is the application's activity (a large answer going out to a slow reader).
            Volatile.Write(ref _lastActivity, now);
        }

        long deadline = Math.Max(Volatile.Read(ref _lastActivity), Volatile.Read(ref _peerFinTimestamp)) + _settings.CloseWaitTimeoutTicks;
        long idleDeadline = IdleDeadline(now);
        if (now >= deadline)
        {
            QueueGuardClose();
        }
        else if (now >= idleDeadline)
        {
            QueueIdleClose();
        }
        else
        {
            ScheduleGuard(now, Math.Min(deadline, idleDeadline));
        }
    }

    /// <summary>When the idle bound comes due (long.MaxValue when IdleTimeout is off); a send in progress counts as traffic now.</summary>
    private long IdleDeadline(long now)
    {
        long idle = _settings.IdleTimeoutTicks;
        if (idle == 0)
        {
            return long.MaxValue;
        }

        if (SendInFlight() || InputPaused)
        {
            Volatile.Write(ref _lastIo, now);
        }

        return Volatile.Read(ref _lastIo) + idle;
    }

    /// <summary>The idle bound before the peer's FIN (after it, the guard checks it too).</summary>
    private void OnIdleDeadline()
    {
        if (_lifecycle.IsTearingDown || _lifecycle.PeerFinSeen)
        {
            return;
        }

        long now = _settings.TimeProvider.GetTimestamp();
        long due = IdleDeadline(now);
        if (now >= due)
        {
            QueueIdleClose();
            return;
        }

        _settings.Deadlines.Schedule(this, due, DeadlinePurpose.IdleBound);
        if (_lifecycle.IsTearingDown || _lifecycle.PeerFinSeen)
        {
            // The teardown or the guard took over meanwhile: leave no idle bound behind (a drain bound is never displaced).
            _settings.Deadlines.Cancel(this, DeadlinePurpose.IdleBound);
        }
    }

    // Stryker disable once Boolean : preferLocal only picks the pool's local or global queue; the work item runs either way
    private void QueueIdleClose() => ThreadPool.UnsafeQueueUserWorkItem(static s => s.RequestTeardown(CloseReason.IdleTimeout), this, preferLocal: true);

    /// <summary>A byte moved (received, or handed to the kernel): IdleTimeout counts from now. A branch when the bound is off.</summary>
    private void NoteIo()
    {
        if (_settings.IdleTimeoutTicks != 0)
        {
            Volatile.Write(ref _lastIo, _settings.TimeProvider.GetTimestamp());
        }
    }

    /// <summary>Whether a send is in the kernel's hands right now (direct sends, or the Transport send loop in a send).</summary>
    private bool SendInFlight() => HasIo(IoPipe) ? Volatile.Read(ref _transportSending) : _sendGate.InFlight > 0;

    /// <summary>Whether the peer acknowledged more of our bytes since the guard last looked (Linux <c>tcpi_bytes_acked</c>).
    /// Where the kernel cannot tell, a send in flight counts as progress.</summary>
    private bool SendIsMakingProgress()
    {
        long acked = TcpConnectionInfo.ReadBytesAcked(_socket);
        if (acked < 0)
        {
            return true;
        }

        // Progress is what moved between two looks. A send that began since the last look has no baseline yet: it counts
        // as progress once (it was just handed over), and is measured from here.
        Extras extras = GetExtras();
        long before = extras.GuardAckedBytes;
        extras.GuardAckedBytes = acked;
        return before < 0 || acked != before;
    }

    /// <summary>The guard's close runs on the pool, never on the thread that noticed (the receive loop, or the deadline
    /// queue's one waiter thread, which stays free for other connections' deadlines however many come due at once).</summary>
    // Stryker disable once Boolean : preferLocal only picks the pool's local or global queue; the work item runs either way
    private void QueueGuardClose() => ThreadPool.UnsafeQueueUserWorkItem(static s => s.RequestTeardown(CloseReason.CloseWaitTimeout), this, preferLocal: true);

    // ---- The drain's bounds ----

    /// <summary>Starts the drain's time bounds: the total from the teardown's start, the idle one from the last drained byte.</summary>
    private void ScheduleDrainBound()
    {
        long due = Math.Min(_closeStart + _settings.DrainTimeoutTicks, Volatile.Read(ref _drainActivity) + _settings.DrainIdleTimeoutTicks);
        if (due <= _settings.TimeProvider.GetTimestamp())
        {
            StopDrain(DrainStop.Bound);
            return;
        }

        _settings.Deadlines.Schedule(this, due, DeadlinePurpose.DrainBound);
        if (_lifecycle.IsReleased)
        {
            _settings.Deadlines.Cancel(this);
        }
    }

    /// <summary>A listener's draining budget is exhausted: end this drain now (outcome <see cref="CloseOutcome.DrainBudgetExceeded"/>).</summary>
    /// <returns><see langword="true"/> if the drain was still running and is now being cut.</returns>
    internal bool CutDrainShort() => !_lifecycle.IsReleased && StopDrain(DrainStop.Budget);

    /// <summary>A protocol above TCP (TLS close_notify) saw the peer's orderly end: the drain need not wait for the TCP FIN.</summary>
    private void MarkPeerFinishedByProtocol() => Interlocked.CompareExchange(ref _drainStop, (int)DrainStop.ProtocolFinished, (int)DrainStop.None);

    /// <summary>Ends the loop's pending read now, without a reset (a bound, a cancelled close, the budget). The first reason wins.</summary>
    /// <param name="why">Why the drain stops.</param>
    /// <param name="force">Stop it even though a reason was recorded earlier (it was recorded before the drain began).</param>
    /// <returns><see langword="true"/> if this call stopped it.</returns>
    private bool StopDrain(DrainStop why, bool force = false)
    {
        if (Interlocked.CompareExchange(ref _drainStop, (int)why, (int)DrainStop.None) != (int)DrainStop.None && !force)
        {
            return false;
        }

        if (!HasIo(IoInputTaken))
        {
            // Recorded only; the teardown applies it when its drain begins.
            return true;
        }

        if (Volatile.Read(ref _extras)?.ReceiveCts is { } cts)
        {
            try
            {
                cts.Cancel();
            }
            catch (ObjectDisposedException)
            {
            }

            return true;
        }

        try
        {
            _socket.Shutdown(SocketShutdown.Receive);
        }
        catch (Exception ex) when (ex is SocketException or ObjectDisposedException)
        {
            // Already reset or released: the loop has ended or is about to.
        }

        return true;
    }

    // ---- Deadlines ----

    int IDeadlineOwner.DeadlineIndex
    {
        get => Volatile.Read(ref _deadlineIndex);
        set => _deadlineIndex = value;
    }

    long IDeadlineOwner.DeadlineDue
    {
        get => _deadlineDue;
        set => _deadlineDue = value;
    }

    DeadlinePurpose IDeadlineOwner.DeadlinePurpose
    {
        get => _deadlinePurpose;
        set => _deadlinePurpose = value;
    }

    /// <summary>Called by the <see cref="DeadlineQueue"/> when this connection's deadline comes due (on its waiter thread).</summary>
    void IDeadlineOwner.OnDeadline(DeadlinePurpose purpose)
    {
        if (_lifecycle.IsReleased)
        {
            return;
        }

        switch (purpose)
        {
            case DeadlinePurpose.CloseWaitGuard:
                OnGuardDeadline();
                break;
            case DeadlinePurpose.IdleBound:
                OnIdleDeadline();
                break;
            case DeadlinePurpose.DrainBound:
                // Drained bytes move the idle bound on without touching the queue: it is re-read here.
                if (Volatile.Read(ref _drainStop) == (int)DrainStop.None)
                {
                    ScheduleDrainBound();
                }

                break;
        }
    }

    // ---- TLS (SslStreamTeardownExtensions) ----

    /// <summary>What a TLS close drained above TCP before the connection's own teardown.</summary>
    internal readonly record struct TlsDrain(long Start, long Bytes, CloseOutcome? Bound);

    /// <summary>The connection's close for a TLS close that has already sent close_notify and drained above TCP: the one
    /// teardown records a result that includes the TLS part, so Completion and the TLS close report the same.</summary>
    internal ValueTask<CloseResult> CloseAfterTlsAsync(TlsDrain tls, bool peerFinishedByProtocol, CancellationToken cancellationToken)
    {
        if (peerFinishedByProtocol)
        {
            MarkPeerFinishedByProtocol();
        }

        bool first = _lifecycle.TryClaimResult();
        if (_lifecycle.TryBeginTeardown(CloseReason.Application))
        {
            return OwnedTlsCloseAsync(first, tls, cancellationToken);
        }

        return WaitForTeardownAsync(first, cancellationToken);
    }

    private async ValueTask<CloseResult> OwnedTlsCloseAsync(bool first, TlsDrain tls, CancellationToken cancellationToken)
    {
        using CancellationTokenRegistration registration = cancellationToken.UnsafeRegister(static s => ((ManagedConnection)s!).StopDrain(DrainStop.Cancelled), this);
        CloseResult result = await TeardownAsync(cancellationToken, tls).ConfigureAwait(false);
        cancellationToken.ThrowIfCancellationRequested();
        return first ? result : AlreadyClosed;
    }

    /// <summary>Logs an exception nobody expected, at Error (event 9).</summary>
    internal void ReportUnexpected(string where, Exception exception) =>
        Log.UnexpectedError(_settings.Logger, where, RemoteEndPoint?.ToString(), exception);

    /// <summary>This connection's metric tags (precomputed per listener, or per address family without one).</summary>
    internal ConnectionTags MetricTags => _settings.TagsFor(_socket.AddressFamily, RemoteEndPoint);

    internal TimeSpan DrainTimeout => _settings.DrainTimeout;

    internal TimeSpan DrainIdleTimeout => _settings.DrainIdleTimeout;

    internal long MaxDrainBytes => _settings.MaxDrainBytes;

    internal TimeProvider TimeProvider => _settings.TimeProvider;
}
