using System.Net.Sockets;
using SafeSockets.Tests.Infrastructure;

namespace SafeSockets.Tests;

public sealed class LeaseTests
{
    [Fact]
    public async Task LastRelease_ClosesGracefully_EarlierReleasesChangeNothingThePeerSees()
    {
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync();
        using (peer)
        {
            ConnectionLease a = connection.Acquire();
            ConnectionLease b = connection.Acquire();
            Assert.Equal(3, connection.LeaseCount);

            await connection.DisposeAsync(); // the creator lets go
            await a.DisposeAsync();
            Assert.Equal(1, connection.LeaseCount);
            Assert.Equal(ConnectionState.Open, connection.State);

            // Still fully usable by the remaining owner, and the peer saw nothing yet.
            await b.Connection.SendAsync(new byte[] { 7 }).WithTimeout();
            byte[] one = new byte[1];
            Assert.Equal(1, await peer.ReceiveAsync(one, SocketFlags.None).WithTimeout());

            Task<PeerReadResult> read = Peer.ReadToEndAsync(peer);
            Task release = b.DisposeAsync().AsTask();
            Assert.Equal(PeerEnd.Fin, (await read.WithTimeout()).End);
            peer.Shutdown(SocketShutdown.Send);
            await release.WithTimeout();

            Assert.Equal(ConnectionState.Closed, connection.State);
            Assert.Equal(CloseOutcome.Graceful, (await connection.Completion.WithTimeout()).Outcome);
            Assert.Equal(0, connection.LeaseCount);
        }
    }

    [Fact]
    public async Task Release_Twice_CountsOnce()
    {
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync();
        using (peer)
        {
            ConnectionLease a = connection.Acquire();
            await a.DisposeAsync();
            await a.DisposeAsync();
            Assert.Equal(1, connection.LeaseCount);
            Assert.Equal(ConnectionState.Open, connection.State);

            Task close = connection.DisposeAsync().AsTask(); // the creator's is now the last reference
            Assert.Equal(0, connection.LeaseCount);
            peer.Shutdown(SocketShutdown.Send);
            await close.WithTimeout();
            Assert.Equal(CloseOutcome.Graceful, (await connection.Completion.WithTimeout()).Outcome);
        }
    }

    [Fact]
    public async Task ConnectionDisposeTwice_ReleasesCreatorReferenceOnce()
    {
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync();
        using (peer)
        {
            ConnectionLease a = connection.Acquire();
            await connection.DisposeAsync();
            await connection.DisposeAsync();
            Assert.Equal(1, connection.LeaseCount);
            Assert.Equal(ConnectionState.Open, connection.State);
            peer.Shutdown(SocketShutdown.Send);
            await a.DisposeAsync().AsTask().WithTimeout();
            Assert.Equal(ConnectionState.Closed, connection.State);
        }
    }

    [Fact]
    public async Task Acquire_AfterLastRelease_ThrowsObjectDisposed()
    {
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync();
        using (peer)
        {
            peer.Shutdown(SocketShutdown.Send);
            await connection.DisposeAsync();
            Assert.Throws<ObjectDisposedException>(() => connection.Acquire());
        }
    }

    [Fact]
    public async Task ShutdownSendThroughOneLease_ActsForEveryOwner()
    {
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync();
        await using (connection)
        using (peer)
        {
            await using ConnectionLease a = connection.Acquire();
            await using ConnectionLease b = connection.Acquire();
            await a.Connection.ShutdownSendAsync().WithTimeout();

            Assert.Equal(PeerEnd.Fin, (await Peer.ReadToEndAsync(peer).WithTimeout()).End);
            await Assert.ThrowsAsync<InvalidOperationException>(() => b.Connection.SendAsync(new byte[1]).AsTask());
        }
    }

    [Fact]
    public async Task AbortThroughOneLease_ActsForEveryOwner()
    {
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync();
        using (peer)
        {
            ConnectionLease a = connection.Acquire();
            ConnectionLease b = connection.Acquire();
            a.Connection.Abort();

            Assert.Equal(PeerEnd.Reset, (await Peer.ReadToEndAsync(peer).WithTimeout()).End);
            await Assert.ThrowsAsync<ObjectDisposedException>(() => b.Connection.SendAsync(new byte[1]).AsTask());
            await a.DisposeAsync();
            await b.DisposeAsync();
            await connection.DisposeAsync();
            Assert.Equal(ConnectionState.Aborted, connection.State);
        }
    }

    [Fact]
    public async Task AcquireRacingLastRelease_NeverYieldsALeaseOnAClosedConnection()
    {
        for (int round = 0; round < 300; round++)
        {
            (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync();
            using (peer)
            {
                peer.Shutdown(SocketShutdown.Send);
                var start = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                Task release = Task.Run(async () => { await start.Task; await connection.DisposeAsync(); });
                Task<ConnectionLease?> acquire = Task.Run(async () =>
                {
                    await start.Task;
                    try
                    {
                        return connection.Acquire();
                    }
                    catch (ObjectDisposedException)
                    {
                        return null;
                    }
                });
                start.SetResult();
                ConnectionLease? lease = await acquire.WithTimeout();
                if (lease is not null)
                {
                    // A live lease: the connection must still be usable until we release it.
                    Assert.NotEqual(ConnectionState.Closed, connection.State);
                    Assert.False(connection.Completion.IsCompleted);
                    await lease.DisposeAsync();
                }

                await release.WithTimeout();
                await connection.Completion.WithTimeout();
                Assert.Equal(1, connection.ReleaseCount);
                Assert.Equal(0, connection.LeaseCount);
            }
        }
    }

    [Fact]
    public async Task ManyOwnersReleasingConcurrently_CloseExactlyOnce()
    {
        for (int round = 0; round < 100; round++)
        {
            (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync();
            using (peer)
            {
                peer.Shutdown(SocketShutdown.Send);
                ConnectionLease[] leases = [.. Enumerable.Range(0, 8).Select(_ => connection.Acquire())];
                var start = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                Task[] releases =
                [
                    .. leases.Select(l => Task.Run(async () => { await start.Task; await l.DisposeAsync(); await l.DisposeAsync(); })),
                    Task.Run(async () => { await start.Task; await connection.DisposeAsync(); }),
                ];
                start.SetResult();
                await Task.WhenAll(releases).WithTimeout();

                Assert.Equal(CloseOutcome.Graceful, (await connection.Completion.WithTimeout()).Outcome);
                Assert.Equal(1, connection.ReleaseCount);
                Assert.Equal(0, connection.LeaseCount);
            }
        }
    }

    [Fact]
    public async Task LeaseCollectedWithoutRelease_IsReported()
    {
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync();
        await using (connection)
        using (peer)
        {
            int before = ConnectionLease.LeakTracker.LeakedCount;
            LeakOneLease(connection);
            for (int i = 0; i < 10 && ConnectionLease.LeakTracker.LeakedCount == before; i++)
            {
                GC.Collect();
                GC.WaitForPendingFinalizers();
            }

            Assert.True(ConnectionLease.LeakTracker.LeakedCount > before);
            Assert.Equal(2, connection.LeaseCount); // a leaked reference keeps the connection open: that is the bug reported
        }
    }

    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.NoInlining)]
    private static void LeakOneLease(ManagedConnection connection) => _ = connection.Acquire();
}
