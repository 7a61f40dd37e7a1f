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

    // Completion is rarely observed: its task is created on demand. _closeResult is written once, before _closeCompleted.
    private TaskCompletionSource<CloseResult>? _closeCompletion;
    private CloseResult _closeResult;
    private int _closeCompleted;
    private CloseReason _closeReason;
    private CloseReason _guardReason;
    private long _closeStart;
    private int _released;
    private int _applicationSawClose;
    private ITimer? _guardTimer;
    private int _releaseCount;
    private int _peerFinishedByProtocol;

    /// <summary>How many times the socket was released; tests assert it is exactly one.</summary>
    internal int ReleaseCount => Volatile.Read(ref _releaseCount);

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
            Volatile.Write(ref _applicationSawClose, 1);
            return CloseCoreAsync(cancellationToken);
        }

        return WaitForOtherCloseAsync(cancellationToken);
    }

    /// <summary>Closes with a reset (RST) on purpose: linger 0, then release. Data in flight either way is lost.</summary>
    /// <remarks>The only operation that sends RST deliberately. It also cuts a graceful close in progress short.
    /// Calling it after the connection was released does nothing.</remarks>
    public void Abort()
    {
        Volatile.Write(ref _applicationSawClose, 1);
        if (Interlocked.CompareExchange(ref _released, 1, 0) != 0)
        {
            return;
        }

        // Aborted is set before the socket goes, so the receive loop reads its error as ours, not the peer's.
        int previous = SetState(StateBits.Closing | StateBits.Aborted);
        if ((previous & StateBits.Closing) == 0)
        {
            _closeReason = CloseReason.Abort;
            _closeStart = _timeProvider.GetTimestamp();
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
        if (Interlocked.Exchange(ref _creatorReleased, 1) != 0)
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
        _closeStart = _timeProvider.GetTimestamp();
    }

    private async ValueTask<CloseResult> WaitForOtherCloseAsync(CancellationToken cancellationToken)
    {
        CloseResult result = await Completion.WaitAsync(cancellationToken).ConfigureAwait(false);
        return Interlocked.Exchange(ref _applicationSawClose, 1) == 0
            ? result
            : new CloseResult(CloseOutcome.AlreadyClosed, 0, TimeSpan.Zero);
    }

    /// <summary>The close path; runs once, for whoever won <see cref="TryBeginClose"/>.</summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    private async ValueTask<CloseResult> CloseCoreAsync(CancellationToken cancellationToken)
    {
        DisposeGuardTimer();
        CompleteInputForClose();
        long start = _closeStart;
        Volatile.Write(ref _drainDeadline, start + (long)(_drainTimeout.TotalSeconds * _timeProvider.TimestampFrequency));

        CloseOutcome? outcome = null;
        bool loopEnded = false;
        try
        {
            // 1. Flush: wait until every send in flight (or what Transport.Output has flushed) is handed to the kernel.
            StopSendLoop();
            bool flushed = await WaitForSendsAsync(_drainTimeout, cancellationToken).ConfigureAwait(false);
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
            LoopExit exit;
            if (_receiveLoop.IsCompleted)
            {
                exit = await _receiveLoop.ConfigureAwait(false);
                loopEnded = true;
            }
            else
            {
                Volatile.Write(ref _draining, 1);
                DrainStarted?.Invoke(this);
                if (Volatile.Read(ref _peerFinishedByProtocol) != 0)
                {
                    // The protocol above already saw the peer's end (TLS close_notify): nothing more is due, so do not wait for the TCP FIN.
                    StopDrain();
                }
                else
                {
                    ArmDrainTimer();
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
                LoopExit.DrainTimedOut when Volatile.Read(ref _drainCutShort) != 0 => CloseOutcome.DrainBudgetExceeded,
                LoopExit.DrainTimedOut when Volatile.Read(ref _peerFinishedByProtocol) != 0 && Interlocked.Read(ref _bytesDrained) == 0 => CloseOutcome.Graceful,
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
            if (Interlocked.CompareExchange(ref _released, 1, 0) == 0)
            {
                _socket.Dispose();
                OnReleased();
                _drainTimer?.Dispose();
                if (loopEnded)
                {
                    _receiveCts?.Dispose();
                    ReturnInputPipe();
                }
            }
        }

        Complete(outcome ?? CloseOutcome.DrainTimedOut);
        cancellationToken.ThrowIfCancellationRequested();
        return _closeResult;
    }

    /// <summary>Hands the input pipe back to the pool when no one else can touch it: the loop has ended (the writer is
    /// complete) and the close path itself completed the reader while no ReceiveAsync held it.</summary>
    private void ReturnInputPipe()
    {
        if (_inputPooled && Volatile.Read(ref _inputReturnable) != 0 && !UsesPipe)
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
        Interlocked.Increment(ref _releaseCount);
        SetState(StateBits.Closed);
        DisposeGuardTimer();
        _finProbe?.Dispose();
        FirePeerClosed();
    }

    /// <summary>Records how the connection ended; the first caller wins.</summary>
    private void Complete(CloseOutcome outcome)
    {
        if (Interlocked.CompareExchange(ref _closeCompleted, 1, 0) != 0)
        {
            return;
        }

        TimeSpan elapsed = _timeProvider.GetElapsedTime(_closeStart);
        _closeResult = new CloseResult(outcome, Interlocked.Read(ref _bytesDrained), elapsed);
        Volatile.Write(ref _closeCompleted, 2);
        Report(_closeResult);
        Completed?.Invoke(this);
        Volatile.Read(ref _closeCompletion)?.TrySetResult(_closeResult);
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
            Metrics.PeerFinToClose.Record(_timeProvider.GetElapsedTime(peerFin).TotalSeconds);
        }

        switch (result.Outcome)
        {
            case CloseOutcome.CloseWaitTimedOut:
                Metrics.ForcedCloses.Add(1);
                if (_logger.IsEnabled(LogLevel.Warning))
                {
                    Log.ForcedCloseAfterPeerFin(_logger, _localEndPoint?.ToString(), RemoteEndPoint?.ToString(), _closeWaitTimeout);
                }

                break;
            case CloseOutcome.Aborted:
                Metrics.Aborts.Add(1);
                Log.Aborted(_logger, RemoteEndPoint?.ToString());
                break;
            case CloseOutcome.PeerReset:
                Log.ResetByPeer(_logger, RemoteEndPoint?.ToString());
                break;
            case CloseOutcome.DrainTimedOut or CloseOutcome.DrainLimitExceeded or CloseOutcome.DrainBudgetExceeded:
                Log.DrainBoundHit(_logger, RemoteEndPoint?.ToString(), result.Outcome, result.BytesDrained, result.Elapsed);
                break;
        }
    }

    /// <summary>Set by a listener before the receive loop starts: told once, when the connection is finished.</summary>
    internal Action<ManagedConnection>? Completed { get; }

    /// <summary>Set by a listener before the receive loop starts: told when this connection starts draining (for the draining budget).</summary>
    internal Action<ManagedConnection>? DrainStarted { get; }

    /// <summary>The result, once the connection is finished.</summary>
    internal CloseResult? FinalResult => Volatile.Read(ref _closeCompleted) == 2 ? _closeResult : null;

    private Task<CloseResult> GetCompletionTask()
    {
        if (Volatile.Read(ref _closeCompleted) == 2)
        {
            return Task.FromResult(_closeResult);
        }

        var created = new TaskCompletionSource<CloseResult>(TaskCreationOptions.RunContinuationsAsynchronously);
        TaskCompletionSource<CloseResult> source = Interlocked.CompareExchange(ref _closeCompletion, created, null) ?? created;
        if (Volatile.Read(ref _closeCompleted) == 2)
        {
            // Complete ran before the source was published.
            source.TrySetResult(_closeResult);
        }

        return source.Task;
    }

    /// <summary>After the peer's FIN or reset: close by ourselves unless the application does first.</summary>
    private void StartCloseWaitGuard(TimeSpan timeout, CloseReason reason)
    {
        _guardReason = reason;
        if (timeout == TimeSpan.Zero)
        {
            ThreadPool.UnsafeQueueUserWorkItem(static s => s.CloseFromGuard(), this, preferLocal: false);
            return;
        }

        // One timer does both jobs: it fires at the deadline, and on Linux also every 250 ms before it to ask the
        // kernel whether the peer has since reset (after a FIN no read can see a reset: recv keeps returning 0).
        ITimer timer = _timeProvider.CreateTimer(static s => ((ManagedConnection)s!).OnGuardTick(), this, NextGuardWait(timeout), Timeout.InfiniteTimeSpan);
        Volatile.Write(ref _guardTimer, timer);
        if ((ReadState() & StateBits.Closing) != 0)
        {
            DisposeGuardTimer();
        }
    }

    private static TimeSpan NextGuardWait(TimeSpan remaining) =>
        OperatingSystem.IsLinux() && remaining > s_finProbePeriod ? s_finProbePeriod : remaining;

    private void OnGuardTick()
    {
        if ((ReadState() & (StateBits.Closing | StateBits.Closed | StateBits.Aborted)) != 0)
        {
            return;
        }

        if (OperatingSystem.IsLinux() && TcpConnectionInfo.Read(_socket) is { IsAvailable: true, State: TcpState.Close })
        {
            OnPeerClosed(reset: true);
            return;
        }

        TimeSpan remaining = _closeWaitTimeout - _timeProvider.GetElapsedTime(Volatile.Read(ref _peerFinTimestamp));
        if (remaining <= TimeSpan.Zero)
        {
            CloseFromGuard();
        }
        else
        {
            Volatile.Read(ref _guardTimer)?.Change(NextGuardWait(remaining), Timeout.InfiniteTimeSpan);
        }
    }

    private void CloseFromGuard()
    {
        if (TryBeginClose(_guardReason))
        {
            _ = CloseCoreAsync(CancellationToken.None).AsTask();
        }
    }

    /// <summary>A protocol above TCP (TLS close_notify) saw the peer's orderly end: the close need not wait for the TCP FIN.</summary>
    internal void MarkPeerFinishedByProtocol() => Volatile.Write(ref _peerFinishedByProtocol, 1);

    internal TimeSpan DrainTimeout => _drainTimeout;

    internal TimeSpan DrainIdleTimeout => _drainIdleTimeout;

    internal long MaxDrainBytes => _maxDrainBytes;

    internal TimeProvider TimeProvider => _timeProvider;

    private void DisposeGuardTimer() => Interlocked.Exchange(ref _guardTimer, null)?.Dispose();
}
