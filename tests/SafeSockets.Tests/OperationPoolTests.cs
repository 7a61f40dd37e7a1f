using SafeSockets.Internal;
using SafeSockets.Tests.Infrastructure;

namespace SafeSockets.Tests;

/// <summary>The pool of socket operation objects (<c>Internal/SocketIoArgs</c>): what it keeps, and how it refuses to hand
/// one instance to two owners. Alone in the process (exclusive collection, no connection live): the pool and its counters
/// are process-wide.</summary>
[Collection(ExclusiveTests.Name)]
public sealed class OperationPoolTests
{
    [Fact]
    public async Task EveryReturnedOperation_UpToWhatThePoolKeeps_IsRentedAgainWithoutCreatingOne()
    {
        await QuietAsync();
        await RunOnOwnThreadAsync(() =>
        {
            // Take everything the pool holds and more, so that what follows starts from an empty pool.
            const int Taken = SocketIoArgs.MaximumRetained + 8;
            var rented = new List<SocketIoArgs>();
            for (int i = 0; i < Taken; i++)
            {
                rented.Add(SocketIoArgs.Rent());
            }

            rented.ForEach(SocketIoArgs.Return);

            // The pool keeps MaximumRetained, and this thread keeps one more as its spare.
            (long created, long rents, _) = SocketIoArgs.Counters;
            var again = new List<SocketIoArgs>();
            for (int i = 0; i < SocketIoArgs.MaximumRetained + 1; i++)
            {
                again.Add(SocketIoArgs.Rent());
            }

            (long createdAfter, long rentsAfter, _) = SocketIoArgs.Counters;
            again.ForEach(SocketIoArgs.Return);
            Assert.True(rentsAfter - rents == again.Count, $"{rentsAfter - rents - again.Count} rents by other code meanwhile: the count below cannot be trusted");
            Assert.True(createdAfter == created, $"{createdAfter - created} operations created where {SocketIoArgs.MaximumRetained + 1} returned ones were kept");
            Assert.Equal(again.Count, again.Distinct().Count());
        });
    }

    [Fact]
    public async Task AnOperationReturnedTwice_IsCountedAsAMisuse_AndHandedOutOnlyOnce()
    {
        await QuietAsync();
        await RunOnOwnThreadAsync(() =>
        {
            long misuses = SocketIoArgs.Counters.Misuses;
            SocketIoArgs args = SocketIoArgs.Rent();
            SocketIoArgs.Return(args);
            SocketIoArgs.Return(args);
            Assert.Equal(misuses + 1, SocketIoArgs.Counters.Misuses);

            SocketIoArgs first = SocketIoArgs.Rent();
            SocketIoArgs second = SocketIoArgs.Rent();
            Assert.NotSame(first, second);
            Assert.Equal(misuses + 1, SocketIoArgs.Counters.Misuses); // the second return was refused, not kept
            SocketIoArgs.Return(first);
            SocketIoArgs.Return(second);
        });
    }

    [Fact]
    public async Task AnOperationStillInUse_IsNeverRentedAgain()
    {
        await QuietAsync();
        await RunOnOwnThreadAsync(() =>
        {
            long misuses = SocketIoArgs.Counters.Misuses;
            SocketIoArgs args = SocketIoArgs.Rent();
            SocketIoArgs.Return(args); // this thread's spare now
            args.MarkRentedForTest(); // a bug still using it

            SocketIoArgs next = SocketIoArgs.Rent();
            Assert.NotSame(args, next);
            Assert.Equal(misuses + 1, SocketIoArgs.Counters.Misuses);
            SocketIoArgs.Return(next);
        });
    }

    // No connection live. Other code may still return an operation (a receive loop ending after its connection's release),
    // which only adds to the pool; a rent by other code (a ConnectAsync of an earlier test still in flight) is caught by
    // the rent count where it matters.
    private static Task QuietAsync() =>
        TestTimeouts.WaitUntilAsync(() => SafeSockets.Diagnostics.Metrics.Live == 0, "no connection of earlier tests is live");

    // A thread of its own: its spare starts empty and no other code runs on it in between.
    private static Task RunOnOwnThreadAsync(Action body)
    {
        var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var thread = new Thread(() =>
        {
            try
            {
                body();
                done.SetResult();
            }
            catch (Exception ex)
            {
                done.SetException(ex);
            }
        })
        { IsBackground = true };
        thread.Start();
        return done.Task.WithTimeout();
    }
}
