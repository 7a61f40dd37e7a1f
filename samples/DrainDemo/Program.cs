// DrainDemo: the bug SafeSockets fixes, side by side on loopback.
// A server answers without reading the whole request, then closes. With a raw Socket the kernel
// resets the connection over the unread bytes and the client loses the tail of the answer; with
// ManagedConnection.CloseAsync the client gets every byte and a FIN.
using System.Net;
using System.Net.Sockets;
using SafeSockets;

const int RequestBytes = 64 * 1024;
const int ResponseBytes = 4 * 1024 * 1024;
int rounds = args.Length > 0 && int.TryParse(args[0], out int r) && r > 0 ? r : 5;

Console.WriteLine($"Server answers {ResponseBytes / 1024} KiB without reading a {RequestBytes / 1024} KiB request, then closes. {rounds} rounds each.");
Console.WriteLine();
Console.WriteLine("| close                          | server wrote (median) | client got (median) | client saw | rounds with reset |");
Console.WriteLine("|--------------------------------|-----------------------|---------------------|------------|-------------------|");
await RunAsync("raw Socket.Dispose", rawClose: true);
await RunAsync("ManagedConnection.CloseAsync", rawClose: false);
return 0;

async Task RunAsync(string name, bool rawClose)
{
    var written = new List<long>();
    var received = new List<long>();
    int resets = 0;
    for (int i = 0; i < rounds; i++)
    {
        (long wrote, long bytes, bool reset) = await OneRoundAsync(rawClose);
        written.Add(wrote);
        received.Add(bytes);
        resets += reset ? 1 : 0;
    }

    written.Sort();
    received.Sort();
    string saw = resets == rounds ? "RST" : resets == 0 ? "FIN" : "mixed";
    Console.WriteLine($"| {name,-30} | {written[written.Count / 2],14:N0} bytes | {received[received.Count / 2],12:N0} bytes | {saw,-10} | {resets,8} of {rounds,-6} |");
}

async Task<(long Written, long Received, bool Reset)> OneRoundAsync(bool rawClose)
{
    using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
    listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
    listener.Listen(1);
    using var client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
    await client.ConnectAsync(listener.LocalEndPoint!);
    Socket server = await listener.AcceptAsync();

    await client.SendAsync(new byte[RequestBytes], SocketFlags.None);
    byte[] response = new byte[ResponseBytes];

    // The client starts reading a moment after the server has written and closed: a slow reader.
    Task closing;
    int queued = ResponseBytes;
    if (rawClose)
    {
        // Written without blocking: what the kernel accepted is what the server believes it sent.
        server.Blocking = false;
        queued = 0;
        try
        {
            while (queued < ResponseBytes)
            {
                queued += server.Send(response, queued, ResponseBytes - queued, SocketFlags.None);
            }
        }
        catch (SocketException ex) when (ex.SocketErrorCode == SocketError.WouldBlock)
        {
        }

        server.Dispose();
        closing = Task.CompletedTask;
    }
    else
    {
        ManagedConnection connection = ManagedConnection.Adopt(server);
        closing = Task.Run(async () =>
        {
            await connection.SendAsync(response);
            await connection.CloseAsync();
        });
    }

    long total = 0;
    bool reset = false;
    byte[] buffer = new byte[64 * 1024];
    try
    {
        int n;
        while ((n = await client.ReceiveAsync(buffer, SocketFlags.None)) > 0)
        {
            total += n;
        }

        client.Shutdown(SocketShutdown.Send);
    }
    catch (SocketException ex) when (ex.SocketErrorCode == SocketError.ConnectionReset)
    {
        reset = true;
    }

    await closing.WaitAsync(TimeSpan.FromSeconds(60));
    return (queued, total, reset);
}
