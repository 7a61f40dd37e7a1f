using System.Net.Sockets;
using System.Runtime.CompilerServices;
using SafeSockets.Internal;

namespace SafeSockets;

public sealed partial class ManagedConnection
{
    // A pooled send operation, taken by one send at a time (others use the socket's own); null while in use.
    private SocketIoArgs? _sendArgs;

    /// <summary>Sends all of <paramref name="buffer"/>; completes once every byte has been handed to the kernel.</summary>
    /// <param name="buffer">The bytes to send.</param>
    /// <param name="cancellationToken">Cancels the send. A send cancelled part-way may have sent some bytes.</param>
    /// <returns>A task that completes when the bytes are in the kernel's send buffer.</returns>
    /// <remarks>Sends may overlap; each one's bytes go out whole and in the order the calls were made.</remarks>
    /// <exception cref="InvalidOperationException">The send side is shut down or a <see cref="ShutdownSendAsync"/> is in progress, or the connection uses <see cref="Transport"/>.</exception>
    /// <exception cref="ObjectDisposedException">The connection is closing or closed.</exception>
    /// <exception cref="ConnectionResetException">The peer reset the connection.</exception>
    public ValueTask SendAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
    {
        ThrowIfClosing();
        EnsureIoMode(IoDirect);
        if (buffer.IsEmpty)
        {
            if (_sendGate.IsClosed)
            {
                ThrowCannotSend();
            }

            return default;
        }

        if (!_sendGate.TryEnter())
        {
            ThrowCannotSend();
        }

        return SendCoreAsync(buffer, cancellationToken);
    }

    /// <summary>Half-close: waits until everything sent so far is handed to the kernel, then sends FIN; receiving keeps working.</summary>
    /// <remarks>With <see cref="Transport"/>, what was already flushed to the output is sent first; later writes are not sent.
    /// It acts on the connection for every owner (every <see cref="ConnectionLease"/>), as <c>shutdown(2)</c> does.
    /// While it waits, new sends are refused. Several calls may overlap: all complete once the earlier sends are handed over.</remarks>
    /// <param name="cancellationToken">Cancels the wait for earlier sends: no FIN is sent, and sending works again as before.</param>
    /// <returns>A task that completes once the FIN is queued. Calling it after the FIN does nothing.</returns>
    /// <exception cref="ObjectDisposedException">The connection is closing or closed.</exception>
    /// <exception cref="ConnectionResetException">The peer reset the connection.</exception>
    public ValueTask ShutdownSendAsync(CancellationToken cancellationToken = default)
    {
        ThrowIfClosing();
        if (_lifecycle.SendShutdown)
        {
            return default;
        }

        return ShutdownSendCoreAsync(cancellationToken);
    }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask SendCoreAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken)
    {
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

            // Handed to the kernel (or failed): after the peer's FIN this counts as the application's activity.
            NoteActivity();
            NoteIo();
            _sendGate.Exit();
        }
    }

    private async ValueTask ShutdownSendCoreAsync(CancellationToken cancellationToken)
    {
        cancellationToken.ThrowIfCancellationRequested();
        Task drained = _sendGate.CloseAndWait();
        PauseSendLoop();
        bool finSent = false;
        try
        {
            await drained.WaitAsync(cancellationToken).ConfigureAwait(false);
            cancellationToken.ThrowIfCancellationRequested();
            ThrowIfClosing();
            if (_lifecycle.PeerResetSeen)
            {
                ThrowClosed();
            }

            finSent = ShutdownSendOnce();
        }
        catch (Exception ex) when (ex is SocketException or ObjectDisposedException && TranslateSendFailure(ex) is { } translated)
        {
            throw translated;
        }
        finally
        {
            if (finSent || _lifecycle.SendShutdown)
            {
                // Our FIN is out: this closer never leaves, so the gate stays closed for good.
                StopSendLoop();
            }
            else
            {
                // Cancelled (or failed) before the FIN: sending works again unless another closer holds the gate. The
                // send loop gets its entry back before this closer leaves.
                ResumeSendLoopAndLeave(drained);
            }
        }
    }

    private SocketIoArgs? TakeSendArgs()
    {
        if (!s_stopDrainWithShutdown)
        {
            return null;
        }

        // The first send rents it; later sends reuse it unless another send holds it.
        SocketIoArgs? args = Interlocked.Exchange(ref _sendArgs, null);
        if (args is null && !HasIo(IoSendArgsRented) && TrySetIo(IoSendArgsRented))
        {
            args = SocketIoArgs.Rent();
        }

        return args;
    }

    /// <summary>A send finished with the pooled operation: keep it for the next send, or return it to the pool if the
    /// connection has been released meanwhile (whoever takes it out of the field last returns it).</summary>
    private void PutBackSendArgs(SocketIoArgs args)
    {
        if (!_lifecycle.IsReleased)
        {
            Volatile.Write(ref _sendArgs, args);
            if (!_lifecycle.IsReleased || Interlocked.Exchange(ref _sendArgs, null) is not { } again)
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

    /// <summary>Sends FIN once (the caller has waited for sends in flight).</summary>
    /// <returns><see langword="true"/> if this call shut the send side.</returns>
    private bool ShutdownSendOnce()
    {
        if (!_lifecycle.TryMarkSendShutdown())
        {
            return false;
        }

        _socket.Shutdown(SocketShutdown.Send);
        return true;
    }

    [System.Diagnostics.CodeAnalysis.DoesNotReturn]
    private void ThrowCannotSend()
    {
        ThrowIfClosing();
        if (_lifecycle.PeerResetSeen)
        {
            ThrowClosed();
        }

        ThrowHelper.ThrowSendShutdown();
    }

    /// <summary>What a failed send or half-close throws instead of the runtime's exception: a reset is recorded (and
    /// tears the connection down); the socket released under us by our own close or abort becomes our
    /// <see cref="ObjectDisposedException"/> with its reason.</summary>
    /// <returns>The exception to throw, or <see langword="null"/> to let the original propagate.</returns>
    private Exception? TranslateSendFailure(Exception ex)
    {
        CloseReason reason = _lifecycle.Reason;
        if (ex is SocketException socketError)
        {
            if (_lifecycle.IsTearingDown && reason is not (CloseReason.PeerReset or CloseReason.PeerUnreachable) &&
                (SocketErrors.IsAbortedByUs(socketError.SocketErrorCode) || SocketErrors.IsConnectionReset(socketError.SocketErrorCode)))
            {
                // Our own teardown shut the send side or released the socket under this send.
                return new ObjectDisposedException(nameof(ManagedConnection), ThrowHelper.DisposedReason(reason));
            }

            if (SocketErrors.IsConnectionLost(socketError.SocketErrorCode) || (Volatile.Read(ref _peerUnreachable) && SocketErrors.IsConnectionReset(socketError.SocketErrorCode)))
            {
                OnPeerUnreachable(socketError.SocketErrorCode);
                return ThrowHelper.CreatePeerUnreachable(ex);
            }

            if (SocketErrors.IsConnectionReset(socketError.SocketErrorCode))
            {
                OnPeerReset();
                return ThrowHelper.CreatePeerReset(ex);
            }

            return null;
        }

        if (ex is ObjectDisposedException && _lifecycle.IsReleased)
        {
            return reason switch
            {
                CloseReason.PeerReset => ThrowHelper.CreatePeerReset(ex),
                CloseReason.PeerUnreachable => ThrowHelper.CreatePeerUnreachable(ex),
                _ => new ObjectDisposedException(nameof(ManagedConnection), ThrowHelper.DisposedReason(reason)),
            };
        }

        return null;
    }
}
