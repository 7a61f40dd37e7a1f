namespace SafeSockets.Internal;

/// <summary>The bits of a connection's state word, changed only by compare-and-swap.</summary>
/// <remarks>
/// <code>
///  bit  0  SendShutdown  our FIN is queued (Shutdown(Send) done)
///  bit  1  PeerFin       the peer's FIN or reset was seen by the receive loop
///  bit  2  PeerReset     the peer reset the connection
///  bit  3  Closing       a close owns the connection: no new operations start
///  bit  4  Closed        the socket has been released
///  bit  5  Aborted       the socket was released with RST on purpose
///  bits 6..7            reserved
///  bits 8..30 lease count (references held by owners; see ConnectionLease)
/// </code>
/// <see cref="ConnectionState"/> is derived from these bits, so it can never disagree with them.
/// </remarks>
internal static class StateBits
{
    public const int SendShutdown = 1 << 0;
    public const int PeerFin = 1 << 1;
    public const int PeerReset = 1 << 2;
    public const int Closing = 1 << 3;
    public const int Closed = 1 << 4;
    public const int Aborted = 1 << 5;

    public const int LeaseShift = 8;
    public const int LeaseOne = 1 << LeaseShift;
    public const int LeaseMask = ~((1 << LeaseShift) - 1) & int.MaxValue;

    public static int LeaseCount(int state) => (state & LeaseMask) >> LeaseShift;

    public static ConnectionState ToConnectionState(int state)
    {
        if ((state & Aborted) != 0)
        {
            return ConnectionState.Aborted;
        }

        if ((state & Closed) != 0)
        {
            return ConnectionState.Closed;
        }

        if ((state & Closing) != 0)
        {
            return ConnectionState.Closing;
        }

        return (state & (SendShutdown | PeerFin)) switch
        {
            SendShutdown | PeerFin => ConnectionState.BothShutdown,
            SendShutdown => ConnectionState.SendShutdown,
            PeerFin => ConnectionState.PeerShutdown,
            _ => ConnectionState.Open,
        };
    }

    /// <summary>Sets <paramref name="bits"/> in <paramref name="state"/> atomically.</summary>
    /// <returns>The state word before the change.</returns>
    public static int Set(ref int state, int bits)
    {
        int current = Volatile.Read(ref state);
        while (true)
        {
            int seen = Interlocked.CompareExchange(ref state, current | bits, current);
            if (seen == current)
            {
                return seen;
            }

            current = seen;
        }
    }
}
