using System.Text.Json;
using ActorBlk.Hardware.Requests;
using ActorBlk.Host.Bench;
using ActorBlk.Host.Tests.Support;
using Xunit;

namespace ActorBlk.Host.Tests;

/// <summary>
/// Issue 16 item 6: the bench's arithmetic on a clock the spec moves. Failed I/Os are counted
/// apart (fio's <c>total_ios</c>, <c>drop_ios</c>, <c>error</c>), the window opens after the ramp
/// and closes at the end of the runtime, and the figures in the JSON follow from the counts.
/// </summary>
public sealed class BenchAccountingSpec
{
    private const int BlockSize = 4096;

    [Fact]
    public async Task A_snapshot_taken_as_the_run_disposes_its_accounting_still_answers()
    {
        // The bench's 500 ms sampler read a disposed ThreadLocal once (SIGABRT, one run in forty
        // under hotplug): snapshots and the disposal race, and a snapshot must never throw.
        var clock = new ManualBenchClock();
        var accounting = new BenchAccounting(clock, BlockSize);
        accounting.OpenWindow(TimeSpan.FromSeconds(10));
        await Task.WhenAll(Enumerable.Range(0, 4).Select(_ => Task.Run(() => accounting.Record(read: true, BlockStatus.Ok, clock.Timestamp))));
        using var stop = new CancellationTokenSource();
        var sampler = Task.Run(() =>
        {
            long seen = 0;
            while (!stop.IsCancellationRequested)
            {
                seen = Math.Max(seen, accounting.Snapshot().Read.Ios);
            }

            return seen;
        });
        accounting.Dispose();
        Assert.Equal(4, accounting.Snapshot().Read.Ios);
        await stop.CancelAsync();
        Assert.InRange(await sampler, 0, 4);
    }

    [Fact]
    public void An_empty_window_records_nothing_completed_at_the_instant_it_was_opened()
    {
        // A run stopped in its ramp opens an empty window. It was [now, now]: a completion batch
        // whose time was that same tick (read on another thread) was recorded, and one CI run
        // reported 3 reads over runtime 0.
        var clock = new ManualBenchClock();
        using var accounting = new BenchAccounting(clock, BlockSize);
        var t0 = clock.Timestamp;
        clock.Advance(TimeSpan.FromMicroseconds(100));
        accounting.OpenEmptyWindow();

        Assert.False(accounting.Record(read: true, BlockStatus.Ok, t0));
        accounting.CloseWindow();
        clock.Advance(TimeSpan.FromMicroseconds(100));
        Assert.False(accounting.Record(read: false, BlockStatus.IoError, t0));

        var (read, write, firstError) = accounting.Collect();
        Assert.Equal(0, read.TotalIos + write.TotalIos);
        Assert.Equal(BlockStatus.Ok, firstError);
        Assert.Equal(TimeSpan.Zero, accounting.Measured);
        Assert.Equal(TimeSpan.Zero, accounting.Snapshot().Measured);
    }

    [Fact]
    public void Failed_ios_count_apart_from_iops_bandwidth_and_latency()
    {
        var clock = new ManualBenchClock();
        using var accounting = new BenchAccounting(clock, BlockSize);
        accounting.OpenWindow(TimeSpan.FromSeconds(10));

        // Three reads succeed in 100 us each, one read fails with EIO, one write times out.
        for (var i = 0; i < 3; i++)
        {
            var t0 = clock.Timestamp;
            clock.Advance(TimeSpan.FromMicroseconds(100));
            Assert.True(accounting.Record(read: true, BlockStatus.Ok, t0));
        }

        var failedAt = clock.Timestamp;
        clock.Advance(TimeSpan.FromMilliseconds(5));
        Assert.True(accounting.Record(read: true, BlockStatus.IoError, failedAt));
        clock.Advance(TimeSpan.FromMilliseconds(5));
        Assert.True(accounting.Record(read: false, BlockStatus.Timeout, failedAt));

        var (read, write, firstError) = accounting.Collect();
        Assert.Equal(3, read.Ios);
        Assert.Equal(3 * BlockSize, read.Bytes);
        Assert.Equal(1, read.Failed);
        Assert.Equal(4, read.TotalIos);
        Assert.Equal(3, read.Total.Count);
        Assert.Equal(100_000, read.Total.Max, tolerance: 100);
        Assert.Equal(0, write.Ios);
        Assert.Equal(0, write.Bytes);
        Assert.Equal(1, write.Failed);
        Assert.Equal(0, write.Total.Count);
        Assert.Equal(BlockStatus.IoError, firstError);
    }

    [Fact]
    public void Completions_before_the_window_or_after_the_runtime_are_not_recorded()
    {
        var clock = new ManualBenchClock();
        using var accounting = new BenchAccounting(clock, BlockSize);

        // ramp_time: completions before the window opens do not count.
        var t0 = clock.Timestamp;
        clock.Advance(TimeSpan.FromMilliseconds(1));
        Assert.False(accounting.Record(read: true, BlockStatus.Ok, t0));

        clock.Advance(TimeSpan.FromSeconds(1));
        accounting.OpenWindow(TimeSpan.FromSeconds(2));
        t0 = clock.Timestamp;
        clock.Advance(TimeSpan.FromSeconds(2)); // exactly at the end: inside
        Assert.True(accounting.Record(read: true, BlockStatus.Ok, t0));

        // The timer that stops the run wakes late; what completes meanwhile is past the window.
        clock.Advance(TimeSpan.FromMilliseconds(300));
        Assert.False(accounting.Record(read: true, BlockStatus.Ok, t0));
        Assert.False(accounting.Record(read: false, BlockStatus.IoError, t0));
        accounting.CloseWindow();
        clock.Advance(TimeSpan.FromMilliseconds(50));
        Assert.False(accounting.Record(read: true, BlockStatus.Ok, t0));

        Assert.Equal(TimeSpan.FromSeconds(2), accounting.Measured);
        var (read, write, firstError) = accounting.Collect();
        Assert.Equal(1, read.TotalIos);
        Assert.Equal(0, write.TotalIos);
        Assert.Equal(BlockStatus.Ok, firstError);
    }

    [Fact]
    public void A_run_that_ends_before_its_runtime_is_measured_to_its_last_completion()
    {
        var clock = new ManualBenchClock();
        using var accounting = new BenchAccounting(clock, BlockSize);
        accounting.OpenWindow(runtime: null);
        clock.Advance(TimeSpan.FromMilliseconds(750));
        accounting.CloseWindow();
        Assert.Equal(TimeSpan.FromMilliseconds(750), accounting.Measured);

        using var timed = new BenchAccounting(clock, BlockSize);
        timed.OpenWindow(TimeSpan.FromSeconds(5));
        clock.Advance(TimeSpan.FromSeconds(1));
        timed.CloseWindow();
        Assert.Equal(TimeSpan.FromSeconds(1), timed.Measured);
    }

    [Fact]
    public void The_json_reports_bandwidth_of_successful_ios_and_iops_of_every_io()
    {
        var clock = new ManualBenchClock();
        using var accounting = new BenchAccounting(clock, BlockSize);
        accounting.OpenWindow(TimeSpan.FromSeconds(2));

        // 1000 reads succeed, 10 fail with ENODATA, 500 writes succeed, spread over the 2 s window.
        for (var i = 0; i < 1510; i++)
        {
            var t0 = clock.Timestamp;
            clock.Advance(TimeSpan.FromMilliseconds(1));
            var (isRead, status) = i switch
            {
                < 1000 => (true, BlockStatus.Ok),
                < 1010 => (true, BlockStatus.Medium),
                _ => (false, BlockStatus.Ok),
            };
            Assert.True(accounting.Record(isRead, status, t0));
        }

        clock.Advance(TimeSpan.FromSeconds(1)); // the run is stopped late
        accounting.CloseWindow();
        var (reads, writes, firstError) = accounting.Collect();
        var result = new BenchResult(new BenchOptions(), reads, writes, accounting.Measured, TimeSpan.FromSeconds(3),
            Submitted: 1510, Completed: 1510, Errors: 10, Timeouts: 0, UsrCpu: 0, SysCpu: 0, DeviceDescription: "spec")
        {
            FirstError = firstError,
            Engines = ["io_uring", "psync", null],
        };

        var json = JsonDocument.Parse(BenchReport.Json(result)).RootElement;
        var job = json.GetProperty("jobs")[0];
        var read = job.GetProperty("read");
        Assert.Equal(1010, read.GetProperty("total_ios").GetInt64());
        Assert.Equal(10, read.GetProperty("drop_ios").GetInt64());
        Assert.Equal(0, read.GetProperty("short_ios").GetInt64());
        Assert.Equal(1000L * BlockSize, read.GetProperty("io_bytes").GetInt64());
        // fio's iops is of total_io_u, failed I/Os too: 1000.0 * 1010 / 2000 ms (it was 1000 / 2 s = 500).
        Assert.Equal(505.0, read.GetProperty("iops").GetDouble(), precision: 6);
        Assert.Equal(1000L * BlockSize / 2, read.GetProperty("bw_bytes").GetInt64());
        Assert.Equal(1000, read.GetProperty("lat_ns").GetProperty("N").GetInt64());
        Assert.Equal(2000, read.GetProperty("runtime").GetInt64());
        var write = job.GetProperty("write");
        Assert.Equal(500, write.GetProperty("total_ios").GetInt64());
        Assert.Equal(250.0, write.GetProperty("iops").GetDouble(), precision: 6);
        Assert.Equal(0, write.GetProperty("drop_ios").GetInt64());

        Assert.Equal(61, job.GetProperty("error").GetInt32()); // ENODATA
        Assert.Equal(61, job.GetProperty("first_error").GetInt32());
        Assert.Equal(10, job.GetProperty("total_err").GetInt64());
        Assert.Equal(2000, job.GetProperty("job_runtime").GetInt64());

        var actorblk = json.GetProperty("actorblk");
        Assert.Equal("io_uring+psync", actorblk.GetProperty("engine").GetString());
        var engines = actorblk.GetProperty("engines").EnumerateArray().ToArray();
        Assert.Equal("io_uring", engines[0].GetString());
        Assert.Equal("psync", engines[1].GetString());
        Assert.Equal(JsonValueKind.Null, engines[2].ValueKind);
    }
}
