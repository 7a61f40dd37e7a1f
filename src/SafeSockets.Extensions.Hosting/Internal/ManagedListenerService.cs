using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;

namespace SafeSockets.Extensions.Hosting.Internal;

/// <summary>One hosted listener: starts it with the host, runs each accepted connection through a handler from a scope of
/// its own and closes it gracefully when the handler returns. On the host's stop, as Kestrel: no more accepts, the
/// handlers' <c>stopping</c> token is cancelled and each handler finishes and returns (its connection then closed
/// gracefully); the connections still open when the host's shutdown timeout (the stop's token) ends are aborted.</summary>
internal sealed class ManagedListenerService : IHostedLifecycleService, IAsyncDisposable, IDisposable
{
    private static readonly TimeSpan s_acceptBackoff = TimeSpan.FromMilliseconds(100);

    private readonly Type _handlerType;
    private readonly IServiceScopeFactory _scopes;
    private readonly IOptionsMonitor<HostedListenerOptions> _options;
    private readonly ILogger _logger;

    // Cancelled when the host starts to stop: the handlers' `stopping` token. Disposed only once every handler has ended
    // (a handler still running at the deadline may still register on its token); the token is taken once, here.
    private readonly CancellationTokenSource _stopping = new();
    private readonly CancellationToken _stoppingToken;

    // Handlers running, plus one for the accept loop; the one that brings it to zero completes _handlersDone.
    private long _running = 1;
    private readonly TaskCompletionSource _handlersDone = new(TaskCreationOptions.RunContinuationsAsynchronously);

    // The connections whose handlers have not returned yet: aborted when the host's shutdown timeout ends.
    private readonly ConcurrentDictionary<ManagedConnection, byte> _handled = new(ReferenceEqualityComparer.Instance);

    private ManagedListener? _listener;
    private Task? _acceptLoop;

    // The first step of the stop (no more accepts, 'stopping' cancelled): taken once, by StoppingAsync or StopAsync.
    private Task? _stopBegun;
    private int _disposed;

    // The connections open when the stop began (accepting over): how they ended is event 103's count.
    private ManagedConnection[]? _openAtStop;

    public ManagedListenerService(string name, Type handlerType, IServiceScopeFactory scopes, IOptionsMonitor<HostedListenerOptions> options, ILoggerFactory? loggerFactory)
    {
        Name = name;
        _handlerType = handlerType;
        _scopes = scopes;
        _options = options;
        _logger = loggerFactory?.CreateLogger(ListenerHostDefaults.LoggerCategory) ?? Microsoft.Extensions.Logging.Abstractions.NullLogger.Instance;
        _stoppingToken = _stopping.Token;
    }

    /// <summary>The listener's name (its options' name and configuration section).</summary>
    public string Name { get; }

    /// <summary>Where the listener listens once started (the port chosen, for port 0); null before.</summary>
    public EndPoint? LocalEndPoint => _listener?.LocalEndPoint;

    /// <summary>Completes when the accept loop and every handler have ended (each handler's connection closed).</summary>
    internal Task HandlersCompleted => _handlersDone.Task;

    public async Task StartAsync(CancellationToken cancellationToken)
    {
        HostedListenerOptions options = _options.Get(Name);

        // One handler made now, in a scope of its own: a missing dependency fails the start, not every connection.
        try
        {
            AsyncServiceScope scope = _scopes.CreateAsyncScope();
            await using (scope.ConfigureAwait(false))
            {
                _ = scope.ServiceProvider.GetRequiredService(_handlerType);
            }
        }
        catch (Exception ex) when (ex is InvalidOperationException or ArgumentException)
        {
            throw new InvalidOperationException($"SafeSockets listener '{Name}' cannot make its handler {_handlerType.FullName}: {ex.Message}", ex);
        }

        EndPoint endPoint = options.EndPoint!;
        try
        {
            _listener = ManagedListener.Start(endPoint, options.Listener);
        }
        catch (Exception ex) when (ex is SocketException or IOException or ArgumentException)
        {
            // With several listeners, a bare "Address already in use" does not say whose, nor where to change it.
            throw new InvalidOperationException(
                $"SafeSockets listener '{Name}' could not listen on {endPoint} (configuration key {ConfigurationBinding.SectionPath(Name)}:EndPoint): {ex.Message}", ex);
        }

        Log.Listening(_logger, Name, _listener.LocalEndPoint.ToString() ?? "?");
        _acceptLoop = AcceptLoopAsync(_listener);
    }

    public Task StartingAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public Task StartedAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    /// <summary>The first step of the stop, which the host runs for every hosted service before any <see cref="StopAsync"/>:
    /// every hosted listener stops accepting and tells its handlers to finish at the same moment, so none goes on
    /// accepting while another drains, and all share the whole shutdown timeout.</summary>
    /// <remarks>It only starts that and returns: the host runs these one service at a time, and a slow <c>stopping</c>
    /// callback of one listener's handlers must not keep the next listener accepting, nor eat the shutdown timeout
    /// before any <see cref="StopAsync"/> can abort.</remarks>
    public Task StoppingAsync(CancellationToken cancellationToken)
    {
        _ = BeginStopAsync();
        return Task.CompletedTask;
    }

    public async Task StopAsync(CancellationToken cancellationToken)
    {
        if (_listener is null || Volatile.Read(ref _disposed) != 0)
        {
            return; // never started, or disposed (which stopped it)
        }

        try
        {
            // Begun already when the host called StoppingAsync; not when the service is stopped on its own. Both waits
            // are bounded by the host's shutdown timeout (a slow 'stopping' callback, a handler that never returns).
            await BeginStopAsync().WaitAsync(cancellationToken).ConfigureAwait(false);
            await _handlersDone.Task.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
            // The host's shutdown timeout ended: the connections of the handlers still running are aborted (RST, no
            // FIN first: the handler never finished with it), and their reads and writes fail.
            Log.HandlersStillRunning(_logger, Name, Volatile.Read(ref _running));
            foreach (ManagedConnection connection in _handled.Keys)
            {
                connection.Abort();
            }
        }
        finally
        {
            // Whatever happened above: every handler has returned and closed its connection, or the host's shutdown
            // timeout (the token) has ended and the listener aborts the connections still open (closing ones). The stop
            // completes once every one is released.
            await _listener.StopAsync(Timeout.InfiniteTimeSpan, cancellationToken).ConfigureAwait(false);
            LogStopped(Volatile.Read(ref _openAtStop) ?? [.. _handled.Keys]);
        }
    }

    public Task StoppedAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    /// <summary>Event 103 with how the connections open at the stop ended (all released: the listener's stop is over).</summary>
    private void LogStopped(ManagedConnection[] open)
    {
        int graceful = 0, aborted = 0;
        foreach (ManagedConnection connection in open)
        {
            if (connection.Completion.IsCompletedSuccessfully)
            {
                CloseOutcome outcome = connection.Completion.Result.Outcome;
                graceful += outcome == CloseOutcome.Graceful ? 1 : 0;
                aborted += outcome == CloseOutcome.Aborted ? 1 : 0;
            }
        }

        Log.Stopped(_logger, Name, graceful, aborted, open.Length - graceful - aborted);
    }

    /// <summary>Stops what a stop did not: after a failed start (this or another service's) or when the host is disposed
    /// without a stop, nothing may go on accepting on a disposed service provider. No more accepts, the open connections
    /// are aborted (there is no deadline left to wait for), and the handlers' <c>stopping</c> token is cancelled. After a
    /// completed stop there is nothing left to do.</summary>
    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        if (_listener is not null)
        {
            // No more accepts, and the handlers' token cancelled before their connections are aborted: what a handler
            // then sees is the stop's doing (logged at Debug), not a failure.
            Task begun = BeginStopAsync();
            foreach (ManagedConnection connection in _handled.Keys)
            {
                connection.Abort();
            }

            await _listener.StopAsync(TimeSpan.Zero).ConfigureAwait(false);
            await begun.ConfigureAwait(false);
        }

        if (_handlersDone.Task.IsCompleted || _listener is null)
        {
            _stopping.Dispose();
        }
    }

    public void Dispose() => DisposeAsync().AsTask().GetAwaiter().GetResult();

    private Task BeginStopAsync()
    {
        if (_listener is null)
        {
            return Task.CompletedTask;
        }

        var begun = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        if (Interlocked.CompareExchange(ref _stopBegun, begun.Task, null) is { } running)
        {
            return running;
        }

        _ = BeginStopCoreAsync(_listener, begun);
        return begun.Task;
    }

    private async Task BeginStopCoreAsync(ManagedListener listener, TaskCompletionSource begun)
    {
        // Whatever throws here (a logging provider, a callback), the stop's waiters are released: never a hang.
        try
        {
            // As Kestrel: no more accepts (a new connection is refused), and every handler is told to finish; each one's
            // connection stays its own until it returns, and is then closed gracefully (RunAsync). The token is cancelled
            // at once; its callbacks run on the pool.
            listener.StopAccepting();
            Task cancelling = _stopping.CancelAsync();
            Log.Stopping(_logger, Name);
            try
            {
                await cancelling.ConfigureAwait(false);
            }
#pragma warning disable CA1031 // A callback the application registered on 'stopping' threw (every callback still ran): logged, and the stop goes on.
            catch (Exception ex)
#pragma warning restore CA1031
            {
                Log.StoppingCallbackFailed(_logger, Name, ex);
            }
        }
        finally
        {
            try
            {
                if (_acceptLoop is not null)
                {
                    await _acceptLoop.ConfigureAwait(false); // ends at once: its accept fails now
                }
            }
            finally
            {
                Volatile.Write(ref _openAtStop, [.. _handled.Keys]);
                begun.TrySetResult();
            }
        }
    }

    private async Task AcceptLoopAsync(ManagedListener listener)
    {
        try
        {
            while (true)
            {
                ManagedConnection connection;
                try
                {
                    connection = await listener.AcceptAsync().ConfigureAwait(false);
                }
                catch (ObjectDisposedException)
                {
                    return; // stopped
                }
#pragma warning disable CA1031 // Logged; a listener that cannot accept one connection (descriptors exhausted) goes on.
                catch (Exception ex)
#pragma warning restore CA1031
                {
                    Log.AcceptFailed(_logger, Name, ex);
                    await Task.Delay(s_acceptBackoff, CancellationToken.None).ConfigureAwait(false);
                    continue;
                }

                Interlocked.Increment(ref _running);
                _handled.TryAdd(connection, 0);

                // Off the accept loop: a handler that blocks before its first await must not hold up the next accept.
                ThreadPool.UnsafeQueueUserWorkItem(static s => _ = s.Service.RunAsync(s.Connection), (Service: this, Connection: connection), preferLocal: false);
            }
        }
        finally
        {
            HandlerDone();
        }
    }

    private async Task RunAsync(ManagedConnection connection)
    {
        try
        {
            await HandleOneAsync(connection).ConfigureAwait(false);
        }
        finally
        {
            // Even if logging failed above: the connection is closed and counted, or every later stop would wait for it.
            try
            {
                // Bounded by the connection's drain bounds, and by the listener's abort at the host's shutdown deadline.
                await connection.CloseAsync().ConfigureAwait(false);
            }
#pragma warning disable CA1031 // The close does not throw for the peer's behaviour; anything else is logged, never lost.
            catch (Exception ex)
#pragma warning restore CA1031
            {
                Log.HandlerFailed(_logger, Name, connection.RemoteEndPoint?.ToString(), ex);
            }
            finally
            {
                _handled.TryRemove(connection, out _);
                HandlerDone();
            }
        }
    }

    private async Task HandleOneAsync(ManagedConnection connection)
    {
        try
        {
            AsyncServiceScope scope = _scopes.CreateAsyncScope();
            await using (scope.ConfigureAwait(false))
            {
                var handler = (IConnectionHandler)scope.ServiceProvider.GetRequiredService(_handlerType);
                await handler.HandleAsync(connection, _stoppingToken).ConfigureAwait(false);
            }
        }
        catch (Exception ex) when (ex is ConnectionResetException or PeerUnreachableException)
        {
            Log.PeerGone(_logger, Name, connection.RemoteEndPoint?.ToString(), ex.GetType().Name);
        }
        catch (Exception ex) when (ex is OperationCanceledException or ObjectDisposedException && _stoppingToken.IsCancellationRequested)
        {
            // The handler saw the stop (its token), or still ran when the shutdown timeout aborted its connection.
            Log.HandlerEndedByStop(_logger, Name, connection.RemoteEndPoint?.ToString(), ex.GetType().Name);
        }
#pragma warning disable CA1031 // An exception nobody expected is logged at Error; the connection is still closed below.
        catch (Exception ex)
#pragma warning restore CA1031
        {
            Log.HandlerFailed(_logger, Name, connection.RemoteEndPoint?.ToString(), ex);
        }
    }

    private void HandlerDone()
    {
        if (Interlocked.Decrement(ref _running) == 0)
        {
            _handlersDone.TrySetResult();
        }
    }
}
