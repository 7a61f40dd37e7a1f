using System.Net.Sockets;
using SafeSockets.Diagnostics;
using SafeSockets.Tests.Infrastructure;

namespace SafeSockets.Tests;

/// <summary>The kernel's own counters agree with what the peers saw. Runs alone: the counters are system-wide.</summary>
[Collection(ExclusiveTests.Name)]
public sealed class KernelCounterTests
{
    [Fact]
    public async Task RawDisposeOverUnreadData_IsCountedAsOutRst_PositiveControl()
    {
        KernelCounters before = KernelCounters.Read();
        (Socket client, Socket server) = await Loopback.CreatePairAsync();
        using (client)
        {
            await Peer.SendPatternAsync(client, 1000);
            server.Dispose();
            Assert.Equal(PeerEnd.Reset, (await Peer.ReadToEndAsync(client).WithTimeout()).End);
        }

        Assert.True((KernelCounters.Read() - before).OutRsts >= 1);
    }

    [Fact]
    public async Task GracefulCloses_WithUnreadDataEveryTime_SendNoRstAndLeaveNoCloseWait()
    {
        // The counters are machine-wide: another process's resets can land in our window. A bug resets on every one of
        // the 50 closes, so it can never give a clean window; a busy machine only dirties some. Up to five windows, each
        // with every peer's own view checked; the claim is that at least one window was clean.
        var windows = new List<KernelCounters>();
        var ports = new List<int>();
        for (int attempt = 0; attempt < 5; attempt++)
        {
            KernelCounters before = KernelCounters.Read();
            for (int i = 0; i < 50; i++)
            {
                (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync();
                using (peer)
                {
                    ports.Add(connection.LocalEndPoint.Port());
                    // The request is never read by the application; the answer goes out; the peer half-closes after reading it.
                    await Peer.SendPatternAsync(peer, 30_000);
                    await connection.SendAsync(Peer.Pattern(100_000)).WithTimeout();
                    Task<CloseResult> close = connection.CloseAsync().AsTask();
                    PeerReadResult seen = await Peer.ReadToEndAsync(peer).WithTimeout();
                    peer.Shutdown(SocketShutdown.Send);

                    Assert.Equal((100_000, PeerEnd.Fin), (seen.Bytes, seen.End));
                    Assert.Equal(CloseOutcome.Graceful, (await close.WithTimeout()).Outcome);
                }
            }

            KernelCounters delta = KernelCounters.Read() - before;
            windows.Add(delta);
            if (delta == default)
            {
                break;
            }
        }

        Assert.True(windows[^1] == default, $"no window of 50 graceful closes without a reset on the machine: {string.Join(", ", windows)}");
        Assert.Equal(0, TcpSocketTable.Count(TcpState.CloseWait, [.. ports]));
    }

    [Fact]
    public async Task RawSocketThatIgnoresPeerFin_StaysInCloseWait_PositiveControl()
    {
        (Socket client, Socket server) = await Loopback.CreatePairAsync();
        using (client)
        using (server)
        {
            client.Shutdown(SocketShutdown.Send);
            // The kernel moves the server to CLOSE_WAIT on its own, without any read; wait for it, bounded.
            await TestTimeouts.WaitUntilAsync(() => TcpSocketTable.GetState(server.Port(), client.Port()) == TcpState.CloseWait, "the server socket is in CLOSE_WAIT");

            Assert.Equal(1, TcpSocketTable.Count(TcpState.CloseWait, server.Port()));
        }
    }

    [Fact]
    public async Task PeersThatCloseFirstAndAnApplicationThatNeverReacts_LeaveNoCloseWait()
    {
        var options = new ManagedConnectionOptions { CloseWaitTimeout = TimeSpan.FromMilliseconds(50) };
        var peers = new List<Socket>();
        var connections = new List<ManagedConnection>();
        try
        {
            for (int i = 0; i < 20; i++)
            {
                (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync(options);
                _ = connection.LocalEndPoint; // read before the close so it is kept
                peers.Add(peer);
                connections.Add(connection);
                peer.Shutdown(SocketShutdown.Send);
            }

            await Task.WhenAll(connections.Select(c => c.Completion)).WithTimeout();
            int[] ports = [.. connections.Select(c => c.LocalEndPoint.Port())];
            Assert.Equal(0, TcpSocketTable.Count(TcpState.CloseWait, ports));
            Assert.All(connections, c => Assert.Equal(CloseOutcome.CloseWaitTimedOut, c.Completion.Result.Outcome));
        }
        finally
        {
            peers.ForEach(p => p.Dispose());
        }
    }
}
