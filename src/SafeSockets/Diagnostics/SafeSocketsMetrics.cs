using System.Diagnostics.Metrics;
using SafeSockets.Internal;

namespace SafeSockets.Diagnostics;

/// <summary>The names of the <c>SafeSockets</c> meter and its instruments (watch them with <c>dotnet-counters monitor --counters SafeSockets</c>).</summary>
public static class SafeSocketsMetrics
{
    /// <summary>The meter's name: <c>SafeSockets</c>.</summary>
    public const string MeterName = "SafeSockets";

    /// <summary>Counter: connections created (connected, adopted or accepted); the connection tags (see <see cref="ConnectionDuration"/>).</summary>
    public const string ConnectionsOpened = "safesockets.connections.opened";

    /// <summary>Counter: connections whose socket was released; tag <c>outcome</c> (see <see cref="CloseOutcome"/>, snake_case), <c>error.type</c> and the connection tags as <see cref="ConnectionDuration"/>.</summary>
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

    /// <summary>Histogram (s): from the connection's creation (accept, connect or adopt) to the release of its socket, as
    /// Kestrel's <c>kestrel.connection.duration</c>; tags <c>network.transport</c> (<c>tcp</c>, <c>unix</c>),
    /// <c>network.type</c> (<c>ipv4</c>, <c>ipv6</c>), <c>server.address</c> and <c>server.port</c> (a listener's
    /// connections), <c>outcome</c>, and <c>error.type</c> (the outcome, for every end but <c>graceful</c>).</summary>
    public const string ConnectionDuration = "safesockets.connection.duration";
}

/// <summary>The process-wide part of the metrics: the static meter (for code without dependency injection), its
/// instruments, and the live-connection gauge, which every connection feeds whichever meter it records to.</summary>
internal static class Metrics
{
    internal static readonly string? Version = typeof(Metrics).Assembly.GetName().Version?.ToString();

    private static readonly Meter s_meter = new(SafeSocketsMetrics.MeterName, Version);

    /// <summary>The instruments of the static meter: what connections record to unless their options name an <see cref="IMeterFactory"/>.</summary>
    public static readonly Instruments Default = new(s_meter);

    // Live connections per state category, kept always (two interlocked operations per transition) so the observable
    // counter is right whenever a listener subscribes, not only for connections created after it. Process-wide, so it
    // lives on the static meter only (a second copy on a factory's meter of the same name would count twice). Striped by
    // processor: every connection of the process updates it.
    private const int Categories = 5;
    private static readonly StripedCounters s_current = new(Categories);

    private static readonly KeyValuePair<string, object?>[] s_stateTags =
    [
        new("state", "open"),
        new("state", "send_shutdown"),
        new("state", "peer_shutdown"),
        new("state", "both_shutdown"),
        new("state", "draining"),
    ];

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
            // Stryker disable once Statement : without it the same column gets +1 then -1 (two interlocked operations for nothing)
            return;
        }

        // The new category first: read in between, the connection counts twice (an over-count for a moment), never
        // zero times, so a wait for "no connection live" cannot pass while one is.
        if (to >= 0)
        {
            s_current.Add(to, 1);
        }

        if (from >= 0)
        {
            s_current.Add(from, -1);
        }
    }

    /// <summary>Connections created and not yet released, in this process; for tests that must start from a quiet process.</summary>
    internal static long Live
    {
        get
        {
            long live = 0;
            for (int i = 0; i < Categories; i++)
            {
                live += s_current.Sum(i);
            }

            return live;
        }
    }

    /// <summary>A connection was created: counted as open in the gauge.</summary>
    public static void ConnectionOpened() => s_current.Add(0, 1);

    private static IEnumerable<Measurement<long>> ObserveCurrent()
    {
        var measurements = new Measurement<long>[Categories];
        for (int i = 0; i < measurements.Length; i++)
        {
            // Read while connections change state, a sum may be off by the updates in flight (transitions of one connection
            // run outside any lock and may be seen out of order): never shown below zero.
            measurements[i] = new Measurement<long>(Math.Max(0, s_current.Sum(i)), s_stateTags[i]);
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
