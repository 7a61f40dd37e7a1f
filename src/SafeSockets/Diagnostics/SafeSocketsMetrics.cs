using System.Diagnostics.Metrics;

namespace SafeSockets.Diagnostics;

/// <summary>The names of the <c>SafeSockets</c> meter and its instruments (watch them with <c>dotnet-counters monitor --counters SafeSockets</c>).</summary>
public static class SafeSocketsMetrics
{
    /// <summary>The meter's name: <c>SafeSockets</c>.</summary>
    public const string MeterName = "SafeSockets";

    /// <summary>Counter: connections created (connected, adopted or accepted).</summary>
    public const string ConnectionsOpened = "safesockets.connections.opened";

    /// <summary>Counter: connections whose socket was released; tag <c>outcome</c> (see <see cref="CloseOutcome"/>, snake_case).</summary>
    public const string ConnectionsClosed = "safesockets.connections.closed";

    /// <summary>Up-down counter: live connections by tag <c>state</c>: <c>open</c>, <c>send_shutdown</c>, <c>peer_shutdown</c> (CLOSE_WAIT), <c>both_shutdown</c>, <c>draining</c>.</summary>
    public const string ConnectionsCurrent = "safesockets.connections.current";

    /// <summary>Counter (bytes): bytes read and discarded by drains.</summary>
    public const string BytesDrained = "safesockets.drain.bytes";

    /// <summary>Histogram (s): from the start of a close to the release of the socket; tag <c>outcome</c>.</summary>
    public const string CloseDuration = "safesockets.close.duration";

    /// <summary>Histogram (s): from the peer's FIN to the release of our socket (time spent in CLOSE_WAIT).</summary>
    public const string PeerFinToCloseDuration = "safesockets.peer_fin_to_close.duration";

    /// <summary>Counter: connections closed by themselves because the application did not close within <c>CloseWaitTimeout</c> after the peer's FIN.</summary>
    public const string CloseWaitForcedCloses = "safesockets.close_wait.forced_closes";

    /// <summary>Counter: deliberate aborts (RST) by <see cref="ManagedConnection.Abort"/> or a listener's grace deadline.</summary>
    public const string Aborts = "safesockets.aborts";

    /// <summary>Counter: drains cut short because a listener had more than <c>MaxDrainingConnections</c> draining.</summary>
    public const string DrainsCutShort = "safesockets.drain.cut_short";

    /// <summary>Counter: connections a listener accepted and closed at once because it had <c>MaxConnections</c> already.</summary>
    public const string ConnectionsRejected = "safesockets.connections.rejected";
}

/// <summary>The instruments; recording is skipped entirely while nobody listens.</summary>
internal static class Metrics
{
    private static readonly Meter s_meter = new(SafeSocketsMetrics.MeterName, typeof(Metrics).Assembly.GetName().Version?.ToString());

    public static readonly Counter<long> Opened = s_meter.CreateCounter<long>(SafeSocketsMetrics.ConnectionsOpened, "{connection}", "Connections created.");
    public static readonly Counter<long> Closed = s_meter.CreateCounter<long>(SafeSocketsMetrics.ConnectionsClosed, "{connection}", "Connections released, by close outcome.");
    // Live connections per state category, kept always (two interlocked operations per transition) so the observable
    // counter is right whenever a listener subscribes, not only for connections created after it.
    private static readonly long[] s_current = new long[5];
    public static readonly Counter<long> Drained = s_meter.CreateCounter<long>(SafeSocketsMetrics.BytesDrained, "By", "Bytes read and discarded while draining.");
    public static readonly Histogram<double> CloseDuration = s_meter.CreateHistogram<double>(SafeSocketsMetrics.CloseDuration, "s", "Time from close start to socket release.");
    public static readonly Histogram<double> PeerFinToClose = s_meter.CreateHistogram<double>(SafeSocketsMetrics.PeerFinToCloseDuration, "s", "Time from the peer's FIN to our socket release.");
    public static readonly Counter<long> ForcedCloses = s_meter.CreateCounter<long>(SafeSocketsMetrics.CloseWaitForcedCloses, "{connection}", "Closes forced by CloseWaitTimeout.");
    public static readonly Counter<long> Aborts = s_meter.CreateCounter<long>(SafeSocketsMetrics.Aborts, "{connection}", "Deliberate aborts (RST).");
    public static readonly Counter<long> CutShort = s_meter.CreateCounter<long>(SafeSocketsMetrics.DrainsCutShort, "{connection}", "Drains cut short by a listener's draining budget.");
    public static readonly Counter<long> Rejected = s_meter.CreateCounter<long>(SafeSocketsMetrics.ConnectionsRejected, "{connection}", "Connections closed at once over MaxConnections.");

    private static readonly KeyValuePair<string, object?>[] s_stateTags =
    [
        new("state", "open"),
        new("state", "send_shutdown"),
        new("state", "peer_shutdown"),
        new("state", "both_shutdown"),
        new("state", "draining"),
    ];

    private static readonly KeyValuePair<string, object?>[] s_outcomeTags =
    [
        new("outcome", "graceful"),
        new("outcome", "drain_timed_out"),
        new("outcome", "drain_limit_exceeded"),
        new("outcome", "peer_reset"),
        new("outcome", "aborted"),
        new("outcome", "already_closed"),
        new("outcome", "close_wait_timed_out"),
        new("outcome", "drain_budget_exceeded"),
        new("outcome", "faulted"),
        new("outcome", "idle_timed_out"),
        new("outcome", "peer_unreachable"),
    ];

    public static KeyValuePair<string, object?> OutcomeTag(CloseOutcome outcome) => s_outcomeTags[(int)outcome];

    static Metrics()
    {
        s_meter.CreateObservableUpDownCounter(SafeSocketsMetrics.ConnectionsCurrent, ObserveCurrent, "{connection}", "Live connections by state.");
    }

    /// <summary>Moves a connection between the <c>state</c> series when its category changes.</summary>
    public static void StateChanged(ConnectionState before, ConnectionState after)
    {
        int from = Category(before);
        int to = Category(after);
        if (from == to)
        {
            return;
        }

        if (from >= 0)
        {
            Interlocked.Decrement(ref s_current[from]);
        }

        if (to >= 0)
        {
            Interlocked.Increment(ref s_current[to]);
        }
    }

    /// <summary>Connections created and not yet released, in this process; for tests that must start from a quiet process.</summary>
    internal static long Live
    {
        get
        {
            long live = 0;
            for (int i = 0; i < s_current.Length; i++)
            {
                live += Volatile.Read(ref s_current[i]);
            }

            return live;
        }
    }

    public static void ConnectionOpened()
    {
        Opened.Add(1);
        Interlocked.Increment(ref s_current[0]);
    }

    private static IEnumerable<Measurement<long>> ObserveCurrent()
    {
        var measurements = new Measurement<long>[s_current.Length];
        for (int i = 0; i < measurements.Length; i++)
        {
            measurements[i] = new Measurement<long>(Volatile.Read(ref s_current[i]), s_stateTags[i]);
        }

        return measurements;
    }

    /// <summary>-1 once released; otherwise the index into the state tags (open, send_shutdown, peer_shutdown, both_shutdown, draining).</summary>
    private static int Category(ConnectionState state) => state switch
    {
        ConnectionState.Open => 0,
        ConnectionState.SendShutdown => 1,
        ConnectionState.PeerShutdown => 2,
        ConnectionState.BothShutdown => 3,
        ConnectionState.Closing => 4,
        _ => -1,
    };

    public static double Seconds(long startTimestamp, TimeProvider time) => time.GetElapsedTime(startTimestamp).TotalSeconds;
}
