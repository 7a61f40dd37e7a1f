using System.IO.Pipelines;
using System.Net.Sockets;
using System.Reflection;
using SafeSockets.Tests.Infrastructure;

namespace SafeSockets.Tests;

/// <summary>Memory a draining connection holds while its peer is quiet (review 11: the drain's jump to 64 KiB reads).</summary>
public sealed class DrainMemoryTests
{
    // Session 13, found as a flaky DrainCapTests run under two CPU hogs: a grown read (past 4 KiB) follows a wait for
    // data so that a read left waiting holds no grown buffer, but the wait can complete with nothing to read (a stale
    // readiness), and the loop's 32 KiB read then waited on a quiet peer, holding its buffer (and, were the connection
    // closed then, the drain would count all that read got past MaxDrainBytes). The hook takes the bytes that woke the
    // wait, exactly as a stale readiness leaves it.
    [Fact]
    public async Task GrownRead_TheWaitForDataFindsNothingToRead_TheReadThatWaitsHoldsAtMost4KiB()
    {
        if (!OperatingSystem.IsLinux())
        {
            return; // the pending read is observed through the pooled operation, used where shutdown(SHUT_RD) stops reads
        }

        // Every read waits for data first, so the hook runs even if the upload's tail shrank the read size back to 4 KiB.
        var options = new ManagedConnectionOptions { WaitForDataBeforeAllocatingBuffer = true };
        (Socket client, ManagedConnection server) = await Loopback.CreateManagedServerAsync(options);
        using (client)
        {
            server.KeepParkedForTest(); // the loop's own wait, never the lazy watch's (which skips the hook)

            // An upload read in bulk: the loop's reads grow past 4 KiB.
            byte[] buffer = await Peer.UploadInBulkAsync(client, server);

            int stolen = 0;
            var stole = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            ManagedConnection.AfterWaitForDataForTest = c =>
            {
                if (!ReferenceEquals(c, server) || stole.Task.IsCompleted || c.Socket.Available == 0)
                {
                    // Not the wake for the bytes below (a wait that completed with nothing to read anyway).
                    return;
                }

                byte[] sink = new byte[256];
                while (c.Socket.Available > 0)
                {
                    stolen += c.Socket.Receive(sink);
                }

                stole.TrySetResult();
            };
            try
            {
                // If a wait completed by itself with nothing to read (what this test stages), the loop's 4 KiB read takes
                // the bytes: then again, a bounded number of times.
                Task<int> receive = server.ReceiveAsync(buffer).AsTask();
                for (int attempt = 0; ; attempt++)
                {
                    await client.SendAsync(new byte[100]).WithTimeout();
                    Task first = await Task.WhenAny(stole.Task, receive).WithTimeout();
                    if (first == stole.Task)
                    {
                        break;
                    }

                    Assert.True(attempt < 5, "the loop's wait for data never woke for the bytes sent");
                    Assert.Equal(100, await receive);
                    receive = server.ReceiveAsync(buffer).AsTask();
                }
                await TestTimeouts.WaitUntilAsync(() => server.PendingReadLengthForTest > 0, "the loop's read after its wait is issued");

                Assert.Equal(100, stolen);
                Assert.True(server.SmallReadFallbacksForTest >= 1, "the read after the wait took its grown size (or the read size was 4 KiB already: the test proved nothing)");
                Assert.False(receive.IsCompleted);
                Assert.True(server.PendingReadLengthForTest <= 4096, $"the read waiting on a quiet peer holds {server.PendingReadLengthForTest} bytes");

                // That read still serves the application.
                await client.SendAsync(new byte[10]).WithTimeout();
                Assert.Equal(10, await receive.WithTimeout());
            }
            finally
            {
                ManagedConnection.AfterWaitForDataForTest = null;
            }

            client.Shutdown(SocketShutdown.Send);
            Assert.Equal(CloseOutcome.Graceful, (await server.CloseAsync().AsTask().WithTimeout()).Outcome);
        }
    }

    [Fact]
    public async Task Drain_PeerQuietAfterABurst_HoldsNoLargerInputBufferThanItStartedWith()
    {
        if (!OperatingSystem.IsLinux())
        {
            return; // the pending read is observed through the pooled operation, used where shutdown(SHUT_RD) stops reads
        }

        (Socket client, ManagedConnection server) = await Loopback.CreateManagedServerAsync();
        using (client)
        {
            Task<CloseResult> close = server.CloseAsync().AsTask();

            // Our FIN: the input is the teardown's, every byte from here on is drained.
            Assert.Equal(PeerEnd.Fin, (await Peer.ReadToEndAsync(client).WithTimeout()).End);

            // One burst of 8 KiB (it made the drain's reads jump to 64 KiB, then taken from the input's memory), then the
            // peer goes quiet: a slow-drip client keeps it so with a byte every few seconds (under DrainIdleTimeout) for
            // the whole DrainTimeout.
            await Peer.SendPatternAsync(client, 8 * 1024).WithTimeout();
            await TestTimeouts.WaitUntilAsync(
                () => server.BytesDrainedForTest == 8 * 1024 && server.PendingReadLengthForTest > 0,
                "the drain's next read is pending");

            int held = InputWriteBufferLength(server);

            client.Shutdown(SocketShutdown.Send);
            CloseResult result = await close.WithTimeout();
            Assert.Equal(CloseOutcome.Graceful, result.Outcome);
            Assert.Equal(8 * 1024, result.BytesDrained);

            // Each connection draining a quiet peer holds this much until DrainTimeout (30 s by default; up to
            // MaxDrainingConnections per listener, unbounded for connected clients).
            Assert.True(held <= 4096, $"a draining connection whose peer is quiet holds a {held}-byte input buffer");
        }
    }

    // Review, session 12: with a discard-mode read sent into the input's memory (the Stryker survivor), no test failed. A
    // reader completed with bytes unread keeps the pipe's segments, and such a read, never advanced, takes a new 64 KiB
    // segment whenever the last one has less room than the loop's grown read size; held until the connection ends.
    [Fact]
    public async Task ApplicationCompletedItsReaderWithBytesUnread_LaterBytesTakeNoMoreInputMemory()
    {
        (Socket client, ManagedConnection server) = await Loopback.CreateManagedServerAsync();
        await using (server)
        using (client)
        {
            PipeReader input = server.Transport.Input;
            const int Upload = 1024 * 1024;
            Task send = Peer.SendPatternAsync(client, Upload);

            // Read in bulk (the loop's reads grow to 64 KiB), then stop consuming: the loop pauses behind what is unread.
            long consumed = 0;
            while (consumed < 256 * 1024)
            {
                ReadResult read = await input.ReadAsync().AsTask().WithTimeout();
                consumed += read.Buffer.Length;
                input.AdvanceTo(read.Buffer.End);
            }

            await TestTimeouts.WaitUntilAsync(() => server.InputPausedForTest, "the loop paused behind the unread bytes");
            long before = InputSegmentsLength(server);

            // Done reading, bytes unread: the rest of the upload is read and thrown away.
            await input.CompleteAsync();
            await send.WithTimeout();
            await TestTimeouts.WaitUntilAsync(() => server.Socket.Available == 0, "the loop read the whole upload");

            long after = InputSegmentsLength(server);
            Assert.True(after <= before, $"the input's segments grew from {before} to {after} bytes while the loop threw bytes away");

            client.Shutdown(SocketShutdown.Send);
            Assert.Equal(CloseOutcome.Graceful, (await server.CloseAsync().AsTask().WithTimeout()).Outcome);
        }
    }

    /// <summary>The capacity of every segment the input pipe holds (read, unread, and being written).</summary>
    internal static long InputSegmentsLength(ManagedConnection connection)
    {
        var pipe = (Pipe)connection.InputPipe;
        var seen = new HashSet<object>(ReferenceEqualityComparer.Instance);
        long total = 0;
        foreach (FieldInfo field in typeof(Pipe).GetFields(BindingFlags.NonPublic | BindingFlags.Instance))
        {
            if (field.FieldType.Name != "BufferSegment")
            {
                continue;
            }

            for (var segment = (System.Buffers.ReadOnlySequenceSegment<byte>?)field.GetValue(pipe); segment is not null; segment = segment.Next)
            {
                if (seen.Add(segment))
                {
                    PropertyInfo available = segment.GetType().GetProperty("AvailableMemory", BindingFlags.NonPublic | BindingFlags.Public | BindingFlags.Instance)
                        ?? throw new InvalidOperationException("System.IO.Pipelines' BufferSegment has no AvailableMemory any more");
                    total += ((Memory<byte>)available.GetValue(segment)!).Length;
                }
            }
        }

        return total;
    }

    /// <summary>The input pipe's memory taken for writing and not yet advanced (0 when it holds none).</summary>
    internal static int InputWriteBufferLength(ManagedConnection connection)
    {
        var pipe = (Pipe)connection.InputPipe;
        FieldInfo field = typeof(Pipe).GetField("_writingHeadMemory", BindingFlags.NonPublic | BindingFlags.Instance)
            ?? throw new InvalidOperationException("System.IO.Pipelines has no _writingHeadMemory field any more");
        return ((Memory<byte>)field.GetValue(pipe)!).Length;
    }
}
