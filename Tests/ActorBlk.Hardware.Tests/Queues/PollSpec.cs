using System.Collections.Concurrent;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;
using ActorBlk.Testing;
using Xunit;

namespace ActorBlk.Hardware.Tests.Queues;

/// <summary>blk-mq-semantics §7.</summary>
public sealed class PollSpec
{
    private static (RequestQueue Queue, ManualRuntime Runtime, ScriptedDriver Driver) Create(bool ioPoll = true)
    {
        var driver = new ScriptedDriver(pollable: true);
        var (queue, runtime) = TestQueues.Create(driver, hwQueues: 2, pollQueues: 1, options: new QueueOptions { IoPoll = ioPoll });
        return (queue, runtime, driver);
    }

    [Fact]
    public void The_cookie_is_the_unique_tag_of_the_poll_queue_request()
    {
        var (queue, _, _) = Create();
        var bio = queue.Bios.Rent();
        bio.Op = BlockOp.Read;
        bio.Flags = RequestFlags.Polled;
        bio.Size = 4096;
        bio.Buffer = new byte[4096];
        bio.Cpu = 1;
        queue.Submit(bio);

        var hctx = queue.HardwareContexts[2];
        Assert.Equal(ActorBlk.Hardware.Topology.HctxType.Poll, hctx.Type);
        Assert.Equal(2, UniqueTags.HardwareQueueOf(bio.Cookie));
        Assert.True(hctx.Tags.IsAllocated(UniqueTags.TagOf(bio.Cookie)));
    }

    [Fact]
    public async Task Poll_completes_the_request_in_the_caller()
    {
        var (queue, runtime, driver) = Create();
        var bio = queue.Bios.Rent();
        bio.Op = BlockOp.Read;
        bio.Flags = RequestFlags.Polled;
        bio.Size = 4096;
        bio.Buffer = new byte[4096];
        bio.Cpu = 0;
        var task = bio.AsStatusTask();
        queue.Submit(bio);
        var cookie = bio.Cookie;
        runtime.RunRound(hctx: 2);
        Assert.Single(driver.Polled);

        var found = queue.Poll(cookie);

        Assert.Equal(1, found);
        Assert.Equal(BlockStatus.Ok, await task);
        Assert.Equal(0, queue.Poll(cookie));
    }

    // A driver whose Poll threw passed the exception to the polling caller (an I/O submitter
    // spinning on its request) and nothing else saw it. It is a driver bug, handled as one from
    // QueueRq: a device error for the supervisor, reported once until the reset ends (a poller
    // spinning on a driver that always throws queued one reset per spin), and the driver is
    // still polled meanwhile, so the request completes, once, when its Poll works again.
    [Fact]
    public async Task A_driver_whose_Poll_throws_is_a_device_error_reported_once_not_the_pollers_exception()
    {
        var (queue, runtime, driver) = Create();
        var events = new DeviceErrors();
        queue.Events = events;
        var hctx = queue.HardwareContexts[2];
        var bio = queue.Bios.Rent();
        bio.Op = BlockOp.Read;
        bio.Flags = RequestFlags.Polled;
        bio.Size = 4096;
        bio.Buffer = new byte[4096];
        bio.Cpu = 0;
        var task = bio.AsStatusTask();
        queue.Submit(bio);
        var cookie = bio.Cookie;
        runtime.RunRound(hctx: 2);
        var bug = new InvalidOperationException("driver bug in poll");
        driver.ThrowOnPoll = bug;

        Assert.Equal(0, queue.Poll(cookie));
        Assert.Equal(0, queue.PollAll());
        Assert.Equal(0, queue.Poll(cookie));
        Assert.Equal(3, driver.PollCalls);
        var reported = Assert.Single(events.Errors);
        Assert.Equal(2, reported.HardwareQueue);
        Assert.Same(bug, reported.Error);
        Assert.True(hctx.PollFaulted);
        Assert.False(task.IsCompleted);

        // The reset that report caused ended: a throw now is a new device error.
        queue.ClearPollFaults();
        Assert.False(hctx.PollFaulted);
        Assert.Equal(0, queue.Poll(cookie));
        Assert.Equal(2, events.Errors.Count);

        driver.ThrowOnPoll = null;
        Assert.Equal(1, queue.Poll(cookie));
        Assert.Equal(BlockStatus.Ok, await task);
        Assert.Equal(0, hctx.Tags.InUse);
        Assert.Equal(0L, queue.DoubleCompletions);
    }

    private sealed class DeviceErrors : IQueueEvents
    {
        public ConcurrentQueue<(int HardwareQueue, Exception Error)> Errors { get; } = new();

        public void OnDeviceError(HardwareContext hctx, Exception error) => Errors.Enqueue((hctx.Index, error));

        public void OnAbort(HardwareContext hctx)
        {
        }

        public void OnRequestError(in RequestError error, int suppressed)
        {
        }
    }

    [Fact]
    public void Polling_a_stale_or_empty_cookie_returns_0()
    {
        var (queue, _, _) = Create();

        Assert.Equal(0, queue.Poll(PollCookie.None));
        Assert.Equal(0, queue.Poll(UniqueTags.Make(2, 5)));
        Assert.Equal(0, queue.Poll(UniqueTags.Make(0, 5)));
        Assert.Equal(0, queue.Poll(UniqueTags.Make(9, 0)));
    }

    [Fact]
    public async Task A_polled_bio_on_a_queue_that_cannot_poll_fails_with_not_supported()
    {
        var (queue, _, _) = Create(ioPoll: false);

        Assert.False(queue.CanPoll);
        Assert.Equal(BlockStatus.NotSupported, await TestQueues.Submit(queue, BlockOp.Read, 0, 8, flags: RequestFlags.Polled));
        Assert.Equal(0, queue.Poll(UniqueTags.Make(2, 0)));
        Assert.Equal(0, queue.Usage.Count);
    }
}
