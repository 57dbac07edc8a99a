using System.Diagnostics;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;
using ActorBlk.Hardware.Tags;
using ActorBlk.Hardware.Topology;
using ActorBlk.Testing;
using Xunit;

namespace ActorBlk.Hardware.Tests.Queues;

/// <summary>
/// The ring-mode dispatch loop's own contract: it parks when idle and every kind of work wakes it
/// (a staged request, a kick, a requeue), and a quiesce waiting for the round in progress
/// (<see cref="DispatchLoop.WaitIdleAsync"/>, blk-mq-semantics §9 <c>blk_mq_quiesce_queue</c>)
/// is never left waiting for a round that will not come.
/// </summary>
public sealed class DispatchLoopParkSpec
{
    // Liveness bound only: on a loaded machine a wake-up can take long, but never this long.
    private static readonly TimeSpan Liveness = TimeSpan.FromSeconds(30);

    // A queue whose single hardware queue is served by ring dispatch (one dispatch loop), without
    // a device or a control plane around it.
    private static (RequestQueue Queue, ScriptedDriver Driver, RingRuntime Runtime) CreateQueue(BlockSoftIrq softIrq, int cpus = 4, bool directIssue = false, int hardwareQueues = 1)
    {
        var driver = new ScriptedDriver { CompleteInline = true };
        var topology = CpuTopology.Simulated(cpus);
        var tagSet = new TagSet(new TagSetOptions { HardwareQueues = hardwareQueues, QueueDepth = 64, Seed = 7 }, topology, driver.InitRequest);
        var queue = new RequestQueue("loop0", tagSet, driver, new QueueOptions { MergePolicy = MergePolicy.Off });
        tagSet.AddQueue(queue);
        var runtime = new RingRuntime(softIrq, spin: TimeSpan.Zero, directIssue);
        queue.Start(runtime);
        return (queue, driver, runtime);
    }

    [Fact]
    public async Task Wait_idle_races_rounds_two_million_times_and_never_waits_for_a_round_that_does_not_come()
    {
        // The loop spins between rounds (no parking), so a kick starts a round within
        // nanoseconds and WaitIdleAsync lands at every point of it, including right at its end,
        // where the loop clears "in round" and looks for a waiter while the waiter reads
        // "in round" and registers. A waiter that registered after the loop looked, on a
        // value the loop had already cleared, would wait for a round that never comes: the
        // loop goes on spinning with nothing to do and nothing completes it.
        var driver = new ScriptedDriver();
        var (queue, _) = TestQueues.Create(driver, options: new QueueOptions { MergePolicy = MergePolicy.Off });
        var loop = new DispatchLoop(queue.HardwareContexts[0], driver, spin: TimeSpan.FromSeconds(1));
        loop.Start();
        loop.Kick();
        await loop.WaitIdleAsync().WaitAsync(Liveness);
        const int iterations = 2_000_000;
        var budget = Stopwatch.StartNew();
        var random = new Random(11);
        var pending = 0;
        var done = 0;
        try
        {
            // 20 s, or up to two minutes while no waiter has raced a round yet: on a machine
            // busy with other work the loop's thread may be off its core for whole seconds, and
            // then every WaitIdleAsync finds no round running (a clean-clone CI run with other
            // processes busy saw none in 20 s).
            for (; done < iterations && (budget.Elapsed < TimeSpan.FromSeconds(20) || (pending == 0 && budget.Elapsed < TimeSpan.FromMinutes(2))); done++)
            {
                loop.Kick();
                Thread.SpinWait(random.Next(64));
                var idle = loop.WaitIdleAsync();
                if (idle.IsCompleted)
                {
                    continue;
                }

                // Registered while a round ran: that round's end (or, if that round already ended
                // unseen, nothing at all) completes it. No new kick is made until it has.
                pending++;
                await idle.WaitAsync(Liveness);
            }
        }
        finally
        {
            await loop.StopAsync().WaitAsync(Liveness);
        }

        // The budget bounds the run, not its speed: a quiet machine runs all two million; a
        // loaded one still runs thousands, each a chance for the race.
        Assert.True(done >= 1_000, $"only {done} iterations ran");
        Assert.True(pending > 0, $"no waiter ever raced a round in {done} iterations");
    }

    [Fact]
    public async Task A_parked_loop_wakes_for_each_staged_request_and_for_a_kick()
    {
        using var softIrq = new BlockSoftIrq(4);
        var (queue, driver, runtime) = CreateQueue(softIrq);
        var hctx = queue.HardwareContexts[0];
        try
        {
            for (var i = 0; i < 200; i++)
            {
                // The loop parks after every round that leaves it idle; the next submission must
                // wake it, or the I/O never completes. The driver completes inline, on the loop's
                // thread, where the await may continue: the test yields off it, or its next submission
                // would be a same-thread one, which never wakes the loop, and it could not park.
                var parks = runtime.Parks;
                var status = await TestQueues.Submit(queue, BlockOp.Read, i * 8, 8, cpu: i % 4).AsTask().WaitAsync(Liveness);
                await Task.Yield();
                Assert.Equal(BlockStatus.Ok, status);
                Assert.True(SpinWait.SpinUntil(() => runtime.Parks > parks, Liveness), $"the loop did not park after the idle round {i} (parks {runtime.Parks}, runs {hctx.RunCount})");
            }

            Assert.Equal(200, driver.Calls.Count);

            // A kick wakes a parked loop for one round, which finds nothing and parks again.
            var before = runtime.Parks;
            var runs = hctx.RunCount;
            runtime.Kick(hctx);
            Assert.True(SpinWait.SpinUntil(() => runtime.Parks > before, Liveness), "a kick did not wake the parked loop");
            Assert.True(hctx.RunCount > runs);
            await runtime.WaitDispatchIdleAsync(hctx).WaitAsync(Liveness);
            Assert.Equal(200, driver.Calls.Count);
        }
        finally
        {
            await runtime.DetachAsync().WaitAsync(Liveness);
        }

        Assert.Equal(0, queue.HardwareContexts[0].Tags.InUse);
    }

    [Fact]
    public async Task Freezes_quiesces_and_nr_requests_writes_start_no_thread_for_a_hardware_queue_without_work()
    {
        // A ring loop starts its thread with its first work (README, "Queue lifecycle": a hardware
        // queue nobody submits to costs no thread). A freeze (every CPU hotplug event freezes every
        // device), an unquiesce and an nr_requests write run every hardware queue; with nothing
        // pending that run must leave an armed loop as it is, as blk_mq_run_hw_queue returns when
        // blk_mq_hctx_has_pending is false. An outside scale audit: one hotplug event took a node
        // of 1,050 idle devices from 29 threads to 1,080, for good.
        using var softIrq = new BlockSoftIrq(4);
        var (queue, driver, runtime) = CreateQueue(softIrq, hardwareQueues: 4);
        try
        {
            await queue.FreezeAsync().WaitAsync(Liveness);
            queue.Unfreeze();
            await queue.QuiesceAsync().WaitAsync(Liveness);
            queue.Unquiesce();
            Assert.Equal(32, await queue.SetNrRequestsAsync(32).WaitAsync(Liveness));
            Assert.Equal(0, runtime.StartedThreads);

            // The first I/O starts its own hardware queue's thread, and only that one.
            Assert.Equal(BlockStatus.Ok, await TestQueues.Submit(queue, BlockOp.Read, 0, 8, cpu: 1).AsTask().WaitAsync(Liveness));
            Assert.Equal(1, runtime.StartedThreads);
            await queue.FreezeAsync().WaitAsync(Liveness);
            queue.Unfreeze();
            Assert.Equal(1, runtime.StartedThreads);

            // A request staged while the queue is quiesced, on a queue whose loop never started,
            // waits and is dispatched by the unquiesce's run: nothing pending is ever skipped.
            await queue.QuiesceAsync().WaitAsync(Liveness);
            var waiting = TestQueues.Submit(queue, BlockOp.Read, 8, 8, cpu: 3).AsTask();
            Assert.False(waiting.IsCompleted);
            queue.Unquiesce();
            Assert.Equal(BlockStatus.Ok, await waiting.WaitAsync(Liveness));
            Assert.Equal(2, runtime.StartedThreads);
            Assert.Equal(2, driver.Calls.Count);
        }
        finally
        {
            await runtime.DetachAsync().WaitAsync(Liveness);
        }
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Many_submitters_against_a_parking_loop_lose_no_wake_up(bool directIssue)
    {
        // Every submission publishes and then looks at "sleeping"; the loop announces sleep and
        // then looks for work: one of the two always sees the other. A lost wake-up would leave
        // a request staged in a parked loop's ring and its submitter waiting forever.
        // Continuations are forced off the loop's thread, as above. With direct issue, submitters
        // that find the loop parked run rounds themselves, racing each other and the loop for the
        // round (blk-mq-semantics §3.5 item 27): still every request reaches the driver once.
        using var softIrq = new BlockSoftIrq(4);
        var (queue, driver, runtime) = CreateQueue(softIrq, directIssue: directIssue);
        const int submitters = 4;
        const int each = 20_000;
        try
        {
            var work = Enumerable.Range(0, submitters).Select(cpu => Task.Run(async () =>
            {
                for (var i = 0; i < each; i++)
                {
                    var status = await TestQueues.Submit(queue, BlockOp.Read, ((cpu * each) + i) % 4096 * 8, 8, cpu).AsTask().WaitAsync(Liveness);
                    await Task.Yield();
                    Assert.Equal(BlockStatus.Ok, status);
                }
            }));
            await Task.WhenAll(work);
        }
        finally
        {
            await runtime.DetachAsync().WaitAsync(Liveness);
        }

        Assert.Equal(submitters * each, driver.Calls.Count);
        Assert.True(runtime.Parks > 0, "the loop never parked, so no wake-up was exercised");
        Assert.True(!directIssue || runtime.DirectRounds > 0, "no submitter ever issued directly");
        Assert.Equal(0, queue.HardwareContexts[0].Tags.InUse);
        Assert.Equal(0, queue.Usage.Count);
    }

    [Fact]
    public async Task A_submitter_issues_directly_to_a_parked_loop_but_never_to_a_quiesced_or_stopped_queue()
    {
        // Direct issue (blk-mq-semantics §3.5 item 27): with the loop parked and the hardware
        // queue not busy, the submitting thread runs the round, so the driver has the request
        // when Submit returns. A quiesced (§3.6 item 30) or stopped queue dispatches nothing on
        // that path either; the request waits until unquiesce or start runs the queue.
        using var softIrq = new BlockSoftIrq(4);
        var (queue, driver, runtime) = CreateQueue(softIrq, directIssue: true);
        var hctx = queue.HardwareContexts[0];
        try
        {
            // The first submission starts the loop's thread (it initialises the driver's context).
            Assert.Equal(BlockStatus.Ok, await TestQueues.Submit(queue, BlockOp.Read, 0, 8, cpu: 1).AsTask().WaitAsync(Liveness));
            await Task.Yield();
            Assert.True(SpinWait.SpinUntil(() => runtime.Parks > 0, Liveness), "the loop never parked");

            var rounds = runtime.DirectRounds;
            var calls = driver.Calls.Count;
            var direct = TestQueues.Submit(queue, BlockOp.Read, 8, 8, cpu: 1).AsTask();
            Assert.Equal(calls + 1, driver.Calls.Count);
            Assert.True(runtime.DirectRounds > rounds, "the submitter did not run the round");
            Assert.Equal(BlockStatus.Ok, await direct.WaitAsync(Liveness));
            await Task.Yield();
            Assert.True(SpinWait.SpinUntil(() => hctx.Tags.InUse == 0, Liveness));

            await queue.QuiesceAsync().WaitAsync(Liveness);
            rounds = runtime.DirectRounds;
            calls = driver.Calls.Count;
            var quiesced = TestQueues.Submit(queue, BlockOp.Read, 16, 8, cpu: 1).AsTask();
            Assert.True(runtime.DirectRounds > rounds, "the direct path was not taken");
            Assert.Equal(calls, driver.Calls.Count);
            Assert.False(quiesced.IsCompleted);
            queue.Unquiesce();
            Assert.Equal(BlockStatus.Ok, await quiesced.WaitAsync(Liveness));
            await Task.Yield();
            Assert.True(SpinWait.SpinUntil(() => hctx.Tags.InUse == 0 && runtime.Parks > 0 && hctx.PendingCount == 0, Liveness));

            hctx.StopQueue();
            calls = driver.Calls.Count;
            var stopped = TestQueues.Submit(queue, BlockOp.Read, 24, 8, cpu: 1).AsTask();
            Assert.Equal(calls, driver.Calls.Count);
            Assert.False(stopped.IsCompleted);
            hctx.StartQueue();
            Assert.Equal(BlockStatus.Ok, await stopped.WaitAsync(Liveness));
            Assert.Equal(calls + 1, driver.Calls.Count);
        }
        finally
        {
            await runtime.DetachAsync().WaitAsync(Liveness);
        }

        Assert.Equal(0, hctx.Tags.InUse);
        Assert.Equal(0, queue.Usage.Count);
    }
}
