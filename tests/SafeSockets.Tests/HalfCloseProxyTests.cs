using System.Net;
using System.Net.Sockets;
using System.Text;
using Microsoft.Extensions.Time.Testing;
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

    private const int SlowAnswerBytes = 100_000;

    /// <summary>A client sends its request and FIN (<c>nc -N</c>), and the upstream answers only later: after it has seen the
    /// FIN and the clock (a fake one: an event, not a sleep) has moved 1 s, past the 200 ms that stands for the library's
    /// default bound here. With the proxy's own bound (600 s, as nginx's proxy_timeout) the client gets the whole answer.</summary>
    [Fact]
    public async Task SlowUpstream_AnswersAfterClientFin_ClientGetsTheWholeAnswer_UnderTheProxyTimeout()
    {
        var clock = new FakeTimeProvider();
        PeerReadResult answer = await RunSlowUpstreamAsync(HalfCloseProxy.Proxy.ConnectionOptions(TimeSpan.FromSeconds(600), clock), clock, waitForClientEnd: false);

        Assert.Equal(PeerEnd.Fin, answer.End);
        Assert.Equal(Peer.Pattern(SlowAnswerBytes), answer.Data);
    }

    /// <summary>The control: the same slow upstream with the client side at a short bound (200 ms, the library default
    /// shortened) closes the waiting client with an empty answer. This is what the proxy timeout prevents.</summary>
    [Fact]
    public async Task SlowUpstream_WithoutTheProxyTimeout_ClientSideBoundClosesTheWaitingClientEmpty()
    {
        var clock = new FakeTimeProvider();
        var shortBound = new ManagedConnectionOptions { CloseWaitTimeout = TimeSpan.FromMilliseconds(200), TimeProvider = clock };
        PeerReadResult answer = await RunSlowUpstreamAsync(shortBound, clock, waitForClientEnd: true);

        Assert.Equal((PeerEnd.Fin, 0L), (answer.End, answer.Bytes));
    }

    /// <summary>Client → proxy (both sides with <paramref name="options"/>) → upstream that answers only once it saw the
    /// request's FIN and the clock was advanced by 1 s (and, with <paramref name="waitForClientEnd"/>, once the client has
    /// seen the end of its connection). Returns what the client read.</summary>
    private static async Task<PeerReadResult> RunSlowUpstreamAsync(ManagedConnectionOptions options, FakeTimeProvider clock, bool waitForClientEnd)
    {
        using Socket upstream = Loopback.Listen();
        await using ManagedListener proxyListener = HalfCloseProxy.Proxy.Listen(new IPEndPoint(IPAddress.Loopback, 0), options);
        using var stop = new CancellationTokenSource();
        Task proxy = HalfCloseProxy.Proxy.RunAsync(proxyListener, upstream.LocalEndPoint!, options, stop.Token);
        var requestEnded = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var answerNow = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);

        Task upstreamSide = Task.Run(async () =>
        {
            using Socket s = await upstream.AcceptAsync();
            PeerReadResult request = await Peer.ReadToEndAsync(s);
            Assert.Equal((PeerEnd.Fin, 7L), (request.End, request.Bytes));
            requestEnded.SetResult();
            await answerNow.Task;
            try
            {
                await Peer.SendPatternAsync(s, SlowAnswerBytes);
                s.Shutdown(SocketShutdown.Send);
                await Peer.ReadToEndAsync(s);
            }
            catch (SocketException) when (waitForClientEnd)
            {
                // The control: the proxy lost its client, so it aborts the upstream side.
            }
        });

        using var client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        await client.ConnectAsync(proxyListener.LocalEndPoint).WithTimeout();
        await client.SendAsync(Encoding.ASCII.GetBytes("request"), SocketFlags.None);
        client.Shutdown(SocketShutdown.Send);
        Task<PeerReadResult> reading = Peer.ReadToEndAsync(client, keepData: true);

        await requestEnded.Task.WithTimeout(); // the client's FIN went through the proxy: its client side is in CLOSE_WAIT
        clock.Advance(TimeSpan.FromSeconds(1)); // past the short bound, far from the proxy timeout
        if (waitForClientEnd)
        {
            await reading.WithTimeout();
        }

        answerNow.SetResult();
        PeerReadResult answer = await reading.WithTimeout();
        await upstreamSide.WithTimeout();
        await stop.CancelAsync();
        await proxy.WithTimeout();
        return answer;
    }
}
