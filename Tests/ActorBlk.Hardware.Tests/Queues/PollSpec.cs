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
