using ActorBlk.Host.Bench;
using HdrHistogram;
using Xunit;

namespace ActorBlk.Host.Tests;

/// <summary>
/// The bench's latency recorder keeps its own counts array in HdrHistogram's layout (one
/// <c>lzcnt</c> per I/O instead of the library's table walk). These specs hold it to the library:
/// the same index for every value, and the same percentiles, mean, minimum and maximum as a
/// <see cref="LongHistogram"/>(1, 60 s, 3) fed the same latencies.
/// </summary>
public sealed class LatencyRecorderSpec
{
    private static readonly double[] Percentiles = [1, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 99, 99.5, 99.9, 99.95, 99.99, 100];

    [Theory]
    [InlineData(1L)]
    [InlineData(2047L)]
    [InlineData(2048L)]
    [InlineData(2049L)]
    [InlineData(4095L)]
    [InlineData(4096L)]
    [InlineData(123_456L)]
    [InlineData(1L << 32)]
    [InlineData(LatencyRecorder.HighestNs - 1)]
    [InlineData(LatencyRecorder.HighestNs)]
    public void A_value_lands_where_the_library_puts_it(long value)
    {
        // The lowest value of the value's index, recorded into the library, is equivalent to it.
        var index = LatencyRecorder.CountsIndex(value);
        var lowest = LatencyRecorder.ValueAt(index);
        var library = new LongHistogram(1, LatencyRecorder.HighestNs, 3);
        Assert.True(library.LowestEquivalentValue(value) == lowest, $"value {value}: index {index} starts at {lowest}, the library says {library.LowestEquivalentValue(value)}");
        Assert.Equal(index, LatencyRecorder.CountsIndex(lowest));
        Assert.Equal(index, LatencyRecorder.CountsIndex(library.HighestEquivalentValue(value)));
        Assert.Equal(index + 1, LatencyRecorder.CountsIndex(library.HighestEquivalentValue(value) + 1));
        Assert.True(index < LatencyRecorder.CountsLength);
    }

    [Fact]
    public void Every_index_maps_back_to_itself()
    {
        for (var i = 0; i < LatencyRecorder.CountsLength; i++)
        {
            var value = LatencyRecorder.ValueAt(i);
            if (value == 0)
            {
                continue; // index 0 holds 0 ns, below the recorder's lowest value
            }

            Assert.Equal(i, LatencyRecorder.CountsIndex(value));
        }
    }

    [Fact]
    public void Percentiles_and_moments_match_the_library_fed_the_same_latencies()
    {
        var random = new Random(16);
        var recorder = new LatencyRecorder();
        var library = new LongHistogram(1, LatencyRecorder.HighestNs, 3);
        long min = long.MaxValue, max = 0;
        double sum = 0;
        for (var i = 0; i < 200_000; i++)
        {
            // Log-uniform from 50 ns to 50 ms, and a few at the limits.
            var ns = i % 10_000 == 0 ? (i % 20_000 == 0 ? 1 : LatencyRecorder.HighestNs) : (long)Math.Exp(random.NextDouble() * (Math.Log(5e7) - Math.Log(50)) + Math.Log(50));
            recorder.RecordTicks(ns);
            library.RecordValue(ns);
            min = Math.Min(min, ns);
            max = Math.Max(max, ns);
            sum += ns;
        }

        Assert.Equal(200_000, recorder.Count);
        Assert.Equal(library.TotalCount, recorder.Histogram.TotalCount);
        Assert.Equal(min, recorder.Min);
        Assert.Equal(max, recorder.Max);
        Assert.Equal(sum, recorder.Sum);
        foreach (var p in Percentiles)
        {
            Assert.Equal(library.GetValueAtPercentile(p), recorder.Histogram.GetValueAtPercentile(p));
        }
    }

    [Fact]
    public void Merged_recorders_hold_both_and_the_histogram_follows_new_records()
    {
        var a = new LatencyRecorder();
        var b = new LatencyRecorder();
        for (var i = 1; i <= 100; i++)
        {
            a.RecordTicks(i * 1_000);
            b.RecordTicks(i * 1_000_000);
        }

        var merged = new LatencyRecorder();
        merged.Add(a);
        merged.Add(b);
        Assert.Equal(200, merged.Count);
        Assert.Equal(200, merged.Histogram.TotalCount);
        Assert.Equal(1_000, merged.Min);
        Assert.Equal(100_000_000, merged.Max);
        Assert.Equal(100_000, merged.Histogram.GetValueAtPercentile(50), tolerance: 100);

        // A view taken earlier is not served stale after more records.
        Assert.Equal(100, a.Histogram.TotalCount);
        a.RecordTicks(5);
        Assert.Equal(101, a.Histogram.TotalCount);
        Assert.Equal(5, a.Histogram.GetValueAtPercentile(0.5));

        a.Reset();
        Assert.Equal(0, a.Count);
        Assert.Equal(0, a.Histogram.TotalCount);
    }
}
