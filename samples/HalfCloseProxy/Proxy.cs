using System.Net;
using SafeSockets;

namespace HalfCloseProxy;

/// <summary>Forwards both directions between a client and an upstream server and propagates half-close: the client's FIN
/// becomes a FIN towards the upstream while the upstream can still answer, and the other way round.</summary>
public static class Proxy
{
    /// <summary>Accepts on <paramref name="listener"/> and proxies each connection to <paramref name="upstream"/> until stopped.</summary>
    public static async Task RunAsync(ManagedListener listener, EndPoint upstream, CancellationToken stopping)
    {
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

            _ = ProxyOneAsync(client, upstream);
        }
    }

    /// <summary>Proxies one connection; returns once both directions have ended and both sides are closed.</summary>
    public static async Task ProxyOneAsync(ManagedConnection client, EndPoint upstream)
    {
        await using (client)
        {
            ManagedConnection server;
            try
            {
                server = await ManagedConnection.ConnectAsync(upstream);
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
            // A reset on one side: end the other abruptly too, as a plain TCP path would.
            to.Abort();
            from.Abort();
        }
    }
}
