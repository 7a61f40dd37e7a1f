using System.Collections.Concurrent;
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
/// <para>Thread safety: <see cref="AcceptAsync"/> may be called concurrently; <see cref="StopAsync"/> and
/// <see cref="DisposeAsync"/> may be called from any thread, any number of times.</para>
/// </remarks>
public sealed class ManagedListener : IAsyncDisposable
{
    private readonly Socket _socket;
    private readonly int _maxConnections;
    private readonly int _maxDraining;
    private readonly ILogger _logger;
    private readonly TimeProvider _timeProvider;
    private readonly ConcurrentDictionary<ManagedConnection, byte> _live = new(ReferenceEqualityComparer.Instance);
    private readonly ConcurrentQueue<ManagedConnection> _drainingQueue = new();
    private readonly ConcurrentDictionary<ManagedConnection, byte> _drainCounted = new(ReferenceEqualityComparer.Instance);
    private readonly TaskCompletionSource _allReleased = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly ConnectionSettings _connectionSettings;
    private int _active;
    private int _draining;
    private int _stopping;
    private Task? _stopTask;

    private ManagedListener(Socket socket, ManagedListenerOptions options)
    {
        _socket = socket;
        _maxConnections = options.MaxConnections;
        _maxDraining = options.MaxDrainingConnections;
        _logger = options.Connection.Logger;
        _timeProvider = options.Connection.TimeProvider;
        LocalEndPoint = socket.LocalEndPoint!;
        // A snapshot: later changes to the options object do not reach this listener's connections.
        _connectionSettings = options.Connection.Settings.WithCallbacks(OnConnectionCompleted, OnDrainStarted);
    }

    /// <summary>Binds to <paramref name="localEndPoint"/> and starts listening.</summary>
    /// <param name="localEndPoint">An <see cref="IPEndPoint"/>; port 0 picks a free port (read it from <see cref="LocalEndPoint"/>).</param>
    /// <param name="options">Listener and connection settings; <see langword="null"/> for the documented defaults.</param>
    /// <returns>The listening listener.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="localEndPoint"/> is null.</exception>
    /// <exception cref="ArgumentException"><paramref name="localEndPoint"/> is not an <see cref="IPEndPoint"/>.</exception>
    /// <exception cref="SocketException">Binding or listening failed (for example the port is in use); no descriptor is left behind.</exception>
    public static ManagedListener Start(EndPoint localEndPoint, ManagedListenerOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(localEndPoint);
        if (localEndPoint is not IPEndPoint ip)
        {
            throw new ArgumentException($"Only IPEndPoint is supported; got {localEndPoint.GetType().Name}.", nameof(localEndPoint));
        }

        options ??= new ManagedListenerOptions();
        var socket = new Socket(ip.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        try
        {
            socket.Bind(ip);
            socket.Listen(options.Backlog);
            return new ManagedListener(socket, options);
        }
        catch
        {
            socket.Dispose();
            throw;
        }
    }

    /// <summary>The end point the listener is bound to (with the actual port when 0 was asked for).</summary>
    public EndPoint LocalEndPoint { get; }

    /// <summary>Connections accepted and not yet released (open, closing or draining).</summary>
    public int ActiveConnections => Volatile.Read(ref _active);

    /// <summary>Connections currently draining (counted against <see cref="ManagedListenerOptions.MaxDrainingConnections"/>).</summary>
    public int DrainingConnections => Volatile.Read(ref _draining);

    /// <summary>Accepts the next connection. Per-connection failures (a peer that reset while in the backlog) are skipped.</summary>
    /// <param name="cancellationToken">Cancels the wait; the listener keeps listening.</param>
    /// <returns>The accepted connection, already tracked by the listener.</returns>
    /// <exception cref="ObjectDisposedException">The listener is stopped.</exception>
    /// <exception cref="OperationCanceledException"><paramref name="cancellationToken"/> was cancelled.</exception>
    public async ValueTask<ManagedConnection> AcceptAsync(CancellationToken cancellationToken = default)
    {
        while (true)
        {
            ThrowIfStopped();
            Socket accepted;
            try
            {
                accepted = await _socket.AcceptAsync(cancellationToken).ConfigureAwait(false);
            }
            catch (SocketException ex) when (Volatile.Read(ref _stopping) != 0 || SocketErrors.IsAbortedByUs(ex.SocketErrorCode))
            {
                ThrowIfStopped();
                throw;
            }
            catch (ObjectDisposedException) when (Volatile.Read(ref _stopping) != 0)
            {
                ThrowIfStopped();
                throw;
            }
            catch (SocketException ex) when (SocketErrors.IsConnectionReset(ex.SocketErrorCode))
            {
                Log.AcceptFailed(_logger, LocalEndPoint.ToString(), ex.SocketErrorCode);
                continue;
            }

            ManagedConnection? connection = Track(accepted);
            if (connection is not null)
            {
                return connection;
            }
        }
    }

    /// <summary>Stops accepting, closes every live connection gracefully, and aborts those still open when <paramref name="gracePeriod"/> ends.</summary>
    /// <param name="gracePeriod">How long connections may take to close gracefully (FIN, drain) before they are aborted (RST).</param>
    /// <param name="cancellationToken">Ends the grace period early: the remaining connections are aborted at once, and the
    /// returned task still completes normally once all are released.</param>
    /// <returns>A task that completes when every connection is released. Calling it again returns the same stop.</returns>
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

        Volatile.Write(ref _stopping, 1);
        _socket.Dispose();
        _ = RunStopAsync(started, gracePeriod, cancellationToken);
        return started.Task;
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
        await Task.Yield();
        CheckAllReleased();
        int total = 0;
        foreach (ManagedConnection connection in _live.Keys)
        {
            total++;
            _ = CloseQuietlyAsync(connection);
        }

        int aborted = 0;
        if (!_allReleased.Task.IsCompleted)
        {
            try
            {
                await _allReleased.Task.WaitAsync(gracePeriod, _timeProvider, cancellationToken).ConfigureAwait(false);
            }
            catch (Exception ex) when (ex is TimeoutException or OperationCanceledException)
            {
                foreach (ManagedConnection connection in _live.Keys)
                {
                    if (connection.FinalResult is null)
                    {
                        connection.Abort();
                        aborted++;
                    }
                }
            }
        }

        await _allReleased.Task.ConfigureAwait(false);
        if (_logger.IsEnabled(LogLevel.Information))
        {
            Log.ListenerStopped(_logger, LocalEndPoint.ToString(), Math.Max(0, total - aborted), aborted);
        }
    }

    private static async Task CloseQuietlyAsync(ManagedConnection connection)
    {
        try
        {
            await connection.CloseAsync().ConfigureAwait(false);
        }
#pragma warning disable CA1031 // A close never throws for the peer's behaviour; whatever else happens, the stop goes on.
        catch (Exception)
#pragma warning restore CA1031
        {
        }
    }

    private ManagedConnection? Track(Socket accepted)
    {
        Interlocked.Increment(ref _active);
        ManagedConnection connection;
        try
        {
            accepted.NoDelay = true;
            connection = ManagedConnection.AdoptTracked(accepted, _connectionSettings);
        }
        catch (Exception ex) when (ex is SocketException or ArgumentException or ObjectDisposedException)
        {
            // Reset before we could adopt it: nothing to hand out.
            accepted.Dispose();
            Interlocked.Decrement(ref _active);
            CheckAllReleased();
            return null;
        }

        _live.TryAdd(connection, 0);
        if (connection.FinalResult is not null)
        {
            // Finished before it was registered (an immediate reset): OnConnectionCompleted ran already.
            _live.TryRemove(connection, out _);
        }

        if (Volatile.Read(ref _stopping) != 0)
        {
            _ = CloseQuietlyAsync(connection);
            return null;
        }

        if (Volatile.Read(ref _active) > _maxConnections)
        {
            Metrics.Rejected.Add(1);
            if (_logger.IsEnabled(LogLevel.Information))
            {
                Log.ConnectionRejected(_logger, LocalEndPoint.ToString(), _maxConnections, connection.RemoteEndPoint?.ToString());
            }

            _ = CloseQuietlyAsync(connection);
            return null;
        }

        return connection;
    }

    private void OnConnectionCompleted(ManagedConnection connection)
    {
        _live.TryRemove(connection, out _);
        if (_drainCounted.TryRemove(connection, out _))
        {
            Interlocked.Decrement(ref _draining);
        }

        Interlocked.Decrement(ref _active);
        CheckAllReleased();
    }

    private void OnDrainStarted(ManagedConnection connection)
    {
        _drainCounted.TryAdd(connection, 0);
        Interlocked.Increment(ref _draining);
        _drainingQueue.Enqueue(connection);
        while (Volatile.Read(ref _draining) > _maxDraining && _drainingQueue.TryDequeue(out ManagedConnection? oldest))
        {
            // Whoever removes the entry uncounts it: here (cut) or at completion, never both.
            if (_drainCounted.TryRemove(oldest, out _))
            {
                Interlocked.Decrement(ref _draining);
                if (oldest.CutDrainShort())
                {
                    Metrics.CutShort.Add(1);
                    if (_logger.IsEnabled(LogLevel.Warning))
                    {
                        Log.DrainBudgetExceeded(_logger, _maxDraining, oldest.RemoteEndPoint?.ToString());
                    }
                }
            }
        }
    }

    private void CheckAllReleased()
    {
        if (Volatile.Read(ref _stopping) != 0 && Volatile.Read(ref _active) == 0)
        {
            _allReleased.TrySetResult();
        }
    }

    private void ThrowIfStopped()
    {
        if (Volatile.Read(ref _stopping) != 0)
        {
            throw new ObjectDisposedException(nameof(ManagedListener), "The listener is stopped (StopAsync or DisposeAsync was called); it accepts no more connections.");
        }
    }
}
