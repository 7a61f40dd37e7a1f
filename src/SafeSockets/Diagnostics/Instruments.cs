using System.Diagnostics.Metrics;
using System.Runtime.CompilerServices;

namespace SafeSockets.Diagnostics;

/// <summary>The instruments of one <c>SafeSockets</c> meter: the static one (<see cref="Metrics.Default"/>) or one made by an
/// <see cref="IMeterFactory"/> (<see cref="For"/>). Made once per meter, shared by every connection that records to it;
/// recording is skipped entirely while nobody listens.</summary>
internal sealed class Instruments
{
    // Kestrel's advice for kestrel.connection.duration (10 ms to 5 min): connections live from milliseconds to minutes.
    private static readonly double[] s_connectionBuckets = [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60, 120, 300];

    // A close takes from well under a millisecond (the peer's FIN already in) to the drain bound (30 s by default).
    private static readonly double[] s_closeBuckets = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];

    // A factory returns the same meter for the same name and version: one set of instruments per meter, however many
    // listeners or options objects use it.
    private static readonly ConditionalWeakTable<Meter, Instruments> s_byMeter = new();

    public Instruments(Meter meter)
    {
        Opened = meter.CreateCounter<long>(SafeSocketsMetrics.ConnectionsOpened, "{connection}", "Connections created.");
        Closed = meter.CreateCounter<long>(SafeSocketsMetrics.ConnectionsClosed, "{connection}", "Connections released, by close outcome.");
        Drained = meter.CreateCounter<long>(SafeSocketsMetrics.BytesDrained, "By", "Bytes read and discarded while draining.");
        CloseDuration = meter.CreateHistogram(SafeSocketsMetrics.CloseDuration, "s", "Time from close start to socket release.",
            tags: null, new InstrumentAdvice<double> { HistogramBucketBoundaries = s_closeBuckets });
        PeerFinToClose = meter.CreateHistogram(SafeSocketsMetrics.PeerFinToCloseDuration, "s", "Time from the peer's FIN to our socket release.",
            tags: null, new InstrumentAdvice<double> { HistogramBucketBoundaries = s_closeBuckets });
        ConnectionDuration = meter.CreateHistogram(SafeSocketsMetrics.ConnectionDuration, "s", "Time from the connection's creation to its socket release.",
            tags: null, new InstrumentAdvice<double> { HistogramBucketBoundaries = s_connectionBuckets });
        ForcedCloses = meter.CreateCounter<long>(SafeSocketsMetrics.CloseWaitForcedCloses, "{connection}", "Closes forced by CloseWaitTimeout.");
        Aborts = meter.CreateCounter<long>(SafeSocketsMetrics.Aborts, "{connection}", "Deliberate aborts (RST).");
        CutShort = meter.CreateCounter<long>(SafeSocketsMetrics.DrainsCutShort, "{connection}", "Drains cut short by a listener's draining budget.");
        Rejected = meter.CreateCounter<long>(SafeSocketsMetrics.ConnectionsRejected, "{connection}", "Connections closed at once over MaxConnections.");
    }

    public Counter<long> Opened { get; }

    public Counter<long> Closed { get; }

    public Counter<long> Drained { get; }

    public Histogram<double> CloseDuration { get; }

    public Histogram<double> PeerFinToClose { get; }

    public Histogram<double> ConnectionDuration { get; }

    public Counter<long> ForcedCloses { get; }

    public Counter<long> Aborts { get; }

    public Counter<long> CutShort { get; }

    public Counter<long> Rejected { get; }

    /// <summary>The instruments on <paramref name="factory"/>'s <c>SafeSockets</c> meter (the factory owns and disposes it).</summary>
    public static Instruments For(IMeterFactory factory)
    {
        Meter meter = factory.Create(new MeterOptions(SafeSocketsMetrics.MeterName) { Version = Metrics.Version });
        return s_byMeter.GetValue(meter, static m => new Instruments(m));
    }
}
