using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using SafeSockets.Tests.Infrastructure;

namespace SafeSockets.Tests;

/// <summary>A library must not post its continuations to the caller's synchronization context: on a UI thread that blocks
/// on the task (<c>.Wait()</c> in a closing handler), a posted continuation never runs and the close or stop hangs for good.
/// Each operation is started on a <see cref="BlockedSynchronizationContext"/> and must complete with nothing posted to it.</summary>
public sealed class SynchronizationContextTests
{
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task CloseAsync_StartedOnABlockedContext_CompletesAndPostsNothing(bool cancellableToken)
    {
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync();
        using (peer)
        {
            using var cts = new CancellationTokenSource();
            var context = new BlockedSynchronizationContext();
            Task<CloseResult> close = context.Start(() => connection.CloseAsync(cancellableToken ? cts.Token : CancellationToken.None).AsTask());

            // The close waits in its drain (for the peer's FIN) while the context is the caller's.
            Assert.Equal(PeerEnd.Fin, (await Peer.ReadToEndAsync(peer).WithTimeout()).End);
            peer.Shutdown(SocketShutdown.Send);

            Assert.Equal(CloseOutcome.Graceful, (await close.WithTimeout()).Outcome);
            Assert.Equal(0, context.Posts);
        }
    }

    [Fact]
    public async Task CloseAsync_StartedOnABlockedContextWithASendInFlight_FlushesCompletesAndPostsNothing()
    {
        const int Size = 4 * 1024 * 1024;
        (Socket peer, ManagedConnection connection) = await Loopback.CreateSmallBufferManagedServerAsync();
        using (peer)
        {
            // The peer does not read yet: the send stays in flight, and the close's flush waits for it.
            Task send = connection.SendAsync(new byte[Size]).AsTask();
            Assert.False(send.IsCompleted);
            var context = new BlockedSynchronizationContext();
            Task<CloseResult> close = context.Start(() => connection.CloseAsync().AsTask());

            PeerReadResult read = await Peer.ReadToEndAsync(peer).WithTimeout();
            Assert.Equal(new PeerReadResult(Size, PeerEnd.Fin, null), read);
            peer.Shutdown(SocketShutdown.Send);

            await send.WithTimeout();
            Assert.Equal(CloseOutcome.Graceful, (await close.WithTimeout()).Outcome);
            Assert.Equal(0, context.Posts);
        }
    }

    [Fact]
    public async Task CloseAsync_AlreadyCancelled_WithAStuckSend_StartedOnABlockedContext_CompletesAndPostsNothing()
    {
        (Socket peer, ManagedConnection connection) = await Loopback.CreateSmallBufferManagedServerAsync();
        using (peer)
        {
            // The peer never reads: the send is stuck. A cancelled close gives up the flush at once, sends FIN (which fails
            // the stuck send) and waits for that send to end, still on the caller's thread.
            Task send = connection.SendAsync(new byte[4 * 1024 * 1024]).AsTask();
            Assert.False(send.IsCompleted);
            using var cts = new CancellationTokenSource();
            await cts.CancelAsync();
            var context = new BlockedSynchronizationContext();
            Task<CloseResult> close = context.Start(() => connection.CloseAsync(cts.Token).AsTask());

            await Assert.ThrowsAnyAsync<OperationCanceledException>(() => close.WithTimeout());
            Assert.Equal(CloseOutcome.DrainTimedOut, (await connection.Completion.WithTimeout()).Outcome);
            await Assert.ThrowsAsync<ObjectDisposedException>(() => send.WithTimeout());
            Assert.Equal(0, context.Posts);
        }
    }

    [Fact]
    public async Task SecondCloseAsync_StartedOnABlockedContextWhileTheFirstDrains_CompletesAndPostsNothing()
    {
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync();
        using (peer)
        {
            Task<CloseResult> first = connection.CloseAsync().AsTask();
            Assert.Equal(PeerEnd.Fin, (await Peer.ReadToEndAsync(peer).WithTimeout()).End);
            var context = new BlockedSynchronizationContext();
            Task<CloseResult> second = context.Start(() => connection.CloseAsync().AsTask());
            Assert.False(second.IsCompleted, "the second close waits for the teardown the first one runs");

            peer.Shutdown(SocketShutdown.Send);

            Assert.Equal(CloseOutcome.Graceful, (await first.WithTimeout()).Outcome);
            Assert.Equal(CloseOutcome.AlreadyClosed, (await second.WithTimeout()).Outcome);
            Assert.Equal(0, context.Posts);
        }
    }

    [Fact]
    public async Task TlsCloseAsync_StartedOnABlockedContext_CompletesAndPostsNothing()
    {
        await using TlsLoopback tls = await TestTls.OpenAsync(new ManagedConnectionOptions { DrainIdleTimeout = TimeSpan.FromMinutes(5), DrainTimeout = TimeSpan.FromMinutes(10) });
        (ManagedConnection server, Socket clientSocket, SslStream serverTls, SslStream clientTls) = tls;

        // The client's close_notify is already in the server's input when the close starts (no TCP FIN yet).
        await clientTls.ShutdownAsync().WithTimeout();
        Assert.Equal(0, await server.ReceiveAsync(Memory<byte>.Empty).WithTimeout());

        var context = new BlockedSynchronizationContext();
        Task<CloseResult> close = context.Start(() => serverTls.CloseAsync(server).AsTask());
        Assert.Equal(0, await clientTls.ReadAsync(new byte[16]).AsTask().WithTimeout());

        Assert.Equal(CloseOutcome.Graceful, (await close.WithTimeout()).Outcome);
        Assert.Equal(PeerEnd.Fin, (await Peer.ReadToEndAsync(clientSocket).WithTimeout()).End);
        Assert.Equal(0, context.Posts);
    }

    [Fact]
    public async Task ReceiveAsync_WakingTheParkedLoopOnTheCallersContext_TheLoopsPausedFlushResumesWithoutAPost()
    {
        // On-demand reads: a receive wakes the parked loop on the caller's thread, so the loop runs with the caller's
        // context current (a UI thread's). Its first read takes 4 KiB from the kernel into an input that pauses at 1 KiB: its
        // flush pauses there, on the caller's thread. When the application's next read frees the input, the flush must
        // resume where that read runs, never by a post to the context the loop was woken on: a UI thread would run the
        // loop's reads, or a blocked one would never run it and the loop would stop for good. (The context here runs what
        // is posted on the pool, so a post is counted, not a hang.) Two things keep the post away, each enough alone: the
        // input pipe is made with useSynchronizationContext: false (it then never captures a context), and the loop's
        // await of the flush is ConfigureAwait(false). Seen failing (one post) with both undone, passing with either one.
        const int Sent = 8 * 1024;
        var options = new ManagedConnectionOptions { MaxInputBufferSize = 1024 };
        (Socket peer, ManagedConnection connection) = await LazyWatchProbe.CreateKeptParkedServerAsync(options);
        await using (connection)
        using (peer)
        {
            Assert.Equal(Sent, peer.Send(Peer.Pattern(Sent)));
            await TestTimeouts.WaitUntilAsync(() => connection.Socket.Available == Sent, "the bytes reached our kernel");

            var context = new RecordingSynchronizationContext();
            byte[] buffer = new byte[Sent];
            ValueTask<int> first = context.Start(() => connection.ReceiveAsync(buffer.AsMemory(0, 16)));
            Assert.True(first.IsCompleted, "the receive did not complete on the caller's thread (the loop was not woken there)");
            Assert.Equal(16, await first);
            Assert.True(LazyWatchProbe.InputPaused(connection), "the loop's flush did not pause on the caller's thread");

            // Off the context: this read empties the input and resumes the paused flush.
            int received = 16;
            received += await connection.ReceiveAsync(buffer.AsMemory(received)).AsTask().WithTimeout();
            Assert.Equal(0, context.Posts);
            Assert.False(LazyWatchProbe.InputPaused(connection), "the read that emptied the input did not resume the loop's flush");

            while (received < Sent)
            {
                received += await connection.ReceiveAsync(buffer.AsMemory(received)).AsTask().WithTimeout();
            }

            Assert.Equal(Peer.Pattern(Sent), buffer);
            Assert.Equal(0, context.Posts);
        }
    }

    [Fact]
    public async Task Adopt_OnABlockedContext_TheConnectionStillReceives()
    {
        // The receive loop starts by yielding; it must not yield to the caller's context (it would never start).
        (Socket peer, Socket server) = await Loopback.CreatePairAsync();
        using (peer)
        {
            var context = new BlockedSynchronizationContext();
            ManagedConnection connection = context.Start(() => ManagedConnection.Adopt(server));
            try
            {
                await peer.SendAsync(new byte[] { 42 }, SocketFlags.None).WithTimeout();
                byte[] buffer = new byte[4];
                Assert.Equal(1, await connection.ReceiveAsync(buffer).WithTimeout());
                Assert.Equal(42, buffer[0]);
                Assert.Equal(0, context.Posts);
            }
            finally
            {
                connection.Abort();
            }
        }
    }

    [Fact]
    public async Task AcceptAsync_StartedOnABlockedContext_CompletesAndPostsNothing()
    {
        await using ManagedListener listener = ManagedListener.Start(new IPEndPoint(IPAddress.Loopback, 0));
        var context = new BlockedSynchronizationContext();
        Task<ManagedConnection> accept = context.Start(() => listener.AcceptAsync().AsTask());
        Assert.False(accept.IsCompleted, "nobody has connected yet");

        using var client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        await client.ConnectAsync(listener.LocalEndPoint).WithTimeout();

        ManagedConnection connection = await accept.WithTimeout();
        Assert.Equal(client.LocalEndPoint, connection.RemoteEndPoint);
        Assert.Equal(0, context.Posts);
        connection.Abort();
    }

    [Fact]
    public async Task AcceptAsync_RefusingAConnectionOverMaxConnections_OnABlockedContext_PostsNothing()
    {
        ManagedListener listener = ManagedListener.Start(new IPEndPoint(IPAddress.Loopback, 0), new ManagedListenerOptions { MaxConnections = 1 });
        using var kept = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        await kept.ConnectAsync(listener.LocalEndPoint).WithTimeout();
        ManagedConnection first = await listener.AcceptAsync().WithTimeout();

        // The second connection waits in the backlog: the accept takes it at once (on the caller's thread) and refuses it
        // with a graceful close, which then waits for the peer's FIN.
        using var refused = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        await refused.ConnectAsync(listener.LocalEndPoint).WithTimeout();
        var context = new BlockedSynchronizationContext();
        Task<ManagedConnection> accept = context.Start(() => listener.AcceptAsync().AsTask());

        Assert.Equal(PeerEnd.Fin, (await Peer.ReadToEndAsync(refused).WithTimeout()).End);
        refused.Shutdown(SocketShutdown.Send);
        await TestTimeouts.WaitUntilAsync(() => listener.ActiveConnections == 1, "the refused connection is released");
        Assert.False(accept.IsCompleted, "the refused connection was handed out");
        Assert.Equal(0, context.Posts);

        first.Abort();
        await listener.StopAsync(TimeSpan.FromSeconds(5)).WithTimeout();
        await Assert.ThrowsAsync<ObjectDisposedException>(() => accept.WithTimeout());
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task ListenerStop_StartedOnABlockedContext_CompletesAndPostsNothing(bool dispose)
    {
        ManagedListener listener = ManagedListener.Start(new IPEndPoint(IPAddress.Loopback, 0));
        using var client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        await client.ConnectAsync(listener.LocalEndPoint).WithTimeout();
        ManagedConnection connection = await listener.AcceptAsync().WithTimeout();

        var context = new BlockedSynchronizationContext();
        Task stop = context.Start(() => dispose ? listener.DisposeAsync().AsTask() : listener.StopAsync(TimeSpan.FromMinutes(1)));

        // The stop closes the connection gracefully: the peer sees our FIN, answers with its own.
        Assert.Equal(PeerEnd.Fin, (await Peer.ReadToEndAsync(client).WithTimeout()).End);
        client.Shutdown(SocketShutdown.Send);

        await stop.WithTimeout();
        Assert.Equal(CloseOutcome.Graceful, (await connection.Completion.WithTimeout()).Outcome);
        Assert.Equal(0, context.Posts);
    }

    /// <summary>A UI thread's context that is not blocked: it counts what is posted to it and runs it (on the pool, with
    /// itself current, as a UI thread would run it with its own), so a post the library should not make is counted and
    /// the connection still ends.</summary>
    private sealed class RecordingSynchronizationContext : SynchronizationContext
    {
        private int _posts;

        /// <summary>How many continuations were posted here.</summary>
        public int Posts => Volatile.Read(ref _posts);

        public override void Post(SendOrPostCallback d, object? state)
        {
            Interlocked.Increment(ref _posts);
            ThreadPool.UnsafeQueueUserWorkItem(
                static s =>
                {
                    (RecordingSynchronizationContext context, SendOrPostCallback callback, object? callbackState) = s;
                    SynchronizationContext? previous = Current;
                    SetSynchronizationContext(context);
                    try
                    {
                        callback(callbackState);
                    }
                    finally
                    {
                        SetSynchronizationContext(previous);
                    }
                },
                (this, d, state),
                preferLocal: false);
        }

        public override void Send(SendOrPostCallback d, object? state) =>
            throw new InvalidOperationException("The library never sends work to the caller's context.");

        public override SynchronizationContext CreateCopy() => this;

        /// <summary>Calls <paramref name="start"/> on this thread with this context current (as a UI event handler would),
        /// then puts the previous context back.</summary>
        public T Start<T>(Func<T> start) => SynchronizationContextScope.Run(this, start);
    }
}
