using System.Net.Security;
using System.Net.Sockets;
using SafeSockets.Tests.Infrastructure;

namespace SafeSockets.Tests;

/// <summary>sslStream.CloseAsync(connection): always releases the connection, is bounded like a plain close, and reports what Completion reports.</summary>
public sealed class TlsCloseTests
{
    [Fact]
    public async Task CloseAsync_CancelledToken_StillReleasesTheConnection()
    {
        (Socket clientSocket, ManagedConnection server) = await Loopback.CreateManagedServerAsync();
        using (clientSocket)
        {
            try
            {
                (SslStream serverTls, SslStream clientTls) = await TestTls.HandshakeAsync(server, clientSocket);
                await using (serverTls)
                await using (clientTls)
                {
                    using var cancel = new CancellationTokenSource();
                    await cancel.CancelAsync();
                    await Assert.ThrowsAnyAsync<OperationCanceledException>(() => serverTls.CloseAsync(server, cancel.Token).AsTask().WithTimeout());

                    // Cancelling cuts the close short; the socket is released before the cancellation is thrown.
                    Assert.True(server.Completion.IsCompleted, $"not released after a cancelled TLS close: State {server.State}");
                    Assert.Equal(ConnectionState.Closed, server.State);
                    Assert.False(server.GetKernelInfo().IsAvailable);
                }
            }
            finally
            {
                server.Abort();
            }
        }
    }

    [Fact]
    public async Task CloseAsync_PeerNeverReadsAndItsWindowIsFull_EndsWithinTheDrainBound_DrainTimedOut()
    {
        var options = new ManagedConnectionOptions { DrainTimeout = TimeSpan.FromSeconds(1), DrainIdleTimeout = TimeSpan.FromSeconds(1) };
        (Socket clientSocket, ManagedConnection server) = await Loopback.CreateSmallBufferManagedServerAsync(options);
        using (clientSocket)
        {
            try
            {
                (SslStream serverTls, SslStream clientTls) = await TestTls.HandshakeAsync(server, clientSocket);
                await using (serverTls)
                await using (clientTls)
                {
                    // The client never reads again: the answer fills its window and the server's write stays pending.
                    Task write = serverTls.WriteAsync(Peer.Pattern(8 * 1024 * 1024)).AsTask();
                    Assert.False(write.IsCompleted);

                    CloseResult result = await serverTls.CloseAsync(server).AsTask().WithTimeout();

                    Assert.Equal(CloseOutcome.DrainTimedOut, result.Outcome);
                    Assert.Equal(ConnectionState.Closed, server.State);
                    Assert.Equal(result, await server.Completion.WithTimeout());
                    Exception? writeError = await Record.ExceptionAsync(() => write.WaitAsync(TestTimeouts.Passing));
                    Assert.NotNull(writeError);
                    Assert.IsNotType<TimeoutException>(writeError);
                }
            }
            finally
            {
                server.Abort();
            }
        }
    }

    [Fact]
    public async Task CloseAsync_PeerSentUnreadDataThenClosesPolitely_ResultEqualsCompletion()
    {
        (Socket clientSocket, ManagedConnection server) = await Loopback.CreateManagedServerAsync();
        using (clientSocket)
        {
            try
            {
                (SslStream serverTls, SslStream clientTls) = await TestTls.HandshakeAsync(server, clientSocket);
                await using (serverTls)
                await using (clientTls)
                {
                    // 1000 bytes of application data the server never reads: its TLS close discards them.
                    await clientTls.WriteAsync(Peer.Pattern(1000)).AsTask().WithTimeout();
                    Task<CloseResult> close = serverTls.CloseAsync(server).AsTask();
                    Assert.Equal(0, await clientTls.ReadAsync(new byte[16]).AsTask().WithTimeout());
                    await clientTls.ShutdownAsync().WithTimeout();
                    clientSocket.Shutdown(SocketShutdown.Send);

                    CloseResult result = await close.WithTimeout();
                    Assert.Equal(CloseOutcome.Graceful, result.Outcome);
                    Assert.Equal(await server.Completion.WithTimeout(), result);
                    Assert.Equal(PeerEnd.Fin, (await Peer.ReadToEndAsync(clientSocket).WithTimeout()).End);
                }
            }
            finally
            {
                server.Abort();
            }
        }
    }
}
