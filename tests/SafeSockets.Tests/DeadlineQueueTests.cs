using Microsoft.Extensions.Time.Testing;
using SafeSockets.Internal;
using SafeSockets.Tests.Infrastructure;

namespace SafeSockets.Tests;

/// <summary>The shared timer queue behind drain bounds and the CLOSE_WAIT guard: order, removal, moves, re-arming from a callback.</summary>
public sealed class DeadlineQueueTests
{
    [Fact]
    public void DeadlinesFireInOrder_OnlyOnce_AndNeverAfterCancel()
    {
        var clock = new FakeTimeProvider();
        DeadlineQueue queue = DeadlineQueue.For(clock);
        var random = new Random(1234);
        var fired = new List<(Owner Owner, long At)>();
        var owners = new List<Owner>();
        for (int i = 0; i < 500; i++)
        {
            var owner = new Owner(clock, fired);
            owners.Add(owner);
            queue.Schedule(owner, Ticks(clock, random.Next(1, 10_000)), DeadlinePurpose.None);
        }

        // Move some later, some earlier, cancel some: the heap must stay ordered through every kind of change.
        var cancelled = new HashSet<Owner>();
        foreach (Owner owner in owners.Where((_, i) => i % 3 == 0))
        {
            queue.Schedule(owner, Ticks(clock, random.Next(1, 10_000)), DeadlinePurpose.None);
        }

        foreach (Owner owner in owners.Where((_, i) => i % 5 == 1))
        {
            queue.Cancel(owner);
            cancelled.Add(owner);
        }

        Assert.Equal(owners.Count - cancelled.Count, queue.Count);
        for (int ms = 0; ms < 10_000; ms += 7)
        {
            clock.Advance(TimeSpan.FromMilliseconds(7));
        }

        Assert.Equal(0, queue.Count);
        Assert.Equal(owners.Count - cancelled.Count, fired.Count);
        Assert.DoesNotContain(fired, f => cancelled.Contains(f.Owner));
        Assert.Equal(fired.Count, fired.Select(f => f.Owner).Distinct().Count());
        Assert.All(fired, f => Assert.True(f.At >= f.Owner.LastDue, "fired before its due time"));
        Assert.Equal(fired.Select(f => f.Owner.LastDue).Order(), fired.Select(f => f.Owner.LastDue));
        Assert.All(owners, o => Assert.Equal(-1, ((IDeadlineOwner)o).DeadlineIndex));
    }

    [Fact]
    public void AnOwnerMayScheduleItsNextDeadlineFromTheCallback()
    {
        var clock = new FakeTimeProvider();
        DeadlineQueue queue = DeadlineQueue.For(clock);
        var fired = new List<(Owner Owner, long At)>();
        var periodic = new Owner(clock, fired) { Reschedule = TimeSpan.FromMilliseconds(250), Remaining = 3 };
        queue.Schedule(periodic, Ticks(clock, 250), DeadlinePurpose.None);

        clock.Advance(TimeSpan.FromMilliseconds(249));
        Assert.Empty(fired);
        clock.Advance(TimeSpan.FromMilliseconds(1));
        Assert.Single(fired);
        clock.Advance(TimeSpan.FromMilliseconds(250));
        clock.Advance(TimeSpan.FromMilliseconds(250));
        clock.Advance(TimeSpan.FromMilliseconds(250));
        Assert.Equal(4, fired.Count);
        Assert.Equal(0, queue.Count);

        // A deadline already in the past fires on the next timer callback, not never.
        var late = new Owner(clock, fired);
        queue.Schedule(late, clock.GetTimestamp() - 1, DeadlinePurpose.None);
        clock.Advance(TimeSpan.Zero);
        Assert.Equal(5, fired.Count);
    }

    [Fact]
    public async Task OnTheSystemClock_DeadlinesFire_NeverEarly_AndCancelledOnesNever()
    {
        // The system clock's queue (shared with every connection in the process): .NET timers may fire a few milliseconds
        // early, and a deadline must still never run before its time.
        TimeProvider clock = TimeProvider.System;
        DeadlineQueue queue = DeadlineQueue.For(clock);
        long start = clock.GetTimestamp();
        long At(int milliseconds) => start + (milliseconds * clock.TimestampFrequency / 1000);

        // Cancelled ones are due at 200 ms, long after they are cancelled (microseconds from now) and before the last
        // expected ones (250 ms), so by the end their time has passed: had the cancel not taken, they would have fired.
        var expected = new List<SystemOwner>();
        var cancelled = new List<SystemOwner>();
        for (int i = 0; i < 40; i++)
        {
            var owner = new SystemOwner(clock);
            if (i % 4 == 0)
            {
                cancelled.Add(owner);
                queue.Schedule(owner, At(200), DeadlinePurpose.None);
            }
            else
            {
                expected.Add(owner);
                queue.Schedule(owner, At(i % 8 == 1 ? 250 : 5 + (i * 7 % 40)), DeadlinePurpose.None);
            }
        }

        cancelled.ForEach(queue.Cancel);

        // A later, earlier-due deadline must re-arm the timer.
        var early = new SystemOwner(clock);
        expected.Add(early);
        queue.Schedule(early, At(1), DeadlinePurpose.None);

        await Task.WhenAll(expected.Select(o => o.Fired.Task)).WithTimeout();
        Assert.True(clock.GetTimestamp() > At(200));
        Assert.All(expected, o => Assert.True(o.Fired.Task.Result >= o.Due, "fired before its due time"));
        Assert.All(cancelled, o => Assert.False(o.Fired.Task.IsCompleted, "a cancelled deadline fired"));
        Assert.All(expected, o => Assert.Equal(-1, ((IDeadlineOwner)o).DeadlineIndex));
    }

    [Fact]
    public async Task OnTheSystemClock_AnEarlierDeadlineWakesTheSleepingWaiter()
    {
        // A queue of its own, so no other test's deadlines wake its waiter and hide a missing wake-up.
        DeadlineQueue queue = DeadlineQueue.CreateSystemForTest();
        TimeProvider clock = TimeProvider.System;
        var far = new SystemOwner(clock);
        queue.Schedule(far, clock.GetTimestamp() + (600 * clock.TimestampFrequency), DeadlinePurpose.None);
        Assert.True(
            SpinWait.SpinUntil(() => queue.WaiterAsleepFor == far.Due, TestTimeouts.Passing),
            "the waiter never went to sleep for the far deadline");

        // Due in 20 ms; without a wake-up it would run ten minutes from now, long after the test's timeout.
        var near = new SystemOwner(clock);
        queue.Schedule(near, clock.GetTimestamp() + (clock.TimestampFrequency / 50), DeadlinePurpose.None);
        long fired = await near.Fired.Task.WithTimeout();
        Assert.True(fired >= near.Due, "fired before its due time");

        queue.Cancel(far);
        Assert.Equal(0, queue.Count);
        Assert.False(far.Fired.Task.IsCompleted);
    }

    [Fact]
    public async Task OnTheSystemClock_DeadlinesUnderAMillisecondApart_AllFire_NoneEarly()
    {
        // The waiter sleeps the last fraction of a millisecond outside its lock (PreciseSleep): deadlines scheduled
        // meanwhile, earlier or later, sub-millisecond apart, must still all run, each at or after its due time.
        DeadlineQueue queue = DeadlineQueue.CreateSystemForTest();
        TimeProvider clock = TimeProvider.System;
        long tenthOfAMillisecond = clock.TimestampFrequency / 10_000;
        var owners = new List<SystemOwner>();
        for (int round = 0; round < 20; round++)
        {
            long now = clock.GetTimestamp();
            foreach (int tenths in new[] { 9, 3, 6, 1, 12, 4 })
            {
                var owner = new SystemOwner(clock);
                owners.Add(owner);
                queue.Schedule(owner, now + (tenths * tenthOfAMillisecond), DeadlinePurpose.None);
            }

            await Task.WhenAll(owners.Select(o => o.Fired.Task)).WithTimeout();
        }

        Assert.All(owners, o => Assert.True(o.Fired.Task.Result >= o.Due, "fired before its due time"));
        Assert.Equal(0, queue.Count);

        // And it slept: a waiter that spun through the last fraction of a millisecond would look at the heap thousands
        // of times per deadline (not a time bound: a count, the same on a loaded machine).
        Assert.True(queue.WaiterPassesForTest < 20 * owners.Count, $"the waiter looked {queue.WaiterPassesForTest} times for {owners.Count} deadlines");
    }

    [Theory]
    [InlineData(0)]
    [InlineData(50)]
    [InlineData(300)]
    [InlineData(900)]
    [InlineData(2500)]
    public void PreciseSleep_SleepsAtLeastUntilTheTimeItIsGiven(int microseconds)
    {
        long ticks = microseconds * System.Diagnostics.Stopwatch.Frequency / 1_000_000;
        long start = System.Diagnostics.Stopwatch.GetTimestamp();
        PreciseSleep.Until(start + ticks);
        long slept = System.Diagnostics.Stopwatch.GetTimestamp() - start;

        // Never shorter (a signal ends nanosleep early: it sleeps again for the rest); how much longer is the machine's
        // business (benchmarks, not tests).
        Assert.True(slept >= ticks, $"slept {slept} ticks for {ticks}");
    }

    [Fact]
    public void PreciseSleep_IsSupportedOnLinuxAndMacOS()
    {
        // A failed probe falls back to whole milliseconds, which every other test accepts (never early): only this one
        // notices that deadlines went back to running up to 1 ms late.
        Assert.Equal(OperatingSystem.IsLinux() || OperatingSystem.IsMacOS(), PreciseSleep.IsSupported);
    }

    [Fact]
    public async Task OnTheSystemClock_DeadlinesCancelledWithinMicroseconds_DoNotWakeTheWaiterEachTime()
    {
        // Short connections one at a time: each schedules a guard or drain bound (250 ms and more away) and cancels it
        // within microseconds, when it closes. A waiter that went idle with nothing to wait for was woken by every such
        // schedule, found the heap empty again, and went idle again: a wake-up and two context switches per connection.
        TimeProvider clock = TimeProvider.System;
        DeadlineQueue queue = await IdleSystemQueueAsync();

        long before = queue.WaiterPassesForTest;
        long start = clock.GetTimestamp();
        var owner = new SystemOwner(clock);
        for (int connection = 0; connection < 50; connection++)
        {
            long passes = queue.WaiterPassesForTest;
            // Cancelled before the waiter can look (the connection closed before a woken waiter got a core).
            queue.UnderLockForTest(() =>
            {
                queue.Schedule(owner, clock.GetTimestamp() + (clock.TimestampFrequency * 3 / 10), DeadlinePurpose.CloseWaitGuard);
                queue.Cancel(owner);
            });

            // Time for a woken waiter to look (a count is asserted below, not this wait): a connection's lifetime or so.
            SpinWait.SpinUntil(() => queue.WaiterPassesForTest != passes, TimeSpan.FromMilliseconds(20));
        }

        // It still wakes at its horizon (every 250 ms) while idle: those looks are allowed, one per deadline is not.
        long looks = queue.WaiterPassesForTest - before;
        long allowed = 2 + ((long)clock.GetElapsedTime(start).TotalMilliseconds / 250);
        Assert.True(looks <= allowed, $"the waiter looked at the heap {looks} times for 50 deadlines that were all cancelled (allowed {allowed})");
        Assert.False(owner.Fired.Task.IsCompleted);
    }

    [Fact]
    public async Task OnTheSystemClock_AnIdleWaiter_IsWokenByADeadlineDueBeforeItsHorizon()
    {
        // Due in 150 ms, before the idle waiter's horizon (250 ms): it must be woken and sleep for this deadline, not sleep
        // on to its horizon and run it up to 100 ms late. Seeing it asleep for the deadline takes this thread to look
        // within those 150 ms: a machine that stalls it longer gets another try (a waiter never woken fails all three).
        TimeProvider clock = TimeProvider.System;
        bool sawItArmed = false;
        for (int attempt = 0; attempt < 3 && !sawItArmed; attempt++)
        {
            DeadlineQueue queue = await IdleSystemQueueAsync();
            var near = new SystemOwner(clock);
            queue.Schedule(near, clock.GetTimestamp() + (clock.TimestampFrequency * 15 / 100), DeadlinePurpose.None);
            Assert.True(
                SpinWait.SpinUntil(() => (sawItArmed |= queue.WaiterAsleepFor == near.Due) || near.Fired.Task.IsCompleted, TestTimeouts.Passing),
                "the deadline never ran");
            Assert.True(await near.Fired.Task.WithTimeout() >= near.Due, "fired before its due time");
        }

        Assert.True(sawItArmed, "the idle waiter was not woken to sleep for the earlier deadline");
    }

    [Fact]
    public async Task OnTheSystemClock_AQueueInUse_KeepsItsWaiter_EvenIfEveryDeadlineIsCancelledBeforeItLooks()
    {
        // Deadlines scheduled and cancelled between two of the waiter's looks are use all the same: its thread must not
        // end (and be started again by the next Schedule, on a connection's thread) as if the queue were idle.
        DeadlineQueue queue = DeadlineQueue.CreateSystemForTest(idleExitMilliseconds: 600);
        TimeProvider clock = TimeProvider.System;
        var owner = new SystemOwner(clock);
        long start = clock.GetTimestamp();
        long last = start;
        int longGaps = 0;
        while (clock.GetElapsedTime(start) < TimeSpan.FromSeconds(2))
        {
            queue.UnderLockForTest(() =>
            {
                queue.Schedule(owner, clock.GetTimestamp() + clock.TimestampFrequency, DeadlinePurpose.CloseWaitGuard);
                queue.Cancel(owner);
            });

            // A machine that stalled this loop for about the idle exit lets a correct queue end its thread: allowed.
            longGaps += clock.GetElapsedTime(last) >= TimeSpan.FromMilliseconds(550) ? 1 : 0;
            last = clock.GetTimestamp();
            await Task.Delay(10); // the pace of the connections, not a wait for anything
        }

        Assert.True(queue.WaitersStartedForTest <= 1 + longGaps, $"{queue.WaitersStartedForTest} waiter threads started, {longGaps} pauses as long as the idle exit");
        Assert.True(queue.WaitersStartedForTest >= 1);
        Assert.False(owner.Fired.Task.IsCompleted);
    }

    [Fact]
    public async Task OnTheSystemClock_AnIdleWaiterEnds_AndTheNextDeadlineStartsAnother()
    {
        DeadlineQueue queue = DeadlineQueue.CreateSystemForTest(idleExitMilliseconds: 50);
        TimeProvider clock = TimeProvider.System;
        for (int round = 0; round < 3; round++)
        {
            var owner = new SystemOwner(clock);
            queue.Schedule(owner, clock.GetTimestamp() + (clock.TimestampFrequency / 100), DeadlinePurpose.None);
            Assert.True(queue.HasWaiter);
            await owner.Fired.Task.WithTimeout();

            // Nothing left to wait for: the thread ends within its idle time.
            Assert.True(SpinWait.SpinUntil(() => !queue.HasWaiter, TestTimeouts.Passing), "the idle waiter did not end");
        }
    }

    /// <summary>A system-clock queue of its own whose waiter ran one deadline and is asleep again with nothing to wait for.</summary>
    private static async Task<DeadlineQueue> IdleSystemQueueAsync()
    {
        DeadlineQueue queue = DeadlineQueue.CreateSystemForTest();
        var first = new SystemOwner(TimeProvider.System);
        queue.Schedule(first, TimeProvider.System.GetTimestamp(), DeadlinePurpose.None);
        await first.Fired.Task.WithTimeout();
        Assert.True(SpinWait.SpinUntil(() => queue.WaiterAsleepFor != 0, TestTimeouts.Passing), "the waiter did not go back to sleep");
        return queue;
    }

    private sealed class SystemOwner(TimeProvider clock) : IDeadlineOwner
    {
        public TaskCompletionSource<long> Fired { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public int DeadlineIndex { get; set; } = -1;

        public long DeadlineDue { get; set; }

        public long Due => DeadlineDue;

        public DeadlinePurpose DeadlinePurpose { get; set; }

        public void OnDeadline(DeadlinePurpose purpose) => Fired.TrySetResult(clock.GetTimestamp());
    }

    private static long Ticks(FakeTimeProvider clock, int milliseconds) =>
        clock.GetTimestamp() + (milliseconds * clock.TimestampFrequency / 1000);

    private sealed class Owner(FakeTimeProvider clock, List<(Owner Owner, long At)> fired) : IDeadlineOwner
    {
        public int DeadlineIndex { get; set; } = -1;

        public long DeadlineDue
        {
            get => LastDue;
            set => LastDue = value;
        }

        public long LastDue { get; private set; }

        public TimeSpan Reschedule { get; init; }

        public int Remaining { get; set; }

        public DeadlinePurpose DeadlinePurpose { get; set; }

        public void OnDeadline(DeadlinePurpose purpose)
        {
            fired.Add((this, clock.GetTimestamp()));
            if (Remaining-- > 0)
            {
                DeadlineQueue.For(clock).Schedule(this, clock.GetTimestamp() + (long)(Reschedule.TotalSeconds * clock.TimestampFrequency), DeadlinePurpose.None);
            }
        }
    }
}
