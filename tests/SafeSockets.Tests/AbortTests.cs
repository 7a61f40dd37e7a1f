using System.Net.Sockets;
using SafeSockets.Tests.Infrastructure;

namespace SafeSockets.Tests;

public sealed class AbortTests
{
    [Fact]
    public async Task Abort_PeerSeesReset()
    {
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync();
        using (peer)
        {
            connection.Abort();

            Assert.Equal(PeerEnd.Reset, (await Peer.ReadToEndAsync(peer).WithTimeout()).End);
            Assert.Equal(ConnectionState.Aborted, connection.State);
            CloseResult completion = await connection.Completion.WithTimeout();
            Assert.Equal(CloseOutcome.Aborted, completion.Outcome);

            // The first CloseAsync reports how the connection ended (exactly Completion's result); later ones AlreadyClosed.
            Assert.Equal(completion, await connection.CloseAsync().WithTimeout());
            Assert.Equal(CloseOutcome.AlreadyClosed, (await connection.CloseAsync().WithTimeout()).Outcome);
            var ex = await Assert.ThrowsAsync<ObjectDisposedException>(() => connection.SendAsync(new byte[1]).AsTask());
            Assert.Contains("aborted", ex.Message, StringComparison.Ordinal);
        }
    }

    [Fact]
    public async Task Abort_DuringGracefulDrain_CutsItShortWithReset()
    {
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync();
        using (peer)
        {
            Task<CloseResult> close = connection.CloseAsync().AsTask();
            Assert.Equal(PeerEnd.Fin, (await Peer.ReadToEndAsync(peer).WithTimeout()).End);

            connection.Abort();

            Assert.Equal(CloseOutcome.Aborted, (await close.WithTimeout()).Outcome);
            Assert.Equal(ConnectionState.Aborted, connection.State);
            // Our FIN was sent already; the reset now ends the peer's half of the connection too.
            await Assert.ThrowsAnyAsync<SocketException>(async () =>
            {
                for (int i = 0; i < 1000; i++)
                {
                    await peer.SendAsync(new byte[1024], SocketFlags.None).WithTimeout();
                }
            });
        }
    }

    [Fact]
    public async Task Abort_WithSendInFlight_SendFailsWithObjectDisposed()
    {
        (Socket peer, ManagedConnection connection) = await Loopback.CreateSmallBufferManagedServerAsync();
        using (peer)
        {
            Task send = connection.SendAsync(new byte[16 * 1024 * 1024]).AsTask();
            Assert.False(send.IsCompleted);
            connection.Abort();
            await Assert.ThrowsAsync<ObjectDisposedException>(() => send.WithTimeout());
        }
    }

    [Fact]
    public async Task Abort_Twice_And_AfterClose_DoesNothing()
    {
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync();
        using (peer)
        {
            peer.Shutdown(SocketShutdown.Send);
            Task<CloseResult> close = connection.CloseAsync().AsTask();
            Assert.Equal(PeerEnd.Fin, (await Peer.ReadToEndAsync(peer).WithTimeout()).End);
            Assert.Equal(CloseOutcome.Graceful, (await close.WithTimeout()).Outcome);

            connection.Abort();
            connection.Abort();
            Assert.Equal(ConnectionState.Closed, connection.State);
        }
    }
}
