using System.Diagnostics;
using System.Net.Sockets;
using SafeSockets.Internal;
using SafeSockets.Tests.Infrastructure;

namespace SafeSockets.Tests;

/// <summary>The lazy watch (ManagedConnection.Watch.cs): a connection whose loop stays parked, because nobody reads it,
/// is watched within milliseconds, so the peer's FIN is seen and the CLOSE_WAIT guard armed. These tests take the watch
/// through the states where it could lose a connection: its thread asleep, and a connection it dropped from its list.</summary>
[Collection(ExclusiveTests.Name)] // the watch's thread is one per process: only an idle process lets it sleep
public sealed class LazyWatchTests
{
    private static readonly ManagedConnectionOptions s_shortGuard = new() { CloseWaitTimeout = TimeSpan.FromMilliseconds(200) };

    [Fact]
    public async Task WatchThreadAsleep_AForgottenConnectionWakesIt_AndItsPeersFinIsSeen()
    {
        // The watch's thread sleeps once its list stayed empty for a while; the push of the next parked loop must wake it,
        // or that connection is never watched, its peer's FIN never seen, and it sits in CLOSE_WAIT for good.
        // (A connection released at once gets the thread started, if no test did; it leaves the list at the next look.)
        (Socket starterPeer, ManagedConnection starter) = await Loopback.CreateManagedServerAsync();
        using (starterPeer)
        {
            starter.Abort();
        }

        await TestTimeouts.WaitUntilAsync(() => LazyWatchProbe.WatcherAsleep, "the lazy watch's thread sleeps");

        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync(s_shortGuard);
        using (peer)
        {
            // Never read, never asked for PeerClosed: only the watch can see the FIN.
            peer.Shutdown(SocketShutdown.Send);
            await Peer.ExpectTheGuardsCloseAsync(peer, connection);
        }
    }

    [Fact]
    public async Task ConnectionDroppedFromTheListWhileReading_IsQueuedAgainWhenItParks_AndItsPeersFinIsSeen()
    {
        // A look that finds the loop reading drops the connection from the list ("it comes back when the loop parks").
        // If it did not come back, a connection read once more and then forgotten would never be watched.
        for (int attempt = 1; ; attempt++)
        {
            (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync(s_shortGuard);
            using (peer)
            {
                // Its loop parked (and was queued) in the constructor; from here on it reads for this receive.
                byte[] buffer = new byte[16];
                Task<int> receive = connection.ReceiveAsync(buffer).AsTask();

                // A second connection, queued after the first one began to read and never read itself: once the watch has
                // watched it, the look that did so has taken the first one too (a look takes the whole list), which was
                // reading then. (Which of the two the look met first does not matter: a park queues it again either way.)
                (Socket witnessPeer, ManagedConnection witness) = await Loopback.CreateManagedServerAsync();
                await using (witness)
                using (witnessPeer)
                {
                    await TestTimeouts.WaitUntilAsync(() => LazyWatchProbe.Park(witness).IsWatched, "the watch watched the witness");
                }

                if (LazyWatchProbe.Park(connection).IsWatched && attempt < 5)
                {
                    // A look watched it in the instant before its receive (parked for 1 ms already): try again.
                    connection.Abort();
                    continue;
                }

                Assert.False(LazyWatchProbe.Park(connection).IsWatched, "watched before its receive in every attempt");

                // The receive ends, the loop parks again, and nobody reads any more.
                await Peer.SendPatternAsync(peer, 10);
                Assert.Equal(10, await receive.WithTimeout());
                peer.Shutdown(SocketShutdown.Send);

                await Peer.ExpectTheGuardsCloseAsync(peer, connection);
                return;
            }
        }
    }

    [Fact]
    public async Task TheWatchsThread_IsStartedOnce_NotAgainAtEachPushToAnEmptyList()
    {
        // Every connection pushes itself on the watch's lists (its late keep-alive, its parked loop), and a push to an
        // empty list makes sure the watch's thread runs. It must start that thread once per process: a thread per push
        // would be a thread per connection, each looking at the same lists for good.
        for (int i = 0; i < 3; i++)
        {
            (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync();
            using (peer)
            {
                try
                {
                    // Taken from both lists (its keep-alive set, its parked loop watched): they are empty for the next one.
                    await TestTimeouts.WaitUntilAsync(
                        () => connection.KeepAliveForTest == ManagedConnection.KeepAliveSet && connection.IsWatchedForTest,
                        "the watch set the connection's keep-alive and watched its parked loop");
                }
                finally
                {
                    connection.Abort();
                }
            }
        }

        Assert.Equal(1, LazyWatchProbe.WatcherThreadsStarted);
    }

    [Fact]
    public async Task TheWatchsThread_SleepsAPeriodBetweenTwoLooks_ItDoesNotSpin()
    {
        // While connections are queued (and for a while after) the watch's thread looks once per period (2 ms) and sleeps
        // in between; one that spun would burn a core. Its looks are counted over the time a new connection takes to be
        // watched (its loop must stay parked 1 ms first, so a spinning thread looks hundreds of times meanwhile): at most
        // one look, plus one per period of that time (the bound below allows one per millisecond). Not a maximum on a
        // time: a loaded machine only makes the looks later, and the window longer.
        var elapsed = Stopwatch.StartNew();
        long before = LazyWatchProbe.WatchLooks;
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync(); // a push wakes the thread
        using (peer)
        {
            try
            {
                await TestTimeouts.WaitUntilAsync(
                    () => connection.KeepAliveForTest == ManagedConnection.KeepAliveSet && connection.IsWatchedForTest,
                    "the watch set the connection's keep-alive and watched its parked loop");
                long looks = LazyWatchProbe.WatchLooks - before;
                TimeSpan took = elapsed.Elapsed;
                Assert.True(looks <= 2 + (long)took.TotalMilliseconds, $"the watch looked {looks} times in {took.TotalMilliseconds:F2} ms");
            }
            finally
            {
                connection.Abort();
            }
        }
    }

    // The watch's thread starts a forgotten connection's wait for data itself (a zero-byte read on the loop's operation
    // object, while it holds the loop's park) instead of waking a pool thread to start it. The loop then resumes on the
    // read's completion: whatever ends that read must reach the loop as if the loop had read.

    [Fact]
    public async Task ForgottenConnection_TheWatchsThreadStartsItsWaitForData_TheLoopResumesWhenBytesCome()
    {
        (Socket peer, ManagedConnection connection) = await ForgottenAndWatchedAsync();
        using (peer)
        {
            // Held by the pending read: the loop has not run since it parked.
            Assert.True(LazyWatchProbe.Park(connection).IsWatched);
            Assert.True(LazyWatchProbe.Park(connection).IsWaking, "the loop ran before any byte came");

            await Peer.SendPatternAsync(peer, 10);
            await TestTimeouts.WaitUntilAsync(() => !LazyWatchProbe.Park(connection).IsWaking, "the read's completion resumes the loop");
            byte[] buffer = new byte[10];
            Assert.Equal(10, await connection.ReceiveAsync(buffer).WithTimeout());
            Assert.Equal(Peer.Pattern(10), buffer);

            // Bytes nobody asked for keep it watched: the FIN is seen, and the guard closes it.
            peer.Shutdown(SocketShutdown.Send);
            await Peer.ExpectTheGuardsCloseAsync(peer, connection);
        }
    }

    [Fact]
    public async Task ForgottenConnection_PeerResetsWhileTheWatchsReadWaits_EndsPeerReset()
    {
        // The kernel reports a reset once, and it must not read as a FIN. (On Linux a zero-byte read does not consume the
        // reset's error: the loop's read after it reports the reset. The watch's read hands any failure of its own to the
        // loop all the same.)
        (Socket peer, ManagedConnection connection) = await ForgottenAndWatchedAsync();
        peer.LingerState = new LingerOption(true, 0);
        peer.Dispose();

        CloseResult result = await connection.Completion.WithTimeout();
        Assert.Equal(CloseOutcome.PeerReset, result.Outcome);
        Assert.Equal(ConnectionState.Closed, connection.State);
    }

    [Fact]
    public async Task ForgottenConnection_TheWatchsReadCompletesWithAReset_TheLoopTakesItAsItsOwnRead_EndsPeerReset()
    {
        // On a runtime whose zero-byte read consumed the reset's error, the loop's next read would see only the end of the
        // stream: the failure of the watch's read must reach the loop. (Linux never loses it, so it is injected here.)
        (Socket peer, ManagedConnection connection) = await ForgottenAndWatchedAsync();
        using (peer)
        {
            long misusesBefore = SocketIoArgs.Counters.Misuses;
            int injected = 0;
            ManagedConnection.WatchReadFailureForTest = (c, completed) =>
                ReferenceEquals(c, connection) && completed && Interlocked.Increment(ref injected) == 1 ? new SocketException((int)SocketError.ConnectionReset) : null;
            try
            {
                // Bytes and the FIN: were the failure dropped, the loop would read them and end with the FIN (the guard's close).
                await Peer.SendPatternAsync(peer, 10);
                peer.Shutdown(SocketShutdown.Send);
                CloseResult result = await connection.Completion.WithTimeout();
                Assert.Equal(1, injected);
                Assert.Equal(CloseOutcome.PeerReset, result.Outcome);
                Assert.Equal(1, connection.ReleaseCount);
                Assert.Equal(misusesBefore, SocketIoArgs.Counters.Misuses);
            }
            finally
            {
                ManagedConnection.WatchReadFailureForTest = null;
            }
        }
    }

    [Fact]
    public async Task ForgottenConnection_TheWatchsReadFailsToStart_TheLoopTakesTheFailure_EndsPeerReset()
    {
        // The read throws where it starts, on the watch's thread: the loop, resumed from the pool, rethrows it as its own
        // read's (and drops the operation object, whose state is unknown). Set before the connection exists: the watch's
        // first look at it is 1-3 ms after it parks.
        long misusesBefore = SocketIoArgs.Counters.Misuses;
        int injected = 0;
        long hookSet = System.Diagnostics.Stopwatch.GetTimestamp();
        ManagedConnection.WatchReadFailureForTest = (c, completed) =>
            !completed && c.OpenedTimestampForTest > hookSet && Interlocked.Increment(ref injected) == 1 ? new SocketException((int)SocketError.ConnectionReset) : null;
        try
        {
            (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync(s_shortGuard);
            using (peer)
            {
                CloseResult result = await connection.Completion.WithTimeout();
                Assert.Equal(1, injected);
                Assert.Equal(CloseOutcome.PeerReset, result.Outcome);
                Assert.Equal(1, connection.ReleaseCount);
                Assert.True(connection.ReceiveLoopEnded);
                Assert.Equal(misusesBefore, SocketIoArgs.Counters.Misuses);
            }
        }
        finally
        {
            ManagedConnection.WatchReadFailureForTest = null;
        }
    }

    [Fact]
    public async Task BeyondTheWatchsReadsPerLook_ForgottenConnectionsStartTheirOwnWait_SeeBytesAndTheFin()
    {
        // Past the per-look cap (64 on the watch's own thread; here 0, so every one) a watched loop is resumed from the pool
        // and starts its own wait for data: bytes asked for later are there, and a forgotten connection's FIN is seen (the
        // guard closes it).
        int cap = ManagedConnection.MaxWatchReadsPerLookForTest;
        ManagedConnection.MaxWatchReadsPerLookForTest = 0;
        try
        {
            (Socket reading, ManagedConnection read) = await Loopback.CreateManagedServerAsync(s_shortGuard);
            (Socket forgetting, ManagedConnection forgotten) = await Loopback.CreateManagedServerAsync(s_shortGuard);
            using (reading)
            using (forgetting)
            {
                await TestTimeouts.WaitUntilAsync(
                    () => LazyWatchProbe.Park(read).IsWatched && LazyWatchProbe.Park(forgotten).IsWatched && !LazyWatchProbe.Park(forgotten).IsParked,
                    "both loops watched, the forgotten one resumed to wait for data");
                Assert.False(LazyWatchProbe.WatchReadStarted(read) || LazyWatchProbe.WatchReadStarted(forgotten), "the watch's thread started a read past its cap");

                await Peer.SendPatternAsync(reading, 10);
                byte[] buffer = new byte[10];
                Assert.Equal(10, await read.ReceiveAsync(buffer).WithTimeout());

                forgetting.Shutdown(SocketShutdown.Send);
                CloseResult result = await forgotten.Completion.WithTimeout();
                Assert.Equal(CloseOutcome.CloseWaitTimedOut, result.Outcome);
                Assert.Equal(PeerEnd.Fin, (await Peer.ReadToEndAsync(forgetting).WithTimeout()).End);

                reading.Shutdown(SocketShutdown.Send);
                Assert.Equal(CloseOutcome.Graceful, (await read.CloseAsync().WithTimeout()).Outcome);
            }
        }
        finally
        {
            ManagedConnection.MaxWatchReadsPerLookForTest = cap;
        }
    }

    [Fact]
    public async Task ForgottenConnection_AbortWhileTheWatchsReadWaits_EndsAborted_AndItsLoopEnds()
    {
        (Socket peer, ManagedConnection connection) = await ForgottenAndWatchedAsync();
        using (peer)
        {
            long misusesBefore = SocketIoArgs.Counters.Misuses;
            connection.Abort();
            Assert.Equal(CloseOutcome.Aborted, (await connection.Completion.WithTimeout()).Outcome);
            await TestTimeouts.WaitUntilAsync(() => connection.ReceiveLoopEnded, "the loop ends once the released socket ends the watch's read");
            Assert.Equal(1, connection.ReleaseCount);
            Assert.Equal(PeerEnd.Reset, (await Peer.ReadToEndAsync(peer).WithTimeout()).End);
            Assert.Equal(misusesBefore, SocketIoArgs.Counters.Misuses);
        }
    }

    [Fact]
    public async Task ForgottenConnection_CloseWhileTheWatchsReadWaits_DrainsWhatComes_AndEndsGracefully()
    {
        (Socket peer, ManagedConnection connection) = await ForgottenAndWatchedAsync();
        using (peer)
        {
            Task<CloseResult> close = connection.CloseAsync().AsTask();

            // Our FIN reaches the peer while the watch's read still waits; what the peer sends now is drained, then its FIN.
            byte[] one = new byte[1];
            Assert.Equal(0, await peer.ReceiveAsync(one, SocketFlags.None).WithTimeout());
            await Peer.SendPatternAsync(peer, 5000);
            peer.Shutdown(SocketShutdown.Send);

            CloseResult result = await close.WithTimeout();
            Assert.Equal(CloseOutcome.Graceful, result.Outcome);
            Assert.Equal(5000, result.BytesDrained);
            Assert.True(connection.ReceiveLoopEnded);
        }
    }

    /// <summary>A server-side connection nobody reads, once the lazy watch has started its wait for data.</summary>
    private static async Task<(Socket Peer, ManagedConnection Connection)> ForgottenAndWatchedAsync()
    {
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync(s_shortGuard);
        await TestTimeouts.WaitUntilAsync(() => LazyWatchProbe.WatchReadStarted(connection), "the lazy watch started the loop's wait for data");
        return (peer, connection);
    }
}
