// EchoServer: echoes every connection until the peer's FIN, then closes gracefully (FIN, drain).
// Ctrl+C or SIGTERM stops it gracefully: no new connections, live ones get FIN, stragglers are aborted after the grace period.
//   dotnet run --project samples/EchoServer -- --port 7007 --close-wait-timeout 5 --idle-timeout 60
//   dotnet run --project samples/EchoServer -- --unix /tmp/echo.sock        (a Unix domain socket instead of TCP)
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using SafeSockets;

int port = 7007;
TimeSpan closeWaitTimeout = ManagedConnectionOptions.DefaultCloseWaitTimeout;
TimeSpan grace = TimeSpan.FromSeconds(10);
TimeSpan idleTimeout = Timeout.InfiniteTimeSpan;
string? unixPath = null;
for (int i = 0; i < args.Length; i++)
{
    switch (args[i])
    {
        case "--port" when i + 1 < args.Length:
            port = int.Parse(args[++i], CultureInfo.InvariantCulture);
            break;
        case "--close-wait-timeout" when i + 1 < args.Length:
            closeWaitTimeout = TimeSpan.FromSeconds(double.Parse(args[++i], CultureInfo.InvariantCulture));
            break;
        case "--idle-timeout" when i + 1 < args.Length:
            // A connection that carries no byte either way for this long is closed gracefully (CloseOutcome.IdleTimedOut).
            idleTimeout = TimeSpan.FromSeconds(double.Parse(args[++i], CultureInfo.InvariantCulture));
            break;
        case "--unix" when i + 1 < args.Length:
            unixPath = args[++i];
            break;
        case "--grace" when i + 1 < args.Length:
            grace = TimeSpan.FromSeconds(double.Parse(args[++i], CultureInfo.InvariantCulture));
            break;
        default:
            Console.Error.WriteLine("usage: EchoServer [--port N (0 = any free port) | --unix PATH] [--close-wait-timeout SECONDS] [--idle-timeout SECONDS] [--grace SECONDS]");
            return 2;
    }
}

using var stopping = new CancellationTokenSource();
// Ctrl+C (SIGINT) or SIGTERM: stop gracefully instead of dying with connections open.
using PosixSignalRegistration onInterrupt = PosixSignalRegistration.Create(PosixSignal.SIGINT, Stop);
using PosixSignalRegistration onTerminate = PosixSignalRegistration.Create(PosixSignal.SIGTERM, Stop);
void Stop(PosixSignalContext context)
{
    context.Cancel = true;
    stopping.Cancel();
}

var options = new ManagedListenerOptions { Connection = new ManagedConnectionOptions { CloseWaitTimeout = closeWaitTimeout, IdleTimeout = idleTimeout } };
EndPoint endPoint = unixPath is null ? new IPEndPoint(IPAddress.Loopback, port) : new UnixDomainSocketEndPoint(unixPath);
await using ManagedListener listener = ManagedListener.Start(endPoint, options);
Console.WriteLine($"listening on {listener.LocalEndPoint}");

while (!stopping.IsCancellationRequested)
{
    try
    {
        ManagedConnection connection = await listener.AcceptAsync(stopping.Token);
        _ = EchoAsync(connection);
    }
    catch (OperationCanceledException)
    {
        break;
    }
}

Console.WriteLine($"stopping: {listener.ActiveConnections} connections get FIN, {grace.TotalSeconds:0.#} s grace");
await listener.StopAsync(grace);
Console.WriteLine("stopped");
return 0;

static async Task EchoAsync(ManagedConnection connection)
{
    await using (connection) // graceful close: FIN, drain, release
    {
        byte[] buffer = new byte[4096];
        try
        {
            int n;
            while ((n = await connection.ReceiveAsync(buffer)) > 0) // 0 = the peer's FIN
            {
                await connection.SendAsync(buffer.AsMemory(0, n));
            }
        }
        catch (Exception ex) when (ex is IOException or ObjectDisposedException)
        {
            // Reset by the peer, or closed by the listener's stop: nothing more to echo.
        }
    }
}
