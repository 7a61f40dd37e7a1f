using Microsoft.Coyote.Specifications;

namespace SafeSockets.Concurrency;

/// <summary>What must hold once every party of a scenario (and everything the model started) has finished.</summary>
internal static class Invariants
{
    /// <summary>Specification.Assert with the model's trace appended to the message.</summary>
    public static void Check(ModelConnection c, bool condition, string format, params object?[] args)
    {
        if (!condition)
        {
            Specification.Assert(false, "{0}", string.Format(System.Globalization.CultureInfo.InvariantCulture, format, args) + "\n" + c.TraceText);
        }
    }

    public static async Task CheckAsync(ModelConnection c, bool teardownExpected)
    {
        // Every call completed (a hang is reported by Coyote as a deadlock); so has everything the model started.
        await c.BackgroundDoneAsync();

        // Every state change was reported once (the connections-by-state metric nets to one, in the current state).
        ConnectionState now = c.Lifecycle.State;
        int[] net = c.StateNet;
        for (int i = 0; i < net.Length; i++)
        {
            Check(c, net[i] == (i == (int)now ? 1 : 0), "State-change reports leave {0} in {1} (current state {2}).", net[i], (ConnectionState)i, now);
        }

        CloseResult? recorded = c.Lifecycle.Result;
        Check(c, !teardownExpected || recorded is not null, "The scenario ends in a teardown but no result was recorded (state {0}).", c.Lifecycle.State);
        Check(c, c.FinsSent <= 1, "Our FIN was sent {0} times.", c.FinsSent);
        if (recorded is not { } result)
        {
            Check(c, c.Disposals == 0, "The socket was disposed without a recorded result.");
            Check(c, !c.Lifecycle.IsTearingDown, "A teardown began and never recorded a result (state {0}).", c.Lifecycle.State);
            Check(c, c.CloseCalls.Count == 0, "A CloseAsync returned without a teardown.");
            Check(c, c.EndSteps.Count == 0, "The listener was told of an end without a recorded result.");
            return;
        }

        // The socket is released exactly once.
        Check(c, c.Disposals == 1, "The socket was disposed {0} times (expected exactly once).", c.Disposals);

        // Exactly one CloseResult: every Record returned it, Completion has it.
        // One teardown owner records it once, and tells the listener once: its end, then the published result.
        Check(c, c.Recorded.Count == 1, "Record was called {0} times (expected once, by the teardown's one owner).", c.Recorded.Count);
        Check(c, string.Join(",", c.EndSteps) == "completed,published", "The listener was told [{0}] (expected its end once, then the published result once).", string.Join(",", c.EndSteps));
        foreach (CloseResult r in c.Recorded)
        {
            Check(c, r == result, "Record returned {0}, the lifecycle holds {1}.", r, result);
        }

        Task<CloseResult> completion = c.Lifecycle.GetCompletionTask();
        Check(c, completion.IsCompletedSuccessfully, "Completion is not completed after Record.");
        Check(c, completion.Result == result, "Completion has {0}, the lifecycle holds {1}.", completion.Result, result);

        // The first CloseAsync caller gets exactly that result; later ones get AlreadyClosed.
        int real = 0;
        foreach (CloseCall call in c.CloseCalls)
        {
            if (call.ClaimedFirst)
            {
                Check(c, call.Result == result, "The first CloseAsync returned {0}; Completion has {1}.", call.Result, result);
            }
            else
            {
                Check(c, 
                    call.Result.Outcome == CloseOutcome.AlreadyClosed,
                    "A later CloseAsync (it did not claim the result first; owned the teardown: {0}) returned {1} instead of AlreadyClosed.",
                    call.OwnedTeardown,
                    call.Result);
            }

            if (call.Result.Outcome != CloseOutcome.AlreadyClosed)
            {
                real++;
            }
        }

        Check(c, real <= 1, "{0} CloseAsync calls returned the result (expected one, the others AlreadyClosed).", real);

        // State agrees with the outcome and with how the socket was released.
        bool abortedOutcome = result.Outcome == CloseOutcome.Aborted;
        ConnectionState state = c.Lifecycle.State;
        Check(c, state is ConnectionState.Closed or ConnectionState.Aborted, "After the teardown the state is {0}.", state);
        Check(c, (state == ConnectionState.Aborted) == abortedOutcome, "State {0} but outcome {1}.", state, result.Outcome);
        Check(c, (c.LingerZeroDisposals == 1) == abortedOutcome, "Linger-0 release: {0}, outcome {1}.", c.LingerZeroDisposals == 1, result.Outcome);

        // RST only on purpose: linger 0 only after Abort (a peer's reset does not make us reset).
        Check(c, c.LingerZeroDisposals == 0 || c.AbortCalls > 0, "The socket was released with linger 0 but Abort was never called.");
        Check(c, !c.PeerSentReset || c.AbortCalls > 0 || c.LingerZeroDisposals == 0, "The peer's reset made us reset.");

        // Nothing can enter the gate after the teardown.
        Check(c, !c.Gate.TryEnter(), "A send entered the gate after the teardown.");
        Check(c, c.Gate.InFlight == 0, "{0} send(s) still counted in flight after every send finished.", c.Gate.InFlight);
    }
}
