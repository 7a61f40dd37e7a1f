using System.Buffers;
using System.IO.Pipelines;
using System.Net;
using System.Net.Sockets;
using BenchmarkDotNet.Attributes;
using Pipelines.Sockets.Unofficial;

namespace SafeSockets.Benchmarks;

/// <summary>Loopback listeners on <see cref="CycleJobAttribute.Ports"/> ports and connected pairs made on them in turn:
/// raw sockets and managed connections.</summary>
public abstract class PairBenchmark
{
    private readonly Socket[] _listeners = new Socket[CycleJobAttribute.Ports];
    private readonly EndPoint[] _endPoints = new EndPoint[CycleJobAttribute.Ports];
    private int _next;

    [GlobalSetup]
    public virtual void Setup()
    {
        for (int i = 0; i < _listeners.Length; i++)
        {
            _listeners[i] = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            _listeners[i].Bind(new IPEndPoint(IPAddress.Loopback, 0));
            _listeners[i].Listen(512);
            _endPoints[i] = _listeners[i].LocalEndPoint!;
        }
    }

    [GlobalCleanup]
    public virtual void Cleanup()
    {
        foreach (Socket listener in _listeners)
        {
            listener?.Dispose();
        }
    }

    /// <summary>A connected pair on the next port, both ends with Nagle off.</summary>
    protected async Task<(Socket Client, Socket Server)> RawPairAsync()
    {
        int port = _next++ % _listeners.Length;
        Task<Socket> accept = _listeners[port].AcceptAsync();
        var client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        await client.ConnectAsync(_endPoints[port]);
        Socket server = await accept;
        server.NoDelay = true;
        return (client, server);
    }
}

/// <summary>Half-close round trip on a fresh connection: the client sends a request and its FIN, the server reads to the
/// FIN, answers and closes, the client reads the answer to the end. The classic <c>nc -N</c> protocol.</summary>
[CycleJob]
public class HalfCloseRoundTripBenchmarks : PairBenchmark
{
    private readonly byte[] _request = new byte[128];
    private readonly byte[] _answer = new byte[128];
    private readonly byte[] _buffer = new byte[256];

    [Benchmark(Baseline = true, OperationsPerInvoke = CycleJobAttribute.CyclesPerInvoke)]
    public async Task Raw()
    {
        for (int i = 0; i < CycleJobAttribute.CyclesPerInvoke; i++)
        {
            await RawRoundTripAsync();
        }
    }

    [Benchmark(OperationsPerInvoke = CycleJobAttribute.CyclesPerInvoke)]
    public async Task Managed()
    {
        for (int i = 0; i < CycleJobAttribute.CyclesPerInvoke; i++)
        {
            await ManagedRoundTripAsync();
        }
    }

    private async Task RawRoundTripAsync()
    {
        (Socket client, Socket server) = await RawPairAsync();
        using (client)
        using (server)
        {
            await client.SendAsync(_request, SocketFlags.None);
            client.Shutdown(SocketShutdown.Send);
            while (await server.ReceiveAsync(_buffer, SocketFlags.None) > 0)
            {
            }

            await server.SendAsync(_answer, SocketFlags.None);
            server.Shutdown(SocketShutdown.Send);
            while (await client.ReceiveAsync(_buffer, SocketFlags.None) > 0)
            {
            }
        }
    }

    /// <summary>The raw round trip's order: the server's close finds the client's FIN already read, and the client's
    /// close finds the server's FIN after its read to the end.</summary>
    private async Task ManagedRoundTripAsync()
    {
        (Socket rawClient, Socket rawServer) = await RawPairAsync();
        ManagedConnection client = ManagedConnection.Adopt(rawClient);
        ManagedConnection server = ManagedConnection.Adopt(rawServer);
        await client.SendAsync(_request);
        await client.ShutdownSendAsync();
        while (await server.ReceiveAsync(_buffer) > 0)
        {
        }

        await server.SendAsync(_answer);
        CloseResult serverClose = await server.CloseAsync();
        while (await client.ReceiveAsync(_buffer) > 0)
        {
        }

        CloseResult clientClose = await client.CloseAsync();
        if (serverClose.Outcome != CloseOutcome.Graceful || clientClose.Outcome != CloseOutcome.Graceful)
        {
            throw new IOException($"a close ended {clientClose.Outcome} / {serverClose.Outcome}");
        }
    }
}

/// <summary>Drain of N unread bytes before close: the server closes while the client still sends N bytes, then FIN.
/// Raw baseline: the hand-written drain (Shutdown(Send), read and discard to EOF into a 64 KiB buffer kept for the run,
/// as a careful hand-written server would, and as large as the library's drain reads; until session 11 it allocated a
/// fresh 4 KiB buffer per drain, which flattered the library's allocation ratio, and then read 4 KiB at a time against
/// the library's 64 KiB, which flattered its time).</summary>
[CycleJob]
public class DrainBenchmarks : PairBenchmark
{
    [Params(4 * 1024, 256 * 1024)]
    public int Bytes { get; set; }

    private readonly byte[] _scratch = new byte[64 * 1024];
    private readonly byte[] _clientBuffer = new byte[64];
    private byte[] _payload = [];
    private ManagedConnectionOptions _options = new();

    public override void Setup()
    {
        base.Setup();
        _payload = new byte[Bytes];
        _options = new ManagedConnectionOptions { MaxDrainBytes = Bytes * 2L };
    }

    [Benchmark(Baseline = true, OperationsPerInvoke = CycleJobAttribute.CyclesPerInvoke)]
    public async Task RawHandWrittenDrain()
    {
        for (int i = 0; i < CycleJobAttribute.CyclesPerInvoke; i++)
        {
            (Socket client, Socket server) = await RawPairAsync();
            using (client)
            using (server)
            {
                Task send = SendThenFinAsync(client);
                server.Shutdown(SocketShutdown.Send);
                while (await server.ReceiveAsync(_scratch, SocketFlags.None) > 0)
                {
                }

                await send;
            }
        }
    }

    [Benchmark(OperationsPerInvoke = CycleJobAttribute.CyclesPerInvoke)]
    public async Task ManagedCloseAsync()
    {
        for (int i = 0; i < CycleJobAttribute.CyclesPerInvoke; i++)
        {
            (Socket client, Socket rawServer) = await RawPairAsync();
            using (client)
            {
                ManagedConnection server = ManagedConnection.Adopt(rawServer, _options);
                Task send = SendThenFinAsync(client);
                CloseResult result = await server.CloseAsync();
                await send;
                if (result.Outcome != CloseOutcome.Graceful || result.BytesDrained != Bytes)
                {
                    throw new IOException($"the close ended {result.Outcome} after draining {result.BytesDrained} of {Bytes} bytes");
                }
            }
        }
    }

    private async Task SendThenFinAsync(Socket client)
    {
        await client.SendAsync(_payload, SocketFlags.None);
        client.Shutdown(SocketShutdown.Send);
        while (await client.ReceiveAsync(_clientBuffer, SocketFlags.None) > 0)
        {
        }
    }
}

/// <summary>Lease acquire/release on a live connection, against the cost of a raw socket's nothing (an Interlocked pair).</summary>
[CycleJob]
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
[CycleJob]
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
