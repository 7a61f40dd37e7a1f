// HalfCloseProxy: a TCP proxy that propagates half-close in both directions.
//   dotnet run --project samples/HalfCloseProxy -- --listen 7008 --upstream 127.0.0.1:7007 [--proxy-timeout 600]
// --proxy-timeout SECONDS (default 600, as nginx's stream proxy_timeout): how long a side whose peer has sent FIN may stay
// idle while the other side has not answered yet (for example a client that sent its request and FIN, `nc -N`, waiting
// for a slow upstream). It is the CloseWaitTimeout of both sides' connections: the library's default (5 s) would close
// such a client with an empty answer when the upstream takes longer. See Proxy.cs and docs/options.md.
using System.Globalization;
using System.Net;
using System.Runtime.InteropServices;
using HalfCloseProxy;
using SafeSockets;

int listenPort = 7008;
IPEndPoint upstream = new(IPAddress.Loopback, 7007);
TimeSpan proxyTimeout = Proxy.DefaultProxyTimeout;
for (int i = 0; i < args.Length; i++)
{
    switch (args[i])
    {
        case "--listen" when i + 1 < args.Length: listenPort = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
        case "--upstream" when i + 1 < args.Length: upstream = IPEndPoint.Parse(args[++i]); break;
        case "--proxy-timeout" when i + 1 < args.Length
            && double.TryParse(args[++i], NumberStyles.Float, CultureInfo.InvariantCulture, out double seconds) && seconds > 0 && seconds <= int.MaxValue:
            proxyTimeout = TimeSpan.FromSeconds(seconds);
            break;
        default:
            Console.Error.WriteLine("usage: HalfCloseProxy [--listen PORT (0 = any)] [--upstream IP:PORT] [--proxy-timeout SECONDS (default 600)]");
            Console.Error.WriteLine("  --proxy-timeout: how long a side whose peer has sent FIN may stay idle waiting for the other side's answer");
            Console.Error.WriteLine("                   (the CloseWaitTimeout of both sides; as nginx's stream proxy_timeout, default 10 min)");
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

// Both sides get the proxy's own CLOSE_WAIT bound: clients through the listener, upstream connections through RunAsync.
ManagedConnectionOptions connectionOptions = Proxy.ConnectionOptions(proxyTimeout);
await using ManagedListener listener = Proxy.Listen(new IPEndPoint(IPAddress.Loopback, listenPort), connectionOptions);
Console.WriteLine($"listening on {listener.LocalEndPoint}, forwarding to {upstream}, proxy timeout {proxyTimeout.TotalSeconds:0.###} s");
await Proxy.RunAsync(listener, upstream, connectionOptions, stopping.Token);
await listener.StopAsync(TimeSpan.FromSeconds(5));
Console.WriteLine("stopped");
return 0;
