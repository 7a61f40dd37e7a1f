using System.Globalization;

namespace SafeSockets.Benchmarks.Teardown;

/// <summary>System-wide TCP counters: <c>/proc/net/snmp</c> (Tcp) and <c>/proc/net/netstat</c> (TcpExt).</summary>
internal readonly record struct KernelCounters(long OutRsts, long EstabResets, long TimeWaitOverflow)
{
    public static KernelCounters Read() => new(
        ReadField("/proc/net/snmp", "Tcp:", "OutRsts"),
        ReadField("/proc/net/snmp", "Tcp:", "EstabResets"),
        ReadField("/proc/net/netstat", "TcpExt:", "TCPTimeWaitOverflow"));

    public static KernelCounters operator -(KernelCounters a, KernelCounters b) =>
        new(a.OutRsts - b.OutRsts, a.EstabResets - b.EstabResets, a.TimeWaitOverflow - b.TimeWaitOverflow);

    private static long ReadField(string file, string prefix, string name)
    {
        if (!File.Exists(file))
        {
            return 0;
        }

        string[] lines = File.ReadAllLines(file);
        for (int i = 0; i + 1 < lines.Length; i++)
        {
            if (lines[i].StartsWith(prefix, StringComparison.Ordinal) && lines[i + 1].StartsWith(prefix, StringComparison.Ordinal))
            {
                string[] names = lines[i].Split(' ', StringSplitOptions.RemoveEmptyEntries);
                string[] values = lines[i + 1].Split(' ', StringSplitOptions.RemoveEmptyEntries);
                int index = Array.IndexOf(names, name);
                return index > 0 ? long.Parse(values[index], CultureInfo.InvariantCulture) : 0;
            }
        }

        return 0;
    }
}
