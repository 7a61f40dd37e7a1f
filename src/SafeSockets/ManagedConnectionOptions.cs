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
    private TimeProvider _timeProvider = TimeProvider.System;
    private ILogger _logger = NullLogger.Instance;
    private int _maxInputBufferSize = DefaultBufferSize;
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
