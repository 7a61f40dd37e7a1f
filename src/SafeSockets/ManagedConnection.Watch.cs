using SafeSockets.Internal;

namespace SafeSockets;

// When the receive loop reads: on demand while the application reads, always once the connection is watched.
//
// The first edition kept a read pending on every connection from its creation on, so that the peer's FIN was seen
// while the application was busy elsewhere. That read is what made a request/response cycle cost 1.3-1.6x a raw
// socket's CPU (benchmarks/README.md, "Hot path"): every segment that arrived went epoll -> the sockets thread -> a
// pool worker -> the loop -> the pipe, where a raw application that sends and then reads finds the answer already
// there and completes its read synchronously, with no wake-up at all.
//
// Now the loop parks between reads while nobody needs it, and reads when:
// - the application asks (ReceiveAsync finds the input empty): the loop is woken on the application's own thread and
//   issues its read there, so bytes that are already in the kernel reach the application synchronously, and bytes
//   that are not yet there cost exactly one wake-up, as with a raw socket;
// - the connection is watched: from then on a read is always pending, as before. A connection becomes watched when
//   someone asks for PeerClosed or Transport (they want the peer's FIN seen at once), and when the application has
//   not read for one to two WatchPeriods (a connection it holds but does not read, or forgot: its FIN must still be
//   seen, and the CLOSE_WAIT guard armed);
// - the teardown drains (it takes the input, and the loop reads and discards until the peer's FIN).
// Only the loop ever reads the socket: the pipe, the drain, the reader hand-off and the teardown's prompt wake-up of a
// pending ReceiveAsync are unchanged.
public sealed partial class ManagedConnection
{
    // How often the lazy watch looks at connections whose loop parked: a connection is watched when its loop stayed
    // parked for a whole period (so between one and two periods after the application's last read). Short against any
    // CloseWaitTimeout, long against a request/response handler's work between two reads.
    private const int WatchPeriodMilliseconds = 10;

    // The loop's park and the reasons it wakes (Internal/LoopPark.cs); also this connection's entry in the lazy
    // watch's list (intrusive, lock-free push, taken whole by the timer).
    private readonly LoopPark _park;

    private static LoopPark? s_watchHead;
    private static readonly Timer s_watchTimer = CreateWatchTimer();

    private static Timer CreateWatchTimer()
    {
        // The timer's callbacks belong to no caller: no execution context is captured.
        using (ExecutionContext.SuppressFlow())
        {
            return new Timer(static _ => LookAtParkedLoops(), null, Timeout.Infinite, Timeout.Infinite);
        }
    }

    /// <summary>From now on the loop keeps a read pending at all times (the peer's FIN and resets are seen at once).</summary>
    private void Watch() => _park.Watch();

    /// <summary>Parks the loop (see <see cref="LoopPark.TryPark"/>) and puts the connection on the lazy watch's list.</summary>
    private ValueTask<int>? TryPark()
    {
        ValueTask<int>? park = _park.TryPark();
        if (park is not null)
        {
            QueueForWatch();
        }

        return park;
    }

    /// <summary>Puts this connection on the lazy watch's list (once).</summary>
    private void QueueForWatch()
    {
        LoopPark entry = _park;
        if (Interlocked.Exchange(ref entry.InList, 1) != 0)
        {
            return;
        }

        LoopPark? head = Volatile.Read(ref s_watchHead);
        while (true)
        {
            entry.NextInList = head;
            LoopPark? seen = Interlocked.CompareExchange(ref s_watchHead, entry, head);
            if (seen == head)
            {
                break;
            }

            head = seen;
        }

        if (head is null)
        {
            // The list was empty: the timer was stopped (or is about to look at an empty list).
            s_watchTimer.Change(WatchPeriodMilliseconds, Timeout.Infinite);
        }
    }

    /// <summary>The lazy watch's timer: each connection whose loop stayed parked since the previous look is watched; one
    /// whose loop parked again since is looked at once more; one whose loop is reading leaves the list (it comes back
    /// when the loop parks); a released one leaves it.</summary>
    private static void LookAtParkedLoops()
    {
        LoopPark? entry = Interlocked.Exchange(ref s_watchHead, null);
        while (entry is not null)
        {
            LoopPark? next = entry.NextInList;
            entry.NextInList = null;

            // Out of the list before looking: a park that happens from here on queues the connection again.
            Interlocked.Exchange(ref entry.InList, 0);
            (Volatile.Read(ref entry.Owner) as ManagedConnection)?.LookAtParkedLoop();
            entry = next;
        }

        if (Volatile.Read(ref s_watchHead) is not null)
        {
            s_watchTimer.Change(WatchPeriodMilliseconds, Timeout.Infinite);
        }
    }

    private void LookAtParkedLoop()
    {
        if (!_park.IsParked || _park.IsWatched || _lifecycle.IsTearingDown)
        {
            return;
        }

        int parks = _park.Parks;
        if (parks != _park.ParksSeen)
        {
            // The loop parked (again) since the previous look: the application is reading. Look again next period.
            _park.ParksSeen = parks;
            QueueForWatch();
            return;
        }

        // Parked for a whole period: nobody reads. Watch it (the loop's read is issued on this timer thread).
        try
        {
            Watch();
        }
#pragma warning disable CA1031 // The loop reports its own errors; nothing may escape onto the timer's thread.
        catch (Exception ex)
#pragma warning restore CA1031
        {
            ReportUnexpected("lazy watch", ex);
        }
    }
}
