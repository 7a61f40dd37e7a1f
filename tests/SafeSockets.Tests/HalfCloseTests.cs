using System.Net.Sockets;
using SafeSockets.Tests.Infrastructure;

namespace SafeSockets.Tests;

public sealed class HalfCloseTests
{
    [Fact]
    public async Task ShutdownSendAsync_PeerGetsAllDataThenFin_AndWeStillReceive()
    {
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync();
        await using (connection)
        using (peer)
        {
            byte[] payload = Peer.Pattern(1024 * 1024);
            Task<PeerReadResult> peerRead = Peer.ReadToEndAsync(peer, keepData: true);
            await connection.SendAsync(payload).WithTimeout();
            await connection.ShutdownSendAsync().WithTimeout();

            PeerReadResult seen = await peerRead.WithTimeout();
            Assert.Equal(PeerEnd.Fin, seen.End);
            Assert.Equal(payload, seen.Data);
            Assert.Equal(ConnectionState.SendShutdown, connection.State);

            // Half-closed: the peer can still answer and we can still read it, up to its FIN.
            byte[] answer = Peer.Pattern(300_000);
            await Peer.SendPatternAsync(peer, answer.Length);
            peer.Shutdown(SocketShutdown.Send);
            Assert.Equal(answer, await Peer.ReadAllAsync(connection).WithTimeout());
        }
    }

    [Fact]
    public async Task ShutdownSendAsync_WaitsForASendInFlight_ThenFinFollowsTheLastByte()
    {
        (Socket peer, ManagedConnection connection) = await Loopback.CreateSmallBufferManagedServerAsync();
        await using (connection)
        using (peer)
        {
            // Small buffers on both ends: 8 MiB cannot fit while the peer is not reading, so the send is in flight.
            byte[] payload = Peer.Pattern(8 * 1024 * 1024);
            Task send = connection.SendAsync(payload).AsTask();
            Task shutdown = connection.ShutdownSendAsync().AsTask();
            Assert.False(send.IsCompleted);
            Assert.False(shutdown.IsCompleted);

            PeerReadResult seen = await Peer.ReadToEndAsync(peer, keepData: true).WithTimeout();
            await Task.WhenAll(send, shutdown).WithTimeout();
            Assert.Equal(PeerEnd.Fin, seen.End);
            Assert.Equal(payload.Length, seen.Bytes);
            Assert.Equal(payload, seen.Data);
        }
    }

    [Fact]
    public async Task SendAsync_AfterShutdownSend_ThrowsInvalidOperationNamingTheShutdown()
    {
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync();
        await using (connection)
        using (peer)
        {
            await connection.ShutdownSendAsync().WithTimeout();
            var ex = await Assert.ThrowsAsync<InvalidOperationException>(() => connection.SendAsync(new byte[] { 1 }).AsTask());
            Assert.Contains("send side", ex.Message, StringComparison.Ordinal);
            // Even an empty send is refused: the caller's intent is wrong either way.
            await Assert.ThrowsAsync<InvalidOperationException>(() => connection.SendAsync(ReadOnlyMemory<byte>.Empty).AsTask());
        }
    }

    [Fact]
    public async Task ShutdownSendAsync_Twice_IsIdempotentAndSendsOneFin()
    {
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync();
        await using (connection)
        using (peer)
        {
            await connection.ShutdownSendAsync().WithTimeout();
            await connection.ShutdownSendAsync().WithTimeout();
            await Task.WhenAll(Enumerable.Range(0, 8).Select(_ => connection.ShutdownSendAsync().AsTask())).WithTimeout();

            Assert.Equal(PeerEnd.Fin, (await Peer.ReadToEndAsync(peer).WithTimeout()).End);
            Assert.Equal(ConnectionState.SendShutdown, connection.State);
        }
    }

    [Fact]
    public async Task ShutdownSend_ThenClose_IsGracefulWhenPeerFinishes()
    {
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync();
        using (peer)
        {
            await connection.ShutdownSendAsync().WithTimeout();
            Assert.Equal(PeerEnd.Fin, (await Peer.ReadToEndAsync(peer).WithTimeout()).End);
            peer.Shutdown(SocketShutdown.Send);
            CloseResult result = await connection.CloseAsync().WithTimeout();
            Assert.Equal(CloseOutcome.Graceful, result.Outcome);
        }
    }

    [Fact]
    public async Task HalfClose_WorksOverIPv6Loopback()
    {
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync(family: AddressFamily.InterNetworkV6);
        using (peer)
        {
            await Peer.SendPatternAsync(peer, 1000);
            peer.Shutdown(SocketShutdown.Send);
            Assert.Equal(1000, (await Peer.ReadAllAsync(connection).WithTimeout()).Length);
            await connection.SendAsync(new byte[] { 42 }).WithTimeout();
            Task<PeerReadResult> read = Peer.ReadToEndAsync(peer);
            Assert.Equal(CloseOutcome.Graceful, (await connection.CloseAsync().WithTimeout()).Outcome);
            PeerReadResult seen = await read.WithTimeout();
            Assert.Equal((1, PeerEnd.Fin), (seen.Bytes, seen.End));
        }
    }
}
