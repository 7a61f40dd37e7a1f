using System.Net.Sockets;
using Microsoft.Extensions.Time.Testing;
using SafeSockets.Diagnostics;
using SafeSockets.Tests.Infrastructure;

namespace SafeSockets.Tests;

public sealed class PeerFinDetectionTests
{
    [Fact]
    public async Task PeerFin_WhileApplicationIsNotReading_FiresPeerClosedAndMovesToPeerShutdown()
    {
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync();
        await using (connection)
        using (peer)
        {
            CancellationToken peerClosed = connection.PeerClosed;
            Assert.False(peerClosed.IsCancellationRequested);

            peer.Shutdown(SocketShutdown.Send);
            await peerClosed.WhenCanceled().WithTimeout();

            Assert.Equal(ConnectionState.PeerShutdown, connection.State);
            // A token fetched after the fact is already cancelled.
            Assert.True(connection.PeerClosed.IsCancellationRequested);
        }
    }

    [Fact]
    public async Task PeerFin_HalfCloseProtocol_ApplicationAnswersAfterFinThenCloses()
    {
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync();
        using (peer)
        {
            // The classic "send request, FIN, read the answer to EOF" client.
            await Peer.SendPatternAsync(peer, 5000);
            peer.Shutdown(SocketShutdown.Send);

            byte[] request = await Peer.ReadAllAsync(connection).WithTimeout();
            Assert.Equal(5000, request.Length);
            Assert.True(connection.PeerClosed.IsCancellationRequested);

            byte[] answer = Peer.Pattern(200_000);
            Task<PeerReadResult> read = Peer.ReadToEndAsync(peer, keepData: true);
            await connection.SendAsync(answer).WithTimeout();
            CloseResult result = await connection.CloseAsync().WithTimeout();

            PeerReadResult seen = await read.WithTimeout();
            Assert.Equal(CloseOutcome.Graceful, result.Outcome);
            Assert.Equal(PeerEnd.Fin, seen.End);
            Assert.Equal(answer, seen.Data);
        }
    }

    [Fact]
    public async Task PeerFin_ApplicationNeverCloses_ConnectionClosesItselfAfterCloseWaitTimeoutWithFin()
    {
        var options = new ManagedConnectionOptions { CloseWaitTimeout = TimeSpan.FromMilliseconds(200) };
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync(options);
        using (peer)
        {
            int localPort = connection.LocalEndPoint.Port();
            int peerPort = peer.Port();

            // Unread data sits in front of the FIN and the application never reads it.
            await Peer.SendPatternAsync(peer, 20_000);
            peer.Shutdown(SocketShutdown.Send);

            CloseResult result = await connection.Completion.WithTimeout();
            Assert.Equal(CloseOutcome.CloseWaitTimedOut, result.Outcome);
            Assert.Equal(ConnectionState.Closed, connection.State);
            Assert.Equal(PeerEnd.Fin, (await Peer.ReadToEndAsync(peer).WithTimeout()).End);
            Assert.NotEqual(TcpState.CloseWait, TcpSocketTable.GetState(localPort, peerPort));

            // The application hears about it: the first close reports the forced close, later ones AlreadyClosed.
            Assert.Equal(CloseOutcome.CloseWaitTimedOut, (await connection.CloseAsync().WithTimeout()).Outcome);
            Assert.Equal(CloseOutcome.AlreadyClosed, (await connection.CloseAsync().WithTimeout()).Outcome);
            var ex = await Assert.ThrowsAsync<ObjectDisposedException>(() => connection.SendAsync(new byte[1]).AsTask());
            Assert.Contains("CloseWaitTimeout", ex.Message, StringComparison.Ordinal);
        }
    }

    [Fact]
    public async Task OptionsChangedAfterAConnectionWasCreated_ApplyToLaterConnectionsOnly()
    {
        // Connections share one snapshot of their options object; a setter makes a new one for later connections.
        var clock = new FakeTimeProvider();
        var options = new ManagedConnectionOptions { TimeProvider = clock, CloseWaitTimeout = TimeSpan.FromSeconds(10) };
        (Socket firstPeer, ManagedConnection first) = await Loopback.CreateManagedServerAsync(options);
        options.CloseWaitTimeout = TimeSpan.FromSeconds(1);
        (Socket secondPeer, ManagedConnection second) = await Loopback.CreateManagedServerAsync(options);
        using (firstPeer)
        using (secondPeer)
        {
            firstPeer.Shutdown(SocketShutdown.Send);
            secondPeer.Shutdown(SocketShutdown.Send);
            await first.PeerClosed.WhenCanceled().WithTimeout();
            await second.PeerClosed.WhenCanceled().WithTimeout();

            clock.Advance(TimeSpan.FromSeconds(1));
            Assert.Equal(CloseOutcome.CloseWaitTimedOut, (await second.Completion.WithTimeout()).Outcome);
            Assert.Equal(ConnectionState.PeerShutdown, first.State);

            clock.Advance(TimeSpan.FromSeconds(9));
            Assert.Equal(CloseOutcome.CloseWaitTimedOut, (await first.Completion.WithTimeout()).Outcome);
            Assert.Equal(PeerEnd.Fin, (await Peer.ReadToEndAsync(firstPeer).WithTimeout()).End);
            Assert.Equal(PeerEnd.Fin, (await Peer.ReadToEndAsync(secondPeer).WithTimeout()).End);
        }
    }

    [Fact]
    public async Task PeerFin_WithZeroCloseWaitTimeout_ClosesAsSoonAsFinArrives()
    {
        var options = new ManagedConnectionOptions { CloseWaitTimeout = TimeSpan.Zero };
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync(options);
        using (peer)
        {
            peer.Shutdown(SocketShutdown.Send);
            Assert.Equal(PeerEnd.Fin, (await Peer.ReadToEndAsync(peer).WithTimeout()).End);
            Assert.Equal(CloseOutcome.CloseWaitTimedOut, (await connection.Completion.WithTimeout()).Outcome);
        }
    }

    [Fact]
    public async Task PeerFin_ApplicationClosesBeforeTimeout_GuardDoesNotFireLater()
    {
        var options = new ManagedConnectionOptions { CloseWaitTimeout = TimeSpan.FromMilliseconds(100) };
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync(options);
        using (peer)
        {
            peer.Shutdown(SocketShutdown.Send);
            await connection.PeerClosed.WhenCanceled().WithTimeout();
            CloseResult result = await connection.CloseAsync().WithTimeout();
            Assert.Equal(CloseOutcome.Graceful, result.Outcome);
            Assert.Equal(result, await connection.Completion.WithTimeout());
        }
    }

    [Fact]
    public async Task PeerReset_FiresPeerClosed_AndLaterOperationsThrowConnectionReset()
    {
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync();
        CancellationToken peerClosed = connection.PeerClosed;
        peer.LingerState = new LingerOption(true, 0);
        peer.Dispose();

        await peerClosed.WhenCanceled().WithTimeout();
        await Assert.ThrowsAsync<ConnectionResetException>(() => connection.SendAsync(new byte[] { 1 }).AsTask());
        await Assert.ThrowsAsync<ConnectionResetException>(() => connection.ReceiveAsync(new byte[1]).AsTask());
        await Assert.ThrowsAsync<ConnectionResetException>(() => connection.ShutdownSendAsync().AsTask());

        // The socket is released promptly, and the first close says why.
        Assert.Equal(CloseOutcome.PeerReset, (await connection.Completion.WithTimeout()).Outcome);
        Assert.Equal(CloseOutcome.PeerReset, (await connection.CloseAsync().WithTimeout()).Outcome);
        Assert.Equal(CloseOutcome.AlreadyClosed, (await connection.CloseAsync().WithTimeout()).Outcome);
    }

    [Fact]
    public async Task PeerReset_WhileApplicationIsReading_ReceiveThrowsConnectionReset()
    {
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync();
        Task<int> receive = connection.ReceiveAsync(new byte[10]).AsTask();
        peer.LingerState = new LingerOption(true, 0);
        peer.Dispose();

        await Assert.ThrowsAsync<ConnectionResetException>(() => receive.WithTimeout());
        await connection.DisposeAsync();
    }

    [Fact]
    public async Task ReceiveAsync_ReturnsEveryByteThenZeroAtPeerFin()
    {
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync();
        await using (connection)
        using (peer)
        {
            byte[] sent = Peer.Pattern(1_000_000);
            Task send = Task.Run(async () =>
            {
                await Peer.SendPatternAsync(peer, sent.Length);
                peer.Shutdown(SocketShutdown.Send);
            });

            Assert.Equal(sent, await Peer.ReadAllAsync(connection).WithTimeout());
            await send.WithTimeout();
            Assert.Equal(0, await connection.ReceiveAsync(new byte[10]).WithTimeout());
        }
    }

    [Fact]
    public async Task ReceiveAsync_Concurrent_ThrowsInvalidOperation()
    {
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync();
        await using (connection)
        using (peer)
        {
            Task<int> first = connection.ReceiveAsync(new byte[10]).AsTask();
            await Assert.ThrowsAsync<InvalidOperationException>(() => connection.ReceiveAsync(new byte[10]).AsTask());
            await Peer.SendPatternAsync(peer, 3);
            Assert.Equal(3, await first.WithTimeout());
        }
    }

    [Fact]
    public async Task ReceiveAsync_Canceled_LosesNoData()
    {
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync();
        await using (connection)
        using (peer)
        {
            using var cts = new CancellationTokenSource();
            Task<int> receive = connection.ReceiveAsync(new byte[10], cts.Token).AsTask();
            await cts.CancelAsync();
            await Assert.ThrowsAnyAsync<OperationCanceledException>(() => receive.WithTimeout());

            await Peer.SendPatternAsync(peer, 4);
            byte[] buffer = new byte[10];
            Assert.Equal(4, await connection.ReceiveAsync(buffer).WithTimeout());
            Assert.Equal(Peer.Pattern(4), buffer[..4]);
        }
    }
}
