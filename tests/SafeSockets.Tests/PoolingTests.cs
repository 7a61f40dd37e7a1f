using System.Net.Sockets;
using SafeSockets.Internal;
using SafeSockets.Tests.Infrastructure;

namespace SafeSockets.Tests;

public sealed class PoolingTests
{
    [Fact]
    public async Task PooledInputPipes_AreReused_ButNeverHeldByTwoLiveConnections()
    {
        var everSeen = new HashSet<object>(ReferenceEqualityComparer.Instance);
        int reused = 0;
        for (int round = 0; round < 20; round++)
        {
            // A batch of live connections: each must own a distinct pipe.
            var batch = new List<(Socket Peer, ManagedConnection Connection)>();
            for (int i = 0; i < 16; i++)
            {
                batch.Add(await Loopback.CreateManagedServerAsync());
            }

            var live = new HashSet<object>(ReferenceEqualityComparer.Instance);
            foreach ((_, ManagedConnection connection) in batch)
            {
                Assert.True(live.Add(connection.InputPipe), "two live connections share one pooled pipe");
                reused += everSeen.Add(connection.InputPipe) ? 0 : 1;
            }

            // Closed in parallel, with data still unread in some pipes (a returned pipe must come back empty).
            await Task.WhenAll(batch.Select(async pair =>
            {
                await Peer.SendPatternAsync(pair.Peer, 100);
                pair.Peer.Shutdown(SocketShutdown.Send);
                await pair.Connection.CloseAsync();
                pair.Peer.Dispose();
            })).WithTimeout();
        }

        Assert.True(reused > 0, "no pipe was ever reused: the pool is not in use");

        // A connection on a reused pipe reads only its own bytes.
        (Socket peer, ManagedConnection fresh) = await Loopback.CreateManagedServerAsync();
        await using (fresh)
        using (peer)
        {
            await Peer.SendPatternAsync(peer, 5);
            peer.Shutdown(SocketShutdown.Send);
            Assert.Equal(Peer.Pattern(5), await Peer.ReadAllAsync(fresh).WithTimeout());
        }
    }

    [Fact]
    public async Task ConnectionClosedWhileItsReceiveIsPending_DoesNotReturnThePipeToThePool()
    {
        for (int i = 0; i < 50; i++)
        {
            (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync();
            using (peer)
            {
                object pipe = connection.InputPipe;
                Task<int> pending = connection.ReceiveAsync(new byte[10]).AsTask();
                Task<CloseResult> close = connection.CloseAsync().AsTask();
                peer.Shutdown(SocketShutdown.Send);
                await close.WithTimeout();
                await Assert.ThrowsAsync<ObjectDisposedException>(() => pending.WithTimeout());

                // The next connection must not get the pipe the pending receive was still holding when the close began.
                (Socket peer2, ManagedConnection next) = await Loopback.CreateManagedServerAsync();
                using (peer2)
                {
                    Assert.NotSame(pipe, next.InputPipe);
                    next.Abort();
                }
            }
        }
    }

    [Fact]
    public async Task PooledSocketOperations_AreReused_AndNeverServeTwoConnectionsAtOnce()
    {
        (long createdBefore, long rentedBefore, _) = SocketIoArgs.Counters;
        var random = new Random(42);
        for (int round = 0; round < 20; round++)
        {
            var batch = new List<(Socket Peer, ManagedConnection Connection, bool Abort)>();
            for (int i = 0; i < 16; i++)
            {
                (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync();
                batch.Add((peer, connection, random.Next(4) == 0));
            }

            // Every connection sends with overlapping sends (one takes the pooled operation, the others the socket's own)
            // while its receive loop reads; a quarter are aborted in the middle. Any sharing would mix bytes between
            // connections or throw "operation already in progress".
            await Task.WhenAll(batch.Select(async item =>
            {
                (Socket peer, ManagedConnection connection, bool abort) = item;
                byte[] tag = [(byte)(round * 16 + batch.IndexOf(item))];
                Task<PeerReadResult> peerRead = Peer.ReadToEndAsync(peer, keepData: true);
                Task[] sends = Enumerable.Range(0, 8).Select(_ => connection.SendAsync(tag).AsTask()).ToArray();
                if (abort)
                {
                    connection.Abort();
                    await Task.WhenAll(sends.Select(s => s.ContinueWith(_ => { }, TaskScheduler.Default))).WithTimeout();
                    await peerRead.WithTimeout();
                }
                else
                {
                    await Task.WhenAll(sends).WithTimeout();
                    await Peer.SendPatternAsync(peer, 3000);
                    peer.Shutdown(SocketShutdown.Send);
                    Assert.Equal(Peer.Pattern(3000), await Peer.ReadAllAsync(connection).WithTimeout());
                    await connection.CloseAsync().AsTask().WithTimeout();
                    PeerReadResult read = await peerRead.WithTimeout();
                    Assert.Equal(PeerEnd.Fin, read.End);
                    Assert.Equal(Enumerable.Repeat(tag[0], 8), read.Data);
                }

                peer.Dispose();
            })).WithTimeout();
        }

        (long created, long rented, long misuses) = SocketIoArgs.Counters;
        Assert.Equal(0, misuses);
        Assert.True(rented - rentedBefore > created - createdBefore, $"no pooled operation was reused ({rented - rentedBefore} rents, {created - createdBefore} created)");
    }
    [Fact]
    public async Task StripedCounters_ManyThreadsAddingAndTakingAway_SumToExactlyWhatWasCounted()
    {
        // Threads move between processors while they count: an increment and its decrement land on different rows.
        var counters = new SafeSockets.Internal.StripedCounters(3);
        Task[] workers = Enumerable.Range(0, 8).Select(w => Task.Run(() =>
        {
            for (int i = 0; i < 20_000; i++)
            {
                counters.Add(0, 1);
                counters.Add(1, w);
                if (i % 2 == 0)
                {
                    counters.Add(0, -1);
                    Thread.Yield();
                }
            }
        })).ToArray();
        await Task.WhenAll(workers).WithTimeout();

        Assert.Equal(8 * 10_000, counters.Sum(0));
        Assert.Equal(20_000L * Enumerable.Range(0, 8).Sum(), counters.Sum(1));
        Assert.Equal(0, counters.Sum(2));
        Assert.Throws<ArgumentOutOfRangeException>(() => new SafeSockets.Internal.StripedCounters(9));
    }

    [Fact]
    public async Task StripedCounters_ThreadsSharingARow_LoseNoUpdate()
    {
        // Two processors' threads on one row: what any row sees when a thread moves between reading its processor and
        // adding (or two threads run on one processor). An add that is not atomic loses updates here within a few
        // thousand; the many-threads test above, one row per processor, never sees it.
        var counters = new SafeSockets.Internal.StripedCounters(1, rows: 1);
        using var start = new Barrier(2);
        Task[] workers = Enumerable.Range(0, 2).Select(_ => Task.Factory.StartNew(() =>
        {
            start.SignalAndWait();
            for (int i = 0; i < 2_000_000; i++)
            {
                counters.Add(0, 1);
            }
        }, TaskCreationOptions.LongRunning)).ToArray();
        await Task.WhenAll(workers).WithTimeout();

        Assert.Equal(4_000_000, counters.Sum(0));
    }
}
