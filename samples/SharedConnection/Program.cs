// SharedConnection: several components write through leases on one connection. Each releases its lease when
// done; the creator lets go first. The peer sees the FIN only after the last component is done.
//   dotnet run --project samples/SharedConnection
using System.Net;
using System.Net.Sockets;
using System.Text;
using SafeSockets;

// A peer that reads lines until FIN and reports what it saw.
using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
listener.Listen(1);
Task<string> peer = Task.Run(async () =>
{
    using Socket socket = await listener.AcceptAsync();
    using var received = new MemoryStream();
    byte[] buffer = new byte[4096];
    int n;
    while ((n = await socket.ReceiveAsync(buffer, SocketFlags.None)) > 0)
    {
        received.Write(buffer, 0, n);
    }

    socket.Shutdown(SocketShutdown.Send);
    return Encoding.UTF8.GetString(received.ToArray());
});

ManagedConnection connection = await ManagedConnection.ConnectAsync(listener.LocalEndPoint!);
string[] components = ["metrics", "audit", "replication"];
ConnectionLease[] leases = [.. components.Select(_ => connection.Acquire())];
Console.WriteLine($"leases: {connection.LeaseCount} (creator + {leases.Length} components)");

await connection.DisposeAsync(); // the creator is done; the components keep the connection open
Console.WriteLine($"creator released: leases {connection.LeaseCount}, state {connection.State}");

await Task.WhenAll(components.Select(async (name, i) =>
{
    await using ConnectionLease lease = leases[i];
    for (int line = 1; line <= 3; line++)
    {
        await lease.Connection.SendAsync(Encoding.UTF8.GetBytes($"{name} line {line}\n"));
        await Task.Yield();
    }

    Console.WriteLine($"{name} done; releasing its lease (leases left before release: {connection.LeaseCount})");
}));

CloseResult result = await connection.Completion;
string seen = await peer;
Console.WriteLine($"connection closed after the last lease: {result.Outcome}; the peer received {seen.Split('\n', StringSplitOptions.RemoveEmptyEntries).Length} lines, then FIN");
return result.Outcome == CloseOutcome.Graceful && seen.Split('\n', StringSplitOptions.RemoveEmptyEntries).Length == 9 ? 0 : 1;
