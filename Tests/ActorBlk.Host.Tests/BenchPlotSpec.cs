using System.Xml.Linq;
using ActorBlk.Hardware.Requests;
using ActorBlk.Host.Bench;
using ActorBlk.Host.Tests.Support;
using Xunit;

namespace ActorBlk.Host.Tests;

/// <summary>Issue 12 item 4: <c>--plot FILE.png|FILE.svg</c> draws IOPS over time and the latency percentile curve, headless.</summary>
public sealed class BenchPlotSpec
{
    private static readonly byte[] PngSignature = [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A];

    internal static void AssertPng(string path)
    {
        var bytes = File.ReadAllBytes(path);
        Assert.True(bytes.Length > 10_000, $"{bytes.Length} bytes");
        Assert.Equal(PngSignature, bytes[..8]);

        // IHDR: width and height, big-endian, right after the signature and the chunk header.
        Assert.Equal("IHDR"u8.ToArray(), bytes[12..16]);
        Assert.Equal(BenchPlot.Width, System.Buffers.Binary.BinaryPrimitives.ReadInt32BigEndian(bytes.AsSpan(16)));
        Assert.Equal(BenchPlot.Height, System.Buffers.Binary.BinaryPrimitives.ReadInt32BigEndian(bytes.AsSpan(20)));
    }

    [Theory]
    [InlineData("png")]
    [InlineData("svg")]
    public void A_run_is_drawn_as_png_or_svg(string format)
    {
        var clock = new ManualBenchClock();
        using var accounting = new BenchAccounting(clock, 4096);
        accounting.OpenWindow(TimeSpan.FromSeconds(2));
        var timeline = new IoLog(100);
        for (var i = 0; i < 2000; i++)
        {
            var t0 = clock.Timestamp;
            clock.Advance(TimeSpan.FromMicroseconds(500 + (i % 7 * 100)));
            Assert.True(accounting.Record(read: i % 3 > 0, BlockStatus.Ok, t0, out var completed));
            timeline.Add(BenchClock.Nanoseconds(completed - accounting.WindowStart), BenchClock.Nanoseconds(completed - t0), i % 3 > 0, 4096, 0);
        }

        var (read, write, _) = accounting.Collect();
        var result = new BenchResult(new BenchOptions { Pattern = IoPattern.RandReadWrite }, read, write, accounting.Measured, accounting.Measured, 2000, 2000, 0, 0, 0, 0, "spec");
        var path = Path.Combine(Path.GetTempPath(), $"actorblk-plot-{Guid.NewGuid():N}.{format}");
        try
        {
            BenchPlot.Write(path, result, [timeline]);
            if (format == "png")
            {
                AssertPng(path);
                return;
            }

            var svg = XDocument.Load(path).Root!;
            Assert.Equal("svg", svg.Name.LocalName);
            Assert.Equal(BenchPlot.Width.ToString(System.Globalization.CultureInfo.InvariantCulture), svg.Attribute("width")?.Value);
            var text = File.ReadAllText(path);
            Assert.Contains("latency percentiles", text, StringComparison.Ordinal);
            Assert.Contains("IOPS", text, StringComparison.Ordinal);
        }
        finally
        {
            File.Delete(path);
        }
    }
}
