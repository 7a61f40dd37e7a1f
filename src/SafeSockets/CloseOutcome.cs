namespace SafeSockets;

/// <summary>How a close ended: the first reason that applied wins.</summary>
public enum CloseOutcome
{
    /// <summary>Everything was flushed, our FIN was sent and the peer's FIN was received: no reset.</summary>
    Graceful,

    /// <summary>The drain hit <see cref="ManagedConnectionOptions.DrainTimeout"/> or <see cref="ManagedConnectionOptions.DrainIdleTimeout"/> before the peer's FIN (or the flush before our FIN did not finish in time); the socket was released anyway.</summary>
    DrainTimedOut,

    /// <summary>The peer sent more than <see cref="ManagedConnectionOptions.MaxDrainBytes"/> during the drain; the socket was released anyway.</summary>
    DrainLimitExceeded,

    /// <summary>The peer reset the connection (RST) before or during the close.</summary>
    PeerReset,

    /// <summary>The connection was ended with a reset on purpose by <see cref="ManagedConnection.Abort"/>.</summary>
    Aborted,

    /// <summary>The connection had already been closed by an earlier call; this call did nothing.</summary>
    AlreadyClosed,

    /// <summary>The peer closed first and the application did not close within <see cref="ManagedConnectionOptions.CloseWaitTimeout"/>, so the connection closed itself (FIN, no reset) to leave no socket in CLOSE_WAIT.</summary>
    CloseWaitTimedOut,

    /// <summary>A <see cref="ManagedListener"/> had more than <see cref="ManagedListenerOptions.MaxDrainingConnections"/> connections
    /// draining and cut this one's drain short (oldest first), as nginx does when it runs short of connections.</summary>
    DrainBudgetExceeded,

    /// <summary>An unexpected error (a bug, or the socket disposed by someone else) ended the connection; it was logged at
    /// Error level with its exception and the socket was released. Never used for the peer's behaviour.</summary>
    Faulted,

    /// <summary>No byte moved in either direction and no send was in progress for <see cref="ManagedConnectionOptions.IdleTimeout"/>,
    /// so the connection closed itself gracefully (FIN, bounded drain; the peer's FIN ended it).</summary>
    IdleTimedOut,

    /// <summary>The kernel gave up on the peer: keep-alive probes or retransmissions went unanswered (a peer that vanished
    /// without FIN or RST), or the network reported it unreachable. The connection ended by itself; nothing waited for
    /// the application.</summary>
    PeerUnreachable,
}
