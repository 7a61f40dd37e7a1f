namespace SafeSockets.Internal;

/// <summary>
/// A listener's bookkeeping of its connections, behind one lock: the accepts in progress, the connections accepted and not
/// yet released, the draining ones oldest first, and when a stop is over. <see cref="ManagedListener"/> owns one; the
/// concurrency tests drive one with plain objects for connections, so that Coyote explores every order of the accept path,
/// the connections' ends and the stop over this same code.
/// </summary>
/// <remarks>
/// The protocol, per connection the listener adopts: <see cref="TryBeginAccept"/> before the accept; then either
/// <see cref="EndAccept"/> (no connection) or exactly one <see cref="Track"/>; and, at any moment after its adoption (even
/// before its <see cref="Track"/>), exactly one <see cref="Completed"/> (its end heard: its slot is free) followed by
/// exactly one <see cref="Published"/> (its <c>Completion</c> has its result). A stop is over
/// (<see cref="AllReleased"/>) once it began and no accept is in progress, nothing is tracked, and every connection heard
/// of has published: whoever awaits the stop finds every connection's <c>Completion</c> done.
/// </remarks>
/// <typeparam name="T">The connection type (compared by reference).</typeparam>
internal sealed class ListenerTracker<T>
    where T : class
{
    private readonly object _sync = new();
    private readonly int _maxConnections;
    private readonly int _maxDraining;
    private readonly TaskCompletionSource _allReleased = new(TaskCreationOptions.RunContinuationsAsynchronously);

    // Accepted and not yet released (handed out or refused). Membership is decided by what the tracker heard (Completed),
    // never by a connection's recorded result: a result is recorded before Completed runs, and a connection in that
    // moment must still hold a stop back.
    private readonly HashSet<T> _live = new(ReferenceEqualityComparer.Instance);

    // Ended (Completed) before Track: Track finds them here and does not add them (they would be kept forever). Almost
    // always empty.
    private readonly HashSet<T> _endedBeforeTracked = new(ReferenceEqualityComparer.Instance);

    // Draining, oldest first, each with its node so that a finished drain leaves the list in O(1).
    private readonly LinkedList<T> _draining = new();
    private readonly Dictionary<T, LinkedListNode<T>> _drainNodes = new(ReferenceEqualityComparer.Instance);

    // An accepted socket not yet tracked must hold a stop back as much as a tracked one.
    private int _acceptsInProgress;

    // Heard of (Completed) and not yet published: the stop is not over while any is.
    private int _unpublished;
    private bool _stopping;
    private volatile bool _acceptingStopped;

    /// <summary>Creates the bookkeeping of one listener.</summary>
    /// <param name="maxConnections">Connections beyond this count are refused by <see cref="Track"/>.</param>
    /// <param name="maxDraining">Draining connections beyond this count are cut, oldest first.</param>
    public ListenerTracker(int maxConnections, int maxDraining)
    {
        _maxConnections = maxConnections;
        _maxDraining = maxDraining;
    }

    /// <summary>Completes once the stop began and every connection is released and published.</summary>
    public Task AllReleased => _allReleased.Task;

    /// <summary>No more accepts (<see cref="StopAccepting"/> or <see cref="BeginStop"/> was called). Read without the lock.</summary>
    public bool AcceptingStopped => _acceptingStopped;

    /// <summary>Runs just before the stop is found over (on the thread that found it), for tests.</summary>
    public Action? BeforeAllReleasedForTest { get; set; }

    /// <summary>Connections accepted and not yet released.</summary>
    public int ActiveCount
    {
        get
        {
            lock (_sync)
            {
                return _live.Count;
            }
        }
    }

    /// <summary>Connections draining, counted against the drain budget.</summary>
    public int DrainingCount
    {
        get
        {
            lock (_sync)
            {
                return _draining.Count;
            }
        }
    }

    /// <summary>Counts an accept about to start, unless accepting stopped.</summary>
    /// <returns><see langword="false"/> if accepting stopped (nothing counted).</returns>
    public bool TryBeginAccept()
    {
        lock (_sync)
        {
            if (_acceptingStopped)
            {
                return false;
            }

            _acceptsInProgress++;
            return true;
        }
    }

    /// <summary>An accept ended without a connection to track (it failed, or its socket could not be adopted).</summary>
    public void EndAccept()
    {
        lock (_sync)
        {
            _acceptsInProgress--;
        }

        CheckAllReleased();
    }

    /// <summary>Ends an accept with its connection: tracks it (unless its end was heard already) and decides whether it is
    /// refused (accepting stopped, or more than the maximum live).</summary>
    /// <param name="connection">The adopted connection.</param>
    /// <param name="live">The live count, this connection included if tracked.</param>
    /// <returns>Whether the connection must be refused (closed at once, never handed out). The caller closes it and then
    /// calls <see cref="CheckAllReleased"/>.</returns>
    public bool Track(T connection, out int live)
    {
        lock (_sync)
        {
            _acceptsInProgress--;
            if (!_endedBeforeTracked.Remove(connection))
            {
                _live.Add(connection);
            }

            live = _live.Count;
            return _acceptingStopped || live > _maxConnections;
        }
    }

    /// <summary>A connection's end was heard: its slot is free at once; the stop still waits for its <see cref="Published"/>.</summary>
    /// <param name="connection">The connection that ended.</param>
    public void Completed(T connection)
    {
        lock (_sync)
        {
            _unpublished++;
            if (!_live.Remove(connection))
            {
                // Not tracked yet: every connection the listener adopts reaches Track once, after this.
                _endedBeforeTracked.Add(connection);
            }

            if (_drainNodes.Remove(connection, out LinkedListNode<T>? node))
            {
                _draining.Remove(node);
            }
        }
    }

    /// <summary>A connection's <c>Completion</c> has its result (after its <see cref="Completed"/>).</summary>
    /// <param name="connection">The connection.</param>
    public void Published(T connection)
    {
        _ = connection;
        lock (_sync)
        {
            _unpublished--;
        }

        CheckAllReleased();
    }

    /// <summary>A connection's drain began: it is counted against the budget, and the oldest drains past it are returned
    /// for the caller to cut short. A connection already counted is ignored.</summary>
    /// <remarks>A connection's one teardown raises this once, before it records the result and before
    /// <see cref="Completed"/> (a review, session 13: the earlier check of a recorded result here was dead, and removed).</remarks>
    /// <param name="connection">The connection whose drain began.</param>
    /// <returns>The drains to cut, oldest first, or <see langword="null"/>.</returns>
    public List<T>? DrainStarted(T connection)
    {
        List<T>? cut = null;
        lock (_sync)
        {
            // Stryker disable once Statement : a defensive check; DrainStarted is raised once per connection, by its one teardown
            if (_drainNodes.ContainsKey(connection))
            {
                return null;
            }

            _drainNodes.Add(connection, _draining.AddLast(connection));
            while (_draining.Count > _maxDraining && _draining.First is { } oldest)
            {
                // Cut drains leave the count here; their completion then finds nothing to remove.
                _draining.RemoveFirst();
                _drainNodes.Remove(oldest.Value);
                // Stryker disable once Assignment : each call adds one connection to a list within the budget, so at most one is cut per call
                (cut ??= []).Add(oldest.Value);
            }
        }

        return cut;
    }

    /// <summary>No more accepts; a socket accepted in a race with this is refused by <see cref="Track"/>.</summary>
    public void StopAccepting()
    {
        lock (_sync)
        {
            _acceptingStopped = true;
        }
    }

    /// <summary>The stop begins (accepting stops too): from now on the tracker can be found released.</summary>
    public void BeginStop()
    {
        lock (_sync)
        {
            _stopping = true;
            _acceptingStopped = true;
        }
    }

    /// <summary>The connections tracked now.</summary>
    /// <returns>A copy.</returns>
    public T[] Snapshot()
    {
        lock (_sync)
        {
            return [.. _live];
        }
    }

    /// <summary>Every count the tracker keeps, read together, for tests.</summary>
    public (int Live, int AcceptsInProgress, int Unpublished, int EndedBeforeTracked, int Draining) CountsForTest
    {
        get
        {
            lock (_sync)
            {
                return (_live.Count, _acceptsInProgress, _unpublished, _endedBeforeTracked.Count, _draining.Count);
            }
        }
    }

    /// <summary>Completes <see cref="AllReleased"/> if the stop began and nothing holds it back any more.</summary>
    public void CheckAllReleased()
    {
        lock (_sync)
        {
            if (!_stopping || _live.Count != 0 || _acceptsInProgress != 0 || _unpublished != 0)
            {
                return;
            }
        }

        BeforeAllReleasedForTest?.Invoke();
        _allReleased.TrySetResult();
    }
}
