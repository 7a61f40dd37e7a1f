using System.Diagnostics.CodeAnalysis;

namespace SafeSockets.Internal;

/// <summary>Throw sites kept out of hot paths, with messages a user can act on.</summary>
internal static class ThrowHelper
{
    [DoesNotReturn]
    public static void ThrowSendShutdown() =>
        throw new InvalidOperationException("The send side of this connection is shut down, or a ShutdownSendAsync is in progress; nothing more can be sent until a cancelled ShutdownSendAsync gives it back.");

    [DoesNotReturn]
    public static void ThrowConcurrentReceive() =>
        throw new InvalidOperationException("Another ReceiveAsync is already pending on this connection; receives must not overlap.");

    [DoesNotReturn]
    public static void ThrowPeerReset() => throw CreatePeerReset(null);

    public static ConnectionResetException CreatePeerReset(Exception? inner) =>
        new("The connection was reset by the peer (TCP RST); data in flight may be lost.", inner);

    [DoesNotReturn]
    public static void ThrowPeerUnreachable() => throw CreatePeerUnreachable(null);

    public static PeerUnreachableException CreatePeerUnreachable(Exception? inner) =>
        new(inner is System.Net.Sockets.SocketException socketError
            ? $"The peer is unreachable ({socketError.SocketErrorCode}): keep-alive probes or retransmissions went unanswered; data in flight may be lost."
            : "The peer is unreachable: keep-alive probes or retransmissions went unanswered; data in flight may be lost.", inner);

    [DoesNotReturn]
    public static void ThrowDisposed(string reason) =>
        throw new ObjectDisposedException(nameof(ManagedConnection), reason);

    public static string DisposedReason(CloseReason reason) => reason switch
    {
        CloseReason.Abort => "The connection was aborted (Abort was called).",
        CloseReason.CloseWaitTimeout => "The connection closed itself because the peer had closed and the application did not close it within CloseWaitTimeout.",
        CloseReason.PeerReset => "The connection was released after the peer reset it.",
        CloseReason.Faulted => "The connection was closed after an unexpected error (logged at Error level).",
        CloseReason.IdleTimeout => "The connection closed itself after IdleTimeout without traffic.",
        CloseReason.PeerUnreachable => "The connection ended because the peer is unreachable (keep-alive or retransmissions timed out).",
        _ => "The connection is closed or closing (CloseAsync or DisposeAsync was called).",
    };
}

/// <summary>Who started the close; the first one wins.</summary>
internal enum CloseReason : byte
{
    None,
    Application,
    CloseWaitTimeout,
    PeerReset,
    Faulted,
    IdleTimeout,
    PeerUnreachable,
    Abort,
}
