using System.Net.Sockets;
using SafeSockets.Tests.Infrastructure;

namespace SafeSockets.Tests;

/// <summary>The drain's byte cap and memory when a read was already waiting at the close (found by review, session 11;
/// the application's read then went straight into the input's memory at the loop's grown read size).</summary>
public sealed class DrainCapTests
{
    [Fact]
    public async Task CloseAsync_WhileAReceiveWaits_PeerFloods_GivesUpExactlyOneBytePastTheCap()
    {
        if (!OperatingSystem.IsLinux())
        {
            return; // the pending read is observed through the pooled operation
        }

        // options.md: "a peer sending more than the cap is found out with BytesDrained exactly one byte past it".
        var options = new ManagedConnectionOptions { MaxDrainBytes = 1000 };
        (Socket client, ManagedConnection server) = await Loopback.CreateManagedServerAsync(options);
        using (client)
        {
            server.KeepParkedForTest(); // the application's read, never the lazy watch's (which hid the defect in 2 runs of 9)
            // A server that read a request that filled the loop's read (4 KiB) and waits for the next: the loop's next read
            // goes straight into the input's memory (8 KiB), with or without a watch.
            await Peer.SendPatternAsync(client, 4096).WithTimeout();
            for (int got = 0; got < 4096;)
            {
                got += await server.ReceiveAsync(new byte[4096]).WithTimeout();
            }

            Task<int> receive = server.ReceiveAsync(new byte[100]).AsTask();
            await TestTimeouts.WaitUntilAsync(() => (!server.ParkForTest.IsParked && !server.ParkForTest.IsWaking), "the application's read is issued");
            Assert.False(receive.IsCompleted);

            Task<CloseResult> close = server.CloseAsync().AsTask();
            await Assert.ThrowsAnyAsync<ObjectDisposedException>(() => receive.WithTimeout());
            CloseResult result = await Peer.FloodAfterOurFinAsync(client, close);
            Assert.Equal(CloseOutcome.DrainLimitExceeded, result.Outcome);
            Assert.Equal(options.MaxDrainBytes + 1, result.BytesDrained);
        }
    }

    [Fact]
    public async Task CloseAsync_WhileABulkReceiveWaits_PeerQuiet_TheWaitingReadHeldNoBuffer()
    {
        if (!OperatingSystem.IsLinux())
        {
            return;
        }

        (Socket client, ManagedConnection server) = await Loopback.CreateManagedServerAsync();
        using (client)
        {
            server.KeepParkedForTest(); // the application's read, never the lazy watch's (which hid the defect in 2 runs of 9)
            // An upload read in bulk: the loop's reads grow to 64 KiB.
            byte[] buffer = await Peer.UploadInBulkAsync(client, server);

            // Once it has handed over the upload's last bytes the loop parks (the next read wakes it on this thread and
            // issues its read before ReceiveAsync returns) or, watched, waits for data at once. Without this wait the check
            // below could see the loop between its last read and either state, with that read's buffer still set (failed
            // once, session 13). What this test holds is the property, a waiting read holds at most 4 KiB; two mechanisms
            // give it: grown reads wait for data first, and a grown read that finds nothing takes 4 KiB. With the first
            // removed this test passes on the second; the flood test above fails (it reads 4 KiB, not one byte past the
            // cap: review, session 13).
            await TestTimeouts.WaitUntilAsync(
                () => server.ParkForTest.IsParked || server.PendingReadLengthForTest <= 4096,
                "the loop parks, or waits for data, after the upload");

            // The next request's read: with reads grown past 4 KiB it first waits for data with a zero-byte read (it went
            // straight into the input's memory at the grown size, which the drain then held, never advanced, until it ended).
            Task<int> receive = server.ReceiveAsync(buffer).AsTask();
            await TestTimeouts.WaitUntilAsync(() => (!server.ParkForTest.IsParked && !server.ParkForTest.IsWaking), "the application's read is issued");
            Assert.False(receive.IsCompleted);
            // A zero-byte wait; or, if that wait completed with nothing to read (a stale readiness), a 4 KiB read
            // (DrainMemoryTests.GrownRead_TheWaitForDataFindsNothingToRead_TheReadThatWaitsHoldsAtMost4KiB).
            Assert.True(server.PendingReadLengthForTest <= 4096, $"the read waiting for the next request holds {server.PendingReadLengthForTest} bytes");

            // What is left of the input's last segment after the upload's last read (up to 64 KiB less what that read got:
            // the pipe keeps it for the next write); the drain must take nothing more.
            int before = DrainMemoryTests.InputWriteBufferLength(server);

            Task<CloseResult> close = server.CloseAsync().AsTask();
            await Assert.ThrowsAnyAsync<ObjectDisposedException>(() => receive.WithTimeout());
            Assert.Equal(PeerEnd.Fin, (await Peer.ReadToEndAsync(client).WithTimeout()).End);

            // A few bytes (into the read begun before the close), then the peer goes quiet: a slow-drip client keeps
            // the drain going for DrainTimeout.
            await Peer.SendPatternAsync(client, 10).WithTimeout();
            await TestTimeouts.WaitUntilAsync(
                () => server.BytesDrainedForTest == 10 && server.PendingReadLengthForTest > 0,
                "the drain's next read is pending");

            // The drain's own read goes to the shared discard buffer (DrainMemoryTests), and the read that waited for data
            // before the close took no buffer: the input holds nothing more than before the close. (Until session 12 this
            // asserted at most 4 KiB, which failed in CI when the upload's last read had not filled its segment: 32 KiB
            // left of it.)
            int held = DrainMemoryTests.InputWriteBufferLength(server);
            client.Shutdown(SocketShutdown.Send);
            CloseResult result = await close.WithTimeout();
            Assert.Equal(CloseOutcome.Graceful, result.Outcome);
            Assert.Equal(10, result.BytesDrained);
            // (At most one 4 KiB segment more: a wait that completed with nothing to read, after `before`, takes 4 KiB.)
            Assert.True(held <= Math.Max(before, 4096), $"a draining connection whose peer is quiet holds a {held}-byte input buffer ({before} before the close)");
        }
    }

    [Fact]
    public async Task TlsClose_PeerFloods_GivesUpJustPastTheCap()
    {
        // options.md, MaxDrainBytes: "a peer sending more than the cap is found out with BytesDrained exactly one byte past it".
        var options = new ManagedConnectionOptions { MaxDrainBytes = 10_000 };
        await using TlsLoopback tls = await TestTls.OpenAsync(options);
        using var stop = new CancellationTokenSource();
        Task flood = Task.Run(async () =>
        {
            byte[] chunk = new byte[16 * 1024];
            try
            {
                while (!stop.IsCancellationRequested)
                {
                    await tls.ClientTls.WriteAsync(chunk, stop.Token);
                }
            }
            catch (Exception ex) when (ex is IOException or SocketException or OperationCanceledException or ObjectDisposedException)
            {
                // The server gave up (and reset over the unread rest): expected.
            }
        });

        CloseResult result = await tls.ServerTls.CloseAsync(tls.Server).WithTimeout();
        await stop.CancelAsync();
        await flood.WithTimeout();

        // The TLS drain reads 4 KiB of decrypted data at a time and checks the cap after each (sized reads would leave
        // decrypted bytes in the TLS layer's buffer uncounted); the TCP drain after it adds its own byte, and encrypted
        // bytes the TLS layer had not read when it gave up (what the input held or was reading, up to its buffer each)
        // count too.
        Assert.Equal(CloseOutcome.DrainLimitExceeded, result.Outcome);
        Assert.InRange(result.BytesDrained, options.MaxDrainBytes + 1, options.MaxDrainBytes + 4096 + 1 + (2 * ManagedConnectionOptions.DefaultBufferSize));
    }

    // Stryker (session 12): with DrainReadSize's "the FIN is known" branch removed, every test passed: the cap no longer
    // applies then, but the reads were still sized by it, one byte at a time past it (a recv per byte of what is left).
    [Fact]
    public async Task CloseAsync_PeerFinAlreadySeenBehindUnreadData_DrainsPastTheCapInWholeReads()
    {
        if (!OperatingSystem.IsLinux())
        {
            return; // the FIN behind unread data is seen through the kernel's TCP_INFO, read on Linux only
        }

        var options = new ManagedConnectionOptions { MaxDrainBytes = 1000, MaxInputBufferSize = 4096 };
        (Socket client, ManagedConnection server) = await Loopback.CreateManagedServerAsync(options);
        using (client)
        {
            // Nobody reads: the loop pauses behind the input, and the kernel's probe sees the FIN behind the rest.
            CancellationToken peerClosed = server.PeerClosed;
            const int Sent = 32 * 1024; // within the loopback receive window: the FIN arrives behind it
            await Peer.SendPatternAsync(client, Sent).WithTimeout();
            client.Shutdown(SocketShutdown.Send);
            await peerClosed.WhenCanceled().WithTimeout();

            CloseResult result = await server.CloseAsync().AsTask().WithTimeout();
            Assert.Equal(CloseOutcome.Graceful, result.Outcome);
            Assert.Equal(Sent, result.BytesDrained); // the input's 4 KiB, discarded, and 28 KiB read from the kernel past the cap of 1,000

            // What the kernel held (28 KiB) fits one 64 KiB read; a few more if it came in pieces.
            Assert.InRange(server.DrainReadsForTest, 1, 4);
        }
    }
}
