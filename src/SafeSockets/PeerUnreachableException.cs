namespace SafeSockets;

/// <summary>The peer stopped answering: keep-alive probes or retransmissions timed out, or the network reported it
/// unreachable. Data in flight may be lost; the connection has ended (<see cref="CloseOutcome.PeerUnreachable"/>).</summary>
public sealed class PeerUnreachableException : IOException
{
    /// <summary>Creates the exception with a default message.</summary>
    public PeerUnreachableException()
        : base("The peer is unreachable: it stopped answering (keep-alive or retransmissions timed out).")
    {
    }

    /// <summary>Creates the exception with a message.</summary>
    /// <param name="message">What happened.</param>
    public PeerUnreachableException(string? message)
        : base(message)
    {
    }

    /// <summary>Creates the exception with a message and the socket error behind it.</summary>
    /// <param name="message">What happened.</param>
    /// <param name="innerException">The underlying error, usually a <see cref="System.Net.Sockets.SocketException"/>.</param>
    public PeerUnreachableException(string? message, Exception? innerException)
        : base(message, innerException)
    {
    }
}
