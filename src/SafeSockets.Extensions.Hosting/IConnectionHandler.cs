namespace SafeSockets.Extensions.Hosting;

/// <summary>Serves one connection of a hosted listener; resolved from a dependency-injection scope made for that connection.</summary>
/// <remarks>
/// <para>When <see cref="HandleAsync"/> returns (or throws), the scope is disposed and the connection is closed gracefully
/// (FIN, then the bounded drain): a handler need not close it, and may return as soon as it is done with it.</para>
/// <para>On the host's stop the handler's <c>stopping</c> token is cancelled; the connection stays the handler's until it
/// returns or the host's shutdown timeout ends (see <see cref="HandleAsync"/>).</para>
/// <para>Register the listener with <c>services.AddManagedListener&lt;THandler&gt;(name)</c>; the handler type is registered
/// as scoped unless it is already registered. The host's start makes one handler (in a scope disposed at once) so that a
/// missing dependency fails the start rather than every connection.</para>
/// </remarks>
public interface IConnectionHandler
{
    /// <summary>Serves <paramref name="connection"/> until it is done with it.</summary>
    /// <param name="connection">The accepted connection; the listener closes it after this method returns.</param>
    /// <param name="stopping">Cancelled when the host starts to stop. The listener then accepts no more connections, but
    /// leaves <paramref name="connection"/> to this handler: finish the request in progress (a reply being written is
    /// delivered whole), do not start another, and return; returning closes the connection gracefully (FIN). Pass the
    /// token to waits that should end with the stop, such as the read of the next request. A handler still running when
    /// the host's shutdown timeout (<c>HostOptions.ShutdownTimeout</c>) ends has its connection aborted under it (its
    /// reads and writes then fail; logged at Debug, as is an <see cref="OperationCanceledException"/> from this token).</param>
    /// <returns>A task that completes when the handler is done with the connection.</returns>
    ValueTask HandleAsync(ManagedConnection connection, CancellationToken stopping);
}
