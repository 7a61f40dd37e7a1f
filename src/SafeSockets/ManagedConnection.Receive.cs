using System.Buffers;
using System.Diagnostics;
using System.IO.Pipelines;
using System.Net.Sockets;
using System.Runtime.CompilerServices;
using Microsoft.Extensions.Logging;
using SafeSockets.Diagnostics;
using SafeSockets.Internal;

namespace SafeSockets;

public sealed partial class ManagedConnection
{
    private const int MinimumReadSize = 4096;
    private const int MaximumReadSize = 64 * 1024;

    /// <summary><see cref="ManagedConnectionOptions.UnsafePreferInlineScheduling"/>: the reader may be resumed on the thread
    /// that completed the read, even the runtime's socket event thread.</summary>
    internal bool PreferInlineScheduling => _settings.PreferInlineScheduling;

    // Socket → _input is the receive loop's job, and only the loop reads bytes from the socket (the lazy watch's thread
    // may start a watched loop's zero-byte wait for data for it: ManagedConnection.Watch.cs). It reads when the application asks
    // and, once the connection is watched, at all times, so the peer's FIN is seen while the application is busy
    // elsewhere (ManagedConnection.Watch.cs).
    private readonly Pipe _input;
    private readonly bool _inputPooled;
    private readonly ValueTask<LoopExit> _receiveLoop;

    // Set once the constructor has stored _receiveLoop (the loop itself may already be running on another thread).
    private bool _receiveLoopStored;

    // The pooled operation that reads the socket: rented at the first read, by the loop or by the lazy watch's thread
    // while it holds the loop's park (StartWatchRead), never both at once; returned by the loop when it ends, or
    // dropped if a read ended in an unknown state.
    private SocketIoArgs? _receiveArgs;
    private bool _dropReceiveArgs;

    // The lazy watch's zero-byte read (ManagedConnection.Watch.cs, StartWatchRead): pending, done (the loop then reads
    // at once), and how it failed (the loop rethrows it as its own read's failure).
    private ValueTask<int> _watchRead;
    private bool _watchReadDone;
    private Exception? _watchReadFailure;

    // Set when the receive loop has ended (its input let go of), for tests: the loop's task is the teardown's to consume.
    private bool _receiveLoopEnded;

    // The drain's reads that got bytes, for tests (only the loop writes it).
    private int _drainReads;

    /// <summary>How many reads the drain made that got bytes, for tests.</summary>
    internal int DrainReadsForTest => Volatile.Read(ref _drainReads);

    /// <summary>Whether the receive loop has ended, for tests.</summary>
    internal bool ReceiveLoopEnded => Volatile.Read(ref _receiveLoopEnded);

    // How a drain bound stops the loop's pending read without disposing the socket under it (which would reset):
    // on Linux and macOS, shutdown(SHUT_RD) wakes the read with 0 and sends nothing to the peer; reads then need no
    // cancellation token, and a token costs three allocations per pending read in the runtime. Windows does not wake
    // a pending receive on SD_RECEIVE, so there every read carries a token (Extras.ReceiveCts) that the bound cancels.
    private static readonly bool s_stopDrainWithShutdown = !OperatingSystem.IsWindows();

    /// <summary>Why the receive loop ended (a value, never an exception: see <see cref="ReceiveLoopAsync"/>).</summary>
    private enum LoopExit
    {
        PeerFin,
        PeerReset,
        DrainStopped,
        DrainLimitExceeded,
        Aborted,
        Faulted,
    }

    /// <summary>Fires when the peer's FIN or reset is seen (even while nobody is reading), and at the latest when the connection is released.</summary>
    /// <remarks>Asking for it makes the connection watched: from then on a read is pending at all times, so the FIN is
    /// seen as it arrives. Callbacks run on the thread pool, never on the connection's receive loop; an exception a callback throws is
    /// logged at Error (event 9) and does not reach the connection. After the peer's FIN the application may still send
    /// (a half-close protocol answers now) and should then close; a connection left without a send, a read or a close for
    /// <see cref="ManagedConnectionOptions.CloseWaitTimeout"/> closes itself.</remarks>
    public CancellationToken PeerClosed => (Volatile.Read(ref _extras)?.PeerClosedCts ?? CreatePeerClosedSource()).Token;

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
        ThrowIfClosing();
        EnsureIoMode(IoDirect);
        if (!TryTakeReader())
        {
            ThrowHelper.ThrowConcurrentReceive();
        }

        NoteActivity();
        try
        {
            PipeReader reader = _input.Reader;
            if (!reader.TryRead(out ReadResult result))
            {
                // Nothing buffered: the loop reads now, on this thread if it was parked, so bytes already in the kernel
                // are here at once, without a thread hop.
                _park.Demand();
                if (!reader.TryRead(out result))
                {
                    result = await reader.ReadAsync(cancellationToken).ConfigureAwait(false);
                }
            }

            if (result.IsCanceled)
            {
                // Only the teardown cancels a pending read.
                reader.AdvanceTo(result.Buffer.Start);
                ThrowClosed();
            }

            ReadOnlySequence<byte> data = result.Buffer;
            if (data.IsEmpty || buffer.IsEmpty)
            {
                reader.AdvanceTo(data.Start);
                if (data.IsEmpty && result.IsCompleted && !_lifecycle.PeerFinSeen)
                {
                    // Completed by our own teardown (an abort), not by the peer's FIN.
                    ThrowClosed();
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
            if ((Interlocked.And(ref _io, ~IoReadActive) & IoInputTaken) != 0)
            {
                // The teardown took the input while we held the reader: what is left unread is discarded (and counted),
                // and we complete the reader. First the flag: a loop read not yet handed over sees it and counts its bytes
                // itself, never advancing them (one the loop flushed before the discard is counted by it; one whose loop
                // looked before the flag and flushes after the discard is not: a lower bound, docs/reliability.md).
                Volatile.Write(ref _readerCompletedByTeardown, true);
                try
                {
                    DiscardUnreadInput();
                }
                catch (Exception ex) when (ex is IOException or SocketException or InvalidOperationException)
                {
                    // The input ended with the loop's error (a reset): nothing to count.
                }

                _input.Reader.Complete();
            }
        }
    }

    /// <summary>Marks the input's reader as held by a ReceiveAsync.</summary>
    /// <returns><see langword="false"/> if another ReceiveAsync holds it; throws if the teardown took it.</returns>
    private bool TryTakeReader()
    {
        int current = Volatile.Read(ref _io);
        while (true)
        {
            if ((current & IoInputTaken) != 0)
            {
                ThrowClosed();
            }

            if ((current & IoReadActive) != 0)
            {
                return false;
            }

            int seen = Interlocked.CompareExchange(ref _io, current | IoReadActive, current);
            if (seen == current)
            {
                return true;
            }

            current = seen;
        }
    }

    /// <summary>Step 0 of the teardown: nobody may read any more. From here on every byte that arrives is drained (read,
    /// counted, discarded); what the application left unread in the input is discarded and counted too.</summary>
    private bool TakeInputForTeardown(bool countPausedLoop = false)
    {
        int previous = Interlocked.Or(ref _io, IoInputTaken);
        if ((previous & IoInputTaken) != 0)
        {
            return false;
        }

        AfterInputTakenForTest?.Invoke(this);

        // The application owns Transport.Input's reader, or a ReceiveAsync holds it: wake it (a ReceiveAsync throws and
        // completes the reader on its way out; Transport's reader gets a cancelled read, and its input completes after the
        // drain). First, before the paused loop below can end: a loop whose pause an abort took completes the input at
        // once, and the application must see the cancellation before that end, not a clean end of a cut-off input.
        bool readerElsewhere = (previous & (IoPipe | IoReadActive)) != 0;
        if (readerElsewhere)
        {
            _input.Reader.CancelPendingRead();
        }

        // An abort: a loop paused behind a full input (the application reads nothing) is woken below and would read on,
        // racing the release, so what its reads took first was all that counted (12-48 KiB of 48 KiB). Counted here
        // while it is still paused; woken, it finds its pause taken and reads no more.
        bool counted = countPausedLoop
            && Interlocked.CompareExchange(ref _inputPause, InputPausedCountedByAbort, InputPausedState) == InputPausedState;
        if (counted)
        {
            AfterAbortTookPauseForTest?.Invoke(this);
            CountUnreadInKernel();
        }

        // If the loop is paused behind unread data, or about to flush, let it go on: its next read is drained (or, its
        // pause taken by an abort, it ends). Before the input may be given back below: after that the pipe may already
        // serve another connection.
        _input.Writer.CancelPendingFlush();

        if (!readerElsewhere)
        {
            // The reader is ours now. Discard (and count) what the application never read. The reader is completed after
            // the loop has completed the writer (LetGoOfInput): in that order the pipe keeps its buffer segment for the
            // next connection. Published only after the discard: an Abort that escalates on another thread may give the
            // input back (LetGoOfInput) at any moment, and two readers at once would throw.
            DiscardUnreadInput();
            Volatile.Write(ref _inputReturnable, true);
        }

        return counted;
    }

    /// <summary>Counts and drops what sits unread in the input (the teardown owns the reader).</summary>
    private void DiscardUnreadInput()
    {
        PipeReader reader = _input.Reader;
        if (reader.TryRead(out ReadResult rest))
        {
            Interlocked.Add(ref _bytesDrained, rest.Buffer.Length);
            reader.AdvanceTo(rest.Buffer.End);
        }
    }

    /// <summary>How much a drain read may take: 64 KiB, or one byte past what is left of <see cref="ManagedConnectionOptions.MaxDrainBytes"/>,
    /// so that a peer sending more than the cap is found out with <see cref="CloseResult.BytesDrained"/> exactly one byte past
    /// it (until 2026-12-06 a read's size past it). Once the peer's FIN is known (the kernel saw it behind unread data) the
    /// cap no longer applies: what is left is already buffered.</summary>
    private int DrainReadSize()
    {
        if (_lifecycle.PeerFinSeen)
        {
            return MaximumReadSize;
        }

        long left = _settings.MaxDrainBytes - Interlocked.Read(ref _bytesDrained);
        return left >= MaximumReadSize ? MaximumReadSize : (int)Math.Max(0, left) + 1;
    }

    /// <summary>The input's memory for the loop's next read: <paramref name="readSize"/>, unless a grown read finds nothing
    /// to read in the kernel, when it takes 4 KiB.</summary>
    /// <remarks>A grown read (past 4 KiB) always follows a wait for data, so that a read left waiting holds no grown buffer
    /// (if the connection were closed meanwhile the drain would count all that read got past MaxDrainBytes, and the buffer
    /// would be held, never advanced, until the drain ended). The wait can complete with nothing to read: at the peer's FIN,
    /// or on a stale readiness (seen under load: the loop's 32 KiB read then waited on a quiet peer, session 13). One ioctl
    /// per grown read (bulk transfers only) tells them apart; a read that may wait takes what a request/response read
    /// takes.</remarks>
    private Memory<byte> InputReadMemory(PipeWriter writer, int readSize)
    {
        if (readSize > MinimumReadSize && _socket.Available == 0)
        {
            GetExtras().SmallReadFallbacks++;
            return writer.GetMemory(MinimumReadSize)[..MinimumReadSize];
        }

        return writer.GetMemory(readSize);
    }

    /// <summary>How many grown reads found nothing in the kernel and took 4 KiB, for tests.</summary>
    internal int SmallReadFallbacksForTest => Volatile.Read(ref _extras)?.SmallReadFallbacks ?? 0;

    /// <summary>Runs in the receive loop just after its wait for data completed (before its read), for tests.</summary>
    internal static Action<ManagedConnection>? AfterWaitForDataForTest { get; set; }

    /// <summary>The receive loop's next read size after a read of <paramref name="received"/> bytes into a buffer of
    /// <paramref name="bufferLength"/>: doubled (up to 64 KiB) when the read filled its buffer, halved (down to 4 KiB) when
    /// it got less than a quarter of the size or at most 4 KiB, otherwise unchanged.</summary>
    /// <remarks>A read that got at most 4 KiB is request/response traffic again: it shrinks the read size too, or requests
    /// of 2-4 KiB would keep it at 8 KiB (and a zero-byte wait before every read) for good (review, session 11).</remarks>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static int NextReadSize(int readSize, int received, int bufferLength)
    {
        Debug.Assert(System.Numerics.BitOperations.IsPow2(readSize) && readSize is >= MinimumReadSize and <= MaximumReadSize, "read sizes are powers of two from 4 to 64 KiB");
        if (received >= bufferLength && readSize < MaximumReadSize)
        {
            return readSize * 2;
        }

        if (readSize > MinimumReadSize && (received < readSize / 4 || received <= MinimumReadSize))
        {
            return readSize / 2;
        }

        return readSize;
    }

    /// <summary>Where drains read: bytes nobody will look at. One 64 KiB buffer per processor (up to 8), made when first
    /// used; concurrent drains on one processor overwrite each other's bytes, which is harmless. Pinned: a pending read
    /// pins its buffer on some platforms, and these live for the process.</summary>
    /// <remarks>A drain read used to go into the input pipe's memory, taken with the loop's read size and held, never
    /// advanced, until the drain ended; with reads of 64 KiB (fewer syscalls against a peer still sending), that was 64
    /// KiB per draining connection for up to DrainTimeout.</remarks>
    private static class DiscardBuffers
    {
        private static readonly byte[][] s_buffers = Create();

        public static Memory<byte> ForDrain(int size) => s_buffers[Thread.GetCurrentProcessorId() % s_buffers.Length].AsMemory(0, size);

        private static byte[][] Create()
        {
            var buffers = new byte[Math.Clamp(Environment.ProcessorCount, 1, 8)][];
            for (int i = 0; i < buffers.Length; i++)
            {
                // Stryker disable once Boolean : equivalent: SocketAsyncEventArgs pins a buffer itself while an operation uses it; pinned here saves that handle
                buffers[i] = GC.AllocateUninitializedArray<byte>(MaximumReadSize, pinned: true);
            }

            return buffers;
        }
    }

    /// <summary>Socket → input, until the peer's FIN, a reset, a drain bound or the release. Returns why it ended; it never throws.</summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    private async ValueTask<LoopExit> ReceiveLoopAsync()
    {
        PipeWriter writer = _input.Writer;
        Exception? pipeError = null;
        bool dropArgs = false;
        ReaderHandOff.Continuation caught = default;
        bool inputCompleted = false;
        bool drainMovedToPool = false;
        try
        {
            bool discard = false;
            CancellationToken token = s_stopDrainWithShutdown ? default : _extras!.ReceiveCts!.Token;

            // Adaptive read size: reads start small, and a busy connection grows the buffer (doubling when a read fills it)
            // so bulk transfers take few syscalls.
            int readSize = MinimumReadSize;

            // Whether a watched loop first waits for data with a zero-byte read, which holds no buffer, so an idle
            // connection costs no receive memory (Kestrel does the same). After a read that filled its buffer more is
            // likely waiting, so it reads at once; while draining it reuses one buffer anyway.
            bool waitForData = true;
            while (true)
            {
                if (readSize > MinimumReadSize && !HasIo(IoInputTaken))
                {
                    // Reads have grown past 4 KiB (a bulk transfer, for which one more recv per read is cheap): wait for data
                    // before taking a buffer, watched or not. A read left waiting would hold its buffer, and if the
                    // connection were closed meanwhile the drain would count all that read got past MaxDrainBytes and hold
                    // its buffer, never advanced, until the drain ended (review, session 11).
                    waitForData = true;
                }

                if (!_park.IsWatched)
                {
                    // Not watched: read only when asked (ManagedConnection.Watch.cs). The loop starts here, parked, in the
                    // constructor: nothing can wake it before the constructor returns, so no read runs on its thread.
                    if (TryPark() is { } park)
                    {
                        // The reader whose bytes were just flushed runs once the park is registered: when it asks for
                        // more, it wakes the loop on its own thread.
                        await ReaderHandOff.Then(park, TakeCaught(ref caught), this, s_onHandOffError);

                        if (_lifecycle.IsReleased || _lifecycle.Reason == CloseReason.Abort)
                        {
                            // Woken after an abort began: nothing to read (the abort counted what the kernel held).
                            return LoopExit.Aborted;
                        }

                        if (Volatile.Read(ref _watchReadDone))
                        {
                            // Resumed by the lazy watch's zero-byte read: its failure is this loop's read's failure, and
                            // after it succeeded there is data (or the FIN) to read at once.
                            _watchReadDone = false;
                            if (_watchReadFailure is { } failure)
                            {
                                _watchReadFailure = null;
                                System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(failure);
                            }

                            waitForData = false;
                            goto Read;
                        }
                    }

                    // The drain reads at once (into the shared discard buffer). The application's read goes straight into a buffer
                    // (ManagedConnectionOptions.WaitForDataBeforeAllocatingBuffer: first a zero-byte read, unless the previous
                    // read filled its buffer). A loop woken because the connection is now watched waits for data first. So
                    // does the application's read once reads have grown past 4 KiB (above).
                    // Stryker disable once Logical : equivalent in outcome: the teardown takes the input before it marks the park draining (Close, Abort), and a drain that first waits for data reads the same bytes, one recv later
                    bool drainingNow = HasIo(IoInputTaken) || _park.IsDraining;
                    waitForData = !drainingNow
                        && (!_park.ReadNow || readSize > MinimumReadSize || (waitForData && _settings.WaitForDataBeforeAllocatingBuffer));
                }

                // Reads need no token where shutdown(SHUT_RD) stops them, so a pooled operation object can do them; it is
                // rented at the first read (a connection that is never read from never takes one).
                if (s_stopDrainWithShutdown)
                {
                    _receiveArgs ??= SocketIoArgs.Rent();
                }

                if (waitForData)
                {
                    await ReaderHandOff.Then(ReceiveOnceAsync(_socket, _receiveArgs, Memory<byte>.Empty, token), TakeCaught(ref caught), this, s_onHandOffError);
                    AfterWaitForDataForTest?.Invoke(this);
                }

            Read:
                // While draining the bytes are discarded: they go to a process-wide discard buffer, not to the input's memory,
                // which a drain never advances (a larger buffer taken for the drain would be held until it ends: 64 KiB for
                // the whole DrainTimeout per connection whose peer sent a burst and then trickles; review, session 11). A
                // read that began before the teardown took the input went into the input's memory, and is not advanced
                // either.
                // The same for a loop that throws bytes away because the application completed its reader: the input's
                // memory is not advanced there either, and GetMemory may hand out the rest of a large earlier buffer.
                Memory<byte> memory = HasIo(IoInputTaken) ? DiscardBuffers.ForDrain(DrainReadSize())
                    : discard ? DiscardBuffers.ForDrain(readSize)
                    : InputReadMemory(writer, readSize);
                int received = await ReaderHandOff.Then(ReceiveOnceAsync(_socket, _receiveArgs, memory, token), TakeCaught(ref caught), this, s_onHandOffError);
                bool draining = HasIo(IoInputTaken);
                if (s_afterReadForTest is { } afterRead && received > 0 && !draining)
                {
                    afterRead(this);
                }

                waitForData = received < memory.Length && !draining;
                if (received == 0)
                {
                    if (_lifecycle.PeerResetSeen)
                    {
                        // A send consumed the reset's error first (the kernel reports it once); recv then reads as EOF.
                        return LoopExit.PeerReset;
                    }

                    if (Volatile.Read(ref _drainStop) != (int)DrainStop.None)
                    {
                        // Woken by our own shutdown(SHUT_RD): a drain bound, not the peer's FIN.
                        return LoopExit.DrainStopped;
                    }

                    OnPeerFin();
                    if (!HasIo(IoInputTaken) && (Thread.CurrentThread.IsThreadPoolThread || _settings.PreferInlineScheduling))
                    {
                        // The input ends here, and a reader waiting for it is handed over without a thread hop: the loop
                        // parks first and runs the reader once the park is registered. The loop's task completes only
                        // when the park is woken (by the teardown's drain at the latest), so a reader that closes
                        // synchronously does not wait for it. (Not while draining: the teardown is waiting for this task.)
                        caught = HandOffQueued(caught);
                        ReaderHandOff.Arm();
                        try
                        {
                            writer.Complete();
                        }
                        finally
                        {
                            caught = ReaderHandOff.Disarm();
                        }

                        inputCompleted = true;
                        if (!caught.IsEmpty && _park.TryParkAfterEnd() is { } ended)
                        {
                            await ReaderHandOff.Then(ended, TakeCaught(ref caught), this, s_onHandOffError);
                        }
                    }

                    return LoopExit.PeerFin;
                }

                if (draining)
                {
                    _drainReads++;

                    // The idle bound now counts from here; the queued deadline is moved when it comes due. Written before
                    // the count below, so whoever sees a byte counted also sees the activity it restarted.
                    Volatile.Write(ref _drainActivity, _settings.TimeProvider.GetTimestamp());

                    // Every byte after the teardown took the input counts, including those that arrive before its FIN.
                    long total = Interlocked.Add(ref _bytesDrained, received);

                    // Once the peer's FIN is known (the kernel saw it behind unread data), what is left is what the kernel
                    // already buffered: finite, so the byte budget need not cut it and turn the close into a reset.
                    if (total > _settings.MaxDrainBytes && !_lifecycle.PeerFinSeen)
                    {
                        return LoopExit.DrainLimitExceeded;
                    }
                    if (!drainMovedToPool)
                    {
                        // The drain may have begun on the closer's thread (the teardown woke the parked loop, or its
                        // discard resumed a paused flush inline): one read there, the rest on the pool, so a peer that
                        // keeps sending holds neither that thread nor the teardown's FIN and bounds, which come next.
                        drainMovedToPool = true;
                        await Task.CompletedTask.ConfigureAwait(ConfigureAwaitOptions.ForceYielding);
                    }

                    continue;
                }

                NoteIo();
                if (discard)
                {
                    // The application completed its reader: keep reading to see the FIN, but throw the bytes away.
                    continue;
                }

                if (Volatile.Read(ref _readerCompletedByTeardown))
                {
                    // A read that completed just before the teardown took the input, and a ReceiveAsync the teardown woke
                    // has completed the reader on its way out: the pipe would drop these bytes unseen. Counted here, never
                    // advanced (so never counted twice); the next reads are the drain's. (If the reader completes after
                    // this look, the pipe drops them uncounted: BytesDrained is then a lower bound, docs/reliability.md.)
                    Interlocked.Add(ref _bytesDrained, received);
                    discard = true;
                    continue;
                }

                writer.Advance(received);
                readSize = NextReadSize(readSize, received, memory.Length);

                // These bytes answer any demand the application made: one made before the flush below is answered by it (so
                // Satisfied may clear it without an atomic exchange), a later one is seen when the loop would park. A
                // demand left from a ReceiveAsync that was cancelled ends a lazy watch once, at the next read: the loop then
                // parks and is watched again at the next look (1-3 ms; a forgotten connection's FIN is that much later).
                bool asked = _park.Satisfied();

                // A reader waiting for these bytes is not resumed here: its continuation is caught and run once the next
                // read is pending (Internal/ReaderHandOff.cs).
                ValueTask<FlushResult> flushing;
                ReaderHandOff.Arm();
                try
                {
                    flushing = writer.FlushAsync();
                }
                finally
                {
                    caught = ReaderHandOff.Disarm();
                }

                FlushResult flush;
                if (flushing.IsCompleted)
                {
                    flush = flushing.Result;
                }
                else
                {
                    caught = HandOffQueued(caught);
                    // Paused: the application is not reading. A FIN behind the unread bytes is invisible to a read, but not to the kernel.
                    // While paused the connection is not idle (bytes wait for the application), whatever arrives meanwhile.
                    Volatile.Write(ref _inputPause, InputPausedState);
                    StartFinProbe();
                    flush = await flushing.ConfigureAwait(false);
                    StopFinProbe();
                    if (Interlocked.Exchange(ref _inputPause, InputRunning) == InputPausedCountedByAbort)
                    {
                        // An abort counted what the kernel held while this loop was paused: not a byte more is read.
                        return LoopExit.Aborted;
                    }

                    NoteIo();
                }

                if (flush.IsCompleted)
                {
                    discard = true;
                }
                else if (asked)
                {
                    // Bytes the application asked for, handed over: a lazily watched loop reads on demand again (it is
                    // watched again if it then stays parked). Bytes nobody asked for keep it watched (a forgotten
                    // connection must go on reading to its FIN); a watch for good (PeerClosed, Transport) stays.
                    _park.TryUnwatch();
                }
            }
        }
        catch (OperationCanceledException) when (Volatile.Read(ref _drainStop) != (int)DrainStop.None)
        {
            return LoopExit.DrainStopped;
        }
        catch (SocketException ex) when (SocketErrors.IsConnectionReset(ex.SocketErrorCode) && Volatile.Read(ref _drainStop) != (int)DrainStop.None)
        {
            // We stopped the drain with shutdown(SHUT_RD); Linux aborts a half-closed socket that then receives more
            // data (TCPAbortOnData). That reset is the bound we hit, not the peer's doing.
            return LoopExit.DrainStopped;
        }
        catch (Exception ex) when (ex is SocketException or ObjectDisposedException && _lifecycle.IsReleased)
        {
            // We released the socket under a read that may never have started: the operation object's state is not known.
            dropArgs = true;
            return LoopExit.Aborted;
        }
        catch (SocketException ex) when (SocketErrors.IsConnectionReset(ex.SocketErrorCode))
        {
            pipeError = ThrowHelper.CreatePeerReset(ex);
            OnPeerReset();
            return LoopExit.PeerReset;
        }
        catch (SocketException ex) when (SocketErrors.IsConnectionLost(ex.SocketErrorCode))
        {
            // The kernel gave up on the peer (keep-alive or retransmissions timed out, or unreachable): it ends here.
            pipeError = ThrowHelper.CreatePeerUnreachable(ex);
            OnPeerUnreachable(ex.SocketErrorCode);
            return LoopExit.PeerReset;
        }
#pragma warning disable CA1031 // Reported as a value: logged at Error, surfaced to the reader, and the connection torn down.
        catch (Exception ex)
#pragma warning restore CA1031
        {
            // Unexpected (a bug, or the application disposed the adopted socket itself): never renamed into the peer's reset.
            dropArgs = true;
            pipeError = ex;
            GetExtras().LoopFault = ex;
            Log.UnexpectedError(_settings.Logger, "receive loop", RemoteEndPoint?.ToString(), ex);
            RequestTeardown(CloseReason.Faulted);
            return LoopExit.Faulted;
        }
        finally
        {
            // A continuation still caught (the loop ended between its flush and its next read) is queued, and so is the
            // reader woken by the end of the input: locally, since this thread is about to finish with the connection.
            // Never run inline here: a reader that waited synchronously for the close would wait for this very loop.
            caught = HandOffQueued(caught);
            if (!inputCompleted)
            {
                ReaderHandOff.Arm();
                try
                {
                    // The teardown took the input from a Transport reader: the input never ends before that reader's
                    // cancelled read, whoever gets there first (the teardown's CancelPendingRead may still be on its way
                    // while this loop drained to the FIN; a clean end would make a cut-off body look complete).
                    if ((Volatile.Read(ref _io) & (IoInputTaken | IoPipe)) == (IoInputTaken | IoPipe))
                    {
                        _input.Reader.CancelPendingRead();
                    }

                    writer.Complete(pipeError);
                }
                finally
                {
                    caught = ReaderHandOff.Disarm();
                }
            }

            LetGoOfInput();
            if (_receiveArgs is { } receiveArgs)
            {
                _receiveArgs = null;
                if (dropArgs || Volatile.Read(ref _dropReceiveArgs))
                {
                    SocketIoArgs.Drop(receiveArgs);
                }
                else
                {
                    // Its last read has completed: nobody can touch it any more (the loop has ended: its park is never
                    // taken again, so the lazy watch starts no read on it either).
                    SocketIoArgs.Return(receiveArgs);
                }
            }

            HandOffQueued(caught);
            Volatile.Write(ref _receiveLoopEnded, true);
        }
    }

    private static readonly Action<object, Exception> s_onHandOffError = static (owner, ex) =>
    {
        var connection = (ManagedConnection)owner;
        Log.UnexpectedError(connection._settings.Logger, "input reader continuation", connection.RemoteEndPoint?.ToString(), ex);
    };

    /// <summary>Hands over what the loop caught (it is run or queued exactly once by whoever takes it) and forgets it.</summary>
    private static ReaderHandOff.Continuation TakeCaught(ref ReaderHandOff.Continuation caught)
    {
        ReaderHandOff.Continuation taken = caught;
        caught = default;
        return taken;
    }

    /// <summary>Queues a caught reader continuation, if there is one; returns the empty one to store back.</summary>
    private static ReaderHandOff.Continuation HandOffQueued(ReaderHandOff.Continuation caught)
    {
        if (!caught.IsEmpty)
        {
            caught.Queue();
        }

        return default;
    }

    /// <summary>One read: through the pooled operation when the loop has one, else through the socket's own (with the token).</summary>
    private static ValueTask<int> ReceiveOnceAsync(Socket socket, SocketIoArgs? args, Memory<byte> buffer, CancellationToken token) =>
        args is null ? socket.ReceiveAsync(buffer, SocketFlags.None, token) : args.ReceiveAsync(socket, buffer);

    // While the loop is paused by backpressure, how often the kernel is asked whether the peer's FIN has arrived.
    private static readonly TimeSpan s_finProbePeriod = TimeSpan.FromMilliseconds(250);

    private void StartFinProbe()
    {
        if (!OperatingSystem.IsLinux() || _lifecycle.PeerFinSeen)
        {
            return;
        }

        Extras extras = GetExtras();
        ITimer? timer = extras.FinProbe;
        if (timer is null)
        {
            // The loop may be running on the application's thread (woken by its read): the timer must not capture the
            // application's execution context (its AsyncLocals would live as long as the connection).
            bool suppress = !ExecutionContext.IsFlowSuppressed();
            AsyncFlowControl flow = suppress ? ExecutionContext.SuppressFlow() : default;
            try
            {
                extras.FinProbe = _settings.TimeProvider.CreateTimer(static s => ((ManagedConnection)s!).ProbeForFin(), this, s_finProbePeriod, s_finProbePeriod);
            }
            finally
            {
                if (suppress)
                {
                    flow.Undo();
                }
            }
        }
        else
        {
            timer.Change(s_finProbePeriod, s_finProbePeriod);
        }
    }

    private void StopFinProbe() => Volatile.Read(ref _extras)?.FinProbe?.Change(Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan);

    private void ProbeForFin()
    {
        if (_lifecycle.PeerFinSeen || _lifecycle.IsTearingDown)
        {
            StopFinProbe();
            return;
        }

        if (TcpConnectionInfo.Read(_socket).PeerHasClosed)
        {
            StopFinProbe();
            OnPeerFin();
        }
    }

    /// <summary>The peer's FIN: the CLOSE_WAIT guard is armed before anyone hears of it, so code that reacts to PeerClosed finds it in place.</summary>
    private void OnPeerFin()
    {
        if (!_lifecycle.OnPeerFin())
        {
            return;
        }

        long now = _settings.TimeProvider.GetTimestamp();
        Volatile.Write(ref _peerFinTimestamp, now);
        Volatile.Write(ref _lastActivity, now);
        StartCloseWaitGuard(now);
        FirePeerClosed();
    }

    /// <summary>The peer's reset, seen by the loop, a send, a half-close or the kernel view: the connection is torn down
    /// at once (nothing can be sent or drained any more).</summary>
    private void OnPeerReset()
    {
        if (!_lifecycle.OnPeerReset())
        {
            return;
        }

        Volatile.Write(ref _peerFinTimestamp, _settings.TimeProvider.GetTimestamp());
        RequestTeardown(CloseReason.PeerReset);
        FirePeerClosed();
    }

    /// <summary>The kernel gave up on the peer (seen by the loop or a send): the connection ends at once, as after a
    /// reset, with its own reason; nothing waits for the application.</summary>
    private void OnPeerUnreachable(SocketError error)
    {
        // Latched before anything else: a teardown already running records PeerUnreachable, and a send that fails next
        // (EPIPE once the kernel has given up) reports it, not a reset.
        Volatile.Write(ref _peerUnreachable, true);
        bool first = _lifecycle.TryBeginTeardown(CloseReason.PeerUnreachable);
        if (!_lifecycle.OnPeerReset() && !first)
        {
            return;
        }

        Volatile.Write(ref _peerFinTimestamp, _settings.TimeProvider.GetTimestamp());
        Log.PeerUnreachable(_settings.Logger, RemoteEndPoint?.ToString(), error);
        if (first)
        {
            RunDetached(TeardownAsync(CancellationToken.None));
        }

        FirePeerClosed();
    }

    private CancellationTokenSource CreatePeerClosedSource()
    {
        var created = new CancellationTokenSource();
        CancellationTokenSource? existing = Interlocked.CompareExchange(ref GetExtras().PeerClosedCts, created, null);
        if (existing is not null)
        {
            created.Dispose();
            return existing;
        }

        // Whoever asks for PeerClosed wants the peer's FIN seen at once: a read is pending from now on.
        Watch();

        // FirePeerClosed may have run before we published the source.
        if (HasIo(IoPeerClosedFired) || _lifecycle.IsReleased)
        {
            created.Cancel();
        }

        return created;
    }

    private void FirePeerClosed()
    {
        TrySetIo(IoPeerClosedFired);
        CancellationTokenSource? cts = Volatile.Read(ref _extras)?.PeerClosedCts;
        if (cts is not null && !cts.IsCancellationRequested)
        {
            // Application callbacks must not run on the receive loop or the deadline thread: a work item of their own.
            // Queued locally: from the receive loop (a pool thread about to finish with this connection) the same
            // thread runs it next without waking another (measured: p50 -15%, p99 lower in 4 of 5 runs); idle workers
            // still steal it. From a thread outside the pool it goes to the global queue anyway.
            ThreadPool.UnsafeQueueUserWorkItem(static s => s.CancelPeerClosed(), this, preferLocal: true);
        }
    }

    private void CancelPeerClosed()
    {
        try
        {
            _extras!.PeerClosedCts!.Cancel();
        }
#pragma warning disable CA1031 // A throwing user callback must not crash the process from a pool thread: it is logged.
        catch (Exception ex)
#pragma warning restore CA1031
        {
            Log.UnexpectedError(_settings.Logger, "PeerClosed callback", RemoteEndPoint?.ToString(), ex);
        }
    }
}
