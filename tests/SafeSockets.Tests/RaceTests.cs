using System.Net.Sockets;
using Microsoft.Extensions.Time.Testing;
using SafeSockets.Diagnostics;
using SafeSockets.Tests.Infrastructure;

namespace SafeSockets.Tests;

/// <summary>Bounded stress loops for the races between the peer, the CLOSE_WAIT guard and the application.</summary>
public sealed class RaceTests
{
    // The two ends of a race between the application's close and the CLOSE_WAIT guard: both close with FIN.
    private static readonly CloseOutcome[] s_finOutcomes = [CloseOutcome.Graceful, CloseOutcome.CloseWaitTimedOut];

    [Fact]
    public async Task PeerFinArrivingWhileTheApplicationCloses_EndsGracefullyOnce()
    {
        for (int round = 0; round < 200; round++)
        {
            (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync(new ManagedConnectionOptions { CloseWaitTimeout = TimeSpan.Zero });
            using (peer)
            {
                var start = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                Task fin = Task.Run(async () => { await start.Task; peer.Shutdown(SocketShutdown.Send); });
                Task<CloseResult> close = Task.Run(async () => { await start.Task; return await connection.CloseAsync(); });
                start.SetResult();
                await fin.WithTimeout();
                CloseResult result = await close.WithTimeout();

                // Either the application's close or the guard (CloseWaitTimeout 0) won; both end with FIN. Whichever won,
                // the application's first CloseAsync reports exactly the end Completion records (never a default result:
                // a real close on the system clock takes time).
                CloseResult final = await connection.Completion.WithTimeout();
                Assert.True(result == final, $"round {round}: CloseAsync said {result}, Completion {final}");
                Assert.True(final.Elapsed > TimeSpan.Zero, $"round {round}: {final}");
                Assert.Contains(final.Outcome, s_finOutcomes);
                Assert.Equal(PeerEnd.Fin, (await Peer.ReadToEndAsync(peer).WithTimeout()).End);
                Assert.Equal(1, connection.ReleaseCount);
                Assert.Equal(ConnectionState.Closed, connection.State);
            }
        }
    }

    [Fact]
    public async Task GuardTimerFiringAtTheMomentOfTheApplicationsClose_ReleasesOnce()
    {
        for (int round = 0; round < 100; round++)
        {
            (FakeTimeProvider clock, Socket peer, ManagedConnection connection) = await PeerFinishedAsync();
            using (peer)
            {
                // The guard's deadline and the application's close, released together.
                var start = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                Task fire = Task.Run(async () => { await start.Task; clock.Advance(TimeSpan.FromSeconds(1)); });
                Task<CloseResult> close = Task.Run(async () => { await start.Task; return await connection.CloseAsync(); });
                start.SetResult();
                await fire.WithTimeout();
                CloseResult result = await close.WithTimeout();

                // The guard's close or the application's: the application's first CloseAsync reports exactly Completion's result.
                CloseResult final = await connection.Completion.WithTimeout();
                Assert.True(result == final, $"round {round}: close said {result}, connection ended {final}");
                Assert.Contains(final.Outcome, s_finOutcomes);
                Assert.Equal(PeerEnd.Fin, (await Peer.ReadToEndAsync(peer).WithTimeout()).End);
                Assert.Equal(1, connection.ReleaseCount);
            }
        }
    }

    [Fact]
    public async Task GuardReadingTheKernelJustAfterTheApplicationsFin_DoesNotTakeTheEndOfBothSidesForAReset()
    {
        // The window the test above hits about once in ten runs, held open: the guard has looked at our send side (still
        // open), then the application sends its FIN and both FINs are acknowledged (TCP_CLOSE, as after a reset), then the
        // guard reads the kernel's view. It must look at our send side again and not call that PeerReset.
        if (!OperatingSystem.IsLinux())
        {
            return; // the guard reads the kernel's view (TCP_INFO) on Linux only; CI runs on Linux
        }

        (FakeTimeProvider clock, Socket peer, ManagedConnection connection) = await PeerFinishedAsync();
        using (peer)
        {
            int calls = 0;
            bool reachedClose = false;
            void OurFinInTheWindow(ManagedConnection guarded)
            {
                if (!ReferenceEquals(guarded, connection) || calls++ > 0)
                {
                    return;
                }

                Assert.True(connection.ShutdownSendAsync().AsTask().Wait(TestTimeouts.Passing), "the half-close did not finish");
                reachedClose = SpinWait.SpinUntil(() => connection.GetKernelInfo().State == TcpState.Close, TestTimeouts.Passing);
            }

            ManagedConnection.BeforeGuardReadsKernelForTest = OurFinInTheWindow;
            try
            {
                clock.Advance(TimeSpan.FromSeconds(1)); // the guard runs on this thread (a fake clock's timer)
            }
            finally
            {
                ManagedConnection.BeforeGuardReadsKernelForTest = null;
            }

            Assert.Equal(1, calls);
            Assert.True(reachedClose, "both FINs were not acknowledged (TCP_CLOSE) in time");
            CloseResult result = await connection.Completion.WithTimeout();
            Assert.Equal(CloseOutcome.CloseWaitTimedOut, result.Outcome);
            Assert.Equal(PeerEnd.Fin, (await Peer.ReadToEndAsync(peer).WithTimeout()).End);
            Assert.Equal(1, connection.ReleaseCount);
        }
    }

    [Fact]
    public async Task GuardWithAFakeClock_FiresExactlyAtCloseWaitTimeout()
    {
        var clock = new FakeTimeProvider();
        var options = new ManagedConnectionOptions { TimeProvider = clock, CloseWaitTimeout = TimeSpan.FromSeconds(30) };
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync(options);
        using (peer)
        {
            peer.Shutdown(SocketShutdown.Send);
            await connection.PeerClosed.WhenCanceled().WithTimeout();

            clock.Advance(TimeSpan.FromSeconds(29));
            Assert.False(connection.Completion.IsCompleted);
            Assert.Equal(ConnectionState.PeerShutdown, connection.State);

            clock.Advance(TimeSpan.FromSeconds(1));
            Assert.Equal(CloseOutcome.CloseWaitTimedOut, (await connection.Completion.WithTimeout()).Outcome);
        }
    }

    [Fact]
    public async Task StressedTeardownPaths_LeaveNoUnobservedTaskException()
    {
        int unobserved = 0;
        void OnUnobserved(object? sender, UnobservedTaskExceptionEventArgs e) => Interlocked.Increment(ref unobserved);
        TaskScheduler.UnobservedTaskException += OnUnobserved;
        try
        {
            for (int round = 0; round < 100; round++)
            {
                (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync(new ManagedConnectionOptions { CloseWaitTimeout = TimeSpan.Zero });
                Task send = connection.SendAsync(new byte[256 * 1024]).AsTask();
                switch (round % 4)
                {
                    case 0:
                        peer.LingerState = new LingerOption(true, 0);
                        peer.Dispose();
                        break;
                    case 1:
                        connection.Abort();
                        peer.Dispose();
                        break;
                    case 2:
                        peer.Shutdown(SocketShutdown.Send);
                        await Peer.ReadToEndAsync(peer).WithTimeout();
                        peer.Dispose();
                        break;
                    default:
                        _ = connection.CloseAsync().AsTask();
                        connection.Abort();
                        peer.Dispose();
                        break;
                }

                await Record.ExceptionAsync(() => send.WithTimeout());
                await connection.Completion.WithTimeout();
            }

            GC.Collect();
            GC.WaitForPendingFinalizers();
            GC.Collect();
            Assert.Equal(0, Volatile.Read(ref unobserved));
        }
        finally
        {
            TaskScheduler.UnobservedTaskException -= OnUnobserved;
        }
    }

    [Fact]
    public async Task EveryTeardownCallFromSeveralThreadsAtRandom_ThousandsOfRounds_ReleaseOnceNoHang()
    {
        var random = new Random(20261126);
        for (int round = 0; round < 2000; round++)
        {
            (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync(new ManagedConnectionOptions { DrainTimeout = TimeSpan.FromSeconds(10) });
            using (peer)
            {
                peer.Shutdown(SocketShutdown.Send);
                ConnectionLease lease = connection.Acquire();
                Func<Task>[] calls =
                [
                    async () => await connection.CloseAsync(),
                    async () => await connection.DisposeAsync(),
                    async () => await lease.DisposeAsync(),
                    async () => await connection.ShutdownSendAsync(),
                    () => { connection.Abort(); return Task.CompletedTask; },
                ];

                // A random subset, in a random order, released together; the close must always happen.
                int[] order = [.. Enumerable.Range(0, calls.Length).OrderBy(_ => random.Next())];
                int take = random.Next(1, calls.Length + 1);
                if (!order.Take(take).Any(i => i is 0 or 4))
                {
                    order = [0, .. order];
                    take++;
                }

                var start = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                Task[] running = [.. order.Take(take).Select(i => Task.Run(async () =>
                {
                    await start.Task;
                    if (i != 3)
                    {
                        await calls[i]();
                        return;
                    }

                    // Only ShutdownSendAsync may fail here, and only because the close began first (the documented answer);
                    // every other teardown call must succeed.
                    Exception? error = await Record.ExceptionAsync(calls[i]);
                    if (error is not null)
                    {
                        Assert.IsType<ObjectDisposedException>(error);
                        Assert.NotEqual(ConnectionState.Open, connection.State);
                    }
                }))];
                start.SetResult();
                await Task.WhenAll(running).WithTimeout();

                CloseOutcome outcome = (await connection.Completion.WithTimeout()).Outcome;
                ConnectionState state = connection.State;
                bool aborted = order.Take(take).Contains(4);
                if (!aborted)
                {
                    // No Abort among the calls and the peer had closed its side: the one right end is graceful.
                    Assert.True(outcome == CloseOutcome.Graceful, $"round {round}: {outcome}");
                }

                Assert.Equal(1, connection.ReleaseCount);
                Assert.True((state == ConnectionState.Aborted) == (outcome == CloseOutcome.Aborted), $"round {round}: State {state}, outcome {outcome}");
                Assert.True((state == ConnectionState.Closed) == (outcome != CloseOutcome.Aborted), $"round {round}: State {state}, outcome {outcome}");
                await lease.DisposeAsync();
            }
        }
    }

    /// <summary>A server connection on a fake clock (CloseWaitTimeout 1 s) whose peer has sent its FIN, seen by the connection.</summary>
    private static async Task<(FakeTimeProvider Clock, Socket Peer, ManagedConnection Connection)> PeerFinishedAsync()
    {
        var clock = new FakeTimeProvider();
        var options = new ManagedConnectionOptions { TimeProvider = clock, CloseWaitTimeout = TimeSpan.FromSeconds(1) };
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync(options);
        peer.Shutdown(SocketShutdown.Send);
        await connection.PeerClosed.WhenCanceled().WithTimeout();
        return (clock, peer, connection);
    }
}
