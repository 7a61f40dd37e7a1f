using System.Net;
using Microsoft.Extensions.Configuration;

namespace SafeSockets.Extensions.Hosting.Tests;

/// <summary>A start that fails, or a host disposed without a stop, leaves no listener behind; a bind failure names the
/// listener, its configuration key and its end point.</summary>
public sealed class StartFailureTests
{
    [Fact]
    public async Task Start_SecondListenerCannotBind_FailsNamingItsKeyAndEndPoint_AndDisposingTheHostClosesTheFirst()
    {
        using var blocker = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        blocker.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        blocker.Listen();
        int busy = ((IPEndPoint)blocker.LocalEndPoint!).Port;
        HostApplicationBuilder builder = TestHosts.Builder();
        builder.Configuration.AddInMemoryCollection(new Dictionary<string, string?> { ["SafeSockets:Listeners:second:EndPoint"] = $"127.0.0.1:{busy}" });
        builder.Services.AddManagedListener<EchoHandler>(TestHosts.Name); // starts, then the second fails
        builder.Services.AddManagedListener<EchoHandler>("second");
        IHost host = builder.Build();

        InvalidOperationException error = await Assert.ThrowsAsync<InvalidOperationException>(() => host.StartAsync().WithTimeout());
        Assert.Equal(
            $"SafeSockets listener 'second' could not listen on 127.0.0.1:{busy} (configuration key SafeSockets:Listeners:second:EndPoint): {error.InnerException!.Message}",
            error.Message);
        Assert.Equal(SocketError.AddressAlreadyInUse, Assert.IsType<SocketException>(error.InnerException).SocketErrorCode);

        IPEndPoint first = TestHosts.EndPointOf(host);
        await ((IAsyncDisposable)host).DisposeAsync().AsTask().WithTimeout();
        Assert.Equal(SocketError.ConnectionRefused, await TestHosts.TryConnectAsync(first));
    }

    [Fact]
    public async Task Start_LaterServiceFails_DisposingTheHostClosesTheListener()
    {
        HostApplicationBuilder builder = TestHosts.Builder();
        builder.Services.AddManagedListener<EchoHandler>(TestHosts.Name);
        builder.Services.AddHostedService<FailingStartService>();
        IHost host = builder.Build();
        await Assert.ThrowsAsync<InvalidOperationException>(() => host.StartAsync().WithTimeout());

        IPEndPoint listener = TestHosts.EndPointOf(host);
        host.Dispose();
        Assert.Equal(SocketError.ConnectionRefused, await TestHosts.TryConnectAsync(listener));
    }

    [Fact]
    public async Task DisposeWithoutStop_StopsAccepting_AndAbortsTheOpenConnections()
    {
        IHost host = await TestHosts.StartAsync<EchoHandler>();
        IPEndPoint listener = TestHosts.EndPointOf(host);
        using Socket peer = await TestHosts.ConnectEchoedAsync(host);
        ManagedConnection connection = await TestHosts.RecorderOf(host).NextAsync();

        await ((IAsyncDisposable)host).DisposeAsync().AsTask().WithTimeout();

        Assert.Equal(CloseOutcome.Aborted, (await connection.Completion.WithTimeout()).Outcome);
        Assert.Equal(SocketError.ConnectionRefused, await TestHosts.TryConnectAsync(listener));
    }

    [Fact]
    public async Task Start_HandlerWithAMissingDependency_FailsTheStart_NamingTheListenerAndTheHandler()
    {
        HostApplicationBuilder builder = TestHosts.Builder();
        builder.Services.AddManagedListener<MissingDependencyHandler>(TestHosts.Name);
        using IHost host = builder.Build();

        InvalidOperationException error = await Assert.ThrowsAsync<InvalidOperationException>(() => host.StartAsync().WithTimeout());
        Assert.StartsWith($"SafeSockets listener 'echo' cannot make its handler {typeof(MissingDependencyHandler).FullName}: ", error.Message, StringComparison.Ordinal);
        Assert.Contains(nameof(IUnregisteredService), error.InnerException!.Message, StringComparison.Ordinal);
        Assert.Null(TestHosts.ServiceOf(host).LocalEndPoint); // nothing listens
    }

    [Fact]
    public async Task StopAsync_AfterDispose_DoesNotThrow()
    {
        IHost host = await TestHosts.StartAsync<EchoHandler>();
        var service = TestHosts.ServiceOf(host);
        host.Dispose();
        await service.StopAsync(CancellationToken.None).WithTimeout();
    }
}
