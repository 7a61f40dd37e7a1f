namespace SafeSockets;

/// <summary>Settings of a <see cref="ManagedListener"/>.</summary>
/// <remarks>Every value is checked when it is assigned; an out-of-range value throws <see cref="ArgumentOutOfRangeException"/>.
/// The listener copies the options when it starts.</remarks>
public sealed class ManagedListenerOptions
{
    /// <summary>The default of <see cref="Backlog"/>: 512.</summary>
    public const int DefaultBacklog = 512;

    /// <summary>The default of <see cref="MaxDrainingConnections"/>: 1024.</summary>
    public const int DefaultMaxDrainingConnections = 1024;

    private ManagedConnectionOptions _connection = new();
    private int _backlog = DefaultBacklog;
    private int _maxConnections = int.MaxValue;
    private int _maxDrainingConnections = DefaultMaxDrainingConnections;

    /// <summary>The options applied to every accepted connection (copied when each connection is accepted).</summary>
    /// <remarks>Defaults to a new <see cref="ManagedConnectionOptions"/> with its documented defaults. Its
    /// <see cref="ManagedConnectionOptions.Logger"/> also receives the listener's own events.</remarks>
    /// <exception cref="ArgumentNullException">The value is null.</exception>
    public ManagedConnectionOptions Connection
    {
        get => _connection;
        set
        {
            ArgumentNullException.ThrowIfNull(value, nameof(Connection));
            _connection = value;
        }
    }

    /// <summary>The kernel's queue of connections not yet accepted (<c>listen(2)</c> backlog).</summary>
    /// <remarks>Defaults to 512 (the kernel caps it at <c>net.core.somaxconn</c>). Must be at least 1.</remarks>
    /// <exception cref="ArgumentOutOfRangeException">The value is less than 1.</exception>
    public int Backlog
    {
        get => _backlog;
        set
        {
            ArgumentOutOfRangeException.ThrowIfLessThan(value, 1, nameof(Backlog));
            _backlog = value;
        }
    }

    /// <summary>The most connections the listener keeps at once (open, closing or draining).</summary>
    /// <remarks>Defaults to <see cref="int.MaxValue"/> (no limit). Must be at least 1. Over the limit, a newly accepted
    /// connection is not handed to the application: it is closed at once, gracefully (FIN, then the usual bounded drain),
    /// so the client reads end-of-stream instead of hanging in the backlog or seeing a reset; the
    /// <c>safesockets.connections.rejected</c> counter counts it.</remarks>
    /// <exception cref="ArgumentOutOfRangeException">The value is less than 1.</exception>
    public int MaxConnections
    {
        get => _maxConnections;
        set
        {
            ArgumentOutOfRangeException.ThrowIfLessThan(value, 1, nameof(MaxConnections));
            _maxConnections = value;
        }
    }

    /// <summary>The most connections allowed to drain at once; beyond it the oldest drains are cut short.</summary>
    /// <remarks>Defaults to 1024. Zero is allowed (no lingering at all: every drain is cut at once). A cut drain releases
    /// its socket with outcome <see cref="CloseOutcome.DrainBudgetExceeded"/> (a reset is possible if the peer sent more),
    /// as nginx does when it runs short of connections; the <c>safesockets.drain.cut_short</c> counter counts it.</remarks>
    /// <exception cref="ArgumentOutOfRangeException">The value is negative.</exception>
    public int MaxDrainingConnections
    {
        get => _maxDrainingConnections;
        set
        {
            ArgumentOutOfRangeException.ThrowIfNegative(value, nameof(MaxDrainingConnections));
            _maxDrainingConnections = value;
        }
    }
}
