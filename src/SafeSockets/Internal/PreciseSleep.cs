using System.Diagnostics;
using System.Runtime.InteropServices;

namespace SafeSockets.Internal;

/// <summary>Sleeps until a time that is not a whole number of milliseconds away, where the platform can (Linux and
/// macOS: <c>nanosleep</c>).</summary>
/// <remarks>Every .NET wait (a monitor, a handle, <see cref="Thread.Sleep(int)"/>) takes whole milliseconds, and a wait
/// that must not end early is rounded up: a deadline then runs 0-1 ms late, 0.5 ms on average (fin-latency: the
/// CLOSE_WAIT guard's lateness p50 0.56 ms). The deadline queue's waiter waits whole milliseconds rounded down, then
/// sleeps the rest here, until the deadline's own time (not for a length measured later, which would add whatever
/// delayed the thread in between). A signal may end a nanosleep early (the runtime uses signals to suspend threads):
/// it sleeps again until the clock says the time has come.</remarks>
internal static partial class PreciseSleep
{
    /// <summary>Whether <see cref="Until"/> sleeps precisely here: Linux or macOS, and nanosleep could be called. It is
    /// called once, for no time at all, when this is first read, so a missing export means whole milliseconds instead of
    /// an exception on a thread of ours later.</summary>
    public static bool IsSupported { get; } = Probe();

    /// <summary>Sleeps until <paramref name="stopwatchTimestamp"/> (<see cref="Stopwatch.GetTimestamp"/>) at least; not
    /// at all if it has passed.</summary>
    public static void Until(long stopwatchTimestamp)
    {
        if (!IsSupported)
        {
            long rest = stopwatchTimestamp - Stopwatch.GetTimestamp();
            if (rest > 0)
            {
                // Clamped: a time more than 24.8 days away would overflow the int and throw on a thread of ours.
                Thread.Sleep((int)Math.Min(int.MaxValue, Math.Ceiling(rest * 1000.0 / Stopwatch.Frequency)));
            }

            return;
        }

        // Until the clock says so: a signal ends nanosleep early, and the conversion may round a nanosecond down.
        for (long left = stopwatchTimestamp - Stopwatch.GetTimestamp(); left > 0; left = stopwatchTimestamp - Stopwatch.GetTimestamp())
        {
            Sleep(Math.Max(1, (long)Math.Ceiling(left * (1e9 / Stopwatch.Frequency))));
        }
    }

    private static bool Probe()
    {
        if (!OperatingSystem.IsLinux() && !OperatingSystem.IsMacOS())
        {
            return false;
        }

        try
        {
            Sleep(0);
            return true;
        }
        catch (Exception ex) when (ex is DllNotFoundException or EntryPointNotFoundException)
        {
            return false;
        }
    }

    private static void Sleep(long nanoseconds)
    {
        var request = new TimeSpec { Seconds = (nint)(nanoseconds / 1_000_000_000), Nanoseconds = (nint)(nanoseconds % 1_000_000_000) };
        _ = NanoSleep(in request, IntPtr.Zero);
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct TimeSpec
    {
        public nint Seconds;
        public nint Nanoseconds;
    }

    [LibraryImport("libc", EntryPoint = "nanosleep")]
    [DefaultDllImportSearchPaths(DllImportSearchPath.SafeDirectories)]
    private static partial int NanoSleep(in TimeSpec request, IntPtr remaining);
}
