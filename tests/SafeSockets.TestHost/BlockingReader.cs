using System.Net;
using System.Net.Sockets;
using SafeSockets;

/// <summary><c>blocking-reader</c>: one connection's reader blocks the thread it was resumed on; other connections must
/// still receive and that connection's FIN must still be seen. Run by a test with
/// DOTNET_SYSTEM_NET_SOCKETS_INLINE_COMPLETIONS=1, where socket completions run on the runtime's event thread itself:
/// application code must never run there. One line per fact, "key=value".</summary>
internal static class BlockingReader
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(5);

    public static async Task<int> RunAsync()
    {
        Console.WriteLine($"inlineCompletions={Environment.GetEnvironmentVariable("DOTNET_SYSTEM_NET_SOCKETS_INLINE_COMPLETIONS") ?? "unset"}");
        await using ManagedListener listener = ManagedListener.Start(new IPEndPoint(IPAddress.Loopback, 0));
        (Socket peer, ManagedConnection blocked) = await PairAsync(listener);
        using var release = new ManualResetEventSlim();
        var waiting = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var resumed = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        Task reader = Task.Run(async () =>
        {
            ValueTask<int> pending = blocked.ReceiveAsync(new byte[16]);
            waiting.SetResult();
            await pending;
            resumed.SetResult();
            release.Wait(TimeSpan.FromSeconds(60)); // a handler doing synchronous work on the thread it was resumed on
        });
        await waiting.Task.WaitAsync(Bound);
        await peer.SendAsync(new byte[5], SocketFlags.None);
        await resumed.Task.WaitAsync(Bound);

        int received = 0;
        for (int i = 0; i < 6; i++)
        {
            (Socket otherPeer, ManagedConnection other) = await PairAsync(listener);
            using (otherPeer)
            await using (other)
            {
                ValueTask<int> pending = other.ReceiveAsync(new byte[16]);
                await otherPeer.SendAsync(new byte[3], SocketFlags.None);
                try
                {
                    received += await pending.AsTask().WaitAsync(Bound) == 3 ? 1 : 0;
                }
                catch (TimeoutException)
                {
                }

                otherPeer.Shutdown(SocketShutdown.Send);
            }
        }

        Console.WriteLine($"othersReceived={received}");
        var finSeen = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        using CancellationTokenRegistration onFin = blocked.PeerClosed.Register(() => finSeen.TrySetResult());
        peer.Shutdown(SocketShutdown.Send);
        Console.WriteLine($"peerClosedWhileBlocked={await Task.WhenAny(finSeen.Task, Task.Delay(Bound)) == finSeen.Task}");

        release.Set();
        await reader.WaitAsync(Bound);
        await blocked.DisposeAsync();
        peer.Dispose();
        return 0;
    }

    private static async Task<(Socket Peer, ManagedConnection Connection)> PairAsync(ManagedListener listener)
    {
        var peer = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        await peer.ConnectAsync(listener.LocalEndPoint).WaitAsync(Bound);
        return (peer, await listener.AcceptAsync().AsTask().WaitAsync(Bound));
    }
}
