using System.Buffers;
using System.IO.Pipelines;
using System.Net.Sockets;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using SafeSockets.Diagnostics;
using SafeSockets.Internal;

namespace SafeSockets;

public sealed partial class ManagedConnection
{
    /// <summary>The connection as a duplex pipe: <see cref="IDuplexPipe.Input"/> is filled by the receive loop and completes at the
    /// peer's FIN; what is flushed to <see cref="IDuplexPipe.Output"/> is sent by a send loop, and completing the output
    /// sends FIN once the last byte is handed to the kernel (half-close).</summary>
    /// <remarks>
    /// <para>Choose one surface per connection: <see cref="Transport"/>, or <see cref="ReceiveAsync"/>/<see cref="SendAsync"/>/<see cref="GetStream"/>
    /// (which can be mixed with each other). Using the other kind afterwards throws <see cref="InvalidOperationException"/>.
    /// <see cref="ShutdownSendAsync"/>, <see cref="CloseAsync"/> and <see cref="Abort"/> work with either.</para>
    /// <para>When the connection closes, a pending read on the input returns a cancelled result and the input then completes;
    /// the application still completes its own reader and writer. Backpressure follows
    /// <see cref="ManagedConnectionOptions.MaxInputBufferSize"/> and <see cref="ManagedConnectionOptions.MaxOutputBufferSize"/>.</para>
    /// </remarks>
    /// <exception cref="InvalidOperationException">The connection already uses <see cref="ReceiveAsync"/>, <see cref="SendAsync"/> or <see cref="GetStream"/>.</exception>
    /// <exception cref="ObjectDisposedException">The connection is closing or closed and the transport was never created.</exception>
    public IDuplexPipe Transport
    {
        get
        {
            if (Volatile.Read(ref _extras)?.Transport is { } existing)
            {
                return existing;
            }

            ThrowIfClosing();
            EnsureIoMode(IoPipe);
            Extras extras = GetExtras();
            lock (extras)
            {
                // Only the first caller creates the output pipe and its send loop.
                if (extras.Transport is null)
                {
                    var output = new Pipe(_settings.OutputPipeOptions);
                    Volatile.Write(ref extras.Output, output);
                    if (extras.OutputStopped)
                    {
                        // The teardown began between our checks and here: nothing will be sent (writes see the output completed).
                        output.Reader.Complete();
                    }
                    else
                    {
                        _ = SendLoopAsync(output.Reader); // it never throws: it reports errors through the output's reader (and logs)
                    }

                    Volatile.Write(ref extras.Transport, new DuplexPipe(_input.Reader, output.Writer));

                    // The application reads the input pipe itself, so the loop cannot know when it wants bytes: a read
                    // is pending at all times from now on.
                    Watch();
                }

                return extras.Transport;
            }
        }
    }

    /// <summary>A <see cref="Stream"/> over the connection, for code that expects one (<c>SslStream</c>, serializers).</summary>
    /// <param name="ownsConnection">When <see langword="true"/>, disposing the stream disposes the connection (a graceful close if it
    /// holds the last reference); when <see langword="false"/> (the default), disposing the stream leaves the connection open.</param>
    /// <returns>A new stream; reads return 0 at the peer's FIN, writes complete once handed to the kernel.</returns>
    /// <exception cref="InvalidOperationException">The connection already uses <see cref="Transport"/>.</exception>
    /// <exception cref="ObjectDisposedException">The connection is closing or closed.</exception>
    public Stream GetStream(bool ownsConnection = false)
    {
        ThrowIfClosing();
        EnsureIoMode(IoDirect);
        return new ManagedConnectionStream(this, ownsConnection);
    }

    private void EnsureIoMode(int mode)
    {
        int current = Volatile.Read(ref _io);
        while ((current & (IoDirect | IoPipe)) == 0)
        {
            if ((current & IoInputTaken) != 0)
            {
                // The teardown took the input before any surface was chosen: its pipe may already serve another connection.
                ThrowClosed();
            }

            int seen = Interlocked.CompareExchange(ref _io, current | mode, current);
            if (seen == current)
            {
                return;
            }

            current = seen;
        }

        if ((current & mode) != 0)
        {
            return;
        }

        throw new InvalidOperationException(mode == IoPipe
            ? "This connection already uses ReceiveAsync/SendAsync/GetStream; Transport cannot be used on the same connection."
            : "This connection's I/O goes through Transport; ReceiveAsync, SendAsync and GetStream cannot be used on the same connection.");
    }

    /// <summary>Output pipe → socket. Holds one entry of the send gate while it runs, so a flush (close or half-close)
    /// is "ask the loop to send what is flushed and pause, then wait for sends in flight", as for direct sends. A cancelled
    /// half-close resumes it; our FIN or the teardown stops it for good. It never throws: errors complete the output's
    /// reader (the application's writer sees them), and an unexpected one is logged at Error.</summary>
    private async Task SendLoopAsync(PipeReader reader)
    {
        Exception? error = null;
        bool applicationFailed = false;
        List<ArraySegment<byte>>? segments = null;
        bool holding = false;
        try
        {
            // A half-close may hold the gate already (the Transport was created while it waits): wait for its outcome.
            holding = await EnterSendLoopAsync().ConfigureAwait(false);

            while (holding)
            {
                ReadResult result;
                try
                {
                    result = await reader.ReadAsync().ConfigureAwait(false);
                }
                catch (Exception)
                {
                    // The application completed Transport.Output with an exception: the connection is aborted, as Kestrel does.
                    applicationFailed = true;
                    break;
                }

                ReadOnlySequence<byte> buffer = result.Buffer;
                try
                {
                    if (!buffer.IsEmpty && !_lifecycle.SendShutdown)
                    {
                        Volatile.Write(ref _transportSending, true);
                        await SendSequenceAsync(buffer, ref segments).ConfigureAwait(false);
                        Volatile.Write(ref _transportSending, false);
                        NoteActivity();
                        NoteIo();
                    }
                }
                finally
                {
                    reader.AdvanceTo(buffer.End);
                }

                if (result.IsCompleted)
                {
                    // The application completed the output: FIN follows the last byte.
                    _sendGate.CloseForGood();
                    ShutdownSendOnce();
                    break;
                }

                if (SendLoopPause() is { } resume)
                {
                    // A half-close or the teardown waits for us: step out of the gate until it is decided. A resume hands
                    // the gate entry back to us before the gate reopens (ResumeSendLoopAndLeave), so what the application flushed
                    // meanwhile is counted by the next half-close's wait.
                    holding = false;
                    _sendGate.Exit();
                    holding = await resume.ConfigureAwait(false);
                }
            }
        }
        catch (Exception ex) when (ex is SocketException or ObjectDisposedException)
        {
            error = TranslateSendFailure(ex) ?? ex;
        }
#pragma warning disable CA1031 // Surfaced to the application through the output's reader, and logged.
        catch (Exception ex)
#pragma warning restore CA1031
        {
            error = ex;
            Log.UnexpectedError(_settings.Logger, "Transport send loop", RemoteEndPoint?.ToString(), ex);
        }
        finally
        {
            Volatile.Write(ref _transportSending, false);
            reader.Complete(error);
            if (holding)
            {
                _sendGate.Exit();
            }
        }

        if (applicationFailed)
        {
            Abort();
        }
    }

    /// <summary>The send loop's first entry into the gate; if a half-close holds it, a wait for the half-close's outcome
    /// (under the same lock as <see cref="ResumeSendLoopAndLeave"/>, so the outcome cannot slip between the two).</summary>
    private Task<bool> EnterSendLoopAsync()
    {
        Extras extras = _extras!;
        lock (extras)
        {
            if (extras.OutputStopped)
            {
                return Task.FromResult(false);
            }

            if (_sendGate.TryEnter())
            {
                return Task.FromResult(true);
            }

            return (extras.OutputResume ??= new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously)).Task;
        }
    }

    /// <summary>The send loop's pause: <see langword="null"/> to go on; otherwise a task that says whether to resume.</summary>
    private Task<bool>? SendLoopPause()
    {
        Extras extras = _extras!;
        lock (extras)
        {
            if (extras.OutputStopped)
            {
                return Task.FromResult(false);
            }

            return extras.OutputPauses > 0 ? (extras.OutputResume ??= new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously)).Task : null;
        }
    }

    /// <summary>A half-close waits: the send loop sends what is flushed, then pauses.</summary>
    private void PauseSendLoop()
    {
        if (!HasIo(IoPipe))
        {
            return;
        }

        Extras extras = GetExtras();
        Pipe? output;
        lock (extras)
        {
            extras.OutputPauses++;
            output = extras.Output;
        }

        output?.Reader.CancelPendingRead();
    }

    /// <summary>A half-close was cancelled: it leaves the gate, and the send loop goes on once no other half-close waits.
    /// Under the send loop's lock: the loop's gate entry is taken for it before the gate can reopen (so a half-close that
    /// comes next waits for what the application flushed meanwhile), and a loop that is just starting either sees the
    /// gate open or finds its wait resumed here.</summary>
    private void ResumeSendLoopAndLeave(Task closerWait)
    {
        // Always under the side object's lock (made here if need be: a cancelled half-close is rare), even with no
        // Transport yet: one may be starting its loop right now.
        TaskCompletionSource<bool>? resume = null;
        Extras extras = GetExtras();
        lock (extras)
        {
            extras.OutputPauses = Math.Max(0, extras.OutputPauses - 1);
            if (extras.OutputPauses == 0 && !extras.OutputStopped && extras.OutputResume is { } waiting)
            {
                resume = waiting;
                extras.OutputResume = null;
                _sendGate.EnterWhileClosed();
            }

            _sendGate.Leave(closerWait);
        }

        resume?.TrySetResult(true);
    }

    /// <summary>Our FIN is out or the teardown began: the send loop sends what is flushed and stops for good (and a
    /// Transport created from now on starts none).</summary>
    private void StopSendLoop()
    {
        if (!HasIo(IoPipe))
        {
            return;
        }

        TaskCompletionSource<bool>? resume;
        Pipe? output;
        Extras extras = GetExtras();
        lock (extras)
        {
            extras.OutputStopped = true;
            extras.OutputPauses++;
            resume = extras.OutputResume;
            extras.OutputResume = null;
            output = extras.Output;
        }

        resume?.TrySetResult(false);
        output?.Reader.CancelPendingRead();
    }

    /// <summary>Sends a buffered sequence: one segment as is, several in one gather write (one syscall, not one per segment).</summary>
    private ValueTask SendSequenceAsync(ReadOnlySequence<byte> buffer, ref List<ArraySegment<byte>>? segments)
    {
        if (buffer.IsSingleSegment)
        {
            return SendAllAsync(buffer.First);
        }

        segments ??= new List<ArraySegment<byte>>(16);
        segments.Clear();
        foreach (ReadOnlyMemory<byte> segment in buffer)
        {
            if (!MemoryMarshal.TryGetArray(segment, out ArraySegment<byte> array))
            {
                // Not array-backed (a custom pool): fall back to one send per segment.
                return SendSegmentsAsync(buffer);
            }

            segments.Add(array);
        }

        return SendGatherAsync(segments, buffer);
    }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask SendGatherAsync(List<ArraySegment<byte>> segments, ReadOnlySequence<byte> buffer)
    {
        int sent = await _socket.SendAsync(segments, SocketFlags.None).ConfigureAwait(false);
        if (sent < buffer.Length)
        {
            // The runtime completes stream sends whole; this only guards a platform that does not.
            await SendSegmentsAsync(buffer.Slice(sent)).ConfigureAwait(false);
        }
    }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask SendSegmentsAsync(ReadOnlySequence<byte> buffer)
    {
        foreach (ReadOnlyMemory<byte> segment in buffer)
        {
            await SendAllAsync(segment).ConfigureAwait(false);
        }
    }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask SendAllAsync(ReadOnlyMemory<byte> data)
    {
        while (!data.IsEmpty)
        {
            int sent = await _socket.SendAsync(data, SocketFlags.None).ConfigureAwait(false);
            data = data.Slice(sent);
        }
    }

    private sealed class DuplexPipe(PipeReader input, PipeWriter output) : IDuplexPipe
    {
        public PipeReader Input { get; } = input;

        public PipeWriter Output { get; } = output;
    }
}
