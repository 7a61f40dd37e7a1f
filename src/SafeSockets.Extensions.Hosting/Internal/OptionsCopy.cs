namespace SafeSockets.Extensions.Hosting.Internal;

/// <summary>Copies of the core's options, so that binding a listener's configuration and filling in the host's logger and
/// meter factory never write into an object the application's code made (and may have given to several listeners).</summary>
/// <remarks>Every public settable property; <c>ConfigurationTests.OptionsCopy_CopiesEverySettableProperty</c> fails if the
/// core gains one that is not copied here.</remarks>
internal static class OptionsCopy
{
    public static ManagedListenerOptions Of(ManagedListenerOptions options) => new()
    {
        Backlog = options.Backlog,
        MaxConnections = options.MaxConnections,
        MaxDrainingConnections = options.MaxDrainingConnections,
        Connection = Of(options.Connection),
    };

    public static ManagedConnectionOptions Of(ManagedConnectionOptions options) => new()
    {
        DrainTimeout = options.DrainTimeout,
        DrainIdleTimeout = options.DrainIdleTimeout,
        MaxDrainBytes = options.MaxDrainBytes,
        CloseWaitTimeout = options.CloseWaitTimeout,
        IdleTimeout = options.IdleTimeout,
        KeepAliveTime = options.KeepAliveTime,
        KeepAliveInterval = options.KeepAliveInterval,
        KeepAliveRetryCount = options.KeepAliveRetryCount,
        TimeProvider = options.TimeProvider,
        MaxInputBufferSize = options.MaxInputBufferSize,
        WaitForDataBeforeAllocatingBuffer = options.WaitForDataBeforeAllocatingBuffer,
        UnsafePreferInlineScheduling = options.UnsafePreferInlineScheduling,
        MaxOutputBufferSize = options.MaxOutputBufferSize,
        Logger = options.Logger,
        MeterFactory = options.MeterFactory,
    };
}
