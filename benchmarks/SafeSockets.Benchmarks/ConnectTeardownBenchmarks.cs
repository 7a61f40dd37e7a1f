using System.Net;
using System.Net.Sockets;
using BenchmarkDotNet.Attributes;

namespace SafeSockets.Benchmarks;

/// <summary>One connect → 1-byte request/response → graceful teardown cycle on loopback, both ends in process.
/// Stresses per-connection setup and teardown cost: time and bytes allocated for both ends of one cycle, against a
/// hand-written raw <see cref="Socket"/> graceful close (Shutdown(Send), read to EOF, Dispose), with and without
/// SafeSockets' pooling.</summary>
public class ConnectTeardownBenchmarks
{
    private Socket? _listener;
    private EndPoint? _endPoint;
    private readonly byte[] _one = [42];
    private readonly byte[] _buffer = new byte[64];

    [GlobalSetup]
    public void Setup()
    {
        _listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        _listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        _listener.Listen(512);
        _endPoint = _listener.LocalEndPoint;
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _listener?.Dispose();
    }

    [Benchmark(Baseline = true)]
    public async Task RawGraceful()
    {
        Task<Socket> accept = _listener!.AcceptAsync();
        using var client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        await client.ConnectAsync(_endPoint!);
        using Socket server = await accept;
        await client.SendAsync(_one, SocketFlags.None);
        await server.ReceiveAsync(_buffer, SocketFlags.None);
        await server.SendAsync(_one, SocketFlags.None);
        await client.ReceiveAsync(_buffer, SocketFlags.None);

        // Client closes first: FIN, read to EOF; the server answers with its FIN after reading the client's.
        client.Shutdown(SocketShutdown.Send);
        await server.ReceiveAsync(_buffer, SocketFlags.None);
        server.Shutdown(SocketShutdown.Send);
        await client.ReceiveAsync(_buffer, SocketFlags.None);
    }

    [Benchmark]
    public Task ManagedGraceful() => ManagedCycleAsync();

    private async Task ManagedCycleAsync()
    {
        Task<Socket> accept = _listener!.AcceptAsync();
        ManagedConnection client = await ManagedConnection.ConnectAsync(_endPoint!);
        ManagedConnection server = ManagedConnection.Adopt(await accept);
        await client.SendAsync(_one);
        await server.ReceiveAsync(_buffer);
        await server.SendAsync(_one);
        await client.ReceiveAsync(_buffer);

        // The client closes first (FIN, drain); the server sees the FIN, closes, and the client's drain ends.
        ValueTask<CloseResult> clientClose = client.CloseAsync();
        await server.ReceiveAsync(_buffer);
        await server.CloseAsync();
        await clientClose;
    }
}
