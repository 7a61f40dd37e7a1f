using System.IO.Pipelines;
using System.Net.Security;
using System.Net.Sockets;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Time.Testing;
using SafeSockets.Tests.Infrastructure;

namespace SafeSockets.Tests;

/// <summary>What each piece of the teardown does, seen from outside: an Abort that owns the teardown, a flush that did not
/// finish, a TLS close's share of the result, a receive loop that fails under a close. (Mutation testing found each piece
/// unchecked.)</summary>
public sealed class TeardownOwnershipTests
{
    private static ManagedConnectionOptions LongDrainBounds(TimeProvider? clock = null) => new()
    {
        DrainTimeout = TimeSpan.FromMinutes(10),
        DrainIdleTimeout = TimeSpan.FromMinutes(10),
        CloseWaitTimeout = TimeSpan.FromMinutes(10),
        TimeProvider = clock ?? TimeProvider.System,
    };

    [Fact]
    public async Task Abort_WithBytesTheApplicationNeverRead_CountsThemAsDiscarded()
    {
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync();
        using (peer)
        {
            await Peer.SendPatternAsync(peer, 100);

            // An empty read returns once the bytes are in the connection's input, and consumes none of them.
            Assert.Equal(0, await connection.ReceiveAsync(Memory<byte>.Empty).WithTimeout());
            connection.Abort();

            CloseResult result = await connection.Completion.WithTimeout();
            Assert.Equal(CloseOutcome.Aborted, result.Outcome);
            Assert.Equal(100, result.BytesDrained);
            Assert.Equal(PeerEnd.Reset, (await Peer.ReadToEndAsync(peer).WithTimeout()).End);
            await Assert.ThrowsAsync<ObjectDisposedException>(() => connection.ReceiveAsync(new byte[16]).AsTask());
        }
    }

    [Fact]
    public async Task Abort_OfATransportConnection_StopsItsSendLoop_TheOutputReportsCompleted()
    {
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync();
        using (peer)
        {
            IDuplexPipe transport = connection.Transport;
            connection.Abort();
            Assert.Equal(PeerEnd.Reset, (await Peer.ReadToEndAsync(peer).WithTimeout()).End);

            // The send loop stops with the abort and completes the output's reader: the application's writes are not sent.
            await TestTimeouts.WaitUntilAsync(
                () => transport.Output.FlushAsync().AsTask() is { IsCompletedSuccessfully: true } flush && flush.Result.IsCompleted,
                "the output reports its reader completed");
            Assert.True((await transport.Output.WriteAsync(new byte[10]).WithTimeout()).IsCompleted);

            await transport.Input.CompleteAsync();
            await transport.Output.CompleteAsync();
        }
    }

    [Fact]
    public async Task Abort_AfterThePeersFinWasRead_StillResets()
    {
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync();
        using (peer)
        {
            // The receive loop has ended (no read pending): only linger 0 makes the release a reset.
            peer.Shutdown(SocketShutdown.Send);
            Assert.Equal(0, await connection.ReceiveAsync(new byte[16]).WithTimeout());
            connection.Abort();

            Assert.Equal(PeerEnd.Reset, (await Peer.ReadToEndAsync(peer).WithTimeout()).End);
            Assert.Equal(CloseOutcome.Aborted, (await connection.Completion.WithTimeout()).Outcome);
        }
    }

    [Fact]
    public async Task Abort_BeforeAnythingFromThePeer_FiresPeerClosed()
    {
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync();
        using (peer)
        {
            CancellationToken peerClosed = connection.PeerClosed;
            Assert.False(peerClosed.IsCancellationRequested);
            connection.Abort();

            // "At the latest when the connection is released."
            await peerClosed.WhenCanceled().WithTimeout();
            Assert.Equal(CloseOutcome.Aborted, (await connection.Completion.WithTimeout()).Outcome);
        }
    }

    [Fact]
    public async Task DisposeAsync_CalledAgainWhileTheCloseDrains_WaitsForTheClose()
    {
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync(LongDrainBounds());
        using (peer)
        {
            Task first = connection.DisposeAsync().AsTask();
            Assert.Equal(PeerEnd.Fin, (await Peer.ReadToEndAsync(peer).WithTimeout()).End);

            // The close waits in its drain for the peer's FIN, and so does every later DisposeAsync.
            Task second = connection.DisposeAsync().AsTask();
            Assert.False(second.IsCompleted, "a second DisposeAsync returned while the close was still draining");
            Assert.False(first.IsCompleted);

            peer.Shutdown(SocketShutdown.Send);
            await second.WithTimeout();
            Assert.True(connection.Completion.IsCompleted, "the second DisposeAsync completed before the close did");
            await first.WithTimeout();
            Assert.Equal(CloseOutcome.Graceful, (await connection.Completion.WithTimeout()).Outcome);
        }
    }

    public enum FlushCut
    {
        DrainTimeout,
        DrainTimeoutOverBeforeTheFlushWaits,
        Cancellation,
    }

    [Theory]
    [InlineData(FlushCut.DrainTimeout)]
    [InlineData(FlushCut.DrainTimeoutOverBeforeTheFlushWaits)]
    [InlineData(FlushCut.Cancellation)]
    public async Task CloseAsync_FlushCutShortWhileThePeerHasHalfClosed_IsDrainTimedOutNotGraceful(FlushCut cut)
    {
        // The peer sent its FIN and never reads: our send is stuck on its full window. The close's flush ends (at
        // DrainTimeout, or when its token is cancelled) with the answer not handed over: that is not a graceful end.
        bool byCancellation = cut == FlushCut.Cancellation;
        ManagedConnectionOptions options = LongDrainBounds();
        options.DrainTimeout = cut switch
        {
            FlushCut.DrainTimeout => TimeSpan.FromMilliseconds(300),
            FlushCut.DrainTimeoutOverBeforeTheFlushWaits => TimeSpan.FromTicks(1),
            _ => options.DrainTimeout,
        };

        (Socket peer, ManagedConnection connection) = await Loopback.CreateSmallBufferManagedServerAsync(options);
        using (peer)
        {
            peer.Shutdown(SocketShutdown.Send);
            await connection.PeerClosed.WhenCanceled().WithTimeout();
            Task send = connection.SendAsync(new byte[4 * 1024 * 1024]).AsTask();
            Assert.False(send.IsCompleted);

            using var cts = new CancellationTokenSource();
            Task<CloseResult> close = connection.CloseAsync(cts.Token).AsTask();
            if (byCancellation)
            {
                Assert.False(close.IsCompleted, "the flush waits for the stuck send");
                await cts.CancelAsync();
                await Assert.ThrowsAnyAsync<OperationCanceledException>(() => close.WithTimeout());
            }
            else
            {
                Assert.Equal(CloseOutcome.DrainTimedOut, (await close.WithTimeout()).Outcome);
            }

            Assert.Equal(CloseOutcome.DrainTimedOut, (await connection.Completion.WithTimeout()).Outcome);
            await Assert.ThrowsAsync<ObjectDisposedException>(() => send.WithTimeout());

            // Our FIN went out behind what the kernel had taken of the answer; nothing was left unread on our side: no reset.
            Assert.Equal(PeerEnd.Fin, (await Peer.ReadToEndAsync(peer).WithTimeout()).End);
        }
    }

    [Fact]
    public async Task CloseAsync_WhenTheApplicationDisposesTheAdoptedSocketUnderTheDrain_IsFaultedAndLogged()
    {
        var logger = new CapturingLogger();
        ManagedConnectionOptions options = LongDrainBounds();
        options.Logger = logger;
        (Socket peer, Socket server) = await Loopback.CreatePairAsync();
        using (peer)
        {
            ManagedConnection connection = ManagedConnection.Adopt(server, options);
            Task<CloseResult> close = connection.CloseAsync().AsTask();
            Assert.Equal(PeerEnd.Fin, (await Peer.ReadToEndAsync(peer).WithTimeout()).End);

            // The drain's pending read fails under it: the receive loop's fault ends the close, whoever began it.
            server.Dispose();

            Assert.Equal(CloseOutcome.Faulted, (await close.WithTimeout()).Outcome);
            LogEntry error = await logger.FirstError.WithTimeout();
            Assert.Equal(9, error.Id);
            Assert.Contains("receive loop", error.Message, StringComparison.Ordinal);
        }
    }

    [Fact]
    public async Task TlsClose_ResultCountsTheTlsPart_ItsDiscardedBytesAndItsTime()
    {
        var clock = new FakeTimeProvider();
        await using TlsLoopback tls = await TestTls.OpenAsync(LongDrainBounds(clock));
        (ManagedConnection server, Socket clientSocket, SslStream serverTls, SslStream clientTls) = tls;

        // 100 bytes of application data the server never reads: the TLS close decrypts and discards them.
        await clientTls.WriteAsync(Peer.Pattern(100)).AsTask().WithTimeout();
        Task<CloseResult> close = serverTls.CloseAsync(server).AsTask();
        clock.Advance(TimeSpan.FromSeconds(2));

        Assert.Equal(0, await clientTls.ReadAsync(new byte[16]).AsTask().WithTimeout());
        await clientTls.ShutdownAsync().WithTimeout();
        clientSocket.Shutdown(SocketShutdown.Send);

        // The close began when the TLS close did (2 s on this clock before its TCP teardown).
        CloseResult result = await close.WithTimeout();
        Assert.Equal(new CloseResult(CloseOutcome.Graceful, 100, TimeSpan.FromSeconds(2)), result);
        Assert.Equal(result, await server.Completion.WithTimeout());
        Assert.Equal(PeerEnd.Fin, (await Peer.ReadToEndAsync(clientSocket).WithTimeout()).End);
    }

    [Fact]
    public async Task TlsClose_TlsDrainHitItsByteBound_ThePeersLaterFinDoesNotMakeItGraceful()
    {
        ManagedConnectionOptions options = LongDrainBounds();
        options.MaxDrainBytes = 10;
        await using TlsLoopback tls = await TestTls.OpenAsync(options);
        (ManagedConnection server, Socket clientSocket, SslStream serverTls, SslStream clientTls) = tls;
        await clientTls.WriteAsync(Peer.Pattern(100)).AsTask().WithTimeout();
        Task<CloseResult> close = serverTls.CloseAsync(server).AsTask();

        // The client reads our close_notify, then ends its side with a plain FIN: the TCP part ends in order, but the
        // TLS part was cut by MaxDrainBytes, and that is the outcome.
        Assert.Equal(0, await clientTls.ReadAsync(new byte[16]).AsTask().WithTimeout());
        clientSocket.Shutdown(SocketShutdown.Send);

        CloseResult result = await close.WithTimeout();
        Assert.Equal(CloseOutcome.DrainLimitExceeded, result.Outcome);
        Assert.Equal(100, result.BytesDrained);
        Assert.Equal(result, await server.Completion.WithTimeout());
        Assert.Equal(PeerEnd.Fin, (await Peer.ReadToEndAsync(clientSocket).WithTimeout()).End);
    }
}
