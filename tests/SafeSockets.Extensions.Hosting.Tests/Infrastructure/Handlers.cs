using System.Collections.Concurrent;
using System.Threading.Channels;

namespace SafeSockets.Extensions.Hosting.Tests.Infrastructure;

/// <summary>What the handlers saw: every connection handed to one, in order (a singleton shared by the scopes).</summary>
internal sealed class Recorder
{
    private readonly Channel<ManagedConnection> _connections = Channel.CreateUnbounded<ManagedConnection>();

    public ConcurrentQueue<ScopeProbe> Probes { get; } = new();

    public void Handed(ManagedConnection connection) => _connections.Writer.TryWrite(connection);

    /// <summary>The next connection a handler received, within the test timeout.</summary>
    public async Task<ManagedConnection> NextAsync()
    {
        using var timeout = new CancellationTokenSource(SafeSockets.Tests.Infrastructure.TestTimeouts.Passing);
        return await _connections.Reader.ReadAsync(timeout.Token);
    }
}

/// <summary>Echoes until the peer's FIN or the host's stop.</summary>
internal sealed class EchoHandler(Recorder recorder) : IConnectionHandler
{
    public async ValueTask HandleAsync(ManagedConnection connection, CancellationToken stopping)
    {
        recorder.Handed(connection);
        byte[] buffer = new byte[4096];
        while (true)
        {
            int n = await connection.ReceiveAsync(buffer, stopping);
            if (n == 0)
            {
                return;
            }

            await connection.SendAsync(buffer.AsMemory(0, n), stopping);
        }
    }
}

/// <summary>A scoped service: one per connection if the listener makes one scope per connection.</summary>
internal sealed class ScopeProbe : IAsyncDisposable
{
    public TaskCompletionSource Disposed { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public ValueTask DisposeAsync()
    {
        Disposed.TrySetResult();
        return ValueTask.CompletedTask;
    }
}

/// <summary>An echo handler that also takes the scoped probe and records it.</summary>
internal sealed class ScopedEchoHandler(Recorder recorder, ScopeProbe probe) : IConnectionHandler
{
    public ValueTask HandleAsync(ManagedConnection connection, CancellationToken stopping)
    {
        recorder.Probes.Enqueue(probe);
        return new EchoHandler(recorder).HandleAsync(connection, stopping);
    }
}

/// <summary>Echoes one byte, then throws an exception nobody expected.</summary>
internal sealed class ThrowingHandler(Recorder recorder) : IConnectionHandler
{
    public async ValueTask HandleAsync(ManagedConnection connection, CancellationToken stopping)
    {
        recorder.Handed(connection);
        byte[] buffer = new byte[1];
        int n = await connection.ReceiveAsync(buffer, stopping);
        await connection.SendAsync(buffer.AsMemory(0, n), stopping);
        throw new InvalidOperationException("the handler's own bug");
    }
}

/// <summary>Reads a one-byte request, records the connection, and is still working on it when the host's stop begins: it
/// replies with the byte <see cref="Work"/> after <c>stopping</c> is cancelled (an in-flight request), then returns.</summary>
internal sealed class ReplyAfterStopHandler(Recorder recorder) : IConnectionHandler
{
    public static readonly TimeSpan Work = TimeSpan.FromMilliseconds(300);

    public async ValueTask HandleAsync(ManagedConnection connection, CancellationToken stopping)
    {
        byte[] request = new byte[1];
        int n = await connection.ReceiveAsync(request, CancellationToken.None);
        recorder.Handed(connection);
        await stopping.WhenCanceled();
        await Task.Delay(Work, CancellationToken.None);
        await connection.SendAsync(request.AsMemory(0, n), CancellationToken.None);
    }
}

/// <summary>An echo handler whose own callback on <c>stopping</c> throws (a bug in the application's code).</summary>
internal sealed class ThrowingCallbackHandler(Recorder recorder) : IConnectionHandler
{
    public ValueTask HandleAsync(ManagedConnection connection, CancellationToken stopping)
    {
        stopping.Register(static () => throw new InvalidOperationException("the stop callback's own bug"));
        return new EchoHandler(recorder).HandleAsync(connection, stopping);
    }
}

/// <summary>Echoes until the peer's FIN, never looking at <c>stopping</c>.</summary>
internal sealed class TokenlessEchoHandler(Recorder recorder) : IConnectionHandler
{
    public async ValueTask HandleAsync(ManagedConnection connection, CancellationToken stopping)
    {
        recorder.Handed(connection);
        byte[] buffer = new byte[4096];
        int n;
        while ((n = await connection.ReceiveAsync(buffer, CancellationToken.None)) > 0)
        {
            await connection.SendAsync(buffer.AsMemory(0, n), CancellationToken.None);
        }
    }
}

/// <summary>A service nobody registered.</summary>
internal interface IUnregisteredService;

/// <summary>A handler that needs <see cref="IUnregisteredService"/>: it cannot be made.</summary>
internal sealed class MissingDependencyHandler(IUnregisteredService service) : IConnectionHandler
{
    public ValueTask HandleAsync(ManagedConnection connection, CancellationToken stopping) => ValueTask.CompletedTask;

    public override string ToString() => service.ToString() ?? string.Empty;
}

/// <summary>A hosted service whose start fails.</summary>
internal sealed class FailingStartService : IHostedService
{
    public Task StartAsync(CancellationToken cancellationToken) => throw new InvalidOperationException("a later service failed to start");

    public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;
}
