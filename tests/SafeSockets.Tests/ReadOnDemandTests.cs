using System.Collections.Concurrent;
using System.Diagnostics;
using System.IO.Pipelines;
using System.Net.Sockets;
using SafeSockets.Diagnostics;
using SafeSockets.Internal;
using SafeSockets.Tests.Infrastructure;

namespace SafeSockets.Tests;

/// <summary>The receive loop reads when the application asks, or always once the connection is watched
/// (ManagedConnection.Watch.cs, Internal/LoopPark.cs): the bytes, their order, the peer's FIN and the CLOSE_WAIT guard
/// must not depend on which of the two read them.</summary>
[Collection(ExclusiveTests.Name)] // several megabytes through loopback: alone, so that other tests' timing bounds are not starved
public sealed class ReadOnDemandTests
{
    [Fact]
    public async Task ConnectionReadOnceThenForgotten_PeerFinIsStillSeen_AndTheGuardClosesIt()
    {
        // The application reads the request and then never reads, never asks for PeerClosed, never closes: only the lazy
        // watch can see the peer's FIN (the loop parked after the read).
        var options = new ManagedConnectionOptions { CloseWaitTimeout = TimeSpan.FromMilliseconds(200) };
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync(options);
        using (peer)
        {
            await Peer.SendPatternAsync(peer, 100);
            byte[] buffer = new byte[100];
            for (int read = 0; read < 100;)
            {
                read += await connection.ReceiveAsync(buffer.AsMemory(read)).AsTask().WithTimeout();
            }

            Assert.Equal(Peer.Pattern(100), buffer);
            peer.Shutdown(SocketShutdown.Send);

            await Peer.ExpectTheGuardsCloseAsync(peer, connection);
        }
    }

    [Fact]
    public async Task KeepAliveConnection_PausingBetweenRequests_ReadsOnDemandAgainAfterEachPause_AndStillSeesAFinWhileIdle()
    {
        // A connection whose application pauses between requests (a keep-alive client's think time) is watched lazily
        // during each pause; once the loop hands the next request over it reads on demand again (it used to stay
        // watched for good, and every later request paid the always-pending read). The peer's FIN during a later pause
        // is still seen with nobody reading.
        var options = new ManagedConnectionOptions { CloseWaitTimeout = TimeSpan.FromMilliseconds(200) };
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync(options);
        using (peer)
        {
            byte[] buffer = new byte[64];
            for (int request = 0; request < 3; request++)
            {
                // The pause: the lazy watch watches the parked loop within a few milliseconds.
                await TestTimeouts.WaitUntilAsync(() => connection.IsWatchedForTest, "the idle connection is watched");
                int parks = connection.LoopParksForTest;
                ValueTask<int> receiving = connection.ReceiveAsync(buffer);
                await Peer.SendPatternAsync(peer, 64);
                int n = await receiving.AsTask().WithTimeout();
                Assert.Equal(Peer.Pattern(64).AsSpan(0, n).ToArray(), buffer.AsSpan(0, n).ToArray());
                // A watched loop never parks; this one parks again (and may be watched again if the pause goes on).
                await TestTimeouts.WaitUntilAsync(() => connection.LoopParksForTest > parks, "the loop parks (reads on demand) again after handing the request over");
                while (n < 64)
                {
                    n += await connection.ReceiveAsync(buffer.AsMemory(n)).AsTask().WithTimeout();
                }

                await connection.SendAsync(buffer).AsTask().WithTimeout();
                byte[] answer = new byte[64];
                for (int got = 0; got < 64;)
                {
                    got += await peer.ReceiveAsync(answer.AsMemory(got)).AsTask().WithTimeout();
                }
            }

            // A FIN during the next pause, nobody reading: the lazy watch watches the loop again, it reads the FIN, and the
            // guard closes the forgotten connection.
            peer.Shutdown(SocketShutdown.Send);
            await Peer.ExpectTheGuardsCloseAsync(peer, connection);
        }
    }

    [Fact]
    public async Task ForgottenConnection_PeerSendsABurstThenFin_TheLoopStaysWatched_UntilItSeesTheFin()
    {
        // Nobody reads: once watched, the loop must keep reading what the peer sends (into the input, up to its limit) and
        // see the FIN behind it. Found by review: the loop stopped being watched after every read it handed over, parked
        // and waited 1-4 ms for the lazy watch each time (14 parks, the FIN seen 35 ms late, for 512 KiB).
        var options = new ManagedConnectionOptions { MaxInputBufferSize = 1024 * 1024, CloseWaitTimeout = TimeSpan.FromSeconds(10) };
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync(options);
        using (peer)
        await using (connection)
        {
            await TestTimeouts.WaitUntilAsync(() => connection.IsWatchedForTest, "the idle connection is watched");
            int parks = connection.LoopParksForTest;
            await Peer.SendPatternAsync(peer, 512 * 1024).WithTimeout();
            peer.Shutdown(SocketShutdown.Send);
            await TestTimeouts.WaitUntilAsync(() => connection.State == ConnectionState.PeerShutdown, "the FIN is seen");
            Assert.Equal(parks, connection.LoopParksForTest);
            Assert.True(connection.IsWatchedForTest);
        }
    }

    [Fact]
    public async Task PeerClosedAskedWhileLazilyWatched_StaysWatchedForGood_AfterHandOvers()
    {
        // PeerClosed asked while the loop is lazily watched: its watch for good survives the hand-overs that end a lazy one.
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync();
        using (peer)
        await using (connection)
        {
            await TestTimeouts.WaitUntilAsync(() => connection.IsWatchedForTest, "the idle connection is watched lazily");
            CancellationToken peerClosed = connection.PeerClosed;
            int parks = connection.LoopParksForTest;
            byte[] buffer = new byte[64];
            for (int i = 0; i < 3; i++)
            {
                ValueTask<int> receiving = connection.ReceiveAsync(buffer);
                await Peer.SendPatternAsync(peer, 10);
                Assert.Equal(10, await receiving.AsTask().WithTimeout());
            }

            Assert.True(connection.IsWatchedForTest, "PeerClosed's watch was lost after a hand-over");
            Assert.Equal(parks, connection.LoopParksForTest);
            peer.Shutdown(SocketShutdown.Send);
            await peerClosed.WhenCanceled().WithTimeout();
        }
    }

    [Fact]
    public async Task PeerFinArrivesWhileTheApplicationWorks_TheNextReadReturnsZero_AndStateIsPeerShutdown()
    {
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync();
        await using (connection)
        using (peer)
        {
            await Peer.SendPatternAsync(peer, 10);
            byte[] buffer = new byte[10];
            Assert.Equal(10, await connection.ReceiveAsync(buffer).AsTask().WithTimeout());

            // FIN while the application is not reading; whoever sees it first (the lazy watch, or the next read), the
            // next read returns 0 and the state follows.
            peer.Shutdown(SocketShutdown.Send);
            Assert.Equal(0, await connection.ReceiveAsync(buffer).AsTask().WithTimeout());
            Assert.Equal(ConnectionState.PeerShutdown, connection.State);
            Assert.True(connection.PeerClosed.IsCancellationRequested);
            Assert.Equal(0, await connection.ReceiveAsync(buffer).AsTask().WithTimeout());
        }
    }

    [Theory]
    [InlineData(false, false)]
    [InlineData(true, false)]
    [InlineData(false, true)]
    public async Task ManyExchanges_PeerSendingBeforeOrAfterTheRead_EveryByteArrivesInOrder(bool watched, bool waitForData)
    {
        var options = new ManagedConnectionOptions { WaitForDataBeforeAllocatingBuffer = waitForData };
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync(options);
        await using (connection)
        using (peer)
        {
            if (watched)
            {
                // Asking for PeerClosed makes the loop keep a read pending at all times: the same exchanges through it.
                _ = connection.PeerClosed;
            }

            var random = new Random(1234);
            byte[] buffer = new byte[70_000];
            for (int exchange = 0; exchange < 300; exchange++)
            {
                int size = exchange % 10 == 0 ? random.Next(1, 200_000) : random.Next(1, 300);
                byte[] sent = new byte[size];
                random.NextBytes(sent);
                int chunk = random.Next(1, buffer.Length + 1);
                Task sending;
                if (exchange % 2 == 0)
                {
                    // The bytes are (at least partly) in the kernel before the application asks.
                    sending = peer.SendAsync(sent, SocketFlags.None);
                    await Task.Yield();
                }
                else
                {
                    sending = Task.Run(async () =>
                    {
                        await Task.Yield();
                        await peer.SendAsync(sent, SocketFlags.None);
                    });
                }

                using var received = new MemoryStream();
                while (received.Length < size)
                {
                    int n = await connection.ReceiveAsync(buffer.AsMemory(0, (int)Math.Min(chunk, size - received.Length))).AsTask().WithTimeout();
                    Assert.True(n > 0, $"exchange {exchange}: FIN after {received.Length} of {size} bytes");
                    received.Write(buffer, 0, n);
                }

                await sending.WithTimeout();
                Assert.True(sent.AsSpan().SequenceEqual(received.ToArray()), $"exchange {exchange}: the bytes differ");

                // And the answer goes the other way, as in a request/response protocol.
                await connection.SendAsync(sent.AsMemory(0, Math.Min(size, 64))).AsTask().WithTimeout();
                int answered = 0;
                while (answered < Math.Min(size, 64))
                {
                    answered += await peer.ReceiveAsync(buffer.AsMemory(0, Math.Min(size, 64) - answered), SocketFlags.None).WithTimeout();
                }
            }

            peer.Shutdown(SocketShutdown.Send);
            Assert.Equal(0, await connection.ReceiveAsync(buffer).AsTask().WithTimeout());
            Assert.Equal(CloseOutcome.Graceful, (await connection.CloseAsync().WithTimeout()).Outcome);
        }
    }

    [Fact]
    public async Task AbortOfAConnectionNobodyRead_EndsItsLoop_AndTheLeaseOfItsInputIsGivenBack()
    {
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync();
        using (peer)
        {
            // Never read: its loop is parked (it would be watched only after the lazy watch's period).
            connection.Abort();
            Assert.Equal(CloseOutcome.Aborted, (await connection.Completion.WithTimeout()).Outcome);
            await TestTimeouts.WaitUntilAsync(() => connection.ReceiveLoopEnded, "the parked loop ends after the abort");
            Assert.Equal(PeerEnd.Reset, (await Peer.ReadToEndAsync(peer).WithTimeout()).End);
        }
    }

    [Fact]
    public async Task CloseOfAConnectionNobodyRead_DrainsAndEndsGracefully()
    {
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync();
        using (peer)
        {
            // Unread bytes in the kernel when the close begins: the woken loop drains them (no reset) and counts them.
            await Peer.SendPatternAsync(peer, 3000);
            Task<CloseResult> close = connection.CloseAsync().AsTask();
            PeerReadResult seen = await Peer.ReadToEndAsync(peer).WithTimeout();
            Assert.Equal(PeerEnd.Fin, seen.End);
            peer.Shutdown(SocketShutdown.Send);
            CloseResult result = await close.WithTimeout();
            Assert.Equal(CloseOutcome.Graceful, result.Outcome);
            Assert.Equal(3000, result.BytesDrained);
            Assert.True(connection.ReceiveLoopEnded);
        }
    }

    private static readonly AsyncLocal<string?> s_request = new();

    [Fact]
    public async Task ApplicationAsyncLocal_DoesNotFollowTheReceiveLoop_ItWokeOnItsThread()
    {
        // Found by review: the loop woken on the application's thread ran, and then stayed, in the application's
        // execution context (its state machine captures the current one at each await).
        var clock = new RecordingClock("OnPeerFin", "ReceiveLoopAsync");
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync(new ManagedConnectionOptions { TimeProvider = clock });
        await using (connection)
        using (peer)
        {
            // "Request 1" asks for bytes on a thread of its own; nothing is there, so its demand wakes the parked loop on
            // that thread and the loop's read is issued there.
            Task<int>? receive = null;
            var thread = new Thread(() =>
            {
                s_request.Value = "request-1";
                receive = connection.ReceiveAsync(new byte[16]).AsTask();
            });
            thread.Start();
            thread.Join();

            // Later, on a socket thread, the loop sees the peer's FIN: it belongs to no caller.
            peer.Shutdown(SocketShutdown.Send);
            Assert.Equal(0, await receive!.WithTimeout());
            await TestTimeouts.WaitUntilAsync(() => !clock.Seen.IsEmpty, "OnPeerFin ran");
            Assert.Equal(["<none>"], clock.Seen.Select(s => s.Request).Distinct());
        }
    }

    [Fact]
    public async Task Abort_BytesTheKernelHoldsUnread_CountInBytesDrained()
    {
        // Found by review: with the loop parked, bytes wait in the kernel; the abort's reset discarded them uncounted.
        const int Unread = 1000;
        for (int attempt = 1; ; attempt++)
        {
            (Socket client, Socket server) = await Loopback.CreatePairAsync();
            using (client)
            {
                // The loop must stay parked (else the lazy watch reads the bytes into the input within 2 ms, a case the
                // input's discard counts). It may have been watched in the instant before this call: then try again.
                ManagedConnection connection = ManagedConnection.Adopt(server);
                connection.KeepParkedForTest();
                Assert.Equal(Unread, client.Send(Peer.Pattern(Unread)));
                await TestTimeouts.WaitUntilAsync(() => Available(connection) is Unread or 0, "the bytes reached our kernel or the loop");
                if (Available(connection) != Unread && attempt < 5)
                {
                    connection.Abort();
                    continue;
                }

                connection.Abort();
                CloseResult result = await connection.Completion.WithTimeout();
                Assert.Equal(CloseOutcome.Aborted, result.Outcome);
                Assert.Equal(Unread, result.BytesDrained);
                return;
            }
        }
    }

    [Fact]
    public async Task Abort_OfALoopPausedBehindAFullInput_CountsEveryUnreadByteOnce()
    {
        // Found by mutation testing (P177/P185 had no test that could fail): the abort woke the paused loop, which then
        // read on the aborting thread and on the pool while the abort released the socket, so BytesDrained counted only
        // what those reads took first (12-48 KiB of 48 KiB). The abort now counts what the kernel holds while the loop
        // is still paused, and the loop, woken, reads no more.
        const int Sent = 48 * 1024;
        var options = new ManagedConnectionOptions { MaxInputBufferSize = 4096 };
        for (int i = 0; i < 10; i++)
        {
            (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync(options);
            using (peer)
            {
                _ = connection.PeerClosed; // watched: the loop reads what arrives until the input is full, then pauses
                await Peer.SendPatternAsync(peer, Sent);
                await TestTimeouts.WaitUntilAsync(
                    () => LazyWatchProbe.InputPaused(connection) && TcpConnectionInfo.Read(peer).UnackedSegments == 0,
                    "the loop paused behind unread bytes, every byte in our kernel or the input");

                connection.Abort();
                CloseResult result = await connection.Completion.WithTimeout();
                Assert.Equal(CloseOutcome.Aborted, result.Outcome);
                Assert.Equal(Sent, result.BytesDrained);
            }
        }
    }

    [Fact]
    public async Task Abort_OfAPausedLoop_TheTransportReaderGetsACancelledReadBeforeTheInputEnds()
    {
        // Found by review of the fix above: the abort took the paused loop's pause before it took the input, and the
        // application's AdvanceTo in between ended the pause; the loop, finding its pause taken, completed the input with
        // no error, so the application's next read saw a clean end of input (a cut-off body looks complete) instead of
        // the cancelled read Transport promises. The hook runs right after the abort took the pause.
        var options = new ManagedConnectionOptions { MaxInputBufferSize = 4096 };
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync(options);
        using (peer)
        {
            PipeReader input = connection.Transport.Input;
            await Peer.SendPatternAsync(peer, 48 * 1024);
            ReadResult first = await input.ReadAsync().AsTask().WithTimeout();
            await TestTimeouts.WaitUntilAsync(() => LazyWatchProbe.InputPaused(connection), "the loop paused behind unread bytes");

            ReadResult? inTheWindow = null;
            int calls = 0;
            void ReadInTheWindow(ManagedConnection aborting)
            {
                if (!ReferenceEquals(aborting, connection) || calls++ > 0)
                {
                    return;
                }

                input.AdvanceTo(first.Buffer.End); // ends the pause: the loop resumes here, inline
                Assert.True(input.TryRead(out ReadResult next), "the application's read found nothing to return");
                inTheWindow = next;
                input.AdvanceTo(next.Buffer.Start);
            }

            ManagedConnection.AfterAbortTookPauseForTest = ReadInTheWindow;
            try
            {
                connection.Abort();
            }
            finally
            {
                ManagedConnection.AfterAbortTookPauseForTest = null;
            }

            Assert.Equal(1, calls);
            Assert.True(inTheWindow!.Value.IsCanceled, "the application saw the end of its input before a cancelled read");
            Assert.Equal(CloseOutcome.Aborted, (await connection.Completion.WithTimeout()).Outcome);
        }
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task CloseOrAbort_ALoopThatDrainsToTheFinBeforeTheReaderIsWoken_TheTransportReaderStillGetsACancelledRead(bool abort)
    {
        // Found by review: between the teardown taking the input and its CancelPendingRead, a running loop (its pause just
        // ended by the application's AdvanceTo) drained the rest to the peer's FIN and completed the input with no error:
        // the application's next read saw a clean end after 4 KiB of 48 KiB, a cut-off body looking complete. The loop
        // now cancels the Transport reader's pending read itself before it completes an input the teardown took.
        var options = new ManagedConnectionOptions { MaxInputBufferSize = 4096 };
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync(options);
        using (peer)
        {
            PipeReader input = connection.Transport.Input;
            await Peer.SendPatternAsync(peer, 48 * 1024);
            peer.Shutdown(SocketShutdown.Send);
            ReadResult first = await input.ReadAsync().AsTask().WithTimeout();
            await TestTimeouts.WaitUntilAsync(() => LazyWatchProbe.InputPaused(connection), "the loop paused behind unread bytes");

            ReadResult? inTheWindow = null;
            bool loopEnded = false;
            void ReadInTheWindow(ManagedConnection closing)
            {
                if (!ReferenceEquals(closing, connection) || inTheWindow is not null)
                {
                    return;
                }

                // The application ends the pause on its own thread; the loop runs there (the pipe resumes it inline),
                // drains to the FIN and ends, all before the closer's thread goes on.
                Assert.True(Task.Run(() => input.AdvanceTo(first.Buffer.End)).Wait(TestTimeouts.Passing), "AdvanceTo did not return");
                loopEnded = SpinWait.SpinUntil(() => connection.ReceiveLoopEnded, TestTimeouts.Passing);
                Assert.True(input.TryRead(out ReadResult next), "the application's read found nothing to return");
                inTheWindow = next;
                input.AdvanceTo(next.Buffer.End);
            }

            ManagedConnection.AfterInputTakenForTest = ReadInTheWindow;
            CloseResult result;
            try
            {
                if (abort)
                {
                    connection.Abort();
                    result = await connection.Completion.WithTimeout();
                }
                else
                {
                    result = await connection.CloseAsync().AsTask().WithTimeout();
                }
            }
            finally
            {
                ManagedConnection.AfterInputTakenForTest = null;
            }

            Assert.True(loopEnded, "the loop did not drain to the FIN in the window");
            Assert.True(inTheWindow!.Value.IsCanceled, "the application saw the end of its input before a cancelled read");
            Assert.Equal(abort ? CloseOutcome.Aborted : CloseOutcome.Graceful, result.Outcome);
        }
    }

    [Fact]
    public async Task Close_WhileAReceiveWaits_AndTheLoopHoldsAReadNotYetFlushed_CountsThatReadInBytesDrained()
    {
        // Found by review: the loop's read completed before the close took the input (so it was not a drain read); the
        // close woke the waiting ReceiveAsync, which completed the reader on its way out; the loop's Advance of those
        // bytes was then ignored by the pipe and they were counted nowhere (BytesDrained 45,056 of 49,152).
        const int Sent = 48 * 1024;
        var options = new ManagedConnectionOptions { MaxInputBufferSize = 4096 };
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync(options);
        using (peer)
        {
            // The receive wakes the parked loop on this thread: its read is pending, and so is the receive, when it returns.
            byte[] buffer = new byte[1024];
            Task<int> receiving = connection.ReceiveAsync(buffer).AsTask();
            Assert.False(receiving.IsCompleted);

            using var inTheWindow = new ManualResetEventSlim();
            using var release = new ManualResetEventSlim();
            int calls = 0;
            ManagedConnection.AfterReadForTest = read =>
            {
                if (ReferenceEquals(read, connection) && Interlocked.Increment(ref calls) == 1)
                {
                    inTheWindow.Set();
                    Assert.True(release.Wait(TestTimeouts.Passing), "the test never let the loop go on");
                }
            };
            try
            {
                await Peer.SendPatternAsync(peer, Sent);
                peer.Shutdown(SocketShutdown.Send);
                Assert.True(inTheWindow.Wait(TestTimeouts.Passing), "the loop's read got no bytes");

                ValueTask<CloseResult> closing = connection.CloseAsync();
                await Assert.ThrowsAsync<ObjectDisposedException>(() => receiving.WithTimeout());
                release.Set();
                CloseResult result = await closing.AsTask().WithTimeout();
                Assert.Equal(CloseOutcome.Graceful, result.Outcome);
                Assert.Equal(Sent, result.BytesDrained);
            }
            finally
            {
                ManagedConnection.AfterReadForTest = null;
                release.Set();
            }
        }
    }

    [Fact]
    public async Task Close_WithMuchUnreadInTheKernel_TheClosersThreadDrainsAtMostOneRead()
    {
        // Found by review: the teardown woke the parked loop on the closer's thread, which then drained there for as long
        // as reads found bytes, before the flush, our FIN and the drain bound. (By the time the kernel holds this much the
        // lazy watch has watched the loop, whose read is pending on the pool: the close wakes nothing on its thread here.
        // The test below keeps the loop parked, or paused, so that the close does.)
        var clock = new RecordingClock("ReceiveLoopAsync");
        var options = new ManagedConnectionOptions { TimeProvider = clock, MaxDrainBytes = 64L << 20 };
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync(options);
        using (peer)
        {
            // Nobody reads: the kernel fills up (the peer's blocking sends go on as the drain makes room).
            const int Total = 4 << 20;
            Task sending = SendThenFinAsync(peer, Total);
            await TestTimeouts.WaitUntilAsync(() => Available(connection) > 32 * 1024, "the kernel holds much unread");
            clock.Seen.Clear();

            (int closerThread, CloseResult result) = await CloseOnAThreadOfItsOwnAsync(connection, sending);
            Assert.Equal(CloseOutcome.Graceful, result.Outcome);
            Assert.Equal(Total, result.BytesDrained);
            int onCloser = clock.Seen.Count(s => s.Thread == closerThread);
            Assert.True(onCloser <= 1, $"{onCloser} drained reads ran on the closer's thread");
        }
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Close_WakingTheLoopOnTheClosersThread_ItDrainsExactlyOneReadThere_TheRestOnThePool(bool pausedBehindAFullInput)
    {
        // Found by mutation testing (R218, R331 at ea86270: the drain never moved to the pool): the test above lets the
        // lazy watch watch its loop, whose read is then pending on the pool when the close comes, so the closer's thread
        // drains nothing with or without the move. Here the close itself wakes the loop on its thread: a loop kept parked
        // (never watched) is woken by the teardown's Drain, a loop paused behind a full input is resumed inline by its
        // CancelPendingFlush (the input's writer scheduler is inline). Either way the kernel holds much, so every read
        // completes at once: the loop must do its first read there and go on on the pool; kept on the closer's thread,
        // it reads on there until the kernel is empty, holding the close (its FIN and its bounds) for as long as the peer
        // keeps sending.
        var clock = new RecordingClock("ReceiveLoopAsync");
        var options = new ManagedConnectionOptions { TimeProvider = clock, MaxDrainBytes = 64L << 20 };
        Socket peer;
        ManagedConnection connection;
        if (pausedBehindAFullInput)
        {
            options.MaxInputBufferSize = 4096;
            (peer, connection) = await Loopback.CreateManagedServerAsync(options);
            _ = connection.PeerClosed; // watched for good: the loop reads what arrives until the input is full, then pauses
        }
        else
        {
            (peer, connection) = await LazyWatchProbe.CreateKeptParkedServerAsync(options);
        }

        using (peer)
        {
            // Nobody reads: the kernel fills up (the peer's blocking sends go on as the drain makes room).
            const int Total = 4 << 20;
            Task sending = SendThenFinAsync(peer, Total);
            await TestTimeouts.WaitUntilAsync(
                () => Available(connection) > 32 * 1024 && (!pausedBehindAFullInput || LazyWatchProbe.InputPaused(connection)),
                "the kernel holds much unread, behind a loop parked or paused");
            if (!pausedBehindAFullInput)
            {
                LoopPark park = LazyWatchProbe.Park(connection);
                Assert.True(park.IsParked && !park.IsWatched, "the kept-parked loop was woken or watched before the close");
            }

            clock.Seen.Clear();

            (int closerThread, CloseResult result) = await CloseOnAThreadOfItsOwnAsync(connection, sending);
            Assert.Equal(CloseOutcome.Graceful, result.Outcome);
            Assert.Equal(Total, result.BytesDrained);

            // One clock read per drained read (the drain's activity); the loop reads the clock nowhere else here (no idle
            // bound: NoteIo reads none).
            Assert.Equal(1, clock.Seen.Count(s => s.Thread == closerThread));
        }
    }

    [Fact]
    public async Task LoopTheWatchLeavesParked_TheApplicationsReceiveWakesIt_BytesInTheKernelArriveSynchronously()
    {
        // Without the lazy watch only the application's demand wakes the loop: a lost demand would be a receive that never
        // ends (with the watch, one that ends 2 ms late). Bytes already in the kernel are read on the caller's thread.
        (Socket peer, ManagedConnection connection) = await LazyWatchProbe.CreateKeptParkedServerAsync();
        await using (connection)
        using (peer)
        {
            Assert.Equal(100, peer.Send(Peer.Pattern(100)));
            await TestTimeouts.WaitUntilAsync(() => Available(connection) == 100, "the bytes reached our kernel");

            byte[] buffer = new byte[100];
            ValueTask<int> receive = connection.ReceiveAsync(buffer);
            Assert.True(receive.IsCompleted, "the receive did not complete on the caller's thread");
            Assert.Equal(100, await receive);
            Assert.Equal(Peer.Pattern(100), buffer);

            // Nothing in the kernel: the demand leaves a read pending, which the next bytes complete.
            Task<int> next = connection.ReceiveAsync(buffer).AsTask();
            Assert.Equal(10, peer.Send(Peer.Pattern(10)));
            Assert.Equal(10, await next.WithTimeout());
            Assert.Equal(Peer.Pattern(10), buffer[..10]);
        }
    }

    [Fact]
    public async Task LoopTheWatchLeavesParked_ParksAgainOnceTheBytesAnswerTheReceive()
    {
        // The demand is answered by the bytes read for it: the loop goes back to its park, with no read pending (a loop
        // that kept reading would be the first edition's cost again, benchmarks/README.md, "Hot path").
        (Socket peer, ManagedConnection connection) = await LazyWatchProbe.CreateKeptParkedServerAsync();
        await using (connection)
        using (peer)
        {
            for (int exchange = 0; exchange < 3; exchange++)
            {
                Task<int> receive = connection.ReceiveAsync(new byte[10]).AsTask();
                Assert.Equal(10, peer.Send(Peer.Pattern(10)));
                Assert.Equal(10, await receive.WithTimeout());
                await TestTimeouts.WaitUntilAsync(() => LazyWatchProbe.Park(connection).IsParked, "the loop parks again");
            }

            Assert.False(LazyWatchProbe.Park(connection).IsWatched);
        }
    }

    [Fact]
    public async Task LoopTheWatchLeavesParked_AskingForPeerClosedWakesIt_AndThePeersFinFiresIt()
    {
        // Whoever asks for PeerClosed wants the FIN seen at once: asking must wake the parked loop itself, not leave it to
        // the lazy watch.
        (Socket peer, ManagedConnection connection) = await LazyWatchProbe.CreateKeptParkedServerAsync();
        await using (connection)
        using (peer)
        {
            CancellationToken peerClosed = connection.PeerClosed;
            peer.Shutdown(SocketShutdown.Send);
            await peerClosed.WhenCanceled().WithTimeout();
            Assert.Equal(ConnectionState.PeerShutdown, connection.State);
        }
    }

    [Fact]
    public async Task Abort_OfAWatchedConnection_BytesInTheInputTheApplicationNeverRead_CountInBytesDrained()
    {
        // The loop read 1000 bytes for a receive that took 100, and has its next read pending (the connection is
        // watched): the 900 left in the input are discarded by the abort and counted before its result is recorded. (The
        // loop, which ends when the released socket fails its read, would count them too late.)
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync();
        using (peer)
        {
            _ = connection.PeerClosed;
            Assert.Equal(1000, peer.Send(Peer.Pattern(1000)));
            byte[] buffer = new byte[100];
            Assert.Equal(100, await connection.ReceiveAsync(buffer).AsTask().WithTimeout());
            Assert.Equal(Peer.Pattern(100), buffer);

            connection.Abort();
            CloseResult result = await connection.Completion.WithTimeout();
            Assert.Equal(CloseOutcome.Aborted, result.Outcome);
            Assert.Equal(900, result.BytesDrained);
        }
    }

    /// <summary>Calls CloseAsync on a thread of its own, which stays alive until the close and <paramref name="alsoWaitFor"/>
    /// have ended (so no other thread can take its managed thread id); returns that id and the result.</summary>
    private static async Task<(int CloserThread, CloseResult Result)> CloseOnAThreadOfItsOwnAsync(ManagedConnection connection, Task alsoWaitFor)
    {
        int closerThread = 0;
        Task<CloseResult>? close = null;
        using var called = new ManualResetEventSlim();
        using var done = new ManualResetEventSlim();
        var closer = new Thread(() =>
        {
            closerThread = Environment.CurrentManagedThreadId;
            close = connection.CloseAsync().AsTask();
            called.Set();
            done.Wait(TestTimeouts.Passing);
        });
        closer.Start();
        Assert.True(called.Wait(TestTimeouts.Passing), "CloseAsync did not return");
        try
        {
            await alsoWaitFor.WithTimeout();
            return (closerThread, await close!.WithTimeout());
        }
        finally
        {
            done.Set();
            closer.Join();
        }
    }

    /// <summary>The peer sends <paramref name="total"/> bytes in blocking 64 KiB sends (they go on as the drain makes room),
    /// then its FIN, on a pool thread.</summary>
    private static Task SendThenFinAsync(Socket peer, int total) => Task.Run(() =>
    {
        byte[] chunk = new byte[64 * 1024];
        for (int sent = 0; sent < total; sent += chunk.Length)
        {
            peer.Send(chunk);
        }

        peer.Shutdown(SocketShutdown.Send);
    });

    private static int Available(ManagedConnection connection)
    {
        try
        {
            return connection.Socket.Available;
        }
        catch (ObjectDisposedException)
        {
            return 0;
        }
    }

    /// <summary>Records the AsyncLocal request seen by every clock read made from one of <paramref name="methods"/> (a
    /// frame of that name, or of a type whose name contains it: an async method's state machine). Give the caller too:
    /// a tier-1 JIT may inline a small method into it, and its own frame is then gone (a flake seen in CI: OnPeerFin
    /// inlined into the receive loop, 40 s into the suite).</summary>
    private sealed class RecordingClock(params string[] methods) : TimeProvider
    {
        public ConcurrentQueue<(int Thread, string Request)> Seen { get; } = new();

        public override long GetTimestamp()
        {
            if (new StackTrace().GetFrames().Any(f => f.GetMethod() is { } m
                && methods.Any(method => m.Name == method || (m.DeclaringType?.Name.Contains(method, StringComparison.Ordinal) ?? false))))
            {
                Seen.Enqueue((Environment.CurrentManagedThreadId, s_request.Value ?? "<none>"));
            }

            return base.GetTimestamp();
        }
    }
}
