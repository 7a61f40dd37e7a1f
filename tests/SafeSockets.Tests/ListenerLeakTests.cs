using System.Net;
using System.Net.Sockets;
using System.Runtime.CompilerServices;
using SafeSockets.Tests.Infrastructure;

namespace SafeSockets.Tests;

/// <summary>A listener must not keep finished connections reachable (each drained connection used to stay in its draining queue).</summary>
public sealed class ListenerLeakTests
{
    private const int Cycles = 300;
    private const int Margin = 8;

    [Fact]
    public async Task AcceptAsync_ServerClosesFirstForManyCycles_ListenerKeepsNoFinishedConnection()
    {
        await using ManagedListener listener = ManagedListener.Start(new IPEndPoint(IPAddress.Loopback, 0));
        // Cycles before and after the tracked ones, so one-off caches (first use, the last operation's pooled objects)
        // hold untracked connections, not tracked ones: only what grows with the number of connections is measured.
        for (int i = 0; i < Margin; i++)
        {
            await RunCycleAsync(listener, -1 - i);
        }

        var finished = new WeakReference[Cycles];
        for (int i = 0; i < Cycles; i++)
        {
            finished[i] = await RunCycleAsync(listener, i);
        }

        for (int i = 0; i < Margin; i++)
        {
            await RunCycleAsync(listener, Cycles + i);
        }

        Assert.Equal(0, listener.ActiveConnections);
        GC.Collect();
        GC.WaitForPendingFinalizers();
        GC.Collect();
        GC.WaitForPendingFinalizers();

        // The runtime's own bounded caches (a pooled async box per thread or core, a pooled socket operation's last
        // continuation) may hold on to a few connections until they are reused; a leak holds on to every one (the bug:
        // 300 of 300). A handful is not a leak; a count that grows with the cycles is.
        int reachable = finished.Count(w => w.IsAlive);
        int cacheBound = Environment.ProcessorCount + 2;
        Assert.True(reachable <= cacheBound, $"{reachable} of {Cycles} finished connections are still reachable (the listener, still running, keeps them); at most {cacheBound} may sit in bounded runtime caches");
    }

    /// <summary>One cycle; the connection is referenced only in here, so the test method itself keeps nothing alive.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static async Task<WeakReference> RunCycleAsync(ManagedListener listener, int cycle)
    {
        using var client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        await client.ConnectAsync(listener.LocalEndPoint).WithTimeout();
        ManagedConnection connection = await listener.AcceptAsync().WithTimeout();

        // The server answers and closes first (its drain starts); the client reads to the end, then closes its side.
        await connection.SendAsync(Peer.Pattern(100)).WithTimeout();
        Task<CloseResult> close = connection.CloseAsync().AsTask();
        PeerReadResult seen = await Peer.ReadToEndAsync(client).WithTimeout();
        client.Shutdown(SocketShutdown.Send);
        CloseResult result = await close.WithTimeout();

        Assert.Equal((100, PeerEnd.Fin), (seen.Bytes, seen.End));
        Assert.True(result.Outcome == CloseOutcome.Graceful, $"cycle {cycle}: {result.Outcome}");
        return new WeakReference(connection);
    }
}
