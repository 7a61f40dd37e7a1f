using System.Diagnostics.Metrics;
using System.Net;
using Microsoft.Extensions.Diagnostics.Metrics.Testing;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Testing;
using SafeSockets.Diagnostics;

namespace SafeSockets.Extensions.Hosting.Tests;

/// <summary>The host's stop: every peer gets FIN; only a connection still open at the shutdown deadline is aborted.</summary>
public sealed class HostStopTests
{
    [Fact]
    public async Task StopAsync_EveryPeerReadsFin_AndEveryConnectionEndsGracefully()
    {
        using IHost host = await TestHosts.StartAsync<EchoHandler>(b => b.Services.AddFakeLogging());
        Recorder recorder = TestHosts.RecorderOf(host);

        var peers = new List<Socket>();
        var connections = new List<ManagedConnection>();
        for (int i = 0; i < 3; i++)
        {
            peers.Add(await TestHosts.ConnectEchoedAsync(host));
            connections.Add(await recorder.NextAsync());
        }

        Task stop = host.StopAsync();

        // Each peer reads to the end and sees FIN, not RST; then closes its side, as a well-behaved client does.
        foreach (Socket peer in peers)
        {
            PeerReadResult end = await Peer.ReadToEndAsync(peer).WithTimeout();
            Assert.Equal(PeerEnd.Fin, end.End);
            peer.Shutdown(SocketShutdown.Send);
        }

        await stop.WithTimeout();
        foreach (ManagedConnection connection in connections)
        {
            Assert.Equal(CloseOutcome.Graceful, (await connection.Completion.WithTimeout()).Outcome);
        }

        FakeLogRecord stopped = Assert.Single(host.Services.GetFakeLogCollector().GetSnapshot(), r => r.Id.Id == 103);
        Assert.Equal("SafeSockets listener 'echo' stopped: 3 connections closed gracefully, 0 aborted at the shutdown deadline, 0 ended otherwise (a peer's reset, a drain bound).", stopped.Message);
        peers.ForEach(p => p.Dispose());
    }

    [Fact]
    public async Task StopAsync_AbortsOnlyTheStragglerAtTheShutdownDeadline()
    {
        // Drain bounds far beyond the host's shutdown timeout: only the deadline can end the straggler's drain.
        using IHost host = await TestHosts.StartAsync<EchoHandler>(
            b => b.Services.Configure<HostOptions>(o => o.ShutdownTimeout = TimeSpan.FromSeconds(1)),
            ("Connection:DrainTimeout", "00:05:00"), ("Connection:DrainIdleTimeout", "00:05:00"));
        using var closed = new MetricCollector<long>(host.Services.GetRequiredService<IMeterFactory>(), SafeSocketsMetrics.MeterName, SafeSocketsMetrics.ConnectionsClosed);
        Recorder recorder = TestHosts.RecorderOf(host);

        using Socket cooperative = await TestHosts.ConnectEchoedAsync(host);
        ManagedConnection cooperativeConnection = await recorder.NextAsync();
        using Socket straggler = await TestHosts.ConnectEchoedAsync(host);
        ManagedConnection stragglerConnection = await recorder.NextAsync();

        Task stop = host.StopAsync();

        // Both get the FIN at once; the cooperative peer answers with its own, the straggler never does.
        Assert.Equal(PeerEnd.Fin, (await Peer.ReadToEndAsync(cooperative).WithTimeout()).End);
        cooperative.Shutdown(SocketShutdown.Send);
        byte[] one = new byte[1];
        Assert.Equal(0, await straggler.ReceiveAsync(one, SocketFlags.None).WithTimeout());

        await stop.WithTimeout();
        Assert.Equal(CloseOutcome.Graceful, (await cooperativeConnection.Completion.WithTimeout()).Outcome);
        Assert.Equal(CloseOutcome.Aborted, (await stragglerConnection.Completion.WithTimeout()).Outcome);

        IReadOnlyList<CollectedMeasurement<long>> ends = closed.GetMeasurementSnapshot();
        Assert.Equal(2, ends.Count);
        Assert.Single(ends, m => m.ContainsTags(Tag("outcome", "graceful")) && !m.Tags.ContainsKey("error.type"));
        Assert.Single(ends, m => m.ContainsTags(Tag("outcome", "aborted"), Tag("error.type", "aborted")));
    }

    [Fact]
    public async Task HandlerThrows_PeerStillReadsFin_AndTheListenerGoesOn()
    {
        using IHost host = await TestHosts.StartAsync<ThrowingHandler>();
        Recorder recorder = TestHosts.RecorderOf(host);

        for (int i = 0; i < 2; i++)
        {
            using Socket peer = await TestHosts.ConnectEchoedAsync(host);
            ManagedConnection connection = await recorder.NextAsync();
            Assert.Equal(PeerEnd.Fin, (await Peer.ReadToEndAsync(peer).WithTimeout()).End);
            peer.Shutdown(SocketShutdown.Send);
            Assert.Equal(CloseOutcome.Graceful, (await connection.Completion.WithTimeout()).Outcome);
        }

        await host.StopAsync().WithTimeout();
    }

    [Fact]
    public async Task StopAsync_HandlerIgnoringTheStop_KeepsItsConnectionUntilTheShutdownDeadline_ThenItIsAborted_WithoutAnError()
    {
        using IHost host = await StartLoggedAsync<TokenlessEchoHandler>(TimeSpan.FromSeconds(1));
        Recorder recorder = TestHosts.RecorderOf(host);
        using Socket peer = await TestHosts.ConnectEchoedAsync(host);
        ManagedConnection connection = await recorder.NextAsync();

        Task stop = host.StopAsync();

        // The connection is the handler's until it returns: no FIN under it (the read would return 0 first), only the
        // reset when the host's shutdown timeout ends.
        PeerReadResult end = await Peer.ReadToEndAsync(peer).WithTimeout();
        Assert.Equal(new PeerReadResult(0, PeerEnd.Reset, null), end);
        await stop.WithTimeout();
        Assert.Equal(CloseOutcome.Aborted, (await connection.Completion.WithTimeout()).Outcome);

        // The handler's receive fails under it; that is the stop, not a failure: nothing at Error, one Warning (107).
        await TestHosts.ServiceOf(host).HandlersCompleted.WithTimeout();
        FakeLogRecord[] loud = [.. host.Services.GetFakeLogCollector().GetSnapshot().Where(r => r.Level >= LogLevel.Warning)];
        FakeLogRecord warning = Assert.Single(loud);
        Assert.Equal(107, warning.Id.Id);
        Assert.Equal(LogLevel.Warning, warning.Level);
        Assert.Contains("1 handlers had not returned", warning.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task StopAsync_HandlerMidReply_DeliversItsWholeReply_ThenFin_AndNothingIsLoggedAsAnError()
    {
        using IHost host = await StartLoggedAsync<ReplyAfterStopHandler>(TimeSpan.FromSeconds(10));
        Recorder recorder = TestHosts.RecorderOf(host);
        using var peer = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        await peer.ConnectAsync(TestHosts.EndPointOf(host)).WithTimeout();
        await peer.SendAsync(new byte[] { 7 }, SocketFlags.None).WithTimeout();
        ManagedConnection connection = await recorder.NextAsync(); // the handler has the request and works on it

        Task stop = host.StopAsync();

        // The handler replies 300 ms into the stop; the reply arrives whole, then the FIN of the close after it returns.
        PeerReadResult reply = await Peer.ReadToEndAsync(peer, keepData: true).WithTimeout();
        Assert.Equal(PeerEnd.Fin, reply.End);
        Assert.Equal(new byte[] { 7 }, reply.Data);
        peer.Shutdown(SocketShutdown.Send);
        await stop.WithTimeout();
        Assert.Equal(CloseOutcome.Graceful, (await connection.Completion.WithTimeout()).Outcome);
        await TestHosts.ServiceOf(host).HandlersCompleted.WithTimeout();
        Assert.DoesNotContain(host.Services.GetFakeLogCollector().GetSnapshot(), r => r.Level >= LogLevel.Warning);
    }

    [Fact]
    public async Task StopAsync_TwoListeners_BothStopAcceptingAtOnce_EachCooperativePeerGetsFinBeforeTheDeadline_OnlyStragglersAreAborted()
    {
        // Drain bounds far beyond the shutdown timeout: only the deadline ends a straggler's drain.
        (string, string?)[] longDrain = [("Connection:DrainTimeout", "00:05:00"), ("Connection:DrainIdleTimeout", "00:05:00")];
        HostApplicationBuilder builder = TestHosts.Builder(longDrain);
        TestHosts.AddListenerSection(builder, "second", longDrain);
        builder.Services.AddManagedListener<EchoHandler>("second");     // registered first: the host stops it last
        builder.Services.AddManagedListener<EchoHandler>(TestHosts.Name); // registered last: the host stops it first
        builder.Services.Configure<HostOptions>(o => o.ShutdownTimeout = TimeSpan.FromSeconds(2));
        builder.Services.AddFakeLogging();
        using IHost host = builder.Build();
        await host.StartAsync().WithTimeout();
        Recorder recorder = TestHosts.RecorderOf(host);
        IPEndPoint[] listeners = [TestHosts.EndPointOf(host), TestHosts.EndPointOf(host, "second")];

        // On each listener a cooperative peer (answers the FIN with its own) and a straggler (never does).
        var cooperative = new List<(Socket Peer, ManagedConnection Connection)>();
        var stragglers = new List<(Socket Peer, ManagedConnection Connection)>();
        foreach (IPEndPoint listener in listeners)
        {
            Socket peer = await TestHosts.ConnectEchoedAsync(listener);
            cooperative.Add((peer, await recorder.NextAsync()));
            peer = await TestHosts.ConnectEchoedAsync(listener);
            stragglers.Add((peer, await recorder.NextAsync()));
        }

        Task stop = host.StopAsync();

        // Both cooperative peers get FIN while the stop is still running (the stragglers hold it to the 2 s deadline).
        foreach ((Socket peer, _) in cooperative)
        {
            Assert.Equal(PeerEnd.Fin, (await Peer.ReadToEndAsync(peer).WithTimeout()).End);
        }

        Assert.False(stop.IsCompleted, "the cooperative peers' FIN came before the deadline");

        // Neither listener accepts any more: a connection attempted now is refused by both.
        foreach (IPEndPoint listener in listeners)
        {
            Assert.Equal(SocketError.ConnectionRefused, await TestHosts.TryConnectAsync(listener));
        }

        foreach ((Socket peer, _) in cooperative)
        {
            peer.Shutdown(SocketShutdown.Send);
        }

        await stop.WithTimeout();
        foreach ((Socket peer, ManagedConnection connection) in cooperative)
        {
            Assert.Equal(CloseOutcome.Graceful, (await connection.Completion.WithTimeout()).Outcome);
            peer.Dispose();
        }

        foreach ((Socket peer, ManagedConnection connection) in stragglers)
        {
            Assert.Equal(CloseOutcome.Aborted, (await connection.Completion.WithTimeout()).Outcome);
            peer.Dispose();
        }

        string[] stopped = [.. host.Services.GetFakeLogCollector().GetSnapshot().Where(r => r.Id.Id == 103).Select(r => r.Message).Order(StringComparer.Ordinal)];
        // Compared as one string, so that a failure shows each line whole.
        Assert.Equal(
            string.Join('\n',
                "SafeSockets listener 'echo' stopped: 1 connections closed gracefully, 1 aborted at the shutdown deadline, 0 ended otherwise (a peer's reset, a drain bound).",
                "SafeSockets listener 'second' stopped: 1 connections closed gracefully, 1 aborted at the shutdown deadline, 0 ended otherwise (a peer's reset, a drain bound)."),
            string.Join('\n', stopped));
    }

    [Fact]
    public async Task StopAsync_StoppingCallbackThrows_TheListenerStillStops_AndThePeerGetsFin()
    {
        using IHost host = await TestHosts.StartAsync<ThrowingCallbackHandler>(b => b.Services.AddFakeLogging());
        Recorder recorder = TestHosts.RecorderOf(host);
        IPEndPoint listener = TestHosts.EndPointOf(host);
        using Socket peer = await TestHosts.ConnectEchoedAsync(host);
        ManagedConnection connection = await recorder.NextAsync();

        Task stop = host.StopAsync();
        Assert.Equal(PeerEnd.Fin, (await Peer.ReadToEndAsync(peer).WithTimeout()).End);
        peer.Shutdown(SocketShutdown.Send);
        await stop.WithTimeout(); // the callback's exception is logged, not thrown out of the stop
        Assert.Equal(CloseOutcome.Graceful, (await connection.Completion.WithTimeout()).Outcome);
        Assert.Equal(SocketError.ConnectionRefused, await TestHosts.TryConnectAsync(listener));

        FakeLogRecord error = Assert.Single(host.Services.GetFakeLogCollector().GetSnapshot(), r => r.Level >= LogLevel.Warning);
        Assert.Equal(LogLevel.Error, error.Level);
        Assert.Equal(108, error.Id.Id);
        Assert.Equal("the stop callback's own bug", Assert.IsType<InvalidOperationException>(Assert.Single(Assert.IsType<AggregateException>(error.Exception).InnerExceptions)).Message);
    }

    /// <summary>A started host whose listener serves with <typeparamref name="THandler"/>, with fake logging and the
    /// given shutdown timeout.</summary>
    private static Task<IHost> StartLoggedAsync<THandler>(TimeSpan shutdownTimeout)
        where THandler : class, IConnectionHandler =>
        TestHosts.StartAsync<THandler>(b =>
        {
            b.Services.Configure<HostOptions>(o => o.ShutdownTimeout = shutdownTimeout);
            b.Services.AddFakeLogging();
        });

    private static KeyValuePair<string, object?> Tag(string name, object? value) => new(name, value);
}
