using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;
using ActorBlk.Testing;
using Xunit;

namespace ActorBlk.Hardware.Tests.Tags;

/// <summary>
/// A bio woken from a tag wait takes a tag, as the kernel's task woken in <c>blk_mq_get_tag</c>
/// retries the allocation it slept in (blk-mq-semantics §2): it does not go back to merging.
/// An outside audit lost writes in mailbox dispatch: 1,000 un-awaited 4 KiB writes over 8
/// adjacent offsets at depth 64, 24 to 231 never completed with every tag free. Woken in batches
/// of <c>wake_batch</c>, bios that merged into each other's requests used up wake-ups without
/// taking the tags those wake-ups stood for, until fewer requests were in flight than a batch
/// and the waiters left were never woken. Run step by step here on <see cref="ManualRuntime"/>.
/// </summary>
public sealed class TagWakeMergeSpec
{
    [Fact]
    public async Task Waiters_woken_together_each_take_a_tag_and_all_complete()
    {
        // Depth 16: wake_batch = clamp(16 / 8, 1, 8) = 2 (§2.5).
        var driver = new ScriptedDriver();
        var (queue, runtime) = TestQueues.Create(driver, depth: 16);
        Assert.Equal(MergePolicy.All, queue.MergePolicy);
        var bits = queue.HardwareContexts[0].Tags.BitmapTags;

        // Every tag in flight, at sectors far apart.
        var first = Enumerable.Range(0, 16).Select(i => TestQueues.Submit(queue, BlockOp.Write, 100_000 + (i * 1000), 8)).ToList();
        runtime.RunRound();
        Assert.Equal(16, driver.InFlight.Count);

        // 48 waiters. Waiter i queues on wait queue i mod 8 (round robin, §2.5), and a batch wakes
        // consecutive waiters of one queue: those are made adjacent, so the second of a batch
        // could merge into the request the first just staged.
        var waiters = Enumerable.Range(0, 48).Select(i => TestQueues.Submit(queue, BlockOp.Write, ((i % 8) * 1_000_000) + (i / 8 * 8), 8)).ToList();
        Assert.Equal(48, bits.WaitersActive);

        // Complete whatever is in flight, dispatch what was staged, until nothing moves.
        for (var round = 0; round < 200 && driver.InFlight.Count > 0; round++)
        {
            var done = driver.InFlight.ToList();
            driver.InFlight.Clear();
            foreach (var rq in done)
            {
                Assert.True(rq.End(BlockStatus.Ok));
            }

            runtime.RunRound();
        }

        Assert.Equal(0, bits.WaitersActive);
        Assert.All(first.Concat(waiters), t => Assert.True(t.IsCompletedSuccessfully));
        foreach (var t in first.Concat(waiters))
        {
            Assert.Equal(BlockStatus.Ok, await t);
        }

        Assert.Equal(0, bits.Bitmap.Weight());
        Assert.Equal(0, queue.DoubleCompletions);
    }
}
