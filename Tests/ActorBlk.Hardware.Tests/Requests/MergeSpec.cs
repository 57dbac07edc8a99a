using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;
using ActorBlk.Testing;
using Xunit;

namespace ActorBlk.Hardware.Tests.Requests;

/// <summary>blk-mq-semantics §3.2: merges into requests staged on the submitting context.</summary>
public sealed class MergeSpec
{
    private static (RequestQueue Queue, ManualRuntime Runtime, ScriptedDriver Driver) Create(int maxSectors = QueueLimits.DefaultMaxSectors, MergePolicy policy = MergePolicy.All)
    {
        // A volatile write cache, so FUA and preflush flags survive submission (§3.1 item 1).
        var driver = new ScriptedDriver(maxSectors: maxSectors, writeCache: true);
        var (queue, runtime) = TestQueues.Create(driver, options: new QueueOptions { MergePolicy = policy });
        return (queue, runtime, driver);
    }

    private static List<Request> Staged(RequestQueue queue)
    {
        var hctx = queue.HardwareContexts[0];
        var list = new List<Request>();
        while (hctx.Ring.TryTake(out var rq))
        {
            list.Add(rq);
        }

        return list;
    }

    [Fact]
    public void Back_and_front_merges_follow_the_worked_example()
    {
        // §3.2 item 7: rq [100, +8) accepts a bio at 108 (back) or 8 sectors at 92 (front); 107 does not merge.
        var (queue, _, _) = Create();
        TestQueues.Submit(queue, BlockOp.Read, 100, 8);
        TestQueues.Submit(queue, BlockOp.Read, 108, 8);
        TestQueues.Submit(queue, BlockOp.Read, 92, 8);
        TestQueues.Submit(queue, BlockOp.Read, 107, 8);

        var staged = Staged(queue);

        Assert.Equal(2, staged.Count);
        Assert.Equal(92, staged[0].Sector);
        Assert.Equal(24, staged[0].Sectors);
        Assert.Equal([92L, 100L, 108L], staged[0].Bios.ToList().Select(b => b.Sector));
        Assert.Equal(3, staged[0].Segments);
        Assert.Equal(107, staged[1].Sector);
        Assert.Equal(2, queue.SoftwareContexts[0].Merged);
    }

    [Fact]
    public void A_merge_beyond_max_sectors_is_refused_and_marks_the_request()
    {
        var (queue, _, _) = Create(maxSectors: 16);
        TestQueues.Submit(queue, BlockOp.Write, 100, 8);
        TestQueues.Submit(queue, BlockOp.Write, 108, 16);
        TestQueues.Submit(queue, BlockOp.Write, 92, 8);

        var staged = Staged(queue);

        Assert.Equal(3, staged.Count);
        Assert.True(staged[0].Flags.HasFlag(RequestFlags.NoMerge));
        Assert.Equal(8, staged[0].Sectors);
    }

    [Fact]
    public void Only_the_8_newest_staged_requests_are_examined()
    {
        // §15 "ctx merge window": a contiguous bio matching the 9th newest request is not merged.
        var (queue, _, _) = Create();
        for (var i = 0; i < 9; i++)
        {
            TestQueues.Submit(queue, BlockOp.Read, i * 1000, 8);
        }

        TestQueues.Submit(queue, BlockOp.Read, 1008, 8);  // adjacent to the 8th newest (sector 1000): merges
        TestQueues.Submit(queue, BlockOp.Read, 8, 8);     // adjacent to the 9th newest (sector 0): does not

        var staged = Staged(queue);

        Assert.Equal(10, staged.Count);
        Assert.Equal(16, staged.Single(r => r.Sector == 1000).Sectors);
        Assert.Equal(8, staged.Single(r => r.Sector == 0).Sectors);
    }

    [Fact]
    public void Nomerges_2_turns_every_merge_off()
    {
        // §15 "nomerges": nomerges=2 -> two contiguous bios produce two driver requests.
        var (queue, _, _) = Create(policy: MergePolicy.Off);
        TestQueues.Submit(queue, BlockOp.Read, 100, 8);
        TestQueues.Submit(queue, BlockOp.Read, 108, 8);

        Assert.Equal(2, Staged(queue).Count);
    }

    [Fact]
    public void Nomerges_1_still_merges_without_a_scheduler()
    {
        var (queue, _, _) = Create(policy: MergePolicy.SimpleOnly);
        TestQueues.Submit(queue, BlockOp.Read, 100, 8);
        TestQueues.Submit(queue, BlockOp.Read, 108, 8);

        Assert.Single(Staged(queue));
    }

    [Theory]
    [InlineData(BlockOp.Write, RequestFlags.Fua)]
    [InlineData(BlockOp.WriteZeroes, RequestFlags.None)]
    public void Unmergeable_bios_never_merge(BlockOp op, RequestFlags flags)
    {
        var (queue, _, _) = Create();
        TestQueues.Submit(queue, op, 100, 8, flags: flags);
        TestQueues.Submit(queue, op, 108, 8, flags: flags);

        Assert.Equal(2, Staged(queue).Count);
    }

    [Fact]
    public void Different_operations_do_not_merge()
    {
        var (queue, _, _) = Create();
        TestQueues.Submit(queue, BlockOp.Read, 100, 8);
        TestQueues.Submit(queue, BlockOp.Write, 108, 8);

        Assert.Equal(2, Staged(queue).Count);
    }

    [Fact]
    public void A_dispatched_request_takes_no_more_bios()
    {
        var (queue, runtime, driver) = Create();
        TestQueues.Submit(queue, BlockOp.Read, 100, 8);
        runtime.RunRound();
        TestQueues.Submit(queue, BlockOp.Read, 108, 8);
        runtime.RunRound();

        Assert.Equal(2, driver.Calls.Count);
        Assert.Equal(8, driver.Calls[0].Request.Sectors);
    }

    [Fact]
    public async Task Every_merged_bio_completes_with_the_request()
    {
        var (queue, runtime, driver) = Create();
        var a = TestQueues.Submit(queue, BlockOp.Read, 100, 8);
        var b = TestQueues.Submit(queue, BlockOp.Read, 108, 8);
        var c = TestQueues.Submit(queue, BlockOp.Read, 92, 8);
        runtime.RunRound();

        Assert.Single(driver.Calls);
        Assert.Equal(1, driver.CompleteAll(BlockStatus.Medium));
        Assert.Equal(BlockStatus.Medium, await a);
        Assert.Equal(BlockStatus.Medium, await b);
        Assert.Equal(BlockStatus.Medium, await c);
        Assert.Equal(0, queue.HardwareContexts[0].Tags.InUse);
        Assert.Equal(0, queue.Usage.Count);
    }
}

internal static class BioListExtensions
{
    public static List<Bio> ToList(this BioList list)
    {
        var result = new List<Bio>();
        foreach (var bio in list)
        {
            result.Add(bio);
        }

        return result;
    }
}
