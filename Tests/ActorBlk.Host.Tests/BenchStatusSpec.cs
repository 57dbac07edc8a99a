using System.Diagnostics;
using System.Text;
using System.Text.Json;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Requests;
using ActorBlk.Hardware.Topology;
using ActorBlk.Host.Bench;
using ActorBlk.Host.Tests.Support;
using ActorBlk.Testing;
using Xunit;

namespace ActorBlk.Host.Tests;

/// <summary>
/// Issue 12 item 4: bench's status line in fio's form and <c>--status-interval</c>'s periodic full
/// reports, on a clock the spec moves (no wall time).
/// </summary>
public sealed class BenchStatusSpec
{
    private const int BlockSize = 4096;

    // The rates as fio's eta.c writes them: num2str(KiB/s, 4, 1024, pow2) and num2str(iops, 4)
    // (an outside audit: r=3.52GiB/s where fio writes r=3604MiB/s).
    [Fact]
    public void The_status_line_has_fios_form()
    {
        Assert.Equal("Jobs: 4 (f=1): [r(4)][45.0%][r=1543MiB/s][r=395k IOPS][eta 00m:06s]",
            BenchStatusLine.Format(4, 1, 'r', 45.0, showRead: true, showWrite: false, 395_000, 0, BlockSize, TimeSpan.FromSeconds(6)));
        Assert.Equal("Jobs: 2 (f=2): [m(2)][99.9%][r=400KiB/s,w=4096KiB/s][r=100,w=1024 IOPS][eta 01h:01m:01s]",
            BenchStatusLine.Format(2, 2, 'm', 99.94, showRead: true, showWrite: true, 100, 1024, BlockSize, TimeSpan.FromSeconds(3661)));
        Assert.Equal("1d:00h:00m:00s", BenchStatusLine.Eta(TimeSpan.FromDays(1)));
    }

    [Fact]
    public void A_time_based_line_shows_the_rate_since_the_last_line_progress_and_eta()
    {
        var clock = new ManualBenchClock();
        long reads = 0;
        var line = new BenchStatusLine(new BenchOptions { Pattern = IoPattern.Read, Runtime = TimeSpan.FromSeconds(8), RampTime = TimeSpan.FromSeconds(2), NumJobs = 2 }, clock, () => (reads, 0, 0));

        clock.Advance(TimeSpan.FromSeconds(5));
        reads = 5000;
        Assert.Equal("Jobs: 2 (f=1): [R(2)][50.0%][r=4000KiB/s][r=1000 IOPS][eta 00m:05s]", line.Next());

        clock.Advance(TimeSpan.FromSeconds(1));
        reads = 29_000;
        Assert.Equal("Jobs: 2 (f=1): [R(2)][60.0%][r=93.8MiB/s][r=24.0k IOPS][eta 00m:04s]", line.Next());
    }

    // An outside audit (finding 5): with a 2,083 ms JIT warm-up and --runtime=4 the line counted
    // from its creation, so it showed 25% before the window opened, 99.9% at 73% of it, and 100%
    // with eta 0 a second early. Progress and eta follow --ramp_time + --runtime from the ramp's start.
    [Fact]
    public void A_time_based_line_counts_from_the_ramp_not_through_the_jit_warmup()
    {
        var clock = new ManualBenchClock();
        long reads = 0;
        long? rampStart = null;
        var line = new BenchStatusLine(new BenchOptions { Pattern = IoPattern.RandRead, Runtime = TimeSpan.FromSeconds(4), RampTime = TimeSpan.FromSeconds(1) }, clock, () => (reads, 0, 0), () => rampStart);

        // The jobs start and the JIT warms up: nothing of the window has passed.
        clock.Advance(TimeSpan.FromMilliseconds(1000));
        Assert.Equal("Jobs: 1 (f=1): [r(1)][0.0%][r=0KiB/s][r=0 IOPS][eta 00m:05s]", line.Next());
        clock.Advance(TimeSpan.FromMilliseconds(1083));
        reads = 1083;
        Assert.Equal("Jobs: 1 (f=1): [r(1)][0.0%][r=4000KiB/s][r=1000 IOPS][eta 00m:05s]", line.Next());

        // The ramp begins; the line follows its 1 s and the 4 s window.
        rampStart = clock.Timestamp;
        clock.Advance(TimeSpan.FromSeconds(1));
        Assert.Equal("Jobs: 1 (f=1): [r(1)][20.0%][r=0KiB/s][r=0 IOPS][eta 00m:04s]", line.Next());
        clock.Advance(TimeSpan.FromSeconds(3));
        Assert.Equal("Jobs: 1 (f=1): [r(1)][80.0%][r=0KiB/s][r=0 IOPS][eta 00m:01s]", line.Next());
        clock.Advance(TimeSpan.FromSeconds(1));
        Assert.Equal("Jobs: 1 (f=1): [r(1)][100.0%][r=0KiB/s][r=0 IOPS][eta 00m:00s]", line.Next());
    }

    [Fact]
    public void A_size_bound_line_takes_progress_and_eta_from_the_bytes_issued()
    {
        var clock = new ManualBenchClock();
        long writes = 0;
        var issued = 0.0;
        var line = new BenchStatusLine(new BenchOptions { Pattern = IoPattern.RandWrite }, clock, () => (0, writes, issued));

        clock.Advance(TimeSpan.FromSeconds(3));
        writes = 300;
        issued = 0.25;
        Assert.Equal("Jobs: 1 (f=1): [w(1)][25.0%][w=400KiB/s][w=100 IOPS][eta 00m:09s]", line.Next());
    }

    [Fact]
    public void Status_interval_writes_a_full_report_each_interval_with_the_figures_so_far()
    {
        var clock = new ManualBenchClock();
        using var accounting = new BenchAccounting(clock, BlockSize);
        accounting.OpenWindow(TimeSpan.FromSeconds(10));
        var output = new StringWriter();
        var reports = new BenchStatusReports(TimeSpan.FromSeconds(1), clock,
            () =>
            {
                var (read, write, measured) = accounting.Snapshot();
                return new BenchResult(new BenchOptions(), read, write, measured, measured, read.TotalIos, read.TotalIos, 0, 0, 0, 0, "spec");
            },
            output, OutputFormat.Json);

        // 100 reads of 1 ms each in the first second, 300 in the next two.
        Complete(clock, accounting, 100);
        clock.Advance(TimeSpan.FromMilliseconds(899));
        Assert.False(reports.Poll());
        Assert.Equal(TimeSpan.FromMilliseconds(1), reports.DueIn);
        clock.Advance(TimeSpan.FromMilliseconds(1));
        Assert.True(reports.Poll());
        Assert.False(reports.Poll());

        Complete(clock, accounting, 300);
        clock.Advance(TimeSpan.FromMilliseconds(1700));
        Assert.True(reports.Poll());   // at 3 s: the report due at 2 s, late; the one due at 3 s is the same report
        Assert.False(reports.Poll());
        Assert.Equal(2, reports.Written);

        var documents = JsonDocuments(output.ToString());
        Assert.Equal(2, documents.Count);
        var first = documents[0].GetProperty("jobs")[0].GetProperty("read");
        var second = documents[1].GetProperty("jobs")[0].GetProperty("read");
        Assert.Equal(100, first.GetProperty("total_ios").GetInt64());
        Assert.Equal(1000, first.GetProperty("runtime").GetInt64());
        Assert.Equal(100, first.GetProperty("iops").GetDouble(), tolerance: 0.01);
        Assert.Equal(400, second.GetProperty("total_ios").GetInt64());
        Assert.Equal(3000, second.GetProperty("runtime").GetInt64());
        Assert.Equal(133.33, second.GetProperty("iops").GetDouble(), tolerance: 0.01);   // cumulative from the start, as fio's
    }

    [Fact]
    public void Status_interval_in_normal_output_repeats_the_human_report()
    {
        var clock = new ManualBenchClock();
        using var accounting = new BenchAccounting(clock, BlockSize);
        accounting.OpenWindow(null);
        var output = new StringWriter();
        var reports = new BenchStatusReports(TimeSpan.FromMilliseconds(500), clock,
            () =>
            {
                var (read, write, measured) = accounting.Snapshot();
                return new BenchResult(new BenchOptions { Name = "periodic" }, read, write, measured, measured, read.TotalIos, read.TotalIos, 0, 0, 0, 0, "spec");
            },
            output, OutputFormat.Normal);

        for (var i = 0; i < 4; i++)
        {
            Complete(clock, accounting, 10);
            clock.Advance(TimeSpan.FromMilliseconds(490));
            Assert.True(reports.Poll());
        }

        var text = output.ToString();
        Assert.Equal(4, text.Split("periodic: (groupid=0, jobs=1)").Length - 1);
        Assert.Contains("submitted=40, completed=40", text, StringComparison.Ordinal);
    }

    private static void Complete(ManualBenchClock clock, BenchAccounting accounting, int count)
    {
        for (var i = 0; i < count; i++)
        {
            var t0 = clock.Timestamp;
            clock.Advance(TimeSpan.FromMilliseconds(1));
            Assert.True(accounting.Record(read: true, BlockStatus.Ok, t0));
        }
    }

    /// <summary>
    /// An interim report carries the CPU figures, the bandwidth and IOPS samples so far and the
    /// engines, as the final one does and as fio's interim reports do: they had usr_cpu 0, ctx 0,
    /// no samples and engine "none" (an outside audit of the operator's tools).
    /// </summary>
    [Fact]
    public async Task Interim_reports_carry_cpu_samples_and_engines()
    {
        await using var bench = ActorBlkProcess.Start("bench", "--device=null", "--rw=randread", "--bs=4k", "--iodepth=2", "--runtime=3",
            "--jit_warmup=0", "--output-format=json", "--status-interval=1", "--eta=never");
        Assert.Equal(0, await bench.WaitForExitAsync(TimeSpan.FromSeconds(120)));
        var documents = JsonDocuments(bench.StandardOutput);
        Assert.True(documents.Count >= 2, $"{documents.Count} reports");
        foreach (var report in documents)
        {
            var job = report.GetProperty("jobs")[0];
            Assert.True(job.GetProperty("usr_cpu").GetDouble() + job.GetProperty("sys_cpu").GetDouble() > 0, "no CPU time");
            Assert.True(job.GetProperty("ctx").GetInt64() > 0, "no context switch");
            Assert.Equal("null", report.GetProperty("actorblk").GetProperty("engine").GetString());
        }

        // The 500 ms sampler has run by a later interim report (the first, at one second, may come
        // before a late first sample on a loaded machine).
        Assert.Contains(documents.SkipLast(1), d => d.GetProperty("jobs")[0].GetProperty("read").GetProperty("iops_samples").GetInt32() >= 1);
    }

    /// <summary>
    /// A report taken after a run's window closed (the run ended before the interval, or its
    /// device finished while another's run goes on) has the CPU figures of the window, as its
    /// measured time and counts: they were measured on to the report (a review).
    /// </summary>
    [Fact]
    public async Task A_report_after_the_window_closed_has_the_windows_cpu_figures()
    {
        await using var devices = new RingDevices(2);
        var device = devices.Create(new DeviceOptions { Name = "short0", Size = 8 << 20, MemoryBacked = true }, CpuTopology.Simulated(2));
        var run = new BenchRun(new BenchOptions { Pattern = IoPattern.RandWrite, IoDepth = 4, Size = 8 << 20 }, device, CpuSet.Of(0, 1));
        var result = await run.RunAsync().WaitAsync(TimeSpan.FromSeconds(60));

        // The process uses CPU after the window (awaited, not slept: until its CPU time moves on).
        using var process = Process.GetCurrentProcess();
        var cpu = process.TotalProcessorTime;
        while (process.TotalProcessorTime == cpu)
        {
            process.Refresh();
        }

        var report = run.Snapshot();
        Assert.Equal(result.Measured, report.Measured);
        Assert.Equal((result.UsrCpu, result.SysCpu, result.Usage), (report.UsrCpu, report.SysCpu, report.Usage));
    }

    // fio's JSON with --status-interval: a sequence of complete documents.
    internal static List<JsonElement> JsonDocuments(string text)
    {
        var documents = new List<JsonElement>();
        var reader = new Utf8JsonReader(Encoding.UTF8.GetBytes(text), new JsonReaderOptions { AllowMultipleValues = true });
        while (reader.Read())
        {
            using var document = JsonDocument.ParseValue(ref reader);
            documents.Add(document.RootElement.Clone());
        }

        return documents;
    }
}
