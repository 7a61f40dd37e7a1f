using System.Net;
using SafeSockets;

namespace HalfCloseProxy;

/// <summary>Forwards both directions between a client and an upstream server and propagates half-close: the client's FIN
/// becomes a FIN towards the upstream while the upstream can still answer, and the other way round.</summary>
/// <remarks>
/// <para>The proxy timeout. After a client's FIN (<c>printf request | nc -N proxy port</c>) the proxy waits for its upstream
/// to answer, and meanwhile the client connection is idle: nothing to read (the client is done) and nothing to send yet.
/// The library's CLOSE_WAIT guard (<see cref="ManagedConnectionOptions.CloseWaitTimeout"/>, 5 s by default) bounds exactly
/// that idleness after the peer's FIN, so with the default a client whose upstream takes longer than 5 s to answer would get
/// a FIN and an empty answer. No per-connection rule can tell "waiting for the upstream" from "forgotten", so the proxy sets
/// its own bound on both sides, as nginx's stream module does with <c>proxy_timeout</c> (default 10 min):
/// <see cref="ConnectionOptions"/> gives <c>CloseWaitTimeout = proxy timeout</c>.</para>
/// <para>The guard is an inactivity bound: every answer byte handed to the kernel for the client (a send), a send still making
/// progress, or a read restarts it, so the proxy timeout is the longest the upstream may stay silent after the client's FIN,
/// not a cap on the whole answer. (A connection where neither side has sent FIN has no idle bound in this sample.)</para>
/// </remarks>
public static class Proxy
{
    /// <summary>The default proxy timeout: 600 s, nginx's stream <c>proxy_timeout</c>.</summary>
    public static readonly TimeSpan DefaultProxyTimeout = TimeSpan.FromSeconds(600);

    /// <summary>Options for both sides of a proxied connection: <see cref="ManagedConnectionOptions.CloseWaitTimeout"/> is
    /// the proxy timeout (how long a side whose peer has sent FIN may stay idle while the other side has not answered yet).</summary>
    /// <param name="proxyTimeout">The proxy's own bound; greater than zero, finite.</param>
    /// <param name="timeProvider">The clock (tests pass a fake); <see langword="null"/> for the system clock.</param>
    /// <returns>New options; the listener and the upstream connections copy them when they are created.</returns>
    public static ManagedConnectionOptions ConnectionOptions(TimeSpan proxyTimeout, TimeProvider? timeProvider = null)
    {
        ArgumentOutOfRangeException.ThrowIfLessThanOrEqual(proxyTimeout, TimeSpan.Zero);
        return new ManagedConnectionOptions { CloseWaitTimeout = proxyTimeout, TimeProvider = timeProvider ?? TimeProvider.System };
    }

    /// <summary>Starts a listener whose accepted (client-side) connections get <paramref name="connectionOptions"/>
    /// (from <see cref="ConnectionOptions"/>).</summary>
    public static ManagedListener Listen(IPEndPoint endPoint, ManagedConnectionOptions connectionOptions) =>
        ManagedListener.Start(endPoint, new ManagedListenerOptions { Connection = connectionOptions });

    /// <summary>Accepts on <paramref name="listener"/> and proxies each connection to <paramref name="upstream"/> until stopped;
    /// upstream connections get the default proxy timeout (<see cref="DefaultProxyTimeout"/>).</summary>
    /// <remarks>Client-side connections get the listener's options: start it with <see cref="Listen"/>.</remarks>
    public static Task RunAsync(ManagedListener listener, EndPoint upstream, CancellationToken stopping) =>
        RunAsync(listener, upstream, ConnectionOptions(DefaultProxyTimeout), stopping);

    /// <summary>Accepts on <paramref name="listener"/> and proxies each connection to <paramref name="upstream"/> until stopped.</summary>
    /// <param name="listener">Where clients connect; its connection options set the client side's bound (see <see cref="Listen"/>).</param>
    /// <param name="upstream">The server to forward to.</param>
    /// <param name="upstreamOptions">Options for the upstream connections (from <see cref="ConnectionOptions"/>).</param>
    /// <param name="stopping">Stops accepting.</param>
    public static async Task RunAsync(ManagedListener listener, EndPoint upstream, ManagedConnectionOptions upstreamOptions, CancellationToken stopping)
    {
        ArgumentNullException.ThrowIfNull(listener);
        ArgumentNullException.ThrowIfNull(upstreamOptions);
        while (!stopping.IsCancellationRequested)
        {
            ManagedConnection client;
            try
            {
                client = await listener.AcceptAsync(stopping);
            }
            catch (Exception ex) when (ex is OperationCanceledException or ObjectDisposedException)
            {
                return;
            }

            _ = ProxyOneAsync(client, upstream, upstreamOptions);
        }
    }

    /// <summary>Proxies one connection; returns once both directions have ended and both sides are closed.</summary>
    /// <param name="client">The accepted client connection (its options were set when it was created).</param>
    /// <param name="upstream">The server to forward to.</param>
    /// <param name="upstreamOptions">Options for the upstream connection; <see langword="null"/> for the default proxy timeout.</param>
    public static async Task ProxyOneAsync(ManagedConnection client, EndPoint upstream, ManagedConnectionOptions? upstreamOptions = null)
    {
        ArgumentNullException.ThrowIfNull(client);
        await using (client)
        {
            ManagedConnection server;
            try
            {
                server = await ManagedConnection.ConnectAsync(upstream, upstreamOptions ?? ConnectionOptions(DefaultProxyTimeout));
            }
            catch (System.Net.Sockets.SocketException)
            {
                return; // upstream down: closing the client is all we can do
            }

            await using (server)
            {
                // Each direction ends with the reader's FIN passed on as a FIN, not a close.
                await Task.WhenAll(PumpAsync(client, server), PumpAsync(server, client));
            }
        }
    }

    private static async Task PumpAsync(ManagedConnection from, ManagedConnection to)
    {
        byte[] buffer = new byte[16 * 1024];
        try
        {
            int n;
            while ((n = await from.ReceiveAsync(buffer)) > 0)
            {
                await to.SendAsync(buffer.AsMemory(0, n));
            }

            await to.ShutdownSendAsync(); // the half-close most proxies get wrong: FIN onwards, keep the other way open
        }
        catch (Exception ex) when (ex is IOException or ObjectDisposedException or InvalidOperationException)
        {
            // A reset on one side (or a side closed by its bound): end the other abruptly too, as a plain TCP path would.
            to.Abort();
            from.Abort();
        }
    }
}
