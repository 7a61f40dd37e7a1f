using System.Net.Sockets;
using Microsoft.Extensions.Time.Testing;
using SafeSockets.Tests.Infrastructure;

namespace SafeSockets.Tests;

public sealed class DrainBeforeCloseTests
{
    private const int RequestBytes = 64 * 1024;
    private const int ResponseBytes = 4 * 1024 * 1024;

    [Fact]
    public async Task RawDispose_WithUnreadRequestAndQueuedResponse_PeerSeesResetAndLosesData()
    {
        // The problem SafeSockets exists for: a server answers without reading the whole request, then closes.
        (Socket client, Socket server) = await Loopback.CreatePairAsync();
        using (client)
        {
            await Peer.SendPatternAsync(client, RequestBytes);
            byte[] one = new byte[1];
            await server.ReceiveAsync(one, SocketFlags.None).WithTimeout(); // the rest of the request stays unread

            // Queue as much of the response as the kernel takes while the client is not reading yet.
            long accepted = 0;
            byte[] chunk = Peer.Pattern(64 * 1024);
            server.Blocking = false;
            try
            {
                while (accepted < ResponseBytes)
                {
                    accepted += server.Send(chunk);
                }
            }
            catch (SocketException ex) when (ex.SocketErrorCode == SocketError.WouldBlock)
            {
            }

            server.Dispose();
            PeerReadResult result = await Peer.ReadToEndAsync(client).WithTimeout();

            Assert.Equal(PeerEnd.Reset, result.End);
            Assert.True(result.Bytes < accepted, $"the client read {result.Bytes} of the {accepted} bytes the server had sent");
        }
    }

    [Fact]
    public async Task CloseAsync_WithUnreadRequestAndLargeResponse_PeerGetsEveryByteAndFin()
    {
        (Socket client, ManagedConnection server) = await Loopback.CreateManagedServerAsync();
        using (client)
        {
            await Peer.SendPatternAsync(client, RequestBytes);
            byte[] one = new byte[1];
            Assert.Equal(1, await server.ReceiveAsync(one).WithTimeout()); // the rest of the request stays unread

            // The client reads nothing yet: the send cannot finish, and the close must wait for it.
            byte[] response = Peer.Pattern(ResponseBytes);
            Task send = server.SendAsync(response).AsTask();
            Task<CloseResult> close = server.CloseAsync().AsTask();
            Assert.Equal(ConnectionState.Closing, server.State);

            // The client sends more while it starts reading: the drain must swallow it without a reset.
            await Peer.SendPatternAsync(client, 16 * 1024);
            PeerReadResult result = await Peer.ReadToEndAsync(client, keepData: true).WithTimeout();
            client.Shutdown(SocketShutdown.Send);

            await send.WithTimeout();
            CloseResult closed = await close.WithTimeout();
            Assert.Equal(PeerEnd.Fin, result.End);
            Assert.Equal(ResponseBytes, result.Bytes);
            Assert.Equal(response, result.Data);
            Assert.Equal(CloseOutcome.Graceful, closed.Outcome);
            Assert.Equal(ConnectionState.Closed, server.State);
        }
    }

    [Fact]
    public async Task CloseAsync_PeerAnswersFinPromptly_IsGracefulAndCountsDrainedBytes()
    {
        (Socket client, ManagedConnection server) = await Loopback.CreateManagedServerAsync();
        using (client)
        {
            Task<CloseResult> close = server.CloseAsync().AsTask();
            Assert.Equal(PeerEnd.Fin, (await Peer.ReadToEndAsync(client).WithTimeout()).End);

            // Bytes sent after our FIN arrive during the drain and are counted.
            await Peer.SendPatternAsync(client, 10_000);
            client.Shutdown(SocketShutdown.Send);
            CloseResult result = await close.WithTimeout();

            Assert.Equal(CloseOutcome.Graceful, result.Outcome);
            Assert.Equal(10_000, result.BytesDrained);
        }
    }

    [Fact]
    public async Task CloseAsync_PeerNeverSendsFin_EndsAtDrainTimeoutAndReleasesSocket()
    {
        var options = new ManagedConnectionOptions { DrainTimeout = TimeSpan.FromMilliseconds(300), DrainIdleTimeout = TimeSpan.FromSeconds(20) };
        (Socket client, ManagedConnection server) = await Loopback.CreateManagedServerAsync(options);
        using (client)
        {
            CloseResult result = await server.CloseAsync().WithTimeout();

            Assert.Equal(CloseOutcome.DrainTimedOut, result.Outcome);
            Assert.True(result.Elapsed >= TimeSpan.FromMilliseconds(250), $"elapsed {result.Elapsed}");
            Assert.Equal(ConnectionState.Closed, server.State);
            // Nothing was unread, so even the bounded close ended with FIN.
            Assert.Equal(PeerEnd.Fin, (await Peer.ReadToEndAsync(client).WithTimeout()).End);
        }
    }

    [Fact]
    public async Task CloseAsync_PeerGoesQuiet_EndsAtDrainIdleTimeoutBeforeTotal()
    {
        var options = new ManagedConnectionOptions { DrainTimeout = TimeSpan.FromMinutes(10), DrainIdleTimeout = TimeSpan.FromMilliseconds(200) };
        (Socket client, ManagedConnection server) = await Loopback.CreateManagedServerAsync(options);
        using (client)
        {
            Task<CloseResult> close = server.CloseAsync().AsTask();
            await Peer.SendPatternAsync(client, 1000);
            CloseResult result = await close.WithTimeout();

            Assert.Equal(CloseOutcome.DrainTimedOut, result.Outcome);
            Assert.True(result.Elapsed < TimeSpan.FromMinutes(1));
        }
    }

    [Fact]
    public async Task CloseAsync_PeerTricklesBytesForever_IsStillBoundedByDrainTimeout()
    {
        var options = new ManagedConnectionOptions { DrainTimeout = TimeSpan.FromMilliseconds(500), DrainIdleTimeout = TimeSpan.FromSeconds(20) };
        (Socket client, ManagedConnection server) = await Loopback.CreateManagedServerAsync(options);
        using (client)
        {
            using var stop = new CancellationTokenSource(TestTimeouts.Passing);
            Task<CloseResult> close = server.CloseAsync().AsTask();

            // A slow-drip peer: one byte every 20 ms, never a FIN (pacing, not synchronisation).
            Task trickle = Task.Run(async () =>
            {
                try
                {
                    for (int i = 0; i < 10_000 && !stop.IsCancellationRequested; i++)
                    {
                        await client.SendAsync(new byte[] { 1 }, SocketFlags.None, stop.Token);
                        await Task.Delay(20, stop.Token);
                    }
                }
                catch (Exception ex) when (ex is SocketException or OperationCanceledException)
                {
                }
            });

            CloseResult result = await close.WithTimeout();
            await stop.CancelAsync();
            await trickle.WithTimeout();

            Assert.Equal(CloseOutcome.DrainTimedOut, result.Outcome);
            Assert.True(result.BytesDrained > 0);
            Assert.Equal(ConnectionState.Closed, server.State);
        }
    }

    [Fact]
    public async Task CloseAsync_PeerSendsMoreThanMaxDrainBytes_EndsWithDrainLimitExceeded()
    {
        var options = new ManagedConnectionOptions { MaxDrainBytes = 64 * 1024 };
        (Socket client, ManagedConnection server) = await Loopback.CreateManagedServerAsync(options);
        using (client)
        {
            CloseResult result = await Peer.FloodAfterOurFinAsync(client, server.CloseAsync().AsTask());
            Assert.Equal(CloseOutcome.DrainLimitExceeded, result.Outcome);

            // The drain's last read is sized to one byte past what the cap leaves: the close gives up with exactly that
            // byte past it (reads of 64 KiB would otherwise overshoot by up to 64 KiB).
            Assert.Equal(options.MaxDrainBytes + 1, result.BytesDrained);
            Assert.Equal(ConnectionState.Closed, server.State);
        }
    }

    [Fact]
    public async Task CloseAsync_PeerSendsExactlyMaxDrainBytesThenFin_IsGraceful()
    {
        // The drain's reads near the cap are sized to what it leaves plus one byte: a peer that sends exactly the cap and
        // then its FIN must not be taken for one that sends more.
        var options = new ManagedConnectionOptions { MaxDrainBytes = 10_000 };
        for (int round = 0; round < 5; round++)
        {
            (Socket client, ManagedConnection server) = await Loopback.CreateManagedServerAsync(options);
            using (client)
            {
                Task<CloseResult> close = server.CloseAsync().AsTask();
                Assert.Equal(PeerEnd.Fin, (await Peer.ReadToEndAsync(client).WithTimeout()).End);
                await Peer.SendPatternAsync(client, (int)options.MaxDrainBytes).WithTimeout();
                client.Shutdown(SocketShutdown.Send);

                CloseResult result = await close.WithTimeout();
                Assert.Equal(CloseOutcome.Graceful, result.Outcome);
                Assert.Equal(options.MaxDrainBytes, result.BytesDrained);
            }
        }
    }

    [Fact]
    public async Task CloseAsync_Canceled_ReleasesSocketThenThrows()
    {
        // Drain bounds far beyond the test's timeout: only the cancellation can end this drain.
        var options = new ManagedConnectionOptions { DrainTimeout = TimeSpan.FromMinutes(10), DrainIdleTimeout = TimeSpan.FromMinutes(10) };
        (Socket client, ManagedConnection server) = await Loopback.CreateManagedServerAsync(options);
        using (client)
        {
            using var cts = new CancellationTokenSource();
            Task<CloseResult> close = server.CloseAsync(cts.Token).AsTask();
            Assert.Equal(PeerEnd.Fin, (await Peer.ReadToEndAsync(client).WithTimeout()).End);
            await cts.CancelAsync();

            await Assert.ThrowsAnyAsync<OperationCanceledException>(() => close.WithTimeout());
            Assert.Equal(ConnectionState.Closed, server.State);
            Assert.Equal(CloseOutcome.DrainTimedOut, (await server.Completion.WithTimeout()).Outcome);
        }
    }

    [Fact]
    public async Task CloseAsync_PeerSendsABitMoreOftenThanTheIdleBound_EachDrainedByteRestartsIt_Graceful()
    {
        // DrainIdleTimeout bounds a silence, not the drain: a peer that keeps sending a byte more often than the idle
        // bound, then closes, gets a graceful close however long it took in all (within DrainTimeout). On a fake clock
        // that moves only once the byte before is counted, so the test cannot be cut by a slow machine.
        var clock = new FakeTimeProvider();
        var options = new ManagedConnectionOptions
        {
            TimeProvider = clock,
            DrainTimeout = TimeSpan.FromSeconds(10),
            DrainIdleTimeout = TimeSpan.FromMilliseconds(300),
        };
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync(options);
        using (peer)
        {
            try
            {
                Task<CloseResult> close = connection.CloseAsync().AsTask();
                byte[] one = new byte[1];
                Assert.Equal(0, await peer.ReceiveAsync(one, SocketFlags.None).WithTimeout());

                // Five bytes, 200 ms (fake) apart: 1 s in all, more than three idle bounds, never 300 ms of silence.
                for (int i = 1; i <= 5; i++)
                {
                    Assert.Equal(1, await peer.SendAsync(one, SocketFlags.None).WithTimeout());
                    await TestTimeouts.WaitUntilAsync(() => connection.BytesDrainedForTest == i || close.IsCompleted, $"byte {i} drained");
                    if (close.IsCompleted)
                    {
                        Assert.Fail($"the drain ended before byte {i} was drained: {await close}");
                    }

                    clock.Advance(TimeSpan.FromMilliseconds(200));
                }

                peer.Shutdown(SocketShutdown.Send);
                CloseResult result = await close.WithTimeout();
                Assert.Equal(CloseOutcome.Graceful, result.Outcome);
                Assert.Equal(5, result.BytesDrained);
            }
            finally
            {
                connection.Abort();
            }
        }
    }
}
