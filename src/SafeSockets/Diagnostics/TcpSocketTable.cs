using System.Globalization;

namespace SafeSockets.Diagnostics;

/// <summary>Reads the kernel's table of TCP sockets (<c>/proc/net/tcp</c> and <c>/proc/net/tcp6</c> on Linux) to count sockets by state.</summary>
/// <remarks>Used to prove that no socket is left in CLOSE_WAIT, and to count TIME_WAIT, on given ports. The table is
/// system-wide (the network namespace): it shows every process's sockets.</remarks>
public static class TcpSocketTable
{
    private static readonly string[] s_files = ["/proc/net/tcp", "/proc/net/tcp6"];

    /// <summary>Whether the table can be read on this system (Linux with <c>/proc</c> mounted).</summary>
    public static bool IsSupported => OperatingSystem.IsLinux() && File.Exists(s_files[0]);

    /// <summary>Counts the sockets in <paramref name="state"/> whose local or remote port is one of <paramref name="ports"/>.</summary>
    /// <param name="state">The state to count.</param>
    /// <param name="ports">The ports to match, local or remote.</param>
    /// <returns>The count; 0 when <see cref="IsSupported"/> is <see langword="false"/>.</returns>
    public static int Count(TcpState state, params int[] ports)
    {
        ArgumentNullException.ThrowIfNull(ports);
        int count = 0;
        foreach (Entry entry in ReadEntries())
        {
            if (entry.State == state && (Array.IndexOf(ports, entry.LocalPort) >= 0 || Array.IndexOf(ports, entry.RemotePort) >= 0))
            {
                count++;
            }
        }

        return count;
    }

    /// <summary>The state of the socket with exactly this local and remote port, or <see cref="TcpState.Unknown"/> if there is none.</summary>
    /// <param name="localPort">The socket's local port.</param>
    /// <param name="remotePort">The socket's remote port.</param>
    /// <returns>The kernel's state of that socket.</returns>
    public static TcpState GetState(int localPort, int remotePort)
    {
        foreach (Entry entry in ReadEntries())
        {
            if (entry.LocalPort == localPort && entry.RemotePort == remotePort)
            {
                return entry.State;
            }
        }

        return TcpState.Unknown;
    }

    internal readonly record struct Entry(int LocalPort, int RemotePort, TcpState State);

    internal static IEnumerable<Entry> ReadEntries()
    {
        if (!IsSupported)
        {
            yield break;
        }

        foreach (string file in s_files)
        {
            string[] lines;
            try
            {
                lines = File.ReadAllLines(file);
            }
            catch (IOException)
            {
                continue;
            }

            for (int i = 1; i < lines.Length; i++)
            {
                if (TryParse(lines[i], out Entry entry))
                {
                    yield return entry;
                }
            }
        }
    }

    // "  0: 0100007F:1F90 0100007F:C350 01 00000000:00000000 ..." : sl, local, remote, state (hex).
    internal static bool TryParse(string line, out Entry entry)
    {
        entry = default;
        string[] fields = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
        if (fields.Length < 4 ||
            !TryParsePort(fields[1], out int local) ||
            !TryParsePort(fields[2], out int remote) ||
            !int.TryParse(fields[3], NumberStyles.HexNumber, CultureInfo.InvariantCulture, out int state))
        {
            return false;
        }

        entry = new Entry(local, remote, (TcpState)state);
        return true;
    }

    private static bool TryParsePort(string address, out int port)
    {
        int colon = address.LastIndexOf(':');
        port = 0;
        return colon >= 0 && int.TryParse(address.AsSpan(colon + 1), NumberStyles.HexNumber, CultureInfo.InvariantCulture, out port);
    }
}
