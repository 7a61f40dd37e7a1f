using System.Threading.Tasks.Sources;

namespace SafeSockets.Internal;

/// <summary>Where a connection's receive loop waits between reads while nobody needs a read pending, and the reasons it
/// wakes: the application asks for bytes (<see cref="Demand"/>), the connection becomes watched (<see cref="Watch"/>:
/// a read pending at all times from then on), or the teardown drains (<see cref="Drain"/>).</summary>
/// <remarks>
/// <para>The protocol (docs/reliability.md, invariant 9): the loop publishes "parked" before it looks at the reasons
/// (<see cref="TryPark"/>); a waker publishes its reason before it looks at the park (<see cref="Wake"/>). Each side
/// uses a full fence, so at least one of them sees the other: a reason that arrives while the loop parks is never lost.
/// Only the waker that takes the park (parked to waking, <see cref="TryHold"/>) completes it (<see cref="Resume"/>), so a
/// park completes exactly once.</para>
/// <para>The loop's continuation runs on the waker's thread (the source does not force asynchrony; for a lazy watch that
/// holds the park across the loop's zero-byte read, on the thread that completes that read): an application
/// that asks for bytes which are already in the kernel gets them before <see cref="Demand"/> returns, without a thread
/// hop. It runs only until the loop parks again or awaits a pending socket read.</para>
/// </remarks>
internal sealed class LoopPark : IValueTaskSource<int>, IThreadPoolWorkItem
{
    private const int Running = 0;
    private const int Parked = 1;
    private const int Waking = 2;

    // The lazy watch's list (ManagedConnection.Watch.cs) links parks, not connections: a released connection clears
    // Owner (and its loop, woken by the release, ends and lets go of its state machine), so the list does not keep a
    // finished connection reachable until the watch's next look. ParksSeen: the park count when it was queued (or
    // last looked at).
    internal LoopPark? NextInList;
    internal int InList;
    internal int ParksSeen = -1;
    internal long ParkedAt;
    internal object? Owner;

    // For tests that need a loop that stays parked (the lazy watch would watch it within 1-3 ms).
    internal bool NoLazyWatch;

    private readonly bool _inDefaultContext;
    private ManualResetValueTaskSourceCore<int> _core;
    private int _state;
    private int _demand;
    // 0: not watched; WatchedForGood: PeerClosed or Transport asked (a read pending until the end); WatchedLazily: the
    // lazy watch found the loop parked for a while (a read pending until the loop hands over bytes the application asked for).
    private int _watched;
    private const int WatchedForGood = 1;
    private const int WatchedLazily = 2;
    private int _draining;
    private int _parks;

    /// <summary>Whether the loop keeps a read pending (for good, or after a lazy watch until it hands over bytes asked for).</summary>
    public bool IsWatched => Volatile.Read(ref _watched) != 0;

    /// <summary>A park whose loop runs in the default execution context whoever wakes it (see <see cref="Resume"/>).</summary>
    public LoopPark()
        : this(inDefaultContext: true)
    {
    }

    /// <summary>A park; <paramref name="inDefaultContext"/> <see langword="false"/> runs the loop in the waker's context and
    /// resumes it from the pool with <c>Task.Run</c> (for schedule exploration, whose engine controls neither execution
    /// contexts nor work items queued to the pool directly).</summary>
    internal LoopPark(bool inDefaultContext) => _inDefaultContext = inDefaultContext;

    /// <summary>Whether the teardown asked the loop to run to its end.</summary>
    public bool IsDraining => Volatile.Read(ref _draining) != 0;

    /// <summary>Whether the loop is parked right now.</summary>
    public bool IsParked => Volatile.Read(ref _state) == Parked;

    /// <summary>How many times the loop parked (the lazy watch compares it between two looks).</summary>
    public int Parks => Volatile.Read(ref _parks);

    /// <summary>Whether the loop, once woken (or not parked), should read at once into a buffer: the application asked,
    /// or the teardown drains. <see langword="false"/> when it reads only because it is watched: it then first waits for
    /// data with a zero-byte read, which holds no buffer.</summary>
    public bool ReadNow => Volatile.Read(ref _demand) != 0 || Volatile.Read(ref _draining) != 0 || !IsWatched;

    /// <summary>The application wants bytes and none are buffered: the loop must read.</summary>
    /// <remarks>Recorded even while the loop is watched: a lazily watched loop stops being watched once it hands bytes
    /// over (<see cref="TryUnwatch"/>), and a demand made just before must still keep it from parking.</remarks>
    public void Demand()
    {
        if (Volatile.Read(ref _watched) == WatchedForGood)
        {
            // A read is pending until the end (or about to be): nothing to ask.
            return;
        }

        Interlocked.Exchange(ref _demand, 1);
        Wake();
    }

    /// <summary>The bytes the loop just read answer any demand so far (the loop calls it before it hands them over).</summary>
    /// <returns>Whether the application had asked for bytes (the loop then ends a lazy watch after handing them over).</returns>
    public bool Satisfied()
    {
        if (Volatile.Read(ref _demand) == 0)
        {
            return false;
        }

        Volatile.Write(ref _demand, 0);
        return true;
    }

    /// <summary>From now on the loop keeps a read pending at all times. A parked loop is woken from the thread pool: the
    /// caller (a property getter, the lazy watch's thread) never runs the loop, or a teardown it may start, itself.</summary>
    /// <returns><see langword="true"/> for the call that made it watched.</returns>
    public bool Watch()
    {
        if (Interlocked.Exchange(ref _watched, WatchedForGood) != 0)
        {
            // Already watched (lazily: now for good; the loop is awake, it does not park while watched).
            return false;
        }

        if (TryHold())
        {
            ResumeOnThreadPool();
        }

        return true;
    }

    /// <summary>The lazy watch found the loop parked for a while: it keeps a read pending until it hands over bytes asked for
    /// (<see cref="TryUnwatch"/>), so the peer's FIN is seen while nobody reads. Woken from the thread pool (see also
    /// <see cref="WatchLazilyAndHold"/>).</summary>
    /// <returns><see langword="true"/> if this call made it watched.</returns>
    public bool WatchLazily()
    {
        if (Interlocked.CompareExchange(ref _watched, WatchedLazily, 0) != 0)
        {
            return false;
        }

        if (TryHold())
        {
            ResumeOnThreadPool();
        }

        return true;
    }

    /// <summary>As <see cref="WatchLazily"/>, but a parked loop is held, not resumed: the caller starts the loop's wait
    /// for data itself (a zero-byte read that then resumes it), so no thread is woken just to start that wait.</summary>
    /// <returns><see langword="true"/> if this call made it watched and took the park: the caller owes it one
    /// <see cref="Resume"/> or <see cref="ResumeOnThreadPool"/>. <see langword="false"/>: already watched, or this call
    /// made it watched but the loop was not parked (it is running, and reads since it is watched).</returns>
    public bool WatchLazilyAndHold() => Interlocked.CompareExchange(ref _watched, WatchedLazily, 0) == 0 && TryHold();

    /// <summary>The loop handed over bytes the application asked for: it reads again, so a lazily watched loop goes back
    /// to reading on demand (the lazy watch watches it again if it stays parked). A watch for good stays. (Bytes nobody
    /// asked for do not end a lazy watch: a forgotten connection's loop keeps reading until the peer's FIN.)</summary>
    public void TryUnwatch()
    {
        if (Volatile.Read(ref _watched) == WatchedLazily)
        {
            Interlocked.CompareExchange(ref _watched, 0, WatchedLazily);
        }
    }

    /// <summary>The teardown took the input (or released the socket): the loop must run to its end.</summary>
    public void Drain()
    {
        Interlocked.Exchange(ref _draining, 1);
        Wake();
    }

    /// <summary>Parks the loop unless a reason to read is already there.</summary>
    /// <returns>The park to await, or <see langword="null"/> if the loop must go on at once.</returns>
    public ValueTask<int>? TryPark()
    {
        if (!MayPark())
        {
            return null;
        }

        _core.Reset();
        ParkedAt = System.Diagnostics.Stopwatch.GetTimestamp();
        Interlocked.Increment(ref _parks);
        Interlocked.Exchange(ref _state, Parked);

        // Looked at after publishing the park: a reason published before it is seen here; one published after it finds
        // the loop parked and wakes it. If a waker got here first, its wake completes the park we return.
        if (!MayPark() && Interlocked.CompareExchange(ref _state, Running, Parked) == Parked)
        {
            return null;
        }

        return new ValueTask<int>(this, _core.Version);
    }

    /// <summary>Parks the loop after its input ended (the peer's FIN), until anyone wakes it: the teardown's drain at the
    /// latest. Only a drain that is already under way keeps it from parking.</summary>
    /// <returns>The park to await, or <see langword="null"/> if the loop must end at once.</returns>
    public ValueTask<int>? TryParkAfterEnd()
    {
        if (IsDraining)
        {
            return null;
        }

        _core.Reset();
        Interlocked.Exchange(ref _state, Parked);
        if (IsDraining && Interlocked.CompareExchange(ref _state, Running, Parked) == Parked)
        {
            return null;
        }

        return new ValueTask<int>(this, _core.Version);
    }

    private bool MayPark() => Volatile.Read(ref _demand) == 0 && Volatile.Read(ref _watched) == 0 && Volatile.Read(ref _draining) == 0;

    /// <summary>Wakes the loop if it is parked; only the caller that unparks it completes the park, and the loop's
    /// continuation runs on that caller's thread (in the default execution context, see <see cref="Resume"/>).</summary>
    private void Wake()
    {
        if (TryHold())
        {
            Resume();
        }
    }

    /// <summary>Takes the park from a parked loop without waking it yet: nobody else can wake it, and it stays suspended
    /// until <see cref="Resume"/> (an abort counts what the kernel holds, then releases the socket, then resumes it).</summary>
    /// <returns><see langword="true"/> if the loop was parked and the caller now owes it one <see cref="Resume"/>.</returns>
    public bool TryHold() => Interlocked.CompareExchange(ref _state, Waking, Parked) == Parked;

    /// <summary>Whether someone took the park (<see cref="TryHold"/>) and the loop has not been resumed yet: it has not
    /// run since it parked.</summary>
    public bool IsWaking => Volatile.Read(ref _state) == Waking;

    /// <summary>Resumes a loop held by <see cref="TryHold"/>, on this thread until it parks again or awaits a pending read.</summary>
    /// <remarks>The loop belongs to no caller: it runs in the default execution context, so the waker's AsyncLocals (an
    /// Activity, a logging scope) neither reach the loop nor stay captured in it for the connection's life. (Its state
    /// machine captures whatever context is current at each await.)</remarks>
    public void Resume()
    {
        Volatile.Write(ref _state, Running);
        if (_inDefaultContext)
        {
            ExecutionContext.Run(DefaultContext.Value, static park => ((LoopPark)park!)._core.SetResult(0), this);
        }
        else
        {
            _core.SetResult(0);
        }
    }

    /// <summary>Resumes a held loop from a thread-pool work item (for wakers that must not run the loop themselves: a
    /// property getter, a lock holder).</summary>
    public void ResumeOnThreadPool()
    {
        if (_inDefaultContext)
        {
            // The park is its own work item: a watch (every pause of a keep-alive connection) queues no allocation.
            ThreadPool.UnsafeQueueUserWorkItem(this, preferLocal: false);
        }
        else
        {
            // Schedule exploration: a task the engine controls.
            _ = Task.Run(Resume);
        }
    }

    /// <summary>The default execution context (no AsyncLocal set), captured once on a thread started without flowing any.</summary>
    private static class DefaultContext
    {
        public static readonly ExecutionContext Value = Capture();

        private static ExecutionContext Capture()
        {
            ExecutionContext? captured = null;
            var thread = new Thread(() => captured = ExecutionContext.Capture());
            thread.UnsafeStart();
            thread.Join();
            return captured!;
        }
    }

    /// <summary>Runs <see cref="Resume"/> as a thread-pool work item (<see cref="ResumeOnThreadPool"/>).</summary>
    void IThreadPoolWorkItem.Execute() => Resume();

    int IValueTaskSource<int>.GetResult(short token) => _core.GetResult(token);

    ValueTaskSourceStatus IValueTaskSource<int>.GetStatus(short token) => _core.GetStatus(token);

    void IValueTaskSource<int>.OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags) =>
        _core.OnCompleted(continuation, state, token, flags);
}
