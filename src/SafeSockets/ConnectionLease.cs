using System.Diagnostics;

namespace SafeSockets;

/// <summary>One owner's reference to a shared <see cref="ManagedConnection"/>; the last reference released closes it gracefully.</summary>
/// <remarks>
/// <para>This is the kernel's model of shared descriptors made explicit: releasing a lease is <c>close(2)</c> on one
/// descriptor (nothing the peer can see, unless it is the last), while <see cref="ManagedConnection.ShutdownSendAsync"/>
/// and <see cref="ManagedConnection.Abort"/> through <see cref="Connection"/> act on the connection for every owner,
/// as <c>shutdown(2)</c> does.</para>
/// <para>Thread safety: <see cref="DisposeAsync"/> may be called from any thread, any number of times; only the first counts.</para>
/// </remarks>
public sealed class ConnectionLease : IAsyncDisposable
{
    private readonly LeakTracker? _tracker;
    private int _released;

    internal ConnectionLease(ManagedConnection connection)
    {
        Connection = connection;
        if (LeakTracker.Enabled)
        {
            _tracker = new LeakTracker(connection);
        }
    }

    /// <summary>The shared connection.</summary>
    public ManagedConnection Connection { get; }

    /// <summary>Releases this lease once; if it was the last reference, performs the graceful close and completes after it.</summary>
    /// <returns>A task that completes when the reference is released (and, for the last one, the socket too).</returns>
    public ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _released, 1) != 0)
        {
            return default;
        }

        _tracker?.Dispose();

        return Connection.ReleaseReferenceAsync();
    }

    /// <summary>Reports leases that were collected without being released (the owner leaked a reference).</summary>
    /// <remarks>On in debug builds of the library, and anywhere the <c>SafeSockets.TrackLeakedLeases</c> AppContext switch is set.
    /// A separate finalizable object keeps the cost off leases when tracking is off.</remarks>
    internal sealed class LeakTracker : IDisposable
    {
        private static int s_leaked;
        private readonly string _description;

        public LeakTracker(ManagedConnection connection)
        {
            _description = $"{connection.LocalEndPoint} -> {connection.RemoteEndPoint}";
        }

#if DEBUG
        public static bool Enabled { get; } = !AppContext.TryGetSwitch("SafeSockets.TrackLeakedLeases", out bool on) || on;
#else
        public static bool Enabled { get; } = AppContext.TryGetSwitch("SafeSockets.TrackLeakedLeases", out bool on) && on;
#endif

        public static int LeakedCount => Volatile.Read(ref s_leaked);

        /// <summary>The lease was released properly: nothing to report.</summary>
        public void Dispose() => GC.SuppressFinalize(this);

        ~LeakTracker()
        {
            Interlocked.Increment(ref s_leaked);
            Trace.TraceWarning($"SafeSockets: a ConnectionLease on {_description} was garbage-collected without DisposeAsync; the connection stays open until its last owner releases it.");
        }
    }
}
