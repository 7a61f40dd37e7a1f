using System.Net.Security;
using System.Net.Sockets;
using SafeSockets.Tests.Infrastructure;

namespace SafeSockets.Tests;

public sealed class TlsTeardownTests
{
    [Fact]
    public async Task TlsClose_WithUnreadRequestAndLargeResponse_PeerGetsEveryByteCloseNotifyAndFin()
    {
        (Socket clientSocket, ManagedConnection server) = await Loopback.CreateManagedServerAsync();
        using (clientSocket)
        {
            (SslStream serverTlsStream, SslStream clientTlsStream) = await TestTls.HandshakeAsync(server, clientSocket);
            await using SslStream serverTls = serverTlsStream;
            await using SslStream clientTls = clientTlsStream;

            // The client sends a request the server only partly reads, keeps sending, and reads the answer to the end.
            await clientTls.WriteAsync(Peer.Pattern(100_000)).AsTask().WithTimeout();
            byte[] one = new byte[1];
            Assert.Equal(1, await serverTls.ReadAsync(one).AsTask().WithTimeout());

            byte[] response = Peer.Pattern(3 * 1024 * 1024);
            Task serverSide = Task.Run(async () =>
            {
                await serverTls.WriteAsync(response);
                return await serverTls.CloseAsync(server);
            });

            using var received = new MemoryStream();
            byte[] buffer = new byte[64 * 1024];
            int n;
            while ((n = await clientTls.ReadAsync(buffer).AsTask().WithTimeout()) > 0)
            {
                received.Write(buffer, 0, n);
            }

            // The client saw close_notify (ReadAsync returned 0); it answers with its own, then FIN.
            await clientTls.ShutdownAsync().WithTimeout();
            clientSocket.Shutdown(SocketShutdown.Send);
            Assert.Equal(response, received.ToArray());

            CloseResult result = await ((Task<CloseResult>)serverSide).WithTimeout();
            Assert.Equal(CloseOutcome.Graceful, result.Outcome);
            Assert.Equal(PeerEnd.Fin, (await Peer.ReadToEndAsync(clientSocket).WithTimeout()).End);
        }
    }

    [Fact]
    public async Task TlsClose_PeerSendsCloseNotifyButNoFin_EndsGracefullyWithoutWaitingForFin()
    {
        var options = new ManagedConnectionOptions { DrainIdleTimeout = TimeSpan.FromMinutes(5), DrainTimeout = TimeSpan.FromMinutes(10) };
        (Socket clientSocket, ManagedConnection server) = await Loopback.CreateManagedServerAsync(options);
        using (clientSocket)
        {
            (SslStream serverTlsStream, SslStream clientTlsStream) = await TestTls.HandshakeAsync(server, clientSocket);
            await using SslStream serverTls = serverTlsStream;
            await using SslStream clientTls = clientTlsStream;

            Task<CloseResult> close = serverTls.CloseAsync(server).AsTask();
            Assert.Equal(0, await clientTls.ReadAsync(new byte[10]).AsTask().WithTimeout());
            await clientTls.ShutdownAsync().WithTimeout(); // close_notify, but the client keeps its TCP send side open

            CloseResult result = await close.WithTimeout();
            Assert.Equal(CloseOutcome.Graceful, result.Outcome);
            Assert.Equal(PeerEnd.Fin, (await Peer.ReadToEndAsync(clientSocket).WithTimeout()).End);
        }
    }

    [Fact]
    public async Task TlsHalfClose_ServerReadsAfterItsCloseNotify()
    {
        (Socket clientSocket, ManagedConnection server) = await Loopback.CreateManagedServerAsync();
        await using (server)
        using (clientSocket)
        {
            (SslStream serverTlsStream, SslStream clientTlsStream) = await TestTls.HandshakeAsync(server, clientSocket);
            await using SslStream serverTls = serverTlsStream;
            await using SslStream clientTls = clientTlsStream;

            await serverTls.ShutdownSendAsync(server).WithTimeout();
            Assert.Equal(ConnectionState.SendShutdown, server.State);
            Assert.Equal(0, await clientTls.ReadAsync(new byte[10]).AsTask().WithTimeout());

            await clientTls.WriteAsync(new byte[] { 5, 6 }).AsTask().WithTimeout();
            byte[] got = new byte[2];
            Assert.Equal(2, await serverTls.ReadAsync(got).AsTask().WithTimeout());
            Assert.Equal(new byte[] { 5, 6 }, got);
        }
    }
}
