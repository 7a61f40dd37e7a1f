using System.Buffers;
using System.IO.Pipelines;
using System.Net.Sockets;
using System.Runtime.CompilerServices;
using SafeSockets.Diagnostics;
using SafeSockets.Internal;

namespace SafeSockets;

public sealed partial class ManagedConnection
{
    // Values of _readState: who may complete the input pipe's reader.
    private const int ReadIdle = 0;
    private const int ReadActive = 1;
    private const int ReadClosed = 2;

    private const int MinimumReadSize = 4096;
    private const int MaximumReadSize = 64 * 1024;

    // Socket → _input is the receive loop's job. The application reads from _input, so the loop can keep
    // a read pending at all times and see the peer's FIN while the application is busy elsewhere.
    private readonly Pipe _input;
    private readonly bool _inputPooled;
    private int _inputReturnable;

    // How a drain bound stops the loop's pending read without disposing the socket under it (which would reset):
    // on Linux and macOS, shutdown(SHUT_RD) wakes the read with 0 and sends nothing to the peer; reads then need no
    // cancellation token, and a token costs three allocations per pending read in the runtime. Windows does not wake
    // a pending receive on SD_RECEIVE, so there every read carries _receiveCts's token instead.
    private static readonly bool s_stopDrainWithShutdown = !OperatingSystem.IsWindows();
    private readonly CancellationTokenSource? _receiveCts;
    private ITimer? _drainTimer;
    private int _drainStopped;
    private int _drainCutShort;
    private long _peerFinTimestamp;
    private readonly ValueTask<LoopExit> _receiveLoop;
    private int _readState;

    // Written by the close path before it sets _draining; read by the loop.
    private long _drainDeadline;
    private int _draining;
    private long _bytesDrained;
    private CancellationTokenSource? _peerClosedCts;
    private int _peerClosedSignaled;

    /// <summary>Why the receive loop ended.</summary>
    private enum LoopExit
    {
        PeerFin,
        PeerReset,
        DrainTimedOut,
        DrainLimitExceeded,
        Aborted,
    }

    /// <summary>Fires when the peer's FIN or reset is seen (even while nobody is reading), and at the latest when the connection is released.</summary>
    /// <remarks>Callbacks run on the thread pool, never on the connection's receive loop. After the peer's FIN the
    /// application may still send (a half-close protocol answers now) and should then close; otherwise the
    /// connection closes itself after <see cref="ManagedConnectionOptions.CloseWaitTimeout"/>.</remarks>
    public CancellationToken PeerClosed => (Volatile.Read(ref _peerClosedCts) ?? CreatePeerClosedSource()).Token;

    /// <summary>Receives bytes the peer sent.</summary>
    /// <param name="buffer">Where to copy the bytes. An empty buffer waits until data or the FIN is available and returns 0 without consuming anything.</param>
    /// <param name="cancellationToken">Cancels the wait; no data is lost.</param>
    /// <returns>The number of bytes copied; 0 once the peer's FIN has been reached (every byte before it was returned).</returns>
    /// <exception cref="ObjectDisposedException">The connection is closing or closed.</exception>
    /// <exception cref="ConnectionResetException">The peer reset the connection.</exception>
    /// <exception cref="InvalidOperationException">Another receive is already pending, or the connection uses <see cref="Transport"/>.</exception>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    public async ValueTask<int> ReceiveAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        ThrowIfClosing(ReadState());
        EnsureIoMode(IoDirect);
        int previous = Interlocked.CompareExchange(ref _readState, ReadActive, ReadIdle);
        if (previous != ReadIdle)
        {
            if (previous == ReadClosed)
            {
                ThrowIfClosing(ReadState() | StateBits.Closing);
            }

            ThrowHelper.ThrowConcurrentReceive();
        }

        try
        {
            PipeReader reader = _input.Reader;
            if (!reader.TryRead(out ReadResult result))
            {
                result = await reader.ReadAsync(cancellationToken).ConfigureAwait(false);
            }

            if (result.IsCanceled)
            {
                // Only the close path cancels a pending read.
                reader.AdvanceTo(result.Buffer.Start);
                ThrowIfClosing(ReadState() | StateBits.Closing);
            }

            ReadOnlySequence<byte> data = result.Buffer;
            if (data.IsEmpty || buffer.IsEmpty)
            {
                reader.AdvanceTo(data.Start);
                if (data.IsEmpty && (ReadState() & (StateBits.Closing | StateBits.Closed)) != 0 && (ReadState() & StateBits.PeerFin) == 0)
                {
                    // Completed by our own close, not by the peer's FIN.
                    ThrowIfClosing(ReadState());
                }

                return 0;
            }

            int count = (int)Math.Min(data.Length, buffer.Length);
            data.Slice(0, count).CopyTo(buffer.Span);
            reader.AdvanceTo(data.GetPosition(count));
            return count;
        }
        finally
        {
            if (Interlocked.CompareExchange(ref _readState, ReadIdle, ReadActive) != ReadActive)
            {
                // The close path asked for the reader while we held it: we complete it.
                _input.Reader.Complete();
            }
        }
    }

    /// <summary>Called by the close path: nobody may read any more, and unread data is discarded.</summary>
    private void CompleteInputForClose()
    {
        if (UsesPipe)
        {
            // The application owns Transport.Input's reader: wake it; it sees the input complete after the drain.
            _input.Reader.CancelPendingRead();
            return;
        }

        int previous = Interlocked.Exchange(ref _readState, ReadClosed);
        if (previous == ReadIdle)
        {
            _input.Reader.Complete();
            _inputReturnable = 1;
        }
        else if (previous == ReadActive)
        {
            _input.Reader.CancelPendingRead();
        }
    }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    private async ValueTask<LoopExit> ReceiveLoopAsync()
    {
        PipeWriter writer = _input.Writer;
        Exception? pipeError = null;
        try
        {
            // Yield so the constructor returns before the first read is issued.
            await Task.Yield();
            bool discard = false;
            CancellationToken token = _receiveCts?.Token ?? default;

            // Adaptive read size: an idle connection holds only a small buffer under its pending read, a busy one
            // grows it (doubling when a read fills it) so bulk transfers take few syscalls.
            int readSize = MinimumReadSize;
            while (true)
            {
                // While draining, the same memory is reused and never advanced: the bytes are discarded.
                Memory<byte> memory = writer.GetMemory(readSize);
                int received = await _socket.ReceiveAsync(memory, SocketFlags.None, token).ConfigureAwait(false);
                if (received == 0)
                {
                    if ((ReadState() & StateBits.PeerReset) != 0)
                    {
                        // The send path consumed the reset's error first (the kernel reports it once); recv then reads as EOF.
                        return LoopExit.PeerReset;
                    }

                    if (Volatile.Read(ref _drainStopped) != 0)
                    {
                        // Woken by our own shutdown(SHUT_RD): a drain bound, not the peer's FIN.
                        return LoopExit.DrainTimedOut;
                    }

                    OnPeerClosed(reset: false);
                    return LoopExit.PeerFin;
                }

                if (Volatile.Read(ref _draining) != 0)
                {
                    long total = Interlocked.Add(ref _bytesDrained, received);

                    // Once the peer's FIN is known (the kernel saw it behind unread data), what is left is what the kernel
                    // already buffered: finite, so the byte budget need not cut it and turn the close into a reset.
                    if (total > _maxDrainBytes && (ReadState() & StateBits.PeerFin) == 0)
                    {
                        return LoopExit.DrainLimitExceeded;
                    }

                    ArmDrainTimer();
                    continue;
                }

                if (discard)
                {
                    continue;
                }

                writer.Advance(received);
                if (received >= memory.Length && readSize < MaximumReadSize)
                {
                    readSize *= 2;
                }
                else if (received < readSize / 4 && readSize > MinimumReadSize)
                {
                    readSize /= 2;
                }

                ValueTask<FlushResult> flushing = writer.FlushAsync();
                FlushResult flush;
                if (flushing.IsCompleted)
                {
                    flush = flushing.Result;
                }
                else
                {
                    // Paused: the application is not reading. A FIN behind the unread bytes is invisible to a read, but not to the kernel.
                    StartFinProbe();
                    flush = await flushing.ConfigureAwait(false);
                    StopFinProbe();
                }

                if (flush.IsCompleted)
                {
                    // The reader is gone: keep reading to see the FIN, but throw the bytes away.
                    discard = true;
                }
            }
        }
        catch (OperationCanceledException) when (Volatile.Read(ref _draining) != 0)
        {
            return LoopExit.DrainTimedOut;
        }
        catch (SocketException ex) when (SocketErrors.IsConnectionReset(ex.SocketErrorCode) && Volatile.Read(ref _drainStopped) != 0)
        {
            // We stopped the drain with shutdown(SHUT_RD); Linux aborts a half-closed socket that then receives more
            // data (TCPAbortOnData). That reset is the bound we hit, not the peer's doing.
            return LoopExit.DrainTimedOut;
        }
        catch (SocketException ex) when (SocketErrors.IsConnectionReset(ex.SocketErrorCode) && (ReadState() & StateBits.Aborted) == 0)
        {
            pipeError = ThrowHelper.CreatePeerReset(ex);
            OnPeerClosed(reset: true);
            return LoopExit.PeerReset;
        }
        catch (Exception ex) when (ex is SocketException or ObjectDisposedException && (ReadState() & (StateBits.Aborted | StateBits.Closed)) != 0)
        {
            return LoopExit.Aborted;
        }
        catch (Exception ex)
        {
            // Unexpected: surface it to the reader and treat the connection as reset; never let it escape.
            pipeError = ex;
            OnPeerClosed(reset: true);
            return LoopExit.PeerReset;
        }
        finally
        {
            writer.Complete(pipeError);
        }
    }

    // While the loop is paused by backpressure, how often the kernel is asked whether the peer's FIN has arrived.
    private static readonly TimeSpan s_finProbePeriod = TimeSpan.FromMilliseconds(250);
    private ITimer? _finProbe;

    private void StartFinProbe()
    {
        if (!OperatingSystem.IsLinux() || (ReadState() & StateBits.PeerFin) != 0)
        {
            return;
        }

        ITimer? timer = _finProbe;
        if (timer is null)
        {
            _finProbe = _timeProvider.CreateTimer(static s => ((ManagedConnection)s!).ProbeForFin(), this, s_finProbePeriod, s_finProbePeriod);
        }
        else
        {
            timer.Change(s_finProbePeriod, s_finProbePeriod);
        }
    }

    private void StopFinProbe() => _finProbe?.Change(Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan);

    /// <summary>A send or half-close saw the peer's reset: record it and release the connection, as the receive loop would.</summary>
    private void OnResetSeenBySend()
    {
        if ((ReadState() & StateBits.PeerReset) == 0)
        {
            OnPeerClosed(reset: true);
        }
    }

    private void ProbeForFin()
    {
        int state = ReadState();
        if ((state & (StateBits.PeerFin | StateBits.Closing | StateBits.Closed | StateBits.Aborted)) != 0)
        {
            StopFinProbe();
            return;
        }

        if (TcpConnectionInfo.Read(_socket).PeerHasClosed)
        {
            StopFinProbe();
            OnPeerClosed(reset: false);
        }
    }

    /// <summary>(Re)arms the drain's idle bound, capped by the total deadline.</summary>
    private void ArmDrainTimer()
    {
        TimeSpan remaining = _timeProvider.GetElapsedTime(_timeProvider.GetTimestamp(), Volatile.Read(ref _drainDeadline));
        TimeSpan wait = remaining < _drainIdleTimeout ? remaining : _drainIdleTimeout;
        if (wait <= TimeSpan.Zero)
        {
            StopDrain();
            return;
        }

        if (_receiveCts is { } cts)
        {
            try
            {
                cts.CancelAfter(wait);
            }
            catch (ObjectDisposedException)
            {
                // Released concurrently by Abort.
            }

            return;
        }

        // The close path arms it first; the loop re-arms it after each drained read, possibly at the same moment.
        ITimer? timer = Volatile.Read(ref _drainTimer);
        if (timer is null)
        {
            ITimer created = _timeProvider.CreateTimer(static s => ((ManagedConnection)s!).StopDrain(), this, wait, Timeout.InfiniteTimeSpan);
            timer = Interlocked.CompareExchange(ref _drainTimer, created, null);
            if (timer is null)
            {
                return;
            }

            created.Dispose();
        }

        timer.Change(wait, Timeout.InfiniteTimeSpan);
    }

    /// <summary>A listener's draining budget is exhausted: end this drain now (outcome <see cref="CloseOutcome.DrainBudgetExceeded"/>).</summary>
    /// <returns><see langword="true"/> if the drain was still running and is now being cut.</returns>
    internal bool CutDrainShort()
    {
        if ((ReadState() & (StateBits.Closed | StateBits.Aborted)) != 0 || Volatile.Read(ref _drainStopped) != 0)
        {
            return false;
        }

        Volatile.Write(ref _drainCutShort, 1);
        StopDrain();
        return true;
    }

    /// <summary>A drain bound was hit (or the close was cancelled): end the loop's pending read now, without a reset.</summary>
    private void StopDrain()
    {
        if (Interlocked.Exchange(ref _drainStopped, 1) != 0)
        {
            return;
        }

        if (_receiveCts is { } cts)
        {
            try
            {
                cts.Cancel();
            }
            catch (ObjectDisposedException)
            {
            }

            return;
        }

        try
        {
            _socket.Shutdown(SocketShutdown.Receive);
        }
        catch (Exception ex) when (ex is SocketException or ObjectDisposedException)
        {
            // Already reset or released: the loop has ended or is about to.
        }
    }

    /// <summary>The receive loop saw the peer's FIN or reset.</summary>
    private void OnPeerClosed(bool reset)
    {
        int previous = SetState(reset ? StateBits.PeerFin | StateBits.PeerReset : StateBits.PeerFin);
        if ((previous & StateBits.PeerFin) != 0 && !reset)
        {
            // Already known (the kernel view saw it while the loop was paused behind unread data).
            return;
        }

        if ((previous & StateBits.PeerFin) == 0)
        {
            Volatile.Write(ref _peerFinTimestamp, _timeProvider.GetTimestamp());
        }

        // The guard is armed before anyone hears of the FIN, so code that reacts to PeerClosed finds it in place.
        if ((previous & StateBits.Closing) == 0)
        {
            StartCloseWaitGuard(reset ? TimeSpan.Zero : _closeWaitTimeout, reset ? CloseReason.PeerReset : CloseReason.CloseWaitTimeout);
        }

        FirePeerClosed();
    }

    private CancellationTokenSource CreatePeerClosedSource()
    {
        var created = new CancellationTokenSource();
        CancellationTokenSource? existing = Interlocked.CompareExchange(ref _peerClosedCts, created, null);
        if (existing is not null)
        {
            created.Dispose();
            return existing;
        }

        // FirePeerClosed may have run before we published the source. (Not the PeerFin bit itself: it is set before
        // the CLOSE_WAIT guard is armed, and nobody may hear of the FIN before that.)
        if (Volatile.Read(ref _peerClosedSignaled) != 0 || (ReadState() & (StateBits.Closed | StateBits.Aborted)) != 0)
        {
            created.Cancel();
        }

        return created;
    }

    private void FirePeerClosed()
    {
        Volatile.Write(ref _peerClosedSignaled, 1);
        CancellationTokenSource? cts = Volatile.Read(ref _peerClosedCts);
        if (cts is not null && !cts.IsCancellationRequested)
        {
            // Application callbacks must not run on the receive loop or a timer thread.
            ThreadPool.UnsafeQueueUserWorkItem(static s => CancelQuietly(s), cts, preferLocal: false);
        }
    }

    private static void CancelQuietly(CancellationTokenSource cts)
    {
        try
        {
            cts.Cancel();
        }
#pragma warning disable CA1031 // A throwing user callback must not crash the process from a pool thread.
        catch (Exception)
#pragma warning restore CA1031
        {
        }
    }
}
