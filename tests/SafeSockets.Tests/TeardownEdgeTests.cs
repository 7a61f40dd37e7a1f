using System.IO.Pipelines;
using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using Microsoft.Extensions.Time.Testing;
using SafeSockets.Diagnostics;
using SafeSockets.Tests.Infrastructure;

namespace SafeSockets.Tests;

/// <summary>Edges a hostile review of the rebuilt lifecycle found; each test failed on the code before its fix.</summary>
public sealed class TeardownEdgeTests
{
    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task Guard_BothSidesShutDownAndTheKernelSaysClose_IsNotAPeerReset(bool peerFirst)
    {
        // Linux moves a socket whose descriptor is still open to TCP_CLOSE after an ordinary close of both sides; the
        // guard used to read that as "the peer reset after its FIN".
        var clock = new FakeTimeProvider();
        var options = new ManagedConnectionOptions { TimeProvider = clock, CloseWaitTimeout = TimeSpan.FromSeconds(10) };
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync(options);
        using (peer)
        {
            if (peerFirst)
            {
                peer.Shutdown(SocketShutdown.Send);
                Assert.Equal(0, await connection.ReceiveAsync(new byte[16]).WithTimeout());
                await connection.ShutdownSendAsync().WithTimeout();
            }
            else
            {
                await connection.ShutdownSendAsync().WithTimeout();
                Assert.Equal(PeerEnd.Fin, (await Peer.ReadToEndAsync(peer).WithTimeout()).End);
                peer.Shutdown(SocketShutdown.Send);
                Assert.Equal(0, await connection.ReceiveAsync(new byte[16]).WithTimeout());
            }

            if (OperatingSystem.IsLinux())
            {
                await TestTimeouts.WaitUntilAsync(() => connection.GetKernelInfo().State == TcpState.Close, "the kernel reports TCP_CLOSE");
            }

            // The guard looks at the kernel every 250 ms (on this fake clock, inside Advance).
            clock.Advance(TimeSpan.FromMilliseconds(600));

            Assert.Equal(ConnectionState.BothShutdown, connection.State);
            CloseResult result = await connection.CloseAsync().WithTimeout();
            Assert.Equal(CloseOutcome.Graceful, result.Outcome);
        }
    }

    [Fact]
    public async Task Guard_IdleTransportConnectionAfterPeerFin_ClosesAtCloseWaitTimeout()
    {
        // The Transport send loop holds a gate entry for its whole life: it is not a send in flight.
        var clock = new FakeTimeProvider();
        var options = new ManagedConnectionOptions { TimeProvider = clock, CloseWaitTimeout = TimeSpan.FromSeconds(1) };
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync(options);
        using (peer)
        {
            IDuplexPipe transport = connection.Transport;
            peer.Shutdown(SocketShutdown.Send);
            await connection.PeerClosed.WhenCanceled().WithTimeout();
            for (int i = 0; i < 4; i++)
            {
                clock.Advance(TimeSpan.FromMilliseconds(250));
            }

            Assert.Equal(CloseOutcome.CloseWaitTimedOut, (await connection.Completion.WithTimeout()).Outcome);
            Assert.Equal(PeerEnd.Fin, (await Peer.ReadToEndAsync(peer).WithTimeout()).End);
            await transport.Input.CompleteAsync();
            await transport.Output.CompleteAsync();
        }
    }

    [Fact]
    public async Task ShutdownSendAsync_AlreadyCancelledToken_ThrowsAndSendsNoFin()
    {
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync();
        await using (connection)
        using (peer)
        {
            await Assert.ThrowsAnyAsync<OperationCanceledException>(() => connection.ShutdownSendAsync(new CancellationToken(true)).AsTask());
            Assert.Equal(ConnectionState.Open, connection.State);
            await connection.SendAsync(new byte[] { 1, 2, 3 }).WithTimeout();
            byte[] buffer = new byte[3];
            Assert.Equal(3, await peer.ReceiveAsync(buffer, SocketFlags.None).WithTimeout());
        }
    }

    [Fact]
    public async Task ListenerStop_DoesNotTakeTheApplicationsFirstCloseResult()
    {
        await using ManagedListener listener = ManagedListener.Start(new IPEndPoint(IPAddress.Loopback, 0));
        using var peer = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        Task<ManagedConnection> accept = listener.AcceptAsync().AsTask();
        await peer.ConnectAsync(listener.LocalEndPoint).WithTimeout();
        ManagedConnection connection = await accept.WithTimeout();
        Task stop = listener.StopAsync(TimeSpan.FromSeconds(20));
        Assert.Equal(PeerEnd.Fin, (await Peer.ReadToEndAsync(peer).WithTimeout()).End);
        peer.Shutdown(SocketShutdown.Send);
        await stop.WithTimeout();

        CloseResult completion = await connection.Completion.WithTimeout();
        Assert.Equal(CloseOutcome.Graceful, completion.Outcome);
        Assert.Equal(completion, await connection.CloseAsync().WithTimeout());
    }

    [Fact]
    public async Task Abort_AfterTheApplicationDisposedTheAdoptedSocket_DoesNotThrow_AndCompletes()
    {
        (Socket peer, Socket server) = await Loopback.CreatePairAsync();
        using (peer)
        {
            ManagedConnection connection = ManagedConnection.Adopt(server);
            server.Dispose();
            connection.Abort();

            CloseResult result = await connection.Completion.WithTimeout();
            Assert.Equal(1, connection.ReleaseCount);

            // Either the abort or the receive loop's fault (the socket vanished under it) ended it; State says which.
            Assert.Equal(result.Outcome == CloseOutcome.Aborted, connection.State == ConnectionState.Aborted);
            Assert.True(result.Outcome is CloseOutcome.Aborted or CloseOutcome.Faulted, $"{result.Outcome}");
        }
    }

    [Fact]
    public async Task TlsClose_WithAReadTheApplicationLeftPending_StillReleases_AndMatchesCompletion()
    {
        (Socket client, ManagedConnection server) = await Loopback.CreateManagedServerAsync(new ManagedConnectionOptions { DrainTimeout = TimeSpan.FromSeconds(2) });
        using (client)
        {
            (SslStream serverTls, SslStream clientTls) = await TestTls.HandshakeAsync(server, client);
            using (serverTls)
            using (clientTls)
            {
                Task<int> pending = serverTls.ReadAsync(new byte[100]).AsTask();
                CloseResult result = await serverTls.CloseAsync(server).WithTimeout();

                Assert.True(server.Completion.IsCompleted);
                Assert.Equal(await server.Completion, result);
                Assert.Equal(1, server.ReleaseCount);
                await Record.ExceptionAsync(() => pending.WithTimeout());
            }
        }
    }

    [Fact]
    public async Task Guard_CloseWaitTimeoutUnderTheProbePeriod_ASendMakingProgressIsNotCutShort()
    {
        // The guard's first look comes at CloseWaitTimeout when that is under 250 ms; it used to take that look as the
        // baseline only, so a send making progress was cut at once. 4 MiB to a peer that reads 16 KiB at a time, on a
        // fake clock that moves 25 ms per read: the guard looks every 200 ms of it (eight reads apart), about 6 s of steady
        // progress, thirty times the bound. (On the real clock, with a reader thread sleeping 5 ms per read, a loaded
        // machine starved the reader for longer than the bound now and then, and the guard rightly cut the send.)
        var clock = new FakeTimeProvider();
        var options = new ManagedConnectionOptions { CloseWaitTimeout = TimeSpan.FromMilliseconds(200), TimeProvider = clock };
        (Socket peer, ManagedConnection connection) = await Loopback.CreateSmallBufferManagedServerAsync(options);
        using (peer)
        {
            peer.Shutdown(SocketShutdown.Send);
            await connection.PeerClosed.WhenCanceled().WithTimeout();
            clock.Advance(TimeSpan.FromMilliseconds(10));
            Task send = connection.SendAsync(new byte[4 * 1024 * 1024]).AsTask();

            // Until every byte is read (not until the send's task completes: it may complete a moment after the peer read
            // the last bytes, and a read then would wait for our FIN, which comes only with the close below).
            byte[] buffer = new byte[16 * 1024];
            long received = 0;
            while (received < 4 * 1024 * 1024)
            {
                int n = await peer.ReceiveAsync(buffer).WithTimeout();
                Assert.True(n > 0, $"the peer read {received} bytes, then the end: {connection.State}");
                received += n;
                clock.Advance(TimeSpan.FromMilliseconds(25));
            }

            await send.WithTimeout();
            Assert.Equal(ConnectionState.PeerShutdown, connection.State);
            Task<PeerReadResult> rest = Peer.ReadToEndAsync(peer);
            Assert.Equal(CloseOutcome.Graceful, (await connection.CloseAsync().WithTimeout()).Outcome);
            PeerReadResult end = await rest.WithTimeout();
            Assert.Equal((0L, PeerEnd.Fin), (end.Bytes, end.End));
        }
    }

    [Fact]
    public async Task TransportOutput_CompletedWithACancellation_AbortsLikeAnyOtherError_AndLogsNothingAtError()
    {
        var logger = new CapturingLogger();
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync(new ManagedConnectionOptions { Logger = logger });
        using (peer)
        {
            IDuplexPipe transport = connection.Transport;
            await transport.Output.CompleteAsync(new OperationCanceledException());
            Assert.Equal(CloseOutcome.Aborted, (await connection.Completion.WithTimeout()).Outcome);
            Assert.Equal(PeerEnd.Reset, (await Peer.ReadToEndAsync(peer).WithTimeout()).End);
            Assert.DoesNotContain(logger.Entries, e => e.Level == Microsoft.Extensions.Logging.LogLevel.Error);
            await transport.Input.CompleteAsync();
        }
    }
}
