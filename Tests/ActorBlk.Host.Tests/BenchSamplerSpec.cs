using System.Text.Json;
using ActorBlk.Host.Bench;
using ActorBlk.Host.Tests.Support;
using Xunit;

namespace ActorBlk.Host.Tests;

/// <summary>
/// fio's per-interval bandwidth and IOPS statistics in the JSON report (<c>bw_min</c>,
/// <c>bw_max</c>, <c>bw_agg</c>, <c>bw_mean</c>, <c>bw_dev</c>, <c>bw_samples</c>,
/// <c>iops_min</c> ... <c>iops_samples</c>): an outside audit found them missing, so
/// <c>jq .jobs[0].read.iops_mean</c> gave null.
/// </summary>
public sealed class BenchSamplerSpec
{
    [Fact]
    public void Each_interval_of_the_measured_window_is_one_sample_and_the_statistics_are_fios()
    {
        var sampler = new BenchSampler();
        sampler.Add(0, 0, 0, 0, TimeSpan.Zero);                          // window not open yet: no sample
        sampler.Add(0, 0, 0, 0, TimeSpan.Zero);
        sampler.Add(1000, 4096 * 1000, 500, 4096 * 500, TimeSpan.FromSeconds(0.5));
        sampler.Add(3000, 4096 * 3000, 500, 4096 * 500, TimeSpan.FromSeconds(1.0));
        sampler.Add(3000, 4096 * 3000, 500, 4096 * 500, TimeSpan.FromSeconds(1.0)); // window closed: no sample

        Assert.Equal([new RateSample(8000, 2000), new RateSample(16000, 4000)], sampler.Read);
        Assert.Equal([new RateSample(4000, 1000), new RateSample(0, 0)], sampler.Write);

        var iops = SampleStats.Of([.. sampler.Read.Select(s => s.Iops)]);
        Assert.Equal((2000.0, 4000.0, 3000.0, 2), (iops.Min, iops.Max, iops.Mean, iops.Count));
        Assert.Equal(Math.Sqrt(2_000_000), iops.StdDev, 6);                // sample deviation (n - 1), as fio
        Assert.Equal(default, SampleStats.Of([]));
    }

    [Fact]
    public async Task A_json_report_carries_the_sample_statistics_of_each_direction()
    {
        await using var bench = ActorBlkProcess.Start("bench", "--runtime=2", "--jit_warmup=0", "--rw=randrw", "--output-format=json");
        Assert.Equal(0, await bench.WaitForExitAsync(TimeSpan.FromSeconds(90)));
        using var report = JsonDocument.Parse(bench.StandardOutput);
        var read = report.RootElement.GetProperty("jobs")[0].GetProperty("read");
        Assert.InRange(read.GetProperty("iops_samples").GetInt32(), 1, 6); // about 4 in 2 s; the bound is loose for a loaded machine
        Assert.Equal(read.GetProperty("bw_samples").GetInt32(), read.GetProperty("iops_samples").GetInt32());
        Assert.True(read.GetProperty("iops_mean").GetDouble() > 0);
        Assert.True(read.GetProperty("iops_min").GetInt64() <= read.GetProperty("iops_max").GetInt64());
        Assert.True(read.GetProperty("bw_mean").GetDouble() > 0);
        // fio's share of the group's aggregate bandwidth (BenchReportAuditSpec has the arithmetic).
        Assert.Equal(
            BenchReport.PercentOfAggregate(read.GetProperty("bw_mean").GetDouble(), read.GetProperty("io_bytes").GetInt64(), TimeSpan.FromMilliseconds(read.GetProperty("runtime").GetInt64())),
            read.GetProperty("bw_agg").GetDouble(), 1e-5);
        Assert.InRange(read.GetProperty("bw_agg").GetDouble(), double.Epsilon, 100.0);
        Assert.True(read.GetProperty("iops_stddev").GetDouble() >= 0);
    }
}
