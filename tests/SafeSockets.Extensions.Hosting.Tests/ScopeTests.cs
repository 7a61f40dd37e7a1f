namespace SafeSockets.Extensions.Hosting.Tests;

/// <summary>One dependency-injection scope per connection, disposed when its connection's handler is done.</summary>
public sealed class ScopeTests
{
    [Fact]
    public async Task EachConnection_GetsAScopeOfItsOwn_DisposedWhenItsHandlerReturns()
    {
        using IHost host = await TestHosts.StartAsync<ScopedEchoHandler>(b => b.Services.AddScoped<ScopeProbe>());
        Recorder recorder = TestHosts.RecorderOf(host);

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
