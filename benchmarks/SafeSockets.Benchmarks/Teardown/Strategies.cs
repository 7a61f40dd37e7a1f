using System.Buffers;
using System.IO.Pipelines;
using System.Net;
using System.Net.Sockets;
using Pipelines.Sockets.Unofficial;

namespace SafeSockets.Benchmarks.Teardown;

internal static class Strategies
{
    public static IReadOnlyList<Strategy> All() =>
    [
        new RawGraceful(),
        new RawDisposeClientFirst(),
        new RawDisposeServerFirst(),
        new RawUnread(),
        new RawAbort(),
        new ManagedGraceful(),
        new ManagedLeases(),
        new ManagedUnread(),
        new ManagedAbort(),
        new PsuGraceful(),
        new KestrelTransport(),
    ];
}

/// <summary>The baseline: hand-written graceful close on raw sockets (Shutdown(Send), read to EOF, Dispose) on both ends.</summary>
internal sealed class RawGraceful : Strategy
{
    public override string Name => "raw-graceful";

    public override string Description => "raw Socket, hand-written graceful: Shutdown(Send), read to EOF, Dispose (both ends)";

    public override Task RunClientAsync(EndPoint server, CancellationToken cancellationToken) => RawGracefulClientAsync(server, cancellationToken);

    protected override async Task RunServerAsync(Socket accepted)
    {
        using BufferLease bufferLease = BufferLease.Rent();
        byte[] buffer = bufferLease.Array;
        await AnswerAsync(accepted, Response, buffer);
        await ReadToEndAsync(accepted, buffer);
        accepted.Shutdown(SocketShutdown.Send);
    }
}

/// <summary>Naive: the client disposes as soon as it has its answer; the server disposes on the client's FIN.</summary>
internal sealed class RawDisposeClientFirst : Strategy
{
    public override string Name => "raw-dispose-client-first";

    public override string Description => "raw Socket, naive Dispose, client first";

    public override async Task RunClientAsync(EndPoint server, CancellationToken cancellationToken)
    {
        using Socket client = await ConnectAndSendAsync(server, Request, cancellationToken);
        using BufferLease bufferLease = BufferLease.Rent();
        byte[] buffer = bufferLease.Array;
        await ReceiveExactlyAsync(client, ResponseBytes, buffer);
    }

    protected override async Task RunServerAsync(Socket accepted)
    {
        using BufferLease bufferLease = BufferLease.Rent();
        byte[] buffer = bufferLease.Array;
        await AnswerAsync(accepted, Response, buffer);
        await ReadToEndAsync(accepted, buffer);
    }
}

/// <summary>Naive: the server disposes right after answering; the client reads to EOF.</summary>
internal sealed class RawDisposeServerFirst : Strategy
{
    public override string Name => "raw-dispose-server-first";

    public override string Description => "raw Socket, naive Dispose, server first";

    public override async Task RunClientAsync(EndPoint server, CancellationToken cancellationToken)
    {
        using Socket client = await ConnectAndSendAsync(server, Request, cancellationToken);
        using BufferLease bufferLease = BufferLease.Rent();
        byte[] buffer = bufferLease.Array;
        await ReadToEndAsync(client, buffer);
    }

    protected override async Task RunServerAsync(Socket accepted)
    {
        using BufferLease bufferLease = BufferLease.Rent();
        byte[] buffer = bufferLease.Array;
        await AnswerAsync(accepted, Response, buffer);
    }
}

/// <summary>The RST case: the server answers without reading all of the request and disposes over the unread bytes.</summary>
internal sealed class RawUnread : Strategy
{
    public override string Name => "raw-unread";

    public override string Description => "raw Socket closed with unread request data (the RST case): 16 KiB unread, 256 KiB answer";

    public override bool Graceful => false;

    public override Task RunClientAsync(EndPoint server, CancellationToken cancellationToken) => UnreadClientAsync(server, cancellationToken);

    protected override async Task RunServerAsync(Socket accepted)
    {
        using BufferLease bufferLease = BufferLease.Rent();
        byte[] buffer = bufferLease.Array;
        await AnswerAsync(accepted, LargeResponse, buffer);
    }
}

/// <summary>Deliberate reset: the client sets linger 0 and disposes.</summary>
internal sealed class RawAbort : Strategy
{
    public override string Name => "raw-abort";

    public override string Description => "raw Socket, LingerState(true, 0) abort by the client";

    public override bool Graceful => false;

    public override async Task RunClientAsync(EndPoint server, CancellationToken cancellationToken)
    {
        using Socket client = await ConnectAndSendAsync(server, Request, cancellationToken);
        using BufferLease bufferLease = BufferLease.Rent();
        byte[] buffer = bufferLease.Array;
        await ReceiveExactlyAsync(client, ResponseBytes, buffer);
        client.LingerState = new LingerOption(true, 0);
    }

    protected override async Task RunServerAsync(Socket accepted)
    {
        using BufferLease bufferLease = BufferLease.Rent();
        byte[] buffer = bufferLease.Array;
        await AnswerAsync(accepted, Response, buffer);
        await ReadToEndAsync(accepted, buffer);
    }
}

/// <summary>Servers on <see cref="ManagedListener"/>: accepted connections arrive already managed.</summary>
internal abstract class ManagedStrategy : Strategy
{
    private readonly List<ManagedListener> _listeners = [];

    public override bool Ours => true;

    public override IReadOnlyList<EndPoint> Start(int ports, CancellationToken stop)
    {
        var endPoints = new List<EndPoint>();
        for (int i = 0; i < ports; i++)
        {
            ManagedListener listener = ManagedListener.Start(new IPEndPoint(IPAddress.Loopback, 0), new ManagedListenerOptions { Backlog = 1024 });
            _listeners.Add(listener);
            endPoints.Add(listener.LocalEndPoint);
            _ = AcceptManagedAsync(listener, stop);
        }

        stop.Register(() => _listeners.ForEach(l => _ = l.StopAsync(TimeSpan.FromSeconds(1))));
        return endPoints;
    }

    /// <summary>Stops every listener (graceful, <paramref name="grace"/> each) and waits until all their connections are released.</summary>
    public Task StopListenersAsync(TimeSpan grace) => Task.WhenAll(_listeners.Select(l => l.StopAsync(grace)));

    protected sealed override Task RunServerAsync(Socket accepted) => Task.CompletedTask;

    protected abstract Task RunManagedServerAsync(ManagedConnection connection);

    private async Task AcceptManagedAsync(ManagedListener listener, CancellationToken stop)
    {
        while (!stop.IsCancellationRequested)
        {
            ManagedConnection connection;
            try
            {
                connection = await listener.AcceptAsync(stop);
            }
            catch (Exception ex) when (ex is OperationCanceledException or ObjectDisposedException)
            {
                return;
            }

            _ = ServeManagedAsync(connection);
        }
    }

    private async Task ServeManagedAsync(ManagedConnection connection)
    {
        EnterServe();
        try
        {
            await RunManagedServerAsync(connection);
        }
        catch (ConnectionResetException)
        {
            Observed.Reset();
        }
        catch (Exception ex) when (ex is IOException or ObjectDisposedException or InvalidOperationException)
        {
        }
        finally
        {
            await connection.DisposeAsync();
            ExitServe();
        }
    }
}

/// <summary>SafeSockets on both ends: CloseAsync (flush, FIN, drain) by the client; the server closes on the client's FIN.</summary>
internal sealed class ManagedGraceful : ManagedStrategy
{
    public override string Name => "managed-graceful";

    public override string Description => "ManagedConnection graceful CloseAsync (both ends; server on ManagedListener)";

    public override async Task RunClientAsync(EndPoint server, CancellationToken cancellationToken)
    {
        ManagedConnection client = await ManagedConnection.ConnectAsync(server, null, cancellationToken);
        using BufferLease bufferLease = BufferLease.Rent();
        byte[] buffer = bufferLease.Array;
        await client.SendAsync(Request);
        await ReceiveExactlyAsync(client, ResponseBytes, buffer);
        CloseResult result = await client.CloseAsync();
        if (result.Outcome == CloseOutcome.PeerReset)
        {
            Observed.Reset();
        }
    }

    protected override async Task RunManagedServerAsync(ManagedConnection connection)
    {
        using BufferLease bufferLease = BufferLease.Rent();
        byte[] buffer = bufferLease.Array;
        await ReceiveExactlyAsync(connection, RequestBytes, buffer);
        await connection.SendAsync(Response);
        while (await connection.ReceiveAsync(buffer) > 0)
        {
        }

        await connection.CloseAsync();
    }
}

/// <summary>SafeSockets through leases: the creator lets go at once and a component's lease does the work; its release closes.</summary>
internal sealed class ManagedLeases : ManagedStrategy
{
    public override string Name => "managed-leases";

    public override string Description => "ManagedConnection via leases (creator releases first, the last lease closes)";

    public override async Task RunClientAsync(EndPoint server, CancellationToken cancellationToken)
    {
        ManagedConnection created = await ManagedConnection.ConnectAsync(server, null, cancellationToken);
        ConnectionLease lease = created.Acquire();
        await created.DisposeAsync();
        using BufferLease bufferLease = BufferLease.Rent();
        byte[] buffer = bufferLease.Array;
        await lease.Connection.SendAsync(Request);
        await ReceiveExactlyAsync(lease.Connection, ResponseBytes, buffer);
        await lease.DisposeAsync();
    }

    protected override async Task RunManagedServerAsync(ManagedConnection connection)
    {
        await using ConnectionLease lease = connection.Acquire();
        using BufferLease bufferLease = BufferLease.Rent();
        byte[] buffer = bufferLease.Array;
        await ReceiveExactlyAsync(lease.Connection, RequestBytes, buffer);
        await lease.Connection.SendAsync(Response);
        while (await lease.Connection.ReceiveAsync(buffer) > 0)
        {
        }
    }
}

/// <summary>The RST case again, with the server on SafeSockets: the raw client must get the whole answer and a FIN.</summary>
internal sealed class ManagedUnread : ManagedStrategy
{
    public override string Name => "managed-unread";

    public override string Description => "ManagedConnection server closing with unread request data (same scenario as raw-unread)";

    public override Task RunClientAsync(EndPoint server, CancellationToken cancellationToken) => UnreadClientAsync(server, cancellationToken);

    protected override async Task RunManagedServerAsync(ManagedConnection connection)
    {
        using BufferLease bufferLease = BufferLease.Rent();
        byte[] buffer = bufferLease.Array;
        await ReceiveExactlyAsync(connection, RequestBytes, buffer);
        await connection.SendAsync(LargeResponse);
        await connection.CloseAsync();
    }
}

/// <summary>Deliberate reset through SafeSockets: the client calls Abort().</summary>
internal sealed class ManagedAbort : ManagedStrategy
{
    public override string Name => "managed-abort";

    public override string Description => "ManagedConnection.Abort() by the client";

    public override bool Graceful => false;

    public override async Task RunClientAsync(EndPoint server, CancellationToken cancellationToken)
    {
        ManagedConnection client = await ManagedConnection.ConnectAsync(server, null, cancellationToken);
        using BufferLease bufferLease = BufferLease.Rent();
        byte[] buffer = bufferLease.Array;
        await client.SendAsync(Request);
        await ReceiveExactlyAsync(client, ResponseBytes, buffer);
        client.Abort();
    }

    protected override async Task RunManagedServerAsync(ManagedConnection connection)
    {
        using BufferLease bufferLease = BufferLease.Rent();
        byte[] buffer = bufferLease.Array;
        await ReceiveExactlyAsync(connection, RequestBytes, buffer);
        await connection.SendAsync(Response);
        while (await connection.ReceiveAsync(buffer) > 0)
        {
        }
    }
}

/// <summary>The peer library: Pipelines.Sockets.Unofficial on both ends; completing Output sends FIN, Input is read to its end.</summary>
internal sealed class PsuGraceful : Strategy
{
    public override string Name => "psu-graceful";

    public override string Description => "Pipelines.Sockets.Unofficial 2.2.16 graceful: Output.Complete(), read Input to end (both ends)";

    public override async Task RunClientAsync(EndPoint server, CancellationToken cancellationToken)
    {
        using SocketConnection client = await SocketConnection.ConnectAsync(server);
        await client.Output.WriteAsync(Request, cancellationToken);
        await ReadAtLeastAsync(client.Input, ResponseBytes);
        await client.Output.CompleteAsync();
        await ReadToEndAsync(client.Input);
    }

    protected override async Task RunServerAsync(Socket accepted)
    {
        using SocketConnection connection = SocketConnection.Create(accepted);
        await ReadAtLeastAsync(connection.Input, RequestBytes);
        await connection.Output.WriteAsync(Response);
        await ReadToEndAsync(connection.Input);
        await connection.Output.CompleteAsync();
    }

    private static async Task ReadAtLeastAsync(PipeReader input, int count)
    {
        ReadResult result = await input.ReadAtLeastAsync(count);
        input.AdvanceTo(result.Buffer.GetPosition(Math.Min(count, result.Buffer.Length)));
    }

    private static async Task ReadToEndAsync(PipeReader input)
    {
        while (true)
        {
            ReadResult result = await input.ReadAsync();
            input.AdvanceTo(result.Buffer.End);
            if (result.IsCompleted || result.IsCanceled)
            {
                return;
            }
        }
    }
}
