using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;
using ActorBlk.Testing;
using Xunit;

namespace ActorBlk.Hardware.Tests.Queues;

/// <summary>
/// The dispatcher's own list (<see cref="HardwareContext.TryStageOwned"/>): a request staged by
/// the thread running a round of its hardware queue (a completion in the round submitting again)
/// goes there instead of the ring while the ring is empty, and the next round takes it first,
/// as the kernel issues such a request directly (docs/blk-mq-semantics.md §3.1: direct issue
/// while the hardware queue is not busy). Order per thread, quiesce and draining are as for the ring.
/// </summary>
public sealed class OwnerStagedSpec
{
    private static readonly TimeSpan Liveness = TimeSpan.FromSeconds(30);

    [Fact]
    public void The_list_takes_requests_only_while_the_ring_is_empty_and_it_has_room()
    {
        var driver = new ScriptedDriver();
        var (queue, _) = TestQueues.Create(driver, depth: 256);
        var hctx = queue.HardwareContexts[0];
        var tags = hctx.Tags;

        Assert.True(hctx.TryStageOwned(tags[0]));
        Assert.Equal(1, hctx.OwnerStagedCount);
        Assert.True(hctx.HasWork);
        Assert.Equal(1, hctx.PendingCount);

        // Something waits in the ring: a later request of the same thread must not overtake it.
        Assert.True(hctx.Ring.TryPublish(tags[1]));
        Assert.False(hctx.TryStageOwned(tags[2]));
        Assert.True(hctx.Ring.TryTake(out _));

        for (var i = 1; i < HardwareContext.OwnerStagedCapacity; i++)
        {
            Assert.True(hctx.TryStageOwned(tags[i + 2]));
        }

        Assert.False(hctx.TryStageOwned(tags[200]));
        Assert.Equal(HardwareContext.OwnerStagedCapacity, hctx.OwnerStagedCount);
        Assert.Equal(HardwareContext.OwnerStagedCapacity, hctx.OwnerStagedTotal);
    }

    [Fact]
    public void A_round_takes_the_list_first_in_order_then_the_ring_and_keeps_what_does_not_fit()
    {
        var driver = new ScriptedDriver();
        var (queue, _) = TestQueues.Create(driver, depth: 64);
        var hctx = queue.HardwareContexts[0];
        var tags = hctx.Tags;
        for (var i = 0; i < 5; i++)
        {
            Assert.True(hctx.TryStageOwned(tags[i]));
        }

        Assert.True(hctx.Ring.TryPublish(tags[10]));
        var batch = new Request[3];
        Assert.Equal(3, hctx.TakeBatch(batch));
        Assert.Equal([tags[0], tags[1], tags[2]], batch);
        Assert.Equal(2, hctx.OwnerStagedCount);

        batch = new Request[8];
        Assert.Equal(3, hctx.TakeBatch(batch));
        Assert.Equal([tags[3], tags[4], tags[10]], batch[..3]);
        Assert.Equal(0, hctx.OwnerStagedCount);
        Assert.False(hctx.HasWork);
    }

    [Fact]
    public async Task A_quiesced_queue_keeps_the_list_and_teardown_drains_it()
    {
        var driver = new ScriptedDriver();
        var (queue, _) = TestQueues.Create(driver, depth: 64);
        var hctx = queue.HardwareContexts[0];
        var tags = hctx.Tags;
        Assert.True(hctx.TryStageOwned(tags[3]));
        Assert.True(hctx.TryStageOwned(tags[4]));

        await queue.QuiesceAsync();
        Assert.Equal(0, hctx.TakeBatch(new Request[8]));
        Assert.Equal(2, hctx.OwnerStagedCount);

        var drained = hctx.DrainPending();
        Assert.Equal([tags[3], tags[4]], drained);
        Assert.Equal(0, hctx.OwnerStagedCount);
        Assert.Equal(0, hctx.PendingCount);
        queue.Unquiesce();
    }

    [Fact]
    public async Task Resubmissions_from_completions_in_a_round_skip_the_ring_and_arrive_in_order()
    {
        // A dispatch loop, merges on (the list is not offered to mergers), a driver completing
        // inline: each completion submits the next sector from inside the loop's round.
        using var softIrq = new BlockSoftIrq(4);
        var (queue, runtime, driver) = TestQueues.CreateLoop(softIrq, "owned0", MergePolicy.All);
        const int Total = 2_000;
        var chain = new ChainedReads(queue, Total, i => i * 16L);
        try
        {
            await chain.Start().Done.WaitAsync(Liveness);
        }
        finally
        {
            await runtime.DetachAsync().WaitAsync(Liveness);
        }

        // Only the first submission (from the test's thread) went through the ring.
        var hctx = queue.HardwareContexts[0];
        Assert.Equal(Total - 1, hctx.OwnerStagedTotal);
        Assert.Equal(Total, driver.Calls.Count);
        Assert.Equal(Enumerable.Range(0, Total).Select(i => i * 16L), chain.Completed);

        Assert.Equal(0, hctx.PendingCount);
        Assert.Equal(0, queue.DoubleCompletions);
    }
}
