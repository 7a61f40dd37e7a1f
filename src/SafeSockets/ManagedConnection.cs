using System.IO.Pipelines;
using System.Net;
using System.Net.Sockets;
using System.Runtime.CompilerServices;
using SafeSockets.Diagnostics;
using SafeSockets.Internal;

namespace SafeSockets;

/// <summary>A connected TCP socket whose whole lifecycle is owned: half-close, drain-before-close,
/// peer-FIN detection with a CLOSE_WAIT guard, and an explicit abort.</summary>
/// <remarks>
/// <para>The peer's FIN is noticed even when the application is not reading: <see cref="PeerClosed"/> fires,
/// <see cref="State"/> becomes <see cref="ConnectionState.PeerShutdown"/>, and if the application then does nothing with
/// the connection for <see cref="ManagedConnectionOptions.CloseWaitTimeout"/> the connection closes itself. No socket is
/// left in CLOSE_WAIT. A receive loop reads the socket: when the application reads (on the application's own thread, so
/// bytes already received cost no thread hop), and at all times once the connection is watched: from the first use of
/// <see cref="PeerClosed"/> or <see cref="Transport"/>, or once the application has not read for 1-3 ms. So a
/// connection that is held or forgotten sees the peer's FIN at most about 3 ms after its last read (at once if
/// <see cref="PeerClosed"/> was asked for).</para>
/// <para><see cref="CloseAsync"/> and <see cref="DisposeAsync"/> never send RST over unread data within the
/// drain bounds; only <see cref="Abort"/> resets on purpose.</para>
/// <para>Thread safety: one <see cref="ReceiveAsync"/> at a time; <see cref="SendAsync"/> calls may overlap
/// and are sent one after another; <see cref="CloseAsync"/>, <see cref="Abort"/> and
/// <see cref="DisposeAsync"/> may be called from any thread at any time.</para>
/// </remarks>
public sealed partial class ManagedConnection : IAsyncDisposable, IDeadlineOwner
{
    private static readonly PipeOptions s_defaultInputPipeOptions = CreateInputPipeOptions(ManagedConnectionOptions.DefaultBufferSize);
    internal static readonly PipeOptions DefaultOutputPipeOptions = CreateOutputPipeOptions(ManagedConnectionOptions.DefaultBufferSize);
    private static readonly InputPipePool s_inputPipePool = new(s_defaultInputPipeOptions);

    private readonly Socket _socket;
    private readonly ConnectionSettings _settings;

    // When the connection was created, for safesockets.connection.duration.
    private readonly long _openedTimestamp;

    /// <summary>When the connection was made, on its time provider's clock; for tests.</summary>
    internal long OpenedTimestampForTest => _openedTimestamp;

    // Phase, teardown reason, result and owners: the one place the lifecycle lives (Internal/ConnectionLifecycle.cs).
    private readonly ConnectionLifecycle _lifecycle = new();

    // Sends in flight, and the half-closes and close that wait for them (Internal/SendGate.cs).
    private readonly SendGate _sendGate = new();

    // Which I/O surface is in use and who holds the input's reader: see the Io* constants. Not lifecycle state.
    private int _io;

    // The Transport send loop is in a socket send (the CLOSE_WAIT guard's view of progress; the loop holds a gate entry
    // for its whole life, so the gate's count cannot say it).
    private bool _transportSending;

    // What most connections never need (PeerClosed's source, Transport, the local end point...) lives in one object made
    // on first use, so a connection that is only opened, used and closed stays small.
    private Extras? _extras;

    private ManagedConnection(Socket socket, ConnectionSettings settings, EndPoint? remoteEndPoint, bool applyKeepAlive = true)
    {
        _socket = socket;
        _settings = settings;
        _park = new LoopPark { Owner = this };

        // An accepted socket already holds its remote end point; ConnectAsync passes the one it connected to. Either way
        // keeping it costs nothing, whereas asking the socket after a connect means getpeername and three allocations.
        RemoteEndPoint = Unmapped(remoteEndPoint ?? socket.RemoteEndPoint);

        _inputPooled = settings.MaxInputBufferSize == ManagedConnectionOptions.DefaultBufferSize;
        _input = _inputPooled ? s_inputPipePool.Rent() : new Pipe(CreateInputPipeOptions(settings.MaxInputBufferSize));
        _openedTimestamp = settings.TimeProvider.GetTimestamp();
        Metrics.ConnectionOpened();
        settings.Instruments.Opened.Add(1, MetricTags.Common);
        if (!s_stopDrainWithShutdown)
        {
            GetExtras().ReceiveCts = new CancellationTokenSource();
        }

        if (settings.IdleTimeoutTicks != 0)
        {
            // The idle bound: one deadline, moved on when it comes due (bytes only write a timestamp).
            long now = settings.TimeProvider.GetTimestamp();
            _lastIo = now;
            settings.Deadlines.Schedule(this, now + settings.IdleTimeoutTicks, DeadlinePurpose.IdleBound);
        }

        // Consumed exactly once, by the teardown (which checks IsCompleted just before its single await); after that the
        // pooled box may serve another connection, so nothing else may look at it. Abort never awaits it.
        // Started without the creator's execution context: the loop belongs to no caller (its AsyncLocals, an Activity,
        // must not follow it), and the readers it resumes run in their own contexts.
        bool restoreFlow = !ExecutionContext.IsFlowSuppressed();
        if (restoreFlow)
        {
            ExecutionContext.SuppressFlow();
        }

        try
        {
#pragma warning disable CA2012
            _receiveLoop = ReceiveLoopAsync();
#pragma warning restore CA2012
            Volatile.Write(ref _receiveLoopStored, true);

            if (applyKeepAlive && settings.KeepAliveTimeSeconds != 0 && socket.ProtocolType == ProtocolType.Tcp)
            {
                // Set by the lazy watch's thread 2-4 ms from now, if the connection still lives (ManagedConnection.Watch.cs).
                // Last: a constructor that throws before here leaves nothing of it on the list (Adopt's caller keeps its socket).
                QueueKeepAlive();
            }
        }
        finally
        {
            if (restoreFlow)
            {
                ExecutionContext.RestoreFlow();
            }
        }
    }

    /// <summary>Connects to <paramref name="remoteEndPoint"/> over TCP and returns the managed connection.</summary>
    /// <param name="remoteEndPoint">An <see cref="IPEndPoint"/>, a <see cref="DnsEndPoint"/> (its addresses are tried in order),
    /// or a <see cref="UnixDomainSocketEndPoint"/> (a stream Unix socket: no <c>NoDelay</c>, keep-alive or <c>TCP_INFO</c>).</param>
    /// <param name="options">Teardown bounds; <see langword="null"/> for the documented defaults.</param>
    /// <param name="cancellationToken">Cancels the connect; the socket is released.</param>
    /// <returns>The connected connection, with <c>NoDelay</c> set.</returns>
    /// <exception cref="SocketException">The connect failed; no descriptor is left behind.</exception>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    public static async ValueTask<ManagedConnection> ConnectAsync(EndPoint remoteEndPoint, ManagedConnectionOptions? options = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(remoteEndPoint);
        cancellationToken.ThrowIfCancellationRequested();
        if (remoteEndPoint is not IPEndPoint and not DnsEndPoint and not UnixDomainSocketEndPoint)
        {
            throw new ArgumentException($"Only IPEndPoint, DnsEndPoint (TCP) and UnixDomainSocketEndPoint (stream) are supported; got {remoteEndPoint.GetType().Name}.", nameof(remoteEndPoint));
        }

        bool unix = remoteEndPoint is UnixDomainSocketEndPoint;
        Socket socket = unix
            ? new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified)
            : remoteEndPoint.AddressFamily == AddressFamily.Unspecified
                ? new Socket(SocketType.Stream, ProtocolType.Tcp)
                : new Socket(remoteEndPoint.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        SocketIoArgs? args = null;
        try
        {
            if (!unix)
            {
                socket.NoDelay = true;
            }

            if (remoteEndPoint is IPEndPoint)
            {
                // A pooled operation instead of the one the socket would make and keep for its whole life (about 300 bytes
                // per connection). The token cancels it through Socket.CancelConnectAsync; the registration is gone (its
                // callback finished) before the operation object can serve anyone else.
                // The operation starts before the registration: CancelConnectAsync acts only on a connect in progress, and
                // the token is checked again afterwards, so a cancel at any moment is seen (a connect that won the race is
                // not handed out: its socket may have been closed by the cancel).
                args = SocketIoArgs.Rent();
                ValueTask<int> connecting = args.ConnectAsync(socket, remoteEndPoint);
                using (cancellationToken.UnsafeRegister(static a => Socket.CancelConnectAsync((SocketAsyncEventArgs)a!), args))
                {
                    await connecting.ConfigureAwait(false);
                }

                cancellationToken.ThrowIfCancellationRequested();
                SocketIoArgs.Return(args);
                args = null;
            }
            else
            {
                await socket.ConnectAsync(remoteEndPoint, cancellationToken).ConfigureAwait(false);
            }

            return new ManagedConnection(socket, (options ?? ManagedConnectionOptions.Default).Settings, remoteEndPoint as IPEndPoint);
        }
        catch (Exception ex) when (cancellationToken.IsCancellationRequested && ex is not OperationCanceledException)
        {
            // Cancelled (the connect failed because the cancel closed the socket): the operation object is not reused.
            if (args is not null)
            {
                SocketIoArgs.Drop(args);
            }

            socket.Dispose();
            throw new OperationCanceledException(cancellationToken);
        }
        catch (SocketException) when (args is not null)
        {
            // A completed connect's error: the operation object can serve again.
            SocketIoArgs.Return(args);
            socket.Dispose();
            throw;
        }
        catch
        {
            if (args is not null)
            {
                SocketIoArgs.Drop(args);
            }

            socket.Dispose();
            throw;
        }
    }

    /// <summary>Takes ownership of an already connected TCP socket.</summary>
    /// <param name="connectedSocket">A connected stream socket; from now on only the connection may use or dispose it.</param>
    /// <param name="options">Teardown bounds; <see langword="null"/> for the documented defaults.</param>
    /// <returns>The managed connection.</returns>
    /// <remarks>If the socket is rejected (an exception is thrown) ownership is not taken: the caller still owns it.
    /// <c>NoDelay</c> is left as it is; TCP keep-alive is set as the options say (<see cref="ManagedConnectionOptions.KeepAliveTime"/>;
    /// <see cref="Timeout.InfiniteTimeSpan"/> leaves the socket's own setting alone), a few milliseconds after the adoption
    /// (see <see cref="ManagedConnectionOptions.KeepAliveTime"/>).</remarks>
    /// <exception cref="ArgumentNullException"><paramref name="connectedSocket"/> is null.</exception>
    /// <exception cref="ObjectDisposedException">The socket is already disposed.</exception>
    /// <exception cref="ArgumentException">The socket is not a TCP stream socket, is listening, or is not connected.</exception>
    public static ManagedConnection Adopt(Socket connectedSocket, ManagedConnectionOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(connectedSocket);
        ObjectDisposedException.ThrowIf(connectedSocket.SafeHandle.IsClosed || connectedSocket.SafeHandle.IsInvalid, connectedSocket);
        if (connectedSocket.SocketType != SocketType.Stream || !IsSupportedStream(connectedSocket))
        {
            throw new ArgumentException(
                $"The socket must be a TCP stream socket or a Unix domain stream socket; it is {connectedSocket.AddressFamily}/{connectedSocket.SocketType}/{connectedSocket.ProtocolType}.",
                nameof(connectedSocket));
        }

        if (IsListening(connectedSocket))
        {
            throw new ArgumentException("The socket is a listening socket; pass a socket returned by Accept or connected with Connect.", nameof(connectedSocket));
        }

        if (!connectedSocket.Connected)
        {
            throw new ArgumentException("The socket is not connected (or its send side was already shut down); connect it before adopting it.", nameof(connectedSocket));
        }

        return new ManagedConnection(connectedSocket, (options ?? ManagedConnectionOptions.Default).Settings, null);
    }

    /// <summary>Adopt for a listener: its callbacks are in place before the receive loop can finish the connection.</summary>
    /// <param name="accepted">The accepted socket.</param>
    /// <param name="listenerSettings">The listener's connection settings, with its callbacks.</param>
    /// <param name="applyKeepAlive">Whether to set keep-alive here (not where the socket inherited it from the listener).</param>
    internal static ManagedConnection AdoptTracked(Socket accepted, ConnectionSettings listenerSettings, bool applyKeepAlive) =>
        new(accepted, listenerSettings, null, applyKeepAlive);

    /// <summary>What the kernel reports about this connection right now (Linux <c>TCP_INFO</c>).</summary>
    /// <returns>The kernel's view; <see cref="TcpConnectionInfo.IsAvailable"/> is <see langword="false"/> off Linux or once the socket is released.</returns>
    public TcpConnectionInfo GetKernelInfo() => _lifecycle.IsReleased ? default : TcpConnectionInfo.Read(_socket);

    /// <summary>Where the connection is in its lifecycle; see <see cref="ConnectionState"/>.</summary>
    public ConnectionState State => _lifecycle.State;

    /// <summary>The local end point. Read on first use and kept: read it before the close if you need it afterwards
    /// (after the socket is released a first read returns <see langword="null"/>).</summary>
    public EndPoint? LocalEndPoint
    {
        get
        {
            Extras? extras = Volatile.Read(ref _extras);
            if (extras?.LocalEndPoint is { } known)
            {
                return known;
            }

            if (_lifecycle.IsReleased)
            {
                return null;
            }

            try
            {
                EndPoint? local = Unmapped(_socket.LocalEndPoint);
                GetExtras().LocalEndPoint = local;
                return local;
            }
            catch (ObjectDisposedException)
            {
                return null;
            }
        }
    }

    /// <summary>The remote end point, captured when the connection was created (still available after close). An IPv4
    /// client of a dual-mode (<see cref="IPAddress.IPv6Any"/>) listener is reported as an IPv4 end point, not as ::ffff:a.b.c.d.</summary>
    public EndPoint? RemoteEndPoint { get; }

    /// <summary>Completes when the socket has been released, with the result of the close that released it,
    /// whoever started it (the application, the CLOSE_WAIT guard, a peer reset or <see cref="Abort"/>).</summary>
    /// <remarks>Never faults. <see cref="CloseAsync"/>'s first caller gets exactly this result.</remarks>
    public Task<CloseResult> Completion => _lifecycle.GetCompletionTask();

    /// <summary>A TCP socket, or a Unix domain socket (its protocol is reported as Unspecified or Unix).</summary>
    private static bool IsSupportedStream(Socket socket) =>
        socket.ProtocolType == ProtocolType.Tcp || socket.AddressFamily == AddressFamily.Unix;

    /// <summary>TCP keep-alive as the options say (on every connection: connected, adopted or accepted).</summary>
    /// <remarks>TCP_USER_TIMEOUT is deliberately not set: Linux applies it to zero-window probing too, so a live peer that
    /// merely stops reading for that long would be cut off and reported unreachable.</remarks>
    internal static void ApplyKeepAlive(Socket socket, ConnectionSettings settings)
    {
        if (settings.KeepAliveTimeSeconds == 0 || socket.ProtocolType != ProtocolType.Tcp)
        {
            // Off, or a Unix domain socket (no keep-alive there: the peer is on this machine, and its death closes it).
            return;
        }

        try
        {
            socket.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.KeepAlive, true);
            socket.SetSocketOption(SocketOptionLevel.Tcp, SocketOptionName.TcpKeepAliveTime, settings.KeepAliveTimeSeconds);
            socket.SetSocketOption(SocketOptionLevel.Tcp, SocketOptionName.TcpKeepAliveInterval, settings.KeepAliveIntervalSeconds);
            socket.SetSocketOption(SocketOptionLevel.Tcp, SocketOptionName.TcpKeepAliveRetryCount, settings.KeepAliveRetryCount);
        }
        catch (SocketException ex) when (SocketErrors.IsConnectionReset(ex.SocketErrorCode) || ex.SocketErrorCode == SocketError.InvalidArgument)
        {
            // The peer reset already (the socket is dead): the receive loop reports it. Anything else is thrown: the
            // options were validated, so a failure here is something the caller must hear about.
        }
    }

    /// <summary>An IPv4 client of a dual-mode socket appears as an IPv4-mapped IPv6 address (::ffff:a.b.c.d); it is
    /// reported as the IPv4 address it is, so it compares equal to what the client itself sees.</summary>
    private static EndPoint? Unmapped(EndPoint? endPoint) =>
        endPoint is IPEndPoint { Address.IsIPv4MappedToIPv6: true } mapped ? new IPEndPoint(mapped.Address.MapToIPv4(), mapped.Port) : endPoint;

    private static bool IsListening(Socket socket)
    {
        try
        {
            return socket.GetSocketOption(SocketOptionLevel.Socket, SocketOptionName.AcceptConnection) is int value && value != 0;
        }
        catch (SocketException)
        {
            return false;
        }
    }

    /// <summary>The input pipe, for tests that check a pooled pipe is never shared by two live connections.</summary>
    internal object InputPipe => _input;

    /// <summary>The socket, for tests that check its options.</summary>
    internal Socket Socket => _socket;

    /// <summary>The lifecycle, for tests and the listener.</summary>
    internal ConnectionLifecycle Lifecycle => _lifecycle;

    private Extras GetExtras() => Volatile.Read(ref _extras) ?? CreateExtras();

    private Extras CreateExtras()
    {
        var created = new Extras();
        return Interlocked.CompareExchange(ref _extras, created, null) ?? created;
    }

    private bool HasIo(int bit) => (Volatile.Read(ref _io) & bit) != 0;

    /// <summary>Sets <paramref name="bit"/> in <see cref="_io"/>; <see langword="true"/> if this call set it.</summary>
    private bool TrySetIo(int bit) => (Interlocked.Or(ref _io, bit) & bit) == 0;

    // The receive loop writes inline (it is already on a pool thread); the application's reads resume on the thread that
    // completed the loop's read, once the loop's next read is pending (Internal/ReaderHandOff.cs), else on the pool.
    private static PipeOptions CreateInputPipeOptions(int pause) => CreatePipeOptions(pause, reader: ReaderHandOff.Scheduler, writer: PipeScheduler.Inline);

    // The send loop reads inline; the application's flushes resume on the pool.
    internal static PipeOptions CreateOutputPipeOptions(int pause) => CreatePipeOptions(pause, reader: PipeScheduler.Inline, writer: PipeScheduler.ThreadPool);

    // Backpressure: the writer pauses at `pause` buffered bytes and resumes below half of it.
    private static PipeOptions CreatePipeOptions(int pause, PipeScheduler reader, PipeScheduler writer) => new(
        readerScheduler: reader,
        writerScheduler: writer,
        pauseWriterThreshold: pause,
        resumeWriterThreshold: Math.Max(1, pause / 2),
        useSynchronizationContext: false);

    /// <summary>Throws the clear exception for an operation that cannot start once the teardown has begun.</summary>
    private void ThrowIfClosing()
    {
        if (_lifecycle.IsTearingDown)
        {
            ThrowClosed();
        }
    }

    /// <summary>The exception for an operation on a connection whose teardown has begun: the peer's reset, or disposed with its reason.</summary>
    private void ThrowClosed()
    {
        CloseReason reason = _lifecycle.Reason;
        if (reason == CloseReason.PeerReset)
        {
            ThrowHelper.ThrowPeerReset();
        }

        if (reason == CloseReason.PeerUnreachable)
        {
            ThrowHelper.ThrowPeerUnreachable();
        }

        ThrowHelper.ThrowDisposed(ThrowHelper.DisposedReason(reason));
    }

    // The bits of _io: which I/O surface is in use and who holds the input's reader. Lifecycle state is not here.
    private const int IoDirect = 1 << 0;          // ReceiveAsync/SendAsync/GetStream in use
    private const int IoPipe = 1 << 1;            // Transport in use
    private const int IoReadActive = 1 << 2;      // a ReceiveAsync holds the input's reader
    private const int IoInputTaken = 1 << 3;      // the teardown took the input: nobody may read; what arrives is drained
    private const int IoSendArgsRented = 1 << 4;  // a pooled send operation was rented for this connection
    private const int IoPeerClosedFired = 1 << 5; // PeerClosed has been (or is being) fired

    /// <summary>The rarely needed parts of a connection, allocated on first use.</summary>
    private sealed class Extras
    {
        public CancellationTokenSource? PeerClosedCts;
        public ITimer? FinProbe;
        public EndPoint? LocalEndPoint;
        public CancellationTokenSource? ReceiveCts;
        public DuplexPipe? Transport;
        public Pipe? Output;
        // The Transport send loop's pause (under a lock on this object): waiting half-closes, a stop for good, the resume signal.
        public int OutputPauses;
        public bool OutputStopped;
        public TaskCompletionSource<bool>? OutputResume;
        public Exception? LoopFault;

        // Grown reads that found nothing in the kernel and took 4 KiB (InputReadMemory): rare, counted for tests.
        public int SmallReadFallbacks;

        // The CLOSE_WAIT guard's view of a send in flight: the kernel's bytes_acked when it last looked (-1: not yet).
        public long GuardAckedBytes = -1;
    }
}
