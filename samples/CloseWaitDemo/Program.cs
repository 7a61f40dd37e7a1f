// CloseWaitDemo: the classic production incident, side by side. Two servers whose application code "forgets"
// its connections after accepting them (a stuck handler, a lost task). Clients connect and half-close.
// The raw Socket server leaves every one of them in CLOSE_WAIT; the ManagedConnection server notices the
// peer's FIN by itself and closes after CloseWaitTimeout. Counts come from the kernel (/proc/net/tcp).
//   dotnet run --project samples/CloseWaitDemo -- [connections (20)] [seconds to wait (3)]
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using SafeSockets;
using SafeSockets.Diagnostics;

int count = args.Length > 0 ? int.Parse(args[0], CultureInfo.InvariantCulture) : 20;
double seconds = args.Length > 1 ? double.Parse(args[1], CultureInfo.InvariantCulture) : 3;
if (!TcpSocketTable.IsSupported)
{
    Console.Error.WriteLine("This demo reads the kernel's socket table from /proc/net/tcp: Linux only.");
    return 2;
}

// Raw server: accepts and forgets.
using var rawListener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
rawListener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
rawListener.Listen(count);
var forgottenRaw = new List<Socket>();

// Managed server: accepts and forgets too, but the connection watches for the peer's FIN itself.
var options = new ManagedListenerOptions { Connection = new ManagedConnectionOptions { CloseWaitTimeout = TimeSpan.FromSeconds(1) } };
await using ManagedListener managedListener = ManagedListener.Start(new IPEndPoint(IPAddress.Loopback, 0), options);
var forgottenManaged = new List<ManagedConnection>();

var clients = new List<Socket>();
foreach (EndPoint server in new[] { rawListener.LocalEndPoint!, managedListener.LocalEndPoint })
{
    for (int i = 0; i < count; i++)
    {
        var client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        await client.ConnectAsync(server);
        clients.Add(client);
    }
}

for (int i = 0; i < count; i++)
{
    forgottenRaw.Add(await rawListener.AcceptAsync());
    forgottenManaged.Add(await managedListener.AcceptAsync());
}

int rawPort = ((IPEndPoint)rawListener.LocalEndPoint!).Port;
int managedPort = ((IPEndPoint)managedListener.LocalEndPoint).Port;
Console.WriteLine($"{count} clients on each server half-close now (FIN); the servers' code never looks at them again.");
foreach (Socket client in clients)
{
    client.Shutdown(SocketShutdown.Send);
}

Console.WriteLine($"waiting {seconds:0.#} s (CloseWaitTimeout of the managed server: 1 s) ...");
await Task.Delay(TimeSpan.FromSeconds(seconds));

int rawCloseWait = TcpSocketTable.Count(TcpState.CloseWait, rawPort);
int managedCloseWait = TcpSocketTable.Count(TcpState.CloseWait, managedPort);
Console.WriteLine();
Console.WriteLine("| server                 | sockets in CLOSE_WAIT (kernel) |");
Console.WriteLine("|------------------------|--------------------------------|");
Console.WriteLine($"| raw Socket             | {rawCloseWait,30} |");
Console.WriteLine($"| ManagedConnection      | {managedCloseWait,30} |");

forgottenRaw.ForEach(s => s.Dispose());
clients.ForEach(c => c.Dispose());
return managedCloseWait == 0 && rawCloseWait == count ? 0 : 1;
