using System.Net;
using System.Net.Sockets;
using SafeSockets;

/// <summary><c>inline-reader</c>: where the continuation of a <see cref="ManagedConnection.ReceiveAsync"/> that waited runs,
/// with and without <see cref="ManagedConnectionOptions.UnsafePreferInlineScheduling"/>, for bytes and for the peer's FIN
/// (two hand-overs in the library). Run by a test with DOTNET_SYSTEM_NET_SOCKETS_INLINE_COMPLETIONS=1 (socket completions
/// on the runtime's event thread, read at start-up): with the option off the reader must be resumed on the pool, with it
/// on on the completing thread (no hop). A read whose await found it already complete did not wait and is counted apart.
/// One line per fact, "key=value".</summary>
internal static class InlineReader
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(5);

    public static async Task<int> RunAsync()
    {
        Console.WriteLine($"inlineCompletions={Environment.GetEnvironmentVariable("DOTNET_SYSTEM_NET_SOCKETS_INLINE_COMPLETIONS") ?? "unset"}");
        foreach (bool inline in new[] { false, true })
        {
            foreach (bool fin in new[] { false, true })
            {
                var options = new ManagedConnectionOptions { UnsafePreferInlineScheduling = inline };
                await using ManagedListener listener = ManagedListener.Start(
                    new IPEndPoint(IPAddress.Loopback, 0), new ManagedListenerOptions { Connection = options });
                var counts = new Dictionary<string, int> { ["resumedOnPool"] = 0, ["resumedElsewhere"] = 0, ["synchronous"] = 0, ["wrong"] = 0 };
                for (int i = 0; i < 20; i++)
                {
                    using var peer = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
                    await peer.ConnectAsync(listener.LocalEndPoint).WaitAsync(Bound);
                    await using ManagedConnection connection = await listener.AcceptAsync().AsTask().WaitAsync(Bound);

                    // A read that must wait (the peer sends only once it is pending): its continuation runs where the
                    // library resumes the reader.
                    var waiting = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                    var outcome = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
                    _ = Task.Run(async () =>
                    {
                        ValueTask<int> pending = connection.ReceiveAsync(new byte[16]);
                        waiting.SetResult();
                        bool waited = !pending.IsCompleted;
                        int n = await pending;
                        outcome.SetResult(n != (fin ? 0 : 5) ? "wrong" : !waited ? "synchronous"
                            : Thread.CurrentThread.IsThreadPoolThread ? "resumedOnPool" : "resumedElsewhere");
                    });
                    await waiting.Task.WaitAsync(Bound);
                    if (fin)
                    {
                        peer.Shutdown(SocketShutdown.Send);
                    }
                    else
                    {
                        await peer.SendAsync(new byte[5], SocketFlags.None);
                    }

                    counts[await outcome.Task.WaitAsync(Bound)]++;
                    if (!fin)
                    {
                        peer.Shutdown(SocketShutdown.Send);
                    }
                }

                foreach ((string key, int count) in counts)
                {
                    Console.WriteLine($"{(inline ? "inline" : "default")}.{(fin ? "fin" : "bytes")}.{key}={count}");
                }
            }
        }

        return 0;
    }
}
