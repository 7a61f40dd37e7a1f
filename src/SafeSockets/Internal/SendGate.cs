namespace SafeSockets.Internal;

/// <summary>Counts sends in flight and lets a half-close or a close wait until every earlier send is handed to the kernel.</summary>
/// <remarks>
/// <para>The gate is closed while at least one closer holds it: each pending <c>ShutdownSendAsync</c>, and the one that
/// sent our FIN or began the teardown, which never leaves (closed for good is nothing more than that). A closed gate
/// refuses new sends. Every closer waits for the count of sends in flight to reach zero with its own waiter; a closer
/// that gives up (a cancelled <c>ShutdownSendAsync</c>) leaves, and the gate opens again when no closer is left. So a
/// cancelled half-close sends no FIN and leaves the connection as usable as before, and concurrent half-closes all
/// complete.</para>
/// <para>Entering and leaving take no lock (one interlocked operation each); closers and their waiters live under the
/// lock, which a send touches only when it is the last one out of a closed gate.</para>
/// </remarks>
internal sealed class SendGate
{
    // Bits 0..29: sends in flight; bit 30: the gate is closed.
    private const int ClosedBit = 1 << 30;
    private const int CountMask = ClosedBit - 1;

    private int _word;

    // Under the lock of this object (internal, never handed out): closers holding the gate (one that never leaves keeps it closed for good), and those waiting for zero.
    private int _closers;
    private List<TaskCompletionSource>? _waiters;

    /// <summary>Sends in flight right now.</summary>
    public int InFlight => Volatile.Read(ref _word) & CountMask;

    /// <summary>Closers waiting for the sends in flight; for tests.</summary>
    internal int Waiting
    {
        get
        {
            lock (this)
            {
                return _waiters?.Count ?? 0;
            }
        }
    }

    /// <summary>Whether the gate refuses new sends.</summary>
    public bool IsClosed => (Volatile.Read(ref _word) & ClosedBit) != 0;

    /// <summary>Lets a send through unless the gate is closed.</summary>
    public bool TryEnter()
    {
        int current = Volatile.Read(ref _word);
        while ((current & ClosedBit) == 0)
        {
            int seen = Interlocked.CompareExchange(ref _word, current + 1, current);
            if (seen == current)
            {
                return true;
            }

            current = seen;
        }

        return false;
    }

    /// <summary>Counts a send in flight even though the gate is closed: for a party that held an entry before a closer
    /// came and is handed it back while that closer still holds the gate (the Transport send loop resumed by a cancelled
    /// half-close), so no later closer can miss it.</summary>
    public void EnterWhileClosed() => Interlocked.Increment(ref _word);

    /// <summary>A send is done (handed over, failed or cancelled).</summary>
    public void Exit()
    {
        if (Interlocked.Decrement(ref _word) == ClosedBit)
        {
            ReleaseWaiters();
        }
    }

    /// <summary>Closes the gate for one closer and returns a task that completes once no send is in flight.</summary>
    /// <returns>The wait. A closer that gives up calls <see cref="Leave"/> with it; one that succeeds (our FIN, or the
    /// teardown) never leaves, and the gate stays closed for good.</returns>
    public Task CloseAndWait()
    {
        lock (this)
        {
            _closers++;
            Interlocked.Or(ref _word, ClosedBit);
            if ((Volatile.Read(ref _word) & CountMask) == 0)
            {
                return Task.CompletedTask;
            }

            var waiter = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            (_waiters ??= []).Add(waiter);
            return waiter.Task;
        }
    }

    /// <summary>Closes the gate for good without waiting (our FIN was sent by a path that did not wait: the Transport
    /// output completed; or Abort): a closer that never leaves.</summary>
    public void CloseForGood()
    {
        lock (this)
        {
            _closers++;
            Interlocked.Or(ref _word, ClosedBit);
        }
    }

    /// <summary>A closer gives up (its wait was cancelled, or its half-close failed before the FIN): the gate opens again if
    /// no other closer holds it.</summary>
    /// <param name="wait">The task <see cref="CloseAndWait"/> returned to this closer.</param>
    public void Leave(Task wait)
    {
        lock (this)
        {
            _closers--;
            if (_waiters is { } waiters)
            {
                for (int i = waiters.Count - 1; i >= 0; i--)
                {
                    if (waiters[i].Task == wait)
                    {
                        waiters.RemoveAt(i);
                    }
                }
            }

            if (_closers == 0)
            {
                Interlocked.And(ref _word, ~ClosedBit);
            }
        }
    }

    private void ReleaseWaiters()
    {
        List<TaskCompletionSource>? ready;
        lock (this)
        {
            if ((Volatile.Read(ref _word) & CountMask) != 0 || _waiters is not { Count: > 0 } waiters)
            {
                return;
            }

            ready = [.. waiters];
            waiters.Clear();
        }

        foreach (TaskCompletionSource waiter in ready)
        {
            waiter.TrySetResult();
        }
    }
}
