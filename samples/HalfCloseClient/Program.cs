// HalfCloseClient: "send the request, FIN, read the answer to EOF" (what `nc -N` does).
//   echo hello | dotnet run --project samples/HalfCloseClient -- --port 7007
//   dotnet run --project samples/HalfCloseClient -- --host 127.0.0.1 --port 7007 --file request.bin
using System.Globalization;
using System.Net;
using SafeSockets;

string host = "127.0.0.1";
int port = 7007;
string? file = null;
for (int i = 0; i < args.Length; i++)
{
    switch (args[i])
    {
        case "--host" when i + 1 < args.Length: host = args[++i]; break;
        case "--port" when i + 1 < args.Length: port = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
        case "--file" when i + 1 < args.Length: file = args[++i]; break;
        default:
            Console.Error.WriteLine("usage: HalfCloseClient [--host H] [--port N] [--file PATH] (default: the request is read from stdin)");
            return 2;
    }
}

EndPoint server = IPAddress.TryParse(host, out IPAddress? address) ? new IPEndPoint(address, port) : new DnsEndPoint(host, port);
await using ManagedConnection connection = await ManagedConnection.ConnectAsync(server);
await using Stream output = Console.OpenStandardOutput();

// Read the answer while the request is still being sent: a server may answer as it goes.
Task<long> answer = Task.Run(async () =>
{
    long total = 0;
    byte[] buffer = new byte[16 * 1024];
    int n;
    while ((n = await connection.ReceiveAsync(buffer)) > 0)
    {
        await output.WriteAsync(buffer.AsMemory(0, n));
        total += n;
    }

    return total;
});

await using (Stream request = file is null ? Console.OpenStandardInput() : File.OpenRead(file))
{
    byte[] chunk = new byte[16 * 1024];
    int n;
    while ((n = await request.ReadAsync(chunk)) > 0)
    {
        await connection.SendAsync(chunk.AsMemory(0, n));
    }
}

await connection.ShutdownSendAsync();     // FIN: "that was the whole request"
long received = await answer;             // the answer, up to the server's FIN
await output.FlushAsync();
CloseResult closed = await connection.CloseAsync();
Console.Error.WriteLine($"received {received} bytes; close: {closed.Outcome}");
return closed.Outcome is CloseOutcome.Graceful ? 0 : 1;
