using System.Diagnostics.Metrics;
using System.Net.Sockets;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Diagnostics.Metrics.Testing;
using Microsoft.Extensions.Hosting;
using SafeSockets.Diagnostics;
using SafeSockets.Extensions.Hosting.Tests.Infrastructure;
using SafeSockets.Tests.Infrastructure;

namespace SafeSockets.Extensions.Hosting.Tests;

/// <summary>The host's stop: every peer gets FIN; only a connection still open at the shutdown deadline is aborted.</summary>
public sealed class HostStopTests
{
    [Fact]
    public async Task StopAsync_EveryPeerReadsFin_AndEveryConnectionEndsGracefully()
    {
        HostApplicationBuilder builder = TestHosts.Builder();
        builder.Services.AddManagedListener<EchoHandler>(TestHosts.Name);
        using IHost host = builder.Build();
        await host.StartAsync().WithTimeout();
        Recorder recorder = host.Services.GetRequiredService<Recorder>();

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

        peers.ForEach(p => p.Dispose());
    }

    [Fact]
    public async Task StopAsync_AbortsOnlyTheStragglerAtTheShutdownDeadline()
    {
        // Drain bounds far beyond the host's shutdown timeout: only the deadline can end the straggler's drain.
        HostApplicationBuilder builder = TestHosts.Builder(("Connection:DrainTimeout", "00:05:00"), ("Connection:DrainIdleTimeout", "00:05:00"));
        builder.Services.AddManagedListener<EchoHandler>(TestHosts.Name);
        builder.Services.Configure<HostOptions>(o => o.ShutdownTimeout = TimeSpan.FromSeconds(1));
        using IHost host = builder.Build();
        using var closed = new MetricCollector<long>(host.Services.GetRequiredService<IMeterFactory>(), SafeSocketsMetrics.MeterName, SafeSocketsMetrics.ConnectionsClosed);
        await host.StartAsync().WithTimeout();
        Recorder recorder = host.Services.GetRequiredService<Recorder>();

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
        HostApplicationBuilder builder = TestHosts.Builder();
        builder.Services.AddManagedListener<ThrowingHandler>(TestHosts.Name);
        using IHost host = builder.Build();
        await host.StartAsync().WithTimeout();
        Recorder recorder = host.Services.GetRequiredService<Recorder>();

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

    private static KeyValuePair<string, object?> Tag(string name, object? value) => new(name, value);
}
