using System.Diagnostics;
using System.Text.Json;
using ActorBlk.Host.Bench;
using Xunit;

namespace ActorBlk.Host.Tests;

/// <summary>
/// The rest of fio's job report: the latency groups (<c>latency_ns</c>, <c>latency_us</c>,
/// <c>latency_ms</c>, fio's stat.c: each key the top of its group, a group with any I/O at least
/// 0.01%), <c>iodepth_level</c>, <c>ctx</c>/<c>majf</c>/<c>minf</c>, in JSON and in the normal
/// report's <c>lat (usec)</c>, <c>cpu</c> and <c>IO depths</c> lines.
/// </summary>
public sealed class BenchReportGroupsSpec
{
    // An outside audit (finding 6) against fio 3.33: the normal report lacked fio's latency line
    // after issued rwts (stat.c show_thread_status_normal, whenever latency_depth is set); the
    // JSON lacked fio's "sync" object (add_ddir_status_json(ts, rs, DDIR_SYNC, root): total_ios
    // and lat_ns), and had lat_ns.percentile, which fio writes only with lat_percentiles=1 (its
    // defaults: clat_percentiles=1, lat_percentiles=0, so the percentiles are under clat_ns).
    [Fact]
    public void The_report_has_fios_latency_line_sync_object_and_percentiles_under_clat_only()
    {
        var reads = new OpStats();
        Record(reads.Total, 20_000, count: 100);
        reads.Ios = reads.Total.Count;
        var result = new BenchResult(new BenchOptions { IoDepth = 16 }, reads, new OpStats(), TimeSpan.FromSeconds(1), TimeSpan.FromSeconds(1),
            Submitted: 100, Completed: 100, Errors: 0, Timeouts: 0, UsrCpu: 0, SysCpu: 0, DeviceDescription: "spec");

        var human = BenchReport.Human(result);
        Assert.Contains("     issued rwts: total=100,0,0,0 short=0,0,0,0 dropped=0,0,0,0\n     latency   : target=0, window=0, percentile=100.00%, depth=16\n", human);

        var job = JsonDocument.Parse(BenchReport.Json(result)).RootElement.GetProperty("jobs")[0];
        Assert.Equal(["read", "write", "trim", "sync", "job_runtime"], job.EnumerateObject().Select(p => p.Name).SkipWhile(n => n != "read").Take(5));
        var sync = job.GetProperty("sync");
        Assert.Equal(["total_ios", "lat_ns"], sync.EnumerateObject().Select(p => p.Name));
        Assert.Equal(0, sync.GetProperty("total_ios").GetInt64());
        Assert.Equal(["min", "max", "mean", "stddev", "N"], sync.GetProperty("lat_ns").EnumerateObject().Select(p => p.Name));

        var read = job.GetProperty("read");
        Assert.True(read.GetProperty("clat_ns").GetProperty("percentile").GetProperty("50.000000").GetInt64() > 0);
        Assert.False(read.GetProperty("lat_ns").TryGetProperty("percentile", out _));
        Assert.Equal(100, read.GetProperty("lat_ns").GetProperty("N").GetInt64());
        Assert.DoesNotContain("    lat percentiles", human, StringComparison.Ordinal);

        // --lat_percentiles (fio's lat_percentiles=1): lat_ns gets them too, and the report a lat
        // table after the clat one, as fio's show_ddir_status prints them.
        var both = result with { Options = new BenchOptions { IoDepth = 16, LatPercentiles = true } };
        var bothRead = JsonDocument.Parse(BenchReport.Json(both)).RootElement.GetProperty("jobs")[0].GetProperty("read");
        Assert.Equal(
            bothRead.GetProperty("clat_ns").GetProperty("percentile").GetProperty("99.000000").GetInt64(),
            bothRead.GetProperty("lat_ns").GetProperty("percentile").GetProperty("99.000000").GetInt64());
        var bothHuman = BenchReport.Human(both);
        Assert.True(bothHuman.IndexOf("    clat percentiles (", StringComparison.Ordinal) is var c and >= 0
                    && bothHuman.IndexOf("    lat percentiles (", StringComparison.Ordinal) > c);
    }

    [Fact]
    public void Each_latency_lands_in_fios_group_and_the_shares_are_of_every_io()
    {
        var reads = new OpStats();
        var writes = new OpStats();
        Record(reads.Total, 1);                 // ns "2": below 2 ns
        Record(reads.Total, 3);                 // ns "4"
        Record(reads.Total, 150, count: 2);     // ns "250"
        Record(writes.Total, 1_500, count: 4);  // us "2": 1 us to 2 us
        Record(writes.Total, 999_999);          // us "1000": just under 1 ms
        Record(reads.Total, 1_500_000);         // ms "2"
        Record(reads.Total, 1_500_000_000);     // ms "2000": 1 s to 2 s
        Record(reads.Total, 3_000_000_000);     // ms ">=2000"
        Record(reads.Total, 20_000, count: 9_988); // us "50": the body, so one I/O is 0.005%
        reads.Ios = reads.Total.Count;
        writes.Ios = writes.Total.Count;

        var result = new BenchResult(new BenchOptions { IoDepth = 16 }, reads, writes, TimeSpan.FromSeconds(1), TimeSpan.FromSeconds(1),
            Submitted: 10_000, Completed: 10_000, Errors: 0, Timeouts: 0, UsrCpu: 0, SysCpu: 0, DeviceDescription: "spec")
        {
            Usage = new ResourceUsage.Snapshot(ContextSwitches: 12, MajorFaults: 1, MinorFaults: 345),
            ReadSamples = [new RateSample(1000, 250), new RateSample(3000, 750)],
        };
        var job = JsonDocument.Parse(BenchReport.Json(result)).RootElement.GetProperty("jobs")[0];

        // fio's keys, in fio's order; a group with one I/O of 10,000 shows 0.01% (fio's floor).
        Assert.Equal(Groups(("2", 0.01), ("4", 0.01), ("10", 0), ("20", 0), ("50", 0), ("100", 0), ("250", 0.02), ("500", 0), ("750", 0), ("1000", 0)),
            Shares(job.GetProperty("latency_ns")));
        Assert.Equal(Groups(("2", 0.04), ("4", 0), ("10", 0), ("20", 0), ("50", 99.88), ("100", 0), ("250", 0), ("500", 0), ("750", 0), ("1000", 0.01)),
            Shares(job.GetProperty("latency_us")));
        Assert.Equal(Groups(("2", 0.01), ("4", 0), ("10", 0), ("20", 0), ("50", 0), ("100", 0), ("250", 0), ("500", 0), ("750", 0), ("1000", 0), ("2000", 0.01), (">=2000", 0.01)),
            Shares(job.GetProperty("latency_ms")));
        Assert.Equal(16, job.GetProperty("latency_depth").GetInt32());

        Assert.Equal(Groups(("1", 0), ("2", 0), ("4", 0), ("8", 0), ("16", 100), ("32", 0), (">=64", 0)), Shares(job.GetProperty("iodepth_level")));
        Assert.Equal(12, job.GetProperty("ctx").GetInt64());
        Assert.Equal(1, job.GetProperty("majf").GetInt64());
        Assert.Equal(345, job.GetProperty("minf").GetInt64());

        var human = BenchReport.Human(result);
        Assert.Contains("  lat (nsec)   : 2=0.01%, 4=0.01%, 250=0.02%\n", human);
        Assert.Contains("  lat (usec)   : 2=0.04%, 50=99.88%, 1000=0.01%\n", human);
        Assert.Contains("  lat (msec)   : 2=0.01%, 2000=0.01%, >=2000=0.01%\n", human);
        Assert.Contains("ctx=12, majf=1, minf=345", human);
        Assert.Contains("  IO depths    : 1=0.0%, 2=0.0%, 4=0.0%, 8=0.0%, 16=100.0%, 32=0.0%, >=64=0.0%\n", human);

        // fio's per-interval lines under the read's percentiles (sample standard deviation, n - 1).
        Assert.Contains("   bw (  KiB/s): min= 1000, max= 3000, per=100.00%, avg=2000.00, stdev=1414.21, samples=2\n", human);
        Assert.Contains("   iops        : min=  250, max=  750, avg=500.00, stdev=353.55, samples=2\n", human);
    }

    /// <summary>
    /// fio's <c>display_lat</c> and <c>show_clat_percentiles</c> switch from nsec to usec or msec
    /// by the spread of the values (stat.h <c>nsec_to_usec</c>/<c>nsec_to_msec</c>); the report
    /// printed nanoseconds always.
    /// </summary>
    [Theory]
    [InlineData(300L, 900L, "     lat (nsec): min=300, max=900, avg=600.00, stdev=301.51\n", "    clat percentiles (nsec):\n")]
    [InlineData(5_000L, 200_000L, "     lat (usec): min=5, max=200, avg=102.50, stdev=97.99\n", "    clat percentiles (usec):\n")]
    [InlineData(3_000_000L, 150_000_000L, "     lat (msec): min=3, max=150, avg=76.50, stdev=73.87\n", "    clat percentiles (msec):\n")]
    public void Latencies_are_printed_in_the_unit_fio_would_choose(long low, long high, string line, string header)
    {
        var reads = new OpStats();
        Record(reads.Total, low, count: 50);
        Record(reads.Total, high, count: 50);
        reads.Ios = reads.Total.Count;
        var result = new BenchResult(new BenchOptions(), reads, new OpStats(), TimeSpan.FromSeconds(1), TimeSpan.FromSeconds(1),
            Submitted: 100, Completed: 100, Errors: 0, Timeouts: 0, UsrCpu: 0, SysCpu: 0, DeviceDescription: "spec");

        var human = BenchReport.Human(result);
        Assert.Contains(line, human);
        Assert.Contains("    clat" + line[8..], human); // fio's clat line, the same figures (no slat)
        Assert.Contains(header, human);

        // Seventeen percentiles, four to a line at fio's width (the value column at least 5 wide).
        var percentiles = human[(human.IndexOf(header, StringComparison.Ordinal) + header.Length)..].Split('\n').TakeWhile(l => l.StartsWith("     |", StringComparison.Ordinal)).ToArray();
        Assert.Equal([4, 4, 4, 4, 1], percentiles.Select(l => l.Split("th=[").Length - 1));
        Assert.StartsWith("     |  1.00th=[", percentiles[0], StringComparison.Ordinal);
        Assert.EndsWith("]", percentiles[^1], StringComparison.Ordinal);
    }

    /// <summary>fio's <c>num2str(n, 6, 1, 0, N2S_NONE)</c>, which writes min and max in those lines.</summary>
    [Theory]
    [InlineData(0UL, "0")]
    [InlineData(999_999UL, "999999")]
    [InlineData(1_234_567UL, "1234.6k")]
    [InlineData(12_345_678UL, "12346k")]
    [InlineData(99_999_999UL, "100000k")]
    [InlineData(1_234_567_890UL, "1234.6M")]
    public void Min_and_max_are_written_as_fios_num2str_writes_them(ulong value, string text) => Assert.Equal(text, BenchReport.Num2Str(value));

    /// <summary>
    /// fio's <c>num2str</c> with its other arguments: the byte counts and rates of the report
    /// (maxlen 4, fio's significant_figures; binary and decimal prefixes) and the status line's
    /// KiB/s rate (base 1024).
    /// </summary>
    [Theory]
    [InlineData(13_841UL, 4, 1, false, "", "13.8k")]
    [InlineData(24_000UL, 4, 1, false, "", "24.0k")]
    [InlineData(2_906_123UL, 4, 1, false, "", "2906k")]
    [InlineData(999UL, 4, 1, false, "", "999")]
    [InlineData(680_321_024UL, 4, 1, true, "B", "649MiB")]
    [InlineData(680_321_024UL, 4, 1, false, "B", "680MB")]
    [InlineData(56_693_418UL, 4, 1, true, "B/s", "54.1MiB/s")]
    [InlineData(56_693_418UL, 4, 1, false, "B/s", "56.7MB/s")]
    [InlineData(512UL, 4, 1, true, "B", "512B")]
    [InlineData(3_690_000UL, 4, 1024, true, "B/s", "3604MiB/s")]
    [InlineData(400UL, 4, 1024, true, "B/s", "400KiB/s")]
    public void Sizes_and_rates_are_written_as_fios_num2str_writes_them(ulong value, int maxLength, int scale, bool pow2, string units, string text) =>
        Assert.Equal(text, BenchReport.Num2Str(value, maxLength, scale, pow2, units));

    // An outside audit: "IOPS=14k" for 13,841 IOPS (fio: 13.8k), sizes with one or two decimals
    // ("648.8MiB", fio: 649MiB), and the bw sample line in MiB/s from 10,000 KiB/s (fio switches
    // above 1024 * 1024 KiB/s), which wrote a 1212 KiB/s minimum as "1".
    [Fact]
    public void The_rate_lines_have_fios_figures()
    {
        var reads = new OpStats();
        Record(reads.Total, 20_000, count: 10);
        reads.Ios = 166_094;
        reads.Bytes = 166_094L * 4096;
        var result = new BenchResult(new BenchOptions(), reads, new OpStats(), TimeSpan.FromSeconds(12), TimeSpan.FromSeconds(12),
            Submitted: 166_094, Completed: 166_094, Errors: 0, Timeouts: 0, UsrCpu: 0, SysCpu: 0, DeviceDescription: "spec")
        {
            ReadSamples = [new RateSample(1212, 303), new RateSample(132_000, 33_000), new RateSample(60_000, 15_000)],
        };

        var human = BenchReport.Human(result);
        Assert.Contains("  read: IOPS=13.8k, BW=54.1MiB/s (56.7MB/s)(649MiB/12000msec)\n", human);
        Assert.Contains("   bw (  KiB/s): min= 1212, max=132000, per=100.00%, avg=64404.00, stdev=65505.13, samples=3\n", human);
        Assert.Contains("   iops        : min=  303, max=33000, avg=16101.00, stdev=16376.28, samples=3\n", human);
        Assert.Contains("   READ: bw=54.1MiB/s (56.7MB/s), 54.1MiB/s-54.1MiB/s (56.7MB/s-56.7MB/s), io=649MiB (680MB), run=12000-12000msec\n", human);
    }

    // fio 3.33's Run status lines carry min_bw-max_bw and min_run-max_run over the group's
    // thread stats (stat.c __show_run_stats, show_group_stats). With group_reporting, which the
    // bench always has (one "(groupid=0, jobs=N)" block), the jobs are summed into one thread
    // stat first (sum_thread_stats: io_bytes added, runtime the longest), so both ends are the
    // aggregate and the runtime. The figures are fio's own, from `fio --thread --group_reporting
    // --ioengine=psync --rw=randrw --bs=4k --name=t --size=16m --numjobs=2
    // --output-format=normal,json`: the group's io_bytes and runtime (JSON) and the lines it printed.
    [Fact]
    public void The_run_status_lines_have_the_groups_figures_at_both_ends_as_fios_with_group_reporting()
    {
        var reads = new OpStats { Ios = 16_343_040 / 4096, Bytes = 16_343_040 };
        var writes = new OpStats { Ios = 17_211_392 / 4096, Bytes = 17_211_392 };
        var result = new BenchResult(new BenchOptions { NumJobs = 2 }, reads, writes, TimeSpan.FromMicroseconds(102_600), TimeSpan.FromMilliseconds(205),
            Submitted: reads.Ios + writes.Ios, Completed: reads.Ios + writes.Ios, Errors: 0, Timeouts: 0, UsrCpu: 0, SysCpu: 0, DeviceDescription: "spec");

        var human = BenchReport.Human(result);
        Assert.Contains("   READ: bw=151MiB/s (159MB/s), 151MiB/s-151MiB/s (159MB/s-159MB/s), io=15.6MiB (16.3MB), run=103-103msec\n", human);
        Assert.Contains("  WRITE: bw=159MiB/s (167MB/s), 159MiB/s-159MiB/s (167MB/s-167MB/s), io=16.4MiB (17.2MB), run=103-103msec\n", human);
    }

    [Fact]
    public async Task A_bench_of_two_jobs_prints_the_groups_figures_at_both_ends_as_fio_with_group_reporting()
    {
        // Size-bound, so the jobs end at different times and move different bytes per ms: the
        // bench printed each job's bandwidth (about half the group's) and runtime as the ranges,
        // as fio does without group_reporting, under its group_reporting block.
        await using var bench = Support.ActorBlkProcess.Start("bench", "--device=null", "--rw=randwrite", "--bs=4k", "--size=8m", "--iodepth=4", "--numjobs=2");
        Assert.Equal(0, await bench.WaitForExitAsync(TimeSpan.FromSeconds(120)));
        Assert.Contains("(groupid=0, jobs=2)", bench.StandardOutput, StringComparison.Ordinal);
        var line = bench.StandardOutput.Split('\n').Single(l => l.StartsWith("  WRITE: bw=", StringComparison.Ordinal));
        var match = System.Text.RegularExpressions.Regex.Match(line,
            @"^  WRITE: bw=(?<bw>\S+) \((?<alt>\S+)\), (?<min>\S+)-(?<max>\S+) \((?<minalt>\S+)-(?<maxalt>\S+)\), io=16\.0MiB \(16\.8MB\), run=(?<minrun>\d+)-(?<maxrun>\d+)msec$");
        Assert.True(match.Success, line);
        Assert.True(match.Groups["min"].Value == match.Groups["bw"].Value && match.Groups["max"].Value == match.Groups["bw"].Value, line);
        Assert.True(match.Groups["minalt"].Value == match.Groups["alt"].Value && match.Groups["maxalt"].Value == match.Groups["alt"].Value, line);
        Assert.Equal(match.Groups["maxrun"].Value, match.Groups["minrun"].Value);
    }

    // fio's elapsed_sec rounds up: a 0.4 s run is 1 (an outside audit saw 0), 2.0 s is 2, 2.001 s is 3.
    [Theory]
    [InlineData(400, 1)]
    [InlineData(2000, 2)]
    [InlineData(2001, 3)]
    public void Elapsed_is_whole_seconds_rounded_up_as_fios(int milliseconds, long seconds)
    {
        var result = new BenchResult(new BenchOptions(), new OpStats(), new OpStats(), TimeSpan.FromMilliseconds(milliseconds), TimeSpan.FromMilliseconds(milliseconds),
            Submitted: 0, Completed: 0, Errors: 0, Timeouts: 0, UsrCpu: 0, SysCpu: 0, DeviceDescription: "spec");
        Assert.Equal(seconds, JsonDocument.Parse(BenchReport.Json(result)).RootElement.GetProperty("jobs")[0].GetProperty("elapsed").GetInt64());
    }

    [Theory]
    [InlineData(1, "1")]
    [InlineData(2, "2")]
    [InlineData(3, "2")]
    [InlineData(4, "4")]
    [InlineData(31, "16")]
    [InlineData(32, "32")]
    [InlineData(63, "32")]
    [InlineData(64, ">=64")]
    [InlineData(4096, ">=64")]
    public void A_queue_depth_falls_in_fios_iodepth_group(int depth, string group) => Assert.Equal(group, BenchReport.DepthGroup(depth));

    [Fact]
    public void The_process_counters_only_grow()
    {
        var before = ResourceUsage.Now();
        _ = new byte[64 << 20].AsSpan().ToArray(); // touches fresh pages: minor faults
        var after = ResourceUsage.Now();
        Assert.True(after.MinorFaults > before.MinorFaults, $"{before} -> {after}");
        Assert.True(after.ContextSwitches >= before.ContextSwitches);
    }

    private static void Record(LatencyRecorder recorder, long ns, int count = 1)
    {
        for (var i = 0; i < count; i++)
        {
            recorder.RecordTicks((long)(ns * (Stopwatch.Frequency / 1e9)));
        }
    }

    private static List<(string, double)> Groups(params (string Key, double Percent)[] groups) => [.. groups];

    private static List<(string, double)> Shares(JsonElement element) =>
        [.. element.EnumerateObject().Select(p => (p.Name, Math.Round(p.Value.GetDouble(), 2)))];
}
