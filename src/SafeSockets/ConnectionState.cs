namespace SafeSockets;

/// <summary>Where a <see cref="ManagedConnection"/> is in its lifecycle, derived from what was sent and received.</summary>
/// <remarks>
/// <para>The values map onto the TCP states of the connection's local end:
/// <see cref="Open"/> is ESTABLISHED, <see cref="SendShutdown"/> is FIN_WAIT_1/2, <see cref="PeerShutdown"/>
/// is CLOSE_WAIT, <see cref="BothShutdown"/> is LAST_ACK or TIME_WAIT with the descriptor still held.</para>
/// </remarks>
public enum ConnectionState
{
    /// <summary>Both directions are open.</summary>
    Open,

    /// <summary>Our send side is shut down (our FIN is queued); we can still receive.</summary>
    SendShutdown,

    /// <summary>The peer's FIN (or reset) was seen; we may still send until we close.</summary>
    PeerShutdown,

    /// <summary>Both FINs have been exchanged; only releasing the socket remains.</summary>
    BothShutdown,

    /// <summary>A close is in progress (flush, FIN, drain); no new operations are accepted.</summary>
    Closing,

    /// <summary>The socket has been released without a reset from our side.</summary>
    Closed,

    /// <summary>The socket has been released with a reset (RST) by <see cref="ManagedConnection.Abort"/>.</summary>
    Aborted,
}
