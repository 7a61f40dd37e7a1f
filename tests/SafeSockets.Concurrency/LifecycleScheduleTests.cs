using Microsoft.Coyote.Specifications;
using Xunit.Abstractions;
using CoyoteRandom = Microsoft.Coyote.Random.Generator;

namespace SafeSockets.Concurrency;

/// <summary>Concurrent parties on one <see cref="ModelConnection"/>, every schedule Coyote can reach; the invariants of
/// <see cref="Invariants"/> (and the model's own assertions) must hold in each.</summary>
public sealed class LifecycleScheduleTests(ITestOutputHelper output)
{
    [Fact]
    public void Two_closes_and_an_abort()
    {
        CoyoteRunner.AssertNoBug(
            async () =>
            {
                var c = new ModelConnection();
                Task<CloseResult> first = Task.Run(c.CloseAsync);
                Task<CloseResult> second = Task.Run(c.CloseAsync);
                Task abort = Task.Run(c.Abort);
                await Controlled.All(first, second, abort);
                await Invariants.CheckAsync(c, teardownExpected: true);
            },
            output);
    }

    [Fact]
    public void Close_dispose_and_the_peer_fin_with_the_close_wait_guard()
    {
        CoyoteRunner.AssertNoBug(
            async () =>
            {
                var c = new ModelConnection();
                Task<CloseResult> close = Task.Run(c.CloseAsync);
                Task peer = Task.Run(() => c.PeerFin(guardFires: true));
                Task dispose = Task.Run(c.DisposeAsync);
                await Controlled.All(close, peer, dispose);
                await Invariants.CheckAsync(c, teardownExpected: true);
                Specification.Assert(
                    close.Result.Outcome is CloseOutcome.Graceful or CloseOutcome.CloseWaitTimedOut or CloseOutcome.DrainTimedOut or CloseOutcome.AlreadyClosed,
                    "Unexpected outcome {0}.",
                    close.Result.Outcome);
            },
            output);
    }

    [Fact]
    public void The_guard_closes_by_itself_while_the_application_sends_and_disposes()
    {
        CoyoteRunner.AssertNoBug(
            async () =>
            {
                var c = new ModelConnection();
                Task peer = Task.Run(() => c.PeerFin(guardFires: true));
                Task<SendResult> send = Task.Run(() => c.SendAsync());
                Task<HalfCloseResult> halfClose = Task.Run(() => c.ShutdownSendAsync());
                await Controlled.All(peer, send, halfClose);

                // The guard's teardown may or may not have run: the creator's dispose ends it either way.
                await c.DisposeAsync();
                await Invariants.CheckAsync(c, teardownExpected: true);
            },
            output);
    }

    [Fact]
    public void Leases_released_concurrently_with_the_creators_dispose()
    {
        CoyoteRunner.AssertNoBug(
            async () =>
            {
                var c = new ModelConnection();
                Task lease1 = Task.Run(() => HoldLeaseAsync(c));
                Task lease2 = Task.Run(() => HoldLeaseAsync(c));
                Task dispose = Task.Run(c.DisposeAsync);
                await Controlled.All(lease1, lease2, dispose);
                Specification.Assert(c.Lifecycle.LeaseCount == 0, "{0} references left after every owner let go.", c.Lifecycle.LeaseCount);
                Specification.Assert(c.Acquire() is null, "A lease was acquired after the last owner let go.");
                await Invariants.CheckAsync(c, teardownExpected: true);
                Specification.Assert(c.Lifecycle.Result?.Outcome != CloseOutcome.Aborted, "The last release closed abortively.");
            },
            output);
    }

    [Fact]
    public void Leases_dispose_and_abort()
    {
        CoyoteRunner.AssertNoBug(
            async () =>
            {
                var c = new ModelConnection();
                Task lease = Task.Run(() => HoldLeaseAsync(c));
                Task dispose = Task.Run(c.DisposeAsync);
                Task abort = Task.Run(c.Abort);
                Task<CloseResult> close = Task.Run(c.CloseAsync);
                await Controlled.All(lease, dispose, abort, close);
                await Invariants.CheckAsync(c, teardownExpected: true);
            },
            output);
    }

    [Fact]
    public void Sends_a_half_close_and_a_close()
    {
        CoyoteRunner.AssertNoBug(
            async () =>
            {
                var c = new ModelConnection();
                Task<SendResult> send1 = Task.Run(() => c.SendAsync());
                Task<SendResult> send2 = Task.Run(() => c.SendAsync());
                Task<HalfCloseResult> halfClose = Task.Run(() => c.ShutdownSendAsync());
                Task<CloseResult> close = Task.Run(c.CloseAsync);
                await Controlled.All(send1, send2, halfClose, close);
                if (halfClose.Result == HalfCloseResult.FinSent)
                {
                    Specification.Assert(c.FinsSent == 1, "The half-close reported its FIN but {0} were sent.", c.FinsSent);
                }

                await Invariants.CheckAsync(c, teardownExpected: true);

                // Our FIN went out by Shutdown(Send), unless the half-close was granted it and found the socket released.
                Specification.Assert(c.FinsSent == 1 || halfClose.Result == HalfCloseResult.Closing, "A close sent {0} FINs (half-close: {1}).", c.FinsSent, halfClose.Result);
            },
            output);
    }

    [Fact]
    public void A_cancelled_half_close_sends_no_fin_and_sending_works_again()
    {
        CoyoteRunner.AssertNoBug(
            async () =>
            {
                var c = new ModelConnection();
                var hold = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                var cancel = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);

                // A send in flight (entered the gate), held until the half-close has given up.
                Task<SendResult> stuck = c.SendAsync(hold.Task);
                Task<HalfCloseResult> halfClose = Task.Run(() => c.ShutdownSendAsync(cancel.Task));
                Task<SendResult> other = Task.Run(() => c.SendAsync());
                Task canceller = Task.Run(cancel.SetResult);
                await Controlled.All(halfClose, canceller);
                Specification.Assert(halfClose.Result == HalfCloseResult.Cancelled, "The half-close returned {0} with a send still in flight.", halfClose.Result);

                hold.SetResult();
                await Controlled.All(stuck, other);
                Specification.Assert(stuck.Result == SendResult.Sent, "The held send returned {0}.", stuck.Result);
                Specification.Assert(c.FinsSent == 0, "A cancelled half-close sent a FIN.");
                Specification.Assert(!c.Lifecycle.SendShutdown, "A cancelled half-close marked the send side shut.");
                Specification.Assert(c.Gate.TryEnter(), "After a cancelled half-close (no other closer) the gate refuses sends.");
                c.Gate.Exit();
                Specification.Assert(await c.SendAsync() == SendResult.Sent, "A send after a cancelled half-close failed.");

                await c.CloseAsync();
                await Invariants.CheckAsync(c, teardownExpected: true);
            },
            output);
    }

    [Fact]
    public void A_cancelled_half_close_beside_a_pending_one_and_concurrent_sends()
    {
        CoyoteRunner.AssertNoBug(
            async () =>
            {
                var c = new ModelConnection();
                var hold = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                var cancel = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);

                Task<SendResult> stuck = c.SendAsync(hold.Task);
                Task<HalfCloseResult> cancelled = Task.Run(() => c.ShutdownSendAsync(cancel.Task));
                Task<HalfCloseResult> pending = Task.Run(() => c.ShutdownSendAsync());
                Task<SendResult> other = Task.Run(() => c.SendAsync());
                Task driver = Task.Run(async () =>
                {
                    cancel.SetResult();
                    await Task.Yield();
                    hold.SetResult();
                });
                await Controlled.All(stuck, cancelled, pending, other, driver);

                // The uncancelled half-close completes once the send in flight drains, and sends FIN (unless the
                // cancelled one got there first, having seen the drain before its cancellation).
                Specification.Assert(pending.Result is HalfCloseResult.FinSent or HalfCloseResult.AlreadyShut, "The pending half-close returned {0}.", pending.Result);
                Specification.Assert(c.FinsSent == 1 && c.Lifecycle.SendShutdown, "After a completed half-close: {0} FIN(s), send side shut: {1}.", c.FinsSent, c.Lifecycle.SendShutdown);
                Specification.Assert(!c.Gate.TryEnter(), "The gate lets sends in after our FIN.");
                await c.CloseAsync();
                await Invariants.CheckAsync(c, teardownExpected: true);
            },
            output);
    }

    [Fact]
    public void Concurrent_half_closes_all_complete_once_the_send_in_flight_drains()
    {
        CoyoteRunner.AssertNoBug(
            async () =>
            {
                var c = new ModelConnection();
                var hold = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                Task<SendResult> stuck = c.SendAsync(hold.Task);
                Task<HalfCloseResult> a = Task.Run(() => c.ShutdownSendAsync());
                Task<HalfCloseResult> b = Task.Run(() => c.ShutdownSendAsync());
                Task<HalfCloseResult> d = Task.Run(() => c.ShutdownSendAsync());
                Task release = Task.Run(hold.SetResult);
                await Controlled.All(stuck, a, b, d, release);
                int fins = 0;
                foreach (HalfCloseResult r in new[] { a.Result, b.Result, d.Result })
                {
                    Specification.Assert(r is HalfCloseResult.FinSent or HalfCloseResult.AlreadyShut, "A half-close returned {0}.", r);
                    fins += r == HalfCloseResult.FinSent ? 1 : 0;
                }

                Specification.Assert(fins == 1 && c.FinsSent == 1, "{0} half-closes reported the FIN, {1} were sent.", fins, c.FinsSent);
                Specification.Assert(stuck.Result == SendResult.Sent, "The send in flight returned {0}.", stuck.Result);
                await c.DisposeAsync();
                await Invariants.CheckAsync(c, teardownExpected: true);
            },
            output);
    }

    [Fact]
    public void Peer_reset_close_abort_and_a_send()
    {
        CoyoteRunner.AssertNoBug(
            async () =>
            {
                var c = new ModelConnection();
                Task reset = Task.Run(c.PeerReset);
                Task<CloseResult> close = Task.Run(c.CloseAsync);
                Task abort = Task.Run(c.Abort);
                Task<SendResult> send = Task.Run(() => c.SendAsync());
                await Controlled.All(reset, close, abort, send);
                await Invariants.CheckAsync(c, teardownExpected: true);
            },
            output);
    }

    [Fact]
    public void A_peer_reset_never_makes_us_reset()
    {
        CoyoteRunner.AssertNoBug(
            async () =>
            {
                var c = new ModelConnection();
                Task reset = Task.Run(c.PeerReset);
                Task<CloseResult> close = Task.Run(c.CloseAsync);
                Task<HalfCloseResult> halfClose = Task.Run(() => c.ShutdownSendAsync());
                await Controlled.All(reset, close, halfClose);
                await Invariants.CheckAsync(c, teardownExpected: true);
                Specification.Assert(c.LingerZeroDisposals == 0, "A peer's reset made us release with linger 0.");
                Specification.Assert(c.Lifecycle.State == ConnectionState.Closed, "State {0} after a peer's reset.", c.Lifecycle.State);
            },
            output);
    }

    [Fact]
    public void Drain_bound_peer_fin_and_close()
    {
        CoyoteRunner.AssertNoBug(
            async () =>
            {
                var c = new ModelConnection(scheduleDrainBound: false);
                Task<CloseResult> close = Task.Run(c.CloseAsync);
                Task fin = Task.Run(() => c.PeerFin());
                Task bound = Task.Run(c.DrainBoundFires);
                await Controlled.All(close, fin, bound);
                await Invariants.CheckAsync(c, teardownExpected: true);
                Specification.Assert(
                    close.Result.Outcome is CloseOutcome.Graceful or CloseOutcome.DrainTimedOut,
                    "Outcome {0} for a close that only saw a FIN or a bound.",
                    close.Result.Outcome);
            },
            output);
    }

    [Fact]
    public void Flush_bound_fires_while_a_send_is_stuck()
    {
        CoyoteRunner.AssertNoBug(
            async () =>
            {
                var c = new ModelConnection();
                var hold = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                Task<SendResult> stuck = c.SendAsync(hold.Task);
                Task<CloseResult> close = Task.Run(c.CloseAsync);
                Task flushBound = Task.Run(c.FlushBoundFires);
                Task release = Task.Run(async () =>
                {
                    await Task.Yield();
                    hold.SetResult();
                });
                Task abort = Task.Run(c.Abort);
                await Controlled.All(stuck, close, flushBound, release, abort);
                await Invariants.CheckAsync(c, teardownExpected: true);
            },
            output);
    }

    /// <summary>Four parties, each drawing its action from the whole menu (Coyote explores the draws as well as the schedule).</summary>
    [Fact]
    public void Any_four_parties()
    {
        CoyoteRunner.AssertNoBug(
            async () =>
            {
                var c = new ModelConnection();
                CoyoteRandom random = CoyoteRandom.Create();
                int[] picks = [random.NextInteger(10), random.NextInteger(10), random.NextInteger(10), random.NextInteger(10)];
                var cancel = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                var parties = new Task[picks.Length];
                for (int i = 0; i < picks.Length; i++)
                {
                    int pick = picks[i];
                    parties[i] = Task.Run(() => ActAsync(c, pick, cancel));
                }

                await Task.WhenAll(parties);

                // The creator lets go at the end unless a party did: every scenario ends in a teardown.
                await c.DisposeAsync();
                await Invariants.CheckAsync(c, teardownExpected: true);
            },
            output);
    }

    private static async Task ActAsync(ModelConnection c, int pick, TaskCompletionSource cancel)
    {
        switch (pick)
        {
            case 0:
                await c.CloseAsync();
                break;
            case 1:
                c.Abort();
                break;
            case 2:
                await c.DisposeAsync();
                break;
            case 3:
                await HoldLeaseAsync(c);
                break;
            case 4:
                await c.SendAsync();
                break;
            case 5:
                await c.ShutdownSendAsync();
                break;
            case 6:
                Task<HalfCloseResult> halfClose = c.ShutdownSendAsync(cancel.Task);
                cancel.TrySetResult();
                await halfClose;
                break;
            case 7:
                c.PeerFin(guardFires: true);
                break;
            case 8:
                c.PeerReset();
                break;
            default:
                c.DrainBoundFires();
                break;
        }
    }

    private static async Task HoldLeaseAsync(ModelConnection c)
    {
        ModelLease? lease = c.Acquire();
        if (lease is null)
        {
            Specification.Assert(c.Lifecycle.IsTearingDown || c.Lifecycle.LeaseCount == 0, "Acquire failed on a live connection.");
            return;
        }

        await Task.Yield();
        await lease.DisposeAsync();
        await lease.DisposeAsync(); // a second release does nothing
    }
}
