namespace SafeSockets.Extensions.Hosting;

/// <summary>Serves one connection of a hosted listener; resolved from a dependency-injection scope made for that connection.</summary>
/// <remarks>
/// <para>When <see cref="HandleAsync"/> returns (or throws), the scope is disposed and the connection is closed gracefully
/// (FIN, then the bounded drain): a handler need not close it, and may return as soon as it is done with it.</para>
/// <para>Register the listener with <c>services.AddManagedListener&lt;THandler&gt;(name)</c>; the handler type is registered
/// as scoped unless it is already registered.</para>
/// </remarks>
public interface IConnectionHandler
{
    /// <summary>Serves <paramref name="connection"/> until it is done with it.</summary>
    /// <param name="connection">The accepted connection; the listener closes it after this method returns.</param>
    /// <param name="stopping">Cancelled when the host starts to stop; at that moment the listener also closes every
    /// connection gracefully, so a handler should finish or return.</param>
    /// <returns>A task that completes when the handler is done with the connection.</returns>
    ValueTask HandleAsync(ManagedConnection connection, CancellationToken stopping);
}
