using System.Net;
using System.Net.Sockets;

namespace SafeSockets.Benchmarks.Teardown;

/// <summary>Counts what one side of a cycle saw; shared by every worker of a round.</summary>
internal sealed class Observations
{
    private long _resets;
    private long _bytesLost;

    public long Resets => Interlocked.Read(ref _resets);

    public long BytesLost => Interlocked.Read(ref _bytesLost);

    public void Reset() => Interlocked.Increment(ref _resets);

    public void Lost(long bytes) => Interlocked.Add(ref _bytesLost, bytes);

    public void Clear()
    {
        Interlocked.Exchange(ref _resets, 0);
        Interlocked.Exchange(ref _bytesLost, 0);
    }
}

/// <summary>A buffer from the shared array pool for one cycle's reads: the harness's own per-cycle work must not
/// allocate (a fresh buffer per cycle and end was 0.5 KB of every cycle's figure, for every strategy alike).</summary>
internal readonly struct BufferLease : IDisposable
{
    private BufferLease(byte[] array) => Array = array;

    public byte[] Array { get; }

    public static BufferLease Rent(int size = 256) => new(System.Buffers.ArrayPool<byte>.Shared.Rent(size));

    public void Dispose() => System.Buffers.ArrayPool<byte>.Shared.Return(Array);
}

/// <summary>One way to end a connection, with both ends in this process: a server side run for each accepted
/// socket, and a client side run for each cycle (connect → request → response → teardown).</summary>
internal abstract class Strategy
{
    public const int RequestBytes = 64;
    public const int ResponseBytes = 64;

    // In the unread-data scenario the client sends this much more than the server reads, then expects a larger answer.
    public const int UnreadBytes = 16 * 1024;
    public const int LargeResponseBytes = 256 * 1024;

    protected static readonly byte[] Request = new byte[RequestBytes];
    protected static readonly byte[] Response = new byte[ResponseBytes];
    protected static readonly byte[] LargeResponse = new byte[LargeResponseBytes];
    protected static readonly byte[] RequestWithUnread = new byte[RequestBytes + UnreadBytes];

    public abstract string Name { get; }

    public abstract string Description { get; }

    /// <summary>Whether the strategy is meant to end without a reset (graceful ones must show 0 RST).</summary>
    public virtual bool Graceful => true;

    /// <summary>Whether the strategy's ends are SafeSockets (must leave 0 CLOSE_WAIT).</summary>
    public virtual bool Ours => false;

    public Observations Observed { get; } = new();

    /// <summary>Starts the server side on <paramref name="ports"/> loopback ports of its own.</summary>
    /// <returns>The end points clients connect to, spread over round-robin.</returns>
    public virtual IReadOnlyList<EndPoint> Start(int ports, CancellationToken stop)
    {
        var endPoints = new List<EndPoint>();
        for (int i = 0; i < ports; i++)
        {
            var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
            listener.Listen(1024);
            endPoints.Add(listener.LocalEndPoint!);
            stop.Register(listener.Dispose);
            _ = AcceptLoopAsync(listener, stop);
        }

        return endPoints;
    }

    /// <summary>Server handlers still running (a round is over once they are done).</summary>
    public int Serving => Volatile.Read(ref _serving);

    private int _serving;

    protected void EnterServe() => Interlocked.Increment(ref _serving);

    protected void ExitServe() => Interlocked.Decrement(ref _serving);

    public abstract Task RunClientAsync(EndPoint server, CancellationToken cancellationToken);

    protected abstract Task RunServerAsync(Socket accepted);

    private async Task AcceptLoopAsync(Socket listener, CancellationToken stop)
    {
        while (!stop.IsCancellationRequested)
        {
            Socket accepted;
            try
            {
                accepted = await listener.AcceptAsync(stop);
            }
            catch (Exception ex) when (ex is OperationCanceledException or ObjectDisposedException or SocketException)
            {
                if (stop.IsCancellationRequested)
                {
                    return;
                }

                continue;
            }

            accepted.NoDelay = true;
            _ = ServeAsync(accepted);
        }
    }

    private async Task ServeAsync(Socket accepted)
    {
        EnterServe();
        try
        {
            await RunServerAsync(accepted);
        }
        catch (SocketException ex) when (ex.SocketErrorCode == SocketError.ConnectionReset)
        {
            Observed.Reset();
        }
        catch (Exception ex) when (ex is SocketException or IOException or ObjectDisposedException or InvalidOperationException)
        {
            if (ex is ConnectionResetException || ex.InnerException is SocketException { SocketErrorCode: SocketError.ConnectionReset })
            {
                Observed.Reset();
            }
        }
        finally
        {
            accepted.Dispose();
            ExitServe();
        }
    }

    /// <summary>The hand-written graceful client: request, answer, Shutdown(Send), read to EOF, Dispose.</summary>
    protected async Task RawGracefulClientAsync(EndPoint server, CancellationToken cancellationToken)
    {
        using Socket client = await ConnectAndSendAsync(server, Request, cancellationToken);
        using BufferLease bufferLease = BufferLease.Rent();
        byte[] buffer = bufferLease.Array;
        await ReceiveExactlyAsync(client, ResponseBytes, buffer);
        client.Shutdown(SocketShutdown.Send);
        await ReadToEndAsync(client, buffer);
    }

    /// <summary>The unread-data client: sends more than the server will read, then reads the large answer to its end
    /// and counts what never arrived.</summary>
    protected async Task UnreadClientAsync(EndPoint server, CancellationToken cancellationToken)
    {
        using Socket client = await ConnectAndSendAsync(server, RequestWithUnread, cancellationToken);
        using BufferLease bufferLease = BufferLease.Rent(64 * 1024);
        byte[] buffer = bufferLease.Array;
        long received = await ReadToEndAsync(client, buffer);
        Observed.Lost(LargeResponseBytes - received);
    }

    private static Socket NewClient() => new(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };

    /// <summary>Every raw client's start: connect, send the request. The caller owns (and disposes) the socket.</summary>
    protected static async Task<Socket> ConnectAndSendAsync(EndPoint server, byte[] request, CancellationToken cancellationToken)
    {
        Socket client = NewClient();
        try
        {
            await client.ConnectAsync(server, cancellationToken);
            await client.SendAsync(request, SocketFlags.None);
            return client;
        }
        catch
        {
            client.Dispose();
            throw;
        }
    }

    /// <summary>Every raw server's start: read the request (only its first <see cref="RequestBytes"/>), send the answer.</summary>
    protected static async Task AnswerAsync(Socket accepted, byte[] response, byte[] buffer)
    {
        await ReceiveExactlyAsync(accepted, RequestBytes, buffer);
        await accepted.SendAsync(response, SocketFlags.None);
    }

    protected static async Task ReceiveExactlyAsync(Socket socket, int count, byte[] buffer)
    {
        int total = 0;
        while (total < count)
        {
            int n = await socket.ReceiveAsync(buffer.AsMemory(0, Math.Min(buffer.Length, count - total)), SocketFlags.None);
            if (n == 0)
            {
                throw new IOException("unexpected end of stream");
            }

            total += n;
        }
    }

    protected static async Task ReceiveExactlyAsync(ManagedConnection connection, int count, byte[] buffer)
    {
        int total = 0;
        while (total < count)
        {
            int n = await connection.ReceiveAsync(buffer.AsMemory(0, Math.Min(buffer.Length, count - total)));
            if (n == 0)
            {
                throw new IOException("unexpected end of stream");
            }

            total += n;
        }
    }

    /// <summary>Reads until FIN; returns the bytes read. A reset is counted and ends the read.</summary>
    protected async Task<long> ReadToEndAsync(Socket socket, byte[] buffer)
    {
        long total = 0;
        try
        {
            int n;
            while ((n = await socket.ReceiveAsync(buffer, SocketFlags.None)) > 0)
            {
                total += n;
            }
        }
        catch (SocketException ex) when (ex.SocketErrorCode == SocketError.ConnectionReset)
        {
            Observed.Reset();
        }

        return total;
    }
}
