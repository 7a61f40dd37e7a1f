using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using System.Threading.Tasks.Sources;
using Microsoft.Extensions.ObjectPool;

namespace SafeSockets.Internal;

/// <summary>A reusable receive or send operation: a <see cref="SocketAsyncEventArgs"/> awaited as a <see cref="ValueTask{Int32}"/>,
/// rented from a bounded pool for the life of one connection's loop or one send.</summary>
/// <remarks>
/// <para><see cref="Socket.ReceiveAsync(Memory{byte}, SocketFlags, CancellationToken)"/> and its send twin cache such an object
/// per socket, so every new socket allocates two (about 300 bytes each, with their callbacks). Renting ours from a pool
/// makes them free for a connection that only lives one request, which is the case the teardown benchmarks measure.</para>
/// <para>Rules that keep a pooled instance from ever serving two connections at once: only the owner that rented it
/// starts operations on it, one at a time; it is returned only after its last operation completed (its result was
/// read); an instance whose operation failed in an unexpected way is dropped, not returned.</para>
/// </remarks>
internal sealed class SocketIoArgs : SocketAsyncEventArgs, IValueTaskSource<int>
{
    // Enough for a few hundred connections at once; beyond that instances are simply collected.
    internal const int MaximumRetained = 512;
    // A disposable pool: an instance that does not fit is disposed, not left to its finalizer.
    private static readonly ObjectPool<SocketIoArgs> s_pool = new DefaultObjectPoolProvider { MaximumRetained = MaximumRetained }.Create(new Policy());

    // The last instance a thread returned, rented again first by that thread: most rents and returns then touch no
    // shared state (the pool's are two or three interlocked operations on lines both cores write; the hot-path profile
    // at 8 connections in flight put Rent and Return at 1.4 us per cycle, the library's most costly methods). An
    // instance here counts as returned: it is in the pool in all but place. At most one per thread that ever returned one.
    [ThreadStatic]
    private static SocketIoArgs? t_spare;

    private static readonly StripedCounters s_rented = new(1);
    private static long s_created;
    private static long s_misuses;

    private ManualResetValueTaskSourceCore<int> _source;

    // 1 while rented. Checked on every rent and return, so a bug that would hand one instance to two owners is
    // counted (and the instance kept out of the pool) instead of corrupting another connection's I/O.
    private int _rented;

    private SocketIoArgs()
        // Stryker disable once Boolean : equivalent (the suite passes with false): operations start on the loop's and the watch's threads, which run in the default context (LoopPark.Resume), async methods restore their own, and the runtime drops a captured context when an operation completes
        : base(unsafeSuppressExecutionContextFlow: true)
    {
    }

    /// <summary>How many instances were ever created, rented, and caught being rented or returned twice; for tests.</summary>
    internal static (long Created, long Rented, long Misuses) Counters =>
        (Interlocked.Read(ref s_created), s_rented.Sum(0), Interlocked.Read(ref s_misuses));

    public static SocketIoArgs Rent()
    {
        while (true)
        {
            SocketIoArgs? args = t_spare;
            if (args is not null)
            {
                t_spare = null;
            }
            else
            {
                args = s_pool.Get();
            }

            s_rented.Add(0, 1);
            if (Interlocked.Exchange(ref args._rented, 1) == 0)
            {
                return args;
            }

            // Still rented by someone else: never share it; take another.
            Interlocked.Increment(ref s_misuses);
        }
    }

    public static void Return(SocketIoArgs args)
    {
        if (Interlocked.Exchange(ref args._rented, 0) == 0)
        {
            // Returned twice: the pool must not hold it twice.
            Interlocked.Increment(ref s_misuses);
            return;
        }

        if (t_spare is null)
        {
            t_spare = args;
        }
        else
        {
            s_pool.Return(args);
        }
    }

    /// <summary>For tests: marks this instance rented, as a bug that kept using it after its return would.</summary>
    internal void MarkRentedForTest() => Volatile.Write(ref _rented, 1);

    /// <summary>For an instance whose last operation ended in an unknown way: never reused; disposed (the runtime defers
    /// that until an operation still in progress completes).</summary>
    public static void Drop(SocketIoArgs args) => args.Dispose();

    /// <summary>The version of the operation in progress (the token of the <see cref="ValueTask{Int32}"/> it returned),
    /// for a caller that registers its continuation on this object directly.</summary>
    public short Version => _source.Version;

    /// <summary>Receives into <paramref name="buffer"/>; 0 means the peer's FIN (or our own shutdown of the receive side).</summary>
    /// <exception cref="SocketException">The receive failed; <see cref="SocketException.SocketErrorCode"/> says why.</exception>
    public ValueTask<int> ReceiveAsync(Socket socket, Memory<byte> buffer)
    {
        _source.Reset();
        SetBuffer(buffer);
        return socket.ReceiveAsync(this) ? new ValueTask<int>(this, _source.Version) : CompletedSynchronously();
    }

    /// <summary>Sends <paramref name="buffer"/> (a stream socket sends it whole unless the send fails).</summary>
    /// <exception cref="SocketException">The send failed; <see cref="SocketException.SocketErrorCode"/> says why.</exception>
    public ValueTask<int> SendAsync(Socket socket, ReadOnlyMemory<byte> buffer)
    {
        _source.Reset();
        SetBuffer(MemoryMarshal.AsMemory(buffer));
        return socket.SendAsync(this) ? new ValueTask<int>(this, _source.Version) : CompletedSynchronously();
    }

    /// <summary>Connects <paramref name="socket"/> to <paramref name="remoteEndPoint"/> (an IP end point).</summary>
    /// <exception cref="SocketException">The connect failed; <see cref="SocketException.SocketErrorCode"/> says why.</exception>
    public ValueTask<int> ConnectAsync(Socket socket, EndPoint remoteEndPoint)
    {
        _source.Reset();
        RemoteEndPoint = remoteEndPoint;
        return socket.ConnectAsync(this) ? new ValueTask<int>(this, _source.Version) : CompletedSynchronously();
    }

    private ValueTask<int> CompletedSynchronously()
    {
        int transferred = BytesTransferred;
        SocketError error = SocketError;
        SetBuffer(Memory<byte>.Empty);
        RemoteEndPoint = null;
        return error == SocketError.Success ? new ValueTask<int>(transferred) : ValueTask.FromException<int>(new SocketException((int)error));
    }

    /// <inheritdoc/>
    protected override void OnCompleted(SocketAsyncEventArgs e)
    {
        if (SocketError == SocketError.Success)
        {
            _source.SetResult(BytesTransferred);
        }
        else
        {
            _source.SetException(new SocketException((int)SocketError));
        }
    }

    int IValueTaskSource<int>.GetResult(short token)
    {
        // The operation is over: drop the reference to the caller's buffer (and end point) before anyone can rent this
        // instance again.
        SetBuffer(Memory<byte>.Empty);
        RemoteEndPoint = null;
        return _source.GetResult(token);
    }

    ValueTaskSourceStatus IValueTaskSource<int>.GetStatus(short token) => _source.GetStatus(token);

    void IValueTaskSource<int>.OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags) =>
        _source.OnCompleted(continuation, state, token, flags);

    private sealed class Policy : PooledObjectPolicy<SocketIoArgs>
    {
        public override SocketIoArgs Create()
        {
            Interlocked.Increment(ref s_created);
            return new SocketIoArgs();
        }

        public override bool Return(SocketIoArgs obj) => true;
    }
}
