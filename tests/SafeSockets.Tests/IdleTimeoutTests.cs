using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Time.Testing;
using SafeSockets.Internal;
using SafeSockets.Tests.Infrastructure;

namespace SafeSockets.Tests;

/// <summary>IdleTimeout: no byte in either direction and no send in progress for that long closes the connection gracefully.</summary>
public sealed class IdleTimeoutTests
{
    [Fact]
    public async Task IdleConnection_ClosesItselfGracefully_AfterIdleTimeout()
    {
        var clock = new FakeTimeProvider();
        var logger = new CapturingLogger();
        var options = new ManagedConnectionOptions { TimeProvider = clock, IdleTimeout = TimeSpan.FromSeconds(1), Logger = logger };
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync(options);
        using (peer)
        {
            clock.Advance(TimeSpan.FromMilliseconds(999));
            Assert.Equal(ConnectionState.Open, connection.State);
            clock.Advance(TimeSpan.FromMilliseconds(1));

            // The peer sees our FIN (not a reset) and answers with its own; the drain then ends gracefully.
            Assert.Equal(PeerEnd.Fin, (await Peer.ReadToEndAsync(peer).WithTimeout()).End);
            peer.Shutdown(SocketShutdown.Send);
            CloseResult result = await connection.Completion.WithTimeout();
            Assert.Equal(CloseOutcome.IdleTimedOut, result.Outcome);
            Assert.Equal(ConnectionState.Closed, connection.State);
            Assert.Equal(result, await connection.CloseAsync().WithTimeout());
            // Completion completes only after the end is logged and counted.
            Assert.Contains(logger.Entries, e => e.Id == 10 && e.Level == Microsoft.Extensions.Logging.LogLevel.Information);
        }
    }

    [Fact]
    public async Task AfterThePeersFin_TheGuardClosesAtExactlyIdleTimeout()
    {
        // After the peer's FIN the CLOSE_WAIT guard watches the idle bound too; it comes due on the very tick.
        var clock = new FakeTimeProvider();
        var options = new ManagedConnectionOptions { TimeProvider = clock, IdleTimeout = TimeSpan.FromSeconds(1), CloseWaitTimeout = TimeSpan.FromMinutes(10) };
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync(options);
        using (peer)
        {
            peer.Shutdown(SocketShutdown.Send);
            await connection.PeerClosed.WhenCanceled().WithTimeout();
            for (int i = 0; i < 4; i++)
            {
                clock.Advance(TimeSpan.FromMilliseconds(250));
            }

            Assert.Equal(PeerEnd.Fin, (await Peer.ReadToEndAsync(peer).WithTimeout()).End);
            CloseResult result = await connection.Completion.WithTimeout();
            Assert.Equal(CloseOutcome.IdleTimedOut, result.Outcome);
        }
    }

    [Fact]
    public async Task TrafficInEitherDirection_RestartsTheBound()
    {
        var clock = new FakeTimeProvider();
        var options = new ManagedConnectionOptions { TimeProvider = clock, IdleTimeout = TimeSpan.FromSeconds(1) };
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync(options);
        using (peer)
        {
            byte[] one = new byte[1];
            for (int i = 0; i < 5; i++)
            {
                clock.Advance(TimeSpan.FromMilliseconds(600));
                if (i % 2 == 0)
                {
                    // The peer sends: a received byte is traffic (read here so the next one is not merged with it).
                    await peer.SendAsync(one, SocketFlags.None).WithTimeout();
                    Assert.Equal(1, await connection.ReceiveAsync(new byte[1]).WithTimeout());
                }
                else
                {
                    await connection.SendAsync(one).WithTimeout();
                    Assert.Equal(1, await peer.ReceiveAsync(new byte[1], SocketFlags.None).WithTimeout());
                }

                Assert.Equal(ConnectionState.Open, connection.State);
            }

            // 3 s of traffic with gaps of 0.6 s never hit the 1 s bound; a full second of silence does.
            clock.Advance(TimeSpan.FromSeconds(1));
            Assert.Equal(PeerEnd.Fin, (await Peer.ReadToEndAsync(peer).WithTimeout()).End);
            peer.Shutdown(SocketShutdown.Send);
            Assert.Equal(CloseOutcome.IdleTimedOut, (await connection.Completion.WithTimeout()).Outcome);
        }
    }

    [Fact]
    public async Task ASendInProgress_IsNotIdle()
    {
        var clock = new FakeTimeProvider();
        var options = new ManagedConnectionOptions { TimeProvider = clock, IdleTimeout = TimeSpan.FromSeconds(1) };
        (Socket peer, ManagedConnection connection) = await Loopback.CreateSmallBufferManagedServerAsync(options);
        using (peer)
        {
            // A large send the peer does not read yet: stuck, but in progress.
            Task send = connection.SendAsync(new byte[8 * 1024 * 1024]).AsTask();
            Assert.False(send.IsCompleted);
            clock.Advance(TimeSpan.FromSeconds(3));
            Assert.Equal(ConnectionState.Open, connection.State);

            // The peer reads it all; then silence closes the connection.
            Task<PeerReadResult> reading = Peer.ReadToEndAsync(peer);
            await send.WithTimeout();
            clock.Advance(TimeSpan.FromSeconds(1));
            Assert.Equal(PeerEnd.Fin, (await reading.WithTimeout()).End);
            peer.Shutdown(SocketShutdown.Send);
            Assert.Equal(CloseOutcome.IdleTimedOut, (await connection.Completion.WithTimeout()).Outcome);
        }
    }

    [Fact]
    public async Task ALoopPausedBehindUnreadInput_IsNotIdle_AndTheBoundCountsFromTheReadThatEndsThePause()
    {
        // Bytes waiting in the input for the application are not silence: the idle bound arms itself again while the loop
        // is paused behind them, however long, and once the application's read ends the pause, IdleTimeout counts from
        // that read. The fake clock moves only onto the bound's due times, after the state it is to judge is in place.
        var clock = new FakeTimeProvider();
        var options = new ManagedConnectionOptions
        {
            TimeProvider = clock,
            IdleTimeout = TimeSpan.FromSeconds(1),
            MaxInputBufferSize = 1, // the loop pauses behind any unread byte, and resumes once none is left
        };
        (Socket peer, ManagedConnection connection) = await LazyWatchProbe.CreateKeptParkedServerAsync(options);
        using (peer)
        {
            try
            {
                long start = clock.GetTimestamp();

                // Ten bytes in our kernel; a receive of one wakes the loop on this thread, which reads all ten, pauses
                // behind nine, and hands the one over before the receive returns.
                Assert.Equal(10, peer.Send(Peer.Pattern(10)));
                await TestTimeouts.WaitUntilAsync(() => connection.Socket.Available == 10, "the bytes reached our kernel");
                byte[] buffer = new byte[10];
                ValueTask<int> first = connection.ReceiveAsync(buffer.AsMemory(0, 1));
                Assert.True(first.IsCompleted, "the receive did not complete on the caller's thread");
                Assert.Equal(1, await first);

                // 1 s later the bound looks: paused, so not idle; it arms itself for 1 s from now.
                clock.Advance(TimeSpan.FromSeconds(1));
                await WaitForTheIdleBoundAsync(connection);
                Assert.Equal((DeadlinePurpose.IdleBound, DeadlineProbe.At(clock, start, TimeSpan.FromSeconds(2))), DeadlineProbe.Armed(connection));

                // At 1.5 s the application reads the nine: the pause ends (the loop then parks: nothing more to read).
                clock.Advance(TimeSpan.FromMilliseconds(500));
                int parks = connection.LoopParksForTest;
                Assert.Equal(9, await connection.ReceiveAsync(buffer.AsMemory(1)).AsTask().WithTimeout());
                Assert.Equal(Peer.Pattern(10), buffer);
                await TestTimeouts.WaitUntilAsync(() => connection.LoopParksForTest > parks, "the loop resumed from its pause and parked");

                // At 2 s the bound looks again: 0.5 s since the read that ended the pause, not idle; due at 2.5 s.
                clock.Advance(TimeSpan.FromMilliseconds(500));
                await WaitForTheIdleBoundAsync(connection);
                Assert.Equal((DeadlinePurpose.IdleBound, DeadlineProbe.At(clock, start, TimeSpan.FromMilliseconds(2500))), DeadlineProbe.Armed(connection));

                // At 2.5 s: a full second of silence; the connection closes itself.
                clock.Advance(TimeSpan.FromMilliseconds(500));
                Assert.Equal(PeerEnd.Fin, (await Peer.ReadToEndAsync(peer).WithTimeout()).End);
                peer.Shutdown(SocketShutdown.Send);
                Assert.Equal(CloseOutcome.IdleTimedOut, (await connection.Completion.WithTimeout()).Outcome);
            }
            finally
            {
                connection.Abort();
            }
        }
    }

    /// <summary>After the clock moved onto the idle bound's due time: it either armed itself again or queued the close
    /// (which runs on the pool); waits for one of the two.</summary>
    private static Task WaitForTheIdleBoundAsync(ManagedConnection connection) => TestTimeouts.WaitUntilAsync(
        () => DeadlineProbe.IsArmed(connection, DeadlinePurpose.IdleBound) || connection.State != ConnectionState.Open,
        "the idle bound armed itself again, or closed");

    [Fact]
    public async Task Off_ByDefault()
    {
        Assert.Equal(Timeout.InfiniteTimeSpan, new ManagedConnectionOptions().IdleTimeout);
        var clock = new FakeTimeProvider();
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync(new ManagedConnectionOptions { TimeProvider = clock });
        using (peer)
        await using (connection)
        {
            clock.Advance(TimeSpan.FromDays(1));
            Assert.Equal(ConnectionState.Open, connection.State);
            peer.Shutdown(SocketShutdown.Send);
        }
    }

    [Theory]
    [InlineData(0)]
    [InlineData(-5)]
    public void BadValues_AreRefusedWithTheOptionsName(int milliseconds)
    {
        var options = new ManagedConnectionOptions();
        ArgumentOutOfRangeException error = Assert.Throws<ArgumentOutOfRangeException>(() => options.IdleTimeout = TimeSpan.FromMilliseconds(milliseconds));
        Assert.Equal(nameof(ManagedConnectionOptions.IdleTimeout), error.ParamName);
    }

    [Fact]
    public async Task KeepAlive_IsSetOnAdoptedSockets_AsTheOptionsSay_AndOffWhenInfinite()
    {
        (Socket peer2, Socket server2) = await Loopback.CreatePairAsync();
        (Socket peer, Socket server) = await Loopback.CreatePairAsync();
        using (peer2)
        using (peer)
        {
            // Keep-alive off: the connection is never queued for it (and the socket's own setting stays).
            await using ManagedConnection off = ManagedConnection.Adopt(server2, new ManagedConnectionOptions { KeepAliveTime = Timeout.InfiniteTimeSpan });
            var options = new ManagedConnectionOptions { KeepAliveTime = TimeSpan.FromSeconds(7), KeepAliveInterval = TimeSpan.FromSeconds(3), KeepAliveRetryCount = 4 };
            await using ManagedConnection connection = ManagedConnection.Adopt(server, options);
            await WaitForKeepAliveAsync(server);
            AssertKeepAlive(server, time: 7, interval: 3, count: 4);
            Assert.Equal(ManagedConnection.KeepAliveSet, connection.KeepAliveForTest);
            Assert.Equal(0, (int)server2.GetSocketOption(SocketOptionLevel.Socket, SocketOptionName.KeepAlive)!);
            Assert.Equal(0, off.KeepAliveForTest);
            peer.Shutdown(SocketShutdown.Send);
            peer2.Shutdown(SocketShutdown.Send);
        }
    }

    [Fact]
    public async Task KeepAlive_IsSetOnConnectedConnections_WhileTheApplicationWaitsInReceive()
    {
        // Set a few milliseconds after the connect by the library's own thread, also on a connection whose application
        // sits in ReceiveAsync (its receive loop reads, it is not parked): a vanished peer would leave that read pending
        // for ever, so it needs keep-alive most.
        using Socket listener = Loopback.Listen();
        var options = new ManagedConnectionOptions { KeepAliveTime = TimeSpan.FromSeconds(9), KeepAliveInterval = TimeSpan.FromSeconds(2), KeepAliveRetryCount = 5 };
        await using ManagedConnection client = await ManagedConnection.ConnectAsync(listener.LocalEndPoint!, options).WithTimeout();
        using Socket peer = await listener.AcceptAsync().WithTimeout();
        byte[] buffer = new byte[16];
        ValueTask<int> receiving = client.ReceiveAsync(buffer);
        Assert.False(receiving.IsCompleted);

        await WaitForKeepAliveAsync(client.Socket);
        AssertKeepAlive(client.Socket, time: 9, interval: 2, count: 5);

        // The read it waited in is untouched.
        peer.Send([1, 2, 3]);
        Assert.Equal(3, await receiving.AsTask().WithTimeout());
        peer.Shutdown(SocketShutdown.Send);
        Assert.Equal(CloseOutcome.Graceful, (await client.CloseAsync().WithTimeout()).Outcome);
    }

    [Fact]
    public async Task KeepAlive_ConnectionsReleasedBeforeTheirKeepAliveIsSet_AreSkippedWithoutAnError()
    {
        var logger = new CapturingLogger();
        var options = new ManagedConnectionOptions { Logger = logger };
        using Socket listener = Loopback.Listen(backlog: 64);
        var released = new List<ManagedConnection>();
        for (int i = 0; i < 20; i++)
        {
            ManagedConnection client = await ManagedConnection.ConnectAsync(listener.LocalEndPoint!, options).WithTimeout();
            using Socket peer = await listener.AcceptAsync().WithTimeout();
            client.Abort();
            released.Add(client);
        }

        // A connection released before its turn (2-4 ms after it was made) is skipped without touching the socket (no
        // setsockopt on a disposed socket, no exception on the library's thread); one whose turn came first (a slow
        // first connect, a loaded machine) had it set while it lived. Nothing is logged.
        await TestTimeouts.WaitUntilAsync(() => released.All(c => c.KeepAliveForTest != ManagedConnection.KeepAliveQueued), "the library took its turn on each");
        Assert.All(released, c => Assert.Contains(c.KeepAliveForTest, new[] { ManagedConnection.KeepAliveSkipped, ManagedConnection.KeepAliveSet }));
        Assert.Contains(released, c => c.KeepAliveForTest == ManagedConnection.KeepAliveSkipped);
        Assert.DoesNotContain(logger.Entries, e => e.Level >= LogLevel.Warning);
    }

    [Fact]
    public async Task KeepAliveAndNoDelay_AreSetOnAcceptedConnections_AsTheOptionsSay_AndKeepAliveOffWhenInfinite()
    {
        // On Linux the listener sets them once on its own socket and the kernel copies them into every accepted one.
        var options = new ManagedConnectionOptions { KeepAliveTime = TimeSpan.FromSeconds(7), KeepAliveInterval = TimeSpan.FromSeconds(3), KeepAliveRetryCount = 4 };
        await using (ManagedListener listener = ManagedListener.Start(new IPEndPoint(IPAddress.Loopback, 0), new ManagedListenerOptions { Connection = options }))
        using (var peer = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp))
        {
            await peer.ConnectAsync(listener.LocalEndPoint).WithTimeout();
            await using ManagedConnection connection = await listener.AcceptAsync().WithTimeout();
            Socket accepted = connection.Socket;
            Assert.True(accepted.NoDelay);
            AssertKeepAlive(accepted, time: 7, interval: 3, count: 4);
            peer.Shutdown(SocketShutdown.Send);
        }

        var off = new ManagedConnectionOptions { KeepAliveTime = Timeout.InfiniteTimeSpan };
        await using (ManagedListener listener = ManagedListener.Start(new IPEndPoint(IPAddress.Loopback, 0), new ManagedListenerOptions { Connection = off }))
        using (var peer = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp))
        {
            await peer.ConnectAsync(listener.LocalEndPoint).WithTimeout();
            await using ManagedConnection connection = await listener.AcceptAsync().WithTimeout();
            Assert.True(connection.Socket.NoDelay);
            Assert.Equal(0, (int)connection.Socket.GetSocketOption(SocketOptionLevel.Socket, SocketOptionName.KeepAlive)!);
            peer.Shutdown(SocketShutdown.Send);
        }
    }

    [Fact]
    public async Task KeepAlive_AtItsLargestValues_IsSet()
    {
        (Socket peer, Socket server) = await Loopback.CreatePairAsync();
        using (peer)
        {
            var options = new ManagedConnectionOptions { KeepAliveTime = TimeSpan.FromSeconds(32_767), KeepAliveInterval = TimeSpan.FromSeconds(32_767), KeepAliveRetryCount = 127 };
            await using ManagedConnection connection = ManagedConnection.Adopt(server, options);
            await WaitForKeepAliveAsync(server);
            Assert.Equal(32_767, (int)server.GetSocketOption(SocketOptionLevel.Tcp, SocketOptionName.TcpKeepAliveTime)!);
            Assert.Equal(127, (int)server.GetSocketOption(SocketOptionLevel.Tcp, SocketOptionName.TcpKeepAliveRetryCount)!);
            peer.Shutdown(SocketShutdown.Send);
        }
    }

    [Fact]
    public async Task KeepAlive_ALivePeerThatStopsReading_IsNotGivenUpOn()
    {
        // Keep-alive probes only an idle connection; a zero window is the peer's flow control, not its death. (With
        // TCP_USER_TIMEOUT set to the keep-alive total, Linux cut such a peer off as 'unreachable' after 3.5 s.)
        (Socket peer, Socket server) = await Loopback.CreatePairAsync();
        using (peer)
        {
            server.SendBufferSize = 16 * 1024;
            peer.ReceiveBufferSize = 16 * 1024;
            var options = new ManagedConnectionOptions { KeepAliveTime = TimeSpan.FromSeconds(1), KeepAliveInterval = TimeSpan.FromSeconds(1), KeepAliveRetryCount = 1 };
            ManagedConnection connection = ManagedConnection.Adopt(server, options);
            Task send = connection.SendAsync(new byte[8 * 1024 * 1024]).AsTask();

            // Longer than keep-alive's 2 s total, with the peer alive but not reading: the window stays shut, nothing ends.
            Task ended = await Task.WhenAny(send, connection.Completion, Task.Delay(TimeSpan.FromSeconds(4)));
            Assert.False(ended == send || ended == connection.Completion, $"the send or the connection ended: {connection.State}");
            Assert.Equal(ConnectionState.Open, connection.State);

            Task<PeerReadResult> reading = Peer.ReadToEndAsync(peer);
            await send.WithTimeout();
            peer.Shutdown(SocketShutdown.Send);
            Assert.Equal(CloseOutcome.Graceful, (await connection.CloseAsync().WithTimeout()).Outcome);
            Assert.Equal(8 * 1024 * 1024, (await reading.WithTimeout()).Bytes);
        }
    }

    [Fact]
    public void KeepAlive_BadValues_AreRefusedWithTheOptionsName()
    {
        var options = new ManagedConnectionOptions();
        Assert.Equal("KeepAliveTime", Assert.Throws<ArgumentOutOfRangeException>(() => options.KeepAliveTime = TimeSpan.FromMilliseconds(500)).ParamName);
        Assert.Equal("KeepAliveInterval", Assert.Throws<ArgumentOutOfRangeException>(() => options.KeepAliveInterval = TimeSpan.FromSeconds(40_000)).ParamName);
        Assert.Equal("KeepAliveRetryCount", Assert.Throws<ArgumentOutOfRangeException>(() => options.KeepAliveRetryCount = 0).ParamName);
        Assert.Equal("KeepAliveRetryCount", Assert.Throws<ArgumentOutOfRangeException>(() => options.KeepAliveRetryCount = 128).ParamName);
        options.KeepAliveTime = Timeout.InfiniteTimeSpan;
        Assert.Equal(Timeout.InfiniteTimeSpan, options.KeepAliveTime);
    }

    private static Task WaitForKeepAliveAsync(Socket socket) =>
        TestTimeouts.WaitUntilAsync(() => (int)socket.GetSocketOption(SocketOptionLevel.Socket, SocketOptionName.KeepAlive)! != 0, "keep-alive is set");

    private static void AssertKeepAlive(Socket socket, int time, int interval, int count)
    {
        Assert.Equal(1, (int)socket.GetSocketOption(SocketOptionLevel.Socket, SocketOptionName.KeepAlive)!);
        Assert.Equal(time, (int)socket.GetSocketOption(SocketOptionLevel.Tcp, SocketOptionName.TcpKeepAliveTime)!);
        Assert.Equal(interval, (int)socket.GetSocketOption(SocketOptionLevel.Tcp, SocketOptionName.TcpKeepAliveInterval)!);
        Assert.Equal(count, (int)socket.GetSocketOption(SocketOptionLevel.Tcp, SocketOptionName.TcpKeepAliveRetryCount)!);
    }
}
