using Microsoft.Extensions.Logging;

namespace SafeSockets.Extensions.Hosting.Internal;

/// <summary>The hosted listener's events, source-generated so a disabled logger costs a branch.</summary>
internal static partial class Log
{
    [LoggerMessage(101, LogLevel.Information, "SafeSockets listener '{Name}' listening on {EndPoint}")]
    public static partial void Listening(ILogger logger, string name, string endPoint);

    [LoggerMessage(102, LogLevel.Information, "SafeSockets listener '{Name}' stopping: no more accepts; the handlers are told to finish (each connection is closed gracefully when its handler returns) and the connections still open when the host's shutdown timeout ends are aborted.")]
    public static partial void Stopping(ILogger logger, string name);

    [LoggerMessage(103, LogLevel.Information, "SafeSockets listener '{Name}' stopped: {Graceful} connections closed gracefully, {Aborted} aborted at the shutdown deadline, {Other} ended otherwise (a peer's reset, a drain bound).")]
    public static partial void Stopped(ILogger logger, string name, int graceful, int aborted, int other);

    [LoggerMessage(104, LogLevel.Error, "The handler of SafeSockets listener '{Name}' failed for {RemoteEndPoint}; the connection is closed.")]
    public static partial void HandlerFailed(ILogger logger, string name, string? remoteEndPoint, Exception exception);

    [LoggerMessage(105, LogLevel.Debug, "The peer {RemoteEndPoint} of SafeSockets listener '{Name}' went away while the handler ran ({Reason}).")]
    public static partial void PeerGone(ILogger logger, string name, string? remoteEndPoint, string reason);

    [LoggerMessage(106, LogLevel.Error, "SafeSockets listener '{Name}' failed to accept; accepting goes on.")]
    public static partial void AcceptFailed(ILogger logger, string name, Exception exception);

    [LoggerMessage(107, LogLevel.Warning, "SafeSockets listener '{Name}': {Count} handlers had not returned when the host's shutdown timeout ended (their connections are aborted).")]
    public static partial void HandlersStillRunning(ILogger logger, string name, long count);

    [LoggerMessage(108, LogLevel.Error, "A callback registered on the stopping token of SafeSockets listener '{Name}' threw; the stop goes on.")]
    public static partial void StoppingCallbackFailed(ILogger logger, string name, Exception exception);

    [LoggerMessage(109, LogLevel.Debug, "The handler of SafeSockets listener '{Name}' for {RemoteEndPoint} ended with the stop ({Reason}).")]
    public static partial void HandlerEndedByStop(ILogger logger, string name, string? remoteEndPoint, string reason);
}
