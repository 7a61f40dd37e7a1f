using System.Runtime.CompilerServices;
using SafeSockets.Internal;

namespace SafeSockets;

public sealed partial class ManagedConnection
{
    /// <summary>How many owners hold a reference: the creator's (until <see cref="DisposeAsync"/>) plus each unreleased <see cref="ConnectionLease"/>.</summary>
    public int LeaseCount => StateBits.LeaseCount(ReadState());

    /// <summary>Adds an owner: the connection stays open until every lease, and the creator's reference, is released.</summary>
    /// <returns>A lease; dispose it to release this owner's reference.</returns>
    /// <exception cref="ObjectDisposedException">The last owner already let go, or the connection is closing or closed.</exception>
    public ConnectionLease Acquire()
    {
        int current = ReadState();
        while (true)
        {
            if ((current & (StateBits.Closing | StateBits.Closed | StateBits.Aborted)) != 0 || StateBits.LeaseCount(current) == 0)
            {
                ThrowIfClosing(current | StateBits.Closing);
            }

            if (StateBits.LeaseCount(current) == StateBits.LeaseCount(StateBits.LeaseMask))
            {
                throw new InvalidOperationException("Too many leases are held on this connection.");
            }

            int seen = Interlocked.CompareExchange(ref _state, current + StateBits.LeaseOne, current);
            if (seen == current)
            {
                return new ConnectionLease(this);
            }

            current = seen;
        }
    }

    /// <summary>Drops one reference; the last one starts the graceful close in the same atomic step, so no Acquire can slip in.</summary>
    internal ValueTask ReleaseReferenceAsync()
    {
        int current = ReadState();
        while (true)
        {
            int count = StateBits.LeaseCount(current);
            if (count == 0)
            {
                return default;
            }

            bool last = count == 1;
            int next = current - StateBits.LeaseOne;
            bool startsClose = last && (current & (StateBits.Closing | StateBits.Closed | StateBits.Aborted)) == 0;
            if (startsClose)
            {
                next |= StateBits.Closing;
            }

            int seen = Interlocked.CompareExchange(ref _state, next, current);
            if (seen != current)
            {
                current = seen;
                continue;
            }

            if (startsClose)
            {
                Diagnostics.Metrics.StateChanged(current, next);
                OnCloseStarted(CloseReason.Application);
                TrySetFlag(FlagApplicationSawClose);
                return IgnoreResult(CloseCoreAsync(CancellationToken.None));
            }

            // The last owner left while a close was already under way: wait for it like any closer.
            return last ? IgnoreResult(Completion) : default;
        }
    }

    // DisposeAsync (`await using`) is the most common way to close: its wrapper must not cost a fresh box each time.
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private static async ValueTask IgnoreResult(ValueTask<CloseResult> close) => await close.ConfigureAwait(false);

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private static async ValueTask IgnoreResult(Task<CloseResult> close) => await close.ConfigureAwait(false);
}
