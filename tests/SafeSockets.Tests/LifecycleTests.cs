using System.Diagnostics.Tracing;
using SafeSockets.Diagnostics;
using System.Net;
using System.Net.Sockets;
using SafeSockets.Tests.Infrastructure;

namespace SafeSockets.Tests;

public sealed class LifecycleTests
{
    [Fact]
    public async Task State_WalksOpenSendShutdownBothShutdownClosingClosed()
    {
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync(new ManagedConnectionOptions { DrainTimeout = TimeSpan.FromMinutes(5) });
        using (peer)
        {
            Assert.Equal(ConnectionState.Open, connection.State);
            await connection.ShutdownSendAsync().WithTimeout();
            Assert.Equal(ConnectionState.SendShutdown, connection.State);
            peer.Shutdown(SocketShutdown.Send);
            await connection.PeerClosed.WhenCanceled().WithTimeout();
            Assert.Equal(ConnectionState.BothShutdown, connection.State);
            Assert.Equal(CloseOutcome.Graceful, (await connection.CloseAsync().WithTimeout()).Outcome);
            Assert.Equal(ConnectionState.Closed, connection.State);
        }
    }

    [Fact]
    public async Task State_WalksOpenPeerShutdownBothShutdown()
    {
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync();
        await using (connection)
        using (peer)
        {
            peer.Shutdown(SocketShutdown.Send);
            await connection.PeerClosed.WhenCanceled().WithTimeout();
            Assert.Equal(ConnectionState.PeerShutdown, connection.State);
            await connection.ShutdownSendAsync().WithTimeout();
            Assert.Equal(ConnectionState.BothShutdown, connection.State);
        }
    }

    [Fact]
    public async Task State_IsClosingWhileDrainingThenClosed()
    {
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync();
        using (peer)
        {
            Task<CloseResult> close = connection.CloseAsync().AsTask();
            Assert.Equal(ConnectionState.Closing, connection.State);
            Assert.Equal(PeerEnd.Fin, (await Peer.ReadToEndAsync(peer).WithTimeout()).End);
            Assert.Equal(ConnectionState.Closing, connection.State);
            peer.Shutdown(SocketShutdown.Send);
            await close.WithTimeout();
            Assert.Equal(ConnectionState.Closed, connection.State);
        }
    }

    [Fact]
    public async Task OperationsAfterClose_ThrowObjectDisposed()
    {
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync();
        using (peer)
        {
            EndPoint? local = connection.LocalEndPoint;
            Assert.Equal(peer.RemoteEndPoint, local);
            peer.Shutdown(SocketShutdown.Send);
            await connection.CloseAsync().WithTimeout();

            await Assert.ThrowsAsync<ObjectDisposedException>(() => connection.SendAsync(new byte[1]).AsTask());
            await Assert.ThrowsAsync<ObjectDisposedException>(() => connection.ReceiveAsync(new byte[1]).AsTask());
            await Assert.ThrowsAsync<ObjectDisposedException>(() => connection.ShutdownSendAsync().AsTask());
            Assert.Equal(CloseOutcome.AlreadyClosed, (await connection.CloseAsync().WithTimeout()).Outcome);
            await connection.DisposeAsync();
            Assert.Equal(local, connection.LocalEndPoint);
            Assert.Equal(peer.LocalEndPoint, connection.RemoteEndPoint);
        }
    }

    [Fact]
    public async Task ReceiveAsync_PendingWhenCloseStarts_ThrowsObjectDisposed()
    {
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync();
        using (peer)
        {
            Task<int> receive = connection.ReceiveAsync(new byte[10]).AsTask();
            Task<CloseResult> close = connection.CloseAsync().AsTask();
            await Assert.ThrowsAsync<ObjectDisposedException>(() => receive.WithTimeout());
            peer.Shutdown(SocketShutdown.Send);
            Assert.Equal(CloseOutcome.Graceful, (await close.WithTimeout()).Outcome);
        }
    }

    [Fact]
    public async Task CloseAbortDispose_FromManyThreads_ReleaseOnceAndEndClosedOrAborted()
    {
        for (int round = 0; round < 200; round++)
        {
            (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync(new ManagedConnectionOptions { DrainTimeout = TimeSpan.FromSeconds(10) });
            using (peer)
            {
                peer.Shutdown(SocketShutdown.Send);
                // Released all at once; each waiter resumes on its own pool thread (no blocking barrier: it would starve the pool).
                var start = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                bool abort = round % 2 == 0;
                Task<CloseResult>[] closes =
                [
                    Task.Run(async () => { await start.Task; return await connection.CloseAsync(); }),
                    Task.Run(async () => { await start.Task; return await connection.CloseAsync(); }),
                    Task.Run(async () => { await start.Task; await connection.DisposeAsync(); return default(CloseResult); }),
                    Task.Run(async () => { await start.Task; if (abort) { connection.Abort(); } return default(CloseResult); }),
                ];
                start.SetResult();
                CloseResult[] results = await Task.WhenAll(closes).WithTimeout();

                Assert.Equal(1, connection.ReleaseCount);
                CloseResult final = await connection.Completion.WithTimeout();
                ConnectionState state = connection.State;
                string story = $"round {round}: State {state}, Completion {final}, closes {results[0]} / {results[1]}";
                if (!abort)
                {
                    // Only graceful closes, and the peer had already closed its side: exactly one way to end.
                    Assert.Equal(CloseOutcome.Graceful, final.Outcome);
                    Assert.Equal(ConnectionState.Closed, state);
                }

                // The state and the recorded outcome agree.
                Assert.True((state == ConnectionState.Aborted) == (final.Outcome == CloseOutcome.Aborted), story);
                Assert.True((state == ConnectionState.Closed) == (final.Outcome != CloseOutcome.Aborted), story);

                // Exactly one of the two CloseAsync calls reports the close, exactly as Completion does; the other says AlreadyClosed.
                CloseResult[] reporting = [.. results[..2].Where(r => r.Outcome != CloseOutcome.AlreadyClosed)];
                Assert.True(reporting.Length == 1, story);
                Assert.Equal(final, reporting[0]);
            }
        }
    }

    [Fact]
    public async Task CloseAsync_Second_ReturnsAlreadyClosed()
    {
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync();
        using (peer)
        {
            peer.Shutdown(SocketShutdown.Send);
            Assert.Equal(CloseOutcome.Graceful, (await connection.CloseAsync().WithTimeout()).Outcome);
            Assert.Equal(CloseOutcome.AlreadyClosed, (await connection.CloseAsync().WithTimeout()).Outcome);
        }
    }

    [Fact]
    public async Task ConnectAsync_ToListener_ExchangesAndClosesGracefully()
    {
        using Socket listener = Loopback.Listen();
        Task<Socket> accept = listener.AcceptAsync();
        await using ManagedConnection connection = await ManagedConnection.ConnectAsync(listener.LocalEndPoint!).WithTimeout();
        using Socket server = await accept.WithTimeout();

        Assert.Equal(listener.LocalEndPoint, connection.RemoteEndPoint);
        await connection.SendAsync(new byte[] { 1, 2, 3 }).WithTimeout();
        await connection.ShutdownSendAsync().WithTimeout();
        PeerReadResult seen = await Peer.ReadToEndAsync(server).WithTimeout();
        Assert.Equal((3, PeerEnd.Fin), (seen.Bytes, seen.End));
        server.Shutdown(SocketShutdown.Send);
        Assert.Equal(CloseOutcome.Graceful, (await connection.CloseAsync().WithTimeout()).Outcome);
    }

    [Fact]
    public async Task ConnectAsync_ToDnsEndPoint_Connects()
    {
        using Socket listener = Loopback.Listen();
        Task<Socket> accept = listener.AcceptAsync();
        await using ManagedConnection connection = await ManagedConnection.ConnectAsync(new DnsEndPoint("localhost", listener.Port())).WithTimeout();
        using Socket server = await accept.WithTimeout();
        Assert.Equal(ConnectionState.Open, connection.State);
    }

    [Fact]
    public async Task ConnectAsync_Canceled_ThrowsOperationCanceled()
    {
        using Socket listener = Loopback.Listen();
        using var cts = new CancellationTokenSource();
        await cts.CancelAsync();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => ManagedConnection.ConnectAsync(listener.LocalEndPoint!, null, cts.Token).AsTask());
    }
}

[Collection(ExclusiveTests.Name)]
public sealed class DescriptorTests
{
    /// <summary>Cancels a token when the runtime starts a connect (its "System.Net.Sockets" ConnectStart event): the
    /// moment between our last look at the token and the operation being in progress.</summary>
    private sealed class CancelAtConnectStart : EventListener
    {
        public static CancellationTokenSource? Armed;

        protected override void OnEventSourceCreated(EventSource eventSource)
        {
            if (eventSource.Name == "System.Net.Sockets")
            {
                EnableEvents(eventSource, EventLevel.Informational);
            }
        }

        protected override void OnEventWritten(EventWrittenEventArgs eventData)
        {
            if (eventData.EventName == "ConnectStart" && Interlocked.Exchange(ref Armed, null) is { } cts)
            {
                cts.Cancel();
            }
        }
    }

    /// <summary>Connects raw sockets to <paramref name="listener"/> until one sticks in SYN_SENT: the backlog is full, and
    /// the kernel drops further SYNs, so the next connect stays pending. On loopback a handshake completes inside the
    /// connect call unless the SYN was dropped, so a socket seen in SYN_SENT is stuck. The caller disposes the fillers.</summary>
    private static async Task<List<Socket>> FillBacklogAsync(Socket listener)
    {
        var fillers = new List<Socket>();
        for (int i = 0; i < 8; i++)
        {
            var filler = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            fillers.Add(filler);
            filler.Bind(new IPEndPoint(IPAddress.Loopback, 0));
            Task connect = filler.ConnectAsync(listener.LocalEndPoint!);
            await TestTimeouts.WaitUntilAsync(
                () => connect.IsCompleted || TcpSocketTable.GetState(filler.LocalEndPoint.Port(), listener.Port()) == TcpState.SynSent,
                "the connect completes or sticks in SYN_SENT");
            if (!connect.IsCompleted)
            {
                return fillers;
            }
        }

        throw new InvalidOperationException("the backlog never filled up");
    }

    [Fact]
    public async Task ConnectAsync_CanceledAsTheConnectStarts_IsNotLost()
    {
        // A full backlog keeps the connect pending; a cancel that lands before the operation is in progress used to be
        // ignored (Socket.CancelConnectAsync acts only on one in progress), leaving the connect to the kernel's ~2 min.
        using Socket listener = Loopback.Listen(backlog: 1);
        using var events = new CancelAtConnectStart();
        List<Socket> fillers = await FillBacklogAsync(listener);
        try
        {
            using var cts = new CancellationTokenSource();
            Volatile.Write(ref CancelAtConnectStart.Armed, cts);
            await Assert.ThrowsAnyAsync<OperationCanceledException>(
                () => ManagedConnection.ConnectAsync(listener.LocalEndPoint!, null, cts.Token).AsTask().WaitAsync(TimeSpan.FromSeconds(10)));
            Assert.True(cts.IsCancellationRequested, "the event fired");
        }
        finally
        {
            fillers.ForEach(filler => filler.Dispose());
        }
    }

    private static async Task ConnectAndCancelAsync(Socket listener)
    {
        using var cts = new CancellationTokenSource();
        Task<ManagedConnection> pending = ManagedConnection.ConnectAsync(listener.LocalEndPoint!, null, cts.Token).AsTask();
        Assert.False(pending.IsCompleted);
        await cts.CancelAsync();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => pending.WithTimeout());
    }

    [Fact]
    public async Task ConnectAsync_CanceledWhilePending_ThrowsOperationCanceledAndLeaksNoDescriptor()
    {
        using Socket listener = Loopback.Listen(backlog: 1);
        List<Socket> fillers = await FillBacklogAsync(listener);
        try
        {
            // The first one also warms up what the runtime opens once (its socket engines' epoll descriptors).
            await ConnectAndCancelAsync(listener);
            int before = Directory.GetFiles("/proc/self/fd").Length;
            for (int i = 0; i < 10; i++)
            {
                await ConnectAndCancelAsync(listener);
            }

            int after = Directory.GetFiles("/proc/self/fd").Length;
            Assert.True(after - before < 3, $"descriptors grew from {before} to {after} over 10 cancelled connects");
        }
        finally
        {
            fillers.ForEach(filler => filler.Dispose());
        }
    }

    [Fact]
    public async Task ConnectAsync_EveryFailingEndPointKind_SurfacesSocketExceptionAndLeaksNoDescriptor()
    {
        // A host name that cannot resolve (.invalid is reserved), a DnsEndPoint whose only address refuses, and a Unix
        // socket path nobody listens on: each fails with a SocketException and leaves no descriptor behind.
        using var placeholder = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        placeholder.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        EndPoint[] targets =
        [
            new DnsEndPoint("safesockets-test.invalid", 80),
            new DnsEndPoint("127.0.0.1", ((IPEndPoint)placeholder.LocalEndPoint!).Port),
            new UnixDomainSocketEndPoint(Path.Combine(Path.GetTempPath(), $"safesockets-none-{Guid.NewGuid():N}.sock")),
        ];
        foreach (EndPoint target in targets)
        {
            await Assert.ThrowsAsync<SocketException>(() => ManagedConnection.ConnectAsync(target).AsTask().WaitAsync(TestTimeouts.Passing));
        }

        int before = Directory.GetFiles("/proc/self/fd").Length;
        for (int i = 0; i < 20; i++)
        {
            foreach (EndPoint target in targets)
            {
                await Assert.ThrowsAsync<SocketException>(() => ManagedConnection.ConnectAsync(target).AsTask().WaitAsync(TestTimeouts.Passing));
            }
        }

        int after = Directory.GetFiles("/proc/self/fd").Length;
        Assert.True(after - before < 5, $"descriptors grew from {before} to {after} over 60 failed connects");
    }

    [Fact]
    public async Task ConnectAsync_Refused_SurfacesSocketExceptionAndLeaksNoDescriptor()
    {
        // A bound but not listening socket: connecting to its port is refused, and no other process can take it.
        using var placeholder = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        placeholder.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        EndPoint target = placeholder.LocalEndPoint!;

        // Warm up whatever the runtime opens once (epoll, pipes) before counting.
        await Assert.ThrowsAsync<SocketException>(() => ManagedConnection.ConnectAsync(target).AsTask());
        int before = Directory.GetFiles("/proc/self/fd").Length;
        for (int i = 0; i < 50; i++)
        {
            var ex = await Assert.ThrowsAsync<SocketException>(() => ManagedConnection.ConnectAsync(target).AsTask());
            Assert.Equal(SocketError.ConnectionRefused, ex.SocketErrorCode);
        }

        int after = Directory.GetFiles("/proc/self/fd").Length;
        Assert.True(after - before < 5, $"descriptors grew from {before} to {after} over 50 failed connects");
    }
}
