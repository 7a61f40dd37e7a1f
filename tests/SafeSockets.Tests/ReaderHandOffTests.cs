using System.Globalization;
using System.Net.Sockets;
using SafeSockets.Tests.Infrastructure;

namespace SafeSockets.Tests;

/// <summary>The receive loop resumes a waiting reader on its own thread, after its next read is pending
/// (Internal/ReaderHandOff.cs). Whatever the reader then does with that thread, the loop must go on without it:
/// these readers block the thread they were resumed on, or wait synchronously for the connection itself.</summary>
public sealed class ReaderHandOffTests
{
    [Fact]
    public Task ReaderThatBlocksItsThread_AfterItsBytes_DoesNotStopFinDetection() =>
        BlockingReaderKeepsFinDetectionAsync(async (connection, waiting) =>
        {
            byte[] buffer = new byte[16];
            return await PendingReceiveAsync(connection, buffer, waiting);
        });

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task ReaderThatClosesSynchronously_AfterItsBytesOrThePeersFin_DoesNotDeadlock(bool peersFin)
    {
        // After bytes the close drains, which needs the receive loop; after the FIN the loop hands the reader the end of
        // the input and parks, and its task completes only when the close wakes it.
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync();
        using (peer)
        {
            var waiting = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            async Task<CloseResult> ReaderAsync()
            {
                byte[] buffer = new byte[16];
                Assert.Equal(peersFin ? 0 : 5, await PendingReceiveAsync(connection, buffer, waiting));

                // Sync over async on the thread the read resumed on.
                return connection.CloseAsync().AsTask().GetAwaiter().GetResult();
            }

            Task<CloseResult> reader = Task.Run(ReaderAsync);
            await waiting.Task.WithTimeout();
            if (peersFin)
            {
                peer.Shutdown(SocketShutdown.Send);
            }
            else
            {
                await peer.SendAsync(new byte[5], SocketFlags.None);
            }

            // The peer answers our FIN with its own (if it has not sent it yet) once it has read to the end.
            PeerReadResult seen = await Peer.ReadToEndAsync(peer).WithTimeout();
            if (!peersFin)
            {
                peer.Shutdown(SocketShutdown.Send);
            }

            Assert.Equal(PeerEnd.Fin, seen.End);
            Assert.Equal(CloseOutcome.Graceful, (await reader.WithTimeout()).Outcome);
            await TestTimeouts.WaitUntilAsync(() => connection.ReceiveLoopEnded, "the receive loop ends");
        }
    }

    [Fact]
    public async Task ReaderThatBlocksItsThread_AfterThePeersFin_TheGuardStillClosesTheConnection()
    {
        var options = new ManagedConnectionOptions { CloseWaitTimeout = TimeSpan.FromMilliseconds(200) };
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync(options);
        using (peer)
        using (var release = new ManualResetEventSlim())
        {
            var waiting = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            async Task ReaderAsync()
            {
                byte[] buffer = new byte[16];
                Assert.Equal(0, await PendingReceiveAsync(connection, buffer, waiting));
                Assert.True(release.Wait(TestTimeouts.Passing), "the test never released the reader");
            }

            Task reader = Task.Run(ReaderAsync);
            await waiting.Task.WithTimeout();
            peer.Shutdown(SocketShutdown.Send);

            // The reader holds the thread the loop handed it; the guard's close must still end the loop and the connection.
            Assert.Equal(CloseOutcome.CloseWaitTimedOut, (await connection.Completion.WithTimeout()).Outcome);
            Assert.Equal(PeerEnd.Fin, (await Peer.ReadToEndAsync(peer).WithTimeout()).End);
            await TestTimeouts.WaitUntilAsync(() => connection.ReceiveLoopEnded, "the receive loop ends");

            release.Set();
            await reader.WithTimeout();
        }
    }

    [Fact]
    public async Task ReaderThatReadsSynchronously_AfterItsBytes_GetsTheNextBytes()
    {
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync();
        await using (connection)
        using (peer)
        {
            var waiting = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            var blocked = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            async Task<int> ReaderAsync()
            {
                byte[] buffer = new byte[16];
                Assert.Equal(5, await PendingReceiveAsync(connection, buffer, waiting));
                blocked.SetResult();

                // Sync over async: the next bytes come through the loop, which must not need this thread.
                return connection.ReceiveAsync(buffer).AsTask().GetAwaiter().GetResult();
            }

            Task<int> reader = Task.Run(ReaderAsync);
            await waiting.Task.WithTimeout();
            await peer.SendAsync(new byte[5], SocketFlags.None);
            await blocked.Task.WithTimeout();
            await peer.SendAsync(new byte[7], SocketFlags.None);

            Assert.Equal(7, await reader.WithTimeout());
        }
    }

    [Fact]
    public Task TransportReaderThatBlocksItsThread_DoesNotStopFinDetection() =>
        BlockingReaderKeepsFinDetectionAsync(async (connection, waiting) =>
        {
            ValueTask<System.IO.Pipelines.ReadResult> pending = connection.Transport.Input.ReadAsync();
            Assert.False(pending.IsCompleted);
            waiting.SetResult();
            System.IO.Pipelines.ReadResult result = await pending;
            long length = result.Buffer.Length;
            connection.Transport.Input.AdvanceTo(result.Buffer.End);
            return length;
        });

    /// <summary>A reader (<paramref name="readOnceAsync"/>: pending before the peer's 5 bytes arrive, returns how many it
    /// got) blocks the thread it was resumed on, as a handler doing synchronous work would; the peer's FIN must still be
    /// seen meanwhile.</summary>
    private static async Task BlockingReaderKeepsFinDetectionAsync(Func<ManagedConnection, TaskCompletionSource, Task<long>> readOnceAsync)
    {
        (Socket peer, ManagedConnection connection) = await Loopback.CreateManagedServerAsync();
        await using (connection)
        using (peer)
        using (var release = new ManualResetEventSlim())
        {
            var waiting = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            var resumed = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            async Task ReaderAsync()
            {
                Assert.Equal(5, await readOnceAsync(connection, waiting));
                resumed.SetResult();
                Assert.True(release.Wait(TestTimeouts.Passing), "the test never released the reader");
            }

            Task reader = Task.Run(ReaderAsync);
            await waiting.Task.WithTimeout();
            await peer.SendAsync(new byte[5], SocketFlags.None);
            await resumed.Task.WithTimeout();

            // The reader's thread is blocked; the peer's FIN must still be seen.
            peer.Shutdown(SocketShutdown.Send);
            await connection.PeerClosed.WhenCanceled().WithTimeout();
            Assert.Equal(ConnectionState.PeerShutdown, connection.State);

            release.Set();
            await reader.WithTimeout();
        }
    }

    /// <summary>Starts a receive and reports once it is pending, so the bytes the test sends next find a reader waiting
    /// (the case the hand-off serves) rather than an input the reader empties by itself.</summary>
    private static ValueTask<int> PendingReceiveAsync(ManagedConnection connection, byte[] buffer, TaskCompletionSource waiting)
    {
        ValueTask<int> pending = connection.ReceiveAsync(buffer);
        Assert.False(pending.IsCompleted);
        waiting.SetResult();
        return pending;
    }
}

/// <summary>With DOTNET_SYSTEM_NET_SOCKETS_INLINE_COMPLETIONS=1 socket completions run on the runtime's event thread
/// itself, not on the pool: a reader resumed there and then blocking would stop every connection that thread serves.
/// The setting is read at start-up, so the scenario runs in a process of its own (tests/SafeSockets.TestHost).</summary>
[Collection(ExclusiveTests.Name)] // starts a process: between its fork and exec the child holds a copy of every descriptor, delaying other tests' closes (session 13)
public sealed class ReaderHandOffInlineCompletionsTests
{
    [Fact]
    public async Task WithInlineSocketCompletions_ABlockingReader_StopsNeitherOtherConnectionsNorItsFinDetection()
    {
        Dictionary<string, string> facts = await TestHostProcess.RunAsync(
            ["blocking-reader"], environment: new Dictionary<string, string> { ["DOTNET_SYSTEM_NET_SOCKETS_INLINE_COMPLETIONS"] = "1" });

        Assert.Equal("1", facts["inlineCompletions"]);
        Assert.Equal("6", facts["othersReceived"]);
        Assert.Equal("True", facts["peerClosedWhileBlocked"]);
    }

    [Fact]
    public async Task WithInlineSocketCompletions_TheReaderIsResumedOnThePool_UnlessTheApplicationOptsIntoInlineScheduling()
    {
        // A read that waited for its bytes: by default its continuation runs on a pool thread (never on the event thread);
        // with UnsafePreferInlineScheduling on the thread that completed the read, with no hop (Kestrel's
        // UnsafePreferInlineScheduling: the application promises never to block there).
        Dictionary<string, string> facts = await TestHostProcess.RunAsync(
            ["inline-reader"], environment: new Dictionary<string, string> { ["DOTNET_SYSTEM_NET_SOCKETS_INLINE_COMPLETIONS"] = "1" });

        Assert.Equal("1", facts["inlineCompletions"]);
        foreach (string end in new[] { "bytes", "fin" })
        {
            // Each of the two hand-overs (bytes handed to a waiting reader; the end of the input at the peer's FIN). A read
            // that did not wait (its await found it complete) proves nothing either way: counted apart, at most a few.
            Assert.Equal("0", facts[$"default.{end}.wrong"]);
            Assert.Equal("0", facts[$"inline.{end}.wrong"]);
            Assert.Equal("0", facts[$"default.{end}.resumedElsewhere"]);
            // With the option the reader may run on the completing thread ("prefer"); a reader resumed on the pool is
            // still correct, only a missed saving. One of 20 hopped in CI (session 13), in 3 of 14 runs of this test, at
            // the session's first commit as at its last, interleaved: not a regression. Likely cause, not proven: a lazy
            // watch that looked before the read (1-3 ms after the accept) resumes the loop from the pool. Most must not hop.
            Assert.True(int.Parse(facts[$"inline.{end}.resumedOnPool"], CultureInfo.InvariantCulture) <= 3, $"inline, {end}: {facts[$"inline.{end}.resumedOnPool"]} of 20 readers hopped to the pool");
            Assert.True(int.Parse(facts[$"default.{end}.resumedOnPool"], CultureInfo.InvariantCulture) >= 15, $"default, {end}: too few reads waited");
            Assert.True(int.Parse(facts[$"inline.{end}.resumedElsewhere"], CultureInfo.InvariantCulture) >= 15, $"inline, {end}: too few reads waited");
        }
    }
}
