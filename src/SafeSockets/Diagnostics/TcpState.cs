namespace SafeSockets.Diagnostics;

/// <summary>The kernel's TCP states, numbered as Linux numbers them (<c>include/net/tcp_states.h</c>).</summary>
public enum TcpState
{
    /// <summary>The state is not known (not Linux, or the socket is gone).</summary>
    Unknown = 0,

    /// <summary>ESTABLISHED: both directions open.</summary>
    Established = 1,

    /// <summary>SYN_SENT: connecting.</summary>
    SynSent = 2,

    /// <summary>SYN_RECV: the handshake is half done.</summary>
    SynReceived = 3,

    /// <summary>FIN_WAIT1: our FIN is sent and not yet acknowledged.</summary>
    FinWait1 = 4,

    /// <summary>FIN_WAIT2: our FIN is acknowledged; waiting for the peer's FIN (half-closed).</summary>
    FinWait2 = 5,

    /// <summary>TIME_WAIT: both FINs exchanged; we closed first.</summary>
    TimeWait = 6,

    /// <summary>CLOSE: the socket is closed.</summary>
    Close = 7,

    /// <summary>CLOSE_WAIT: the peer's FIN arrived; waiting for the application to close.</summary>
    CloseWait = 8,

    /// <summary>LAST_ACK: we closed after the peer; waiting for the ACK of our FIN.</summary>
    LastAck = 9,

    /// <summary>LISTEN: a listening socket.</summary>
    Listen = 10,

    /// <summary>CLOSING: both sides sent FIN at once.</summary>
    Closing = 11,

    /// <summary>NEW_SYN_RECV: a request socket in the accept queue.</summary>
    NewSynReceived = 12,
}
