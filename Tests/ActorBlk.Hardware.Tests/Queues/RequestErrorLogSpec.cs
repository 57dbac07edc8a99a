using System.Collections.Concurrent;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;
using ActorBlk.Testing;
using Xunit;

namespace ActorBlk.Hardware.Tests.Queues;

/// <summary>
/// A failed request is reported as the kernel's <c>blk_update_request</c> prints it
/// (<c>blk_print_req_error</c>: status, device, sector, operation, flags), rate-limited as
/// <c>printk_ratelimited</c> is (lib/ratelimit.c: 10 messages in each 5 s window, the rest counted
/// and reported as "callbacks suppressed" with the next window's first). An outside audit served a
/// file device on a full file system: clients got ENOSPC and EIO and the node logged nothing.
/// </summary>
public sealed class RequestErrorLogSpec
{
    [Fact]
    public void The_rate_limit_lets_ten_through_per_five_second_window_and_counts_the_rest_into_the_next()
    {
        var limit = new RequestErrorLog();
        for (var i = 0; i < 10; i++)
        {
            Assert.True(limit.TryEnter(1_000 + i, out var none));
            Assert.Equal(0, none);
        }

        // The 11th to 13th in the window are held back.
        Assert.False(limit.TryEnter(1_100, out _));
        Assert.False(limit.TryEnter(3_000, out _));
        Assert.False(limit.TryEnter(6_000, out _)); // begin + interval: still this window (time_is_before_jiffies is strict)

        // The next window's first message carries the count, once.
        Assert.True(limit.TryEnter(6_001, out var suppressed));
        Assert.Equal(3, suppressed);
        Assert.True(limit.TryEnter(6_002, out suppressed));
        Assert.Equal(0, suppressed);
    }

    [Fact]
    public async Task A_failed_request_is_reported_with_its_sector_op_and_status_rate_limited_and_offline_is_not()
    {
        var clock = new ManualBlockClock(1000);
        var driver = new ScriptedDriver();
        var (queue, runtime) = TestQueues.Create(driver, clock: clock, name: "err0");
        queue.Register();
        var events = new Recorder();
        queue.Events = events;

        // A successful read, then 12 failed writes on separate sectors, then one that went offline.
        var ok = TestQueues.Submit(queue, BlockOp.Read, 0, 8);
        runtime.RunRound();
        Assert.True(Current(driver).End(BlockStatus.Ok));
        Assert.Equal(BlockStatus.Ok, await ok);

        for (var i = 0; i < 12; i++)
        {
            var write = TestQueues.Submit(queue, BlockOp.Write, 1000 + (100 * i), 8, flags: RequestFlags.Sync);
            runtime.RunRound();
            Assert.True(Current(driver).End(i == 0 ? BlockStatus.NoSpace : BlockStatus.IoError));
            Assert.Equal(i == 0 ? BlockStatus.NoSpace : BlockStatus.IoError, await write);
        }

        // Ten reported, in the kernel's terms; the first one in full.
        Assert.Equal(10, events.Errors.Count);
        var (first, firstSuppressed) = events.Errors.First();
        Assert.Equal(new RequestError("err0", 0, BlockOp.Write, RequestFlags.Sync, 1000, 4096, BlockStatus.NoSpace), first);
        Assert.Equal(0, firstSuppressed);
        Assert.Equal("critical space allocation error, dev err0, sector 1000 op write flags Sync, 4096 bytes, hctx 0", first.ToString());
        Assert.All(events.Errors.Skip(1), e => Assert.Equal(BlockStatus.IoError, e.Error.Status));

        // Offline is not reported (the device's loss is, once, elsewhere).
        var gone = TestQueues.Submit(queue, BlockOp.Read, 5000, 8);
        runtime.RunRound();
        Assert.True(Current(driver).End(BlockStatus.Offline));
        Assert.Equal(BlockStatus.Offline, await gone);

        // Nor a discard, or a write-zeroes that must not fall back to writing, that the device
        // cannot do (the kernel refuses them before any request, silently).
        foreach (var (op, flags) in new[] { (BlockOp.Discard, RequestFlags.None), (BlockOp.WriteZeroes, RequestFlags.NoFallback) })
        {
            var probe = TestQueues.Submit(queue, op, 7000, 8, flags: flags);
            runtime.RunRound();
            Assert.True(Current(driver).End(BlockStatus.NotSupported));
            Assert.Equal(BlockStatus.NotSupported, await probe);
        }

        // The next window: one more error, carrying the two held back.
        clock.Advance(TimeSpan.FromMilliseconds(RequestErrorLog.DefaultIntervalMs + 1));
        var late = TestQueues.Submit(queue, BlockOp.Read, 6000, 16);
        runtime.RunRound();
        Assert.True(Current(driver).End(BlockStatus.Medium));
        Assert.Equal(BlockStatus.Medium, await late);
        Assert.Equal(11, events.Errors.Count);
        var (last, lastSuppressed) = events.Errors.Last();
        Assert.Equal(new RequestError("err0", 0, BlockOp.Read, RequestFlags.None, 6000, 8192, BlockStatus.Medium), last);
        Assert.Equal(2, lastSuppressed);
    }

    [Fact]
    public async Task A_failed_request_completes_and_frees_its_tag_when_its_report_throws()
    {
        // The report runs inside the completion, before the tag is freed and the bios end:
        // IQueueEvents is public, and a receiver that threw left the request never completed,
        // its tag held for ever.
        var driver = new ScriptedDriver();
        var (queue, runtime) = TestQueues.Create(driver, name: "errthrow0");
        queue.Register();
        queue.Events = new Throwing();

        var write = TestQueues.Submit(queue, BlockOp.Write, 8, 8);
        runtime.RunRound();
        Assert.True(Current(driver).End(BlockStatus.IoError));
        Assert.Equal(BlockStatus.IoError, await write.AsTask().WaitAsync(TimeSpan.FromSeconds(30)));
        Assert.All(queue.HardwareContexts, h => Assert.Equal(0, h.Tags.InUse));
        Assert.Equal(0L, queue.DoubleCompletions);
    }

    private sealed class Throwing : IQueueEvents
    {
        public void OnDeviceError(HardwareContext hctx, Exception error)
        {
        }

        public void OnAbort(HardwareContext hctx)
        {
        }

        public void OnRequestError(in RequestError error, int suppressed) => throw new InvalidOperationException("a receiver's bug");
    }

    // The one request in flight (the driver's list keeps every request it was given, and a
    // request object comes back with its tag).
    private static Request Current(ScriptedDriver driver) => driver.InFlight.Where(rq => rq.State == RequestState.InFlight).Distinct().Single();

    private sealed class Recorder : IQueueEvents
    {
        public ConcurrentQueue<(RequestError Error, int Suppressed)> Errors { get; } = new();

        public void OnDeviceError(HardwareContext hctx, Exception error)
        {
        }

        public void OnAbort(HardwareContext hctx)
        {
        }

        public void OnRequestError(in RequestError error, int suppressed) => Errors.Enqueue((error, suppressed));
    }
}
