using System.Net;
using Microsoft.Extensions.Logging.Abstractions;
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
            ("Connection:MaxDrainBytes", "1024"),
            ("Connection:WaitForDataBeforeAllocatingBuffer", "true"),
            ("Connection:UnsafePreferInlineScheduling", "true"));
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
        Assert.True(options.Listener.Connection.WaitForDataBeforeAllocatingBuffer);
        Assert.True(options.Listener.Connection.UnsafePreferInlineScheduling);
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
    [InlineData("Connection:DrainTimeout", "5s", "SafeSockets:Listeners:echo:Connection:DrainTimeout = '5s' is not a time span: write hh:mm:ss such as \"00:00:30\"")]
    [InlineData("Connection:IdleTimeout", "5", "SafeSockets:Listeners:echo:Connection:IdleTimeout = '5' is not a time span: write hh:mm:ss such as \"00:00:30\"")]
    [InlineData("Connection:IdleTimeout", "1.00:00", "SafeSockets:Listeners:echo:Connection:IdleTimeout = '1.00:00' is not a time span: write hh:mm:ss such as \"00:00:30\"")]
    [InlineData("Connection:IdleTimeout", "-00:00:00.001", "SafeSockets:Listeners:echo:Connection:IdleTimeout = '-00:00:00.001' is negative: write hh:mm:ss such as \"00:00:30\"")]
    [InlineData("Connection:IdleTimeout", "-1", "SafeSockets:Listeners:echo:Connection:IdleTimeout = '-1' is not a time span: write hh:mm:ss such as \"00:00:30\"")]
    [InlineData("Connection:KeepAliveTime", "00:00:00.500", "SafeSockets:Listeners:echo:Connection:KeepAliveTime = '00:00:00.500' is out of range: KeepAliveTime must be from 1 second to 32767 seconds")]
    [InlineData("Backlog", "0", "SafeSockets:Listeners:echo:Backlog = '0' is out of range: Backlog ('0') must be greater than or equal to '1'.")]
    [InlineData("MaxConnections", "many", "SafeSockets:Listeners:echo:MaxConnections = 'many' is not a whole number")]
    [InlineData("Connection:WaitForDataBeforeAllocatingBuffer", "yes", "SafeSockets:Listeners:echo:Connection:WaitForDataBeforeAllocatingBuffer = 'yes' is not true or false")]
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
        OptionsValidationException error = await StartFailsAsync(("Connection:DrainIdleTimeout", "00:00:00"), ("MaxDrainingConnections", "-1"));
        Assert.Equal(2, error.Failures.Count());
        Assert.Contains("SafeSockets:Listeners:echo:Connection:DrainIdleTimeout = '00:00:00' is out of range: DrainIdleTimeout must be greater than zero.", error.Failures);
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
    public async Task Start_TimeSpanWithDays_IsAccepted()
    {
        using IHost host = await TestHosts.StartAsync<EchoHandler>(null, ("Connection:IdleTimeout", "1.02:03:04.5"));
        HostedListenerOptions options = host.Services.GetRequiredService<IOptionsMonitor<HostedListenerOptions>>().Get(TestHosts.Name);
        Assert.Equal(new TimeSpan(1, 2, 3, 4, 500), options.Listener.Connection.IdleTimeout);
        await host.StopAsync().WithTimeout();
    }

    [Fact]
    public async Task Start_EndPointInCodeThatIsNotAnAddress_FailsValidationNamingTheKey()
    {
        HostApplicationBuilder builder = TestHosts.Builder(("EndPoint", null));
        builder.Services.AddManagedListener<EchoHandler>(TestHosts.Name, o => o.EndPoint = new DnsEndPoint("localhost", 7000));
        using IHost host = builder.Build();
        OptionsValidationException error = await Assert.ThrowsAsync<OptionsValidationException>(() => host.StartAsync().WithTimeout());
        Assert.Equal(
            "SafeSockets:Listeners:echo:EndPoint must be an IPEndPoint or a UnixDomainSocketEndPoint; got DnsEndPoint (Unspecified/localhost:7000). Resolve a host name to an address first.",
            Assert.Single(error.Failures));
    }

    [Fact]
    public async Task TwoListenersSharingOptionObjects_EachGetsItsOwnConfiguration_AndTheSharedObjectsAreLeftAlone()
    {
        var sharedConnection = new ManagedConnectionOptions();
        var sharedListener = new ManagedListenerOptions();
        HostApplicationBuilder builder = TestHosts.Builder(("Connection:IdleTimeout", "00:01:00"), ("Backlog", "11"));
        TestHosts.AddListenerSection(builder, "second", ("Connection:IdleTimeout", "00:05:00"), ("Backlog", "22"));
        TestHosts.AddListenerSection(builder, "third", ("Connection:IdleTimeout", "00:07:00"), ("Backlog", "33"));
        builder.Services.AddManagedListener<EchoHandler>(TestHosts.Name, o => o.Listener.Connection = sharedConnection);
        builder.Services.AddManagedListener<EchoHandler>("second", o => o.Listener.Connection = sharedConnection);
        builder.Services.AddManagedListener<EchoHandler>("third", o => o.Listener = sharedListener);
        using IHost host = builder.Build();
        await host.StartAsync().WithTimeout();

        IOptionsMonitor<HostedListenerOptions> monitor = host.Services.GetRequiredService<IOptionsMonitor<HostedListenerOptions>>();
        HostedListenerOptions echo = monitor.Get(TestHosts.Name), second = monitor.Get("second"), third = monitor.Get("third");
        Assert.Equal(TimeSpan.FromMinutes(1), echo.Listener.Connection.IdleTimeout);
        Assert.Equal(TimeSpan.FromMinutes(5), second.Listener.Connection.IdleTimeout);
        Assert.Equal(TimeSpan.FromMinutes(7), third.Listener.Connection.IdleTimeout);
        Assert.Equal(11, echo.Listener.Backlog);
        Assert.Equal(22, second.Listener.Backlog);
        Assert.Equal(33, third.Listener.Backlog);

        // The code's objects are not the host's to write: still their defaults, no logger or meter factory put in.
        foreach (ManagedConnectionOptions shared in new[] { sharedConnection, sharedListener.Connection })
        {
            Assert.Equal(Timeout.InfiniteTimeSpan, shared.IdleTimeout);
            Assert.Same(NullLogger.Instance, shared.Logger);
            Assert.Null(shared.MeterFactory);
        }

        Assert.Equal(ManagedListenerOptions.DefaultBacklog, sharedListener.Backlog);
        await host.StopAsync().WithTimeout();
    }

    [Fact]
    public void OptionsCopy_CopiesEverySettableProperty()
    {
        // Every public settable property of the core's options: a new one the copy misses fails here.
        var connection = new ManagedConnectionOptions
        {
            DrainTimeout = TimeSpan.FromSeconds(1), DrainIdleTimeout = TimeSpan.FromSeconds(2), MaxDrainBytes = 3,
            CloseWaitTimeout = TimeSpan.FromSeconds(4), IdleTimeout = TimeSpan.FromSeconds(5), KeepAliveTime = TimeSpan.FromSeconds(6),
            KeepAliveInterval = TimeSpan.FromSeconds(7), KeepAliveRetryCount = 8, TimeProvider = new OtherTimeProvider(),
            MaxInputBufferSize = 4096, MaxOutputBufferSize = 8192, Logger = new Microsoft.Extensions.Logging.Testing.FakeLogger(),
            MeterFactory = new TestMeterFactory(), WaitForDataBeforeAllocatingBuffer = true, UnsafePreferInlineScheduling = true,
        };
        var listener = new ManagedListenerOptions { Connection = connection, Backlog = 9, MaxConnections = 10, MaxDrainingConnections = 11 };

        ManagedListenerOptions copy = SafeSockets.Extensions.Hosting.Internal.OptionsCopy.Of(listener);

        Assert.NotSame(listener, copy);
        Assert.NotSame(connection, copy.Connection);
        AssertSameValues(listener, copy, nameof(ManagedListenerOptions.Connection));
        AssertSameValues(connection, copy.Connection);
    }

    private static void AssertSameValues<T>(T expected, T actual, params string[] except)
    {
        System.Reflection.PropertyInfo[] settable = [.. typeof(T).GetProperties().Where(p => p.CanWrite && p.SetMethod!.IsPublic && !except.Contains(p.Name))];
        Assert.NotEmpty(settable);
        foreach (System.Reflection.PropertyInfo property in settable)
        {
            Assert.True(Equals(property.GetValue(expected), property.GetValue(actual)), $"{typeof(T).Name}.{property.Name} is not copied");
        }
    }

    private sealed class OtherTimeProvider : TimeProvider;

    private sealed class TestMeterFactory : System.Diagnostics.Metrics.IMeterFactory
    {
        public System.Diagnostics.Metrics.Meter Create(System.Diagnostics.Metrics.MeterOptions options) => new(options);

        public void Dispose()
        {
        }
    }

    [Fact]
    public void AddManagedListener_SameNameTwice_Throws()
    {
        var services = new ServiceCollection();
        services.AddManagedListener<EchoHandler>(TestHosts.Name);
        ArgumentException error = Assert.Throws<ArgumentException>(() => services.AddManagedListener<EchoHandler>(TestHosts.Name));
        Assert.Contains("'echo' is already registered", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void AddManagedListener_SameNameInAnotherCase_Throws_BecauseConfigurationKeysIgnoreCase()
    {
        var services = new ServiceCollection();
        services.AddManagedListener<EchoHandler>(TestHosts.Name);
        ArgumentException error = Assert.Throws<ArgumentException>(() => services.AddManagedListener<EchoHandler>("ECHO"));
        Assert.Contains("'ECHO' is already registered", error.Message, StringComparison.Ordinal);
    }
}
