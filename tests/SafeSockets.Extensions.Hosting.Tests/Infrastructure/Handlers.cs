using System.Collections.Concurrent;
using System.Threading.Channels;

namespace SafeSockets.Extensions.Hosting.Tests.Infrastructure;

/// <summary>What the handlers saw: every connection handed to one, in order (a singleton shared by the scopes).</summary>
internal sealed class Recorder
{
    private readonly Channel<ManagedConnection> _connections = Channel.CreateUnbounded<ManagedConnection>();

    public ConcurrentQueue<ScopeProbe> Probes { get; } = new();

    /// <summary>What a <see cref="StuckHandler"/> waits for, whatever the host does.</summary>
    public TaskCompletionSource Release { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

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

/// <summary>Ignores the stop: waits for the test's release, as a handler stuck on something else would.</summary>
internal sealed class StuckHandler(Recorder recorder) : IConnectionHandler
{
    public async ValueTask HandleAsync(ManagedConnection connection, CancellationToken stopping)
    {
        recorder.Handed(connection);
        await recorder.Release.Task;
    }
}
