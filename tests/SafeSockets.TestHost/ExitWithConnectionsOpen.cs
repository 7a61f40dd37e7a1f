using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Reflection;
using SafeSockets;

/// <summary><c>exit-with-connections-open</c>: an application that returns from <c>Main</c> with a connection still open
/// (never closed, never disposed, as one that exits on an error path would) must end: the threads of the library's own
/// (the lazy watch's, ManagedConnection.Watch.cs; the deadline queue's waiter, Internal/DeadlineQueue.cs) are background
/// threads, and a foreground one would keep the process alive for good. This scenario makes both run (a connection the
/// lazy watch has watched, with an idle bound queued for ten minutes), prints what it saw, and returns; the test judges
/// the facts and that the process exited by itself. Test-only state is read by reflection (this assembly does not see the
/// library's internals), to check a precondition, never to set one. One line per fact, "key=value".</summary>
internal static class ExitWithConnectionsOpen
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(10);

    public static async Task<int> RunAsync()
    {
        var options = new ManagedConnectionOptions { IdleTimeout = TimeSpan.FromMinutes(10) };
        ManagedListener listener = ManagedListener.Start(
            new IPEndPoint(IPAddress.Loopback, 0), new ManagedListenerOptions { Connection = options });
        var peer = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        await peer.ConnectAsync(listener.LocalEndPoint).WaitAsync(Bound);
        ManagedConnection connection = await listener.AcceptAsync().AsTask().WaitAsync(Bound);

        // Nobody reads: the lazy watch's thread watches the parked loop within a few milliseconds (it has run, then).
        PropertyInfo isWatched = typeof(ManagedConnection).GetProperty("IsWatchedForTest", BindingFlags.Instance | BindingFlags.NonPublic)
            ?? throw new MissingMemberException(nameof(ManagedConnection), "IsWatchedForTest");
        var clock = Stopwatch.StartNew();
        while (!(bool)isWatched.GetValue(connection)!)
        {
            if (clock.Elapsed > Bound)
            {
                Console.WriteLine("watched=False");
                return 1;
            }

            await Task.Yield();
        }

        Console.WriteLine("watched=True");
        Console.WriteLine($"watchThreadsStarted={StaticProperty(typeof(ManagedConnection), "WatcherThreadsStartedForTest")}");

        // The idle bound is queued on the system clock's shared queue, whose waiter is a thread of the library's own.
        Type queueType = typeof(ManagedConnection).Assembly.GetType("SafeSockets.Internal.DeadlineQueue", throwOnError: true)!;
        object queue = queueType.GetMethod("For", BindingFlags.Static | BindingFlags.Public | BindingFlags.NonPublic)!
            .Invoke(null, [TimeProvider.System])!;
        Console.WriteLine($"deadlinesQueued={queueType.GetProperty("Count")!.GetValue(queue)}");
        Console.WriteLine($"deadlineWaiterRunning={queueType.GetProperty("HasWaiter", BindingFlags.Instance | BindingFlags.NonPublic)!.GetValue(queue)}");
        Console.WriteLine($"state={connection.State}");

        // Returns with the listener, the connection and the peer open: nothing closed, nothing disposed.
        GC.KeepAlive(peer);
        Console.WriteLine("returning=True");
        return 0;
    }

    private static object? StaticProperty(Type type, string name) =>
        (type.GetProperty(name, BindingFlags.Static | BindingFlags.NonPublic) ?? throw new MissingMemberException(type.Name, name)).GetValue(null);
}
