using System.Net.Sockets;
using Microsoft.Extensions.Time.Testing;
using SafeSockets.Internal;
using SafeSockets.Tests.Infrastructure;

namespace SafeSockets.Tests;

/// <summary>CloseWaitTimeout bounds inactivity after the peer's FIN: an application still answering is not cut off.</summary>
public sealed class CloseWaitGuardActivityTests
{
    private static readonly TimeSpan s_closeWaitTimeout = TimeSpan.FromSeconds(1);

    [Fact]
    public async Task SendAsync_AnswerLongerThanCloseWaitTimeoutButNeverIdleThatLong_PeerGetsEveryByteThenFin_Graceful()
    {
        var clock = new FakeTimeProvider();
        var options = new ManagedConnectionOptions { TimeProvider = clock, CloseWaitTimeout = s_closeWaitTimeout };
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync(options);
        using (peer)
        {
            try
            {
                // The request, then the peer's FIN; the application reads the request to its end.
                await Peer.SendPatternAsync(peer, 500);
                peer.Shutdown(SocketShutdown.Send);
                await connection.PeerClosed.WhenCanceled().WithTimeout();
                Assert.Equal(500, (await Peer.ReadAllAsync(connection).WithTimeout()).Length);

                // Ten chunks, 600 ms (fake) apart: 5.4 s in all, never 1 s without activity. The peer takes each chunk
                // before the clock moves on, so a close the guard started meanwhile has begun before the next send.
                                for (int i = 0; i < 10; i++)
                {
                    if (i > 0)
                    {
                        clock.Advance(TimeSpan.FromMilliseconds(600));
                    }

                    byte[] chunk = Peer.Pattern(1000 + i);
                    await connection.SendAsync(chunk).WithTimeout();
                    Assert.Equal(chunk, await ReceiveExactlyAsync(peer, chunk.Length));
                }

                clock.Advance(TimeSpan.FromMilliseconds(600));

                // A close the guard queued would run on the pool within moments: give it a few hundred real milliseconds
                // (a window for something that must not happen, not a synchronisation).
                await Task.WhenAny(connection.Completion, Task.Delay(TimeSpan.FromMilliseconds(300)));
                string early = connection.Completion.IsCompleted ? (await connection.Completion).ToString() : "";
                Assert.True(early.Length == 0, $"the CLOSE_WAIT guard closed a connection that was still answering: {early}");
                CloseResult result = await connection.CloseAsync().WithTimeout();
                PeerReadResult rest = await Peer.ReadToEndAsync(peer).WithTimeout();

                Assert.Equal(CloseOutcome.Graceful, result.Outcome);
                Assert.Equal((0, PeerEnd.Fin), (rest.Bytes, rest.End));
                Assert.Equal(ConnectionState.Closed, connection.State);
            }
            finally
            {
                connection.Abort();
            }
        }
    }

    private static async Task<byte[]> ReceiveExactlyAsync(Socket socket, int count)
    {
        byte[] buffer = new byte[count];
        int received = 0;
        while (received < count)
        {
            int n = await socket.ReceiveAsync(buffer.AsMemory(received), SocketFlags.None).AsTask().WithTimeout();
            Assert.NotEqual(0, n);
            received += n;
        }

        return buffer;
    }

    [Fact]
    public async Task ReceiveAfterThePeersFin_IsActivity_TheGuardCountsFromTheRead_NotFromTheFin()
    {
        // An application that reads after the peer's FIN (its read returns 0) is at work on the connection: the guard
        // gives it CloseWaitTimeout from that read. On the fake clock, in the guard's own 250 ms steps (on Linux it also
        // looks every 250 ms), so every look lands on its due time.
        if (!OperatingSystem.IsLinux())
        {
            return; // the deadlines asserted below include the guard's 250 ms looks at the kernel, which are Linux's; CI runs on Linux
        }

        var clock = new FakeTimeProvider();
        var options = new ManagedConnectionOptions { TimeProvider = clock, CloseWaitTimeout = s_closeWaitTimeout };
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync(options);
        using (peer)
        {
            try
            {
                peer.Shutdown(SocketShutdown.Send);
                await connection.PeerClosed.WhenCanceled().WithTimeout();
                long fin = clock.GetTimestamp();
                TimeSpan step = TimeSpan.FromMilliseconds(250);
                for (int i = 0; i < 3; i++)
                {
                    clock.Advance(step);
                }

                // 750 ms after the FIN the application reads: the FIN, once more.
                Assert.Equal(0, await connection.ReceiveAsync(new byte[16]).WithTimeout());

                // At CloseWaitTimeout after the FIN the guard looks: 250 ms after the read, it arms itself again (for its
                // next look), it does not close. A close it queued would run on the pool: wait for one or the other.
                clock.Advance(step);
                await TestTimeouts.WaitUntilAsync(
                    () => DeadlineProbe.IsArmed(connection, DeadlinePurpose.CloseWaitGuard) || connection.State != ConnectionState.PeerShutdown,
                    "the guard armed itself again, or closed");
                Assert.Equal((DeadlinePurpose.CloseWaitGuard, DeadlineProbe.At(clock, fin, TimeSpan.FromMilliseconds(1250))), DeadlineProbe.Armed(connection));

                // And it closes at CloseWaitTimeout after the read (1.75 s after the FIN).
                for (int i = 0; i < 3; i++)
                {
                    clock.Advance(step);
                }

                CloseResult result = await connection.Completion.WithTimeout();
                Assert.Equal(CloseOutcome.CloseWaitTimedOut, result.Outcome);
                Assert.Equal(PeerEnd.Fin, (await Peer.ReadToEndAsync(peer).WithTimeout()).End);
            }
            finally
            {
                connection.Abort();
            }
        }
    }

    [Fact]
    public async Task Guard_ApplicationIdleForCloseWaitTimeoutAfterPeerFin_ClosesWithFin_CloseWaitTimedOut()
    {
        var clock = new FakeTimeProvider();
        var options = new ManagedConnectionOptions { TimeProvider = clock, CloseWaitTimeout = s_closeWaitTimeout };
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync(options);
        using (peer)
        {
            peer.Shutdown(SocketShutdown.Send);
            await connection.PeerClosed.WhenCanceled().WithTimeout();

            clock.Advance(s_closeWaitTimeout);
            CloseResult result = await connection.Completion.WithTimeout();

            Assert.Equal(CloseOutcome.CloseWaitTimedOut, result.Outcome);
            Assert.Equal(PeerEnd.Fin, (await Peer.ReadToEndAsync(peer).WithTimeout()).End);
            Assert.Equal(ConnectionState.Closed, connection.State);
            Assert.Equal(result, await connection.CloseAsync().WithTimeout());
        }
    }
}
