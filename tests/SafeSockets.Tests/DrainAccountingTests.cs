using System.Net.Sockets;
using SafeSockets.Tests.Infrastructure;

namespace SafeSockets.Tests;

/// <summary>Every byte the application never read and the close discarded counts in BytesDrained, wherever it was waiting
/// (the kernel, or the connection's own input buffer) when the close began.</summary>
public sealed class DrainAccountingTests
{
    [Fact]
    public async Task CloseAsync_UnreadBytesAlreadyReceivedBeforeTheClose_AllCountInBytesDrained()
    {
        const int Unread = 1000;
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync();
        using (peer)
        {
            try
            {
                await Peer.SendPatternAsync(peer, Unread);

                // A zero-length receive waits until data is available without consuming it: the bytes have arrived.
                Assert.Equal(0, await connection.ReceiveAsync(Memory<byte>.Empty).WithTimeout());

                // The peer closes only after our FIN: it sends nothing more, so exactly `Unread` bytes are discarded.
                Task<CloseResult> close = connection.CloseAsync().AsTask();
                Assert.Equal(PeerEnd.Fin, (await Peer.ReadToEndAsync(peer).WithTimeout()).End);
                peer.Shutdown(SocketShutdown.Send);
                CloseResult result = await close.WithTimeout();

                Assert.Equal(CloseOutcome.Graceful, result.Outcome);
                Assert.Equal(Unread, result.BytesDrained);
            }
            finally
            {
                connection.Abort();
            }
        }
    }
}
