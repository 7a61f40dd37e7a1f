using System.IO.Pipelines;
using System.Net.Sockets;
using System.Reflection;
using SafeSockets.Tests.Infrastructure;

namespace SafeSockets.Tests;

/// <summary>Memory a draining connection holds while its peer is quiet (review 11: the drain's jump to 64 KiB reads).</summary>
public sealed class DrainMemoryTests
{
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

    /// <summary>The input pipe's memory taken for writing and not yet advanced (0 when it holds none).</summary>
    internal static int InputWriteBufferLength(ManagedConnection connection)
    {
        var pipe = (Pipe)connection.InputPipe;
        FieldInfo field = typeof(Pipe).GetField("_writingHeadMemory", BindingFlags.NonPublic | BindingFlags.Instance)
            ?? throw new InvalidOperationException("System.IO.Pipelines has no _writingHeadMemory field any more");
        return ((Memory<byte>)field.GetValue(pipe)!).Length;
    }
}
