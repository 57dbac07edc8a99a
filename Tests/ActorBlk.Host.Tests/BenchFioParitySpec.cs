using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using ActorBlk.Hardware.Requests;
using ActorBlk.Host.Bench;
using Xunit;

namespace ActorBlk.Host.Tests;

/// <summary>
/// Where the report's figures differed from fio 3.33's, found by comparing the two: the
/// percentiles were HdrHistogram's, not fio's (stat.c <c>calc_clat_percentiles</c> over its
/// buckets); an idle direction's JSON <c>runtime</c> was the whole window (fio: 0); the latency
/// groups' shares were of the I/Os that succeeded (fio: of every I/O issued); IOPS was of the
/// I/Os that succeeded over fractional seconds (fio: of every I/O issued over whole ms); a
/// direction's runtime was truncated to the millisecond (fio rounds it up). The expected values
/// are worked out by hand from fio's code.
/// </summary>
public sealed class BenchFioParitySpec
{
    private static readonly TimeSpan Second = TimeSpan.FromSeconds(1);

    /// <summary>
    /// fio 3.33 takes a percentile where the running count of its buckets reaches
    /// <c>(long double) p / 100.0 * nr</c>, compiled with <c>-ffast-math</c> (its Makefile): gcc
    /// makes it <c>nr * 0.01L * p</c> in x87 extended precision, 0.01L being
    /// <c>0xA3D70A3D70A3D70A * 2^-70</c> = 0.01 - 0.24 * 2^-70.
    /// </summary>
    [Theory]
    // 100 * 0.01L = 1 - 24 * 2^-70, under half a step (2^-65 = 32 * 2^-70) below 1: rounds to 1;
    // times 60 is 60 exactly, so the 60th. fio 3.33's own run (null engine, 100 reads) took the
    // 60th where the 60th and 61st differed; exact division in extended precision would give
    // 60.0000000000000000035 and the 61st.
    [InlineData(60.0, 100L, 60L)]
    [InlineData(30.0, 100L, 30L)]
    // 2000 * 0.01L = 20 - 480 * 2^-70, under half a step (2^-60) below 20: 20; 20 * 99.95 (the
    // double 99.9500000000000028...) = 1999.0000000000000568..., above 1999 by far more than a
    // step (2^-53): the 2,000th. In double arithmetic 99.95 / 100 * 2000 is 1999 exactly, the
    // 1,999th; fio 3.33's own runs of 2,000 reads gave the 2,000th (the maximum) five times in five.
    [InlineData(99.95, 2000L, 2000L)]
    [InlineData(99.9, 2000L, 1999L)]      // 20 * 99.9000000000000056... = 1998.00000000000011..., exact in 64 bits: the 1,999th
    [InlineData(50.0, 4L, 2L)]            // 4 * 0.01L * 50 = 2 - 48 * 2^-70, within half a step (2^-64) of 2: 2
    [InlineData(99.99, 4L, 4L)]
    [InlineData(1.0, 1L, 1L)]
    [InlineData(50.0, 0L, 0L)]            // no samples: bucket 0 (value 0) reaches it
    public void A_percentile_is_taken_at_fios_rank(double percentile, long samples, long rank) =>
        Assert.Equal(rank, LatencyRecorder.FioPercentileRank(percentile, samples));

    /// <summary>
    /// The JSON's <c>clat_ns.percentile</c> (and <c>lat_ns</c>'s with <c>--lat_percentiles</c>),
    /// the normal report's percentile tables and the terse line's are fio's: 1,999 reads of 20 us
    /// and one of 1 ms. fio's buckets: 20000 has msb 14, error_bits 8, k = (20000 &gt;&gt; 8) &amp; 63
    /// = 14, value 2^14 + 14.5 * 2^8 = 20096; 1000000 has msb 19, error_bits 13, k = 122 &amp; 63 =
    /// 58, value 2^19 + 58.5 * 2^13 = 1003520. The ranks of 2,000 (above): 99.9% the 1,999th,
    /// 99.95% and 99.99% the 2,000th. HdrHistogram's values were 20,000's and 1,000,000's own.
    /// </summary>
    [Fact]
    public void Percentiles_are_fios_bucket_values_in_every_format()
    {
        var reads = new OpStats();
        Record(reads.Total, 20_000, count: 1999);
        Record(reads.Total, 1_000_000);
        reads.Ios = 2000;
        reads.Bytes = 2000 * 4096L;
        var result = Result(new BenchOptions { LatPercentiles = true }, reads, new OpStats());

        var read = Job(result).GetProperty("read");
        var expected = BenchReport.Percentiles.Select(p => (Key(p), p < 99.95 ? 20_096L : 1_003_520L)).ToList();
        Assert.Equal(expected, Percentiles(read.GetProperty("clat_ns")));
        Assert.Equal(expected, Percentiles(read.GetProperty("lat_ns")));
        // min, max and mean stay exact, as fio's.
        Assert.Equal(20_000, read.GetProperty("clat_ns").GetProperty("min").GetInt64());
        Assert.Equal(1_000_000, read.GetProperty("clat_ns").GetProperty("max").GetInt64());
        Assert.Equal(20_490.0, read.GetProperty("clat_ns").GetProperty("mean").GetDouble(), 6);

        // fio's show_clat_percentiles: usec (min 20096 over 2000, max over 99999), each value
        // rounded up ((20096 + 999) / 1000 = 21, 1004), width max(5, log10(1003) + 1).
        const string table =
            "     |  1.00th=[   21],  5.00th=[   21], 10.00th=[   21], 20.00th=[   21],\n" +
            "     | 30.00th=[   21], 40.00th=[   21], 50.00th=[   21], 60.00th=[   21],\n" +
            "     | 70.00th=[   21], 80.00th=[   21], 90.00th=[   21], 95.00th=[   21],\n" +
            "     | 99.00th=[   21], 99.50th=[   21], 99.90th=[   21], 99.95th=[ 1004],\n" +
            "     | 99.99th=[ 1004]\n";
        var human = BenchReport.Human(result);
        Assert.Contains("    clat percentiles (usec):\n" + table, human, StringComparison.Ordinal);
        Assert.Contains("    lat percentiles (usec):\n" + table, human, StringComparison.Ordinal);

        // The terse line's 20 slots (fields 18 to 37): fio's values / 1000, then 0%=0.
        var terse = BenchReport.Terse(result).Split(';');
        Assert.Equal(
            [.. BenchReport.Percentiles.Select(p => $"{Key(p)}%={(p < 99.95 ? 20 : 1003)}"), "0%=0", "0%=0", "0%=0"],
            terse[17..37]);
    }

    /// <summary>
    /// fio's runtime of a direction is 0 when it moved no bytes (backend.c adds the job's time to
    /// <c>ts.runtime[ddir]</c> only under <c>td-&gt;io_bytes[ddir]</c>): a randread's write
    /// direction, and one whose every I/O failed, have runtime 0 in the JSON (it was the whole
    /// window), as in the terse line, and no lines in the normal report.
    /// </summary>
    [Fact]
    public void A_direction_that_moved_no_bytes_has_runtime_0()
    {
        var reads = new OpStats { Ios = 100, Bytes = 100 * 4096L };
        Record(reads.Total, 20_000, count: 100);
        var idle = Result(new BenchOptions(), reads, new OpStats());
        var failed = Result(new BenchOptions(), reads, new OpStats { Failed = 2 });

        foreach (var result in new[] { idle, failed })
        {
            var job = Job(result);
            Assert.Equal(1000, job.GetProperty("read").GetProperty("runtime").GetInt64());
            var write = job.GetProperty("write");
            Assert.Equal(0, write.GetProperty("runtime").GetInt64());
            Assert.Equal(0, write.GetProperty("bw_bytes").GetInt64());
            Assert.Equal(0.0, write.GetProperty("iops").GetDouble());
            Assert.Equal(result.Write.Failed, write.GetProperty("total_ios").GetInt64());
            Assert.Equal(0, job.GetProperty("trim").GetProperty("runtime").GetInt64());
            Assert.Equal(1000, job.GetProperty("job_runtime").GetInt64());   // the job's, not a direction's

            // The terse line's runtimes: read's field 9, write's field 50 (9 + 41 per direction).
            var terse = BenchReport.Terse(result).Split(';');
            Assert.Equal(("1000", "0"), (terse[8], terse[49]));
            var human = BenchReport.Human(result);
            Assert.DoesNotContain("  write:", human, StringComparison.Ordinal);
            Assert.DoesNotContain("  WRITE:", human, StringComparison.Ordinal);
        }
    }

    /// <summary>
    /// fio's latency groups are shares of every I/O issued (stat.c <c>stat_calc_lat</c> divides by
    /// <c>ddir_rw_sum(total_io_u)</c>, counted in ioengines.c <c>td_io_queue</c>), while only an
    /// I/O without an error is placed in a group (io_u.c <c>io_u_mark_latency</c>, from
    /// <c>account_io_completion</c>). Three reads of 1.5 us, one of 500 ns and a failed write:
    /// 3 / 5 = 60% in us "2", 1 / 5 = 20% in ns "750", and the terse line's first us field 60% +
    /// 20% = 80%. They were shares of the 4 that succeeded: 75%, 25% and 100%.
    /// </summary>
    [Fact]
    public void Latency_group_shares_are_of_every_io_failed_ones_too()
    {
        var reads = new OpStats { Ios = 4, Bytes = 4 * 4096L };
        Record(reads.Total, 1_500, count: 3);
        Record(reads.Total, 500);
        var result = Result(new BenchOptions(), reads, new OpStats { Failed = 1 });

        var job = Job(result);
        Assert.Equal(60.0, job.GetProperty("latency_us").GetProperty("2").GetDouble());
        Assert.Equal(20.0, job.GetProperty("latency_ns").GetProperty("750").GetDouble());

        var human = BenchReport.Human(result);
        Assert.Contains("  lat (nsec)   : 750=20.00%\n", human, StringComparison.Ordinal);
        Assert.Contains("  lat (usec)   : 2=60.00%\n", human, StringComparison.Ordinal);

        // The terse line: 5 header fields, 41 per direction, 5 of CPU, 7 depths, then the 10 us groups.
        var terse = BenchReport.Terse(result).TrimEnd('\n').Split(';');
        Assert.Equal(["80.00%", "0.00%"], terse[99..101]);
    }

    /// <summary>
    /// fio's IOPS is of every I/O issued, failed ones too (<c>total_io_u</c>, counted in
    /// ioengines.c <c>td_io_queue</c>), its bandwidth of the bytes of those that succeeded, both
    /// over the direction's runtime in whole ms, rounded up (backend.c <c>update_runtime</c>):
    /// JSON <c>iops = (1000.0 * total_io_u) / runt</c>, <c>bw_bytes = (1000 * io_bytes) / runt</c>,
    /// <c>bw = bw_bytes / 1024</c>; the terse and normal reports' integer
    /// <c>(1000 * total_io_u) / runt</c>. 1,000 reads of 4 KiB and 10 failed in 2,000.4 ms:
    /// runtime 2,001 ms, iops 1,010,000 / 2,001 = 504.747626..., bw_bytes 4,096,000,000 / 2,001 =
    /// 2,046,976, bw 1,999 KiB/s (2,046,976 = 1,999 * 1,024), IOPS 504. The bench gave 1,000 /
    /// 2.0004 s = 499.900020 IOPS, 2,047,590 bytes/s and runtime 2,000.
    /// </summary>
    [Fact]
    public void Iops_and_bandwidth_are_fios_of_every_io_over_the_whole_ms_runtime()
    {
        var reads = new OpStats { Ios = 1000, Bytes = 1000 * 4096L, Failed = 10 };
        Record(reads.Total, 20_000, count: 1000);
        var result = Result(new BenchOptions(), reads, new OpStats(), TimeSpan.FromTicks(20_004_000));

        var json = BenchReport.Json(result);
        Assert.Contains("\"iops\": 504.747626,", json, StringComparison.Ordinal);
        var read = JsonDocument.Parse(json).RootElement.GetProperty("jobs")[0].GetProperty("read");
        Assert.Equal(2001, read.GetProperty("runtime").GetInt64());
        Assert.Equal(2_046_976, read.GetProperty("bw_bytes").GetInt64());
        Assert.Equal(1999, read.GetProperty("bw").GetInt64());
        Assert.Equal(1010, read.GetProperty("total_ios").GetInt64());

        // The terse line's read: KiB, bandwidth in KiB/s, IOPS, runtime (fields 6 to 9).
        var terse = BenchReport.Terse(result).Split(';');
        Assert.Equal(["4000", "1999", "504", "2001"], terse[5..9]);

        // num2str of 2,046,976 bytes/s: 1999KiB/s and 2046.976 kB/s rounded to 2047kB/s.
        var human = BenchReport.Human(result);
        Assert.Contains("  read: IOPS=504, BW=1999KiB/s (2047kB/s)(4000KiB/2001msec)\n", human, StringComparison.Ordinal);
        Assert.Contains("   READ: bw=1999KiB/s (2047kB/s), 1999KiB/s-1999KiB/s (2047kB/s-2047kB/s), io=4000KiB (4096kB), run=2001-2001msec\n", human, StringComparison.Ordinal);
    }

    /// <summary>
    /// fio's runtime of a direction is the elapsed time in whole microseconds (<c>utime_since</c>,
    /// truncated) rounded up to whole ms (backend.c <c>update_runtime</c>:
    /// <c>(elapsed_us + 999) / 1000</c>): 2,000.0009 ms is 2,000,000 us, 2,000 ms; 2,000.001 ms is
    /// 2,001; 0.3 ms is 1. The bench truncated the milliseconds: 2,000, 2,000 and 0.
    /// </summary>
    [Theory]
    [InlineData(20_000_009L, 2000L)]
    [InlineData(20_000_010L, 2001L)]
    [InlineData(20_000_000L, 2000L)]
    [InlineData(10_000L, 1L)]
    [InlineData(3_000L, 1L)]
    [InlineData(9L, 0L)]          // under 1 us: 0 us, 0 ms
    [InlineData(0L, 0L)]
    public void A_directions_runtime_is_rounded_up_to_the_millisecond(long ticks, long ms) =>
        Assert.Equal(ms, BenchReport.RuntimeMs(new OpStats { Ios = 1, Bytes = 4096 }, TimeSpan.FromTicks(ticks)));

    /// <summary>
    /// A run under 1 ms that moved bytes: 2 reads of 4 KiB in 0.3 ms. fio's runtime is 1 ms, so
    /// iops 2,000, bw_bytes 8,192,000, bw 8,000 KiB/s, the terse line's 8 KiB, 8,000, 2,000, 1, and
    /// the normal report's <c>IOPS=2000, BW=8000KiB/s (8192kB/s)(8192B/1msec)</c>. The bench gave
    /// runtime 0: the terse line 0 KiB/s and 0 IOPS, the JSON 27,306,666 bytes/s and 6,666.67
    /// IOPS over 0.3 ms, the normal report <c>/0msec</c>.
    /// </summary>
    [Fact]
    public void A_run_under_a_millisecond_has_runtime_1()
    {
        var reads = new OpStats { Ios = 2, Bytes = 2 * 4096L };
        Record(reads.Total, 100_000, count: 2);
        var result = Result(new BenchOptions(), reads, new OpStats(), TimeSpan.FromTicks(3_000));

        var read = Job(result).GetProperty("read");
        Assert.Equal(1, read.GetProperty("runtime").GetInt64());
        Assert.Equal(2000.0, read.GetProperty("iops").GetDouble());
        Assert.Equal(8_192_000, read.GetProperty("bw_bytes").GetInt64());
        Assert.Equal(8000, read.GetProperty("bw").GetInt64());

        var terse = BenchReport.Terse(result).Split(';');
        Assert.Equal(["8", "8000", "2000", "1"], terse[5..9]);

        var human = BenchReport.Human(result);
        Assert.Contains("  read: IOPS=2000, BW=8000KiB/s (8192kB/s)(8192B/1msec)\n", human, StringComparison.Ordinal);
        Assert.Contains("   READ: bw=8000KiB/s (8192kB/s), 8000KiB/s-8000KiB/s (8192kB/s-8192kB/s), io=8192B (8192B), run=1-1msec\n", human, StringComparison.Ordinal);
    }

    private static BenchResult Result(BenchOptions options, OpStats reads, OpStats writes) => Result(options, reads, writes, Second);

    private static BenchResult Result(BenchOptions options, OpStats reads, OpStats writes, TimeSpan measured) =>
        new(options, reads, writes, measured, Second,
            Submitted: reads.TotalIos + writes.TotalIos, Completed: reads.TotalIos + writes.TotalIos, Errors: reads.Failed + writes.Failed,
            Timeouts: 0, UsrCpu: 0, SysCpu: 0, DeviceDescription: "spec")
        {
            FirstError = reads.Failed + writes.Failed > 0 ? BlockStatus.IoError : BlockStatus.Ok,
        };

    private static JsonElement Job(BenchResult result) => JsonDocument.Parse(BenchReport.Json(result)).RootElement.GetProperty("jobs")[0];

    private static string Key(double percentile) => percentile.ToString("0.000000", CultureInfo.InvariantCulture);

    private static List<(string, long)> Percentiles(JsonElement latency) =>
        [.. latency.GetProperty("percentile").EnumerateObject().Select(e => (e.Name, e.Value.GetInt64()))];

    private static void Record(LatencyRecorder recorder, long ns, int count = 1)
    {
        for (var i = 0; i < count; i++)
        {
            recorder.RecordTicks((long)(ns * (Stopwatch.Frequency / 1e9)));
        }
    }
}
