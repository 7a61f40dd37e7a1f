using System.Net.Security;

namespace SafeSockets;

/// <summary>TLS-aware half-close and drain-before-close for an <see cref="SslStream"/> running over a <see cref="ManagedConnection"/>'s stream.</summary>
/// <remarks>
/// <para>TLS ends in two layers: the <c>close_notify</c> alert says "no more application data", the TCP FIN says "no more bytes".
/// These helpers send <c>close_notify</c> before the FIN, treat the peer's <c>close_notify</c> like its FIN, and keep the
/// drain bounds of <see cref="ManagedConnectionOptions"/>, so TLS connections get the same no-reset guarantee as plain ones.</para>
/// </remarks>
public static class SslStreamTeardownExtensions
{
    /// <summary>TLS half-close: sends <c>close_notify</c>, then FIN; reading continues until the peer's <c>close_notify</c> or FIN.</summary>
    /// <param name="sslStream">The TLS stream, created over <paramref name="connection"/>'s <see cref="ManagedConnection.GetStream"/>.</param>
    /// <param name="connection">The connection under the TLS stream.</param>
    /// <param name="cancellationToken">Cancels the wait for earlier sends.</param>
    /// <returns>A task that completes once <c>close_notify</c> and FIN are handed to the kernel.</returns>
    public static async ValueTask ShutdownSendAsync(this SslStream sslStream, ManagedConnection connection, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(sslStream);
        ArgumentNullException.ThrowIfNull(connection);
        await sslStream.ShutdownAsync().ConfigureAwait(false);
        await connection.ShutdownSendAsync(cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Graceful TLS close: <c>close_notify</c>, FIN, then read and discard application data until the peer's
    /// <c>close_notify</c> or FIN (within the connection's drain bounds), then the connection's own close.</summary>
    /// <param name="sslStream">The TLS stream, created over <paramref name="connection"/>'s <see cref="ManagedConnection.GetStream"/>.</param>
    /// <param name="connection">The connection under the TLS stream.</param>
    /// <param name="cancellationToken">Cuts the close short; the socket is still released.</param>
    /// <returns>How the close ended; <see cref="CloseResult.BytesDrained"/> counts decrypted and raw bytes discarded.</returns>
    public static async ValueTask<CloseResult> CloseAsync(this SslStream sslStream, ManagedConnection connection, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(sslStream);
        ArgumentNullException.ThrowIfNull(connection);
        long start = connection.TimeProvider.GetTimestamp();
        long discarded = 0;
        CloseOutcome? bound = null;
        try
        {
            await sslStream.ShutdownAsync().ConfigureAwait(false);
            await connection.ShutdownSendAsync(cancellationToken).ConfigureAwait(false);

            using var total = new CancellationTokenSource(connection.DrainTimeout, connection.TimeProvider);
            using var idle = new CancellationTokenSource(Timeout.InfiniteTimeSpan, connection.TimeProvider);
            using var linked = CancellationTokenSource.CreateLinkedTokenSource(total.Token, idle.Token, cancellationToken);
            byte[] scratch = new byte[4096];
            while (true)
            {
                idle.CancelAfter(connection.DrainIdleTimeout);
                int n = await sslStream.ReadAsync(scratch, linked.Token).ConfigureAwait(false);
                if (n == 0)
                {
                    // The peer's close_notify (or its FIN): an orderly end, like a FIN.
                    connection.MarkPeerFinishedByProtocol();
                    break;
                }

                discarded += n;
                if (discarded > connection.MaxDrainBytes)
                {
                    bound = CloseOutcome.DrainLimitExceeded;
                    break;
                }
            }
        }
        catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
        {
            bound = CloseOutcome.DrainTimedOut;
        }
        catch (Exception ex) when (ex is IOException or ObjectDisposedException or InvalidOperationException)
        {
            // The peer reset, or the connection is already closing: the connection's close reports what happened.
        }

        CloseResult result = await connection.CloseAsync(cancellationToken).ConfigureAwait(false);
        if (result.Outcome == CloseOutcome.AlreadyClosed)
        {
            return result;
        }

        return new CloseResult(
            bound is { } b && result.Outcome == CloseOutcome.Graceful ? b : result.Outcome,
            result.BytesDrained + discarded,
            connection.TimeProvider.GetElapsedTime(start));
    }
}
