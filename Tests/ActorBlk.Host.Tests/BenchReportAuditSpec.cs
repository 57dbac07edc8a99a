using System.Diagnostics;
using System.Text.Json;
using ActorBlk.Hardware.Queues;
using ActorBlk.Host.Bench;
using Xunit;

namespace ActorBlk.Host.Tests;

/// <summary>
/// What an outside audit of the report against README and fio 3.33 found, in process: the
/// dispatch named was the option's, not the devices'; <c>bw_agg</c> and the bw line's <c>per=</c>
/// were 100 always; the write line lacked fio's <c>; 0 zone resets</c>.
/// </summary>
public sealed class BenchReportAuditSpec
{
    private static BenchResult Result(BenchOptions options, params DispatchMode[] devices) =>
        new(options, new OpStats(), new OpStats(), TimeSpan.FromSeconds(1), TimeSpan.FromSeconds(1),
            Submitted: 0, Completed: 0, Errors: 0, Timeouts: 0, UsrCpu: 0, SysCpu: 0, DeviceDescription: "spec")
        {
            Devices = [.. devices.Select((d, i) => new DeviceFigures($"d{i}", 0, null, 0, [], d))],
        };

    [Theory]
    [InlineData(new[] { DispatchMode.Mailbox }, "mailbox")]
    [InlineData(new[] { DispatchMode.Mailbox, DispatchMode.Mailbox }, "mailbox")]
    [InlineData(new[] { DispatchMode.Bio }, "bio")]
    [InlineData(new[] { DispatchMode.Mailbox, DispatchMode.Ring, DispatchMode.Mailbox }, "mailbox+ring")]
    public void The_dispatch_reported_is_the_devices_each_mode_once_in_device_order(DispatchMode[] devices, string dispatch)
    {
        var result = Result(new BenchOptions { Dispatch = DispatchMode.Ring }, devices);

        Assert.Equal(dispatch, result.Dispatch);
        Assert.Contains($", dispatch={dispatch}, engine=", BenchReport.Human(result), StringComparison.Ordinal);
        var actorblk = JsonDocument.Parse(BenchReport.Json(result)).RootElement.GetProperty("actorblk");
        Assert.Equal(dispatch, actorblk.GetProperty("dispatch").GetString());
        Assert.Equal(devices.Select(d => d.ToString().ToLowerInvariant()), actorblk.GetProperty("devices").EnumerateArray().Select(d => d.GetProperty("dispatch").GetString()));

        // Several runs combined (--devices) keep each device's.
        var runs = devices.Select(d => Result(new BenchOptions(), d)).ToArray();
        Assert.Equal(dispatch, BenchResult.Combine(runs).Dispatch);
    }

    // fio 3.33 stat.c convert_agg_kbytes_percent: (int)mean * 100 / (agg / 1024), agg = bytes * 1000
    // / max_run (ms, integer division), at most 100; 100 when agg is 1024 or less. The first two
    // rows are fio 3.33's own figures (null engine: numjobs=2 with group_reporting, then --rate=200m).
    [Theory]
    [InlineData(67482095.666667, 141131165696L, 2000, 97.925451)]
    [InlineData(204887.333333, 419434496L, 2000, 100.0)]
    [InlineData(51200.9, 100L << 20, 1000, 50.0)]
    [InlineData(25600.0, 100L << 20, 999, 24.975)]
    [InlineData(500.0, 1024L, 1000, 100.0)]
    [InlineData(500.0, 0L, 1000, 100.0)]
    [InlineData(500.0, 1L << 20, 0, 100.0)]
    public void Bw_agg_is_the_mean_sample_over_the_groups_aggregate_bandwidth_as_fios(double meanKiB, long bytes, int runMs, double percent) =>
        Assert.Equal(percent, BenchReport.PercentOfAggregate(meanKiB, bytes, TimeSpan.FromMilliseconds(runMs)), 6);

    [Fact]
    public void The_report_writes_the_share_in_bw_agg_and_per()
    {
        var reads = new OpStats { Ios = 25_600, Bytes = 100L << 20 };
        var writes = new OpStats { Ios = 1, Bytes = 4096 };
        reads.Total.RecordTicks((long)(20_000 * (Stopwatch.Frequency / 1e9)));
        writes.Total.RecordTicks((long)(20_000 * (Stopwatch.Frequency / 1e9)));
        var result = new BenchResult(new BenchOptions(), reads, writes, TimeSpan.FromSeconds(1), TimeSpan.FromSeconds(1),
            Submitted: 25_601, Completed: 25_601, Errors: 0, Timeouts: 0, UsrCpu: 0, SysCpu: 0, DeviceDescription: "spec")
        {
            // A mean of 51,200 KiB/s against 102,400 KiB/s over the window: 50%.
            ReadSamples = [new RateSample(40_960, 10_240), new RateSample(61_440, 15_360)],
        };

        Assert.Contains("   bw (  KiB/s): min=40960, max=61440, per=50.00%, avg=51200.00, ", BenchReport.Human(result), StringComparison.Ordinal);
        var job = JsonDocument.Parse(BenchReport.Json(result)).RootElement.GetProperty("jobs")[0];
        Assert.Equal(50.0, job.GetProperty("read").GetProperty("bw_agg").GetDouble());
        // No samples of writes: fio writes 0, and no bw line.
        Assert.Equal(0.0, job.GetProperty("write").GetProperty("bw_agg").GetDouble());
    }

    // fio 3.33 stat.c show_ddir_status: post_st = zbd_write_status(ts) for DDIR_WRITE alone, on any
    // device ("; %llu zone resets"); the read line (and trim's) has none.
    [Fact]
    public void The_write_line_ends_with_fios_zone_resets_and_the_read_line_does_not()
    {
        var reads = new OpStats { Ios = 166_094, Bytes = 166_094L * 4096 };
        var writes = new OpStats { Ios = 166_094, Bytes = 166_094L * 4096 };
        reads.Total.RecordTicks((long)(20_000 * (Stopwatch.Frequency / 1e9)));
        writes.Total.RecordTicks((long)(20_000 * (Stopwatch.Frequency / 1e9)));
        var result = new BenchResult(new BenchOptions(), reads, writes, TimeSpan.FromSeconds(12), TimeSpan.FromSeconds(12),
            Submitted: 0, Completed: 0, Errors: 0, Timeouts: 0, UsrCpu: 0, SysCpu: 0, DeviceDescription: "spec");

        var human = BenchReport.Human(result);
        Assert.Contains("\n  read: IOPS=13.8k, BW=54.1MiB/s (56.7MB/s)(649MiB/12000msec)\n", human, StringComparison.Ordinal);
        Assert.Contains("\n  write: IOPS=13.8k, BW=54.1MiB/s (56.7MB/s)(649MiB/12000msec); 0 zone resets\n", human, StringComparison.Ordinal);
    }

    // fio 3.33 stat.c with kb_base=1000 (i2p false): show_ddir_status and show_group_stats print
    // decimal units first and binary ones in brackets, and the bw line's samples (KiB/s whatever
    // the base) under "kB/s", and past kb_base^2 divided by kb_base under "MiB/s" (fio's label for
    // either base). fio 3.33's null engine with --kb_base=1000: "BW=4194MB/s (4000MiB/s)(4194kB/1msec)".
    // The bench had no --kb_base and printed binary units first.
    [Fact]
    public void Kb_base_1000_prints_decimal_units_first_as_fio()
    {
        var reads = new OpStats { Ios = 166_094, Bytes = 166_094L * 4096 };
        reads.Total.RecordTicks((long)(20_000 * (Stopwatch.Frequency / 1e9)));
        BenchResult Result(int kbBase, double meanKiB) => new(new BenchOptions { KbBase = kbBase }, reads, new OpStats(), TimeSpan.FromSeconds(12), TimeSpan.FromSeconds(12),
            Submitted: 0, Completed: 0, Errors: 0, Timeouts: 0, UsrCpu: 0, SysCpu: 0, DeviceDescription: "spec")
        {
            ReadSamples = [new RateSample(meanKiB - 10_000, 1), new RateSample(meanKiB + 10_000, 1)],
        };

        var human = BenchReport.Human(Result(1000, 51_200));
        Assert.Contains("\n  read: IOPS=13.8k, BW=56.7MB/s (54.1MiB/s)(680MB/12000msec)\n", human, StringComparison.Ordinal);
        Assert.Contains("\n   bw (   kB/s): min=41200, max=61200, ", human, StringComparison.Ordinal);
        Assert.Contains("\n   READ: bw=56.7MB/s (54.1MiB/s), 56.7MB/s-56.7MB/s (54.1MiB/s-54.1MiB/s), io=680MB (649MiB), run=12000-12000msec\n", human, StringComparison.Ordinal);

        // A mean of 1,010,000 KiB/s passes 1000^2 but not 1024^2.
        Assert.Contains("\n   bw (  MiB/s): min= 1000, max= 1020, per=100.00%, avg=1010.00, ", BenchReport.Human(Result(1000, 1_010_000)), StringComparison.Ordinal);
        Assert.Contains("\n   bw (  KiB/s): min=1000000, max=1020000, per=100.00%, avg=1010000.00, ", BenchReport.Human(Result(1024, 1_010_000)), StringComparison.Ordinal);

        // The JSON and the terse line are in KiB whatever the base, as fio's.
        Assert.Equal(BenchReport.Terse(Result(1024, 51_200)), BenchReport.Terse(Result(1000, 51_200)));
    }
}
