using System.IO.Pipelines;
using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.Logging;
using SafeSockets.Diagnostics;

namespace SafeSockets.Internal;

/// <summary>An immutable snapshot of <see cref="ManagedConnectionOptions"/>, made once per options instance (and again only
/// after a setter changed them) and shared by every connection created with those options. A connection keeps one
/// reference to it instead of a copy of each setting, which keeps the per-connection object small.</summary>
internal sealed class ConnectionSettings
{
    public ConnectionSettings(ManagedConnectionOptions options, PipeOptions defaultOutputPipeOptions)
    {
        TimeProvider = options.TimeProvider;
        DrainTimeout = options.DrainTimeout;
        DrainIdleTimeout = options.DrainIdleTimeout;
        MaxDrainBytes = options.MaxDrainBytes;
        CloseWaitTimeout = options.CloseWaitTimeout;
        IdleTimeout = options.IdleTimeout;
        Logger = ContainedLogger.Wrap(options.Logger);
        MaxInputBufferSize = options.MaxInputBufferSize;
        WaitForDataBeforeAllocatingBuffer = options.WaitForDataBeforeAllocatingBuffer;
        PreferInlineScheduling = options.UnsafePreferInlineScheduling;
        OutputPipeOptions = options.MaxOutputBufferSize == ManagedConnectionOptions.DefaultBufferSize
            ? defaultOutputPipeOptions
            : ManagedConnection.CreateOutputPipeOptions(options.MaxOutputBufferSize);
        Deadlines = DeadlineQueue.For(TimeProvider);
        DrainTimeoutTicks = ToTicks(DrainTimeout);
        DrainIdleTimeoutTicks = ToTicks(DrainIdleTimeout);
        CloseWaitTimeoutTicks = ToTicks(CloseWaitTimeout);
        IdleTimeoutTicks = options.IdleTimeout == Timeout.InfiniteTimeSpan ? 0 : ToTicks(options.IdleTimeout);
        KeepAliveTimeSeconds = options.KeepAliveTime == Timeout.InfiniteTimeSpan ? 0 : (int)Math.Ceiling(options.KeepAliveTime.TotalSeconds);
        KeepAliveIntervalSeconds = (int)Math.Ceiling(options.KeepAliveInterval.TotalSeconds);
        KeepAliveRetryCount = options.KeepAliveRetryCount;
        Instruments = options.MeterFactory is { } meterFactory ? Instruments.For(meterFactory) : Metrics.Default;
    }

    private ConnectionSettings(ConnectionSettings source, Action<ManagedConnection> completed, Action<ManagedConnection> published, Action<ManagedConnection> drainStarted, EndPoint listenerEndPoint)
    {
        TimeProvider = source.TimeProvider;
        DrainTimeout = source.DrainTimeout;
        DrainIdleTimeout = source.DrainIdleTimeout;
        MaxDrainBytes = source.MaxDrainBytes;
        CloseWaitTimeout = source.CloseWaitTimeout;
        IdleTimeout = source.IdleTimeout;
        Logger = source.Logger;
        MaxInputBufferSize = source.MaxInputBufferSize;
        WaitForDataBeforeAllocatingBuffer = source.WaitForDataBeforeAllocatingBuffer;
        PreferInlineScheduling = source.PreferInlineScheduling;
        OutputPipeOptions = source.OutputPipeOptions;
        Deadlines = source.Deadlines;
        DrainTimeoutTicks = source.DrainTimeoutTicks;
        DrainIdleTimeoutTicks = source.DrainIdleTimeoutTicks;
        CloseWaitTimeoutTicks = source.CloseWaitTimeoutTicks;
        IdleTimeoutTicks = source.IdleTimeoutTicks;
        KeepAliveTimeSeconds = source.KeepAliveTimeSeconds;
        KeepAliveIntervalSeconds = source.KeepAliveIntervalSeconds;
        KeepAliveRetryCount = source.KeepAliveRetryCount;
        Instruments = source.Instruments;
        Completed = completed;
        Published = published;
        DrainStarted = drainStarted;
        (_listenerIPv4Tags, _listenerIPv6Tags) = ConnectionTags.ForListener(listenerEndPoint);
    }

    // A listener's tags (server.address and server.port), made once per listener; null for connections without one.
    private readonly ConnectionTags? _listenerIPv4Tags;
    private readonly ConnectionTags? _listenerIPv6Tags;

    public TimeProvider TimeProvider { get; }

    public TimeSpan DrainTimeout { get; }

    public TimeSpan DrainIdleTimeout { get; }

    public long MaxDrainBytes { get; }

    public TimeSpan CloseWaitTimeout { get; }

    public TimeSpan IdleTimeout { get; }

    public ILogger Logger { get; }

    public int MaxInputBufferSize { get; }

    public bool WaitForDataBeforeAllocatingBuffer { get; }

    /// <summary><see cref="ManagedConnectionOptions.UnsafePreferInlineScheduling"/>: the reader may run on the thread that completed the read.</summary>
    public bool PreferInlineScheduling { get; }

    public PipeOptions OutputPipeOptions { get; }

    /// <summary>The one deadline queue for every connection on this settings' <see cref="TimeProvider"/>: drain bounds and the CLOSE_WAIT guard.</summary>
    public DeadlineQueue Deadlines { get; }

    /// <summary>The bounds in <see cref="TimeProvider"/> timestamp units.</summary>
    public long DrainTimeoutTicks { get; }

    public long DrainIdleTimeoutTicks { get; }

    public long CloseWaitTimeoutTicks { get; }

    /// <summary>The idle bound in timestamp units; 0 when it is off (IdleTimeout infinite).</summary>
    public long IdleTimeoutTicks { get; }

    /// <summary>TCP keep-alive in whole seconds: idle time before the first probe (0: keep-alive off), and between probes.</summary>
    public int KeepAliveTimeSeconds { get; }

    public int KeepAliveIntervalSeconds { get; }

    public int KeepAliveRetryCount { get; }

    /// <summary>The instruments the connections record to: the static meter's, or those of the options' meter factory.</summary>
    public Instruments Instruments { get; }

    /// <summary>A listener's callback: told once, when a connection is finished.</summary>
    public Action<ManagedConnection>? Completed { get; }

    /// <summary>A listener's callback: told once, after <see cref="Completed"/>, when the connection's Completion has its result.</summary>
    public Action<ManagedConnection>? Published { get; }

    /// <summary>A listener's callback: told when a connection starts draining (for the draining budget).</summary>
    public Action<ManagedConnection>? DrainStarted { get; }

    /// <summary>The same settings with a listener's callbacks and metric tags; made once per listener.</summary>
    public ConnectionSettings WithCallbacks(Action<ManagedConnection> completed, Action<ManagedConnection> published, Action<ManagedConnection> drainStarted, EndPoint listenerEndPoint) =>
        new(this, completed, published, drainStarted, listenerEndPoint);

    /// <summary>The metric tags of one connection (precomputed: nothing is allocated per connection).</summary>
    public ConnectionTags TagsFor(AddressFamily socketFamily, EndPoint? remote) =>
        _listenerIPv4Tags is null || _listenerIPv6Tags is null ? ConnectionTags.ForClient(socketFamily, remote)
        : ConnectionTags.IsIPv4(socketFamily, remote) ? _listenerIPv4Tags : _listenerIPv6Tags;

    /// <summary>A duration in this settings' timestamp units (options cap every bound, so this cannot overflow).</summary>
    public long ToTicks(TimeSpan duration) => (long)((Int128)duration.Ticks * TimeProvider.TimestampFrequency / TimeSpan.TicksPerSecond);
}
