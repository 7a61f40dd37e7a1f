using System.IO.Pipelines;
using System.Runtime.CompilerServices;

namespace SafeSockets.Internal;

/// <summary>How bytes the receive loop puts in the input pipe reach a waiting reader without a second thread-pool hop,
/// and without the reader's code ever running where it could hold up the loop.</summary>
/// <remarks>
/// <para>The receive loop writes to the input pipe from the thread that completed the socket read. With
/// <see cref="PipeScheduler.ThreadPool"/> the waiting reader (a <c>ReceiveAsync</c>, or <c>Transport.Input</c>) then
/// resumes in a second work item: two hops per read where a raw socket takes one (measured: 10 work items per
/// connect/exchange/close cycle against 3.7 for raw sockets; benchmarks/README.md, "Hot path").</para>
/// <para>Running the reader inline inside the loop's flush would save the hop but put application code on the loop's
/// stack: a handler that blocked its thread (sync over async, a long computation) would stop FIN detection, and one
/// that waited synchronously for the connection's own close would deadlock, since the drain needs the loop. So the
/// loop captures the reader's continuation during its flush (<see cref="Scheduler"/>), starts its next socket read
/// first, and runs the captured continuation only once that read's continuation is registered
/// (<see cref="Awaitable"/>): from then on the loop goes on without this thread, on whichever thread completes its
/// read, exactly as it would if the reader ran elsewhere. If the next read completed at once (more bytes were already
/// there), the continuation is queued to the pool instead, as before.</para>
/// </remarks>
internal static class ReaderHandOff
{
    // The capture slot of the loop flushing on this thread: armed only for the length of one FlushAsync or Complete call.
    [ThreadStatic]
    private static bool t_armed;

    [ThreadStatic]
    private static Action<object?>? t_action;

    [ThreadStatic]
    private static object? t_state;

    /// <summary>The input pipe's reader scheduler: captures the reader's continuation while this thread's loop flushes,
    /// else queues it to the thread pool (a <c>CancelPendingRead</c> from the teardown, for instance).</summary>
    public static PipeScheduler Scheduler { get; } = new CapturingScheduler();

    /// <summary>Arms the capture for the current thread (call right before the loop's FlushAsync).</summary>
    public static void Arm() => t_armed = true;

    /// <summary>Disarms the capture and returns what it caught (nothing if no reader was waiting).</summary>
    public static Continuation Disarm()
    {
        t_armed = false;
        Action<object?>? action = t_action;
        if (action is null)
        {
            return default;
        }

        var caught = new Continuation(action, t_state);
        t_action = null;
        t_state = null;
        return caught;
    }

    /// <summary>A reader continuation caught during a flush; it must be run or queued exactly once.</summary>
    internal readonly struct Continuation(Action<object?> action, object? state)
    {
        public bool IsEmpty => action is null;

        /// <summary>Queues it to the thread pool, to the current worker's local queue (the loop's thread is about to go
        /// on, and an idle worker can still steal it).</summary>
        public void Queue() => ThreadPool.UnsafeQueueUserWorkItem(action, state, preferLocal: true);

        /// <summary>Runs it on this thread. Pipe continuations restore their own execution context and never throw (an
        /// async method's continuation captures its exceptions); a custom awaiter's callback that throws is reported.</summary>
        public void Run(object owner, Action<object, Exception> onError)
        {
            try
            {
                action(state);
            }
#pragma warning disable CA1031 // An exception here belongs to no operation of ours: reported, never thrown into the loop.
            catch (Exception ex)
#pragma warning restore CA1031
            {
                onError(owner, ex);
            }
        }
    }

    /// <summary>What the loop awaits next (a socket read, or its park), with the reader continuation it caught: run once
    /// the loop's continuation is registered if the operation is still pending, else queued to the pool.</summary>
    /// <param name="operation">The loop's next operation.</param>
    /// <param name="caught">What the loop caught (the caller forgets it: it is run or queued exactly once from here).</param>
    /// <param name="owner">The connection, for error reports.</param>
    /// <param name="onError">Reports an exception a caught continuation threw.</param>
    /// <returns>The awaitable: the operation itself when nothing is to be handed over.</returns>
    public static Awaitable Then(ValueTask<int> operation, Continuation caught, object owner, Action<object, Exception> onError)
    {
        if (!caught.IsEmpty && operation.IsCompleted)
        {
            caught.Queue();
            caught = default;
        }

        return new Awaitable(operation, caught, owner, onError);
    }

    /// <summary>Awaits the loop's next operation and, once the loop's continuation is registered on it, runs the caught
    /// reader continuation on this thread (see the type's remarks); with nothing caught, it is a plain await.</summary>
    internal readonly struct Awaitable(ValueTask<int> read, Continuation caught, object owner, Action<object, Exception> onError) : ICriticalNotifyCompletion
    {
        private readonly ConfiguredValueTaskAwaitable<int>.ConfiguredValueTaskAwaiter _read = read.ConfigureAwait(false).GetAwaiter();

        public Awaitable GetAwaiter() => this;

        // With a continuation to hand over it always suspends, so that continuation always runs; an operation that
        // completed meanwhile resumes the loop through the pool, which is merely one hop more.
        public bool IsCompleted => caught.IsEmpty && _read.IsCompleted;

        public int GetResult() => _read.GetResult();

        public void OnCompleted(Action continuation) => throw new NotSupportedException();

        public void UnsafeOnCompleted(Action continuation)
        {
            _read.UnsafeOnCompleted(continuation);
            if (caught.IsEmpty)
            {
                return;
            }

            // The loop's state machine may already be running on another thread (its read completed): nothing of the
            // loop is touched from here on. Only a pool thread runs the reader: with
            // DOTNET_SYSTEM_NET_SOCKETS_INLINE_COMPLETIONS=1 the loop runs on the runtime's socket event thread itself,
            // and a reader that blocked there would stop every connection that thread serves.
            // (Unless the application opted in: ManagedConnectionOptions.UnsafePreferInlineScheduling.)
            if (Thread.CurrentThread.IsThreadPoolThread || owner is ManagedConnection { PreferInlineScheduling: true })
            {
                caught.Run(owner, onError);
            }
            else
            {
                caught.Queue();
            }
        }
    }

    private sealed class CapturingScheduler : PipeScheduler
    {
        public override void Schedule(Action<object?> action, object? state)
        {
            if (t_armed && t_action is null)
            {
                t_action = action;
                t_state = state;
                return;
            }

            System.Threading.ThreadPool.UnsafeQueueUserWorkItem(action, state, preferLocal: false);
        }
    }
}
