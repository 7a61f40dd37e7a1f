using System.Diagnostics;
using System.Net;
using System.Net.Sockets;

namespace SafeSockets.Benchmarks.Teardown;

/// <summary><c>fin-latency</c>: time from the peer's FIN to ours, as the peer measures it, for an application that closes
/// as soon as <see cref="ManagedConnection.PeerClosed"/> fires, and for one that never reacts (the CLOSE_WAIT guard).</summary>
internal static class FinLatencyCommand
{
    public static async Task<int> RunAsync(string[] args)
    {
        int reacting = ReliabilityCommands.IntArg(args, "--connections", 2000);
        int idle = ReliabilityCommands.IntArg(args, "--idle-connections", 200);
        TimeSpan closeWait = TimeSpan.FromMilliseconds(ReliabilityCommands.IntArg(args, "--close-wait-ms", 100));
        Console.WriteLine($"fin-latency: {reacting} connections whose application closes on PeerClosed (4 at a time), then {idle} whose application never reacts (CloseWaitTimeout {closeWait.TotalMilliseconds:0} ms, 8 at a time).");

        double[] reactive = await MeasureAsync(reacting, 4, new ManagedConnectionOptions(), react: true);
        double[] guarded = await MeasureAsync(idle, 8, new ManagedConnectionOptions { CloseWaitTimeout = closeWait }, react: false);
        double[] overshoot = [.. guarded.Select(us => us - closeWait.TotalMicroseconds)];

        Console.WriteLine();
        Console.WriteLine("| application | n | p50 | p99 | max | target |");
        Console.WriteLine("|---|---:|---:|---:|---:|---|");
        Console.WriteLine($"| closes when PeerClosed fires: peer FIN -> our FIN | {reactive.Length} | {P(reactive, 0.5):N0} us | {P(reactive, 0.99):N0} us | {reactive[^1]:N0} us | p99 <= 1 ms |");
        Console.WriteLine($"| never reacts: our FIN after CloseWaitTimeout + | {overshoot.Length} | {P(overshoot, 0.5):N0} us | {P(overshoot, 0.99):N0} us | {overshoot[^1]:N0} us | <= 5 ms |");
        bool ok = P(reactive, 0.99) <= 1000 && P(overshoot, 0.99) <= 5000;
        Console.WriteLine(ok ? "fin-latency: targets met" : "fin-latency: a target was missed on this run");
        return 0;
    }

    private static async Task<double[]> MeasureAsync(int count, int parallel, ManagedConnectionOptions options, bool react)
    {
        await using ManagedListener listener = ManagedListener.Start(new IPEndPoint(IPAddress.Loopback, 0), new ManagedListenerOptions { Connection = options, Backlog = 1024 });
        var latencies = new double[count];
        int next = -1;
        using var stop = new CancellationTokenSource();
        Task server = Task.Run(async () =>
        {
            while (!stop.IsCancellationRequested)
            {
                ManagedConnection connection;
                try
                {
                    connection = await listener.AcceptAsync(stop.Token);
                }
                catch (Exception ex) when (ex is OperationCanceledException or ObjectDisposedException)
                {
                    return;
                }

                if (react)
                {
                    // The application's reaction: close as soon as the peer has closed.
                    connection.PeerClosed.UnsafeRegister(static c => _ = ((ManagedConnection)c!).CloseAsync().AsTask(), connection);
                }
            }
        });

        async Task ClientAsync()
        {
            int i;
            while ((i = Interlocked.Increment(ref next)) < count)
            {
                using var client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
                await client.ConnectAsync(listener.LocalEndPoint);
                await client.SendAsync(new byte[1], SocketFlags.None); // make sure the server side exists and is reading
                long start = Stopwatch.GetTimestamp();
                client.Shutdown(SocketShutdown.Send);
                byte[] buffer = new byte[16];
                while (await client.ReceiveAsync(buffer, SocketFlags.None).WaitAsync(TimeSpan.FromSeconds(30)) > 0)
                {
                }

                latencies[i] = Stopwatch.GetElapsedTime(start).TotalMicroseconds;
            }
        }

        await Task.WhenAll(Enumerable.Range(0, parallel).Select(_ => Task.Run(ClientAsync)));
        await stop.CancelAsync();
        await server;
        Array.Sort(latencies);
        return latencies;
    }

    private static double P(double[] sorted, double p) => sorted[Math.Min(sorted.Length - 1, (int)(p * sorted.Length))];
}
