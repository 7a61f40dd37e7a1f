using System.Diagnostics;
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
// - the connection is watched: a read is then always pending, as before. A connection is watched for good when
//   someone asks for PeerClosed or Transport (they want the peer's FIN seen at once), and lazily when the application
//   has not read for 1-3 ms (a connection it holds but does not read, or forgot: its FIN must still be seen, and the
//   CLOSE_WAIT guard armed). A lazy watch ends when the loop hands over bytes the application asked for (it reads again: a
//   keep-alive connection between two requests goes back to reading on demand), and comes back if it parks again;
// - the teardown drains (it takes the input, and the loop reads and discards until the peer's FIN).
// Only the loop ever reads bytes from the socket (the watch's thread may start a watched loop's zero-byte wait for
// data for it, StartWatchRead): the pipe, the drain, the reader hand-off and the teardown's prompt wake-up of a
// pending ReceiveAsync are unchanged.
public sealed partial class ManagedConnection
{
    // How often the lazy watch looks at connections whose loop parked: a connection whose loop stayed parked since it
    // was queued, for at least s_minimumParkedTime, is watched at that look, so 1-3 ms after the application's last read
    // (plus the look's own lateness). Short against CloseWaitTimeout (the guard starts when the FIN is seen: fin-latency's
    // never-reacting application must see our FIN within 5 ms of CloseWaitTimeout), long against a request/response
    // handler's work between two reads (microseconds).
    // Not a .NET timer: those run on the kernel's 4 ms coarse clock here; a thread of ours sleeps between looks.
    private const int WatchPeriodMilliseconds = 2;
    private static readonly long s_watchPeriodTicks = Stopwatch.Frequency * WatchPeriodMilliseconds / 1000;

    // How long a loop must have stayed parked before the lazy watch watches it: a connection the application reads
    // without pause parks for microseconds between reads and is never watched (found by review: with no minimum, a
    // look that landed in such a gap watched it, and each watch costs a pending read (on Windows a wake-up from the pool) and, until the next bytes
    // are handed over, reads the old way).
    private static readonly TimeSpan s_minimumParkedTime = TimeSpan.FromMilliseconds(1);

    // How many watched loops' waits for data one look starts on the watch's own thread (a syscall each, and an epoll
    // registration for a socket's first wait); beyond that, in a look that watches a crowd of connections at once (a
    // pause shared by thousands of keep-alive clients), the loops start their own from the pool, spread over its threads,
    // so the look stays short and the next one (FINs, keep-alive) is not late. Only the watch's thread touches the count.
    private const int MaxWatchReadsPerLook = 64;
    private static int s_maxWatchReadsPerLook = MaxWatchReadsPerLook;
    private static int s_watchReadsThisLook;

    /// <summary>How many waits for data one look of the lazy watch starts itself (64); for tests, which set it to 0 to
    /// send every watched loop down the other path (resumed from the pool, it starts its own wait).</summary>
    internal static int MaxWatchReadsPerLookForTest
    {
        get => Volatile.Read(ref s_maxWatchReadsPerLook);
        set => Volatile.Write(ref s_maxWatchReadsPerLook, value);
    }

    // How long the lazy watch's thread keeps looking after its list last had an entry before it sleeps until a push.
    private const int WatchLingerPeriods = 500;

    // The loop's park and the reasons it wakes (Internal/LoopPark.cs); also this connection's entry in the lazy
    // watch's list (intrusive, lock-free push, taken whole by the watch's thread).
    private readonly LoopPark _park;

    private static LoopPark? s_watchHead;

    // Keep-alive, set late: most connections of a request/response exchange live microseconds to milliseconds, and
    // keep-alive costs four setsockopt calls (of about ten syscalls a client connection makes), while its first probe
    // is KeepAliveTime (seconds) away anyway. A connection is pushed here when it is made; each look of the watch's
    // thread sets keep-alive on the connections pushed before the previous look (so 2-4 ms old) that are not released
    // yet. Not tied to the loop's park: a connection waiting in ReceiveAsync (its loop reading, not parked) needs
    // keep-alive most, since a vanished peer would leave that read pending for ever.
    private ManagedConnection? _nextForKeepAlive;
    private static ManagedConnection? s_keepAliveHead;

    // Taken from s_keepAliveHead at the previous look; only the watch's thread touches it.
    private static ManagedConnection? s_keepAliveAged;

    // What became of this connection's late keep-alive (for tests): queued, set, skipped (released before its turn),
    // skipped late (released during it), failed (logged).
    private int _keepAlive;
    internal const int KeepAliveQueued = 1;
    internal const int KeepAliveSet = 2;
    internal const int KeepAliveSkipped = 3;
    internal const int KeepAliveSkippedLate = 4;
    internal const int KeepAliveFailed = 5;

    /// <summary>What became of this connection's late keep-alive (0 if it was never queued), for tests.</summary>
    internal int KeepAliveForTest => Volatile.Read(ref _keepAlive);

    private static readonly object s_watchLock = new();
    private static bool s_watcherRunning;
    private static bool s_watcherAsleep;

    // For tests: how many threads the watch started (one per process), and how many looks its thread made (one per
    // period while it is awake). Each written by one thread only (the first under the lock, the second by the watch's).
    private static int s_watcherThreadsStarted;
    private static long s_watchLooks;

    /// <summary>For tests: the lazy watch leaves this connection's loop parked (until a read, a watch or the teardown).</summary>
    internal void KeepParkedForTest() => _park.NoLazyWatch = true;

    /// <summary>Whether the loop keeps a read pending now (watched for good or lazily), for tests.</summary>
    internal bool IsWatchedForTest => _park.IsWatched;

    /// <summary>The loop's park, for tests (they look; they never set it).</summary>
    internal LoopPark ParkForTest => _park;

    /// <summary>For tests: the buffer length of the loop's socket read in progress (0 for none, or a zero-byte wait for
    /// data); the pooled operation clears its buffer when a read's result is taken.</summary>
    internal int PendingReadLengthForTest => Volatile.Read(ref _receiveArgs)?.MemoryBuffer.Length ?? 0;

    /// <summary>Whether the lazy watch's thread sleeps until the next push, for tests.</summary>
    internal static bool WatcherAsleepForTest
    {
        get
        {
            lock (s_watchLock)
            {
                return s_watcherAsleep;
            }
        }
    }

    /// <summary>How many threads the lazy watch started in this process (it starts one, once), for tests.</summary>
    internal static int WatcherThreadsStartedForTest
    {
        get
        {
            lock (s_watchLock)
            {
                return s_watcherThreadsStarted;
            }
        }
    }

    /// <summary>How many looks the lazy watch's thread made (one per period while it is awake), for tests.</summary>
    internal static long WatchLooksForTest => Volatile.Read(ref s_watchLooks);

    /// <summary>Whether the lazy watch's thread ever left a wait for data pending on this connection's behalf (the loop's
    /// zero-byte read, started while the watch held its park), for tests.</summary>
    internal bool WatchReadStartedForTest => Volatile.Read(ref _watchReadStarted);

    private bool _watchReadStarted;

    /// <summary>Whether the receive loop waits for the application to read what fills its input, for tests.</summary>
    internal bool InputPausedForTest => InputPaused;

    /// <summary>How many times the loop parked, for tests (a watched loop never parks).</summary>
    internal int LoopParksForTest => _park.Parks;

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

    /// <summary>Has the watch's thread set keep-alive 2-4 ms from now, unless the connection is released by then.</summary>
    private void QueueKeepAlive()
    {
        _keepAlive = KeepAliveQueued;
        ManagedConnection? head = Volatile.Read(ref s_keepAliveHead);
        while (true)
        {
            _nextForKeepAlive = head;
            ManagedConnection? seen = Interlocked.CompareExchange(ref s_keepAliveHead, this, head);
            if (seen == head)
            {
                break;
            }

            head = seen;
        }

        if (head is null)
        {
            EnsureWatcher();
        }
    }

    /// <summary>Sets keep-alive on the connections pushed before the previous look (those not released yet), and takes
    /// the ones pushed since for the next look.</summary>
    private static void SetAgedKeepAlive()
    {
        ManagedConnection? entry = s_keepAliveAged;
        s_keepAliveAged = Interlocked.Exchange(ref s_keepAliveHead, null);
        while (entry is not null)
        {
            ManagedConnection? next = entry._nextForKeepAlive;
            entry._nextForKeepAlive = null;
            entry.SetKeepAliveLate();
            entry = next;
        }
    }

    private void SetKeepAliveLate()
    {
        if (_lifecycle.IsReleased)
        {
            Volatile.Write(ref _keepAlive, KeepAliveSkipped);
            return;
        }

        try
        {
            ApplyKeepAlive(_socket, _settings);
            Volatile.Write(ref _keepAlive, KeepAliveSet);
        }
        catch (ObjectDisposedException)
        {
            // Released since the check: nothing to keep alive.
            Volatile.Write(ref _keepAlive, KeepAliveSkippedLate);
        }
#pragma warning disable CA1031 // Nothing may end the watch's thread; the connection reports what went wrong.
        catch (Exception ex)
#pragma warning restore CA1031
        {
            Volatile.Write(ref _keepAlive, KeepAliveFailed);
            try
            {
                ReportUnexpected("keep-alive", ex);
            }
#pragma warning disable CA1031 // A logger that throws must not end the watch's thread (nor the process).
            catch (Exception)
#pragma warning restore CA1031
            {
            }
        }
    }

    /// <summary>Puts this connection on the lazy watch's list (once).</summary>
    private void QueueForWatch()
    {
        LoopPark entry = _park;
        if (Interlocked.Exchange(ref entry.InList, 1) != 0)
        {
            return;
        }

        entry.ParksSeen = entry.Parks;

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
            // The list was empty: the watch's thread may be asleep (or not started yet).
            EnsureWatcher();
        }
    }

    private static void EnsureWatcher()
    {
        lock (s_watchLock)
        {
            if (!s_watcherRunning)
            {
                // Started without the caller's execution context: it belongs to no caller. (If it cannot start, the next
                // push tries again.)
                new Thread(RunWatcher) { IsBackground = true, Name = "SafeSockets lazy watch" }.UnsafeStart();
                s_watcherRunning = true;
                s_watcherThreadsStarted++;
            }
            else if (s_watcherAsleep)
            {
                Monitor.Pulse(s_watchLock);
            }
        }
    }

    /// <summary>The lazy watch's thread: a look every period while connections are queued (and for a while after), else
    /// asleep until a push (the decision to sleep, taken with the lists read again, and a push's pulse are both under the
    /// lock: none is lost).</summary>
    /// <remarks>Between looks it sleeps, not on the monitor: a timed monitor wait cost several futex calls per look (perf,
    /// 1 in flight: the watch's thread made about a third of the process's futex calls). Nor with
    /// <see cref="Thread.Sleep(int)"/>, which the runtime implements on Linux as a timed condition wait (two futex calls
    /// and a mutex per look; perf, the proxy benchmark: the watch's thread made more futex calls than all the pool's
    /// workers together), but with one <c>nanosleep</c> where the platform has it (<see cref="PreciseSleep"/>).</remarks>
    private static void RunWatcher()
    {
        int idlePeriods = 0;
        while (true)
        {
            if (HasWatchWork())
            {
                idlePeriods = 0;
            }
            else if (++idlePeriods > WatchLingerPeriods)
            {
                lock (s_watchLock)
                {
                    if (!HasWatchWork())
                    {
                        s_watcherAsleep = true;
                        Monitor.Wait(s_watchLock);
                        s_watcherAsleep = false;
                    }
                }

                idlePeriods = 0;
            }

            PreciseSleep.Until(Stopwatch.GetTimestamp() + s_watchPeriodTicks);
            Volatile.Write(ref s_watchLooks, s_watchLooks + 1);

            // Parked loops first: a burst of new connections' keep-alive calls must not delay a FIN's detection.
            LookAtParkedLoops();
            SetAgedKeepAlive();
        }
    }

    private static bool HasWatchWork() =>
        Volatile.Read(ref s_watchHead) is not null || Volatile.Read(ref s_keepAliveHead) is not null || s_keepAliveAged is not null;

    /// <summary>One look: each connection whose loop stayed parked since it was queued is watched; one whose loop parked
    /// again since is looked at once more; one whose loop is reading leaves the list (it comes back when the loop parks);
    /// a released one leaves it.</summary>
    private static void LookAtParkedLoops()
    {
        s_watchReadsThisLook = 0;
        LoopPark? entry = Interlocked.Exchange(ref s_watchHead, null);
        while (entry is not null)
        {
            LoopPark? next = entry.NextInList;
            entry.NextInList = null;

            // Out of the list before looking: a park that happens from here on queues the connection again.
            Interlocked.Exchange(ref entry.InList, 0);
            try
            {
                (Volatile.Read(ref entry.Owner) as ManagedConnection)?.LookAtParkedLoop();
            }
#pragma warning disable CA1031 // Nothing may end the watch's thread; a failure is reported by the connection.
            catch (Exception ex)
#pragma warning restore CA1031
            {
                try
                {
                    (Volatile.Read(ref entry.Owner) as ManagedConnection)?.ReportUnexpected("lazy watch", ex);
                }
#pragma warning disable CA1031 // A logger that throws must not end the watch's thread (nor the process).
                catch (Exception)
#pragma warning restore CA1031
                {
                }
            }

            entry = next;
        }
    }

    private void LookAtParkedLoop()
    {
        if (!_park.IsParked || _park.IsWatched || _park.NoLazyWatch || _lifecycle.IsTearingDown)
        {
            return;
        }

        int parks = _park.Parks;
        if (parks != _park.ParksSeen || System.Diagnostics.Stopwatch.GetElapsedTime(Volatile.Read(ref _park.ParkedAt)) < s_minimumParkedTime)
        {
            // The loop parked again since it was queued, or only just now: the application is reading (a busy connection
            // parks for microseconds between its reads). Look again next period.
            _park.ParksSeen = parks;
            QueueForWatch();
            return;
        }

        // Parked since it was queued, for long enough: nobody reads. Watch it until it hands over bytes asked for.
        if (!s_stopDrainWithShutdown || ++s_watchReadsThisLook > Volatile.Read(ref s_maxWatchReadsPerLook))
        {
            // The loop resumes from the pool and starts its wait for data itself.
            _park.WatchLazily();
            return;
        }

        if (_park.WatchLazilyAndHold())
        {
            StartWatchRead();
        }
    }

    /// <summary>Starts the watched loop's wait for data from this thread (the lazy watch's), while it holds the loop's
    /// park: the zero-byte read the loop would start first thing, on the loop's own operation object. When it completes
    /// (data, the peer's FIN or reset, our drain bound's shutdown, the release) the loop resumes on the completing
    /// thread and reads. A watch then costs no thread-pool work item and no wake-up of a pool thread just to issue a
    /// read that waits (each pause of a keep-alive client longer than a millisecond is such a watch).</summary>
    private void StartWatchRead()
    {
        ValueTask<int> read;
        SocketIoArgs args;
        try
        {
            if (WatchReadFailureForTest?.Invoke(this, false) is { } injected)
            {
                throw injected;
            }

            // Nobody else touches the operation object now: the loop is suspended in its park, which we hold.
            args = _receiveArgs ??= SocketIoArgs.Rent();
            read = args.ReceiveAsync(_socket, Memory<byte>.Empty);
        }
#pragma warning disable CA1031 // Handed to the loop, which sorts it exactly as it sorts its own read's failures.
        catch (Exception ex)
#pragma warning restore CA1031
        {
            // Released (or broken) before the read started.
            HandWatchFailureToTheLoop(ex);
            return;
        }

        if (read.IsCompleted)
        {
            // Data or the FIN already there: the loop reads from the pool (never on this thread).
            TakeWatchReadResult(read);
            _park.ResumeOnThreadPool();
            return;
        }

        _watchRead = read;
        Volatile.Write(ref _watchReadStarted, true);
        try
        {
            // Never runs the continuation on this thread: if the read completed meanwhile, it is queued to the pool.
            ((System.Threading.Tasks.Sources.IValueTaskSource<int>)args).OnCompleted(
                static s => ((ManagedConnection)s!).OnWatchReadCompleted(), this, args.Version, System.Threading.Tasks.Sources.ValueTaskSourceOnCompletedFlags.None);
        }
#pragma warning disable CA1031 // Cannot happen (the version is the read's own); if it did, the loop must not stay held for good.
        catch (Exception ex)
#pragma warning restore CA1031
        {
            HandWatchFailureToTheLoop(ex);
        }
    }

    /// <summary>For tests: a failure to inject into the lazy watch's read of the connection given, when it starts (false:
    /// as if the read threw there) or when it has completed (true: as if it completed with that failure); null for none.
    /// Process-wide: it must check which connection it is called for.</summary>
    internal static Func<ManagedConnection, bool, Exception?>? WatchReadFailureForTest { get; set; }

    /// <summary>The watch's read could not be started or waited for: the loop, resumed from the pool, rethrows the failure
    /// as its own read's; the operation object's state is not known, so the loop drops it.</summary>
    private void HandWatchFailureToTheLoop(Exception failure)
    {
        Volatile.Write(ref _dropReceiveArgs, true);
        _watchReadFailure = failure;
        Volatile.Write(ref _watchReadDone, true);
        _park.ResumeOnThreadPool();
    }

    /// <summary>The watch's zero-byte read completed (on the thread that completed it, never the watch's): the loop goes on here.</summary>
    private void OnWatchReadCompleted()
    {
        ValueTask<int> read = _watchRead;
        _watchRead = default;
        TakeWatchReadResult(read);
        _park.Resume();
    }

    /// <summary>Consumes the watch's read (once) and keeps its failure for the loop, which rethrows it as its own read's.</summary>
    private void TakeWatchReadResult(ValueTask<int> read)
    {
        try
        {
            _ = read.GetAwaiter().GetResult();
            if (WatchReadFailureForTest?.Invoke(this, true) is { } injected)
            {
                throw injected;
            }
        }
#pragma warning disable CA1031 // Handed to the loop (a reset must not read as a FIN: the kernel reports it once).
        catch (Exception ex)
#pragma warning restore CA1031
        {
            // The read completed (it failed): the loop sorts the failure as its own read's, and decides on the operation
            // object as it does then.
            _watchReadFailure = ex;
        }

        Volatile.Write(ref _watchReadDone, true);
    }
}
