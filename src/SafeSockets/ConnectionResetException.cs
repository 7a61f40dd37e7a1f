namespace SafeSockets;

/// <summary>The peer reset the connection (TCP RST): data it had not yet read, and data in flight, may be lost.</summary>
public sealed class ConnectionResetException : IOException
{
    /// <summary>Creates the exception with a default message.</summary>
    public ConnectionResetException()
        : base("The connection was reset by the peer.")
    {
    }

    /// <summary>Creates the exception with a message.</summary>
    /// <param name="message">What happened.</param>
    public ConnectionResetException(string? message)
        : base(message)
    {
    }

    /// <summary>Creates the exception with a message and the socket error behind it.</summary>
    /// <param name="message">What happened.</param>
    /// <param name="innerException">The underlying error, usually a <see cref="System.Net.Sockets.SocketException"/>.</param>
    public ConnectionResetException(string? message, Exception? innerException)
        : base(message, innerException)
    {
    }
}
