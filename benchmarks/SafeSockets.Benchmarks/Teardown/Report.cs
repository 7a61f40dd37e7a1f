using System.Globalization;
using System.Text;
using static SafeSockets.Benchmarks.Teardown.TeardownCommand;

namespace SafeSockets.Benchmarks.Teardown;

internal static class Report
{
    private static readonly CultureInfo s_inv = CultureInfo.InvariantCulture;

    public static string Markdown(IReadOnlyList<Row> rows, Settings settings)
    {
        var sb = new StringBuilder();
        sb.AppendLine(s_inv, $"Teardown comparison: {settings.Rounds} rounds x {settings.Cycles} cycles per strategy, {settings.Concurrency} in flight, {settings.Ports} ports per strategy, {Environment.ProcessorCount} cores.");
        sb.AppendLine();
        sb.AppendLine("| strategy | cycles/s median (min-max) | ratio | p50 us | p99 us | CPU us/cycle | alloc B/cycle | RST seen by peers | OutRsts | EstabResets | TIME_WAIT left | CLOSE_WAIT left | bytes lost | errors |");
        sb.AppendLine("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        foreach (Row r in rows)
        {
            sb.AppendLine(s_inv, $"| {r.Strategy.Name} | {r.MedianRate:N0} ({r.MinRate:N0}-{r.MaxRate:N0}) | {r.Ratio:F2} | {r.P50:N0} | {r.P99:N0} | {r.Cpu:N0} | {r.Allocated:N0} | {r.Effects.PeerResets} | {r.Effects.OutRsts} | {r.Effects.EstabResets} | {r.Effects.TimeWait} | {r.Effects.CloseWait} | {r.Effects.BytesLost:N0} | {r.Effects.Errors} |");
        }

        sb.AppendLine();
        sb.AppendLine(s_inv, $"TCPTimeWaitOverflow during the run: {rows.Sum(r => r.Effects.TimeWaitOverflow)}. Kernel counters (OutRsts, EstabResets) are system-wide deltas over each strategy's rounds; TIME_WAIT and CLOSE_WAIT are counted on the strategy's own ports after its last round. Ratio: median cycles/s over raw-graceful's.");
        sb.AppendLine();
        foreach (Row r in rows)
        {
            sb.AppendLine(s_inv, $"- `{r.Strategy.Name}`: {r.Strategy.Description}");
        }

        return sb.ToString();
    }

    public static string Csv(IReadOnlyList<Row> rows)
    {
        var sb = new StringBuilder();
        sb.AppendLine("strategy,cycles_per_s_median,cycles_per_s_min,cycles_per_s_max,ratio,p50_us,p99_us,cpu_us_per_cycle,alloc_bytes_per_cycle,peer_resets,out_rsts,estab_resets,time_wait_overflow,time_wait_left,close_wait_left,bytes_lost,errors");
        foreach (Row r in rows)
        {
            sb.AppendLine(string.Join(',',
                r.Strategy.Name,
                F(r.MedianRate), F(r.MinRate), F(r.MaxRate), F(r.Ratio), F(r.P50), F(r.P99), F(r.Cpu), F(r.Allocated),
                r.Effects.PeerResets.ToString(s_inv), r.Effects.OutRsts.ToString(s_inv), r.Effects.EstabResets.ToString(s_inv), r.Effects.TimeWaitOverflow.ToString(s_inv),
                r.Effects.TimeWait.ToString(s_inv), r.Effects.CloseWait.ToString(s_inv), r.Effects.BytesLost.ToString(s_inv), r.Effects.Errors.ToString(s_inv)));
        }

        return sb.ToString();

        static string F(double d) => double.IsNaN(d) ? "" : d.ToString("F2", s_inv);
    }

    /// <summary>A horizontal bar chart of median cycles/s, RST-producing strategies in red.</summary>
    public static string Svg(IReadOnlyList<Row> rows)
    {
        const int barHeight = 22, gap = 8, left = 210, width = 760, top = 40;
        double max = Math.Max(1, rows.Max(r => r.MedianRate));
        int height = top + rows.Count * (barHeight + gap) + 20;
        var sb = new StringBuilder();
        sb.AppendLine(s_inv, $"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{left + width + 120}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">");
        sb.AppendLine(s_inv, $"<text x=\"10\" y=\"22\" font-size=\"15\">Teardown cycles/s (median); red = resets seen by peers</text>");
        for (int i = 0; i < rows.Count; i++)
        {
            Row r = rows[i];
            int y = top + i * (barHeight + gap);
            int w = (int)(r.MedianRate / max * width);
            string color = r.Effects.PeerResets > 0 ? "#d9534f" : r.Strategy.Ours ? "#2e7d32" : "#5b7db1";
            sb.AppendLine(s_inv, $"<text x=\"{left - 8}\" y=\"{y + 15}\" text-anchor=\"end\">{r.Strategy.Name}</text>");
            sb.AppendLine(s_inv, $"<rect x=\"{left}\" y=\"{y}\" width=\"{Math.Max(w, 1)}\" height=\"{barHeight}\" fill=\"{color}\"/>");
            sb.AppendLine(s_inv, $"<text x=\"{left + Math.Max(w, 1) + 6}\" y=\"{y + 15}\">{r.MedianRate:N0}</text>");
        }

        sb.AppendLine("</svg>");
        return sb.ToString();
    }
}
