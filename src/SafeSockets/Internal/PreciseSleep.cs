using System.Diagnostics;
using System.Runtime.InteropServices;

namespace SafeSockets.Internal;

/// <summary>Sleeps for less than a millisecond, or for a time that is not a whole number of milliseconds, where the
/// platform can (Linux and macOS: <c>nanosleep</c>).</summary>
/// <remarks>Every .NET wait (a monitor, a handle, <see cref="Thread.Sleep(int)"/>) takes whole milliseconds, and a wait
/// that must not end early is rounded up: a deadline then runs 0-1 ms late, 0.5 ms on average (fin-latency: the
/// CLOSE_WAIT guard's lateness p50 0.56 ms). The threads of ours that keep time (the deadline queue's waiter, the lazy
/// watch) sleep whole milliseconds rounded down, then the rest here. A signal may end the sleep early (the runtime
/// uses signals to suspend threads): callers look at the clock again anyway.</remarks>
internal static partial class PreciseSleep
{
    /// <summary>Whether <see cref="For"/> sleeps precisely here (otherwise it sleeps whole milliseconds, rounded up).</summary>
    public static bool IsSupported { get; } = OperatingSystem.IsLinux() || OperatingSystem.IsMacOS();

    /// <summary>Sleeps for at least <paramref name="stopwatchTicks"/> (<see cref="Stopwatch"/> ticks); not at all if it
    /// is not positive.</summary>
    public static void For(long stopwatchTicks)
    {
        if (stopwatchTicks <= 0)
        {
            return;
        }

        if (!IsSupported)
        {
            Thread.Sleep((int)Math.Ceiling(stopwatchTicks * 1000.0 / Stopwatch.Frequency));
            return;
        }

        // Until the clock says so: a signal ends nanosleep early, and the conversion may round a nanosecond down.
        long end = Stopwatch.GetTimestamp() + stopwatchTicks;
        for (long left = stopwatchTicks; left > 0; left = end - Stopwatch.GetTimestamp())
        {
            long nanoseconds = Math.Max(1, (long)Math.Ceiling(left * (1e9 / Stopwatch.Frequency)));
            var request = new TimeSpec { Seconds = (nint)(nanoseconds / 1_000_000_000), Nanoseconds = (nint)(nanoseconds % 1_000_000_000) };
            _ = NanoSleep(in request, IntPtr.Zero);
        }
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
