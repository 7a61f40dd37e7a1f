using System.Reflection;
using SafeSockets.Internal;

namespace SafeSockets.Tests.Infrastructure;

/// <summary>Read-only looks at the receive loop's park and the lazy watch's thread (ManagedConnection.Watch.cs), for
/// tests that must know where they stand before they act: they wait for these states, they never set them.</summary>
internal static class LazyWatchProbe
{
    private static readonly FieldInfo s_park = typeof(ManagedConnection).GetField("_park", BindingFlags.NonPublic | BindingFlags.Instance)
        ?? throw new MissingFieldException(nameof(ManagedConnection), "_park");

    private static readonly FieldInfo s_watcherAsleep = typeof(ManagedConnection).GetField("s_watcherAsleep", BindingFlags.NonPublic | BindingFlags.Static)
        ?? throw new MissingFieldException(nameof(ManagedConnection), "s_watcherAsleep");

    private static readonly FieldInfo s_inputPaused = typeof(ManagedConnection).GetField("_inputPaused", BindingFlags.NonPublic | BindingFlags.Instance)
        ?? throw new MissingFieldException(nameof(ManagedConnection), "_inputPaused");

    /// <summary>Whether the receive loop waits for the application to read what fills its input (backpressure).</summary>
    public static bool InputPaused(ManagedConnection connection)
    {
        Thread.MemoryBarrier();
        return (bool)s_inputPaused.GetValue(connection)!;
    }

    /// <summary>The connection's park (whether its loop is parked, watched, how often it parked).</summary>
    public static LoopPark Park(ManagedConnection connection) => (LoopPark)s_park.GetValue(connection)!;

    /// <summary>Whether the lazy watch's thread sleeps until the next push (its list stayed empty for a while).</summary>
    public static bool WatcherAsleep
    {
        get
        {
            // Written under the watch's lock; a stale read only makes the caller's wait look once more.
            Thread.MemoryBarrier();
            return (bool)s_watcherAsleep.GetValue(null)!;
        }
    }
}
