using System.IO.Pipelines;
using System.Net.Sockets;
using System.Runtime.CompilerServices;
using Microsoft.Extensions.Logging;
using SafeSockets.Diagnostics;
using SafeSockets.Internal;

namespace SafeSockets;

public sealed partial class ManagedConnection
{
    // How long a close waits for a send that was stuck on a full window to fail once our send side is
    // shut down (shutdown wakes it with EPIPE at once; this only bounds a misbehaving platform).
    private static readonly TimeSpan s_stuckSendGrace = TimeSpan.FromSeconds(1);

    // _closeResult is written once, before FlagCompleted is set; Completion's task is made on demand (Extras).
    private CloseResult _closeResult;
    private CloseReason _closeReason;
    private CloseReason _guardReason;
    private long _closeStart;

    // This connection's place in its DeadlineQueue (-1: none) and its due time; changed only under the queue's lock.
    private int _deadlineIndex = -1;
    private long _deadlineDue;

    /// <summary>How many times the socket was released; tests assert it is exactly one.</summary>
    internal int ReleaseCount => HasFlag(FlagReleasedTwice) ? 2 : HasFlag(FlagReleaseObserved) ? 1 : 0;

    /// <summary>Closes gracefully: flush, FIN, read and discard until the peer's FIN (within the drain bounds), then release the socket.</summary>
    /// <param name="cancellationToken">Cuts the close short: the socket is still released (possibly with a reset if
    /// unread data arrived), then <see cref="OperationCanceledException"/> is thrown.</param>
    /// <returns>How the close ended. The first call after the connection ended reports that end, including a close
    /// the connection did by itself (<see cref="CloseOutcome.CloseWaitTimedOut"/>, <see cref="CloseOutcome.PeerReset"/>);
    /// later calls return <see cref="CloseOutcome.AlreadyClosed"/>. It never throws for a peer's misbehaviour.</returns>
    public ValueTask<CloseResult> CloseAsync(CancellationToken cancellationToken = default)
    {
        if (TryBeginClose(CloseReason.Application))
        {
            TrySetFlag(FlagApplicationSawClose);
            return CloseCoreAsync(cancellationToken);
        }

        return WaitForOtherCloseAsync(cancellationToken);
    }

    /// <summary>Closes with a reset (RST) on purpose: linger 0, then release. Data in flight either way is lost.</summary>
    /// <remarks>The only operation that sends RST deliberately. It also cuts a graceful close in progress short.
    /// Calling it after the connection was released does nothing.</remarks>
    public void Abort()
    {
        TrySetFlag(FlagApplicationSawClose);
        if (!TrySetFlag(FlagReleased))
        {
            return;
        }

        // Aborted is set before the socket goes, so the receive loop reads its error as ours, not the peer's.
        int previous = SetState(StateBits.Closing | StateBits.Aborted);
        if ((previous & StateBits.Closing) == 0)
        {
            OnCloseStarted(CloseReason.Abort);
        }

        try
        {
            _socket.LingerState = new LingerOption(true, 0);
        }
        catch (SocketException)
        {
            // Already reset by the peer: the close below sends nothing either way.
        }

        _socket.Dispose();
        OnReleased();
        Complete(CloseOutcome.Aborted);
    }

    /// <summary>Releases the creator's reference: with no <see cref="ConnectionLease"/> outstanding this is the graceful
    /// close of <see cref="CloseAsync"/>; otherwise the connection stays open until the last lease is released.</summary>
    /// <returns>A task that completes once the reference is released (and, if it was the last, the socket too).</returns>
    /// <remarks>Calling it more than once releases the creator's reference only once.</remarks>
    public ValueTask DisposeAsync()
    {
        if (!TrySetFlag(FlagCreatorReleased))
        {
            // Already released: behave like a second close and wait until the socket is gone, if it is going.
            return (ReadState() & StateBits.Closing) != 0 ? IgnoreResult(Completion) : default;
        }

        return ReleaseReferenceAsync();
    }

    private bool TryBeginClose(CloseReason reason)
    {
        int previous = SetState(StateBits.Closing);
        if ((previous & (StateBits.Closing | StateBits.Closed | StateBits.Aborted)) != 0)
        {
            return false;
        }

        OnCloseStarted(reason);
        return true;
    }

    private void OnCloseStarted(CloseReason reason)
    {
        _closeReason = reason;
        _closeStart = _settings.TimeProvider.GetTimestamp();
    }

    private async ValueTask<CloseResult> WaitForOtherCloseAsync(CancellationToken cancellationToken)
    {
        CloseResult result = await Completion.WaitAsync(cancellationToken).ConfigureAwait(false);
        return TrySetFlag(FlagApplicationSawClose)
            ? result
            : new CloseResult(CloseOutcome.AlreadyClosed, 0, TimeSpan.Zero);
    }

    /// <summary>The close path; runs once, for whoever won <see cref="TryBeginClose"/>.</summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    private async ValueTask<CloseResult> CloseCoreAsync(CancellationToken cancellationToken)
    {
        _settings.Deadlines.Cancel(this);
        CompleteInputForClose();

        CloseOutcome? outcome = null;
        LoopExit exit = LoopExit.Aborted;
        bool loopEnded = false;
        try
        {
            // 1. Flush: wait until every send in flight (or what Transport.Output has flushed) is handed to the kernel.
            StopSendLoop();
            bool flushed = await WaitForSendsAsync(_settings.DrainTimeout, cancellationToken).ConfigureAwait(false);
            if (!flushed)
            {
                outcome = CloseOutcome.DrainTimedOut;
            }

            // 2. FIN. Even when the flush timed out: shutting the send side wakes a send stuck on a zero window (EPIPE).
            ShutdownSendForClose();
            if (!flushed)
            {
                await WaitForSendsAsync(s_stuckSendGrace, CancellationToken.None).ConfigureAwait(false);
            }

            // 3. Drain: the receive loop reads and discards until the peer's FIN, within the bounds.
            if (_receiveLoop.IsCompleted)
            {
                exit = await _receiveLoop.ConfigureAwait(false);
                loopEnded = true;
            }
            else
            {
                Volatile.Write(ref _drainActivity, _settings.TimeProvider.GetTimestamp());
                TrySetFlag(FlagDraining);
                _settings.DrainStarted?.Invoke(this);
                if (HasFlag(FlagPeerFinishedByProtocol))
                {
                    // The protocol above already saw the peer's end (TLS close_notify): nothing more is due, so do not wait for the TCP FIN.
                    StopDrain();
                }
                else
                {
                    ScheduleDrainBound();
                }

                _input.Writer.CancelPendingFlush();
                using CancellationTokenRegistration registration = cancellationToken.UnsafeRegister(static s => ((ManagedConnection)s!).StopDrain(), this);
                exit = await _receiveLoop.ConfigureAwait(false);
                loopEnded = true;
            }

            outcome ??= (ReadState() & StateBits.PeerReset) != 0 && exit != LoopExit.Aborted ? CloseOutcome.PeerReset : exit switch
            {
                LoopExit.PeerFin => _closeReason == CloseReason.CloseWaitTimeout ? CloseOutcome.CloseWaitTimedOut : CloseOutcome.Graceful,
                LoopExit.PeerReset => CloseOutcome.PeerReset,
                LoopExit.DrainTimedOut when HasFlag(FlagDrainCutShort) => CloseOutcome.DrainBudgetExceeded,
                LoopExit.DrainTimedOut when HasFlag(FlagPeerFinishedByProtocol) && Interlocked.Read(ref _bytesDrained) == 0 => CloseOutcome.Graceful,
                LoopExit.DrainTimedOut => CloseOutcome.DrainTimedOut,
                LoopExit.DrainLimitExceeded => CloseOutcome.DrainLimitExceeded,
                _ => CloseOutcome.Aborted,
            };
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
            // Still released below; the caller gets the cancellation after that.
        }
        finally
        {
            if (TrySetFlag(FlagReleased))
            {
                _socket.Dispose();
                OnReleased();
                if (loopEnded)
                {
                    Volatile.Read(ref _extras)?.ReceiveCts?.Dispose();
                }

                ReleaseInput(loopEnded, exit);
            }
        }

        Complete(outcome ?? CloseOutcome.DrainTimedOut);
        cancellationToken.ThrowIfCancellationRequested();
        return _closeResult;
    }

    /// <summary>Completes the input's reader if the close path owns it (it took it while no ReceiveAsync held it), so the
    /// pipe gives its buffers back; and once the loop has ended (the writer is complete) hands a pooled pipe back.</summary>
    private void ReleaseInput(bool loopEnded, LoopExit exit)
    {
        if ((Volatile.Read(ref _flags) & (FlagInputReturnable | FlagIoPipe)) != FlagInputReturnable)
        {
            // A ReceiveAsync or the application's Transport reader owns the reader; they complete it.
            return;
        }

        PipeReader reader = _input.Reader;
        if (!loopEnded)
        {
            // The loop is still stopping (the close was cancelled): its writes are discarded, and the pipe is not reused.
            reader.Complete();
            return;
        }

        // Unread data is discarded. The reader is completed after the writer, so the pooled pipe keeps its buffer segment
        // for the next connection. After an error the writer's exception would be thrown by reading: just complete.
        if (exit != LoopExit.PeerReset && reader.TryRead(out ReadResult rest))
        {
            reader.AdvanceTo(rest.Buffer.End);
        }

        reader.Complete();
        if (HasFlag(FlagInputPooled))
        {
            s_inputPipePool.Return(_input);
        }
    }

    private void ShutdownSendForClose()
    {
        if ((SetState(StateBits.SendShutdown) & (StateBits.SendShutdown | StateBits.PeerReset)) != 0)
        {
            return;
        }

        try
        {
            _socket.Shutdown(SocketShutdown.Send);
        }
        catch (SocketException)
        {
            // The peer reset first; the receive loop reports it as the outcome.
        }
        catch (ObjectDisposedException)
        {
            // Abort released the socket meanwhile; the outcome is Aborted.
        }
    }

    /// <summary>The socket is gone: set the state, stop the guard, wake <see cref="PeerClosed"/> waiters.</summary>
    private void OnReleased()
    {
        if (!TrySetFlag(FlagReleaseObserved))
        {
            TrySetFlag(FlagReleasedTwice);
        }

        SetState(StateBits.Closed);
        ReturnSendArgs();
        _settings.Deadlines.Cancel(this);
        Volatile.Read(ref _extras)?.FinProbe?.Dispose();
        FirePeerClosed();
    }

    /// <summary>Records how the connection ended; the first caller wins.</summary>
    private void Complete(CloseOutcome outcome)
    {
        if (!TrySetFlag(FlagCompleting))
        {
            return;
        }

        TimeSpan elapsed = _settings.TimeProvider.GetElapsedTime(_closeStart);
        _closeResult = new CloseResult(outcome, Interlocked.Read(ref _bytesDrained), elapsed);
        TrySetFlag(FlagCompleted);
        Report(_closeResult);
        _settings.Completed?.Invoke(this);
        Volatile.Read(ref _extras)?.CloseCompletion?.TrySetResult(_closeResult);
    }

    /// <summary>Metrics and logs for a finished connection.</summary>
    private void Report(CloseResult result)
    {
        KeyValuePair<string, object?> outcomeTag = Metrics.OutcomeTag(result.Outcome);
        Metrics.Closed.Add(1, outcomeTag);
        Metrics.CloseDuration.Record(result.Elapsed.TotalSeconds, outcomeTag);
        if (result.BytesDrained > 0)
        {
            Metrics.Drained.Add(result.BytesDrained);
        }

        long peerFin = Volatile.Read(ref _peerFinTimestamp);
        if (peerFin != 0 && Metrics.PeerFinToClose.Enabled)
        {
            Metrics.PeerFinToClose.Record(_settings.TimeProvider.GetElapsedTime(peerFin).TotalSeconds);
        }

        switch (result.Outcome)
        {
            case CloseOutcome.CloseWaitTimedOut:
                Metrics.ForcedCloses.Add(1);
                if (_settings.Logger.IsEnabled(LogLevel.Warning))
                {
                    Log.ForcedCloseAfterPeerFin(_settings.Logger, Volatile.Read(ref _extras)?.LocalEndPoint?.ToString(), RemoteEndPoint?.ToString(), _settings.CloseWaitTimeout);
                }

                break;
            case CloseOutcome.Aborted:
                Metrics.Aborts.Add(1);
                Log.Aborted(_settings.Logger, RemoteEndPoint?.ToString());
                break;
            case CloseOutcome.PeerReset:
                Log.ResetByPeer(_settings.Logger, RemoteEndPoint?.ToString());
                break;
            case CloseOutcome.DrainTimedOut or CloseOutcome.DrainLimitExceeded or CloseOutcome.DrainBudgetExceeded:
                Log.DrainBoundHit(_settings.Logger, RemoteEndPoint?.ToString(), result.Outcome, result.BytesDrained, result.Elapsed);
                break;
        }
    }

    /// <summary>The result, once the connection is finished.</summary>
    internal CloseResult? FinalResult => HasFlag(FlagCompleted) ? _closeResult : null;

    private Task<CloseResult> GetCompletionTask()
    {
        if (HasFlag(FlagCompleted))
        {
            return Task.FromResult(_closeResult);
        }

        var created = new TaskCompletionSource<CloseResult>(TaskCreationOptions.RunContinuationsAsynchronously);
        TaskCompletionSource<CloseResult> source = Interlocked.CompareExchange(ref GetExtras().CloseCompletion, created, null) ?? created;
        if (HasFlag(FlagCompleted))
        {
            // Complete ran before the source was published.
            source.TrySetResult(_closeResult);
        }

        return source.Task;
    }

    /// <summary>After the peer's FIN or reset: close by ourselves unless the application does first.</summary>
    /// <remarks>The guard is a deadline in the shared <see cref="DeadlineQueue"/>. On Linux it also comes due every 250 ms
    /// before the end to ask the kernel whether the peer has since reset (after a FIN no read can see a reset: recv keeps
    /// returning 0).</remarks>
    private void StartCloseWaitGuard(bool reset)
    {
        _guardReason = reset ? CloseReason.PeerReset : CloseReason.CloseWaitTimeout;
        if (reset || _settings.CloseWaitTimeoutTicks == 0)
        {
            QueueCloseFromGuard();
            return;
        }

        ScheduleGuard(_settings.TimeProvider.GetTimestamp());
        if ((ReadState() & StateBits.Closing) != 0)
        {
            // The close started meanwhile and may already have cleared the deadlines: do not leave this one behind.
            _settings.Deadlines.Cancel(this);
        }
    }

    private void ScheduleGuard(long now)
    {
        long deadline = Volatile.Read(ref _peerFinTimestamp) + _settings.CloseWaitTimeoutTicks;
        long due = OperatingSystem.IsLinux() ? Math.Min(deadline, now + _settings.ToTicks(s_finProbePeriod)) : deadline;
        _settings.Deadlines.Schedule(this, due);
    }

    /// <summary>Starts the drain's time bounds: the total from the close's start, the idle one from the last drained byte.</summary>
    private void ScheduleDrainBound()
    {
        long due = DrainDue();
        if (due <= _settings.TimeProvider.GetTimestamp())
        {
            StopDrain();
            return;
        }

        _settings.Deadlines.Schedule(this, due);
        if ((ReadState() & StateBits.Closed) != 0)
        {
            _settings.Deadlines.Cancel(this);
        }
    }

    private long DrainDue() => Math.Min(
        _closeStart + _settings.DrainTimeoutTicks,
        Volatile.Read(ref _drainActivity) + _settings.DrainIdleTimeoutTicks);

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

    /// <summary>Called by the <see cref="DeadlineQueue"/> when this connection's deadline comes due (on its waiter thread).</summary>
    void IDeadlineOwner.OnDeadline()
    {
        int state = ReadState();
        if ((state & (StateBits.Closed | StateBits.Aborted)) != 0)
        {
            return;
        }

        long now = _settings.TimeProvider.GetTimestamp();
        if ((state & StateBits.Closing) != 0)
        {
            // The drain's bounds. Drained bytes move the idle bound on without touching the queue: it is re-read here.
            if ((Volatile.Read(ref _flags) & (FlagDraining | FlagDrainStopped)) == FlagDraining)
            {
                ScheduleDrainBound();
            }

            return;
        }

        if ((state & StateBits.PeerFin) == 0)
        {
            return;
        }

        // The CLOSE_WAIT guard.
        if (OperatingSystem.IsLinux() && TcpConnectionInfo.Read(_socket) is { IsAvailable: true, State: TcpState.Close })
        {
            OnPeerClosed(reset: true);
            return;
        }

        if (now - Volatile.Read(ref _peerFinTimestamp) >= _settings.CloseWaitTimeoutTicks)
        {
            QueueCloseFromGuard();
        }
        else
        {
            ScheduleGuard(now);
        }
    }

    /// <summary>Closes on behalf of the CLOSE_WAIT guard.</summary>
    /// <remarks>The guard's close runs on the pool, never on the thread that noticed (the receive loop, or the deadline
    /// queue's one waiter thread, which stays free for other connections' deadlines however many come due at once).
    /// Queued locally for the same reason as <see cref="FirePeerClosed"/>'s callbacks.</remarks>
    private void QueueCloseFromGuard() => ThreadPool.UnsafeQueueUserWorkItem(static s => s.CloseFromGuard(), this, preferLocal: true);

    private void CloseFromGuard()
    {
        if (TryBeginClose(_guardReason))
        {
            _ = CloseCoreAsync(CancellationToken.None).AsTask();
        }
    }

    /// <summary>A protocol above TCP (TLS close_notify) saw the peer's orderly end: the close need not wait for the TCP FIN.</summary>
    internal void MarkPeerFinishedByProtocol() => TrySetFlag(FlagPeerFinishedByProtocol);

    internal TimeSpan DrainTimeout => _settings.DrainTimeout;

    internal TimeSpan DrainIdleTimeout => _settings.DrainIdleTimeout;

    internal long MaxDrainBytes => _settings.MaxDrainBytes;

    internal TimeProvider TimeProvider => _settings.TimeProvider;
}
