// HalfCloseProxy: a TCP proxy that propagates half-close in both directions.
//   dotnet run --project samples/HalfCloseProxy -- --listen 7008 --upstream 127.0.0.1:7007
using System.Globalization;
using System.Net;
using System.Runtime.InteropServices;
using HalfCloseProxy;
using SafeSockets;

int listenPort = 7008;
IPEndPoint upstream = new(IPAddress.Loopback, 7007);
for (int i = 0; i < args.Length; i++)
{
    switch (args[i])
    {
        case "--listen" when i + 1 < args.Length: listenPort = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
        case "--upstream" when i + 1 < args.Length: upstream = IPEndPoint.Parse(args[++i]); break;
        default:
            Console.Error.WriteLine("usage: HalfCloseProxy [--listen PORT (0 = any)] [--upstream IP:PORT]");
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

await using ManagedListener listener = ManagedListener.Start(new IPEndPoint(IPAddress.Loopback, listenPort));
Console.WriteLine($"listening on {listener.LocalEndPoint}, forwarding to {upstream}");
await Proxy.RunAsync(listener, upstream, stopping.Token);
await listener.StopAsync(TimeSpan.FromSeconds(5));
Console.WriteLine("stopped");
return 0;
