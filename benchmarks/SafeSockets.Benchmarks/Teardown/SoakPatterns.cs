using System.Collections.Concurrent;
using System.Net;

namespace SafeSockets.Benchmarks.Teardown;

/// <summary>The <c>soak</c> command's teardown orders, each a graceful cycle with <see cref="ManagedConnection"/> on both ends
/// and the server on <see cref="ManagedListener"/>: connect → 64-byte request → 64-byte answer → graceful close.</summary>
/// <remarks>Only the library's public API. Every close must end <see cref="CloseOutcome.Graceful"/>: a reset is counted as
/// one (<see cref="Strategy.Observed"/>), any other outcome, a short answer or a server-side error as <see cref="Unexpected"/>.</remarks>
internal abstract class SoakPattern : ManagedStrategy
{
    private long _unexpected;

    /// <summary>The names <c>--pattern</c> accepts, in the order <c>all</c> runs them.</summary>
    public static IReadOnlyList<string> Names { get; } = ["client-first", "server-first", "both"];

    public static SoakPattern Create(string name) => name switch
    {
        "client-first" => new ClientFirst(),
        "server-first" => new ServerFirst(),
        "both" => new BothAtOnce(),
        _ => throw new ArgumentException($"unknown pattern '{name}' (client-first, server-first, both, all)"),
    };

    public override string Name => $"soak {Pattern}";

    public abstract string Pattern { get; }

    /// <summary>Closes that ended other than gracefully (but not by a reset), answers cut short, and errors on the server side.</summary>
    public long Unexpected => Interlocked.Read(ref _unexpected);

    protected void Check(CloseResult result)
    {
        if (result.Outcome == CloseOutcome.PeerReset)
        {
            Observed.Reset();
        }
        else if (result.Outcome != CloseOutcome.Graceful)
        {
            Interlocked.Increment(ref _unexpected);
        }
    }

    protected void CountUnexpected() => Interlocked.Increment(ref _unexpected);

    protected sealed override async Task RunManagedServerAsync(ManagedConnection connection)
    {
        try
        {
            await ServeAsync(connection);
        }
        catch (ConnectionResetException)
        {
            Observed.Reset();
        }
        catch (Exception ex) when (ex is IOException or ObjectDisposedException or InvalidOperationException or TimeoutException)
        {
            CountUnexpected();
        }
    }

    protected abstract Task ServeAsync(ManagedConnection connection);

    /// <summary>The client closes first (CloseAsync after the answer: FIN, drain); the server reads to the client's FIN, then closes.</summary>
    private sealed class ClientFirst : SoakPattern
    {
        public override string Pattern => "client-first";

        public override string Description => "client CloseAsync after the answer; the server reads to its FIN, then CloseAsync";

        public override async Task RunClientAsync(EndPoint server, CancellationToken cancellationToken)
        {
            await using ManagedConnection client = await ManagedConnection.ConnectAsync(server, null, cancellationToken);
            byte[] buffer = new byte[256];
            await client.SendAsync(Request, cancellationToken);
            await ReceiveExactlyAsync(client, ResponseBytes, buffer);
            Check(await client.CloseAsync(cancellationToken));
        }

        protected override async Task ServeAsync(ManagedConnection connection)
        {
            byte[] buffer = new byte[256];
            await ReceiveExactlyAsync(connection, RequestBytes, buffer);
            await connection.SendAsync(Response);
            while (await connection.ReceiveAsync(buffer) > 0)
            {
            }

            Check(await connection.CloseAsync());
        }
    }

    /// <summary>The server closes first (CloseAsync right after the answer: FIN, drain until the client's FIN); the client
    /// reads to the server's FIN, then closes.</summary>
    private sealed class ServerFirst : SoakPattern
    {
        public override string Pattern => "server-first";

        public override string Description => "server CloseAsync right after the answer; the client reads to its FIN, then CloseAsync";

        public override async Task RunClientAsync(EndPoint server, CancellationToken cancellationToken)
        {
            await using ManagedConnection client = await ManagedConnection.ConnectAsync(server, null, cancellationToken);
            byte[] buffer = new byte[256];
            await client.SendAsync(Request, cancellationToken);
            long received = 0;
            int n;
            while ((n = await client.ReceiveAsync(buffer, cancellationToken)) > 0)
            {
                received += n;
            }

            if (received != ResponseBytes)
            {
                CountUnexpected();
            }

            Check(await client.CloseAsync(cancellationToken));
        }

        protected override async Task ServeAsync(ManagedConnection connection)
        {
            byte[] buffer = new byte[256];
            await ReceiveExactlyAsync(connection, RequestBytes, buffer);
            await connection.SendAsync(Response);
            Check(await connection.CloseAsync());
        }
    }

    /// <summary>Both ends close at the same moment: after the exchange each side waits at a rendezvous (matched by the
    /// connection's two ports) and both are released together into CloseAsync, so the two FINs cross.</summary>
    private sealed class BothAtOnce : SoakPattern
    {
        private static readonly TimeSpan s_rendezvousTimeout = TimeSpan.FromSeconds(10);
        private readonly ConcurrentDictionary<(int Client, int Server), Rendezvous> _waiting = new();

        public override string Pattern => "both";

        public override string Description => "client and server CloseAsync at the same moment (released together after the exchange)";

        public override async Task RunClientAsync(EndPoint server, CancellationToken cancellationToken)
        {
            await using ManagedConnection client = await ManagedConnection.ConnectAsync(server, null, cancellationToken);
            (int, int) key = (Port(client.LocalEndPoint), Port(client.RemoteEndPoint));
            byte[] buffer = new byte[256];
            await client.SendAsync(Request, cancellationToken);
            await ReceiveExactlyAsync(client, ResponseBytes, buffer);
            await MeetAsync(key);
            Check(await client.CloseAsync(cancellationToken));
        }

        protected override async Task ServeAsync(ManagedConnection connection)
        {
            (int, int) key = (Port(connection.RemoteEndPoint), Port(connection.LocalEndPoint));
            byte[] buffer = new byte[256];
            await ReceiveExactlyAsync(connection, RequestBytes, buffer);
            await connection.SendAsync(Response);
            await MeetAsync(key);
            Check(await connection.CloseAsync());
        }

        private static int Port(EndPoint? endPoint) => (endPoint as IPEndPoint)?.Port ?? throw new InvalidOperationException("no end point");

        /// <summary>The first side to arrive waits (bounded); the second releases it and goes on at once.</summary>
        private async Task MeetAsync((int, int) key)
        {
            Rendezvous meeting = _waiting.GetOrAdd(key, static _ => new Rendezvous());
            if (Interlocked.Increment(ref meeting.Arrived) == 2)
            {
                _waiting.TryRemove(key, out _);
                meeting.Both.TrySetResult();
                return;
            }

            try
            {
                await meeting.Both.Task.WaitAsync(s_rendezvousTimeout);
            }
            catch (TimeoutException)
            {
                _waiting.TryRemove(key, out _);
                throw;
            }
        }

        private sealed class Rendezvous
        {
            public readonly TaskCompletionSource Both = new(TaskCreationOptions.RunContinuationsAsynchronously);
            public int Arrived;
        }
    }
}
