using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.Time.Testing;
using SafeSockets.Tests.Infrastructure;

namespace SafeSockets.Tests;

public sealed class ListenerTests
{
    private static ManagedListener StartLoopback(ManagedListenerOptions? options = null) =>
        ManagedListener.Start(new IPEndPoint(IPAddress.Loopback, 0), options);

    private static async Task<Socket> ConnectAsync(ManagedListener listener)
    {
        var client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        await client.ConnectAsync(listener.LocalEndPoint).WithTimeout();
        return client;
    }

    [Fact]
    public async Task Accept_TracksConnectionUntilReleased()
    {
        await using ManagedListener listener = StartLoopback();
        Assert.NotEqual(0, listener.LocalEndPoint.Port());
        using Socket client = await ConnectAsync(listener);
        ManagedConnection connection = await listener.AcceptAsync().WithTimeout();
        Assert.Equal(1, listener.ActiveConnections);

        await Peer.SendPatternAsync(client, 10);
        client.Shutdown(SocketShutdown.Send);
        Assert.Equal(10, (await Peer.ReadAllAsync(connection).WithTimeout()).Length);
        Assert.Equal(CloseOutcome.Graceful, (await connection.CloseAsync().WithTimeout()).Outcome);
        Assert.Equal(0, listener.ActiveConnections);
    }

    // CI, session 12: the hosting service's stop summary (event 103) counted a gracefully closed connection as "ended
    // otherwise": the listener's stop completed while the connection's Completion was still to come. The listener hears
    // of a connection's end before Completion completes (so that whoever awaits Completion finds its slot free), and
    // took that as released.
    [Fact]
    public async Task StopAsync_CompletesOnlyOnceEveryConnectionsCompletionHasItsResult()
    {
        ManagedListener listener = StartLoopback();
        using Socket client = await ConnectAsync(listener);
        ManagedConnection connection = await listener.AcceptAsync().WithTimeout();
        bool? releasedBeforeCompletion = null;
        bool? completionDoneWhenReleased = null;
        listener.BeforeAllReleasedForTest = () => completionDoneWhenReleased ??= connection.Completion.IsCompleted;
        ManagedConnection.BeforePublishForTest = c =>
        {
            if (ReferenceEquals(c, connection))
            {
                releasedBeforeCompletion = listener.AllReleasedForTest;
            }
        };
        try
        {
            Task stop = listener.StopAsync(TimeSpan.FromSeconds(30));
            Task<bool> completionDoneAtStop = stop.ContinueWith(_ => connection.Completion.IsCompleted, CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
            Assert.Equal(PeerEnd.Fin, (await Peer.ReadToEndAsync(client).WithTimeout()).End);
            client.Shutdown(SocketShutdown.Send);
            await stop.WithTimeout();

            Assert.Equal(CloseOutcome.Graceful, (await connection.Completion.WithTimeout()).Outcome);
            Assert.False(releasedBeforeCompletion, "the listener took the connection as released before its Completion had a result");
            Assert.True(completionDoneWhenReleased, "the listener was released before the connection's Completion had its result"); // (a review: the order of the two last steps was not pinned)
            Assert.True(await completionDoneAtStop.WithTimeout(), "StopAsync completed before the connection's Completion");
        }
        finally
        {
            ManagedConnection.BeforePublishForTest = null;
            await listener.DisposeAsync().AsTask().WithTimeout();
        }
    }

    // The same with two connections: the first one's result published must not end the stop while the second's is
    // still to come (the listener counts the connections between the two steps).
    [Fact]
    public async Task StopAsync_OneConnectionPublished_AnotherStillToPublish_IsNotOver()
    {
        ManagedListener listener = StartLoopback();
        using Socket clientA = await ConnectAsync(listener);
        ManagedConnection a = await listener.AcceptAsync().WithTimeout();
        using Socket clientB = await ConnectAsync(listener);
        ManagedConnection b = await listener.AcceptAsync().WithTimeout();
        using var aPublished = new ManualResetEventSlim();
        using var bWaiting = new ManualResetEventSlim();
        bool? releasedWhileBWaits = null;
        ManagedConnection.BeforePublishForTest = c =>
        {
            if (ReferenceEquals(c, b))
            {
                // B's end is known to the listener, its result not yet published: now A ends entirely.
                bWaiting.Set();
                if (aPublished.Wait(TestTimeouts.Passing))
                {
                    releasedWhileBWaits = listener.AllReleasedForTest;
                }
            }
        };
        ManagedConnection.AfterPublishForTest = c =>
        {
            if (ReferenceEquals(c, a))
            {
                aPublished.Set();
            }
        };
        try
        {
            Task stop = listener.StopAsync(TimeSpan.FromSeconds(30));
            Assert.Equal(PeerEnd.Fin, (await Peer.ReadToEndAsync(clientB).WithTimeout()).End);
            Assert.Equal(PeerEnd.Fin, (await Peer.ReadToEndAsync(clientA).WithTimeout()).End);
            clientB.Shutdown(SocketShutdown.Send);
            Assert.True(await Task.Run(() => bWaiting.Wait(TestTimeouts.Passing)).WithTimeout(), "B's close never reached its hook");
            clientA.Shutdown(SocketShutdown.Send);
            await stop.WithTimeout();

            Assert.True(aPublished.IsSet, "A's result was not published while B waited");
            Assert.False(releasedWhileBWaits, "the stop was over while B's Completion had no result");
            Assert.Equal(CloseOutcome.Graceful, (await a.Completion.WithTimeout()).Outcome);
            Assert.Equal(CloseOutcome.Graceful, (await b.Completion.WithTimeout()).Outcome);
        }
        finally
        {
            ManagedConnection.BeforePublishForTest = null;
            ManagedConnection.AfterPublishForTest = null;
            await listener.DisposeAsync().AsTask().WithTimeout();
        }
    }

    // Review of the fix above: the listener heard of a connection's end only after its metrics and logs, so a logger (or
    // a meter listener) that threw there left the connection counted as live, and the listener's stop never ended.
    [Fact]
    public async Task StopAsync_AConnectionsLoggerThrewAtItsEnd_StillEnds()
    {
        var options = new ManagedListenerOptions { Connection = new ManagedConnectionOptions { Logger = new ThrowingLogger(3) } };
        ManagedListener listener = StartLoopback(options);
        try
        {
            using Socket client = await ConnectAsync(listener);
            ManagedConnection connection = await listener.AcceptAsync().WithTimeout();

            // What the logger throws stays in the logger (a second review: from a detached teardown it crashed the process).
            connection.Abort();
            Assert.Equal(CloseOutcome.Aborted, (await connection.Completion.WithTimeout()).Outcome);
            Assert.Equal(0, listener.ActiveConnections);

            await listener.StopAsync(TimeSpan.FromSeconds(1)).WithTimeout();
        }
        finally
        {
            await listener.DisposeAsync().AsTask().WithTimeout();
        }
    }

    // Second review, session 12 (made deterministic in session 13): the accept path decided whether to track a connection
    // by its recorded result, not by whether the listener had heard of its end. A connection that ended between its
    // adoption and its tracking, with the listener's callback still to run (here: the end's log line in progress), was
    // neither tracked nor counted, so a stop racing it was over before that connection's Completion had its result.
    [Fact]
    public async Task StopAsync_AConnectionEndedBetweenAdoptionAndTracking_IsNotOverBeforeItsCompletion()
    {
        var logger = new BlockingLogger(eventToBlockOn: 3);
        var options = new ManagedListenerOptions { Connection = new ManagedConnectionOptions { Logger = logger } };
        ManagedListener listener = StartLoopback(options);
        Task? stop = null;
        Task? abort = null;
        ManagedConnection? adopted = null;
        bool? completionDoneWhenReleased = null;
        bool? releasedWhileReporting = null;
        bool abortReachedItsLogLine = false;
        listener.AfterAdoptForTest = connection =>
        {
            // The connection ends now (its result recorded, its end being logged, the listener not yet told), and the
            // stop begins, before the accept path tracks it. (Nothing here throws: a throw would leave the accept counted.)
            adopted = connection;
            abort = Task.Run(connection.Abort);
            abortReachedItsLogLine = logger.Entered.Wait(TestTimeouts.Passing);
            stop = listener.StopAsync(TimeSpan.FromSeconds(30));
        };
        listener.BeforeAllReleasedForTest = () => completionDoneWhenReleased ??= adopted?.Completion.IsCompleted;
        try
        {
            using Socket client = await ConnectAsync(listener);
            await Assert.ThrowsAsync<ObjectDisposedException>(async () => await listener.AcceptAsync().WithTimeout());
            Assert.True(abortReachedItsLogLine, "the abort never reached its log line");
            Assert.NotNull(stop);
            releasedWhileReporting = listener.AllReleasedForTest;
            logger.Release.Set();
            await stop.WithTimeout();
            await abort!.WithTimeout();

            Assert.False(releasedWhileReporting, "the stop was over while the connection's end was still being reported");
            Assert.True(completionDoneWhenReleased, "the listener was released before the connection's Completion had its result");
            Assert.Equal(CloseOutcome.Aborted, (await adopted!.Completion.WithTimeout()).Outcome);
            Assert.Equal(0, listener.ActiveConnections);
        }
        finally
        {
            logger.Release.Set();
            await listener.DisposeAsync().AsTask().WithTimeout();
        }
    }

    // The other order (review, session 13): the connection ends entirely, its end heard by the listener, before the accept
    // path tracks it. The listener must neither track it (it would be kept forever: its end was heard already) nor keep
    // it among the ends heard before tracking; the stop ends at once.
    [Fact]
    public async Task StopAsync_AConnectionThatEndedEntirelyBeforeTracking_IsNotKept()
    {
        ManagedListener listener = StartLoopback();
        ManagedConnection? adopted = null;
        listener.AfterAdoptForTest = connection =>
        {
            adopted = connection;
            connection.Abort(); // on this thread: recorded, heard, published before Track
        };
        try
        {
            using Socket client = await ConnectAsync(listener);
            ManagedConnection handedOut = await listener.AcceptAsync().WithTimeout();
            Assert.Same(adopted, handedOut);
            Assert.True(handedOut.Completion.IsCompleted);
            Assert.Equal(CloseOutcome.Aborted, (await handedOut.Completion.WithTimeout()).Outcome);
            Assert.Equal(0, listener.ActiveConnections);
            Assert.Equal((0, 0, 0, 0, 0), listener.TrackerCountsForTest);

            await listener.StopAsync(TimeSpan.FromSeconds(30)).WithTimeout();
            Assert.Equal((0, 0, 0, 0, 0), listener.TrackerCountsForTest);
        }
        finally
        {
            await listener.DisposeAsync().AsTask().WithTimeout();
        }
    }

    private sealed class BlockingLogger(int eventToBlockOn) : Microsoft.Extensions.Logging.ILogger
    {
        public ManualResetEventSlim Entered { get; } = new();

        public ManualResetEventSlim Release { get; } = new();

        public IDisposable? BeginScope<TState>(TState state)
            where TState : notnull => null;

        public bool IsEnabled(Microsoft.Extensions.Logging.LogLevel logLevel) => true;

        public void Log<TState>(Microsoft.Extensions.Logging.LogLevel logLevel, Microsoft.Extensions.Logging.EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
        {
            if (eventId.Id == eventToBlockOn)
            {
                Entered.Set();
                Release.Wait(TestTimeouts.Passing);
            }
        }
    }

    private sealed class LoggerFailureException : Exception
    {
    }

    // Second review, session 12: the CLOSE_WAIT guard's close runs detached on a pool work item, and a logger that threw on
    // its event (1, the forced close) crashed the test host there; before that, the teardown stopped half way.
    [Fact]
    public async Task GuardClose_TheLoggerThrowsOnTheForcedCloseEvent_TheConnectionStillEnds()
    {
        var options = new ManagedConnectionOptions { CloseWaitTimeout = TimeSpan.FromMilliseconds(100), Logger = new ThrowingLogger(1) };
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync(options);
        using (peer)
        {
            peer.Shutdown(SocketShutdown.Send);
            Assert.Equal(CloseOutcome.CloseWaitTimedOut, (await connection.Completion.WithTimeout()).Outcome);
            Assert.Equal(PeerEnd.Fin, (await Peer.ReadToEndAsync(peer).WithTimeout()).End);
        }
    }

    private sealed class ThrowingLogger(int eventToThrowOn) : Microsoft.Extensions.Logging.ILogger
    {
        public IDisposable? BeginScope<TState>(TState state)
            where TState : notnull => null;

        public bool IsEnabled(Microsoft.Extensions.Logging.LogLevel logLevel) => true;

        // Event 3: "aborted on purpose"; event 1: "closed by itself" (the guard); both logged as the connection ends.
        public void Log<TState>(Microsoft.Extensions.Logging.LogLevel logLevel, Microsoft.Extensions.Logging.EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
        {
            if (eventId.Id == eventToThrowOn)
            {
                throw new LoggerFailureException();
            }
        }
    }

    [Fact]
    public async Task ConnectionOptionsChangedAfterStart_DoNotReachTheListenersConnections()
    {
        var clock = new FakeTimeProvider();
        var connectionOptions = new ManagedConnectionOptions { TimeProvider = clock, CloseWaitTimeout = TimeSpan.FromSeconds(1) };
        await using ManagedListener listener = StartLoopback(new ManagedListenerOptions { Connection = connectionOptions });
        connectionOptions.CloseWaitTimeout = TimeSpan.FromSeconds(30);

        using Socket client = await ConnectAsync(listener);
        ManagedConnection connection = await listener.AcceptAsync().WithTimeout();
        client.Shutdown(SocketShutdown.Send);
        await connection.PeerClosed.WhenCanceled().WithTimeout();
        clock.Advance(TimeSpan.FromSeconds(1));
        Assert.Equal(CloseOutcome.CloseWaitTimedOut, (await connection.Completion.WithTimeout()).Outcome);
        Assert.Equal(PeerEnd.Fin, (await Peer.ReadToEndAsync(client).WithTimeout()).End);
    }

    [Fact]
    public async Task StopAsync_FiftyIdlePeers_AllSeeFinNoneReset_WithinGrace()
    {
        ManagedListener listener = StartLoopback();
        var clients = new List<Socket>();
        try
        {
            for (int i = 0; i < 60; i++)
            {
                clients.Add(await ConnectAsync(listener));
                await listener.AcceptAsync().WithTimeout();
            }

            Assert.Equal(60, listener.ActiveConnections);

            // Idle peers that behave: read to the end, then close their side.
            Task<PeerReadResult>[] peers = [.. clients.Select(c => Task.Run(async () =>
            {
                PeerReadResult result = await Peer.ReadToEndAsync(c);
                c.Shutdown(SocketShutdown.Send);
                return result;
            }))];

            await listener.StopAsync(TimeSpan.FromSeconds(20)).WithTimeout();
            PeerReadResult[] results = await Task.WhenAll(peers).WithTimeout();

            Assert.All(results, r => Assert.Equal(PeerEnd.Fin, r.End));
            Assert.Equal(0, listener.ActiveConnections);
            await Assert.ThrowsAsync<ObjectDisposedException>(() => listener.AcceptAsync().AsTask());
        }
        finally
        {
            clients.ForEach(c => c.Dispose());
        }
    }

    [Fact]
    public async Task StopAsync_PeerThatNeverCloses_IsAbortedAtTheDeadlineNotBefore()
    {
        var logger = new CapturingLogger();
        var options = new ManagedListenerOptions
        {
            Connection = new ManagedConnectionOptions { DrainTimeout = TimeSpan.FromMinutes(10), DrainIdleTimeout = TimeSpan.FromMinutes(10), Logger = logger },
        };
        ManagedListener listener = StartLoopback(options);
        using Socket stubborn = await ConnectAsync(listener);
        using Socket polite = await ConnectAsync(listener);
        ManagedConnection first = await listener.AcceptAsync().WithTimeout();
        ManagedConnection second = await listener.AcceptAsync().WithTimeout();
        ManagedConnection stubbornConnection = first.RemoteEndPoint!.Equals(stubborn.LocalEndPoint) ? first : second;
        ManagedConnection politeConnection = ReferenceEquals(stubbornConnection, first) ? second : first;
        Task politePeer = Task.Run(async () => { await Peer.ReadToEndAsync(polite); polite.Shutdown(SocketShutdown.Send); });

        TimeSpan grace = TimeSpan.FromMilliseconds(500);
        var clock = System.Diagnostics.Stopwatch.StartNew();
        Task stop = listener.StopAsync(grace);

        // The stubborn peer sees our FIN but keeps its side open: it must still be alive until the deadline.
        byte[] buffer = new byte[16];
        Assert.Equal(0, await stubborn.ReceiveAsync(buffer, SocketFlags.None).WithTimeout());
        await politePeer.WithTimeout();
        Assert.Equal(CloseOutcome.Graceful, (await politeConnection.Completion.WithTimeout()).Outcome);
        Assert.False(stubbornConnection.Completion.IsCompleted && clock.Elapsed < grace);

        await stop.WithTimeout();
        Assert.True(clock.Elapsed >= grace - TimeSpan.FromMilliseconds(20), $"stopped after {clock.Elapsed}");

        // The stop completes only once the aborted connection is released and no longer tracked.
        Assert.Equal(0, listener.ActiveConnections);
        Assert.Equal(CloseOutcome.Aborted, (await stubbornConnection.Completion.WithTimeout()).Outcome);

        // The stop's log says what happened: one closed gracefully, one aborted at the deadline.
        LogEntry stopped = Assert.Single(logger.Entries, e => e.Id == 8);
        Assert.Contains("1 connections closed gracefully, 1 aborted", stopped.Message, StringComparison.Ordinal);
        await Assert.ThrowsAsync<SocketException>(async () =>
        {
            for (int i = 0; i < 100; i++)
            {
                await stubborn.SendAsync(new byte[1024], SocketFlags.None).WithTimeout();
            }
        });
    }

    [Fact]
    public async Task DrainingBudget_CutsTheOldestDrainsShort()
    {
        var options = new ManagedListenerOptions
        {
            MaxDrainingConnections = 2,
            Connection = new ManagedConnectionOptions { DrainTimeout = TimeSpan.FromMinutes(10), DrainIdleTimeout = TimeSpan.FromMinutes(10) },
        };
        await using ManagedListener listener = StartLoopback(options);
        var clients = new List<Socket>();
        var connections = new List<ManagedConnection>();
        try
        {
            for (int i = 0; i < 5; i++)
            {
                clients.Add(await ConnectAsync(listener));
                connections.Add(await listener.AcceptAsync().WithTimeout());
            }

            // Peers that never close: every close drains until a bound; start them oldest first.
            var closes = new List<Task<CloseResult>>();
            foreach (ManagedConnection connection in connections)
            {
                closes.Add(connection.CloseAsync().AsTask());
                Assert.True(listener.DrainingConnections <= 2);
            }

            for (int i = 0; i < 3; i++)
            {
                Assert.Equal(CloseOutcome.DrainBudgetExceeded, (await closes[i].WithTimeout()).Outcome);
            }

            Assert.False(closes[3].IsCompleted);
            Assert.False(closes[4].IsCompleted);
            Assert.Equal(2, listener.DrainingConnections);

            clients[3].Shutdown(SocketShutdown.Send);
            clients[4].Shutdown(SocketShutdown.Send);
            Assert.Equal(CloseOutcome.Graceful, (await closes[3].WithTimeout()).Outcome);
            Assert.Equal(CloseOutcome.Graceful, (await closes[4].WithTimeout()).Outcome);
            Assert.Equal(0, listener.DrainingConnections);
        }
        finally
        {
            clients.ForEach(c => c.Dispose());
        }
    }

    [Fact]
    public async Task MaxConnections_OverTheLimitIsClosedWithFinAndNotHandedOut()
    {
        await using ManagedListener listener = StartLoopback(new ManagedListenerOptions { MaxConnections = 2 });
        using Socket a = await ConnectAsync(listener);
        using Socket b = await ConnectAsync(listener);
        ManagedConnection first = await listener.AcceptAsync().WithTimeout();
        await listener.AcceptAsync().WithTimeout();

        Task<ManagedConnection> third = listener.AcceptAsync().AsTask();
        using Socket rejected = await ConnectAsync(listener);
        PeerReadResult seen = await Peer.ReadToEndAsync(rejected).WithTimeout();
        Assert.Equal(PeerEnd.Fin, seen.End);
        rejected.Shutdown(SocketShutdown.Send);
        Assert.False(third.IsCompleted);
        await TestTimeouts.WaitUntilAsync(() => listener.ActiveConnections == 2, "the rejected connection is released");

        // Once a slot frees, the next client is handed out.
        a.Shutdown(SocketShutdown.Send);
        await first.CloseAsync().WithTimeout();
        using Socket next = await ConnectAsync(listener);
        ManagedConnection accepted = await third.WithTimeout();
        Assert.Equal(next.LocalEndPoint, accepted.RemoteEndPoint);
    }

    [Fact]
    public async Task PeerThatResetsInTheBacklog_DoesNotStopTheListener()
    {
        await using ManagedListener listener = StartLoopback();
        using (Socket reset = await ConnectAsync(listener))
        {
            reset.LingerState = new LingerOption(true, 0);
        }

        using Socket good = await ConnectAsync(listener);
        ManagedConnection first = await listener.AcceptAsync().WithTimeout();
        if (!first.RemoteEndPoint!.Equals(good.LocalEndPoint))
        {
            // The reset one was handed out: it ends by itself as reset, and the good one follows.
            Assert.Equal(CloseOutcome.PeerReset, (await first.Completion.WithTimeout()).Outcome);
            first = await listener.AcceptAsync().WithTimeout();
        }

        Assert.Equal(good.LocalEndPoint, first.RemoteEndPoint);
        await good.SendAsync(new byte[] { 1 }, SocketFlags.None);
        Assert.Equal(1, await first.ReceiveAsync(new byte[4]).WithTimeout());
    }

    [Fact]
    public async Task StopAsync_CalledConcurrently_IsOneStop_AndDisposeAfterwardsIsHarmless()
    {
        ManagedListener listener = StartLoopback();
        using Socket client = await ConnectAsync(listener);
        ManagedConnection connection = await listener.AcceptAsync().WithTimeout();
        Task peer = Task.Run(async () => { await Peer.ReadToEndAsync(client); client.Shutdown(SocketShutdown.Send); });

        var stops = new Task[8];
        await Task.WhenAll(Enumerable.Range(0, stops.Length).Select(i => Task.Run(() => { stops[i] = listener.StopAsync(TimeSpan.FromSeconds(20)); }))).WithTimeout();
        Assert.True(stops.All(t => ReferenceEquals(t, stops[0])), "every concurrent StopAsync returns the one stop task");
        await stops[0].WithTimeout();
        await peer.WithTimeout();
        Assert.Equal(CloseOutcome.Graceful, (await connection.Completion.WithTimeout()).Outcome);
        await listener.DisposeAsync();
        Assert.Equal(0, listener.ActiveConnections);
    }

    [Fact]
    public async Task StopAccepting_RefusesNewConnections_LeavesTheAcceptedOneOpen_AndStopAsyncClosesItLater()
    {
        ManagedListener listener = StartLoopback();
        using Socket client = await ConnectAsync(listener);
        ManagedConnection connection = await listener.AcceptAsync().WithTimeout();
        ValueTask<ManagedConnection> pending = listener.AcceptAsync();

        listener.StopAccepting();
        listener.StopAccepting(); // a second call does nothing

        await Assert.ThrowsAsync<ObjectDisposedException>(() => pending.AsTask().WithTimeout());
        await Assert.ThrowsAsync<ObjectDisposedException>(() => listener.AcceptAsync().AsTask().WithTimeout());
        using (var late = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp))
        {
            SocketException refused = await Assert.ThrowsAsync<SocketException>(() => late.ConnectAsync(listener.LocalEndPoint).WithTimeout());
            Assert.Equal(SocketError.ConnectionRefused, refused.SocketErrorCode);
        }

        // The accepted connection is still its owner's: it carries data both ways.
        await Peer.SendPatternAsync(client, 3);
        byte[] received = new byte[3];
        Assert.Equal(3, await connection.ReceiveAsync(received).WithTimeout());
        await connection.SendAsync(received).WithTimeout();
        Assert.Equal(3, await client.ReceiveAsync(new byte[8]).WithTimeout());
        Assert.Equal(1, listener.ActiveConnections);
        Assert.Null(connection.FinalResult);

        // The stop afterwards closes it gracefully.
        Task stop = listener.StopAsync(TimeSpan.FromSeconds(20));
        Assert.Equal(PeerEnd.Fin, (await Peer.ReadToEndAsync(client).WithTimeout()).End);
        client.Shutdown(SocketShutdown.Send);
        await stop.WithTimeout();
        Assert.Equal(CloseOutcome.Graceful, (await connection.Completion.WithTimeout()).Outcome);
        Assert.Equal(0, listener.ActiveConnections);
    }

    [Fact]
    public async Task AcceptAsync_PendingWhenTheStopBegins_AndCalledAfterIt_ThrowsTheListenersObjectDisposed()
    {
        ManagedListener listener = StartLoopback();
        Task<ManagedConnection> pending = listener.AcceptAsync().AsTask();
        Assert.False(pending.IsCompleted, "nobody has connected");
        await listener.StopAsync(TimeSpan.FromSeconds(5)).WithTimeout();

        // Not the socket's own exception (the listening socket is disposed under the pending accept): the listener's.
        foreach (Task<ManagedConnection> accept in new[] { pending, listener.AcceptAsync().AsTask() })
        {
            var ex = await Assert.ThrowsAsync<ObjectDisposedException>(() => accept.WithTimeout());
            Assert.Equal(nameof(ManagedListener), ex.ObjectName);
            Assert.Contains("The listener is stopped (StopAccepting, StopAsync or DisposeAsync was called)", ex.Message, StringComparison.Ordinal);
        }
    }

    [Fact]
    public async Task Start_BadArguments_AndPortInUse()
    {
        Assert.Throws<ArgumentNullException>(() => ManagedListener.Start(null!));
        var notIp = Assert.Throws<ArgumentException>(() => ManagedListener.Start(new DnsEndPoint("localhost", 0)));
        Assert.Equal("localEndPoint", notIp.ParamName);
        Assert.Contains("needs an IPEndPoint", notIp.Message, StringComparison.Ordinal);
        Assert.Contains("got DnsEndPoint", notIp.Message, StringComparison.Ordinal);
        await using ManagedListener listener = StartLoopback();
        var ex = Assert.Throws<SocketException>(() => ManagedListener.Start(listener.LocalEndPoint));
        Assert.Equal(SocketError.AddressAlreadyInUse, ex.SocketErrorCode);
        var negative = Assert.Throws<ArgumentOutOfRangeException>(() => { _ = listener.StopAsync(TimeSpan.FromSeconds(-2)); });
        Assert.Equal("gracePeriod", negative.ParamName);
        Assert.Contains("must not be negative", negative.Message, StringComparison.Ordinal);

        var options = new ManagedListenerOptions();
        Assert.Throws<ArgumentOutOfRangeException>(() => options.Backlog = 0);
        Assert.Throws<ArgumentOutOfRangeException>(() => options.MaxConnections = 0);
        Assert.Throws<ArgumentOutOfRangeException>(() => options.MaxDrainingConnections = -1);
        Assert.Throws<ArgumentNullException>(() => options.Connection = null!);
    }
}
