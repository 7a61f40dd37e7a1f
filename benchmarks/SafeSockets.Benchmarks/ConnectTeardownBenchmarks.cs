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

    /// <summary>One SafeSockets cycle (also the <c>alloc</c> command's), in the raw cycle's order.</summary>
    /// <remarks>Until session 11 the client started <see cref="ManagedConnection.CloseAsync"/> before the server had read
    /// its FIN, so its drain read was pending (an epoll wake-up and a pool hop) where the raw cycle's final read finds the
    /// server's FIN already there: two different programs (the hot-path command's lock-step shapes measured that order
    /// at 0.82x against 0.96x for the same library). Now the client half-closes, the server reads to EOF and closes, and
    /// the client's close then finds the server's FIN, as in <see cref="RawCycleAsync"/>.</remarks>
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

        await client.ShutdownSendAsync();
        await server.ReceiveAsync(_buffer);
        CloseResult serverClose = await server.CloseAsync();
        CloseResult clientClose = await client.CloseAsync();
        if (serverClose.Outcome != CloseOutcome.Graceful || clientClose.Outcome != CloseOutcome.Graceful)
        {
            throw new IOException($"a close ended {clientClose.Outcome} / {serverClose.Outcome}");
        }
    }
}

/// <summary>The job of every class here: enough iterations of a fixed length, so that one slow stretch (a scheduler
/// hiccup on a 2-core VM) does not own an iteration and the reported error stays within 10% of the mean (issue #13:
/// with <c>--job short</c>'s 3 iterations it was 100-200%). Classes that open a connection per operation also run
/// <see cref="CyclesPerInvoke"/> cycles per invocation over <see cref="Ports"/> listener ports, so that the client-side
/// TIME_WAIT of a long run (60 s each) never crowds one destination's ephemeral ports (one destination and the client
/// closing first cap Linux loopback at about 14k cycles/s).</summary>
[AttributeUsage(AttributeTargets.Class)]
public sealed class CycleJobAttribute : Attribute, BenchmarkDotNet.Configs.IConfigSource
{
    public const int CyclesPerInvoke = 16;
    public const int Ports = 16;

    public BenchmarkDotNet.Configs.IConfig Config { get; } = BenchmarkDotNet.Configs.ManualConfig.CreateEmpty().AddJob(
        BenchmarkDotNet.Jobs.Job.Default
            .WithWarmupCount(5)
            .WithIterationCount(40)
            .WithIterationTime(TimeInterval.FromMilliseconds(250))
            .WithId("Cycles"));
}
