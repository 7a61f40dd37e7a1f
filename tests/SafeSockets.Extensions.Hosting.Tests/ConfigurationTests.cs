using Microsoft.Extensions.Options;

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
        // "Infinite" is refused by the parser unless it is the special word: a start that throws fails this test.
        using IHost host = await TestHosts.StartAsync<EchoHandler>(null, ("Connection:IdleTimeout", "Infinite"), ("Connection:KeepAliveTime", "infinite"));
        HostedListenerOptions options = host.Services.GetRequiredService<IOptionsMonitor<HostedListenerOptions>>().Get(TestHosts.Name);
        Assert.Equal(Timeout.InfiniteTimeSpan, options.Listener.Connection.IdleTimeout);
        Assert.Equal(Timeout.InfiniteTimeSpan, options.Listener.Connection.KeepAliveTime); // its default is 15 s
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
        OptionsValidationException error = await StartFailsAsync((key, value));
        Assert.Contains(expected, error.Message, StringComparison.Ordinal);
        Assert.Equal(TestHosts.Name, error.OptionsName);
    }

    [Fact]
    public async Task Start_TwoBadValues_BothAreReported()
    {
        OptionsValidationException error = await StartFailsAsync(("Connection:DrainIdleTimeout", "-00:00:01"), ("MaxDrainingConnections", "-1"));
        Assert.Equal(2, error.Failures.Count());
        Assert.Contains("SafeSockets:Listeners:echo:Connection:DrainIdleTimeout = '-00:00:01' is out of range: DrainIdleTimeout must not be negative.", error.Failures);
        Assert.Contains(error.Failures, f => f.StartsWith("SafeSockets:Listeners:echo:MaxDrainingConnections = '-1' is out of range:", StringComparison.Ordinal));
    }

    [Fact]
    public async Task Start_NoEndPoint_FailsNamingTheKey()
    {
        OptionsValidationException error = await StartFailsAsync(("EndPoint", null));
        Assert.Contains("SafeSockets:Listeners:echo:EndPoint is required", error.Message, StringComparison.Ordinal);
    }

    /// <summary>Starts a host with <paramref name="settings"/> and returns the error that stops it.</summary>
    private static async Task<OptionsValidationException> StartFailsAsync(params (string Key, string? Value)[] settings) =>
        await Assert.ThrowsAsync<OptionsValidationException>(() => TestHosts.StartAsync<EchoHandler>(null, settings));

    [Fact]
    public void AddManagedListener_SameNameTwice_Throws()
    {
        var services = new ServiceCollection();
        services.AddManagedListener<EchoHandler>(TestHosts.Name);
        ArgumentException error = Assert.Throws<ArgumentException>(() => services.AddManagedListener<EchoHandler>(TestHosts.Name));
        Assert.Contains("'echo' is already registered", error.Message, StringComparison.Ordinal);
    }
}
