using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.Logging;
using SafeSockets.Diagnostics;
using SafeSockets.Internal;

namespace SafeSockets;

/// <summary>A TCP listener that hands out <see cref="ManagedConnection"/>s, tracks each until it is released, and stops gracefully.</summary>
/// <remarks>
/// <para><see cref="StopAsync"/> stops accepting, closes every live connection gracefully (FIN, drain) and aborts only those
/// still open when the grace period ends. A draining budget (<see cref="ManagedListenerOptions.MaxDrainingConnections"/>)
/// cuts the oldest drains short under pressure.</para>
/// <para><see cref="StopAccepting"/> does the first step alone (no more accepts, the connections left to their owners), for
/// a server that lets its handlers finish before <see cref="StopAsync"/> closes the rest.</para>
/// <para>Thread safety: <see cref="AcceptAsync"/> may be called concurrently; <see cref="StopAccepting"/>,
/// <see cref="StopAsync"/> and <see cref="DisposeAsync"/> may be called from any thread, any number of times.</para>
/// </remarks>
public sealed class ManagedListener : IAsyncDisposable
{
    private readonly Socket _socket;
    private readonly int _maxConnections;
    private readonly int _maxDraining;
    private readonly ILogger _logger;
    private readonly TimeProvider _timeProvider;
    private readonly ConnectionSettings _connectionSettings;

    // Which connections hold the listener (and its stop) back, behind one lock: Internal/ListenerTracker.cs.
    private readonly ListenerTracker<ManagedConnection> _tracker;

    // The grace period is over (or was cancelled): a connection tracked from now on is aborted, not closed gracefully.
    private volatile bool _abortStragglers;
    private Task? _stopTask;

    // CloseListeningSocket ran (under _closeLock, held until the socket is closed).
    private readonly object _closeLock = new();
    private bool _listeningClosed;

    // Whether an accepted TCP socket starts with the listening socket's NoDelay and keep-alive settings (Linux: the
    // kernel clones them). Elsewhere each accepted socket is set on its own.
    private static readonly bool s_acceptedInheritOptions = OperatingSystem.IsLinux();

    private ManagedListener(Socket socket, ManagedListenerOptions options)
    {
        _socket = socket;
        _maxConnections = options.MaxConnections;
        _maxDraining = options.MaxDrainingConnections;
        _tracker = new ListenerTracker<ManagedConnection>(options.MaxConnections, options.MaxDrainingConnections);
        _logger = ContainedLogger.Wrap(options.Connection.Logger);
        _timeProvider = options.Connection.TimeProvider;
        LocalEndPoint = socket.LocalEndPoint!;
        // A snapshot: later changes to the options object do not reach this listener's connections.
        _connectionSettings = options.Connection.Settings.WithCallbacks(OnConnectionCompleted, OnConnectionPublished, OnDrainStarted, LocalEndPoint);
    }

    /// <summary>Binds to <paramref name="localEndPoint"/> and starts listening.</summary>
    /// <param name="localEndPoint">An <see cref="IPEndPoint"/>; port 0 picks a free port (read it from <see cref="LocalEndPoint"/>).
    /// <see cref="IPAddress.IPv6Any"/> listens in dual mode: IPv6 and IPv4 clients. A <see cref="UnixDomainSocketEndPoint"/>
    /// listens on a Unix socket; the stop removes the socket file, and an existing file at the path is never deleted.</param>
    /// <param name="options">Listener and connection settings; <see langword="null"/> for the documented defaults.</param>
    /// <returns>The listening listener.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="localEndPoint"/> is null.</exception>
    /// <exception cref="ArgumentException"><paramref name="localEndPoint"/> is neither an <see cref="IPEndPoint"/> nor a <see cref="UnixDomainSocketEndPoint"/>.</exception>
    /// <exception cref="SocketException">Binding or listening failed (for example the port is in use); no descriptor is left behind.</exception>
    /// <exception cref="IOException">A Unix socket path exists and nothing listens on it (a stale file): remove it first.</exception>
    public static ManagedListener Start(EndPoint localEndPoint, ManagedListenerOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(localEndPoint);
        if (localEndPoint is UnixDomainSocketEndPoint unix)
        {
            return StartUnix(unix, options ?? new ManagedListenerOptions());
        }

        if (localEndPoint is not IPEndPoint ip)
        {
            throw new ArgumentException(
                $"A listener needs an IPEndPoint (an address to bind, such as IPAddress.Loopback, IPAddress.Any or IPAddress.IPv6Any) or a UnixDomainSocketEndPoint; got {localEndPoint.GetType().Name}. Resolve a host name first.",
                nameof(localEndPoint));
        }

        options ??= new ManagedListenerOptions();
        var socket = new Socket(ip.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        try
        {
            if (ip.Address.Equals(IPAddress.IPv6Any))
            {
                // [::] accepts IPv4 clients too (dual mode, as Kestrel's ListenAnyIP); their addresses are reported as
                // IPv4 (see ManagedConnection.RemoteEndPoint).
                socket.DualMode = true;
            }

            socket.Bind(ip);
            if (s_acceptedInheritOptions)
            {
                // Set once here instead of five setsockopt calls per accepted connection: Linux copies NoDelay and the
                // keep-alive settings of a listening socket into every socket it accepts.
                socket.NoDelay = true;
                ManagedConnection.ApplyKeepAlive(socket, options.Connection.Settings);
            }

            socket.Listen(options.Backlog);
            return new ManagedListener(socket, options);
        }
        catch
        {
            socket.Dispose();
            throw;
        }
    }

    /// <summary>A Unix domain socket listener. It never deletes a file it did not create: if something listens on the
    /// path, the bind fails (<see cref="SocketException"/>, <see cref="SocketError.AddressAlreadyInUse"/>); if a file is
    /// there that nobody listens on (left by a process that ended without removing it, or not a socket at all), an
    /// <see cref="IOException"/> names it so the operator removes it. The stop disposes the socket, and the runtime removes
    /// the file it bound. Abstract names (a leading NUL) have no file.</summary>
    private static ManagedListener StartUnix(UnixDomainSocketEndPoint endPoint, ManagedListenerOptions options)
    {
        string path = endPoint.ToString();
        SocketAddress address = endPoint.Serialize();
        bool abstractName = address.Size <= 2 || address[2] == 0; // Linux's abstract names live in no file system
        if (!abstractName && File.Exists(path) && !SomeoneListensOn(endPoint))
        {
            throw new IOException(
                $"The Unix socket path {path} already exists and nothing listens on it (a stale socket file left by a process that ended without removing it, or another file). Remove it and start again; a listener never deletes a file it did not create.");
        }

        var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            socket.Bind(endPoint);
            socket.Listen(options.Backlog);
            return new ManagedListener(socket, options);
        }
        catch
        {
            socket.Dispose();
            throw;
        }
    }

    /// <summary>Whether something listens on the path: a non-blocking connect (a full backlog must not hang us) that is
    /// refused means nothing does.</summary>
    private static bool SomeoneListensOn(UnixDomainSocketEndPoint endPoint)
    {
        using var probe = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified) { Blocking = false };
        try
        {
            probe.Connect(endPoint);
            return true;
        }
        catch (SocketException ex)
        {
            return ex.SocketErrorCode != SocketError.ConnectionRefused;
        }
    }

    /// <summary>The end point the listener is bound to (with the actual port when 0 was asked for).</summary>
    public EndPoint LocalEndPoint { get; }

    /// <summary>Connections accepted and not yet released (open, closing or draining).</summary>
    public int ActiveConnections
    {
        get
        {
            return _tracker.ActiveCount;
        }
    }

    /// <summary>Connections currently draining (counted against <see cref="ManagedListenerOptions.MaxDrainingConnections"/>).</summary>
    public int DrainingConnections
    {
        get
        {
            return _tracker.DrainingCount;
        }
    }

    /// <summary>Accepts the next connection. Per-connection failures (a peer that reset while in the backlog) are skipped.</summary>
    /// <param name="cancellationToken">Cancels the wait; the listener keeps listening.</param>
    /// <returns>The accepted connection, already tracked by the listener.</returns>
    /// <exception cref="ObjectDisposedException">The listener is stopped.</exception>
    /// <exception cref="OperationCanceledException"><paramref name="cancellationToken"/> was cancelled.</exception>
    public async ValueTask<ManagedConnection> AcceptAsync(CancellationToken cancellationToken = default)
    {
        while (true)
        {
            // Counted before the accept starts, so a StopAsync that runs while the kernel hands us a socket waits for it.
            if (!_tracker.TryBeginAccept())
            {
                throw StoppedException();
            }

            Socket accepted;
            try
            {
                accepted = await _socket.AcceptAsync(cancellationToken).ConfigureAwait(false);
            }
            catch (Exception ex)
            {
                _tracker.EndAccept();
                if (_tracker.AcceptingStopped && ex is SocketException or ObjectDisposedException)
                {
                    ThrowIfStopped();
                }

                if (ex is SocketException socketError && SocketErrors.IsConnectionReset(socketError.SocketErrorCode))
                {
                    Log.AcceptFailed(_logger, LocalEndPoint.ToString(), socketError.SocketErrorCode);
                    continue;
                }

                throw;
            }

            ManagedConnection? connection = Track(accepted);
            if (connection is not null)
            {
                return connection;
            }
        }
    }

    /// <summary>Stops accepting and leaves the accepted connections to their owners: the listening socket is closed, so a
    /// new connection attempt is refused (for a Unix domain socket, its file is removed), and every pending or later
    /// <see cref="AcceptAsync"/> throws <see cref="ObjectDisposedException"/>. A socket the kernel handed over in a race with
    /// this call is closed gracefully, never handed out.</summary>
    /// <remarks>For a stop in two steps, as a server under a host does it: stop accepting and tell the handlers to finish
    /// (each closes its connection when it is done), then <see cref="StopAsync"/> with what is left of the deadline closes
    /// the connections still open and aborts those still open when it ends. Calling it again, or after
    /// <see cref="StopAsync"/>, does nothing.</remarks>
    public void StopAccepting()
    {
        _tracker.StopAccepting();
        CloseListeningSocket();
    }

    /// <summary>Stops accepting, closes every live connection gracefully, and aborts those still open when <paramref name="gracePeriod"/> ends.</summary>
    /// <param name="gracePeriod">How long connections may take to close gracefully (FIN, drain) before they are aborted (RST).</param>
    /// <param name="cancellationToken">Ends the grace period early: the remaining connections are aborted at once, and the
    /// returned task still completes normally once all are released.</param>
    /// <returns>A task that completes when every connection is released and its <see cref="ManagedConnection.Completion"/> has
    /// its result. Calling it again returns the same stop.</returns>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="gracePeriod"/> is negative (other than infinite).</exception>
    public Task StopAsync(TimeSpan gracePeriod, CancellationToken cancellationToken = default)
    {
        if (gracePeriod < TimeSpan.Zero && gracePeriod != Timeout.InfiniteTimeSpan)
        {
            throw new ArgumentOutOfRangeException(nameof(gracePeriod), gracePeriod, "The grace period must not be negative.");
        }

        if (Volatile.Read(ref _stopTask) is { } running)
        {
            return running;
        }

        // The first caller publishes the stop; a racing caller gets the same task, never a second stop.
        var started = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        if (Interlocked.CompareExchange(ref _stopTask, started.Task, null) is { } other)
        {
            return other;
        }

        _tracker.BeginStop();
        CloseListeningSocket();

        _ = RunStopAsync(started, gracePeriod, cancellationToken);
        return started.Task;
    }

    /// <summary>Closes the listening socket, and returns (to every caller) only once the kernel no longer listens: the
    /// connections still in the backlog are reset, new ones refused.</summary>
    /// <remarks><para>Disposing alone is not enough: close() ends the listen only when the last descriptor for the socket
    /// goes, and a child process between fork and exec (<c>Process.Start</c> on any thread of this process) holds a copy of
    /// every descriptor until its exec; meanwhile the backlog's connections stay established (seen in CI). shutdown() on a
    /// listening TCP socket stops the listen at once on Linux, whoever else holds it; elsewhere it is not tried (it fails
    /// there as "not connected"), and a forked child between fork and exec still holds the listen open that long, as it
    /// does for a Unix domain socket everywhere.</para>
    /// <para>The lock makes a second caller (<see cref="StopAccepting"/> racing <see cref="StopAsync"/>) wait for the first:
    /// <see cref="Socket.Dispose()"/> returns at once while another thread's dispose is still closing.</para>
    /// <para>For a Unix domain socket (no shutdown), the runtime removes the socket file it bound when the socket is
    /// disposed.</para></remarks>
    private void CloseListeningSocket()
    {
        lock (_closeLock)
        {
            if (_listeningClosed)
            {
                return;
            }

            _listeningClosed = true;
            try
            {
                if (OperatingSystem.IsLinux() && _socket.ProtocolType == ProtocolType.Tcp)
                {
                    _socket.Shutdown(SocketShutdown.Both);
                }
            }
            catch (Exception ex) when (ex is SocketException or ObjectDisposedException)
            {
                // Defensive (the listener alone holds this socket, and Linux shuts a listening socket down). Nothing to stop: the close below is all there is to do (a stop must not throw).
            }
            finally
            {
                _socket.Dispose();
            }
        }
    }

    private async Task RunStopAsync(TaskCompletionSource started, TimeSpan gracePeriod, CancellationToken cancellationToken)
    {
        try
        {
            await StopCoreAsync(gracePeriod, cancellationToken).ConfigureAwait(false);
            started.TrySetResult();
        }
#pragma warning disable CA1031 // Surfaced through the returned task.
        catch (Exception ex)
#pragma warning restore CA1031
        {
            // Stryker disable once Statement : a defensive net; the stop itself throws only on a library bug
            started.TrySetException(ex);
        }
    }

    /// <summary>Stops with a grace period equal to the connections' <see cref="ManagedConnectionOptions.DrainTimeout"/>.</summary>
    /// <returns>A task that completes when every connection is released.</returns>
    public async ValueTask DisposeAsync()
    {
        await StopAsync(_connectionSettings.DrainTimeout).ConfigureAwait(false);
    }

    private async Task StopCoreAsync(TimeSpan gracePeriod, CancellationToken cancellationToken)
    {
        // Off the caller's thread before the connections are closed, and never back through its synchronization context
        // (Task.Yield would post there: a UI thread blocked on the stop would never run the rest of it).
        // Stryker disable once Statement : without the yield the same stop runs on the caller's thread until its first wait; no result or order differs
        await Task.CompletedTask.ConfigureAwait(ConfigureAwaitOptions.ForceYielding);
        ManagedConnection[] live = _tracker.Snapshot();
        _tracker.CheckAllReleased();
        foreach (ManagedConnection connection in live)
        {
            _ = CloseQuietlyAsync(connection);
        }

        int aborted = 0;
        if (!_tracker.AllReleased.IsCompleted)
        {
            try
            {
                await _tracker.AllReleased.WaitAsync(gracePeriod, _timeProvider, cancellationToken).ConfigureAwait(false);
            }
            catch (Exception ex) when (ex is TimeoutException or OperationCanceledException)
            {
                _abortStragglers = true;
                foreach (ManagedConnection connection in _tracker.Snapshot())
                {
                    if (connection.FinalResult is null)
                    {
                        connection.Abort();
                        aborted++;
                    }
                }
            }
        }

        // Stryker disable once Boolean : the stop runs on the thread pool since its forced yield: no context to capture
        await _tracker.AllReleased.ConfigureAwait(false);
        if (_logger.IsEnabled(LogLevel.Information))
        {
            Log.ListenerStopped(_logger, LocalEndPoint.ToString(), Math.Max(0, live.Length - aborted), aborted);
        }
    }

    /// <summary>Closes a connection nobody else will (a refused one, or every one at stop); the close never throws for the
    /// peer's behaviour, and anything else is logged rather than lost.</summary>
    private async Task CloseQuietlyAsync(ManagedConnection connection)
    {
        try
        {
            await connection.CloseForListenerAsync().ConfigureAwait(false);
        }
#pragma warning disable CA1031 // Logged; whatever happens, the stop goes on (the connection is released by its own teardown).
        catch (Exception ex)
#pragma warning restore CA1031
        {
            // Stryker disable once Statement,String : a defensive net; a connection's close for the listener never throws (its teardown catches everything)
            Log.UnexpectedError(_logger, "listener's close", connection.RemoteEndPoint?.ToString(), ex);
        }
    }

    /// <summary>Adopts an accepted socket and decides whether to hand it out: a stopping listener or one at
    /// MaxConnections closes it at once (FIN), and tracks it until it is released like any other.</summary>
    private ManagedConnection? Track(Socket accepted)
    {
        ManagedConnection connection;
        try
        {
            bool tcp = accepted.ProtocolType == ProtocolType.Tcp;
            if (tcp && !s_acceptedInheritOptions)
            {
                accepted.NoDelay = true;
            }

            connection = ManagedConnection.AdoptTracked(accepted, _connectionSettings, applyKeepAlive: tcp && !s_acceptedInheritOptions);
        }
        catch (Exception ex) when (ex is SocketException or ArgumentException or ObjectDisposedException)
        {
            // Reset before we could adopt it: nothing to hand out.
            accepted.Dispose();
            _tracker.EndAccept();
            return null;
        }

        AfterAdoptForTest?.Invoke(connection);

        bool refuse = _tracker.Track(connection, out int count);
        if (refuse)
        {
            if (!_tracker.AcceptingStopped)
            {
                _connectionSettings.Instruments.Rejected.Add(1, connection.MetricTags.Common);
                if (_logger.IsEnabled(LogLevel.Information))
                {
                    Log.ConnectionRejected(_logger, LocalEndPoint.ToString(), _maxConnections, connection.RemoteEndPoint?.ToString());
                }
            }

            if (_abortStragglers)
            {
                // Accepted while the stop was past its grace period: no graceful close can be waited for any more.
                connection.Abort();
            }
            else
            {
                _ = CloseQuietlyAsync(connection);
            }

            _tracker.CheckAllReleased();
            return null;
        }

        return connection;
    }

    private void OnConnectionCompleted(ManagedConnection connection) => _tracker.Completed(connection);

    private void OnConnectionPublished(ManagedConnection connection) => _tracker.Published(connection);

    private void OnDrainStarted(ManagedConnection connection)
    {
        List<ManagedConnection>? cut = _tracker.DrainStarted(connection);
        if (cut is null)
        {
            return;
        }

        foreach (ManagedConnection oldest in cut)
        {
            if (oldest.CutDrainShort())
            {
                _connectionSettings.Instruments.CutShort.Add(1, oldest.MetricTags.Common);
                if (_logger.IsEnabled(LogLevel.Warning))
                {
                    Log.DrainBudgetExceeded(_logger, _maxDraining, oldest.RemoteEndPoint?.ToString());
                }
            }
        }
    }

    /// <summary>Runs just before the stop finds every connection released (on the thread that found it), for tests.</summary>
    internal Action? BeforeAllReleasedForTest
    {
        get => _tracker.BeforeAllReleasedForTest;
        set => _tracker.BeforeAllReleasedForTest = value;
    }

    /// <summary>The tracker's counts (live, accepts in progress, unpublished, ended before tracking, draining), for tests.</summary>
    internal (int Live, int AcceptsInProgress, int Unpublished, int EndedBeforeTracked, int Draining) TrackerCountsForTest => _tracker.CountsForTest;

    /// <summary>Whether the stop found every connection released, for tests.</summary>
    internal bool AllReleasedForTest => _tracker.AllReleased.IsCompleted;

    /// <summary>The listening socket, for tests.</summary>
    internal Socket ListeningSocketForTest => _socket;

    /// <summary>Runs in the accept path between adopting an accepted socket and tracking it, for tests.</summary>
    internal Action<ManagedConnection>? AfterAdoptForTest { get; set; }

    private void ThrowIfStopped()
    {
        if (_tracker.AcceptingStopped)
        {
            throw StoppedException();
        }
    }

    private static ObjectDisposedException StoppedException() =>
        new(nameof(ManagedListener), "The listener is stopped (StopAccepting, StopAsync or DisposeAsync was called); it accepts no more connections.");
}
