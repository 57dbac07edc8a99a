using ActorBlk.Hardware.Drivers;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;
using ActorBlk.Hardware.Tags;
using ActorBlk.Hardware.Tests.Nbd;
using ActorBlk.Testing;
using Xunit;

namespace ActorBlk.Hardware.Tests.Queues;

/// <summary>blk-mq-semantics §5, under a manual clock.</summary>
public sealed class TimeoutSpec
{
    private static (RequestQueue Queue, ManualRuntime Runtime, ScriptedDriver Driver, ManualBlockClock Clock) Create(int timeoutMs = 1000)
    {
        var clock = new ManualBlockClock();
        var driver = new ScriptedDriver();
        var (queue, runtime) = TestQueues.Create(driver, clock: clock, options: new QueueOptions { IoTimeoutMs = timeoutMs });
        return (queue, runtime, driver, clock);
    }

    [Fact]
    public void The_default_timeout_is_30_seconds()
    {
        // §5 item 1; §15 "timeout default": io_timeout reads 30000 by default.
        var (queue, _) = TestQueues.Create(new ScriptedDriver());

        Assert.Equal(30_000, queue.IoTimeoutMs);
        Assert.Equal(TagSet.DefaultTimeoutMs, queue.IoTimeoutMs);
    }

    [Fact]
    public void A_request_expires_at_its_deadline_not_before()
    {
        var (queue, runtime, driver, clock) = Create();
        TestQueues.Submit(queue, BlockOp.Read, 0, 8);
        runtime.RunRound();
        var hctx = queue.HardwareContexts[0];

        clock.Advance(TimeSpan.FromMilliseconds(999));
        Assert.Equal(new TimeoutScanResult(0, 1), hctx.ScanTimeouts(clock.NowMilliseconds, driver));

        clock.Advance(TimeSpan.FromMilliseconds(1));
        Assert.Equal(new TimeoutScanResult(1, 1), hctx.ScanTimeouts(clock.NowMilliseconds, driver));
        Assert.Single(driver.TimedOut);
    }

    [Fact]
    public void Reset_timer_calls_the_handler_again_one_timeout_later()
    {
        // §15 "BLK_EH_RESET_TIMER": handler called again one timeout later.
        var (queue, runtime, driver, clock) = Create();
        TestQueues.Submit(queue, BlockOp.Read, 0, 8);
        runtime.RunRound();
        var hctx = queue.HardwareContexts[0];

        clock.Advance(TimeSpan.FromSeconds(1));
        hctx.ScanTimeouts(clock.NowMilliseconds, driver);
        clock.Advance(TimeSpan.FromMilliseconds(500));
        hctx.ScanTimeouts(clock.NowMilliseconds, driver);
        Assert.Single(driver.TimedOut);

        clock.Advance(TimeSpan.FromMilliseconds(500));
        hctx.ScanTimeouts(clock.NowMilliseconds, driver);
        Assert.Equal(2, driver.TimedOut.Count);
        Assert.False(driver.TimedOut[1].TimedOut);
    }

    [Fact]
    public void Done_stops_tracking_the_request()
    {
        // §15 "BLK_EH_DONE": handler returning DONE without completing -> never completes, never re-timed.
        var (queue, runtime, driver, clock) = Create();
        driver.TimeoutAnswer = TimeoutAction.Done;
        var task = TestQueues.Submit(queue, BlockOp.Read, 0, 8);
        runtime.RunRound();
        var hctx = queue.HardwareContexts[0];

        for (var i = 0; i < 3; i++)
        {
            clock.Advance(TimeSpan.FromSeconds(2));
            hctx.ScanTimeouts(clock.NowMilliseconds, driver);
        }

        Assert.Single(driver.TimedOut);
        Assert.False(task.IsCompleted);
        Assert.True(driver.TimedOut[0].TimedOut);
    }

    [Fact]
    public async Task The_null_driver_completes_timed_out_requests_with_timeout_status()
    {
        // §12 item 4: a request null_blk lost is completed with BLK_STS_TIMEOUT by its handler.
        var clock = new ManualBlockClock();
        var driver = new NullBlockDriver(new NullBlockOptions { SizeBytes = 1 << 20 });
        var (queue, runtime) = TestQueues.Create(new ScriptedDriver(), clock: clock, options: new QueueOptions { IoTimeoutMs = 100 });
        var task = TestQueues.Submit(queue, BlockOp.Read, 0, 8);
        runtime.RunRound();
        var rq = ((ScriptedDriver)queue.Driver).InFlight.Single();

        clock.Advance(TimeSpan.FromMilliseconds(100));
        queue.HardwareContexts[0].ScanTimeouts(clock.NowMilliseconds, driver);

        Assert.Equal(BlockStatus.Timeout, await task);
        Assert.False(rq.Complete(BlockStatus.Ok));
    }

    // A request the handler completes ends apart on the thread pool, not on the scan's thread (a
    // hardware queue's actor): before, each ended there in turn, and an end_io that did not
    // return (a caller's I/O loop) held the handlers of the other expired requests, which nothing
    // else ends (null_blk lost them). Both call-backs run while both are held.
    [Fact]
    public async Task A_call_back_that_does_not_return_holds_up_no_other_timed_out_request()
    {
        var liveness = TimeSpan.FromSeconds(60);
        var clock = new ManualBlockClock();
        var driver = new NullBlockDriver(new NullBlockOptions { SizeBytes = 1 << 20 });
        var (queue, runtime) = TestQueues.Create(new ScriptedDriver(), clock: clock, options: new QueueOptions { IoTimeoutMs = 100, MergePolicy = MergePolicy.Off });
        using var release = new ManualResetEventSlim(false);
        var first = new OfflineCompletionSpec.HeldCallBack(release);
        var second = new OfflineCompletionSpec.HeldCallBack(release);
        first.Submit(queue, 0);
        second.Submit(queue, 64);
        runtime.RunRound();
        clock.Advance(TimeSpan.FromMilliseconds(100));

        try
        {
            var scan = Task.Run(() => queue.HardwareContexts[0].ScanTimeouts(clock.NowMilliseconds, driver));
            Assert.Equal(new TimeoutScanResult(2, 2), await scan.WaitAsync(liveness));
            Assert.True(first.Entered.Wait(liveness), "the first call-back did not run");
            Assert.True(second.Entered.Wait(liveness), "the second call-back did not run");
            Assert.False(first.Done.IsCompleted || second.Done.IsCompleted, "one call-back ran only once the other had returned");
        }
        finally
        {
            release.Set();
        }

        Assert.Equal(BlockStatus.Timeout, await first.Done.WaitAsync(liveness));
        Assert.Equal(BlockStatus.Timeout, await second.Done.WaitAsync(liveness));
        await Condition.EventuallyAsync(() => queue.HardwareContexts[0].Tags.InUse == 0, "every tag back");
        Assert.Equal(0L, queue.DoubleCompletions);
        Assert.Equal(1, first.Calls);
        Assert.Equal(1, second.Calls);
    }

    [Fact]
    public void Io_timeout_zero_is_refused()
    {
        // §5 item 1: writing 0 -> EINVAL.
        var (queue, _, _, _) = Create();

        Assert.Throws<ArgumentOutOfRangeException>(() => queue.IoTimeoutMs = 0);
    }
}
