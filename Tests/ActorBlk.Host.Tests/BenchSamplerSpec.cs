using System.Text.Json;
using ActorBlk.Host.Bench;
using ActorBlk.Host.Tests.Support;
using ActorBlk.Testing;
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
    /// fio's sampling clock starts when the window opens (libfio.c <c>reset_all_stats</c> sets
    /// <c>bw_sample_time</c> and <c>iops_sample_time</c> to the end of the ramp), so its first
    /// sample comes one 500 ms interval into the window and spans exactly that. Here the window
    /// opens 300 ms into the run; the device does 2 reads of 4 KiB a ms for the window's first
    /// 500 ms, then 1 a ms. fio's samples at 500, 1,000 and 1,500 ms of the window: 1,000 I/Os in
    /// 500 ms (2,000 IOPS, 4,096,000 * 1000 / 500 / 1024 = 8,000 KiB/s), then 500 (1,000 IOPS,
    /// 4,000 KiB/s) twice. The bench's ticks ran from its start (500, 1,000, 1,500 ms of the run):
    /// nothing at 200 ms of the window (too short), then 1,200 I/Os over 700 ms (1,714 IOPS, 6,857
    /// KiB/s) and 1,000 IOPS: two samples, the first spanning 1.4 intervals.
    /// </summary>
    [Fact]
    public async Task The_first_sample_comes_one_interval_after_the_window_opens()
    {
        var clock = new ManualTimeProvider();
        var opens = TimeSpan.FromMilliseconds(300);
        var sampler = new BenchSampler();
        BenchResult Snapshot()
        {
            var measured = clock.Now > opens ? clock.Now - opens : TimeSpan.Zero;
            var ms = (long)measured.TotalMilliseconds;
            var ios = ms <= 500 ? 2 * ms : 1000 + (ms - 500);
            var reads = new OpStats { Ios = ios, Bytes = ios * 4096 };
            return new BenchResult(new BenchOptions(), reads, new OpStats(), measured, clock.Now,
                Submitted: ios, Completed: ios, Errors: 0, Timeouts: 0, UsrCpu: 0, SysCpu: 0, DeviceDescription: "spec");
        }

        using var stop = new CancellationTokenSource();
        var run = sampler.RunAsync(Snapshot, clock, stop.Token);
        var patience = TimeSpan.FromSeconds(30);
        while (clock.Now < TimeSpan.FromMilliseconds(1800))
        {
            await clock.WhenTimersPendingAsync().WaitAsync(patience);
            clock.Advance(TimeSpan.FromMilliseconds(10));
        }

        await clock.WhenTimersPendingAsync().WaitAsync(patience);  // the sample at 1,800 ms is taken
        await stop.CancelAsync();
        await run.WaitAsync(patience);

        Assert.Equal([new RateSample(8000, 2000), new RateSample(4000, 1000), new RateSample(4000, 1000)], sampler.Read);
        Assert.Empty(sampler.Write);
    }

    /// <summary>
    /// How long the sampler waits after each look, fio's <c>__add_samples</c> return: the rest of
    /// the interval before a sample (500 - 300 = 200 ms; 1 ms short is a sample, within the
    /// slack), the interval after one on time, and after one late the interval less
    /// <c>1 + spent - avg_time</c>: 508 ms gives 491; 1,000 ms or more gives 500 (fio's unsigned
    /// <c>next</c> wraps and <c>min(next, next_log)</c> is the interval). A window that did not
    /// move (closed at 1,900 ms) is looked at again a whole interval later.
    /// </summary>
    [Fact]
    public void The_wait_for_the_next_sample_is_fios()
    {
        var sampler = new BenchSampler();
        TimeSpan Poll(double ms) => sampler.Poll((long)ms, (long)ms * 4096, 0, 0, TimeSpan.FromMilliseconds(ms));
        Assert.Equal(TimeSpan.FromMilliseconds(500), Poll(0));
        Assert.Equal(TimeSpan.FromMilliseconds(200), Poll(300));
        Assert.Equal(TimeSpan.FromMilliseconds(491), Poll(508));         // a sample, 8 ms late
        Assert.Equal(TimeSpan.FromMilliseconds(500), Poll(1007));        // 499 ms: within the slack, a sample
        Assert.Equal(TimeSpan.FromMilliseconds(500), Poll(2007));        // 1,000 ms late
        Assert.Equal(TimeSpan.FromMilliseconds(400), Poll(2107));
        Assert.Equal(TimeSpan.FromMilliseconds(500), Poll(2107));        // the window did not move
        Assert.Equal(3, sampler.Read.Count);                              // at 508, 1,007 and 2,007 ms
    }

    /// <summary>
    /// A time-based window ends one interval after its last sample: fio takes that sample, as its
    /// job runs a little past the runtime (fio 3.33, null engine, 2 s with --ramp_time=1: 4 samples, or 3 when its job ends first). The sampler's
    /// timer may wake after the run has ended (here the window's clock reached its end, 1,000
    /// ms, at 990 ms of the timer's), and the bench's sampling then stopped without it: 3
    /// samples in 2 s. On being stopped it polls once more: 1,000 reads in the last 500 ms,
    /// 2,000 IOPS, 8,000 KiB/s.
    /// </summary>
    [Fact]
    public async Task The_sample_at_the_windows_end_is_taken_when_the_run_stops_first()
    {
        var clock = new ManualTimeProvider();
        var measured = TimeSpan.Zero;
        var sampler = new BenchSampler();
        BenchResult Snapshot()
        {
            var ios = 2 * (long)measured.TotalMilliseconds;
            return new BenchResult(new BenchOptions(), new OpStats { Ios = ios, Bytes = ios * 4096 }, new OpStats(), measured, clock.Now,
                Submitted: ios, Completed: ios, Errors: 0, Timeouts: 0, UsrCpu: 0, SysCpu: 0, DeviceDescription: "spec");
        }

        using var stop = new CancellationTokenSource();
        var run = sampler.RunAsync(Snapshot, clock, stop.Token);
        var patience = TimeSpan.FromSeconds(30);
        await clock.WhenTimersPendingAsync().WaitAsync(patience);
        measured = TimeSpan.FromMilliseconds(500);
        clock.Advance(TimeSpan.FromMilliseconds(500));
        await clock.WhenTimersPendingAsync().WaitAsync(patience);
        Assert.Single(sampler.Read);

        clock.Advance(TimeSpan.FromMilliseconds(490));
        measured = TimeSpan.FromMilliseconds(1000);   // the window's end, fixed when it opened
        await stop.CancelAsync();
        await run.WaitAsync(patience);

        Assert.Equal([new RateSample(8000, 2000), new RateSample(8000, 2000)], sampler.Read);
    }

    /// <summary>
    /// A 2 s window sampled by a timer that woke late each time (at 502, 1,003 and 1,503 ms; fio's
    /// waits after a late sample, 497 and 498 ms, and then 500): the rest of the window after the
    /// third sample is 497 ms, more than the 1 ms slack short of an interval, so the last look at
    /// the window's end took no sample and the run showed 3 samples; with the timer on time it
    /// showed 4. The window ends on its fourth boundary, and that is sampled whatever the
    /// lateness: 994 reads over the 497 ms, 2,000 IOPS and 8,000 KiB/s. The clock is the test's.
    /// </summary>
    [Fact]
    public async Task A_window_of_four_intervals_has_four_samples_however_late_the_timer_woke()
    {
        var clock = new ManualTimeProvider();
        var end = TimeSpan.FromMilliseconds(2000);
        var sampler = new BenchSampler();
        BenchResult Snapshot()
        {
            var measured = clock.Now < end ? clock.Now : end;
            var ios = 2 * (long)measured.TotalMilliseconds;
            return new BenchResult(new BenchOptions(), new OpStats { Ios = ios, Bytes = ios * 4096 }, new OpStats(), measured, clock.Now,
                Submitted: ios, Completed: ios, Errors: 0, Timeouts: 0, UsrCpu: 0, SysCpu: 0, DeviceDescription: "spec");
        }

        using var stop = new CancellationTokenSource();
        var run = sampler.RunAsync(Snapshot, clock, stop.Token);
        var patience = TimeSpan.FromSeconds(30);
        foreach (var (by, samples) in new[] { (502, 1), (501, 2), (500, 3), (497, 3) })
        {
            await clock.WhenTimersPendingAsync().WaitAsync(patience);
            clock.Advance(TimeSpan.FromMilliseconds(by));                   // to 502, 1,003, 1,503 and 2,000 ms
            await clock.WhenTimersPendingAsync().WaitAsync(patience);
            Assert.Equal(samples, sampler.Read.Count);
        }

        await stop.CancelAsync();
        await run.WaitAsync(patience);

        Assert.Equal(4, sampler.Read.Count);
        Assert.Equal(new RateSample(8000, 2000), sampler.Read[3]);
    }

    /// <summary>
    /// The last look's rule (<see cref="BenchSampler.Close"/>): a rest of an interval within the
    /// slack is a sample, as in <see cref="BenchSampler.Poll"/>; a shorter rest is one only when
    /// the window reaches the boundary after the samples so far (a window of whole intervals); a
    /// size-bound window that ends between boundaries leaves its rest unsampled, as fio's does;
    /// and a second look at the same window adds nothing.
    /// </summary>
    [Fact]
    public void The_last_look_samples_the_windows_last_boundary()
    {
        static BenchSampler After(params double[] points)
        {
            var sampler = new BenchSampler();
            sampler.Poll(0, 0, 0, 0, TimeSpan.Zero);
            foreach (var ms in points)
            {
                sampler.Poll((long)ms, (long)ms * 4096, 0, 0, TimeSpan.FromMilliseconds(ms));
            }

            return sampler;
        }

        var late = After(502, 1003, 1503);
        late.Close(2000, 2000 * 4096, 0, 0, TimeSpan.FromMilliseconds(2000));   // 497 ms, on the fourth boundary
        late.Close(2000, 2000 * 4096, 0, 0, TimeSpan.FromMilliseconds(2000));   // again: nothing more
        Assert.Equal(4, late.Read.Count);

        var early = After(499, 998, 1497);
        early.Close(1996, 1996 * 4096, 0, 0, TimeSpan.FromMilliseconds(1996)); // 499 ms: within the slack
        Assert.Equal(4, early.Read.Count);

        var sizeBound = After(500, 1000, 1500);
        sizeBound.Close(1700, 1700 * 4096, 0, 0, TimeSpan.FromMilliseconds(1700)); // 200 ms, no boundary
        sizeBound.Close(1998, 1998 * 4096, 0, 0, TimeSpan.FromMilliseconds(1998)); // 498 ms, a ms short of 1,999
        Assert.Equal(3, sizeBound.Read.Count);
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
