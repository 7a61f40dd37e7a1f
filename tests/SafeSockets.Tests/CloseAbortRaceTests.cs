using System.Net.Sockets;
using SafeSockets.Tests.Infrastructure;

namespace SafeSockets.Tests;

/// <summary>CloseAsync racing Abort: whoever wins, State, Completion, CloseAsync's result and the peer tell the same story.</summary>
public sealed class CloseAbortRaceTests
{
    [Fact]
    public async Task CloseAsyncRacingAbort_ManyRounds_StateOutcomeCloseResultAndPeerAgree()
    {
        for (int round = 0; round < 2000; round++)
        {
            (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync(new ManagedConnectionOptions { DrainTimeout = TimeSpan.FromSeconds(10) });
            using (peer)
            {
                // The peer has closed its side, so the close can end gracefully: the race decides between Graceful and Aborted.
                peer.Shutdown(SocketShutdown.Send);
                await connection.PeerClosed.WhenCanceled().WithTimeout();

                var start = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                Task<CloseResult> close = Task.Run(async () => { await start.Task; return await connection.CloseAsync(); });
                Task abort = Task.Run(async () => { await start.Task; connection.Abort(); });
                start.SetResult();
                await abort.WithTimeout();
                CloseResult closed = await close.WithTimeout();
                CloseResult final = await connection.Completion.WithTimeout();
                ConnectionState state = connection.State;
                PeerEnd seen = (await Peer.ReadToEndAsync(peer).WithTimeout()).End;
                string story = $"round {round}: State {state}, Completion {final}, CloseAsync {closed}, peer saw {seen}";

                // The state and the recorded outcome agree.
                Assert.True((state == ConnectionState.Aborted) == (final.Outcome == CloseOutcome.Aborted), story);
                Assert.True((state == ConnectionState.Closed) == (final.Outcome != CloseOutcome.Aborted), story);

                // The first (only) CloseAsync reports the end exactly as Completion does, whoever ended it.
                Assert.True(closed == final, story);

                // The peer: a reset only if we aborted; an end that is not an abort is a FIN. (After our FIN the peer cannot
                // see a later RST: its reads return 0 from the FIN on, so an abort after the FIN may show as FIN.)
                if (seen == PeerEnd.Reset)
                {
                    Assert.True(final.Outcome == CloseOutcome.Aborted, story);
                }

                if (final.Outcome != CloseOutcome.Aborted)
                {
                    Assert.True(seen == PeerEnd.Fin, story);
                }
            }
        }
    }
}
