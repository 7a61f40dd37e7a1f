using System.Diagnostics;

namespace SafeSockets.Internal;

/// <summary>A few process-wide counters that every connection updates: one row of them per processor, each row on cache
/// lines of its own, so that two cores counting at once never take the same line from each other. A value is the sum of
/// its column.</summary>
/// <remarks>One row per counter would do the same arithmetic, but on a busy 2-core machine every increment then waited
/// for the line the other core had just written (the hot-path profile at 8 connections in flight: the live-connection
/// gauge's two interlocked operations per state change and the operation pool's rent counter together cost about
/// 0.5 us per cycle). A column's sum is exact once the updates stop; read while they run, it may be off by the updates
/// in flight at that moment (an increment seen on one row, its matching decrement not yet on another). Rows are chosen
/// by processor number modulo the processor count (at most 64): in a container whose quota gives fewer processors than
/// the host numbers, two processors may share a row, which stays exact, only less spread.</remarks>
internal sealed class StripedCounters
{
    // 16 longs: 128 bytes, two cache lines (the adjacent-line prefetcher pairs lines).
    private const int Stride = 16;

    private readonly long[] _cells;
    private readonly int _rows;
    private readonly int _columns;

    public StripedCounters(int columns)
        : this(columns, Environment.ProcessorCount)
    {
    }

    /// <summary>For tests: <paramref name="rows"/> rows, so that threads on different processors share one.</summary>
    internal StripedCounters(int columns, int rows)
    {
        // Rows are 128 bytes apart but the array is not 64-byte aligned: a row's first 8 longs stay off the next row's line.
        ArgumentOutOfRangeException.ThrowIfGreaterThan(columns, Stride / 2);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(columns);
        _columns = columns;
        _rows = Math.Clamp(rows, 1, 64);

        // One row of padding in front: the array's header and length share no line with the first row.
        _cells = new long[(_rows + 1) * Stride];
    }

    /// <summary>Adds <paramref name="value"/> to counter <paramref name="column"/>, on the current processor's row.</summary>
    /// <remarks>The column is checked in debug builds only: this runs on every connection's state change.</remarks>
    public void Add(int column, long value)
    {
        Debug.Assert((uint)column < (uint)_columns, "no such column");
        Interlocked.Add(ref _cells[((Thread.GetCurrentProcessorId() % _rows) + 1) * Stride + column], value);
    }

    /// <summary>Counter <paramref name="column"/>: the sum of its rows.</summary>
    /// <exception cref="ArgumentOutOfRangeException">There is no such column (reading one past the last would read padding: 0).</exception>
    public long Sum(int column)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(column);
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(column, _columns);
        long sum = 0;
        for (int row = 1; row <= _rows; row++)
        {
            sum += Volatile.Read(ref _cells[row * Stride + column]);
        }

        return sum;
    }
}
