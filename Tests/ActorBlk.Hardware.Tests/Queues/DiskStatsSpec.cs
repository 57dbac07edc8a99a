using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;
using ActorBlk.Testing;
using Xunit;

namespace ActorBlk.Hardware.Tests.Queues;

/// <summary>
/// <c>block/&lt;dev&gt;/stat</c> and <c>inflight</c> (Documentation/block/stat.rst) against a
/// scripted workload on a manual clock: every one of the 17 fields checked.
/// </summary>
public sealed class DiskStatsSpec
{
    private static (RequestQueue Queue, ManualRuntime Runtime, ScriptedDriver Driver, ManualBlockClock Clock) Create()
    {
        var clock = new ManualBlockClock(1000);
        var driver = new ScriptedDriver(writeCache: true);
        var (queue, runtime) = TestQueues.Create(driver, clock: clock, name: "stat0");
        queue.Register();
        return (queue, runtime, driver, clock);
    }

    private static Request InFlight(ScriptedDriver driver, BlockOp op) => driver.InFlight.Single(rq => rq.Op == op && rq.State == RequestState.InFlight);

    private static void Advance(ManualBlockClock clock, int ms) => clock.Advance(TimeSpan.FromMilliseconds(ms));

    [Fact]
    public async Task Each_field_follows_a_scripted_workload()
    {
        var (queue, runtime, driver, clock) = Create();

        // t=1000: two adjacent reads (the second merges into the first) and a write on another CPU.
        var r1 = TestQueues.Submit(queue, BlockOp.Read, 0, 8, cpu: 0);
        var r2 = TestQueues.Submit(queue, BlockOp.Read, 8, 8, cpu: 0);
        var w = TestQueues.Submit(queue, BlockOp.Write, 100, 16, cpu: 1);
        Assert.Equal("       1        1\n", queue.Attributes.Read("block/stat0/inflight"));
        runtime.RunRound();

        // t=1004: the read completes (4 ms); t=1010: the write fails (10 ms): errors are accounted too.
        Advance(clock, 4);
        Assert.True(InFlight(driver, BlockOp.Read).End(BlockStatus.Ok));
        Advance(clock, 6);
        Assert.True(InFlight(driver, BlockOp.Write).End(BlockStatus.IoError));
        Assert.Equal(BlockStatus.Ok, await r1);
        Assert.Equal(BlockStatus.Ok, await r2);
        Assert.Equal(BlockStatus.IoError, await w);

        // t=1015: idle for 5 ms, which io_ticks must not count; then a discard.
        Advance(clock, 5);
        var d = TestQueues.Submit(queue, BlockOp.Discard, 200, 8, cpu: 2);
        runtime.RunRound();

        // t=1018: reading stat while the discard is in flight brings io_ticks up to now (part_stat_show).
        Advance(clock, 3);
        var during = DiskStatSample.Parse(queue.Attributes.Read("block/stat0/stat"));
        Assert.Equal(1UL, during.InFlight);
        Assert.Equal(13UL, during.IoTicks);
        Assert.Equal("       0        1\n", queue.Attributes.Read("block/stat0/inflight"));

        // t=1020: the discard completes (5 ms); an empty flush runs 2 ms.
        Advance(clock, 2);
        Assert.True(InFlight(driver, BlockOp.Discard).End(BlockStatus.Ok));
        Assert.Equal(BlockStatus.Ok, await d);
        var f = TestQueues.Submit(queue, BlockOp.Flush, 0, 0, cpu: 3);
        runtime.RunRound();
        Advance(clock, 2);
        Assert.True(InFlight(driver, BlockOp.Flush).End(BlockStatus.Ok));
        Assert.Equal(BlockStatus.Ok, await f);

        var text = queue.Attributes.Read("block/stat0/stat");
        var expected = new DiskStatSample(
            ReadIos: 1, ReadMerges: 1, ReadSectors: 16, ReadTicks: 4,
            WriteIos: 1, WriteMerges: 0, WriteSectors: 16, WriteTicks: 10,
            InFlight: 0, IoTicks: 4 + 6 + 3 + 2 + 2, TimeInQueue: 4 + 10 + 5 + 2,
            DiscardIos: 1, DiscardMerges: 0, DiscardSectors: 8, DiscardTicks: 5,
            FlushIos: 1, FlushTicks: 2);
        Assert.Equal(expected, DiskStatSample.Parse(text));
        Assert.Equal(expected.Format(), text);
        Assert.Equal("       1        1       16        4        1        0       16       10        0       17       21        1        0        8        5        1        2\n", text);
        Assert.Equal("       0        0\n", queue.Attributes.Read("block/stat0/inflight"));
    }

    [Fact]
    public async Task A_request_failed_before_the_driver_took_it_is_still_counted_once()
    {
        // The driver refuses the request: ended with its error by the block layer, accounted once,
        // and no longer in flight.
        var (queue, runtime, driver, clock) = Create();
        driver.Script(BlockStatus.IoError);
        var r = TestQueues.Submit(queue, BlockOp.Read, 0, 8);
        Advance(clock, 1);
        runtime.RunRound();
        Assert.Equal(BlockStatus.IoError, await r);

        var stat = queue.Stats.Read();
        Assert.Equal(1UL, stat.ReadIos);
        Assert.Equal(8UL, stat.ReadSectors);
        Assert.Equal(0UL, stat.InFlight);
        Assert.Equal((0L, 0L), queue.Stats.InFlight());
    }

    [Fact]
    public void Older_stat_lines_parse_with_the_missing_fields_zero()
    {
        var eleven = DiskStatSample.Parse("  10 2 80 7 5 1 40 3 0 9 10\n");
        Assert.Equal(10UL, eleven.ReadIos);
        Assert.Equal(10UL, eleven.TimeInQueue);
        Assert.Equal(0UL, eleven.DiscardIos);
        Assert.Equal(0UL, eleven.FlushTicks);
        Assert.Throws<FormatException>(() => DiskStatSample.Parse("1 2 3"));
        Assert.Throws<FormatException>(() => DiskStatSample.Parse("1 2 3 4 5 6 7 8 9 10 -1"));
    }

    [Fact]
    public async Task Counts_from_many_threads_add_up()
    {
        // Bounded: 4 threads x 5,000 start/done pairs; every count lands in some processor's slot.
        var stats = new DiskStats(new ManualBlockClock());
        const int PerThread = 5_000;
        var threads = Enumerable.Range(0, 4).Select(t => Task.Run(() =>
        {
            var op = t % 2 == 0 ? BlockOp.Read : BlockOp.Write;
            for (var i = 0; i < PerThread; i++)
            {
                stats.Done(op, 8, stats.Start(op));
                stats.Merge(op);
            }
        })).ToArray();
        await Task.WhenAll(threads);

        var s = stats.Read();
        Assert.Equal((ulong)(2 * PerThread), s.ReadIos);
        Assert.Equal((ulong)(2 * PerThread), s.WriteIos);
        Assert.Equal((ulong)(16 * PerThread), s.WriteSectors);
        Assert.Equal((ulong)(2 * PerThread), s.ReadMerges);
        Assert.Equal(0UL, s.InFlight);
    }
}
