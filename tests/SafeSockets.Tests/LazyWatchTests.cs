using System.Net.Sockets;
using SafeSockets.Tests.Infrastructure;

namespace SafeSockets.Tests;

/// <summary>The lazy watch (ManagedConnection.Watch.cs): a connection whose loop stays parked, because nobody reads it,
/// is watched within milliseconds, so the peer's FIN is seen and the CLOSE_WAIT guard armed. These tests take the watch
/// through the states where it could lose a connection: its thread asleep, and a connection it dropped from its list.</summary>
[Collection(ExclusiveTests.Name)] // the watch's thread is one per process: only an idle process lets it sleep
public sealed class LazyWatchTests
{
    private static readonly ManagedConnectionOptions s_shortGuard = new() { CloseWaitTimeout = TimeSpan.FromMilliseconds(200) };

    [Fact]
    public async Task WatchThreadAsleep_AForgottenConnectionWakesIt_AndItsPeersFinIsSeen()
    {
        // The watch's thread sleeps once its list stayed empty for a while; the push of the next parked loop must wake it,
        // or that connection is never watched, its peer's FIN never seen, and it sits in CLOSE_WAIT for good.
        // (A connection released at once gets the thread started, if no test did; it leaves the list at the next look.)
        (Socket starterPeer, ManagedConnection starter) = await Loopback.CreateManagedServerAsync();
        using (starterPeer)
        {
            starter.Abort();
        }

        await TestTimeouts.WaitUntilAsync(() => LazyWatchProbe.WatcherAsleep, "the lazy watch's thread sleeps");

        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync(s_shortGuard);
        using (peer)
        {
            // Never read, never asked for PeerClosed: only the watch can see the FIN.
            peer.Shutdown(SocketShutdown.Send);
            await Peer.ExpectTheGuardsCloseAsync(peer, connection);
        }
    }

    [Fact]
    public async Task ConnectionDroppedFromTheListWhileReading_IsQueuedAgainWhenItParks_AndItsPeersFinIsSeen()
    {
        // A look that finds the loop reading drops the connection from the list ("it comes back when the loop parks").
        // If it did not come back, a connection read once more and then forgotten would never be watched.
        for (int attempt = 1; ; attempt++)
        {
            (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync(s_shortGuard);
            using (peer)
            {
                // Its loop parked (and was queued) in the constructor; from here on it reads for this receive.
                byte[] buffer = new byte[16];
                Task<int> receive = connection.ReceiveAsync(buffer).AsTask();

                // A second connection, queued after the first one began to read and never read itself: once the watch has
                // watched it, the look that did so has taken the first one too (a look takes the whole list), which was
                // reading then. (Which of the two the look met first does not matter: a park queues it again either way.)
                (Socket witnessPeer, ManagedConnection witness) = await Loopback.CreateManagedServerAsync();
                await using (witness)
                using (witnessPeer)
                {
                    await TestTimeouts.WaitUntilAsync(() => LazyWatchProbe.Park(witness).IsWatched, "the watch watched the witness");
                }

                if (LazyWatchProbe.Park(connection).IsWatched && attempt < 5)
                {
                    // A look watched it in the instant before its receive (parked for 1 ms already): try again.
                    connection.Abort();
                    continue;
                }

                Assert.False(LazyWatchProbe.Park(connection).IsWatched, "watched before its receive in every attempt");

                // The receive ends, the loop parks again, and nobody reads any more.
                await Peer.SendPatternAsync(peer, 10);
                Assert.Equal(10, await receive.WithTimeout());
                peer.Shutdown(SocketShutdown.Send);

                await Peer.ExpectTheGuardsCloseAsync(peer, connection);
                return;
            }
        }
    }
}
