using System.Net.Sockets;
using System.Runtime.InteropServices;

namespace SafeSockets.Diagnostics;

/// <summary>What the kernel reports about one TCP connection (<c>getsockopt(IPPROTO_TCP, TCP_INFO)</c> on Linux).</summary>
/// <remarks>Off Linux, or once the socket is released, <see cref="IsAvailable"/> is <see langword="false"/> and every other
/// value is its default: the library says "unavailable" rather than guessing.</remarks>
public readonly record struct TcpConnectionInfo
{
    // Offsets in Linux's struct tcp_info (include/uapi/linux/tcp.h), stable since 2.6.
    private const int StateOffset = 0;
    private const int UnackedOffset = 24;
    private const int RttOffset = 68;
    private const int TotalRetransOffset = 100;
    private const int MinimumLength = TotalRetransOffset + sizeof(uint);
    private const int IpProtoTcp = 6;
    private const int TcpInfoOption = 11;

    /// <summary>Whether the kernel answered; when <see langword="false"/> the other values mean nothing.</summary>
    public bool IsAvailable { get; init; }

    /// <summary>The kernel's TCP state of the connection (for example <see cref="TcpState.CloseWait"/> once the peer's FIN arrived).</summary>
    public TcpState State { get; init; }

    /// <summary>Segments sent and not yet acknowledged by the peer (<c>tcpi_unacked</c>).</summary>
    public int UnackedSegments { get; init; }

    /// <summary>Segments retransmitted over the connection's life (<c>tcpi_total_retrans</c>).</summary>
    public int TotalRetransmits { get; init; }

    /// <summary>The smoothed round-trip time (<c>tcpi_rtt</c>).</summary>
    public TimeSpan RoundTripTime { get; init; }

    /// <summary>Whether the kernel has received the peer's FIN (CLOSE_WAIT, LAST_ACK, CLOSING or TIME_WAIT), even if unread data sits before it.</summary>
    public bool PeerHasClosed => IsAvailable && State is TcpState.CloseWait or TcpState.LastAck or TcpState.Closing or TcpState.TimeWait;

    // tcpi_bytes_acked (Linux 4.1+), a __u64 after tcpi_total_retrans, tcpi_pacing_rate and tcpi_max_pacing_rate.
    private const int BytesAckedOffset = 120;

    /// <summary>The bytes the peer has acknowledged over the connection's life (<c>tcpi_bytes_acked</c>); -1 where the kernel cannot tell.</summary>
    internal static long ReadBytesAcked(Socket socket)
    {
        if (!OperatingSystem.IsLinux())
        {
            return -1;
        }

        Span<byte> buffer = stackalloc byte[BytesAckedOffset + sizeof(ulong)];
        try
        {
            return socket.GetRawSocketOption(IpProtoTcp, TcpInfoOption, buffer) >= buffer.Length
                ? (long)MemoryMarshal.Read<ulong>(buffer[BytesAckedOffset..])
                : -1;
        }
        catch (Exception ex) when (ex is SocketException or ObjectDisposedException)
        {
            return -1;
        }
    }

    internal static TcpConnectionInfo Read(Socket socket)
    {
        if (!OperatingSystem.IsLinux())
        {
            return default;
        }

        Span<byte> buffer = stackalloc byte[MinimumLength];
        int length;
        try
        {
            length = socket.GetRawSocketOption(IpProtoTcp, TcpInfoOption, buffer);
        }
        catch (Exception ex) when (ex is SocketException or ObjectDisposedException)
        {
            return default;
        }

        if (length < MinimumLength)
        {
            return default;
        }

        return new TcpConnectionInfo
        {
            IsAvailable = true,
            State = (TcpState)buffer[StateOffset],
            UnackedSegments = (int)MemoryMarshal.Read<uint>(buffer[UnackedOffset..]),
            RoundTripTime = TimeSpan.FromMicroseconds(MemoryMarshal.Read<uint>(buffer[RttOffset..])),
            TotalRetransmits = (int)MemoryMarshal.Read<uint>(buffer[TotalRetransOffset..]),
        };
    }
}
