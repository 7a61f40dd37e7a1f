using System.Runtime.CompilerServices;
using SafeSockets.Internal;

namespace SafeSockets;

public sealed partial class ManagedConnection
{
    /// <summary>How many owners hold a reference: the creator's (until <see cref="DisposeAsync"/>) plus each unreleased <see cref="ConnectionLease"/>.</summary>
    public int LeaseCount => _lifecycle.LeaseCount;

    /// <summary>Adds an owner: the connection stays open until every lease, and the creator's reference, is released.</summary>
    /// <returns>A lease; dispose it to release this owner's reference.</returns>
    /// <exception cref="ObjectDisposedException">The last owner already let go, or the connection is closing or closed.</exception>
    public ConnectionLease Acquire()
    {
        if (!_lifecycle.TryAcquire())
        {
            ThrowIfClosing();
            ThrowHelper.ThrowDisposed("Every owner of this connection has released it (the last release closes it); no lease can be acquired.");
        }

        return new ConnectionLease(this);
    }

    /// <summary>Drops one reference; the last one performs the graceful close (the lifecycle hands it the teardown in the
    /// same step, so no Acquire can slip in).</summary>
    internal ValueTask ReleaseReferenceAsync() => OnReferenceReleased(_lifecycle.ReleaseReference());

    // DisposeAsync (`await using`) is the most common way to close: its wrapper must not cost a fresh box each time.
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private static async ValueTask IgnoreResult(ValueTask<CloseResult> close) => await close.ConfigureAwait(false);

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private static async ValueTask IgnoreResult(Task<CloseResult> close) => await close.ConfigureAwait(false);
}
