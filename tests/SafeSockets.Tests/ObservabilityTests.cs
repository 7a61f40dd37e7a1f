using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.Diagnostics.Metrics.Testing;
using Microsoft.Extensions.Logging;
using SafeSockets.Diagnostics;
using SafeSockets.Tests.Infrastructure;

namespace SafeSockets.Tests;

/// <summary>Metrics are process-wide, so these run alone.</summary>
[Collection(ExclusiveTests.Name)]
public sealed class ObservabilityTests
{
    private static KeyValuePair<string, object?> Tag(string name, object? value) => new(name, value);

    [Fact]
    public async Task Metrics_CountOpenedClosedByOutcome_DurationsAndForcedCloses()
    {
        await WhenNoConnectionIsLiveAsync();
        using var opened = new MetricCollector<long>(null, SafeSocketsMetrics.MeterName, SafeSocketsMetrics.ConnectionsOpened);
        using var closed = new MetricCollector<long>(null, SafeSocketsMetrics.MeterName, SafeSocketsMetrics.ConnectionsClosed);
        using var forced = new MetricCollector<long>(null, SafeSocketsMetrics.MeterName, SafeSocketsMetrics.CloseWaitForcedCloses);
        using var aborts = new MetricCollector<long>(null, SafeSocketsMetrics.MeterName, SafeSocketsMetrics.Aborts);
        using var drained = new MetricCollector<long>(null, SafeSocketsMetrics.MeterName, SafeSocketsMetrics.BytesDrained);
        using var duration = new MetricCollector<double>(null, SafeSocketsMetrics.MeterName, SafeSocketsMetrics.CloseDuration);
        using var finToClose = new MetricCollector<double>(null, SafeSocketsMetrics.MeterName, SafeSocketsMetrics.PeerFinToCloseDuration);

        // 1: graceful with drained bytes.
        (Socket p1, ManagedConnection c1) = await Loopback.CreateManagedServerAsync();
        using (p1)
        {
            Task<CloseResult> close = c1.CloseAsync().AsTask();
            await Peer.ReadToEndAsync(p1).WithTimeout();
            await Peer.SendPatternAsync(p1, 777);
            p1.Shutdown(SocketShutdown.Send);
            await close.WithTimeout();
        }

        // 2: forced close after the peer's FIN.
        (Socket p2, ManagedConnection c2) = await Loopback.CreateManagedServerAsync(new ManagedConnectionOptions { CloseWaitTimeout = TimeSpan.FromMilliseconds(50) });
        using (p2)
        {
            p2.Shutdown(SocketShutdown.Send);
            await c2.Completion.WithTimeout();
        }

        // 3: abort.
        (Socket p3, ManagedConnection c3) = await Loopback.CreateManagedServerAsync();
        using (p3)
        {
            c3.Abort();
        }

        Assert.Equal(3, opened.GetMeasurementSnapshot().EvaluateAsCounter());
        IReadOnlyList<CollectedMeasurement<long>> closes = closed.GetMeasurementSnapshot();
        Assert.Equal(3, closes.Count);
        Assert.Equal(1, closes.Count(m => m.ContainsTags(new KeyValuePair<string, object?>("outcome", "graceful"))));
        Assert.Equal(1, closes.Count(m => m.ContainsTags(new KeyValuePair<string, object?>("outcome", "close_wait_timed_out"))));
        Assert.Equal(1, closes.Count(m => m.ContainsTags(new KeyValuePair<string, object?>("outcome", "aborted"))));
        // OpenTelemetry's connection tags (no listener: no server.*), and error.type on every end but the graceful one.
        Assert.All(closes, m => Assert.True(m.ContainsTags(Tag("network.transport", "tcp"), Tag("network.type", "ipv4")), "network tags"));
        Assert.All(closes, m => Assert.False(m.Tags.ContainsKey("server.port"), "a connection without a listener has no server tags"));
        Assert.False(closes.Single(m => m.ContainsTags(new KeyValuePair<string, object?>("outcome", "graceful"))).Tags.ContainsKey("error.type"));
        Assert.Single(closes, m => m.ContainsTags(Tag("outcome", "aborted"), Tag("error.type", "aborted")));
        Assert.Single(closes, m => m.ContainsTags(Tag("outcome", "close_wait_timed_out"), Tag("error.type", "close_wait_timed_out")));
        Assert.Equal(1, forced.GetMeasurementSnapshot().EvaluateAsCounter());
        Assert.Equal(1, aborts.GetMeasurementSnapshot().EvaluateAsCounter());
        // Only the close that drained something records drained bytes (no zero measurements for the other two).
        Assert.Equal(777, Assert.Single(drained.GetMeasurementSnapshot()).Value);
        Assert.Equal(3, duration.GetMeasurementSnapshot().Count);
        Assert.All(duration.GetMeasurementSnapshot(), m => Assert.True(m.Tags.ContainsKey("outcome")));
        // Two connections saw the peer's FIN: the drained one (its close was already running) and the forced one.
        IReadOnlyList<CollectedMeasurement<double>> waits = finToClose.GetMeasurementSnapshot();
        Assert.Equal(2, waits.Count);
        Assert.True(waits.Max(m => m.Value) >= 0.04, "the forced close waited about CloseWaitTimeout after the peer's FIN");
    }

    [Fact]
    public async Task Metrics_CurrentConnectionsByState_FollowTransitions()
    {
        await WhenNoConnectionIsLiveAsync();
        using var current = new MetricCollector<long>(null, SafeSocketsMetrics.MeterName, SafeSocketsMetrics.ConnectionsCurrent);
        long Count(string state)
        {
            current.RecordObservableInstruments();
            return current.LastMeasurement is null ? 0 : current.GetMeasurementSnapshot()
                .Where(m => m.MatchesTags(new KeyValuePair<string, object?>("state", state)))
                .Last().Value;
        }

        long open0 = Count("open"), closeWait0 = Count("peer_shutdown"), draining0 = Count("draining"), sendShut0 = Count("send_shutdown");
        long bothShut0 = Count("both_shutdown");
        Assert.Equal("{connection}", current.Instrument?.Unit);
        Assert.Equal("Live connections by state.", current.Instrument?.Description);
        long live0 = SafeSockets.Diagnostics.Metrics.Live;
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync();
        using (peer)
        {
            Assert.Equal(open0 + 1, Count("open"));
            Assert.Equal(live0 + 1, SafeSockets.Diagnostics.Metrics.Live); // the sum over every state (the tests' quiet-process wait)
            peer.Shutdown(SocketShutdown.Send);
            await connection.PeerClosed.WhenCanceled().WithTimeout();
            Assert.Equal(open0, Count("open"));
            Assert.Equal(closeWait0 + 1, Count("peer_shutdown"));

            await connection.CloseAsync().WithTimeout();
            Assert.Equal(closeWait0, Count("peer_shutdown"));
            Assert.Equal(draining0, Count("draining"));
        }

        (Socket peer2, ManagedConnection connection2) = await Loopback.CreateManagedServerAsync();
        using (peer2)
        {
            await connection2.ShutdownSendAsync().WithTimeout();
            Assert.Equal(sendShut0 + 1, Count("send_shutdown"));
            Task<CloseResult> close = connection2.CloseAsync().AsTask();
            Assert.Equal(draining0 + 1, Count("draining"));
            peer2.Shutdown(SocketShutdown.Send);
            await close.WithTimeout();
            Assert.Equal(draining0, Count("draining"));
            Assert.Equal(sendShut0, Count("send_shutdown"));
        }

        // Both directions shut down, nobody closing yet.
        (Socket peer3, ManagedConnection connection3) = await Loopback.CreateManagedServerAsync();
        using (peer3)
        {
            await connection3.ShutdownSendAsync().WithTimeout();
            peer3.Shutdown(SocketShutdown.Send);
            await connection3.PeerClosed.WhenCanceled().WithTimeout();
            Assert.Equal(ConnectionState.BothShutdown, connection3.State);
            Assert.Equal(bothShut0 + 1, Count("both_shutdown"));
            Assert.Equal(sendShut0, Count("send_shutdown"));
            await connection3.CloseAsync().WithTimeout();
            Assert.Equal(bothShut0, Count("both_shutdown"));
        }

        await WhenNoConnectionIsLiveAsync();
    }

    [Fact]
    public async Task Metrics_ListenerDrainBudgetAndRejections_AreCounted()
    {
        using var cut = new MetricCollector<long>(null, SafeSocketsMetrics.MeterName, SafeSocketsMetrics.DrainsCutShort);
        using var rejected = new MetricCollector<long>(null, SafeSocketsMetrics.MeterName, SafeSocketsMetrics.ConnectionsRejected);
        var logs = new ListLogger();
        var options = new ManagedListenerOptions
        {
            MaxDrainingConnections = 0,
            MaxConnections = 1,
            Connection = new ManagedConnectionOptions { Logger = logs },
        };
        await using ManagedListener listener = ManagedListener.Start(new IPEndPoint(IPAddress.Loopback, 0), options);
        using var a = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        await a.ConnectAsync(listener.LocalEndPoint).WithTimeout();
        ManagedConnection first = await listener.AcceptAsync().WithTimeout();

        Task<ManagedConnection> pending = listener.AcceptAsync().AsTask();
        using var b = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        await b.ConnectAsync(listener.LocalEndPoint).WithTimeout();
        Assert.Equal(PeerEnd.Fin, (await Peer.ReadToEndAsync(b).WithTimeout()).End);

        Assert.Equal(CloseOutcome.DrainBudgetExceeded, (await first.CloseAsync().WithTimeout()).Outcome);
        Assert.True(cut.GetMeasurementSnapshot().EvaluateAsCounter() >= 1);
        Assert.Equal(1, rejected.GetMeasurementSnapshot().EvaluateAsCounter());
        Assert.Contains(logs.Events, e => e.Id == 5 && e.Level == LogLevel.Warning);
        Assert.Contains(logs.Events, e => e.Id == 6);
        Assert.False(pending.IsCompleted);
    }

    [Fact]
    public async Task Logs_ForcedCloseResetAndAbort_AreReported_AndSilentByDefault()
    {
        var logs = new ListLogger();
        (Socket p1, ManagedConnection c1) = await Loopback.CreateManagedServerAsync(new ManagedConnectionOptions { Logger = logs, CloseWaitTimeout = TimeSpan.Zero });
        using (p1)
        {
            p1.Shutdown(SocketShutdown.Send);
            await c1.Completion.WithTimeout();
        }

        (Socket p2, ManagedConnection c2) = await Loopback.CreateManagedServerAsync(new ManagedConnectionOptions { Logger = logs });
        p2.LingerState = new LingerOption(true, 0);
        p2.Dispose();
        await c2.Completion.WithTimeout();

        (Socket p3, ManagedConnection c3) = await Loopback.CreateManagedServerAsync(new ManagedConnectionOptions { Logger = logs, DrainTimeout = TimeSpan.FromMilliseconds(50) });
        using (p3)
        {
            await c3.CloseAsync().WithTimeout();
            c3.Abort();
        }

        (Socket p4, ManagedConnection c4) = await Loopback.CreateManagedServerAsync(new ManagedConnectionOptions { Logger = logs });
        using (p4)
        {
            c4.Abort();
        }

        Assert.Contains(logs.Events, e => e.Id == 1 && e.Level == LogLevel.Warning && e.Message.Contains("CloseWaitTimeout", StringComparison.Ordinal));
        Assert.Contains(logs.Events, e => e.Id == 4);
        Assert.Contains(logs.Events, e => e.Id == 2 && e.Message.Contains("DrainTimedOut", StringComparison.Ordinal));
        Assert.Contains(logs.Events, e => e.Id == 3);
        Assert.Same(Microsoft.Extensions.Logging.Abstractions.NullLogger.Instance, new ManagedConnectionOptions().Logger);
    }

    private sealed class ListLogger : ILogger
    {
        private readonly List<(int Id, LogLevel Level, string Message)> _events = [];

        public IReadOnlyList<(int Id, LogLevel Level, string Message)> Events
        {
            get
            {
                lock (_events)
                {
                    return [.. _events];
                }
            }
        }

        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;

        public bool IsEnabled(LogLevel logLevel) => true;

        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
        {
            lock (_events)
            {
                _events.Add((eventId.Id, logLevel, formatter(state, exception)));
            }
        }
    }

    [Fact]
    public async Task Metrics_IdleTimeout_IsCountedWithItsOutcomeTag()
    {
        await WhenNoConnectionIsLiveAsync();
        using var closed = new MetricCollector<long>(null, SafeSocketsMetrics.MeterName, SafeSocketsMetrics.ConnectionsClosed);
        var clock = new Microsoft.Extensions.Time.Testing.FakeTimeProvider();
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync(new ManagedConnectionOptions { TimeProvider = clock, IdleTimeout = TimeSpan.FromSeconds(1) });
        using (peer)
        {
            clock.Advance(TimeSpan.FromSeconds(1));
            await Peer.ReadToEndAsync(peer).WithTimeout();
            peer.Shutdown(SocketShutdown.Send);
            Assert.Equal(CloseOutcome.IdleTimedOut, (await connection.Completion.WithTimeout()).Outcome);
        }

        // Completion completes only after the end is counted.
        Assert.Single(closed.GetMeasurementSnapshot(), m => m.ContainsTags(new KeyValuePair<string, object?>("outcome", "idle_timed_out")));
    }

    /// <summary>The meter is process-wide: connections that other tests left closing (a guard, a drain) would be counted
    /// here. Every one ends within its bounds, so wait until none is live (a test that leaks one fails this wait).</summary>
    private static Task WhenNoConnectionIsLiveAsync() =>
        TestTimeouts.WaitUntilAsync(() => SafeSockets.Diagnostics.Metrics.Live == 0, "no connection of earlier tests is live");
}
