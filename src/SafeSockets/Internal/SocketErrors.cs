using System.Net.Sockets;

namespace SafeSockets.Internal;

/// <summary>The one place that decides what a socket error means for a connection.</summary>
internal static class SocketErrors
{
    /// <summary>The peer reset the connection, or the connection is gone because of a reset.</summary>
    /// <remarks>
    /// Linux reports a send after the peer's RST as ECONNRESET once and EPIPE afterwards; .NET maps EPIPE to
    /// <see cref="SocketError.Shutdown"/>. Callers check first that our own send side is not shut down, so here
    /// <c>Shutdown</c> means the peer. Windows and macOS report aborts by the stack as ConnectionAborted.
    /// </remarks>
    public static bool IsConnectionReset(SocketError error) => error is
        SocketError.ConnectionReset or
        SocketError.ConnectionAborted or
        SocketError.Shutdown or
        SocketError.NotConnected or
        SocketError.NetworkReset;

    /// <summary>The network gave up on the peer: retransmissions or keep-alive probes timed out, or it is unreachable.
    /// Reported like a reset (the connection is gone and nothing more can be sent or drained).</summary>
    public static bool IsConnectionLost(SocketError error) => error is
        SocketError.TimedOut or
        SocketError.HostUnreachable or
        SocketError.HostDown or
        SocketError.NetworkUnreachable or
        SocketError.NetworkDown;

    /// <summary>The operation ended because the socket was closed under it (by our own abort or release).</summary>
    /// <remarks>Disposing a socket under a pending receive can also report InvalidArgument on Linux (Kestrel's
    /// <c>IsConnectionAbortError</c> notes the same).</remarks>
    public static bool IsAbortedByUs(SocketError error) => error is
        SocketError.OperationAborted or
        SocketError.Interrupted or
        SocketError.NotSocket or
        SocketError.InvalidArgument;
}
