using System.Net.Sockets;
using SafeSockets.Diagnostics;
using SafeSockets.Tests.Infrastructure;

namespace SafeSockets.Tests;

public sealed class KernelViewTests
{
    [Fact]
    public async Task GetKernelInfo_ReportsEstablished_ThenUnavailableAfterRelease()
    {
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync();
        using (peer)
        {
            TcpConnectionInfo info = connection.GetKernelInfo();
            Assert.True(info.IsAvailable);
            Assert.Equal(TcpState.Established, info.State);
            Assert.False(info.PeerHasClosed);

            peer.Shutdown(SocketShutdown.Send);
            await connection.CloseAsync().WithTimeout();
            Assert.False(connection.GetKernelInfo().IsAvailable);
        }
    }

    [Fact]
    public async Task PeerFinBehindUnreadData_WhileReceiveLoopIsPaused_IsSeenThroughTheKernel()
    {
        var options = new ManagedConnectionOptions
        {
            MaxInputBufferSize = 4096,      // the loop pauses after a few KiB the application does not read
            MaxDrainBytes = 1024,           // smaller than what is buffered: the budget must not turn this close into a reset
            CloseWaitTimeout = TimeSpan.FromMilliseconds(200),
        };
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync(options);
        using (peer)
        {
            await Peer.SendPatternAsync(peer, 48 * 1024);
            peer.Shutdown(SocketShutdown.Send);

            // Nobody reads, the loop is paused behind unread bytes, yet the FIN is noticed.
            await connection.PeerClosed.WhenCanceled().WithTimeout();
            Assert.Equal(TcpState.CloseWait, connection.GetKernelInfo().State);
            Assert.Equal(ConnectionState.PeerShutdown, connection.State);

            // And the forced close discards the unread bytes and ends with FIN, not RST.
            CloseResult result = await connection.Completion.WithTimeout();
            Assert.Equal(CloseOutcome.CloseWaitTimedOut, result.Outcome);
            Assert.Equal(PeerEnd.Fin, (await Peer.ReadToEndAsync(peer).WithTimeout()).End);
        }
    }

    [Fact]
    public async Task PeerFinBehindUnreadData_WhileReceiveLoopIsPausedTheSecondTime_IsSeenThroughTheKernel()
    {
        // The probe's timer is made at the first pause and stopped when it ends; the next pause must start it again.
        var options = new ManagedConnectionOptions { MaxInputBufferSize = 4096 };
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync(options);
        await using (connection)
        using (peer)
        {
            CancellationToken peerClosed = connection.PeerClosed;
            await Peer.SendPatternAsync(peer, 48 * 1024);
            await TestTimeouts.WaitUntilAsync(() => LazyWatchProbe.InputPaused(connection), "the loop paused behind unread bytes");

            // The application reads a little: the pause ends, and the loop reads until the next one (the kernel still
            // holds far more than the input takes). Then the FIN, behind the rest.
            byte[] buffer = new byte[16 * 1024];
            int read = 0;
            while (read < 8192)
            {
                read += await connection.ReceiveAsync(buffer.AsMemory(read, 8192 - read)).AsTask().WithTimeout();
            }

            Assert.Equal(Peer.Pattern(8192), buffer[..8192]);
            peer.Shutdown(SocketShutdown.Send);

            await peerClosed.WhenCanceled().WithTimeout();
            Assert.Equal(TcpState.CloseWait, connection.GetKernelInfo().State);
            Assert.Equal(ConnectionState.PeerShutdown, connection.State);
        }
    }
}
