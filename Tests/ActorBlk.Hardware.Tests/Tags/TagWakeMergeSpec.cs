using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;
using ActorBlk.Hardware.Topology;
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

    /// <summary>
    /// A woken bio that takes no tag from the map that woke it hands the wake-up on, as
    /// <c>blk_mq_get_tag</c>'s "fake wake up on previous queue for compensating the wake up miss".
    /// A stress run hung a freeze (<c>nr_requests</c> and a remap) behind 6 tag waiters of a
    /// hardware queue whose CPUs had gone offline, every tag of it free: each waiter woken there
    /// moved to an online CPU's queue, using up the wake-up its queue's free stood for.
    /// </summary>
    [Fact]
    public async Task Waiters_woken_on_an_inactive_queue_that_move_away_pass_the_wake_up_on()
    {
        // Depth 8: wake_batch 1. Six CPUs on three hardware queues, private tags per queue.
        var driver = new ScriptedDriver();
        var (queue, runtime) = TestQueues.Create(driver, cpus: 6, hwQueues: 3, depth: 8);
        var map = queue.TagSet.Map;

        // Every CPU but one (the survivor) will go offline, one online CPU for three queues. The
        // waiters' CPU is one whose queue, now and after the remap, is not the survivor's.
        var (topology, survivor, cpu) = Enumerable.Range(0, 6)
            .Select(s => (Topology: Enumerable.Range(0, 6).Where(c => c != s).Aggregate(map.Topology, (t, c) => t.WithOnline(c, false)), Survivor: s))
            .SelectMany(x =>
            {
                var next = CpuMap.Build(x.Topology, 3);
                var after = next.HardwareQueueFor(x.Survivor, HctxType.Default);
                return Enumerable.Range(0, 6)
                    .Where(c => map.HardwareQueueFor(c, HctxType.Default) != after && next.HardwareQueueFor(c, HctxType.Default) != after)
                    .Select(c => (x.Topology, x.Survivor, Cpu: c));
            })
            .First();
        var waitedOn = queue.HardwareContexts[map.HardwareQueueFor(cpu, HctxType.Default)];
        var bits = waitedOn.Tags.BitmapTags;

        // Its queue's 8 tags in flight, then 12 waiters on it.
        var first = Enumerable.Range(0, 8).Select(i => TestQueues.Submit(queue, BlockOp.Read, i * 1000, 8, cpu)).ToList();
        runtime.RunRound(waitedOn.Index);
        Assert.Equal(8, driver.InFlight.Count);
        var waiters = Enumerable.Range(0, 12).Select(i => TestQueues.Submit(queue, BlockOp.Read, 100_000 + (i * 1000), 8, cpu)).ToList();
        Assert.Equal(12, bits.WaitersActive);

        // The CPUs go offline: the waiters' CPU is left on a queue with offline CPUs only (the
        // remap is applied directly: nothing is in the rings).
        queue.Remap(queue.TagSet.Remap(topology));
        var remapped = queue.TagSet.Map;
        Assert.True(queue.HardwareContexts[remapped.HardwareQueueFor(cpu, HctxType.Default)].IsInactive);
        var target = queue.HardwareContexts[remapped.HardwareQueueFor(survivor, HctxType.Default)];
        Assert.NotSame(bits, target.Tags.BitmapTags);

        // The 8 frees wake 8 waiters, one each; each moves to the survivor's queue and takes its tag
        // there, so it must hand its wake-up back for the next waiter: all 12 are served.
        var done = driver.InFlight.ToList();
        driver.InFlight.Clear();
        foreach (var rq in done)
        {
            Assert.True(rq.End(BlockStatus.Ok));
        }

        for (var round = 0; round < 50 && waiters.Any(w => !w.IsCompleted); round++)
        {
            runtime.RunRound(target.Index);
            var served = driver.InFlight.ToList();
            driver.InFlight.Clear();
            foreach (var rq in served)
            {
                Assert.True(rq.End(BlockStatus.Ok));
            }
        }

        Assert.Equal(0, bits.WaitersActive);
        foreach (var t in first.Concat(waiters))
        {
            Assert.True(t.IsCompleted);
            Assert.Equal(BlockStatus.Ok, await t);
        }

        Assert.Equal(0, queue.DoubleCompletions);
    }
}
