using System.Globalization;
using System.Text.Json;
using ActorBlk.Host.Bench;
using ActorBlk.Host.Tests.Support;
using Xunit;

namespace ActorBlk.Host.Tests;

/// <summary>
/// Issue 12 item 4: <c>--write_lat_log</c>, <c>--write_iops_log</c>, <c>--log_avg_msec</c> and
/// <c>--log_offset</c> write fio's log format (HOWTO, "Log File Formats"): one line per entry,
/// <c>time (msec), value, data direction, block size, [offset, ]command priority</c>; files
/// PREFIX_lat.N.log, PREFIX_clat.N.log, PREFIX_slat.N.log and PREFIX_iops.N.log per job.
/// </summary>
public sealed class BenchLogSpec
{
    private static readonly TimeSpan Within = TimeSpan.FromSeconds(120);

    /// <summary>A log line's fields.</summary>
    private sealed record Line(long Time, long Value, int Direction, long BlockSize, long? Offset, int Priority);

    private static List<Line> Parse(string text, bool withOffset)
    {
        var lines = new List<Line>();
        foreach (var line in text.Split('\n', StringSplitOptions.RemoveEmptyEntries))
        {
            var f = line.Split(", ").Select(x => long.Parse(x, NumberStyles.None, CultureInfo.InvariantCulture)).ToArray();
            Assert.Equal(withOffset ? 6 : 5, f.Length);
            lines.Add(new Line(f[0], f[1], (int)f[2], f[3], withOffset ? f[4] : null, (int)f[^1]));
        }

        return lines;
    }

    [Fact]
    public void Every_io_is_a_line_in_time_order_with_its_latency_direction_size_and_offset()
    {
        var a = new IoLog(0);
        var b = new IoLog(0);
        a.Add(atNs: 2_500_000, latencyNs: 40_000, read: true, blockSize: 4096, offset: 8192);
        b.Add(atNs: 1_200_000, latencyNs: 35_000, read: false, blockSize: 4096, offset: 0);
        a.Add(atNs: 3_000_000, latencyNs: 50_000, read: false, blockSize: 4096, offset: 4096);

        var lat = new StringWriter();
        IoLog.Write(lat, IoLog.Merge([a, b], iops: false), withOffset: true);
        Assert.Equal("1, 35000, 1, 4096, 0, 0\n2, 40000, 0, 4096, 8192, 0\n3, 50000, 1, 4096, 4096, 0\n", lat.ToString().ReplaceLineEndings("\n"));

        var iops = new StringWriter();
        IoLog.Write(iops, IoLog.Merge([a, b], iops: true), withOffset: false);
        Assert.Equal([1L, 1, 1], Parse(iops.ToString(), withOffset: false).Select(l => l.Value));
    }

    [Fact]
    public void Windowed_logs_average_per_direction_with_size_and_offset_0()
    {
        var a = new IoLog(100);
        var b = new IoLog(100);

        // Window 1 (0-100 ms): reads of 10 and 30 us; a write of 100 us. Window 2: nothing. Window 3: a read of 20 us.
        a.Add(10_000_000, 10_000, read: true, 4096, 0);
        b.Add(50_000_000, 30_000, read: true, 4096, 0);
        b.Add(99_000_000, 100_000, read: false, 4096, 0);
        a.Add(250_000_000, 20_000, read: true, 4096, 0);

        var lat = Parse(Write(IoLog.Merge([a, b], iops: false)), withOffset: false);
        Assert.Equal([new Line(100, 20_000, 0, 0, null, 0), new Line(100, 100_000, 1, 0, null, 0), new Line(300, 20_000, 0, 0, null, 0)], lat);

        // IOPS: 2 reads in 100 ms = 20 IOPS; a window without completions logs 0 for each direction in use.
        var iops = Parse(Write(IoLog.Merge([a, b], iops: true)), withOffset: false);
        Assert.Equal(
            [new Line(100, 20, 0, 0, null, 0), new Line(100, 10, 1, 0, null, 0), new Line(200, 0, 0, 0, null, 0), new Line(200, 0, 1, 0, null, 0),
             new Line(300, 10, 0, 0, null, 0), new Line(300, 0, 1, 0, null, 0)],
            iops);

        static string Write(IEnumerable<IoLogEntry> entries)
        {
            var w = new StringWriter();
            IoLog.Write(w, entries, withOffset: false);
            return w.ToString();
        }
    }

    [Fact]
    public async Task A_size_bound_run_logs_each_io_of_each_job_once()
    {
        var dir = Directory.CreateTempSubdirectory("actorblk-log-");
        try
        {
            var prefix = Path.Combine(dir.FullName, "job");
            await using var bench = ActorBlkProcess.Start("bench", "--device=null", "--rw=randwrite", "--bs=4k", "--size=2m", "--iodepth=4", "--numjobs=2",
                $"--write_lat_log={prefix}", $"--write_iops_log={prefix}", "--log_offset=1", "--output-format=json");
            Assert.Equal(0, await bench.WaitForExitAsync(Within));

            foreach (var job in new[] { 1, 2 })
            {
                var lat = Parse(await File.ReadAllTextAsync($"{prefix}_lat.{job}.log"), withOffset: true);
                Assert.Equal(512, lat.Count);   // 2 MiB of 4 KiB writes
                Assert.All(lat, l =>
                {
                    Assert.Equal(1, l.Direction);
                    Assert.Equal(4096, l.BlockSize);
                    Assert.True(l.Value > 0);
                    Assert.Equal(0, l.Offset!.Value % 4096);
                    Assert.InRange(l.Offset.Value, 0, (2 << 20) - 4096);
                    Assert.Equal(0, l.Priority);
                });
                Assert.Equal(lat.Select(l => l.Time).Order(), lat.Select(l => l.Time));
                Assert.Equal(lat, Parse(await File.ReadAllTextAsync($"{prefix}_clat.{job}.log"), withOffset: true));
                Assert.Equal(string.Empty, await File.ReadAllTextAsync($"{prefix}_slat.{job}.log"));
                var iops = Parse(await File.ReadAllTextAsync($"{prefix}_iops.{job}.log"), withOffset: true);
                Assert.Equal(512, iops.Count);
                Assert.All(iops, l => Assert.Equal(1, l.Value));
            }

            Assert.False(File.Exists($"{prefix}_lat.3.log"));
        }
        finally
        {
            dir.Delete(recursive: true);
        }
    }

    [Fact]
    public async Task A_windowed_iops_log_adds_up_to_the_ios_of_the_report()
    {
        var dir = Directory.CreateTempSubdirectory("actorblk-log-");
        try
        {
            var prefix = Path.Combine(dir.FullName, "w");
            var plot = Path.Combine(dir.FullName, "run.png");
            await using var bench = ActorBlkProcess.Start("bench", "--device=null", "--rw=randread", "--bs=4k", "--iodepth=4", "--runtime=2", "--jit_warmup=0",
                $"--write_iops_log={prefix}", "--log_avg_msec=250", $"--plot={plot}", "--output-format=json");
            Assert.Equal(0, await bench.WaitForExitAsync(Within));
            var totalIos = JsonDocument.Parse(bench.StandardOutput).RootElement.GetProperty("jobs")[0].GetProperty("read").GetProperty("total_ios").GetInt64();

            var iops = Parse(await File.ReadAllTextAsync($"{prefix}_iops.1.log"), withOffset: false);
            Assert.NotEmpty(iops);
            Assert.All(iops, l =>
            {
                Assert.Equal(0, l.Time % 250);
                Assert.InRange(l.Time, 250, 2250);
                Assert.Equal(0, l.Direction);
                Assert.Equal(0, l.BlockSize);
            });

            // Each window's IOPS is its count * 4 (rounded): the sum over windows is the run's I/Os.
            Assert.Equal(totalIos, iops.Sum(l => l.Value / 4.0), tolerance: iops.Count);
            BenchPlotSpec.AssertPng(plot);
        }
        finally
        {
            dir.Delete(recursive: true);
        }
    }
}
