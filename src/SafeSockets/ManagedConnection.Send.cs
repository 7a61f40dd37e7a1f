using System.Net.Sockets;
using System.Runtime.CompilerServices;
using SafeSockets.Internal;

namespace SafeSockets;

public sealed partial class ManagedConnection
{
    // The send gate: bits 0..29 count sends in flight (the Transport send loop counts as one for its whole life),
    // bit 30 closes the gate. A half-close or close closes the gate, then waits for the count to reach zero: that is
    // "everything sent so far is handed to the kernel". Concurrent sends need no lock of ours: the runtime queues
    // them on the socket in order and completes each stream send whole.
    private const int SendGateClosed = 1 << 30;
    private const int SendCountMask = SendGateClosed - 1;
    private int _sendGate;

    // A pooled send operation, taken by one send at a time (others use the socket's own); null while in use.
    private SocketIoArgs? _sendArgs;

    /// <summary>Sends all of <paramref name="buffer"/>; completes once every byte has been handed to the kernel.</summary>
    /// <param name="buffer">The bytes to send.</param>
    /// <param name="cancellationToken">Cancels the send. A send cancelled part-way may have sent some bytes.</param>
    /// <returns>A task that completes when the bytes are in the kernel's send buffer.</returns>
    /// <remarks>Sends may overlap; each one's bytes go out whole and in the order the calls were made.</remarks>
    /// <exception cref="InvalidOperationException">The send side is shut down (<see cref="ShutdownSendAsync"/>), or the connection uses <see cref="Transport"/>.</exception>
    /// <exception cref="ObjectDisposedException">The connection is closing or closed.</exception>
    /// <exception cref="ConnectionResetException">The peer reset the connection.</exception>
    public ValueTask SendAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
    {
        ThrowIfCannotSend(ReadState());
        EnsureIoMode(FlagIoDirect);
        return buffer.IsEmpty ? default : SendCoreAsync(buffer, cancellationToken);
    }

    /// <summary>Half-close: waits until everything sent so far is handed to the kernel, then sends FIN; receiving keeps working.</summary>
    /// <remarks>With <see cref="Transport"/>, what was already flushed to the output is sent first; later writes are not sent.
    /// It acts on the connection for every owner (every <see cref="ConnectionLease"/>), as <c>shutdown(2)</c> does.</remarks>
    /// <param name="cancellationToken">Cancels the wait for earlier sends; the send side is then not shut down.</param>
    /// <returns>A task that completes once the FIN is queued. Calling it again does nothing.</returns>
    /// <exception cref="ObjectDisposedException">The connection is closing or closed.</exception>
    /// <exception cref="ConnectionResetException">The peer reset the connection.</exception>
    public ValueTask ShutdownSendAsync(CancellationToken cancellationToken = default)
    {
        int state = ReadState();
        ThrowIfClosing(state);
        if ((state & StateBits.SendShutdown) != 0)
        {
            return default;
        }

        return ShutdownSendCoreAsync(cancellationToken);
    }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask SendCoreAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken)
    {
        if (!TryBeginSend())
        {
            ThrowIfCannotSend(ReadState());
            ThrowHelper.ThrowSendShutdown();
        }

        // The pooled operation cannot be cancelled, so a send with a token uses the socket's own.
        SocketIoArgs? args = cancellationToken.CanBeCanceled ? null : TakeSendArgs();
        bool argsReusable = true;
        try
        {
            do
            {
                int sent = args is null
                    ? await _socket.SendAsync(buffer, SocketFlags.None, cancellationToken).ConfigureAwait(false)
                    : await args.SendAsync(_socket, buffer).ConfigureAwait(false);
                buffer = buffer.Slice(sent);
            }
            while (!buffer.IsEmpty);
        }
        catch (Exception ex)
        {
            // A SocketException is a completed operation's error; anything else (the socket disposed before the operation
            // started) leaves the pooled operation's state unknown, so it is not reused.
            argsReusable = ex is SocketException;
            if (TranslateSendFailure(ex) is { } translated)
            {
                throw translated;
            }

            throw;
        }
        finally
        {
            if (args is not null)
            {
                if (argsReusable)
                {
                    PutBackSendArgs(args);
                }
                else
                {
                    SocketIoArgs.Drop(args);
                }
            }

            EndSend();
        }
    }

    private async ValueTask ShutdownSendCoreAsync(CancellationToken cancellationToken)
    {
        StopSendLoop();
        try
        {
            await WaitForSendsAsync(Timeout.InfiniteTimeSpan, cancellationToken).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            // Not shut down after all: let sends through again, unless a close or another half-close took over.
            if ((ReadState() & (StateBits.SendShutdown | StateBits.Closing)) == 0)
            {
                Interlocked.And(ref _sendGate, ~SendGateClosed);
            }

            throw;
        }

        try
        {
            int state = ReadState();
            ThrowIfClosing(state);
            if ((state & StateBits.PeerReset) != 0)
            {
                ThrowHelper.ThrowPeerReset();
            }

            if (ShutdownSendOnce() && (ReadState() & StateBits.PeerReset) != 0)
            {
                ThrowHelper.ThrowPeerReset();
            }
        }
        catch (Exception ex) when (TranslateSendFailure(ex) is { } translated)
        {
            throw translated;
        }
    }

    private SocketIoArgs? TakeSendArgs()
    {
        if (!PoolingEnabled || !s_stopDrainWithShutdown)
        {
            return null;
        }

        // The first send rents it; later sends reuse it unless another send holds it.
        SocketIoArgs? args = Interlocked.Exchange(ref _sendArgs, null);
        if (args is null && !HasFlag(FlagSendArgsRented) && TrySetFlag(FlagSendArgsRented))
        {
            args = SocketIoArgs.Rent();
        }

        return args;
    }

    /// <summary>A send finished with the pooled operation: keep it for the next send, or return it to the pool if the
    /// connection has been released meanwhile (whoever takes it out of the field last returns it).</summary>
    private void PutBackSendArgs(SocketIoArgs args)
    {
        if (!HasFlag(FlagReleased))
        {
            Volatile.Write(ref _sendArgs, args);
            if (!HasFlag(FlagReleased) || Interlocked.Exchange(ref _sendArgs, null) is not { } again)
            {
                return;
            }

            args = again;
        }

        SocketIoArgs.Return(args);
    }

    /// <summary>At release: the pooled send operation goes back to the pool unless a send still holds it (that send returns it).</summary>
    private void ReturnSendArgs()
    {
        if (Interlocked.Exchange(ref _sendArgs, null) is { } args)
        {
            SocketIoArgs.Return(args);
        }
    }

    private bool TryBeginSend()
    {
        int current = Volatile.Read(ref _sendGate);
        while (true)
        {
            if ((current & SendGateClosed) != 0)
            {
                return false;
            }

            int seen = Interlocked.CompareExchange(ref _sendGate, current + 1, current);
            if (seen == current)
            {
                return true;
            }

            current = seen;
        }
    }

    private void EndSend()
    {
        if (Interlocked.Decrement(ref _sendGate) == SendGateClosed)
        {
            Volatile.Read(ref _extras)?.SendsDrained?.TrySetResult();
        }
    }

    /// <summary>Closes the send gate and waits until no send is in flight.</summary>
    /// <returns><see langword="false"/> if <paramref name="timeout"/> passed first.</returns>
    private async ValueTask<bool> WaitForSendsAsync(TimeSpan timeout, CancellationToken cancellationToken)
    {
        if ((Interlocked.Or(ref _sendGate, SendGateClosed) & SendCountMask) == 0)
        {
            return true;
        }

        var created = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        TaskCompletionSource drained = Interlocked.CompareExchange(ref GetExtras().SendsDrained, created, null) ?? created;
        if ((Volatile.Read(ref _sendGate) & SendCountMask) == 0)
        {
            return true;
        }

        try
        {
            await drained.Task.WaitAsync(timeout, _settings.TimeProvider, cancellationToken).ConfigureAwait(false);
            return true;
        }
        catch (TimeoutException)
        {
            return false;
        }
    }

    /// <summary>Sends FIN once; the caller has waited for sends in flight.</summary>
    /// <returns><see langword="true"/> if this call shut the send side.</returns>
    private bool ShutdownSendOnce()
    {
        int previous = SetState(StateBits.SendShutdown);
        if ((previous & StateBits.SendShutdown) != 0)
        {
            return false;
        }

        _socket.Shutdown(SocketShutdown.Send);
        return true;
    }

    private void ThrowIfCannotSend(int state)
    {
        ThrowIfClosing(state);
        if ((state & StateBits.PeerReset) != 0)
        {
            ThrowHelper.ThrowPeerReset();
        }

        if ((state & StateBits.SendShutdown) != 0)
        {
            ThrowHelper.ThrowSendShutdown();
        }
    }

    /// <summary>What a failed send or half-close throws instead of the runtime's exception: a reset is recorded (and
    /// releases the connection); the socket disposed under us by our own close or abort becomes our
    /// <see cref="ObjectDisposedException"/> with its reason.</summary>
    /// <returns>The exception to throw, or <see langword="null"/> to let the original propagate.</returns>
    private Exception? TranslateSendFailure(Exception ex)
    {
        if (ex is SocketException socketError)
        {
            Exception? translated = TranslateError(socketError);
            if (translated is ConnectionResetException)
            {
                OnResetSeenBySend();
            }

            return translated;
        }

        int state = ReadState();
        if (ex is ObjectDisposedException && (state & (StateBits.Closed | StateBits.Aborted)) != 0)
        {
            return (state & StateBits.PeerReset) != 0 && _closeReason == CloseReason.PeerReset
                ? ThrowHelper.CreatePeerReset(ex)
                : new ObjectDisposedException(nameof(ManagedConnection), ThrowHelper.DisposedReason(_closeReason));
        }

        return null;
    }

    /// <summary>Maps a socket error from a send or shutdown to the exception a user can act on.</summary>
    /// <returns>The exception to throw instead, or <see langword="null"/> to let the original propagate.</returns>
    private Exception? TranslateError(SocketException ex)
    {
        int state = ReadState();
        if ((state & (StateBits.Closing | StateBits.Closed | StateBits.Aborted)) != 0 &&
            (SocketErrors.IsAbortedByUs(ex.SocketErrorCode) || SocketErrors.IsConnectionReset(ex.SocketErrorCode)) &&
            _closeReason != CloseReason.PeerReset)
        {
            return new ObjectDisposedException(nameof(ManagedConnection), ThrowHelper.DisposedReason(_closeReason));
        }

        if (SocketErrors.IsConnectionReset(ex.SocketErrorCode))
        {
            return ThrowHelper.CreatePeerReset(ex);
        }

        return null;
    }
}
