using System.Net;
using System.Net.Sockets;
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Jobs;
using Perfolizer.Horology;

namespace SafeSockets.Benchmarks;

/// <summary>One connect → 1-byte request/response → graceful teardown cycle on loopback, both ends in process.
/// Stresses per-connection setup and teardown cost: time and bytes allocated for both ends of one cycle, against a
/// hand-written raw <see cref="Socket"/> graceful close (Shutdown(Send), read to EOF, Dispose).</summary>
[CycleJob]
public class ConnectTeardownBenchmarks
{
    private readonly Socket[] _listeners = new Socket[CycleJobAttribute.Ports];
    private readonly EndPoint[] _endPoints = new EndPoint[CycleJobAttribute.Ports];
    private readonly byte[] _one = [42];
    private readonly byte[] _buffer = new byte[64];
    private int _next;

    [GlobalSetup]
    public void Setup()
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
    public void Cleanup()
    {
        foreach (Socket listener in _listeners)
        {
            listener?.Dispose();
        }
    }

    [Benchmark(Baseline = true, OperationsPerInvoke = CycleJobAttribute.CyclesPerInvoke)]
    public async Task RawGraceful()
    {
        for (int i = 0; i < CycleJobAttribute.CyclesPerInvoke; i++)
        {
            await RawCycleAsync();
        }
    }

    [Benchmark(OperationsPerInvoke = CycleJobAttribute.CyclesPerInvoke)]
    public async Task ManagedGraceful()
    {
        for (int i = 0; i < CycleJobAttribute.CyclesPerInvoke; i++)
        {
            await ManagedCycleAsync();
        }
    }

    /// <summary>One raw cycle (also the <c>alloc</c> command's).</summary>
    public async Task RawCycleAsync()
    {
        int port = _next++ % _listeners.Length;
        Task<Socket> accept = _listeners[port].AcceptAsync();
        using var client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        await client.ConnectAsync(_endPoints[port]);
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

    /// <summary>One SafeSockets cycle (also the <c>alloc</c> command's).</summary>
    public async Task ManagedCycleAsync()
    {
        int port = _next++ % _listeners.Length;
        Task<Socket> accept = _listeners[port].AcceptAsync();
        ManagedConnection client = await ManagedConnection.ConnectAsync(_endPoints[port]);
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

/// <summary>The job for benchmarks that open a connection per cycle: many cycles per invocation and enough iterations,
/// so that one slow cycle (a scheduler hiccup on a 2-core VM) does not own an iteration, and cycles spread over several
/// listener ports, so that the client-side TIME_WAIT of a long run (60 s each) never crowds one destination's ephemeral
/// ports (one destination and the client closing first cap Linux loopback at about 14k cycles/s).</summary>
[AttributeUsage(AttributeTargets.Class)]
public sealed class CycleJobAttribute : Attribute, BenchmarkDotNet.Configs.IConfigSource
{
    public const int CyclesPerInvoke = 16;
    public const int Ports = 16;

    public BenchmarkDotNet.Configs.IConfig Config { get; } = BenchmarkDotNet.Configs.ManualConfig.CreateEmpty().AddJob(
        BenchmarkDotNet.Jobs.Job.Default
            .WithWarmupCount(5)
            .WithIterationCount(20)
            .WithIterationTime(TimeInterval.FromMilliseconds(250))
            .WithId("Cycles"));
}
