using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;
using ActorBlk.Hardware.Tags;
using ActorBlk.Hardware.Topology;
using ActorBlk.Testing;
using Xunit;

namespace ActorBlk.Hardware.Tests.Queues;

/// <summary>
/// What a completion holds over its bio's end_io call-back (<c>RequestQueue.CompleteHolding</c>):
/// the kernel frees a request's tag and drops its queue reference after <c>bio_endio</c>
/// (docs/blk-mq-semantics.md §6: <c>blk_mq_end_request</c>, then <c>blk_mq_free_request</c>), and
/// a submission from the call-back takes both over instead of allocating anew. Everything runs on
/// the test's thread (<see cref="ManualRuntime"/>), so each step is seen exactly as it happens.
/// </summary>
public sealed class EndIoHoldSpec
{
    [Fact]
    public void A_resubmission_from_the_call_back_takes_over_the_tag_which_stays_allocated_until_then()
    {
        var driver = new ScriptedDriver();
        var (queue, runtime) = TestQueues.Create(driver, depth: 8);
        var tags = queue.HardwareContexts[0].Tags;
        var first = new Step(queue, resubmit: true);
        first.Submit(sector: 0);
        runtime.RunRound();
        var rq = Assert.Single(driver.InFlight);
        var tag = rq.Tag;
        driver.InFlight.Clear();
        first.Watch(rq);

        Assert.True(rq.End(BlockStatus.Ok));

        // During the call-back the tag was still allocated, and the request idle (not in flight).
        Assert.True(first.TagAllocated);
        Assert.Equal(RequestState.Idle, first.StateDuringCallBack);

        // The resubmission took the same tag: one tag allocated, nothing else.
        Assert.Equal(1, tags.BitmapTags.Bitmap.Weight());
        runtime.RunRound();
        var next = Assert.Single(driver.InFlight);
        Assert.Same(rq, next);
        Assert.Equal(tag, next.Tag);
        Assert.Equal(8, next.Sector);

        // A call-back that submits nothing: the tag is freed once it returns.
        driver.InFlight.Clear();
        first.Resubmit = false;
        Assert.True(next.End(BlockStatus.Ok));
        Assert.True(first.TagAllocated);
        Assert.False(tags.IsAllocated(tag));
        Assert.Equal(2, first.Completions);
        Assert.Equal(0, queue.DoubleCompletions);
    }

    [Fact]
    public async Task A_tag_waiter_gets_the_freed_tag_before_a_resubmission_from_the_call_back()
    {
        var driver = new ScriptedDriver();
        var (queue, runtime) = TestQueues.Create(driver, depth: 2);
        var a = new Step(queue, resubmit: true);
        var b = new Step(queue, resubmit: false);
        a.Submit(sector: 0);
        b.Submit(sector: 100);
        runtime.RunRound();
        Assert.Equal(2, driver.InFlight.Count);
        var (rqA, rqB) = (driver.InFlight[0], driver.InFlight[1]);
        driver.InFlight.Clear();

        // Depth 2, both in flight: the next submission waits for a tag.
        var waiter = TestQueues.Submit(queue, BlockOp.Read, 200, 8);
        Assert.Equal(1, queue.HardwareContexts[0].Tags.BitmapTags.WaitersActive);

        // A completes and its call-back submits again. A waiter queued first, so the call-back
        // does not take A's tag: freed after the call-back, it goes to the waiter (woken through
        // the runtime), and the resubmission waits its turn.
        Assert.True(rqA.End(BlockStatus.Ok));
        runtime.RunRound();
        var served = Assert.Single(driver.InFlight);
        Assert.Equal(200, served.Sector);
        driver.InFlight.Clear();

        // B's completion frees the tag the resubmission waits for.
        Assert.True(rqB.End(BlockStatus.Ok));
        runtime.RunRound();
        var resubmitted = Assert.Single(driver.InFlight);
        Assert.Equal(8, resubmitted.Sector);
        driver.InFlight.Clear();

        a.Resubmit = false;
        Assert.True(served.End(BlockStatus.Ok));
        Assert.True(resubmitted.End(BlockStatus.Ok));
        Assert.Equal(BlockStatus.Ok, await waiter);
        Assert.Equal(2, a.Completions);
        Assert.Equal(1, b.Completions);
        Assert.Equal(0, queue.HardwareContexts[0].Tags.BitmapTags.Bitmap.Weight());
        Assert.Equal(0, queue.DoubleCompletions);
    }

    [Fact]
    public async Task A_waiter_that_queues_during_the_call_back_is_not_passed_over_by_the_resubmission()
    {
        var driver = new ScriptedDriver();
        var (queue, runtime) = TestQueues.Create(driver, depth: 2);
        var a = new Step(queue, resubmit: true) { OtherFirst = 200 };
        var b = new Step(queue, resubmit: false);
        a.Submit(sector: 0);
        b.Submit(sector: 100);
        runtime.RunRound();
        var (rqA, rqB) = (driver.InFlight[0], driver.InFlight[1]);
        driver.InFlight.Clear();
        a.Watch(rqA);

        // Nobody waits when A completes, so its tag is held over the call-back. The call-back
        // first has another thread submit a read, which finds no tag (B and the held one) and
        // waits; its own resubmission then must not take the held tag past that waiter.
        Assert.True(rqA.End(BlockStatus.Ok));
        Assert.True(a.TagAllocated);
        runtime.RunRound();
        var served = Assert.Single(driver.InFlight);
        Assert.Equal(200, served.Sector);
        driver.InFlight.Clear();

        Assert.True(rqB.End(BlockStatus.Ok));
        runtime.RunRound();
        var resubmitted = Assert.Single(driver.InFlight);
        Assert.Equal(8, resubmitted.Sector);

        a.Resubmit = false;
        Assert.True(served.End(BlockStatus.Ok));
        Assert.True(resubmitted.End(BlockStatus.Ok));
        Assert.Equal(BlockStatus.Ok, await a.Other);
        Assert.Equal(0, queue.DoubleCompletions);
    }

    [Fact]
    public async Task A_freeze_started_in_the_call_back_waits_for_the_request_that_took_the_hold_over()
    {
        var driver = new ScriptedDriver();
        var (queue, runtime) = TestQueues.Create(driver, depth: 8);
        var step = new Step(queue, resubmit: true) { FreezeBeforeResubmit = true };
        var rq = DispatchFirst(step, runtime, driver);
        Assert.True(rq.End(BlockStatus.Ok));

        // The resubmission was made after the gate closed, so it entered as usual and waits for
        // the thaw; the held reference was dropped after the call-back, so the freeze is done.
        var frozen = step.Frozen!;
        await frozen;
        Assert.Equal(0, queue.HardwareContexts[0].Tags.BitmapTags.Bitmap.Weight());
        runtime.RunRound();
        Assert.Empty(driver.InFlight);

        step.Resubmit = false;
        queue.Unfreeze();
        runtime.RunRound();
        var next = Assert.Single(driver.InFlight);
        Assert.Equal(8, next.Sector);
        Assert.True(next.End(BlockStatus.Ok));
        Assert.Equal(2, step.Completions);
    }

    [Fact]
    public void A_freeze_that_closes_after_the_resubmission_entered_waits_for_its_request()
    {
        var driver = new ScriptedDriver();
        var (queue, runtime) = TestQueues.Create(driver, depth: 8);
        var step = new Step(queue, resubmit: true) { FreezeAfterResubmit = true };
        var rq = DispatchFirst(step, runtime, driver);
        Assert.True(rq.End(BlockStatus.Ok));

        // The resubmission took the reference over while the queue was open: the freeze counts it.
        var frozen = step.Frozen!;
        Assert.False(frozen.IsCompleted);
        runtime.RunRound();
        var next = Assert.Single(driver.InFlight);
        Assert.False(frozen.IsCompleted);
        step.Resubmit = false;
        Assert.True(next.End(BlockStatus.Ok));
        Assert.True(frozen.IsCompletedSuccessfully);
        Assert.False(queue.HardwareContexts[0].Tags.IsAllocated(next.Tag));
        queue.Unfreeze();
    }

    [Fact]
    public void A_shared_tag_set_frees_the_tag_before_the_call_back()
    {
        var driver = new ScriptedDriver();
        var topology = CpuTopology.Simulated(4);
        var tagSet = new TagSet(new TagSetOptions { HardwareQueues = 1, QueueDepth = 8, Seed = 7 }, topology, driver.InitRequest);
        var (queue, runtime) = TestQueues.Create(driver, tagSet: tagSet, topology: topology, name: "shared0");
        var (other, _) = TestQueues.Create(new ScriptedDriver(), tagSet: tagSet, topology: topology, name: "shared1");
        Assert.True(tagSet.IsShared);

        var step = new Step(queue, resubmit: false);
        step.Submit(sector: 0);
        runtime.RunRound();
        var rq = Assert.Single(driver.InFlight);
        var tag = rq.Tag;
        step.Watch(rq);
        Assert.True(rq.End(BlockStatus.Ok));

        // A fair share is counted per request: nothing is carried over a shared set.
        Assert.False(step.TagAllocated);
        Assert.False(queue.HardwareContexts[0].Tags.IsAllocated(tag));
        GC.KeepAlive(other);
    }

    // Submits the step's first read (sector 0) and dispatches it: the request the driver holds.
    private static Request DispatchFirst(Step step, ManualRuntime runtime, ScriptedDriver driver)
    {
        step.Submit(sector: 0);
        runtime.RunRound();
        var rq = Assert.Single(driver.InFlight);
        driver.InFlight.Clear();
        return rq;
    }

    // One bio at a time with an end_io call-back that records what it sees and may submit again.
    private sealed class Step(RequestQueue queue, bool resubmit) : IBioEndIo
    {
        private long _sector;
        private Request? _watched;

        public bool Resubmit { get; set; } = resubmit;

        public bool FreezeBeforeResubmit { get; init; }

        public bool FreezeAfterResubmit { get; init; }

        /// <summary>Another flow's read the call-back submits before its own resubmission.</summary>
        public long? OtherFirst { get; set; }

        public ValueTask<BlockStatus> Other { get; private set; }

        public Task? Frozen { get; private set; }

        public int Completions { get; private set; }

        /// <summary>Whether the watched request's tag was allocated when the last call-back began.</summary>
        public bool TagAllocated { get; private set; }

        public RequestState StateDuringCallBack { get; private set; }

        /// <summary>The request whose completion the next call-back looks at.</summary>
        public void Watch(Request rq) => _watched = rq;

        public void Submit(long sector)
        {
            _sector = sector;
            var bio = queue.Bios.Rent();
            bio.Op = BlockOp.Read;
            bio.Sector = sector;
            bio.Size = 4096;
            bio.Buffer = new byte[4096];
            bio.Cpu = 0;
            bio.EndIo = this;
            queue.Submit(bio);
        }

        public void OnBioComplete(Bio bio, BlockStatus status)
        {
            Assert.Equal(BlockStatus.Ok, status);
            Completions++;
            if (_watched is { } rq)
            {
                TagAllocated = queue.HardwareContexts[0].Tags.IsAllocated(rq.Tag);
                StateDuringCallBack = rq.State;
            }

            if (!Resubmit)
            {
                return;
            }

            if (OtherFirst is { } other)
            {
                OtherFirst = null;
                // From another thread, which holds nothing over a call-back (a thread of its own:
                // a task waited for could run inline on this one).
                var thread = new Thread(() => Other = TestQueues.Submit(queue, BlockOp.Read, other, 8));
                thread.Start();
                thread.Join();
            }

            if (FreezeBeforeResubmit)
            {
                Frozen = queue.FreezeAsync();
            }

            Submit(_sector + 8);
            if (FreezeAfterResubmit)
            {
                Frozen = queue.FreezeAsync();
            }
        }
    }
}
