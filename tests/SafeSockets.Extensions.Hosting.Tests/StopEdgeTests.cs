using System.Net;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Testing;
using SafeSockets.Extensions.Hosting.Internal;

namespace SafeSockets.Extensions.Hosting.Tests;

/// <summary>Stops that a second review found wrong: a host disposed on a thread with a SynchronizationContext, a dispose
/// without a stop, and a slow 'stopping' callback of one listener's handler.</summary>
public sealed class StopEdgeTests
{
    /// <summary>A context whose posts never run: the thread that owns it is blocked (a UI thread inside Dispose).</summary>
    private sealed class BlockedContext : SynchronizationContext
    {
        public int Posts;

        public override void Post(SendOrPostCallback d, object? state) => Interlocked.Increment(ref Posts);

        public override void Send(SendOrPostCallback d, object? state) => d(state);
    }

    [Fact]
    public async Task DisposeWithoutStop_OnAThreadWithASynchronizationContext_DoesNotWaitForThatThread()
    {
        IHost host = await TestHosts.StartAsync<EchoHandler>();
        var context = new BlockedContext();
        var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var thread = new Thread(() =>
        {
            SynchronizationContext.SetSynchronizationContext(context);
            try
            {
                host.Dispose();
                done.TrySetResult();
            }
            catch (Exception ex)
            {
                done.TrySetException(ex);
            }
        })
        { IsBackground = true };
        thread.Start();

        await done.Task.WithTimeout();
        Assert.Equal(0, context.Posts);
    }

    [Fact]
    public async Task DisposeWithoutStop_HandlersSeeTheStop_NothingLoggedAboveDebugButTheStop()
    {
        IHost host = await TestHosts.StartAsync<EchoHandler>(b => b.Services.AddFakeLogging());
        FakeLogCollector logs = host.Services.GetFakeLogCollector();
        ManagedListenerService service = TestHosts.ServiceOf(host);
        using Socket peer = await TestHosts.ConnectEchoedAsync(host);
        ManagedConnection connection = await TestHosts.RecorderOf(host).NextAsync();

        await ((IAsyncDisposable)host).DisposeAsync().AsTask().WithTimeout();
        await service.HandlersCompleted.WithTimeout();

        Assert.Equal(CloseOutcome.Aborted, (await connection.Completion.WithTimeout()).Outcome);
        string[] loud = [.. logs.GetSnapshot().Where(r => r.Level >= LogLevel.Warning).Select(r => $"{r.Id.Id} {r.Level} {r.Message} {r.Exception?.GetType().Name}")];
        Assert.True(loud.Length == 0, string.Join("\n", loud));
    }

    [Fact]
    public async Task SlowStoppingCallbackOfOneListener_DoesNotKeepTheOtherAccepting_NorHoldTheStopPastTheDeadline()
    {
        HostApplicationBuilder builder = TestHosts.Builder();
        TestHosts.AddListenerSection(builder, "second");
        builder.Services.AddSingleton<SlowStop>();
        builder.Services.AddManagedListener<EchoHandler>("second");               // stopped last
        builder.Services.AddManagedListener<SlowStopHandler>(TestHosts.Name);     // stopped first
        builder.Services.Configure<HostOptions>(o => o.ShutdownTimeout = TimeSpan.FromSeconds(2));
        using IHost host = builder.Build();
        await host.StartAsync().WithTimeout();
        using Socket peer = await TestHosts.ConnectEchoedAsync(host);
        IPEndPoint second = TestHosts.EndPointOf(host, "second");
        SlowStop slow = host.Services.GetRequiredService<SlowStop>();

        Task stop = host.StopAsync();
        await slow.Started.Task.WithTimeout();

        // The first listener's handler is still in its 'stopping' callback: the second listener accepts no more.
        Assert.Equal(SocketError.ConnectionRefused, await TestHosts.TryConnectAsync(second));

        // And the stop ends at the shutdown deadline, not when the callback does.
        await stop.WithTimeout();
        Assert.False(slow.Finished.Task.IsCompleted, "the stop waited for the slow 'stopping' callback");
        slow.Release.Set();
        await slow.Finished.Task.WithTimeout();
    }

    /// <summary>A 'stopping' callback that blocks until the test releases it (synchronous clean-up on stop).</summary>
    internal sealed class SlowStop : IDisposable
    {
        public TaskCompletionSource Started { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public TaskCompletionSource Finished { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public ManualResetEventSlim Release { get; } = new();

        public void Dispose()
        {
            Release.Set();
            Release.Dispose();
        }
    }

    internal sealed class SlowStopHandler(Recorder recorder, SlowStop slow) : IConnectionHandler
    {
        public ValueTask HandleAsync(ManagedConnection connection, CancellationToken stopping)
        {
            stopping.Register(() =>
            {
                slow.Started.TrySetResult();
                slow.Release.Wait(TimeSpan.FromSeconds(60));
                slow.Finished.TrySetResult();
            });
            return new EchoHandler(recorder).HandleAsync(connection, stopping);
        }
    }
}
