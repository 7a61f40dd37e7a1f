using System.IO.Pipelines;
using System.Net.Sockets;
using SafeSockets.Tests.Infrastructure;

namespace SafeSockets.Tests;

/// <summary>Real peers misbehaving on loopback: resets at every stage, zero windows, silence, application faults.</summary>
public sealed class FaultTests
{
    private static void Reset(Socket peer)
    {
        peer.LingerState = new LingerOption(true, 0);
        peer.Dispose();
    }

    [Fact]
    public async Task PeerResetsDuringOurDrain_OutcomePeerReset_SocketReleased()
    {
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync();
        Task<CloseResult> close = connection.CloseAsync().AsTask();
        Assert.Equal(PeerEnd.Fin, (await Peer.ReadToEndAsync(peer).WithTimeout()).End);
        Reset(peer);

        Assert.Equal(CloseOutcome.PeerReset, (await close.WithTimeout()).Outcome);
        Assert.Equal(ConnectionState.Closed, connection.State);
        Assert.Equal(1, connection.ReleaseCount);
    }

    [Fact]
    public async Task PeerResetsDuringOurSend_SendThrowsConnectionReset_NothingEscapes()
    {
        (Socket peer, ManagedConnection connection) = await Loopback.CreateSmallBufferManagedServerAsync();
        Task send = connection.SendAsync(new byte[32 * 1024 * 1024]).AsTask();
        Assert.False(send.IsCompleted);
        Reset(peer);

        await Assert.ThrowsAsync<ConnectionResetException>(() => send.WithTimeout());
        Assert.Equal(CloseOutcome.PeerReset, (await connection.Completion.WithTimeout()).Outcome);
    }

    [Fact]
    public async Task PeerResetsDuringOurHalfClose_HalfCloseFailsClearly()
    {
        (Socket peer, ManagedConnection connection) = await Loopback.CreateSmallBufferManagedServerAsync();
        Task send = connection.SendAsync(new byte[32 * 1024 * 1024]).AsTask();
        Task shutdown = connection.ShutdownSendAsync().AsTask();
        Assert.False(shutdown.IsCompleted);
        Reset(peer);

        await Assert.ThrowsAsync<ConnectionResetException>(() => send.WithTimeout());
        // Whoever saw the reset first (the send, or the receive loop), the teardown's reason is the peer's reset: the
        // waiting half-close reports exactly that.
        await Assert.ThrowsAsync<ConnectionResetException>(() => shutdown.WithTimeout());
        Assert.Equal(CloseOutcome.PeerReset, (await connection.Completion.WithTimeout()).Outcome);
    }

    [Fact]
    public async Task PeerStopsReading_ZeroWindowFlushBeforeFin_CloseIsStillBounded()
    {
        var options = new ManagedConnectionOptions { DrainTimeout = TimeSpan.FromMilliseconds(400) };
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync(options);
        using (peer)
        {
            // The peer never reads: this send can never finish.
            Task send = connection.SendAsync(new byte[64 * 1024 * 1024]).AsTask();
            CloseResult result = await connection.CloseAsync().WithTimeout();

            Assert.Equal(CloseOutcome.DrainTimedOut, result.Outcome);
            Assert.Equal(ConnectionState.Closed, connection.State);
            await Assert.ThrowsAsync<ObjectDisposedException>(() => send.WithTimeout());
        }
    }

    [Fact]
    public async Task PeerHalfClosesThenResets_PeerClosedFiresOnce_OutcomePeerReset()
    {
        var options = new ManagedConnectionOptions { CloseWaitTimeout = TimeSpan.FromMinutes(5) };
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync(options);
        int fired = 0;
        connection.PeerClosed.Register(() => Interlocked.Increment(ref fired));
        peer.Shutdown(SocketShutdown.Send);
        await connection.PeerClosed.WhenCanceled().WithTimeout();
        Assert.Equal(ConnectionState.PeerShutdown, connection.State);

        // The application answers; the peer resets instead of reading.
        await connection.SendAsync(new byte[100]).WithTimeout();
        Reset(peer);

        Assert.Equal(CloseOutcome.PeerReset, (await connection.Completion.WithTimeout()).Outcome);
        Assert.Equal(1, Volatile.Read(ref fired));
    }

    [Fact]
    public async Task PeerNeverSendsFin_AndNeverReads_BothBoundsHold()
    {
        var options = new ManagedConnectionOptions { DrainTimeout = TimeSpan.FromMilliseconds(300), DrainIdleTimeout = TimeSpan.FromMilliseconds(100) };
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync(options);
        using (peer)
        {
            await connection.SendAsync(new byte[1000]).WithTimeout();
            CloseResult result = await connection.CloseAsync().WithTimeout();
            Assert.Equal(CloseOutcome.DrainTimedOut, result.Outcome);
            Assert.True(result.Elapsed < TimeSpan.FromSeconds(10));
        }
    }

    [Fact]
    public async Task UserCodeFaultsWhileReadingThePipe_ConnectionStillClosesGracefully()
    {
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync();
        using (peer)
        {
            PipeReader input = connection.Transport.Input;
            await Peer.SendPatternAsync(peer, 100);
            try
            {
                ReadResult result = await input.ReadAsync().AsTask().WithTimeout();
                throw new InvalidDataException("the application's parser failed");
            }
            catch (InvalidDataException ex)
            {
                await input.CompleteAsync(ex); // what a pipe consumer does with its own failure
            }

            Task<CloseResult> close = connection.CloseAsync().AsTask();
            Assert.Equal(PeerEnd.Fin, (await Peer.ReadToEndAsync(peer).WithTimeout()).End);
            peer.Shutdown(SocketShutdown.Send);
            Assert.Equal(CloseOutcome.Graceful, (await close.WithTimeout()).Outcome);
        }
    }

    [Fact]
    public async Task CancellationAtEveryStage_LeavesAUsableOrCleanlyClosedConnection()
    {
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync();
        using (peer)
        {
            using var canceled = new CancellationTokenSource();
            await canceled.CancelAsync();

            // Receive and send cancelled before they start: nothing consumed, nothing sent.
            await Assert.ThrowsAnyAsync<OperationCanceledException>(() => connection.ReceiveAsync(new byte[4], canceled.Token).AsTask());
            await Assert.ThrowsAnyAsync<OperationCanceledException>(() => connection.SendAsync(new byte[4], canceled.Token).AsTask());

            // A send cancelled while stuck on a full window.
            using var sendCts = new CancellationTokenSource();
            Task stuck = connection.SendAsync(new byte[64 * 1024 * 1024], sendCts.Token).AsTask();
            await sendCts.CancelAsync();
            await Assert.ThrowsAnyAsync<OperationCanceledException>(() => stuck.WithTimeout());

            // A half-close cancelled while waiting for sends leaves the send side usable... (the gate reopens)
            await connection.ShutdownSendAsync().WithTimeout();
            Assert.Equal(ConnectionState.SendShutdown, connection.State);

            // A close cancelled mid-drain still releases the socket.
            using var closeCts = new CancellationTokenSource();
            Task<CloseResult> close = connection.CloseAsync(closeCts.Token).AsTask();
            await closeCts.CancelAsync();
            await Assert.ThrowsAnyAsync<OperationCanceledException>(() => close.WithTimeout());
            Assert.Equal(ConnectionState.Closed, connection.State);
        }
    }

    [Fact]
    public async Task ShutdownSendCanceledWhileWaitingForASend_LeavesTheSendSideOpen()
    {
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync();
        await using (connection)
        using (peer)
        {
            Task big = connection.SendAsync(new byte[16 * 1024 * 1024]).AsTask();
            using var cts = new CancellationTokenSource();
            Task shutdown = connection.ShutdownSendAsync(cts.Token).AsTask();
            await cts.CancelAsync();
            await Assert.ThrowsAnyAsync<OperationCanceledException>(() => shutdown.WithTimeout());
            Assert.Equal(ConnectionState.Open, connection.State);

            Task<PeerReadResult> read = Peer.ReadToEndAsync(peer);
            await big.WithTimeout();
            await connection.SendAsync(new byte[] { 1 }).WithTimeout(); // still allowed
            await connection.ShutdownSendAsync().WithTimeout();
            PeerReadResult seen = await read.WithTimeout();
            Assert.Equal((16 * 1024 * 1024 + 1L, PeerEnd.Fin), (seen.Bytes, seen.End));
        }
    }

    [Fact]
    public async Task ApplicationDisposesTheAdoptedSocket_UnderAWatchedLoop_TheLoopsFaultClosesTheConnection_Faulted()
    {
        // Nobody is closing: the application disposes the socket it handed over, under the loop's pending read (PeerClosed
        // keeps one pending). The loop's unexpected failure must end the connection itself (Faulted, logged), or the
        // connection would stay Open with no loop, its Completion never completing.
        var logger = new CapturingLogger();
        (Socket peer, Socket server) = await Loopback.CreatePairAsync();
        using (peer)
        {
            ManagedConnection connection = ManagedConnection.Adopt(server, new ManagedConnectionOptions { Logger = logger });
            CancellationToken peerClosed = connection.PeerClosed;
            server.Dispose();

            await TestTimeouts.WaitUntilAsync(() => connection.ReceiveLoopEnded, "the receive loop ends on the disposed socket");
            Assert.True(connection.State != ConnectionState.Open, "the loop ended on its fault and left the connection Open");

            CloseResult result = await connection.Completion.WithTimeout();
            Assert.Equal(CloseOutcome.Faulted, result.Outcome);
            Assert.Equal(1, connection.ReleaseCount);
            await peerClosed.WhenCanceled().WithTimeout();
            LogEntry error = await logger.FirstError.WithTimeout();
            Assert.Equal(9, error.Id);
            Assert.Contains("receive loop", error.Message, StringComparison.Ordinal);
        }
    }

    [Fact]
    public async Task DisposeWithoutClose_IsAGracefulClose()
    {
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync();
        using (peer)
        {
            await Peer.SendPatternAsync(peer, 5000); // unread by the application
            Task dispose = connection.DisposeAsync().AsTask();
            Assert.Equal(PeerEnd.Fin, (await Peer.ReadToEndAsync(peer).WithTimeout()).End);
            peer.Shutdown(SocketShutdown.Send);
            await dispose.WithTimeout();
            Assert.Equal(CloseOutcome.Graceful, (await connection.Completion.WithTimeout()).Outcome);
        }
    }
}
