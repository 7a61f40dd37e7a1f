using System.Buffers;
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
    /// <c>close_notify</c> or FIN, then the connection's own teardown; the whole close is bounded by the connection's drain
    /// bounds, and the socket is always released.</summary>
    /// <param name="sslStream">The TLS stream, created over <paramref name="connection"/>'s <see cref="ManagedConnection.GetStream"/>.</param>
    /// <param name="connection">The connection under the TLS stream.</param>
    /// <param name="cancellationToken">Cuts the close short: the socket is still released, then <see cref="OperationCanceledException"/> is thrown.</param>
    /// <returns>How the close ended: exactly <see cref="ManagedConnection.Completion"/>'s result (for the first close of the
    /// connection); <see cref="CloseResult.BytesDrained"/> counts decrypted and raw bytes discarded.</returns>
    /// <remarks>A peer that never reads cannot hold <c>close_notify</c> beyond <see cref="ManagedConnectionOptions.DrainTimeout"/>:
    /// at the bound the connection's teardown shuts the send side, which ends the stuck write.</remarks>
    public static async ValueTask<CloseResult> CloseAsync(this SslStream sslStream, ManagedConnection connection, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(sslStream);
        ArgumentNullException.ThrowIfNull(connection);
        TimeProvider clock = connection.TimeProvider;
        long start = clock.GetTimestamp();
        long discarded = 0;
        CloseOutcome? bound = null;
        bool peerFinished = false;
        byte[] scratch = ArrayPool<byte>.Shared.Rent(4096);
        try
        {
            Task closeNotify = sslStream.ShutdownAsync();
            if (!await WithinAsync(closeNotify, Remaining(clock, start, connection.DrainTimeout), clock, cancellationToken).ConfigureAwait(false))
            {
                bound = CloseOutcome.DrainTimedOut;
            }
            else if (!await WithinAsync(connection.ShutdownSendAsync(cancellationToken).AsTask(), Remaining(clock, start, connection.DrainTimeout), clock, cancellationToken).ConfigureAwait(false))
            {
                bound = CloseOutcome.DrainTimedOut;
            }
            else
            {
                while (true)
                {
                    TimeSpan wait = Remaining(clock, start, connection.DrainTimeout);
                    wait = wait < connection.DrainIdleTimeout ? wait : connection.DrainIdleTimeout;
                    Task<int> read = sslStream.ReadAsync(scratch.AsMemory(0, 4096), CancellationToken.None).AsTask();
                    if (!await WithinAsync(read, wait, clock, cancellationToken).ConfigureAwait(false))
                    {
                        bound = CloseOutcome.DrainTimedOut;
                        break;
                    }

                    int n = read.Result;
                    if (n == 0)
                    {
                        // The peer's close_notify (or its FIN): an orderly end, like a FIN.
                        peerFinished = true;
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
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
            // Released below; the connection's close throws the cancellation after that.
        }
        catch (Exception ex) when (ex is IOException or ObjectDisposedException or InvalidOperationException)
        {
            // The peer reset, or the connection is already closing: the connection's teardown records what happened.
        }
#pragma warning disable CA1031 // Whatever the TLS layer throws (say, a read the application left pending), the socket is released below.
        catch (Exception ex)
#pragma warning restore CA1031
        {
            connection.ReportUnexpected("TLS close", ex);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(scratch);
        }

        return await connection.CloseAfterTlsAsync(new ManagedConnection.TlsDrain(start, discarded, bound), peerFinished, cancellationToken).ConfigureAwait(false);
    }

    private static TimeSpan Remaining(TimeProvider clock, long start, TimeSpan total)
    {
        TimeSpan left = total - clock.GetElapsedTime(start);
        return left > TimeSpan.Zero ? left : TimeSpan.Zero;
    }

    /// <summary>Waits for <paramref name="task"/> at most <paramref name="wait"/>; <see langword="false"/> if the time ran out.
    /// A task left behind is observed (it fails once the connection is released).</summary>
    private static async ValueTask<bool> WithinAsync(Task task, TimeSpan wait, TimeProvider clock, CancellationToken cancellationToken)
    {
        try
        {
            await task.WaitAsync(wait, clock, cancellationToken).ConfigureAwait(false);
            return true;
        }
        catch (Exception ex) when (ex is TimeoutException || (ex is OperationCanceledException && cancellationToken.IsCancellationRequested))
        {
            _ = task.ContinueWith(static t => _ = t.Exception, CancellationToken.None, TaskContinuationOptions.OnlyOnFaulted | TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
            if (ex is OperationCanceledException)
            {
                throw;
            }

            return false;
        }
    }
}
