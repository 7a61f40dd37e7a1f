using System.Net.Sockets;
using SafeSockets.Tests.Infrastructure;

namespace SafeSockets.Tests;

/// <summary>The loop's read size and its wait for data once reads have grown past 4 KiB (found by review, session 11).</summary>
public sealed class ReadSizeTests
{
    // CHANGELOG / commit: "reads of up to 4 KiB (request/response traffic, the hot path) are unchanged". One read that
    // fills 4 KiB (two pipelined requests, one request of 4 KiB) grows readSize to 8 KiB, and requests of 2-4 KiB never
    // shrink it again (it halves only below readSize / 4 = 2 KiB): every later read pays a zero-byte recv first.
    [Fact]
    public async Task RequestResponse_ThreeKiB_AfterOneFullRead_ReadsStraightIntoAtMostFourKiB()
    {
        if (!OperatingSystem.IsLinux())
        {
            return; // the pending read is observed through the pooled operation
        }

        (Socket client, ManagedConnection server) = await Loopback.CreateManagedServerAsync();
        await using (server)
        using (client)
        {
            server.KeepParkedForTest(); // no lazy watch: the application's reads only
            byte[] buffer = new byte[8192];

            // One read that fills 4 KiB.
            await Peer.SendPatternAsync(client, 4096).WithTimeout();
            for (int got = 0; got < 4096;)
            {
                got += await server.ReceiveAsync(buffer).WithTimeout();
            }

            // Request/response with 3,000-byte requests.
            for (int exchange = 0; exchange < 8; exchange++)
            {
                await Peer.SendPatternAsync(client, 3000).WithTimeout();
                for (int got = 0; got < 3000;)
                {
                    got += await server.ReceiveAsync(buffer).WithTimeout();
                }
            }

            // The next request's read, nothing there yet: documented as a read straight into a 4 KiB buffer (one recv).
            Task<int> receive = server.ReceiveAsync(buffer).AsTask();
            await TestTimeouts.WaitUntilAsync(() => !server.ParkForTest.IsParked && !server.ParkForTest.IsWaking, "the application's read is issued");
            Assert.False(receive.IsCompleted);
            int pending = server.PendingReadLengthForTest;
            Assert.InRange(pending, 1, 4096);

            await Peer.SendPatternAsync(client, 10).WithTimeout();
            Assert.Equal(10, await receive.WithTimeout());
        }
    }

    // The commit message's second case: a watched loop's read after a full read went out at the grown size. The
    // DrainCapTests only exercise the unwatched (application's) read.
    [Fact]
    public async Task Watched_AfterAFullRead_TheWaitingReadHoldsNoBuffer()
    {
        if (!OperatingSystem.IsLinux())
        {
            return;
        }

        (Socket client, ManagedConnection server) = await Loopback.CreateManagedServerAsync();
        await using (server)
        using (client)
        {
            _ = server.PeerClosed; // watched for good
            byte[] buffer = new byte[4096];

            // The application waits first: the loop hands its continuation over only once its next read is pending
            // (ReaderHandOff), so when the receive returns, that next read has been issued.
            Task<int> receive = server.ReceiveAsync(buffer).AsTask();
            await TestTimeouts.WaitUntilAsync(() => server.PendingReadLengthForTest == 0 && !receive.IsCompleted, "waiting");
            await Peer.SendPatternAsync(client, 4096).WithTimeout();
            Assert.Equal(4096, await receive.WithTimeout());

            // The loop's next read, after a read that filled 4 KiB: it went out at 8 KiB.
            Assert.Equal(0, server.PendingReadLengthForTest);
        }
    }

    // The policy the loop follows after every read that went into the input (Stryker, session 12: no socket test told
    // these rules apart, since each only changes how many recv calls a transfer takes).
    [Theory]
    [InlineData(4096, 4096, 4096, 8192)]      // a full read doubles
    [InlineData(32768, 32768, 32768, 65536)]
    [InlineData(65536, 65536, 65536, 65536)]  // never past 64 KiB
    [InlineData(4096, 4096, 8192, 4096)]      // a read that did not fill its (larger) buffer does not grow
    [InlineData(4096, 1, 4096, 4096)]         // never below 4 KiB
    [InlineData(4096, 4095, 4096, 4096)]
    [InlineData(8192, 4096, 8192, 4096)]      // at most 4 KiB: request/response again
    [InlineData(8192, 4097, 8192, 8192)]
    [InlineData(65536, 16383, 65536, 32768)]  // under a quarter shrinks
    [InlineData(65536, 16384, 65536, 65536)]  // a quarter or more keeps the size
    [InlineData(65536, 32768, 65536, 65536)]
    [InlineData(65536, 65535, 65536, 65536)]
    public void NextReadSize_DoublesOnAFullRead_HalvesOnASmallOne_StaysWithinFourToSixtyFourKiB(int readSize, int received, int bufferLength, int expected)
    {
        Assert.Equal(expected, ManagedConnection.NextReadSize(readSize, received, bufferLength));
    }
}
