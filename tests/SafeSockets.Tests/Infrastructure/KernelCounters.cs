namespace SafeSockets.Tests.Infrastructure;

/// <summary>The kernel's TCP counters from <c>/proc/net/snmp</c> (system-wide: use in non-parallel tests only).</summary>
internal readonly record struct KernelCounters(long OutRsts, long EstabResets)
{
    public static bool IsSupported => File.Exists("/proc/net/snmp");

    public static KernelCounters Read()
    {
        if (!IsSupported)
        {
            return default;
        }

        string[] lines = File.ReadAllLines("/proc/net/snmp");
        for (int i = 0; i + 1 < lines.Length; i++)
        {
            if (lines[i].StartsWith("Tcp:", StringComparison.Ordinal) && lines[i + 1].StartsWith("Tcp:", StringComparison.Ordinal))
            {
                string[] names = lines[i].Split(' ', StringSplitOptions.RemoveEmptyEntries);
                string[] values = lines[i + 1].Split(' ', StringSplitOptions.RemoveEmptyEntries);
                return new KernelCounters(
                    long.Parse(values[Array.IndexOf(names, "OutRsts")], System.Globalization.CultureInfo.InvariantCulture),
                    long.Parse(values[Array.IndexOf(names, "EstabResets")], System.Globalization.CultureInfo.InvariantCulture));
            }
        }

        return default;
    }

    public static KernelCounters operator -(KernelCounters a, KernelCounters b) => new(a.OutRsts - b.OutRsts, a.EstabResets - b.EstabResets);
}

/// <summary>Tests in this collection run alone: they read system-wide kernel counters or count descriptors, or they start
/// a process (a child holds a copy of every descriptor of this process between its fork and its exec, so a close another
/// test makes meanwhile does not end its socket: a listener keeps listening, an abort's RST waits).</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class ExclusiveTests
{
    public const string Name = "Exclusive (kernel counters, descriptors)";
}
