using System.Net.Sockets;
using SafeSockets.Internal;

namespace SafeSockets.Tests.Infrastructure;

/// <summary>Looks at the receive loop's park and the lazy watch's thread (ManagedConnection.Watch.cs), for
/// tests that must know where they stand before they act (they wait for these states), and the one way tests keep a
/// loop parked (a connection the lazy watch leaves alone).</summary>
internal static class LazyWatchProbe
{
    /// <summary>Whether the receive loop waits for the application to read what fills its input (backpressure).</summary>
    public static bool InputPaused(ManagedConnection connection) => connection.InputPausedForTest;

    /// <summary>The connection's park (whether its loop is parked, watched, how often it parked).</summary>
    public static LoopPark Park(ManagedConnection connection) => connection.ParkForTest;

    /// <summary>Whether the lazy watch's thread left the loop's wait for data pending itself (the loop held, not resumed).</summary>
    public static bool WatchReadStarted(ManagedConnection connection) => connection.WatchReadStartedForTest;

    /// <summary>Whether the lazy watch's thread sleeps until the next push (its lists stayed empty for a while).</summary>
    public static bool WatcherAsleep => ManagedConnection.WatcherAsleepForTest;

    /// <summary>How many threads the lazy watch started in this process.</summary>
    public static int WatcherThreadsStarted => ManagedConnection.WatcherThreadsStartedForTest;

    /// <summary>How many looks the lazy watch's thread made so far (one per period while it is awake).</summary>
    public static long WatchLooks => ManagedConnection.WatchLooksForTest;

    /// <summary>Keeps the connection's loop parked (<see cref="ManagedConnection.KeepParkedForTest"/>) and tells whether
    /// that came in time: the watch's thread may have been past its check of that flag in the look under way, so the
    /// answer waits until that look is over (two looks later; the new connection keeps the watch's thread awake).</summary>
    public static async Task<bool> KeepParkedAsync(ManagedConnection connection)
    {
        long looks = WatchLooks;
        connection.KeepParkedForTest();
        await TestTimeouts.WaitUntilAsync(() => WatchLooks >= looks + 2, "two looks of the lazy watch");
        return !Park(connection).IsWatched;
    }

    /// <summary>A managed server end (and its raw peer) whose loop stays parked until the application reads, asks for
    /// PeerClosed or closes (the lazy watch leaves it alone). The watch may have watched it in the instant before: then
    /// another one.</summary>
    public static async Task<(Socket Peer, ManagedConnection Connection)> CreateKeptParkedServerAsync(ManagedConnectionOptions? options = null)
    {
        for (int attempt = 1; ; attempt++)
        {
            (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync(options);
            if (await KeepParkedAsync(connection))
            {
                return (peer, connection);
            }

            connection.Abort();
            peer.Dispose();
            Assert.True(attempt < 5, "the lazy watch watched every new connection within its first instant");
        }
    }
}
