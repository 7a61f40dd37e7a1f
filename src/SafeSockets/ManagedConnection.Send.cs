using System.Net.Sockets;
using System.Runtime.CompilerServices;
using SafeSockets.Internal;

namespace SafeSockets;

public sealed partial class ManagedConnection
{
    // Guards the socket's send side: one send (or the shutdown of the send side) at a time, so that a
    // half-close or a close can wait until everything sent before it has been handed to the kernel.
    private readonly SemaphoreSlim _sendLock = new(1, 1);

    /// <summary>Sends all of <paramref name="buffer"/>; completes once every byte has been handed to the kernel.</summary>
    /// <param name="buffer">The bytes to send.</param>
    /// <param name="cancellationToken">Cancels the send. A send cancelled part-way may have sent some bytes.</param>
    /// <returns>A task that completes when the bytes are in the kernel's send buffer.</returns>
    /// <exception cref="InvalidOperationException">The send side is shut down (<see cref="ShutdownSendAsync"/>), or the connection uses <see cref="Transport"/>.</exception>
    /// <exception cref="ObjectDisposedException">The connection is closing or closed.</exception>
    /// <exception cref="ConnectionResetException">The peer reset the connection.</exception>
    public ValueTask SendAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
    {
        ThrowIfCannotSend(ReadState());
        EnsureIoMode(IoDirect);
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
        if (!_sendLock.Wait(0, CancellationToken.None))
        {
            await _sendLock.WaitAsync(cancellationToken).ConfigureAwait(false);
        }

        try
        {
            ThrowIfCannotSend(ReadState());
            do
            {
                int sent = await _socket.SendAsync(buffer, SocketFlags.None, cancellationToken).ConfigureAwait(false);
                buffer = buffer.Slice(sent);
            }
            while (!buffer.IsEmpty);
        }
        catch (SocketException ex) when (TranslateError(ex) is { } translated)
        {
            throw translated;
        }
        catch (ObjectDisposedException) when ((ReadState() & (StateBits.Closed | StateBits.Aborted)) != 0)
        {
            ThrowIfClosing(ReadState());
            throw;
        }
        finally
        {
            _sendLock.Release();
        }
    }

    private async ValueTask ShutdownSendCoreAsync(CancellationToken cancellationToken)
    {
        StopSendLoop();
        await _sendLock.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            int state = ReadState();
            ThrowIfClosing(state);
            if ((state & StateBits.PeerReset) != 0)
            {
                ThrowHelper.ThrowPeerReset();
            }

            ShutdownSendUnderLock();
        }
        catch (SocketException ex) when (TranslateError(ex) is { } translated)
        {
            throw translated;
        }
        catch (ObjectDisposedException) when ((ReadState() & (StateBits.Closed | StateBits.Aborted)) != 0)
        {
            ThrowIfClosing(ReadState());
            throw;
        }
        finally
        {
            _sendLock.Release();
        }
    }

    /// <summary>Sends FIN once; the caller holds <see cref="_sendLock"/>, so no send is in flight.</summary>
    /// <returns><see langword="true"/> if this call shut the send side.</returns>
    private bool ShutdownSendUnderLock()
    {
        int previous = StateBits.Set(ref _state, StateBits.SendShutdown);
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
