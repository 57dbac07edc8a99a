using ScottPlot;
using SkiaSharp;

namespace ActorBlk.Host.Bench;

/// <summary>
/// <c>--plot FILE.png|FILE.svg</c>: two charts in one image, drawn with ScottPlot (SkiaSharp,
/// headless): above, IOPS over the measured window by direction; below, the latency percentile
/// curve (latency against percentile on a "nines" scale, 90, 99, 99.9 ... evenly spaced, as
/// fio-plot and HdrHistogram draw it).
/// </summary>
internal static class BenchPlot
{
    /// <summary>Width of the image in pixels.</summary>
    public const int Width = 1000;

    /// <summary>Height of the image in pixels (two charts of half each).</summary>
    public const int Height = 800;

    // Percentiles of the curve: 100 * (1 - 10^(-k/20)), k = 0..100, i.e. 0 to 99.999 in steps of a twentieth of a nine.
    private static readonly double[] Nines = [.. Enumerable.Range(0, 101).Select(k => k / 20.0)];

    /// <summary>Draws <paramref name="result"/> and the IOPS windows of <paramref name="timelines"/> to <paramref name="path"/> (.png or .svg).</summary>
    public static void Write(string path, BenchResult result, IReadOnlyList<IoLog> timelines)
    {
        ArgumentNullException.ThrowIfNull(path);
        ArgumentNullException.ThrowIfNull(result);
        ArgumentNullException.ThrowIfNull(timelines);
        var iops = IopsPlot(result, timelines);
        var latency = LatencyPlot(result);
        if (path.EndsWith(".svg", StringComparison.OrdinalIgnoreCase))
        {
            using var stream = File.Create(path);
            using (var canvas = SKSvgCanvas.Create(new SKRect(0, 0, Width, Height), stream))
            {
                Render(canvas, iops, latency);
            }

            return;
        }

        using var surface = SKSurface.Create(new SKImageInfo(Width, Height)) ?? throw new InvalidOperationException("SkiaSharp could not create a drawing surface.");
        Render(surface.Canvas, iops, latency);
        using var image = surface.Snapshot();
        using var data = image.Encode(SKEncodedImageFormat.Png, 100);
        using var file = File.Create(path);
        data.SaveTo(file);
    }

    private static void Render(SKCanvas canvas, Plot top, Plot bottom)
    {
        canvas.Clear(SKColors.White);
        Render(canvas, top, 0);
        Render(canvas, bottom, Height / 2);
    }

    // A plot clears the canvas it draws on: each one draws in its own clipped, translated half.
    private static void Render(SKCanvas canvas, Plot plot, int y)
    {
        canvas.Save();
        canvas.ClipRect(new SKRect(0, y, Width, y + (Height / 2)));
        canvas.Translate(0, y);
        plot.Render(canvas, new PixelRect(new Pixel(0, 0), new PixelSize(Width, Height / 2)));
        canvas.Restore();
    }

    private static Plot IopsPlot(BenchResult result, IReadOnlyList<IoLog> timelines)
    {
        var o = result.Options;
        var plot = new Plot();
        plot.Title($"{o.Name}: rw={o.PatternName}, bs={Commands.Sizes.Format(o.BlockSize)}, iodepth={o.IoDepth}, numjobs={o.NumJobs}, dispatch={result.Dispatch}");
        plot.XLabel("time (s)");
        plot.YLabel("IOPS");
        var entries = IoLog.Merge(timelines, iops: true);
        foreach (var (direction, label) in new[] { (0, "read"), (1, "write") })
        {
            var points = entries.Where(e => e.Direction == direction).ToArray();
            if (points.Length == 0)
            {
                continue;
            }

            var line = plot.Add.Scatter(points.Select(e => e.TimeMs / 1000.0).ToArray(), points.Select(e => (double)e.Value).ToArray());
            line.LegendText = label;
            line.MarkerSize = 0;
        }

        plot.Axes.SetLimitsY(0, Math.Max(1, entries.Count == 0 ? 1 : entries.Max(e => e.Value) * 1.1));
        plot.ShowLegend(Alignment.LowerRight);
        return plot;
    }

    private static Plot LatencyPlot(BenchResult result)
    {
        var plot = new Plot();
        plot.Title("latency percentiles");
        plot.XLabel("percentile");
        plot.YLabel("latency (µs)");
        foreach (var (stats, label) in new[] { (result.Read, "read"), (result.Write, "write") })
        {
            if (stats.Ios == 0)
            {
                continue;
            }

            var histogram = stats.Total.Histogram;
            // Latency on a log scale: the tail is orders of magnitude above the median.
            var ys = Nines.Select(n => Math.Log10(Math.Max(1, histogram.GetValueAtPercentile(100 * (1 - Math.Pow(10, -n))) / 1000.0))).ToArray();
            var line = plot.Add.Scatter(Nines, ys);
            line.LegendText = label;
            line.MarkerSize = 0;
        }

        plot.Axes.Bottom.TickGenerator = new ScottPlot.TickGenerators.NumericManual(
            [0, 1, 2, 3, 4, 5], ["0", "90", "99", "99.9", "99.99", "99.999"]);
        plot.Axes.SetLimitsX(0, 5);
        plot.Axes.Left.TickGenerator = new ScottPlot.TickGenerators.NumericManual(
            [0, 1, 2, 3, 4, 5, 6], ["1", "10", "100", "1,000", "10,000", "100,000", "1,000,000"]);
        plot.ShowLegend(Alignment.UpperLeft);
        return plot;
    }
}
