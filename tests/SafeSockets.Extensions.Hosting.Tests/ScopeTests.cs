using System.Net.Sockets;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using SafeSockets.Extensions.Hosting.Tests.Infrastructure;
using SafeSockets.Tests.Infrastructure;

namespace SafeSockets.Extensions.Hosting.Tests;

/// <summary>One dependency-injection scope per connection, disposed when its connection's handler is done.</summary>
public sealed class ScopeTests
{
    [Fact]
    public async Task EachConnection_GetsAScopeOfItsOwn_DisposedWhenItsHandlerReturns()
    {
        HostApplicationBuilder builder = TestHosts.Builder();
        builder.Services.AddScoped<ScopeProbe>();
        builder.Services.AddManagedListener<ScopedEchoHandler>(TestHosts.Name);
        using IHost host = builder.Build();
        await host.StartAsync().WithTimeout();
        Recorder recorder = host.Services.GetRequiredService<Recorder>();

        using Socket first = await TestHosts.ConnectEchoedAsync(host);
        using Socket second = await TestHosts.ConnectEchoedAsync(host);
        ScopeProbe[] probes = [.. recorder.Probes];
        Assert.Equal(2, probes.Length);
        Assert.NotSame(probes[0], probes[1]);

        // The first peer ends its connection: its handler returns and only its scope is disposed.
        first.Shutdown(SocketShutdown.Send);
        Assert.Equal(PeerEnd.Fin, (await Peer.ReadToEndAsync(first).WithTimeout()).End);
        await probes[0].Disposed.Task.WithTimeout();
        Assert.False(probes[1].Disposed.Task.IsCompleted, "the second connection is still open: its scope must live on");

        second.Shutdown(SocketShutdown.Send);
        Assert.Equal(PeerEnd.Fin, (await Peer.ReadToEndAsync(second).WithTimeout()).End);
        await probes[1].Disposed.Task.WithTimeout();
        await host.StopAsync().WithTimeout();
    }
}
