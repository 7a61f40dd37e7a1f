using System.Buffers;
using System.IO.Pipelines;
using System.Net;
using System.Net.Sockets;
using BenchmarkDotNet.Attributes;
using Pipelines.Sockets.Unofficial;

namespace SafeSockets.Benchmarks;

/// <summary>A connected loopback pair kept for the whole benchmark: raw sockets and managed connections.</summary>
public abstract class PairBenchmark
{
    protected Socket? Listener { get; private set; }

    protected EndPoint? EndPoint { get; private set; }

    [GlobalSetup]
    public virtual void Setup()
    {
        Listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        Listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        Listener.Listen(512);
        EndPoint = Listener.LocalEndPoint;
    }

    [GlobalCleanup]
    public virtual void Cleanup() => Listener?.Dispose();

    protected async Task<(Socket Client, Socket Server)> RawPairAsync()
    {
        Task<Socket> accept = Listener!.AcceptAsync();
        var client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        await client.ConnectAsync(EndPoint!);
        Socket server = await accept;
        server.NoDelay = true;
        return (client, server);
    }
}

/// <summary>Half-close round trip on a fresh connection: the client sends a request and its FIN, the server reads to the
/// FIN, answers and closes, the client reads the answer to the end. The classic <c>nc -N</c> protocol.</summary>
public class HalfCloseRoundTripBenchmarks : PairBenchmark
{
    private readonly byte[] _request = new byte[128];
    private readonly byte[] _answer = new byte[128];

    [Benchmark(Baseline = true)]
    public async Task Raw()
    {
        (Socket client, Socket server) = await RawPairAsync();
        using (client)
        using (server)
        {
            byte[] buffer = new byte[256];
            await client.SendAsync(_request, SocketFlags.None);
            client.Shutdown(SocketShutdown.Send);
            while (await server.ReceiveAsync(buffer, SocketFlags.None) > 0)
            {
            }

            await server.SendAsync(_answer, SocketFlags.None);
            server.Shutdown(SocketShutdown.Send);
            while (await client.ReceiveAsync(buffer, SocketFlags.None) > 0)
            {
            }
        }
    }

    [Benchmark]
    public async Task Managed()
    {
        (Socket rawClient, Socket rawServer) = await RawPairAsync();
        ManagedConnection client = ManagedConnection.Adopt(rawClient);
        ManagedConnection server = ManagedConnection.Adopt(rawServer);
        byte[] buffer = new byte[256];
        await client.SendAsync(_request);
        await client.ShutdownSendAsync();
        while (await server.ReceiveAsync(buffer) > 0)
        {
        }

        await server.SendAsync(_answer);
        ValueTask<CloseResult> serverClose = server.CloseAsync();
        while (await client.ReceiveAsync(buffer) > 0)
        {
        }

        await client.CloseAsync();
        await serverClose;
    }
}

/// <summary>Drain of N unread bytes before close: the server closes while the client still sends N bytes, then FIN.
/// Raw baseline: the hand-written drain (Shutdown(Send), read and discard to EOF).</summary>
public class DrainBenchmarks : PairBenchmark
{
    [Params(4 * 1024, 256 * 1024)]
    public int Bytes { get; set; }

    private byte[] _payload = [];

    public override void Setup()
    {
        base.Setup();
        _payload = new byte[Bytes];
    }

    [Benchmark(Baseline = true)]
    public async Task RawHandWrittenDrain()
    {
        (Socket client, Socket server) = await RawPairAsync();
        using (client)
        using (server)
        {
            Task send = SendThenFinAsync(client);
            server.Shutdown(SocketShutdown.Send);
            byte[] scratch = new byte[4096];
            while (await server.ReceiveAsync(scratch, SocketFlags.None) > 0)
            {
            }

            await send;
        }
    }

    [Benchmark]
    public async Task ManagedCloseAsync()
    {
        (Socket client, Socket rawServer) = await RawPairAsync();
        using (client)
        {
            var options = new ManagedConnectionOptions { MaxDrainBytes = Bytes * 2L };
            ManagedConnection server = ManagedConnection.Adopt(rawServer, options);
            Task send = SendThenFinAsync(client);
            await server.CloseAsync();
            await send;
        }
    }

    private async Task SendThenFinAsync(Socket client)
    {
        await client.SendAsync(_payload, SocketFlags.None);
        client.Shutdown(SocketShutdown.Send);
        byte[] buffer = new byte[64];
        while (await client.ReceiveAsync(buffer, SocketFlags.None) > 0)
        {
        }
    }
}

/// <summary>Lease acquire/release on a live connection, against the cost of a raw socket's nothing (an Interlocked pair).</summary>
public class LeaseBenchmarks : PairBenchmark
{
    private ManagedConnection? _connection;
    private Socket? _peer;
    private int _refs = 1;

    public override void Setup()
    {
        base.Setup();
        (Socket client, Socket server) = RawPairAsync().GetAwaiter().GetResult();
        _peer = client;
        _connection = ManagedConnection.Adopt(server);
    }

    public override void Cleanup()
    {
        _connection!.Abort();
        _peer!.Dispose();
        base.Cleanup();
    }

    /// <summary>What a hand-rolled reference count costs: two interlocked operations.</summary>
    [Benchmark(Baseline = true)]
    public int RawInterlockedRefCount()
    {
        Interlocked.Increment(ref _refs);
        return Interlocked.Decrement(ref _refs);
    }

    [Benchmark]
    public ValueTask AcquireRelease() => _connection!.Acquire().DisposeAsync();
}

/// <summary>Echo throughput through the pipe surface: 64 KiB written, echoed back, read. Raw sockets as the baseline,
/// SafeSockets' <see cref="ManagedConnection.Transport"/> and Pipelines.Sockets.Unofficial's SocketConnection.</summary>
public class PipeEchoBenchmarks : PairBenchmark
{
    private const int Size = 64 * 1024;
    private readonly byte[] _payload = new byte[Size];
    private Socket? _rawClient;
    private Socket? _rawServer;
    private ManagedConnection? _managedClient;
    private ManagedConnection? _managedServer;
    private SocketConnection? _psuClient;
    private SocketConnection? _psuServer;
    private Task? _echoes;
    private CancellationTokenSource? _stop;

    public override void Setup()
    {
        base.Setup();
        _stop = new CancellationTokenSource();
        (_rawClient, _rawServer) = RawPairAsync().GetAwaiter().GetResult();
        (Socket mc, Socket ms) = RawPairAsync().GetAwaiter().GetResult();
        _managedClient = ManagedConnection.Adopt(mc);
        _managedServer = ManagedConnection.Adopt(ms);
        (Socket pc, Socket ps) = RawPairAsync().GetAwaiter().GetResult();
        _psuClient = SocketConnection.Create(pc);
        _psuServer = SocketConnection.Create(ps);
        _echoes = Task.WhenAll(RawEchoAsync(_rawServer), PipeEchoAsync(_managedServer.Transport), PipeEchoAsync(_psuServer));
    }

    public override void Cleanup()
    {
        _stop!.Cancel();
        _managedClient!.Abort();
        _managedServer!.Abort();
        _psuClient!.Dispose();
        _psuServer!.Dispose();
        _rawClient!.Dispose();
        _rawServer!.Dispose();
        base.Cleanup();
    }

    [Benchmark(Baseline = true)]
    public async Task Raw()
    {
        await _rawClient!.SendAsync(_payload, SocketFlags.None);
        byte[] buffer = ArrayPool<byte>.Shared.Rent(Size);
        int total = 0;
        while (total < Size)
        {
            total += await _rawClient.ReceiveAsync(buffer, SocketFlags.None);
        }

        ArrayPool<byte>.Shared.Return(buffer);
    }

    [Benchmark]
    public Task ManagedTransport() => PipeRoundTripAsync(_managedClient!.Transport);

    [Benchmark]
    public Task PipelinesSocketsUnofficial() => PipeRoundTripAsync(_psuClient!);

    private async Task PipeRoundTripAsync(IDuplexPipe pipe)
    {
        await pipe.Output.WriteAsync(_payload);
        long total = 0;
        while (total < Size)
        {
            ReadResult result = await pipe.Input.ReadAsync();
            total += result.Buffer.Length;
            pipe.Input.AdvanceTo(result.Buffer.End);
        }
    }

    private async Task RawEchoAsync(Socket socket)
    {
        byte[] buffer = new byte[Size];
        try
        {
            int n;
            while ((n = await socket.ReceiveAsync(buffer, SocketFlags.None, _stop!.Token)) > 0)
            {
                await socket.SendAsync(buffer.AsMemory(0, n), SocketFlags.None);
            }
        }
        catch (Exception ex) when (ex is SocketException or OperationCanceledException or ObjectDisposedException)
        {
        }
    }

    private static async Task PipeEchoAsync(IDuplexPipe pipe)
    {
        try
        {
            while (true)
            {
                ReadResult result = await pipe.Input.ReadAsync();
                foreach (ReadOnlyMemory<byte> segment in result.Buffer)
                {
                    await pipe.Output.WriteAsync(segment);
                }

                pipe.Input.AdvanceTo(result.Buffer.End);
                if (result.IsCompleted || result.IsCanceled)
                {
                    return;
                }
            }
        }
        catch (Exception ex) when (ex is IOException or ObjectDisposedException or InvalidOperationException or ConnectionResetException)
        {
        }
    }
}
