using SafeSockets.Internal;

namespace SafeSockets.Tests.Infrastructure;

/// <summary>A read-only look at a connection's one deadline in its <see cref="DeadlineQueue"/> (the CLOSE_WAIT guard, the
/// idle bound or the drain bound), for tests on a fake clock: after the clock moved, a bound that came due either closed
/// the connection or armed itself again, and the test waits for one of the two before it judges which.</summary>
internal static class DeadlineProbe
{
    /// <summary>The connection's deadline (what for, and its due time, a timestamp of its time provider), or
    /// <see langword="null"/> if it has none.</summary>
    public static (DeadlinePurpose Purpose, long Due)? Armed(ManagedConnection connection)
    {
        var owner = (IDeadlineOwner)connection;
        return owner.DeadlineIndex < 0 ? null : (owner.DeadlinePurpose, owner.DeadlineDue);
    }

    /// <summary>Whether <paramref name="purpose"/> is armed on the connection.</summary>
    public static bool IsArmed(ManagedConnection connection, DeadlinePurpose purpose) => Armed(connection) is { } armed && armed.Purpose == purpose;

    /// <summary>A timestamp <paramref name="after"/> past <paramref name="start"/>, on <paramref name="clock"/>.</summary>
    public static long At(TimeProvider clock, long start, TimeSpan after) => start + (after.Ticks * clock.TimestampFrequency / TimeSpan.TicksPerSecond);
}
