using System.Net;
using System.Net.Sockets;
using System.Text;
using SafeSockets.Tests.Infrastructure;

namespace SafeSockets.Tests;

/// <summary>The HalfCloseProxy sample between two real raw peers: half-close must cross it in both directions.</summary>
public sealed class HalfCloseProxyTests
{
    [Fact]
    public async Task ClientFin_ReachesUpstream_WhichStillAnswersThroughTheProxy()
    {
        using Socket upstream = Loopback.Listen();
        await using ManagedListener proxyListener = ManagedListener.Start(new IPEndPoint(IPAddress.Loopback, 0));
        using var stop = new CancellationTokenSource();
        Task proxy = HalfCloseProxy.Proxy.RunAsync(proxyListener, upstream.LocalEndPoint!, stop.Token);

        // Upstream: reads the request to its FIN, then answers how much it got, then closes.
        Task<long> upstreamSide = Task.Run(async () =>
        {
            using Socket s = await upstream.AcceptAsync();
            PeerReadResult request = await Peer.ReadToEndAsync(s);
            Assert.Equal(PeerEnd.Fin, request.End);
            await s.SendAsync(Encoding.ASCII.GetBytes($"got {request.Bytes}"), SocketFlags.None);
            s.Shutdown(SocketShutdown.Send);
            await Peer.ReadToEndAsync(s);
            return request.Bytes;
        });

        using var client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        await client.ConnectAsync(proxyListener.LocalEndPoint).WithTimeout();
        await Peer.SendPatternAsync(client, 300_000);
        client.Shutdown(SocketShutdown.Send);
        PeerReadResult answer = await Peer.ReadToEndAsync(client, keepData: true).WithTimeout();

        Assert.Equal(PeerEnd.Fin, answer.End);
        Assert.Equal("got 300000", Encoding.ASCII.GetString(answer.Data!));
        Assert.Equal(300_000, await upstreamSide.WithTimeout());
        await stop.CancelAsync();
        await proxy.WithTimeout();
    }

    [Fact]
    public async Task UpstreamFinFirst_ClientKeepsSending_AndUpstreamStillReadsIt()
    {
        using Socket upstream = Loopback.Listen();
        await using ManagedListener proxyListener = ManagedListener.Start(new IPEndPoint(IPAddress.Loopback, 0));
        using var stop = new CancellationTokenSource();
        Task proxy = HalfCloseProxy.Proxy.RunAsync(proxyListener, upstream.LocalEndPoint!, stop.Token);

        // Upstream speaks first and half-closes, then keeps reading.
        Task<PeerReadResult> upstreamSide = Task.Run(async () =>
        {
            using Socket s = await upstream.AcceptAsync();
            await s.SendAsync(Encoding.ASCII.GetBytes("banner"), SocketFlags.None);
            s.Shutdown(SocketShutdown.Send);
            return await Peer.ReadToEndAsync(s);
        });

        using var client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        await client.ConnectAsync(proxyListener.LocalEndPoint).WithTimeout();
        PeerReadResult banner = await Peer.ReadToEndAsync(client, keepData: true).WithTimeout();
        Assert.Equal((PeerEnd.Fin, "banner"), (banner.End, Encoding.ASCII.GetString(banner.Data!)));

        // The client's direction is still open end to end.
        await Peer.SendPatternAsync(client, 50_000);
        client.Shutdown(SocketShutdown.Send);
        PeerReadResult seen = await upstreamSide.WithTimeout();
        Assert.Equal((PeerEnd.Fin, 50_000L), (seen.End, seen.Bytes));
        await stop.CancelAsync();
        await proxy.WithTimeout();
    }
}
