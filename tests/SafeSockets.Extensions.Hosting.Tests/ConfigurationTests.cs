using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Options;
using SafeSockets.Extensions.Hosting.Tests.Infrastructure;
using SafeSockets.Tests.Infrastructure;

namespace SafeSockets.Extensions.Hosting.Tests;

/// <summary>Options from configuration: bound, configuration over code, and a bad value stops the start naming the key and the rule.</summary>
public sealed class ConfigurationTests
{
    [Fact]
    public async Task Start_BindsTimeSpansAndCountsFromConfiguration_OverTheCodesValues()
    {
        HostApplicationBuilder builder = TestHosts.Builder(
            ("Backlog", "17"),
            ("MaxConnections", "100"),
            ("Connection:DrainTimeout", "00:00:07"),
            ("Connection:IdleTimeout", "00:02:00"),
            ("Connection:CloseWaitTimeout", "00:00:03"),
            ("Connection:MaxDrainBytes", "1024"));
        builder.Services.AddManagedListener<EchoHandler>(TestHosts.Name, o =>
        {
            o.Listener.Connection.DrainTimeout = TimeSpan.FromSeconds(10);
            o.Listener.MaxDrainingConnections = 5;
        });
        using IHost host = builder.Build();
        await host.StartAsync().WithTimeout();

        HostedListenerOptions options = host.Services.GetRequiredService<IOptionsMonitor<HostedListenerOptions>>().Get(TestHosts.Name);
        Assert.Equal(17, options.Listener.Backlog);
        Assert.Equal(100, options.Listener.MaxConnections);
        Assert.Equal(5, options.Listener.MaxDrainingConnections); // from code: configuration does not name it
        Assert.Equal(TimeSpan.FromSeconds(7), options.Listener.Connection.DrainTimeout); // configuration wins over code
        Assert.Equal(TimeSpan.FromMinutes(2), options.Listener.Connection.IdleTimeout);
        Assert.Equal(TimeSpan.FromSeconds(3), options.Listener.Connection.CloseWaitTimeout);
        Assert.Equal(1024, options.Listener.Connection.MaxDrainBytes);
        Assert.Same(host.Services.GetRequiredService<System.Diagnostics.Metrics.IMeterFactory>(), options.Listener.Connection.MeterFactory);
        await host.StopAsync().WithTimeout();
    }

    [Fact]
    public async Task Start_InfiniteIdleTimeout_IsAccepted()
    {
        HostApplicationBuilder builder = TestHosts.Builder(("Connection:IdleTimeout", "Infinite"));
        builder.Services.AddManagedListener<EchoHandler>(TestHosts.Name, o => o.Listener.Connection.IdleTimeout = TimeSpan.FromMinutes(1));
        using IHost host = builder.Build();
        await host.StartAsync().WithTimeout();
        HostedListenerOptions options = host.Services.GetRequiredService<IOptionsMonitor<HostedListenerOptions>>().Get(TestHosts.Name);
        Assert.Equal(Timeout.InfiniteTimeSpan, options.Listener.Connection.IdleTimeout);
        await host.StopAsync().WithTimeout();
    }

    [Theory]
    [InlineData("Connection:DrainTimeout", "00:00:00", "SafeSockets:Listeners:echo:Connection:DrainTimeout = '00:00:00' is out of range: DrainTimeout must be greater than zero.")]
    [InlineData("Connection:DrainTimeout", "5s", "SafeSockets:Listeners:echo:Connection:DrainTimeout = '5s' is not a time span: write hh:mm:ss such as \"00:00:05\"")]
    [InlineData("Connection:KeepAliveTime", "00:00:00.500", "SafeSockets:Listeners:echo:Connection:KeepAliveTime = '00:00:00.500' is out of range: KeepAliveTime must be from 1 second to 32767 seconds")]
    [InlineData("Backlog", "0", "SafeSockets:Listeners:echo:Backlog = '0' is out of range: Backlog ('0') must be greater than or equal to '1'.")]
    [InlineData("MaxConnections", "many", "SafeSockets:Listeners:echo:MaxConnections = 'many' is not a whole number")]
    [InlineData("Connection:DrainTimout", "00:00:05", "SafeSockets:Listeners:echo:Connection:DrainTimout is not a SafeSockets connection setting (known: DrainTimeout,")]
    [InlineData("EndPoint", "localhost:7000", "SafeSockets:Listeners:echo:EndPoint = 'localhost:7000' is not an end point: write an IP address and port")]
    [InlineData("EndPoint", "127.0.0.1", "SafeSockets:Listeners:echo:EndPoint = '127.0.0.1' is not an end point")]
    public async Task Start_BadValue_FailsNamingTheKeyAndTheRule(string key, string value, string expected)
    {
        HostApplicationBuilder builder = TestHosts.Builder((key, value));
        builder.Services.AddManagedListener<EchoHandler>(TestHosts.Name);
        using IHost host = builder.Build();

        OptionsValidationException error = await Assert.ThrowsAsync<OptionsValidationException>(() => host.StartAsync().WithTimeout());
        Assert.Contains(expected, error.Message, StringComparison.Ordinal);
        Assert.Equal(TestHosts.Name, error.OptionsName);
    }

    [Fact]
    public async Task Start_TwoBadValues_BothAreReported()
    {
        HostApplicationBuilder builder = TestHosts.Builder(("Connection:DrainIdleTimeout", "-00:00:01"), ("MaxDrainingConnections", "-1"));
        builder.Services.AddManagedListener<EchoHandler>(TestHosts.Name);
        using IHost host = builder.Build();

        OptionsValidationException error = await Assert.ThrowsAsync<OptionsValidationException>(() => host.StartAsync().WithTimeout());
        Assert.Equal(2, error.Failures.Count());
        Assert.Contains("SafeSockets:Listeners:echo:Connection:DrainIdleTimeout = '-00:00:01' is out of range: DrainIdleTimeout must not be negative.", error.Failures);
        Assert.Contains(error.Failures, f => f.StartsWith("SafeSockets:Listeners:echo:MaxDrainingConnections = '-1' is out of range:", StringComparison.Ordinal));
    }

    [Fact]
    public async Task Start_NoEndPoint_FailsNamingTheKey()
    {
        HostApplicationBuilder builder = TestHosts.Builder(("EndPoint", null));
        builder.Services.AddManagedListener<EchoHandler>(TestHosts.Name);
        using IHost host = builder.Build();

        OptionsValidationException error = await Assert.ThrowsAsync<OptionsValidationException>(() => host.StartAsync().WithTimeout());
        Assert.Contains("SafeSockets:Listeners:echo:EndPoint is required", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void AddManagedListener_SameNameTwice_Throws()
    {
        var services = new ServiceCollection();
        services.AddManagedListener<EchoHandler>(TestHosts.Name);
        ArgumentException error = Assert.Throws<ArgumentException>(() => services.AddManagedListener<EchoHandler>(TestHosts.Name));
        Assert.Contains("'echo' is already registered", error.Message, StringComparison.Ordinal);
    }
}
