using System.Net;
using System.Net.Sockets;
using SafeSockets.Diagnostics;
using SafeSockets.Tests.Infrastructure;

namespace SafeSockets.Tests;

/// <summary>StopAsync completes only once every connection the listener accepted (handed out or refused) is released.</summary>
public sealed class ListenerStopRaceTests
{
    [Fact]
    public async Task StopAsyncRacingAcceptAsync_ManyRounds_StopCompletesOnlyAfterEveryAcceptedConnectionIsReleased()
    {
        for (int round = 0; round < 100; round++)
        {
            ManagedListener listener = ManagedListener.Start(new IPEndPoint(IPAddress.Loopback, 0));
            int listenerPort = listener.LocalEndPoint.Port();
            using var client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            await client.ConnectAsync(listener.LocalEndPoint).WithTimeout();
            int clientPort = client.LocalEndPoint.Port();

            // A polite client: reads to the end, then closes its side (a reset in the backlog is also an end).
            Task<PeerReadResult> clientSide = Task.Run(async () =>
            {
                PeerReadResult seen = await Peer.ReadToEndAsync(client);
                if (seen.End == PeerEnd.Fin)
                {
                    client.Shutdown(SocketShutdown.Send);
                }

                return seen;
            });

            var start = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            Task<ManagedConnection> accept = Task.Run(async () => { await start.Task; return await listener.AcceptAsync(); });
            Task stop = Task.Run(async () => { await start.Task; await listener.StopAsync(TimeSpan.FromSeconds(20)); });
            start.SetResult();
            await stop.WithTimeout();

            // The moment StopAsync completes: the server end of the client's connection is released.
            TcpState serverSide = TcpSocketTable.GetState(listenerPort, clientPort);
            Assert.Equal(0, listener.ActiveConnections);
            Assert.True(
                serverSide is not (TcpState.Established or TcpState.CloseWait or TcpState.FinWait1 or TcpState.FinWait2 or TcpState.SynReceived),
                $"round {round}: StopAsync completed while the server end of the client's connection is {serverSide}");

            // AcceptAsync either handed the connection out (then it is finished by now) or refused it because of the stop.
            ManagedConnection? handedOut = null;
            Exception? refused = await Record.ExceptionAsync(async () => handedOut = await accept.WithTimeout());
            if (refused is null)
            {
                Assert.True(handedOut!.Completion.IsCompleted, $"round {round}: StopAsync completed before a handed-out connection was released");
            }
            else
            {
                Assert.IsType<ObjectDisposedException>(refused);
            }

            await clientSide.WithTimeout();
        }
    }
}
