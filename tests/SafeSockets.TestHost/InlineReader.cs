using System.Net;
using System.Net.Sockets;
using SafeSockets;

/// <summary><c>inline-reader</c>: where the continuation of a <see cref="ManagedConnection.ReceiveAsync"/> that waited for
/// bytes runs, with and without <see cref="ManagedConnectionOptions.UnsafePreferInlineScheduling"/>. Run by a test with
/// DOTNET_SYSTEM_NET_SOCKETS_INLINE_COMPLETIONS=1 (socket completions on the runtime's event thread, read at start-up):
/// with the option off the reader must be resumed on the pool, with it on on the completing thread (no hop). One line per
/// fact, "key=value".</summary>
internal static class InlineReader
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(5);

    public static async Task<int> RunAsync()
    {
        Console.WriteLine($"inlineCompletions={Environment.GetEnvironmentVariable("DOTNET_SYSTEM_NET_SOCKETS_INLINE_COMPLETIONS") ?? "unset"}");
        foreach (bool inline in new[] { false, true })
        {
            var options = new ManagedConnectionOptions { UnsafePreferInlineScheduling = inline };
            await using ManagedListener listener = ManagedListener.Start(
                new IPEndPoint(IPAddress.Loopback, 0), new ManagedListenerOptions { Connection = options });
            int onPool = 0;
            int offPool = 0;
            for (int i = 0; i < 20; i++)
            {
                using var peer = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
                await peer.ConnectAsync(listener.LocalEndPoint).WaitAsync(Bound);
                await using ManagedConnection connection = await listener.AcceptAsync().AsTask().WaitAsync(Bound);

                // A read that must wait for its bytes (the peer sends only once it is pending): its continuation runs where
                // the library resumes the reader.
                var waiting = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                var resumedOnPool = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);
                _ = Task.Run(async () =>
                {
                    ValueTask<int> pending = connection.ReceiveAsync(new byte[16]);
                    waiting.SetResult();
                    int n = await pending;
                    resumedOnPool.SetResult(n == 5 && Thread.CurrentThread.IsThreadPoolThread);
                });
                await waiting.Task.WaitAsync(Bound);
                await peer.SendAsync(new byte[5], SocketFlags.None);
                if (await resumedOnPool.Task.WaitAsync(Bound))
                {
                    onPool++;
                }
                else
                {
                    offPool++;
                }

                peer.Shutdown(SocketShutdown.Send);
            }

            Console.WriteLine($"{(inline ? "inline" : "default")}.resumedOnPool={onPool}");
            Console.WriteLine($"{(inline ? "inline" : "default")}.resumedElsewhere={offPool}");
        }

        return 0;
    }
}
