using System.Diagnostics.Metrics;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using SafeSockets.Internal;

namespace SafeSockets;

/// <summary>Bounds and timings for a <see cref="ManagedConnection"/>'s teardown.</summary>
/// <remarks>
/// <para>Every value is checked when it is assigned; an out-of-range value throws
/// <see cref="ArgumentOutOfRangeException"/>. A connection copies the options when it is created,
/// so changing an options object later does not affect connections that already exist.</para>
/// <para>The defaults follow the servers that solved lingering close first: nginx
/// (<c>lingering_time</c> 30 s, <c>lingering_timeout</c> 5 s), Apache (30 s total, 2 s per read) and
/// Go's <c>net/http</c> (reads at most 256 KiB of an unread body).</para>
/// </remarks>
public sealed class ManagedConnectionOptions
{
    /// <summary>The default of <see cref="DrainTimeout"/>: 30 seconds, nginx's <c>lingering_time</c> and Apache's total.</summary>
    public static readonly TimeSpan DefaultDrainTimeout = TimeSpan.FromSeconds(30);

    /// <summary>The default of <see cref="DrainIdleTimeout"/>: 5 seconds, nginx's <c>lingering_timeout</c>.</summary>
    public static readonly TimeSpan DefaultDrainIdleTimeout = TimeSpan.FromSeconds(5);

    /// <summary>The default of <see cref="MaxDrainBytes"/>: 256 KiB, what Go's HTTP server reads of an unread body.</summary>
    public const long DefaultMaxDrainBytes = 256 * 1024;

    /// <summary>The default of <see cref="CloseWaitTimeout"/>: 5 seconds, the longest single wait for a quiet peer in nginx's lingering close.</summary>
    public static readonly TimeSpan DefaultCloseWaitTimeout = TimeSpan.FromSeconds(5);

    // CancellationTokenSource.CancelAfter and timers accept at most uint.MaxValue - 1 ms;
    // int.MaxValue ms (about 24.8 days) keeps every bound well inside that.
    private static readonly TimeSpan s_maxTimeout = TimeSpan.FromMilliseconds(int.MaxValue);

    private TimeSpan _drainTimeout = DefaultDrainTimeout;
    private TimeSpan _drainIdleTimeout = DefaultDrainIdleTimeout;
    private long _maxDrainBytes = DefaultMaxDrainBytes;
    private TimeSpan _closeWaitTimeout = DefaultCloseWaitTimeout;
    private TimeSpan _idleTimeout = Timeout.InfiniteTimeSpan;
    private TimeSpan _keepAliveTime = DefaultKeepAliveTime;
    private TimeSpan _keepAliveInterval = DefaultKeepAliveInterval;
    private int _keepAliveRetryCount = DefaultKeepAliveRetryCount;
    private TimeProvider _timeProvider = TimeProvider.System;
    private ILogger _logger = NullLogger.Instance;
    private IMeterFactory? _meterFactory;
    private int _maxInputBufferSize = DefaultBufferSize;
    private bool _waitForDataBeforeAllocatingBuffer;
    private bool _unsafePreferInlineScheduling;
    private int _maxOutputBufferSize = DefaultBufferSize;

    /// <summary>The default of <see cref="MaxInputBufferSize"/> and <see cref="MaxOutputBufferSize"/>: 64 KiB.</summary>
    public const int DefaultBufferSize = 64 * 1024;

    /// <summary>Total bound on a graceful close: flushing what was sent, then reading and discarding until the peer's FIN.</summary>
    /// <remarks>Defaults to 30 seconds. Must be greater than zero. When it is hit the socket is released anyway
    /// and the outcome is <see cref="CloseOutcome.DrainTimedOut"/>; a peer that trickles bytes cannot hold a close longer.</remarks>
    /// <exception cref="ArgumentOutOfRangeException">The value is zero, negative, or longer than about 24.8 days.</exception>
    public TimeSpan DrainTimeout
    {
        get => _drainTimeout;
        set
        {
            _drainTimeout = CheckPositive(value, nameof(DrainTimeout));
            _settings = null;
        }
    }

    /// <summary>Bound on one wait for the peer during the drain: a peer that goes quiet this long without sending FIN ends the drain.</summary>
    /// <remarks>Defaults to 5 seconds. Must be greater than zero. A value above <see cref="DrainTimeout"/> simply never applies.</remarks>
    /// <exception cref="ArgumentOutOfRangeException">The value is zero, negative, or longer than about 24.8 days.</exception>
    public TimeSpan DrainIdleTimeout
    {
        get => _drainIdleTimeout;
        set
        {
            _drainIdleTimeout = CheckPositive(value, nameof(DrainIdleTimeout));
            _settings = null;
        }
    }

    /// <summary>The most bytes a close reads and discards while waiting for the peer's FIN.</summary>
    /// <remarks>Defaults to 256 KiB. Zero is allowed and means that any byte arriving during the drain ends it with
    /// <see cref="CloseOutcome.DrainLimitExceeded"/>.</remarks>
    /// <exception cref="ArgumentOutOfRangeException">The value is negative.</exception>
    public long MaxDrainBytes
    {
        get => _maxDrainBytes;
        set
        {
            ArgumentOutOfRangeException.ThrowIfNegative(value, nameof(MaxDrainBytes));
            _maxDrainBytes = value;
            _settings = null;
        }
    }

    /// <summary>After the peer's FIN, the longest the application may leave the connection idle before it closes by itself.</summary>
    /// <remarks>Defaults to 5 seconds. An inactivity bound (HAProxy's <c>timeout client-fin</c>): a send handed to the kernel,
    /// a send still making progress (on Linux the peer acknowledges more bytes) or a read restarts it, so an application
    /// still answering after the peer's FIN is never cut short, and one that does nothing is closed for it. Zero closes the
    /// connection as soon as the peer's FIN is seen. The forced close ends with FIN, never RST, and its outcome is
    /// <see cref="CloseOutcome.CloseWaitTimedOut"/>. An application that waits on something else after the peer's FIN (a
    /// proxy waiting for its upstream) sets this to its own bound, as nginx's stream <c>proxy_timeout</c> (10 minutes).</remarks>
    public TimeSpan CloseWaitTimeout
    {
        get => _closeWaitTimeout;
        set
        {
            CheckRange(value, nameof(CloseWaitTimeout));
            _closeWaitTimeout = value;
            _settings = null;
        }
    }

    /// <summary>How long a connection may carry no byte in either direction (and have no send in progress) before it closes
    /// itself gracefully: FIN, then the usual bounded drain, outcome <see cref="CloseOutcome.IdleTimedOut"/>.</summary>
    /// <remarks>Defaults to <see cref="Timeout.InfiniteTimeSpan"/> (off), as Kestrel's transport; servers usually set it
    /// (nginx's stream <c>proxy_timeout</c> 10 min, HAProxy's <c>timeout client</c>, Kestrel's <c>KeepAliveTimeout</c> 130 s).
    /// It bounds silence, not the peer's liveness: a peer that vanished without FIN or RST is found by TCP keep-alive.</remarks>
    /// <exception cref="ArgumentOutOfRangeException">The value is zero, negative (other than infinite), or longer than about 24.8 days.</exception>
    public TimeSpan IdleTimeout
    {
        get => _idleTimeout;
        set
        {
            _idleTimeout = value == Timeout.InfiniteTimeSpan ? value : CheckPositive(value, nameof(IdleTimeout));
            _settings = null;
        }
    }

    /// <summary>The default of <see cref="KeepAliveTime"/>: 15 seconds, Go's <c>net</c> package default.</summary>
    public static readonly TimeSpan DefaultKeepAliveTime = TimeSpan.FromSeconds(15);

    /// <summary>The default of <see cref="KeepAliveInterval"/>: 15 seconds, as Go.</summary>
    public static readonly TimeSpan DefaultKeepAliveInterval = TimeSpan.FromSeconds(15);

    /// <summary>The default of <see cref="KeepAliveRetryCount"/>: 8 unanswered probes (a vanished peer is given up after 2 min 15 s).</summary>
    public const int DefaultKeepAliveRetryCount = 8;

    // The kernel's limits (Linux: TCP_KEEPIDLE and TCP_KEEPINTVL at most 32767 s, TCP_KEEPCNT at most 127).
    private const int MaxKeepAliveSeconds = 32767;
    private const int MaxKeepAliveRetryCount = 127;

    /// <summary>How long a connection may be silent before TCP keep-alive probes ask whether the peer is still there
    /// (<c>SO_KEEPALIVE</c>, <c>TCP_KEEPIDLE</c>); <see cref="Timeout.InfiniteTimeSpan"/> turns keep-alive off.</summary>
    /// <remarks>Defaults to 15 seconds (Go's default; Kestrel leaves keep-alive off). A peer that vanished without FIN or
    /// RST (power loss, a dropped NAT entry) is otherwise never noticed, and its connection is kept forever. The kernel
    /// counts whole seconds (rounded up). When the peer stops answering, the connection ends by itself with
    /// <see cref="CloseOutcome.PeerUnreachable"/>. The options are set on a connected or adopted socket 2-4 ms after the
    /// connection is made, by a thread of the library, so a connection that ends sooner never pays the four
    /// <c>setsockopt</c> calls (the first probe is seconds away either way); an accepted socket inherits them from its
    /// listening socket. A failure to set them there (none is known on a live TCP socket) is logged at Error (event 9)
    /// and the connection goes on without keep-alive.</remarks>
    /// <exception cref="ArgumentOutOfRangeException">The value is under 1 second or over 32,767 seconds (other than infinite).</exception>
    public TimeSpan KeepAliveTime
    {
        get => _keepAliveTime;
        set
        {
            _keepAliveTime = value == Timeout.InfiniteTimeSpan ? value : CheckKeepAliveSeconds(value, nameof(KeepAliveTime));
            _settings = null;
        }
    }

    /// <summary>The time between two unanswered keep-alive probes (<c>TCP_KEEPINTVL</c>).</summary>
    /// <remarks>Defaults to 15 seconds. Whole seconds (rounded up).</remarks>
    /// <exception cref="ArgumentOutOfRangeException">The value is under 1 second or over 32,767 seconds.</exception>
    public TimeSpan KeepAliveInterval
    {
        get => _keepAliveInterval;
        set
        {
            _keepAliveInterval = CheckKeepAliveSeconds(value, nameof(KeepAliveInterval));
            _settings = null;
        }
    }

    /// <summary>How many unanswered keep-alive probes make the kernel give up on the peer (<c>TCP_KEEPCNT</c>).</summary>
    /// <remarks>Defaults to 8. From 1 to 127.</remarks>
    /// <exception cref="ArgumentOutOfRangeException">The value is under 1 or over 127.</exception>
    public int KeepAliveRetryCount
    {
        get => _keepAliveRetryCount;
        set
        {
            ArgumentOutOfRangeException.ThrowIfLessThan(value, 1, nameof(KeepAliveRetryCount));
            ArgumentOutOfRangeException.ThrowIfGreaterThan(value, MaxKeepAliveRetryCount, nameof(KeepAliveRetryCount));
            _keepAliveRetryCount = value;
            _settings = null;
        }
    }

    /// <summary>The clock behind every timeout of the connection.</summary>
    /// <remarks>Defaults to <see cref="TimeProvider.System"/>. Tests can pass a fake clock to drive timeouts without waiting.</remarks>
    /// <exception cref="ArgumentNullException">The value is null.</exception>
    public TimeProvider TimeProvider
    {
        get => _timeProvider;
        set
        {
            ArgumentNullException.ThrowIfNull(value, nameof(TimeProvider));
            _timeProvider = value;
            _settings = null;
        }
    }

    /// <summary>Bytes received but not yet read by the application above which the receive loop stops reading (backpressure); it resumes below half.</summary>
    /// <remarks>Defaults to 64 KiB. Must be at least 1. While paused, a FIN queued behind the unread bytes is seen once the
    /// application reads or closes.</remarks>
    /// <exception cref="ArgumentOutOfRangeException">The value is less than 1.</exception>
    public int MaxInputBufferSize
    {
        get => _maxInputBufferSize;
        set
        {
            ArgumentOutOfRangeException.ThrowIfLessThan(value, 1, nameof(MaxInputBufferSize));
            _maxInputBufferSize = value;
            _settings = null;
        }
    }

    /// <summary>Whether a read the application asks for waits for data with a zero-byte read before it takes a receive
    /// buffer (as Kestrel's socket transport does), instead of reading straight into one.</summary>
    /// <remarks>Defaults to <see langword="false"/>: when the application reads, the receive loop reads straight into a
    /// buffer of the input, as a raw socket reads into the application's buffer, so bytes already received cost one
    /// <c>recv</c>. While such a read waits for bytes it holds that buffer (4 KiB). Set it to <see langword="true"/> for a
    /// server that holds many connections waiting in <see cref="ManagedConnection.ReceiveAsync"/> for long (no buffer while
    /// waiting, one more <c>recv</c> per read: about 7% more CPU per request/response cycle in the <c>hotpath</c>
    /// benchmark). A connection that nobody is reading holds no buffer either way, and once a connection's reads have grown
    /// past 4 KiB (a bulk transfer) it waits for data before every read whatever this says, so a read left waiting never
    /// holds more than 4 KiB.</remarks>
    public bool WaitForDataBeforeAllocatingBuffer
    {
        get => _waitForDataBeforeAllocatingBuffer;
        set
        {
            _waitForDataBeforeAllocatingBuffer = value;
            _settings = null;
        }
    }

    /// <summary>Whether the application's continuation after a read that waited for bytes (a
    /// <see cref="ManagedConnection.ReceiveAsync"/>, a <see cref="ManagedConnection.GetStream"/> stream's or
    /// <see cref="ManagedConnection.Transport"/> read) may run on the thread that completed the socket read, with no
    /// thread-pool hop, even when that thread is the runtime's socket event thread.</summary>
    /// <remarks>
    /// <para>Defaults to <see langword="false"/>: the application's code runs on thread-pool threads only. That matters
    /// only where the runtime completes socket operations on its event thread, which .NET does on Unix when the
    /// environment variable <c>DOTNET_SYSTEM_NET_SOCKETS_INLINE_COMPLETIONS=1</c> is set for the process (read at
    /// start-up); otherwise completions run on the pool and this option changes nothing.</para>
    /// <para>Unsafe, as Kestrel's <c>SocketTransportOptions.UnsafePreferInlineScheduling</c>: with both on, the code after
    /// the application's <c>await</c> of a read runs on the event thread, which serves every connection; if it blocks
    /// (a synchronous wait, a lock held long, heavy work), no other connection receives anything and no FIN is seen
    /// until it returns. That includes the library's own synchronous members after such a read: a
    /// <see cref="ManagedConnection.GetStream"/> stream's <c>Read</c>, <c>Write</c> and <c>Dispose</c> (a plain
    /// <c>using</c> of a stream that owns the connection closes it synchronously; so does a <c>StreamReader</c>'s
    /// <c>ReadLine</c> or an <c>SslStream</c> disposing it) wait for completions that only that thread can deliver, and
    /// then never return. In exchange no thread-pool work item or wake-up is spent per read: in the <c>hotpath</c>
    /// benchmark with 8 connections in flight, about 1.2x the cycles per second of raw sockets at the runtime's default
    /// and 0.8x their CPU per cycle (benchmarks/README.md).</para>
    /// </remarks>
    public bool UnsafePreferInlineScheduling
    {
        get => _unsafePreferInlineScheduling;
        set
        {
            _unsafePreferInlineScheduling = value;
            _settings = null;
        }
    }

    /// <summary>Bytes written to <see cref="ManagedConnection.Transport"/>'s output and not yet sent above which <c>FlushAsync</c> waits (backpressure); it resumes below half.</summary>
    /// <remarks>Defaults to 64 KiB. Must be at least 1. Applies only to the <see cref="ManagedConnection.Transport"/> surface;
    /// <see cref="ManagedConnection.SendAsync"/> waits for the kernel directly.</remarks>
    /// <exception cref="ArgumentOutOfRangeException">The value is less than 1.</exception>
    public int MaxOutputBufferSize
    {
        get => _maxOutputBufferSize;
        set
        {
            ArgumentOutOfRangeException.ThrowIfLessThan(value, 1, nameof(MaxOutputBufferSize));
            _maxOutputBufferSize = value;
            _settings = null;
        }
    }

    /// <summary>Where the connection reports the events that matter in an incident: a forced close after the peer's FIN,
    /// a drain bound hit, an abort, a reset by the peer.</summary>
    /// <remarks>Defaults to <see cref="NullLogger.Instance"/> (silent).</remarks>
    /// <exception cref="ArgumentNullException">The value is null.</exception>
    public ILogger Logger
    {
        get => _logger;
        set
        {
            ArgumentNullException.ThrowIfNull(value, nameof(Logger));
            _logger = value;
            _settings = null;
        }
    }

    /// <summary>Where the <c>SafeSockets</c> meter of these connections (and of a listener started with these options) comes from.</summary>
    /// <remarks>Defaults to <see langword="null"/>: the process-wide static meter, for code without dependency injection.
    /// With a factory (the host's <see cref="IMeterFactory"/>), the connections record to the factory's <c>SafeSockets</c>
    /// meter instead, which the factory owns and disposes; <c>safesockets.connections.current</c> stays on the static meter
    /// (it counts every connection of the process). The instruments are listed in docs/options.md.</remarks>
    public IMeterFactory? MeterFactory
    {
        get => _meterFactory;
        set
        {
            _meterFactory = value;
            _settings = null;
        }
    }

    internal static ManagedConnectionOptions Default { get; } = new();

    // The immutable snapshot connections share; rebuilt on first use after a setter ran.
    private ConnectionSettings? _settings;

    /// <summary>These options as the immutable settings a connection keeps (made once, shared by every connection).</summary>
    internal ConnectionSettings Settings => _settings ??= new ConnectionSettings(this, ManagedConnection.DefaultOutputPipeOptions);

    private static TimeSpan CheckPositive(TimeSpan value, string name)
    {
        CheckRange(value, name);
        if (value == TimeSpan.Zero)
        {
            throw new ArgumentOutOfRangeException(name, value, $"{name} must be greater than zero.");
        }

        return value;
    }

    private static TimeSpan CheckKeepAliveSeconds(TimeSpan value, string name)
    {
        if (value < TimeSpan.FromSeconds(1) || value > TimeSpan.FromSeconds(MaxKeepAliveSeconds))
        {
            throw new ArgumentOutOfRangeException(name, value, $"{name} must be from 1 second to {MaxKeepAliveSeconds} seconds (the kernel counts whole seconds).");
        }

        return value;
    }

    private static void CheckRange(TimeSpan value, string name)
    {
        if (value < TimeSpan.Zero)
        {
            throw new ArgumentOutOfRangeException(name, value, $"{name} must not be negative.");
        }

        if (value > s_maxTimeout)
        {
            throw new ArgumentOutOfRangeException(name, value, $"{name} must be at most {s_maxTimeout} (infinite bounds are not allowed: they are what leaves sockets hanging).");
        }
    }
}
