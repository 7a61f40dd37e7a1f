using System.IO.Pipelines;
using System.Net.Sockets;
using Microsoft.Extensions.Time.Testing;
using SafeSockets.Tests.Infrastructure;

namespace SafeSockets.Tests;

/// <summary>Unix domain stream sockets get the same teardown as TCP: half-close, drain-before-close (Linux resets a Unix
/// socket's peer too when it is closed over unread data), the CLOSE_WAIT guard, leases, Transport and Stream.</summary>
public sealed class UnixDomainSocketTests : IDisposable
{
    private readonly string _directory = Directory.CreateTempSubdirectory("safesockets-uds-").FullName;

    public void Dispose() => Directory.Delete(_directory, recursive: true);

    private UnixDomainSocketEndPoint NewEndPoint() => new(Path.Combine(_directory, $"{Guid.NewGuid():N}.sock"));

    private static async Task<(Socket Peer, ManagedConnection Connection)> PairAsync(UnixDomainSocketEndPoint endPoint, ManagedConnectionOptions? options = null)
    {
        using var listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        listener.Bind(endPoint);
        listener.Listen(1);
        var peer = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        Task<Socket> accept = listener.AcceptAsync();
        await peer.ConnectAsync(endPoint).WithTimeout();
        return (peer, ManagedConnection.Adopt(await accept.WithTimeout(), options));
    }

    [Fact]
    public async Task ListenerAndConnectAsync_ExchangeHalfCloseAndCloseGracefully()
    {
        UnixDomainSocketEndPoint endPoint = NewEndPoint();
        await using ManagedListener listener = ManagedListener.Start(endPoint);
        Task<ManagedConnection> accept = listener.AcceptAsync().AsTask();
        await using ManagedConnection client = await ManagedConnection.ConnectAsync(endPoint).WithTimeout();
        await using ManagedConnection server = await accept.WithTimeout();

        await client.SendAsync("ping"u8.ToArray()).WithTimeout();
        await client.ShutdownSendAsync().WithTimeout();
        byte[] buffer = new byte[16];
        Assert.Equal(4, await server.ReceiveAsync(buffer).WithTimeout());
        Assert.Equal(0, await server.ReceiveAsync(buffer).WithTimeout());
        Assert.Equal(ConnectionState.PeerShutdown, server.State);

        // The half-closed side still answers.
        await server.SendAsync("pong"u8.ToArray()).WithTimeout();
        Task<CloseResult> serverClose = server.CloseAsync().AsTask();
        Assert.Equal(4, await client.ReceiveAsync(buffer).WithTimeout());
        Assert.Equal(0, await client.ReceiveAsync(buffer).WithTimeout());
        Assert.Equal(CloseOutcome.Graceful, (await client.CloseAsync().WithTimeout()).Outcome);
        Assert.Equal(CloseOutcome.Graceful, (await serverClose.WithTimeout()).Outcome);

        // TCP-only views degrade cleanly.
        Assert.False(server.GetKernelInfo().IsAvailable);
    }

    [Fact]
    public async Task CloseOverUnreadData_RawDisposeResetsThePeer_CloseAsyncDoesNot()
    {
        // Raw: the server answers and disposes with the client's request unread; Linux resets the client.
        (Socket rawPeer, ManagedConnection unused) = await PairAsync(NewEndPoint());
        unused.Abort();
        rawPeer.Dispose();

        UnixDomainSocketEndPoint endPoint = NewEndPoint();
        using var listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        listener.Bind(endPoint);
        listener.Listen(2);
        using (var client = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified))
        {
            Task<Socket> accept = listener.AcceptAsync();
            await client.ConnectAsync(endPoint).WithTimeout();
            using Socket server = await accept.WithTimeout();
            await client.SendAsync(new byte[1000], SocketFlags.None).WithTimeout();
            await TestTimeouts.WaitUntilAsync(() => server.Available == 1000, "the request reached the server");
            await server.SendAsync(new byte[100], SocketFlags.None).WithTimeout();
            server.Dispose();
            Assert.Equal(PeerEnd.Reset, (await Peer.ReadToEndAsync(client).WithTimeout()).End);
        }

        // Managed: the same, closed with CloseAsync: the client gets the answer and end-of-stream, no reset.
        (Socket peer, ManagedConnection connection) = await PairAsync(NewEndPoint());
        using (peer)
        {
            await peer.SendAsync(new byte[1000], SocketFlags.None).WithTimeout();
            await connection.ReceiveAsync(Memory<byte>.Empty).WithTimeout();
            await connection.SendAsync(new byte[100]).WithTimeout();
            Task<CloseResult> close = connection.CloseAsync().AsTask();
            PeerReadResult seen = await Peer.ReadToEndAsync(peer).WithTimeout();
            Assert.Equal(PeerEnd.Fin, seen.End);
            Assert.Equal(100, seen.Bytes);
            peer.Shutdown(SocketShutdown.Send);
            CloseResult result = await close.WithTimeout();
            Assert.Equal(CloseOutcome.Graceful, result.Outcome);
            Assert.Equal(1000, result.BytesDrained);
        }
    }

    [Fact]
    public async Task PeerFin_ApplicationIdle_GuardClosesWithFin()
    {
        var clock = new FakeTimeProvider();
        (Socket peer, ManagedConnection connection) = await PairAsync(NewEndPoint(), new ManagedConnectionOptions { TimeProvider = clock, CloseWaitTimeout = TimeSpan.FromSeconds(1) });
        using (peer)
        {
            peer.Shutdown(SocketShutdown.Send);
            await connection.PeerClosed.WhenCanceled().WithTimeout();
            clock.Advance(TimeSpan.FromSeconds(1));
            Assert.Equal(CloseOutcome.CloseWaitTimedOut, (await connection.Completion.WithTimeout()).Outcome);
            Assert.Equal(PeerEnd.Fin, (await Peer.ReadToEndAsync(peer).WithTimeout()).End);
        }
    }

    [Fact]
    public async Task LeasesTransportAndStream_Work()
    {
        (Socket peer, ManagedConnection connection) = await PairAsync(NewEndPoint());
        using (peer)
        {
            ConnectionLease lease = connection.Acquire();
            await connection.DisposeAsync();
            Assert.Equal(ConnectionState.Open, connection.State);

            Stream stream = connection.GetStream();
            await stream.WriteAsync("abc"u8.ToArray());
            byte[] buffer = new byte[3];
            Assert.Equal(3, await peer.ReceiveAsync(buffer, SocketFlags.None).WithTimeout());
            peer.Shutdown(SocketShutdown.Send);
            Assert.Equal(0, await stream.ReadAsync(buffer).AsTask().WithTimeout());
            await lease.DisposeAsync();
            Assert.Equal(CloseOutcome.Graceful, (await connection.Completion.WithTimeout()).Outcome);
        }

        (Socket peer2, ManagedConnection connection2) = await PairAsync(NewEndPoint());
        using (peer2)
        {
            IDuplexPipe transport = connection2.Transport;
            await transport.Output.WriteAsync("xyz"u8.ToArray());
            await transport.Output.CompleteAsync();
            PeerReadResult seen = await Peer.ReadToEndAsync(peer2).WithTimeout();
            Assert.Equal((3L, PeerEnd.Fin), (seen.Bytes, seen.End));
            peer2.Shutdown(SocketShutdown.Send);
            await transport.Input.CompleteAsync();
            Assert.Equal(CloseOutcome.Graceful, (await connection2.CloseAsync().WithTimeout()).Outcome);
        }
    }

    [Fact]
    public async Task Start_LeavesAStaleFileToTheOperator_RefusesALivePath_AndStopRemovesItsFile()
    {
        UnixDomainSocketEndPoint endPoint = NewEndPoint();
        string path = endPoint.ToString();

        // A file at the path that nothing listens on (a crashed process's socket file, or any other file): never deleted.
        await File.WriteAllTextAsync(path, "not ours");
        IOException stale = Assert.Throws<IOException>(() => ManagedListener.Start(endPoint));
        Assert.Contains(path, stale.Message, StringComparison.Ordinal);
        Assert.Equal("not ours", await File.ReadAllTextAsync(path));
        File.Delete(path);

        ManagedListener listener = ManagedListener.Start(endPoint);
        Assert.True(File.Exists(path));

        // Something listens on it: a second listener must not steal the path.
        SocketException error = Assert.Throws<SocketException>(() => ManagedListener.Start(endPoint));
        Assert.Equal(SocketError.AddressAlreadyInUse, error.SocketErrorCode);

        await listener.StopAsync(TimeSpan.FromSeconds(5)).WithTimeout();
        Assert.False(File.Exists(path));
    }

    [Fact]
    public async Task Start_OnAPathWhoseListenerHasAFullBacklog_FailsAtOnce_InsteadOfHanging()
    {
        UnixDomainSocketEndPoint endPoint = NewEndPoint();
        using var busy = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        busy.Bind(endPoint);
        busy.Listen(0);
        var queued = new List<Socket>();
        try
        {
            // Fill the backlog: a non-blocking connect says WouldBlock once it is full.
            for (int i = 0; i < 64; i++)
            {
                var client = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified) { Blocking = false };
                queued.Add(client);
                try
                {
                    client.Connect(endPoint);
                }
                catch (SocketException ex) when (ex.SocketErrorCode == SocketError.WouldBlock)
                {
                    break;
                }
            }

            SocketException error = await Assert.ThrowsAsync<SocketException>(() => Task.Run(() => ManagedListener.Start(endPoint)).WithTimeout());
            Assert.Equal(SocketError.AddressAlreadyInUse, error.SocketErrorCode);
        }
        finally
        {
            foreach (Socket client in queued)
            {
                client.Dispose();
            }
        }
    }

    [Fact]
    public async Task AbstractName_HasNoFile_AndWorks()
    {
        var endPoint = new UnixDomainSocketEndPoint("\0safesockets-" + Guid.NewGuid().ToString("N"));
        await using ManagedListener listener = ManagedListener.Start(endPoint);
        Task<ManagedConnection> accept = listener.AcceptAsync().AsTask();
        await using ManagedConnection client = await ManagedConnection.ConnectAsync(endPoint).WithTimeout();
        await using ManagedConnection server = await accept.WithTimeout();
        await client.ShutdownSendAsync().WithTimeout();
        Assert.Equal(0, await server.ReceiveAsync(new byte[1]).WithTimeout());
        Assert.Equal(CloseOutcome.Graceful, (await server.CloseAsync().WithTimeout()).Outcome);
        Assert.Equal(CloseOutcome.Graceful, (await client.CloseAsync().WithTimeout()).Outcome);
    }
}
