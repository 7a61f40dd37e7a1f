using Microsoft.Extensions.Logging;

namespace SafeSockets.Diagnostics;

/// <summary>The events a user needs in an incident, source-generated so a disabled logger costs a branch.</summary>
internal static partial class Log
{
    [LoggerMessage(1, LogLevel.Warning, "Connection {LocalEndPoint} <- {RemoteEndPoint} closed by itself: the peer closed and the application did not close within CloseWaitTimeout ({CloseWaitTimeout}).")]
    public static partial void ForcedCloseAfterPeerFin(ILogger logger, string? localEndPoint, string? remoteEndPoint, TimeSpan closeWaitTimeout);

    [LoggerMessage(2, LogLevel.Information, "Drain of {RemoteEndPoint} ended by a bound ({Outcome}) after {BytesDrained} bytes in {Elapsed}; the socket was released anyway (a reset is possible if more data arrived).")]
    public static partial void DrainBoundHit(ILogger logger, string? remoteEndPoint, CloseOutcome outcome, long bytesDrained, TimeSpan elapsed);

    [LoggerMessage(3, LogLevel.Information, "Connection {RemoteEndPoint} aborted on purpose (RST).")]
    public static partial void Aborted(ILogger logger, string? remoteEndPoint);

    [LoggerMessage(4, LogLevel.Information, "Connection {RemoteEndPoint} was reset by the peer.")]
    public static partial void ResetByPeer(ILogger logger, string? remoteEndPoint);

    [LoggerMessage(5, LogLevel.Warning, "More than MaxDrainingConnections ({MaxDrainingConnections}) connections are draining: cut the drain of {RemoteEndPoint} short.")]
    public static partial void DrainBudgetExceeded(ILogger logger, int maxDrainingConnections, string? remoteEndPoint);

    [LoggerMessage(6, LogLevel.Information, "Listener {LocalEndPoint} has MaxConnections ({MaxConnections}) connections: closed the connection from {RemoteEndPoint} at once.")]
    public static partial void ConnectionRejected(ILogger logger, string? localEndPoint, int maxConnections, string? remoteEndPoint);

    [LoggerMessage(7, LogLevel.Debug, "Listener {LocalEndPoint}: an accept failed for one connection ({SocketError}); accepting goes on.")]
    public static partial void AcceptFailed(ILogger logger, string? localEndPoint, System.Net.Sockets.SocketError socketError);

    [LoggerMessage(8, LogLevel.Information, "Listener {LocalEndPoint} stopped: {Graceful} connections closed gracefully, {Aborted} aborted at the grace deadline.")]
    public static partial void ListenerStopped(ILogger logger, string? localEndPoint, int graceful, int aborted);

    [LoggerMessage(9, LogLevel.Error, "Unexpected error in the {Where} of connection {RemoteEndPoint}; the connection is closed and the error is not reported as the peer's doing.")]
    public static partial void UnexpectedError(ILogger logger, string where, string? remoteEndPoint, Exception exception);

    [LoggerMessage(10, LogLevel.Information, "Connection {RemoteEndPoint} closed itself after IdleTimeout ({IdleTimeout}) without a byte in either direction.")]
    public static partial void IdleTimedOut(ILogger logger, string? remoteEndPoint, TimeSpan idleTimeout);

    [LoggerMessage(11, LogLevel.Warning, "Connection {RemoteEndPoint} ended: the peer is unreachable ({SocketError}); keep-alive probes or retransmissions went unanswered.")]
    public static partial void PeerUnreachable(ILogger logger, string? remoteEndPoint, System.Net.Sockets.SocketError socketError);
}
