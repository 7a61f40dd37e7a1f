using System.Buffers;
using System.IO.Pipelines;
using System.Net.Sockets;
using SafeSockets.Tests.Infrastructure;

namespace SafeSockets.Tests;

public sealed class TransportAndStreamTests
{
    [Fact]
    public async Task Transport_InputCompletesAtPeerFin_WithEveryByte()
    {
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync();
        await using (connection)
        using (peer)
        {
            PipeReader input = connection.Transport.Input;
            byte[] sent = Peer.Pattern(500_000);
            Task send = Task.Run(async () => { await Peer.SendPatternAsync(peer, sent.Length); peer.Shutdown(SocketShutdown.Send); });

            using var received = new MemoryStream();
            while (true)
            {
                ReadResult result = await input.ReadAsync().AsTask().WithTimeout();
                foreach (ReadOnlyMemory<byte> segment in result.Buffer)
                {
                    received.Write(segment.Span);
                }

                input.AdvanceTo(result.Buffer.End);
                if (result.IsCompleted)
                {
                    break;
                }
            }

            await send.WithTimeout();
            Assert.Equal(sent, received.ToArray());
            await input.CompleteAsync();
        }
    }

    [Fact]
    public async Task Transport_CompletingOutput_FlushesThenSendsFin_InputStillReadable()
    {
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync();
        await using (connection)
        using (peer)
        {
            IDuplexPipe transport = connection.Transport;
            byte[] payload = Peer.Pattern(2 * 1024 * 1024);
            Task<PeerReadResult> read = Peer.ReadToEndAsync(peer, keepData: true);
            await transport.Output.WriteAsync(payload).AsTask().WithTimeout();
            await transport.Output.CompleteAsync().AsTask().WithTimeout();

            PeerReadResult seen = await read.WithTimeout();
            Assert.Equal(PeerEnd.Fin, seen.End);
            Assert.Equal(payload, seen.Data);
            Assert.Equal(ConnectionState.SendShutdown, connection.State);

            // Half-closed: the peer's answer still arrives through Input.
            await Peer.SendPatternAsync(peer, 3);
            ReadResult result = await transport.Input.ReadAsync().AsTask().WithTimeout();
            Assert.Equal(Peer.Pattern(3), result.Buffer.Slice(0, 3).ToArray());
            transport.Input.AdvanceTo(result.Buffer.End);
        }
    }

    [Fact]
    public async Task Transport_CloseAsync_SendsWhatWasFlushedThenFinAndDrains()
    {
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync();
        using (peer)
        {
            IDuplexPipe transport = connection.Transport;
            byte[] payload = Peer.Pattern(1024 * 1024);
            ValueTask<FlushResult> write = transport.Output.WriteAsync(payload);
            Task<CloseResult> close = connection.CloseAsync().AsTask();

            PeerReadResult seen = await Peer.ReadToEndAsync(peer, keepData: true).WithTimeout();
            peer.Shutdown(SocketShutdown.Send);
            await write.AsTask().WithTimeout();
            Assert.Equal(CloseOutcome.Graceful, (await close.WithTimeout()).Outcome);
            Assert.Equal((PeerEnd.Fin, payload.Length), (seen.End, seen.Data!.Length));
            Assert.Equal(payload, seen.Data);
        }
    }

    [Fact]
    public async Task MixingTransportWithReceiveSendOrStream_ThrowsInvalidOperation()
    {
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync();
        await using (connection)
        using (peer)
        {
            _ = connection.Transport;
            await Assert.ThrowsAsync<InvalidOperationException>(() => connection.SendAsync(new byte[1]).AsTask());
            await Assert.ThrowsAsync<InvalidOperationException>(() => connection.ReceiveAsync(new byte[1]).AsTask());
            Assert.Throws<InvalidOperationException>(() => connection.GetStream());
        }

        (Socket peer2, ManagedConnection connection2) = await Loopback.CreateManagedServerAsync();
        await using (connection2)
        using (peer2)
        {
            await connection2.SendAsync(new byte[1]).WithTimeout();
            using Stream stream = connection2.GetStream(); // the stream and Send/Receive mix freely
            var ex = Assert.Throws<InvalidOperationException>(() => connection2.Transport);
            Assert.Contains("Transport", ex.Message, StringComparison.Ordinal);
        }
    }

    [Fact]
    public async Task Stream_ReadsAndWrites_DisposeLeavesConnectionOpenByDefault()
    {
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync();
        await using (connection)
        using (peer)
        {
            await using (Stream stream = connection.GetStream())
            {
                await stream.WriteAsync(new byte[] { 1, 2, 3 }).AsTask().WithTimeout();
                byte[] got = new byte[3];
                Assert.Equal(3, await peer.ReceiveAsync(got, SocketFlags.None).WithTimeout());
                await Peer.SendPatternAsync(peer, 2);
                Assert.Equal(2, await stream.ReadAsync(new byte[10]).AsTask().WithTimeout());
            }

            Assert.Equal(ConnectionState.Open, connection.State);
            await connection.SendAsync(new byte[] { 4 }).WithTimeout();
        }
    }

    [Fact]
    public async Task Stream_OwningTheConnection_ClosesItGracefullyOnDispose()
    {
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync();
        using (peer)
        {
            Stream stream = connection.GetStream(ownsConnection: true);
            await stream.WriteAsync(new byte[] { 9 }).AsTask().WithTimeout();
            Task dispose = stream.DisposeAsync().AsTask();
            PeerReadResult seen = await Peer.ReadToEndAsync(peer).WithTimeout();
            peer.Shutdown(SocketShutdown.Send);
            await dispose.WithTimeout();

            Assert.Equal((1, PeerEnd.Fin), (seen.Bytes, seen.End));
            Assert.Equal(CloseOutcome.Graceful, (await connection.Completion.WithTimeout()).Outcome);
        }
    }
}
