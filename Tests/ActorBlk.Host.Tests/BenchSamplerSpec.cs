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
        // The writes moved nothing in the second interval: no sample, as fio's (it was a zero one).
        Assert.Equal([new RateSample(4000, 1000)], sampler.Write);

        var iops = SampleStats.Of([.. sampler.Read.Select(s => s.Iops)]);
        Assert.Equal((2000.0, 4000.0, 3000.0, 2), (iops.Min, iops.Max, iops.Mean, iops.Count));
        Assert.Equal(Math.Sqrt(2_000_000), iops.StdDev, 6);                // sample deviation (n - 1), as fio
        Assert.Equal(default, SampleStats.Of([]));
    }

    /// <summary>
    /// fio 3.33 stat.c <c>__add_samples</c>: an interval more than <c>LOG_MSEC_SLACK</c> (1 ms)
    /// short of the sampling interval is not sampled yet; a direction whose bytes did not change
    /// gives no sample (<c>if (!delta) continue;</c>); one that moved any gets
    /// <c>bytes * 1000 / ms / 1024</c> KiB/s and <c>ios * 1000 / ms</c> IOPS in integers over the
    /// whole milliseconds, which is 0 KiB/s for less than 1,024 bytes a second: fio's only zero
    /// sample. The bench logged a zero sample for every idle direction and interval (a randread
    /// showed <c>bw_samples=2</c> and <c>bw_agg=100</c> for its writes) and fractional rates.
    /// </summary>
    [Fact]
    public void Samples_follow_fios_add_samples()
    {
        var sampler = new BenchSampler();
        sampler.Add(10, 40_960, 0, 0, TimeSpan.FromMilliseconds(300));     // 300 ms: too short, goes on
        sampler.Add(1000, 4_096_000, 0, 0, TimeSpan.FromMilliseconds(800.9)); // 800 ms: 4096000 * 1000 / 800 / 1024, 1000 * 1000 / 800
        sampler.Add(1001, 4_096_512, 0, 0, TimeSpan.FromMilliseconds(1301.9)); // 501 ms, 512 bytes: 512000 / 501 / 1024 = 0 KiB/s, 1000 / 501 = 1 IOPS
        sampler.Add(1001, 4_096_512, 3, 12_288, TimeSpan.FromMilliseconds(1800.9)); // 499 ms, within the slack; reads idle
        sampler.Add(1001, 4_096_512, 3, 12_288, TimeSpan.FromMilliseconds(2200)); // the window closed at 2.2 s: never sampled

        Assert.Equal([new RateSample(5000, 1250), new RateSample(0, 1)], sampler.Read);
        Assert.Equal([new RateSample(24, 6)], sampler.Write);   // 12288000 / 499 / 1024 = 24.04, 3000 / 499 = 6.01

        var bw = SampleStats.Of([.. sampler.Read.Select(s => s.KiBPerSecond)]);
        Assert.Equal((0.0, 5000.0, 2500.0, 2), (bw.Min, bw.Max, bw.Mean, bw.Count));
    }

    /// <summary>
    /// A randread run: its writes have no samples, so <c>bw_samples</c> and <c>iops_samples</c>
    /// 0 and <c>bw_agg</c> 0, and runtime 0, as fio's (it showed two zero samples, a share of 100
    /// and the whole window).
    /// </summary>
    [Fact]
    public async Task A_direction_the_workload_lacks_has_no_samples_and_no_runtime()
    {
        await using var bench = ActorBlkProcess.Start("bench", "--runtime=2", "--jit_warmup=0", "--rw=randread", "--output-format=json", "--eta=never");
        Assert.Equal(0, await bench.WaitForExitAsync(TimeSpan.FromSeconds(90)));
        using var report = JsonDocument.Parse(bench.StandardOutput);
        var job = report.RootElement.GetProperty("jobs")[0];
        var write = job.GetProperty("write");
        Assert.Equal(0, write.GetProperty("bw_samples").GetInt32());
        Assert.Equal(0, write.GetProperty("iops_samples").GetInt32());
        Assert.Equal(0.0, write.GetProperty("bw_agg").GetDouble());
        Assert.Equal(0, write.GetProperty("runtime").GetInt64());
        var read = job.GetProperty("read");
        Assert.True(read.GetProperty("bw_samples").GetInt32() >= 1);
        Assert.Equal(2000, read.GetProperty("runtime").GetInt64());
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
