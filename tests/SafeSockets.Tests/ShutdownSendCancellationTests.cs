using System.Buffers;
using System.IO.Pipelines;
using System.Net.Sockets;
using SafeSockets.Tests.Infrastructure;

namespace SafeSockets.Tests;

/// <summary>A cancelled ShutdownSendAsync neither shuts the send side nor leaves the send gate (or the Transport send loop) broken.</summary>
public sealed class ShutdownSendCancellationTests
{
    // Far more than both ends' small buffers hold: while the peer does not read, this send cannot finish.
    private const int StuckSize = 8 * 1024 * 1024;

    [Fact]
    public async Task ShutdownSendAsync_OneCancelledWhileASecondWaits_SecondCompletesAfterEveryByte_PeerGetsAllThenFin()
    {
        (Socket peer, ManagedConnection connection) = await Loopback.CreateSmallBufferManagedServerAsync();
        using (peer)
        {
            try
            {
                byte[] payload = Peer.Pattern(StuckSize);
                Task send = connection.SendAsync(payload).AsTask();
                using var cancel = new CancellationTokenSource();
                Task cancelled = connection.ShutdownSendAsync(cancel.Token).AsTask();
                Assert.False(cancelled.IsCompleted);
                Task second = connection.ShutdownSendAsync().AsTask();
                Assert.False(second.IsCompleted);

                await cancel.CancelAsync();
                await Assert.ThrowsAnyAsync<OperationCanceledException>(() => cancelled.WithTimeout());

                Task<PeerReadResult> peerSide = Peer.ReadToEndAsync(peer, keepData: true);
                await send.WithTimeout();
                await second.WithTimeout();
                PeerReadResult seen = await peerSide.WithTimeout();

                Assert.Equal(PeerEnd.Fin, seen.End);
                Assert.Equal(payload.Length, seen.Bytes);
                Assert.Equal(payload, seen.Data);
                Assert.Equal(ConnectionState.SendShutdown, connection.State);
            }
            finally
            {
                connection.Abort();
            }
        }
    }

    [Fact]
    public async Task ShutdownSendAsync_CancelledWithASendInFlight_SendsNoFinAndConnectionStaysUsable()
    {
        (Socket peer, ManagedConnection connection) = await Loopback.CreateSmallBufferManagedServerAsync();
        using (peer)
        {
            try
            {
                byte[] payload = Peer.Pattern(StuckSize);
                Task send = connection.SendAsync(payload).AsTask();
                using var cancel = new CancellationTokenSource();
                Task cancelled = connection.ShutdownSendAsync(cancel.Token).AsTask();
                Assert.False(cancelled.IsCompleted);
                await cancel.CancelAsync();
                await Assert.ThrowsAnyAsync<OperationCanceledException>(() => cancelled.WithTimeout());
                Assert.Equal(ConnectionState.Open, connection.State);

                Task<PeerReadResult> peerSide = Peer.ReadToEndAsync(peer, keepData: true);
                await send.WithTimeout();

                // Still fully usable: another send goes out, and a later half-close puts FIN after it (not before).
                byte[] more = [1, 2, 3, 4, 5];
                await connection.SendAsync(more).WithTimeout();
                Task stuckAgain = connection.SendAsync(payload).AsTask();
                await connection.ShutdownSendAsync().WithTimeout();
                await stuckAgain.WithTimeout();
                PeerReadResult seen = await peerSide.WithTimeout();

                Assert.Equal(PeerEnd.Fin, seen.End);
                Assert.Equal(payload.Concat(more).Concat(payload).ToArray(), seen.Data);
            }
            finally
            {
                connection.Abort();
            }
        }
    }

    [Fact]
    public async Task ShutdownSendAsync_CancelledWhileTransportOutputIsStuck_LaterOutputWritesStillReachThePeer()
    {
        (Socket peer, ManagedConnection connection) = await Loopback.CreateSmallBufferManagedServerAsync();
        using (peer)
        {
            try
            {
                PipeWriter output = connection.Transport.Output;
                byte[] payload = Peer.Pattern(StuckSize);
                output.Write(payload);
                Task<FlushResult> flush = output.FlushAsync().AsTask();

                using var cancel = new CancellationTokenSource();
                Task cancelled = connection.ShutdownSendAsync(cancel.Token).AsTask();
                Assert.False(cancelled.IsCompleted);
                await cancel.CancelAsync();
                await Assert.ThrowsAnyAsync<OperationCanceledException>(() => cancelled.WithTimeout());
                Assert.Equal(ConnectionState.Open, connection.State);

                Task<PeerReadResult> peerSide = Peer.ReadToEndAsync(peer, keepData: true);
                Assert.False((await flush.WithTimeout()).IsCompleted, "the output's send loop stopped for good after the cancelled ShutdownSendAsync");

                // Written after the cancelled half-close: must still be sent, then FIN when the output completes.
                byte[] more = [9, 8, 7, 6];
                output.Write(more);
                Assert.False((await output.FlushAsync().AsTask().WithTimeout()).IsCompleted, "the output's send loop stopped for good after the cancelled ShutdownSendAsync");
                await output.CompleteAsync();
                PeerReadResult seen = await peerSide.WithTimeout();

                Assert.Equal(PeerEnd.Fin, seen.End);
                Assert.Equal(payload.Concat(more).ToArray(), seen.Data);
            }
            finally
            {
                connection.Abort();
            }
        }
    }
}
