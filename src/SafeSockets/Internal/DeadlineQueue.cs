using System.Diagnostics;
using System.Runtime.CompilerServices;

namespace SafeSockets.Internal;

/// <summary>One deadline queue for all connections on a <see cref="TimeProvider"/>: each connection has at most one deadline at a
/// time, with its purpose (its drain bound while closing, its CLOSE_WAIT guard after the peer's FIN), kept in a binary min-heap indexed
/// by the owner itself, and one waiter sleeps until the earliest.</summary>
/// <remarks>
/// <para>A timer per connection costs two objects per close and a timer-queue insert and remove; here a deadline costs
/// a heap insert under a lock, no allocation. Removal is eager (a finished connection is never kept alive by the heap).
/// The waiter may wake early (a removed earliest entry does not disarm it); it then simply waits for the current earliest.
/// A deadline never runs early.</para>
/// <para>On the system clock the waiter is one background thread of our own that sleeps on the queue's monitor. .NET's
/// timers are not used there because on Linux they run on the kernel's coarse clock (4 ms ticks at HZ=250): a 100 ms
/// deadline ran up to 6 ms late, p99 4.5 ms, against p99 1.2-1.9 ms for the monitor wait (benchmarks/README.md, "FIN
/// latency"), which spent most of <see cref="ManagedConnectionOptions.CloseWaitTimeout"/>'s 5 ms budget. Any other time
/// provider (a test's fake clock) drives the queue through its own <see cref="ITimer"/>.</para>
/// </remarks>
internal sealed class DeadlineQueue
{
    private static readonly ConditionalWeakTable<TimeProvider, DeadlineQueue> s_queues = [];
    private static readonly DeadlineQueue s_system = new(TimeProvider.System);

    private readonly TimeProvider _timeProvider;

    // A monitor, not a Lock: the system clock's waiter thread sleeps on it (Monitor.Wait).
    private readonly object _lock = new();
    private readonly bool _ownThread;
    private ITimer? _timer;
    private bool _waiterRunning;
    private long _asleepFor;
    private IDeadlineOwner[] _heap = new IDeadlineOwner[16];
    private int _count;

    // How many times the system clock's waiter looked at the heap (a waiter that spun instead of sleeping would look
    // thousands of times per deadline); for tests.
    private long _waiterPasses;
    private int _waitersStarted;

    // Since when the system clock's waiter has found nothing to wait for and no deadline was scheduled (0: in use; every
    // Schedule resets it, and the heap holds nothing that was not scheduled).
    private long _idleSince;

    // The due time the waiter (or timer) is set for; long.MaxValue when it waits for nothing.
    private long _armedFor = long.MaxValue;

    // How long the system clock's waiter stays with nothing to wait for before its thread ends (a later Schedule starts
    // another), so a process that stops using connections keeps no thread of ours. (A cancel does not wake the waiter:
    // it first sleeps until the cancelled deadline's time, at most a minute, then idles this long.)
    private readonly int _idleExitMilliseconds;

    private DeadlineQueue(TimeProvider timeProvider, int idleExitMilliseconds = 30_000)
    {
        _timeProvider = timeProvider;
        _ownThread = ReferenceEquals(timeProvider, TimeProvider.System);
        _idleExitMilliseconds = idleExitMilliseconds;
    }

    /// <summary>The queue shared by every owner on <paramref name="timeProvider"/>.</summary>
    public static DeadlineQueue For(TimeProvider timeProvider) =>
        ReferenceEquals(timeProvider, TimeProvider.System) ? s_system : s_queues.GetValue(timeProvider, static t => new DeadlineQueue(t));

    /// <summary>A queue on the system clock with a waiter thread of its own, apart from the shared one; for tests.</summary>
    internal static DeadlineQueue CreateSystemForTest(int idleExitMilliseconds = 30_000) => new(TimeProvider.System, idleExitMilliseconds);

    /// <summary>Runs <paramref name="action"/> holding the queue's lock (reentrant: it may schedule and cancel), so the
    /// waiter cannot look in between; for tests.</summary>
    internal void UnderLockForTest(Action action)
    {
        lock (_lock)
        {
            action();
        }
    }

    /// <summary>How many waiter threads this queue started (one at a time; another only after one ended idle); for tests.</summary>
    internal int WaitersStartedForTest
    {
        get
        {
            lock (_lock)
            {
                return _waitersStarted;
            }
        }
    }

    /// <summary>How many times the system clock's waiter looked at the heap; for tests.</summary>
    internal long WaiterPassesForTest
    {
        get
        {
            lock (_lock)
            {
                return _waiterPasses;
            }
        }
    }

    /// <summary>Whether the system clock's waiter thread is running; for tests.</summary>
    internal bool HasWaiter
    {
        get
        {
            lock (_lock)
            {
                return _waiterRunning;
            }
        }
    }

    /// <summary>The due time the system clock's waiter is asleep for on the monitor (with nothing to wait for, its idle horizon); 0
    /// while it is awake or in the precise sleep of a deadline's last fraction of a millisecond. For tests.</summary>
    internal long WaiterAsleepFor
    {
        get
        {
            lock (_lock)
            {
                return _asleepFor;
            }
        }
    }

    /// <summary>How many deadlines are queued; for tests.</summary>
    public int Count
    {
        get
        {
            lock (_lock)
            {
                return _count;
            }
        }
    }

    /// <summary>Sets (or moves) <paramref name="owner"/>'s deadline to <paramref name="due"/> (a timestamp of the time provider), for <paramref name="purpose"/>.</summary>
    public void Schedule(IDeadlineOwner owner, long due, DeadlinePurpose purpose)
    {
        lock (_lock)
        {
            if (owner.DeadlineIndex >= 0 && Outranks(owner.DeadlinePurpose, purpose))
            {
                // A drain bound is never displaced by a late guard or idle bound (the teardown already began), nor a guard
                // by a late idle bound (the peer's FIN came meanwhile; the guard checks the idle bound too).
                return;
            }

            owner.DeadlinePurpose = purpose;
            _idleSince = 0; // in use, even if cancelled before the waiter looks
            int index = owner.DeadlineIndex;
            if (index < 0)
            {
                if (_count == _heap.Length)
                {
                    Array.Resize(ref _heap, _count * 2);
                }

                index = _count++;
                _heap[index] = owner;
            }

            long previous = owner.DeadlineDue;
            owner.DeadlineDue = due;
            if (index == owner.DeadlineIndex && due > previous)
            {
                SiftDown(index);
            }
            else
            {
                owner.DeadlineIndex = index;
                SiftUp(index);
            }

            if (due < _armedFor)
            {
                ArmLocked(due);
            }
        }
    }

    /// <summary>Whether a deadline queued for <paramref name="queued"/> must stay when one for <paramref name="incoming"/> comes:
    /// the later phase of a connection wins (idle bound, then the guard after the peer's FIN, then the drain bound).</summary>
    private static bool Outranks(DeadlinePurpose queued, DeadlinePurpose incoming) => Rank(queued) > Rank(incoming);

    private static int Rank(DeadlinePurpose purpose) => purpose switch
    {
        DeadlinePurpose.DrainBound => 3,
        DeadlinePurpose.CloseWaitGuard => 2,
        DeadlinePurpose.IdleBound => 1,
        _ => 0,
    };

    /// <summary>Removes <paramref name="owner"/>'s deadline if it has one for <paramref name="purpose"/>.</summary>
    public void Cancel(IDeadlineOwner owner, DeadlinePurpose purpose)
    {
        if (owner.DeadlineIndex < 0)
        {
            return;
        }

        lock (_lock)
        {
            if (owner.DeadlinePurpose == purpose)
            {
                RemoveLocked(owner);
            }
        }
    }

    /// <summary>Removes <paramref name="owner"/>'s deadline, if it has one.</summary>
    public void Cancel(IDeadlineOwner owner)
    {
        if (owner.DeadlineIndex < 0)
        {
            return;
        }

        lock (_lock)
        {
            RemoveLocked(owner);
        }
    }

    private void OnTimer()
    {
        while (true)
        {
            IDeadlineOwner? due;
            DeadlinePurpose purpose;
            lock (_lock)
            {
                long now = _timeProvider.GetTimestamp();
                if (_count > 0 && _heap[0].DeadlineDue <= now)
                {
                    due = _heap[0];
                    purpose = due.DeadlinePurpose;
                    RemoveLocked(due);
                }
                else
                {
                    _armedFor = long.MaxValue;
                    if (_count > 0)
                    {
                        ArmLocked(_heap[0].DeadlineDue);
                    }

                    return;
                }
            }

            // Outside the lock: the owner may schedule its next deadline (or close) from here.
            due.OnDeadline(purpose);
        }
    }

    /// <summary>The system clock's waiter: sleeps on the monitor until the earliest deadline (a Schedule that moves the
    /// earliest forward pulses it) and runs each due deadline on this thread, outside the lock; ends after a while with
    /// no deadline at all.</summary>
    private void RunWaiter()
    {
        while (true)
        {
            IDeadlineOwner? due = null;
            DeadlinePurpose purpose = DeadlinePurpose.None;
            long sleepUntil = 0;
            lock (_lock)
            {
                while (true)
                {
                    _asleepFor = 0;
                    _waiterPasses++;
                    long now = _timeProvider.GetTimestamp();
                    if (_count > 0 && _heap[0].DeadlineDue <= now)
                    {
                        due = _heap[0];
                        purpose = due.DeadlinePurpose;
                        RemoveLocked(due);
                        break;
                    }

                    if (_count == 0)
                    {
                        _idleSince = _idleSince == 0 ? now : _idleSince;
                        long idleMilliseconds = (long)Stopwatch.GetElapsedTime(_idleSince, now).TotalMilliseconds;
                        if (idleMilliseconds >= _idleExitMilliseconds)
                        {
                            // Idle: end the thread (under the lock, so the next Schedule sees it gone and starts another).
                            _armedFor = long.MaxValue;
                            _asleepFor = 0;
                            _waiterRunning = false;
                            return;
                        }

                        // Armed for a horizon, not for nothing: a Schedule due after it (the guard's first look, 250 ms
                        // after the peer's FIN; a drain bound, seconds) need not wake this thread, which finds it when it
                        // wakes at the horizon. Armed for nothing, it was woken by every such Schedule; with short
                        // connections one at a time each one's deadline was cancelled before the woken thread looked, so
                        // it found the heap empty and waited for nothing again: a wake-up and two context switches per
                        // connection. An earlier deadline still wakes it.
                        //
                        // It wakes a little before its horizon: a deadline due just after it is then waited for as any
                        // other (the last fraction of a millisecond slept precisely), not left to a wait that may end a
                        // millisecond or two late.
                        int wait = (int)Math.Min(IdleHorizonMilliseconds, _idleExitMilliseconds - idleMilliseconds);
                        _armedFor = now + (wait * (Stopwatch.Frequency / 1000));
                        _asleepFor = _armedFor;
                        Monitor.Wait(_lock, Math.Max(1, wait - IdleHorizonEarlyMilliseconds));
                    }
                    else
                    {
                        // On the system clock, timestamps are Stopwatch ticks.
                        _armedFor = _heap[0].DeadlineDue;
                        long ticksPerMillisecond = Stopwatch.Frequency / 1000;
                        long remaining = _armedFor - now;
                        if (PreciseSleep.IsSupported && remaining < ticksPerMillisecond)
                        {
                            // Under a millisecond left: slept precisely until the due time, outside the lock (PreciseSleep;
                            // WaiterAsleepFor reads 0 meanwhile). A Schedule then does not wake it: an earlier deadline
                            // runs at most that fraction of a millisecond late.
                            sleepUntil = _armedFor;
                            break;
                        }

                        // Whole milliseconds: rounded down where the rest is slept precisely (the next pass; at least
                        // 1 ms here, so never a zero wait), else rounded up (a monitor wait takes no less), so it neither
                        // wakes after the deadline nor runs it early.
                        long milliseconds = PreciseSleep.IsSupported ? remaining / ticksPerMillisecond : (remaining + ticksPerMillisecond - 1) / ticksPerMillisecond;
                        _asleepFor = _armedFor;
                        Monitor.Wait(_lock, (int)Math.Min(milliseconds, MaxWaitMilliseconds));
                    }
                }
            }

            if (due is null)
            {
                PreciseSleep.Until(sleepUntil);
                continue;
            }

            due.OnDeadline(purpose);
        }
    }

    // A far deadline is waited for in steps (it is re-read on every wake anyway).
    private const long MaxWaitMilliseconds = 60_000;

    // How far ahead a waiter with nothing to wait for is armed (see RunWaiter): the shortest deadline a connection
    // schedules with the default options, the CLOSE_WAIT guard's look at the kernel 250 ms after the peer's FIN.
    private const int IdleHorizonMilliseconds = 250;

    // How much earlier than its horizon the idle waiter wakes (about the most a monitor wait overshoots here).
    private const int IdleHorizonEarlyMilliseconds = 2;

    private void ArmLocked(long due)
    {
        _armedFor = due;
        if (_ownThread)
        {
            if (!_waiterRunning)
            {
                // Started without the caller's execution context: the deadlines belong to no caller.
                _waiterRunning = true;
                _waitersStarted++;
                try
                {
                    new Thread(RunWaiter) { IsBackground = true, Name = "SafeSockets deadlines" }.UnsafeStart();
                }
                catch
                {
                    // No thread (out of memory, a thread limit): the next Schedule tries again rather than pulsing nobody.
                    _waiterRunning = false;
                    throw;
                }
            }
            else
            {
                Monitor.Pulse(_lock);
            }

            return;
        }

        TimeSpan wait = _timeProvider.GetElapsedTime(_timeProvider.GetTimestamp(), due);
        if (wait < TimeSpan.Zero)
        {
            wait = TimeSpan.Zero;
        }

        if (_timer is null)
        {
            // Created on first use without the caller's execution context: the callback belongs to no caller.
            bool restore = !ExecutionContext.IsFlowSuppressed();
            if (restore)
            {
                ExecutionContext.SuppressFlow();
            }

            try
            {
                _timer = _timeProvider.CreateTimer(static s => ((DeadlineQueue)s!).OnTimer(), this, wait, Timeout.InfiniteTimeSpan);
            }
            finally
            {
                if (restore)
                {
                    ExecutionContext.RestoreFlow();
                }
            }
        }
        else
        {
            _timer.Change(wait, Timeout.InfiniteTimeSpan);
        }
    }

    private void RemoveLocked(IDeadlineOwner owner)
    {
        int index = owner.DeadlineIndex;
        if (index < 0)
        {
            return;
        }

        owner.DeadlineIndex = -1;
        int last = --_count;
        IDeadlineOwner moved = _heap[last];
        _heap[last] = null!;
        if (index == last)
        {
            return;
        }

        _heap[index] = moved;
        moved.DeadlineIndex = index;
        if (index > 0 && moved.DeadlineDue < _heap[(index - 1) / 2].DeadlineDue)
        {
            SiftUp(index);
        }
        else
        {
            SiftDown(index);
        }
    }

    private void SiftUp(int index)
    {
        IDeadlineOwner item = _heap[index];
        while (index > 0)
        {
            int parent = (index - 1) / 2;
            IDeadlineOwner above = _heap[parent];
            if (above.DeadlineDue <= item.DeadlineDue)
            {
                break;
            }

            _heap[index] = above;
            above.DeadlineIndex = index;
            index = parent;
        }

        _heap[index] = item;
        item.DeadlineIndex = index;
    }

    private void SiftDown(int index)
    {
        IDeadlineOwner item = _heap[index];
        while (true)
        {
            int child = (2 * index) + 1;
            if (child >= _count)
            {
                break;
            }

            if (child + 1 < _count && _heap[child + 1].DeadlineDue < _heap[child].DeadlineDue)
            {
                child++;
            }

            if (item.DeadlineDue <= _heap[child].DeadlineDue)
            {
                break;
            }

            _heap[index] = _heap[child];
            _heap[index].DeadlineIndex = index;
            index = child;
        }

        _heap[index] = item;
        item.DeadlineIndex = index;
    }
}

/// <summary>What a <see cref="DeadlineQueue"/> keeps: the owner stores its own place in the heap, so removal needs no search
/// and no allocation. Both properties are read and written only under the queue's lock (the index also racily outside it,
/// as a hint).</summary>
internal interface IDeadlineOwner
{
    /// <summary>The owner's index in the heap; -1 when it has no deadline.</summary>
    int DeadlineIndex { get; set; }

    /// <summary>The due time, a timestamp of the queue's time provider.</summary>
    long DeadlineDue { get; set; }

    /// <summary>What the deadline is for; handed back to <see cref="OnDeadline"/>.</summary>
    DeadlinePurpose DeadlinePurpose { get; set; }

    /// <summary>The deadline came due; called on the queue's waiter thread (or the time provider's timer callback), outside
    /// the queue's lock, once per due entry. It must not block: every later deadline waits behind it.</summary>
    void OnDeadline(DeadlinePurpose purpose);
}

/// <summary>What a connection's deadline is for (each connection has at most one at a time).</summary>
internal enum DeadlinePurpose : byte
{
    /// <summary>Not set (a test owner, or none).</summary>
    None,

    /// <summary>The CLOSE_WAIT guard: an inactivity bound after the peer's FIN, and on Linux the check for a later reset.</summary>
    CloseWaitGuard,

    /// <summary>The drain's time bounds (total and idle).</summary>
    DrainBound,

    /// <summary>The idle bound before the peer's FIN (IdleTimeout); after it the CLOSE_WAIT guard checks both.</summary>
    IdleBound,
}
