using System.Net.Sockets;

namespace SafeSockets.Tests.Infrastructure;

/// <summary>How a connection ended, as the peer saw it.</summary>
internal enum PeerEnd
{
    /// <summary>A read returned 0: the other side sent FIN.</summary>
    Fin,

    /// <summary>A read failed with ConnectionReset: the other side sent RST.</summary>
    Reset,
}

/// <summary>What a raw peer socket observed while reading to the end.</summary>
internal readonly record struct PeerReadResult(long Bytes, PeerEnd End, byte[]? Data);

/// <summary>A real peer's view of the connection: reads until FIN or RST.</summary>
internal static class Peer
{
    /// <summary>After the peer's FIN, with nobody reading or closing: the CLOSE_WAIT guard closes the connection
    /// (CloseWaitTimedOut) and the peer gets our FIN, not a reset.</summary>
    public static async Task ExpectTheGuardsCloseAsync(Socket peer, ManagedConnection connection)
    {
        CloseResult result = await connection.Completion.WithTimeout();
        Assert.Equal(CloseOutcome.CloseWaitTimedOut, result.Outcome);
        Assert.Equal(PeerEnd.Fin, (await ReadToEndAsync(peer).WithTimeout()).End);
    }

    public static async Task<PeerReadResult> ReadToEndAsync(Socket socket, bool keepData = false, CancellationToken cancellationToken = default)
    {
        byte[] buffer = new byte[64 * 1024];
        using var kept = keepData ? new MemoryStream() : null;
        long total = 0;
        try
        {
            while (true)
            {
                int n = await socket.ReceiveAsync(buffer, SocketFlags.None, cancellationToken);
                if (n == 0)
                {
                    return new PeerReadResult(total, PeerEnd.Fin, kept?.ToArray());
                }

                total += n;
                kept?.Write(buffer, 0, n);
            }
        }
        catch (SocketException ex) when (ex.SocketErrorCode == SocketError.ConnectionReset)
        {
            return new PeerReadResult(total, PeerEnd.Reset, kept?.ToArray());
        }
    }

    /// <summary>Sends 1 MiB from <paramref name="client"/> and reads it all through <paramref name="server"/>'s
    /// ReceiveAsync in 64 KiB reads, so that its receive loop's reads grow past 4 KiB.</summary>
    /// <returns>The 64 KiB buffer the reads used, for the test's next read.</returns>
    public static async Task<byte[]> UploadInBulkAsync(Socket client, ManagedConnection server)
    {
        const int Upload = 1024 * 1024;
        Task send = SendPatternAsync(client, Upload);
        byte[] buffer = new byte[64 * 1024];
        int read = 0;
        while (read < Upload)
        {
            read += await server.ReceiveAsync(buffer).WithTimeout();
        }

        await send.WithTimeout();
        return buffer;
    }

    /// <summary>Sends <paramref name="count"/> bytes of a recognisable pattern.</summary>
    public static async Task SendPatternAsync(Socket socket, int count, CancellationToken cancellationToken = default)
    {
        byte[] data = Pattern(count);
        int sent = 0;
        while (sent < count)
        {
            sent += await socket.SendAsync(data.AsMemory(sent), SocketFlags.None, cancellationToken);
        }
    }

    /// <summary>Sends <paramref name="count"/> bytes, or until the other end resets the connection (a close that gave up
    /// at its byte cap): a flood the test expects to be cut.</summary>
    public static Task FloodUntilResetAsync(Socket socket, int count) => Task.Run(async () =>
    {
        try
        {
            await SendPatternAsync(socket, count);
        }
        catch (SocketException)
        {
            // The other end gave up (and reset over the unread rest): expected.
        }
    });

    /// <summary>Reads our FIN (the close has begun), then floods until the close gives up with a reset; returns the close's
    /// result.</summary>
    public static async Task<CloseResult> FloodAfterOurFinAsync(Socket socket, Task<CloseResult> close)
    {
        Assert.Equal(PeerEnd.Fin, (await ReadToEndAsync(socket).WithTimeout()).End);
        Task flood = FloodUntilResetAsync(socket, 8 * 1024 * 1024);
        CloseResult result = await close.WithTimeout();
        await flood.WithTimeout();
        return result;
    }

    public static byte[] Pattern(int count)
    {
        byte[] data = new byte[count];
        for (int i = 0; i < data.Length; i++)
        {
            data[i] = (byte)(i * 7 + (i >> 8));
        }

        return data;
    }

    /// <summary>Reads from a managed connection until its ReceiveAsync returns 0 (the peer's FIN).</summary>
    public static async Task<byte[]> ReadAllAsync(ManagedConnection connection)
    {
        using var all = new MemoryStream();
        byte[] buffer = new byte[16 * 1024];
        int n;
        while ((n = await connection.ReceiveAsync(buffer)) > 0)
        {
            all.Write(buffer, 0, n);
        }

        return all.ToArray();
    }
}
