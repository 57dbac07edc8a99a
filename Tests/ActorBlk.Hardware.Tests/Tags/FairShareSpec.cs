using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;
using ActorBlk.Hardware.Tags;
using ActorBlk.Testing;
using ActorBlk.Hardware.Topology;
using Xunit;

namespace ActorBlk.Hardware.Tests.Tags;

/// <summary>blk-mq-semantics §2.5: queues sharing a tag set and the fair share between them.</summary>
public sealed class FairShareSpec
{
    private static (TagSet Set, List<(RequestQueue Queue, ManualRuntime Runtime, ScriptedDriver Driver)> Queues) Create(int depth, int queues, bool fair = true)
    {
        var topology = CpuTopology.Simulated(4);
        var set = new TagSet(new TagSetOptions { QueueDepth = depth, FairSharing = fair, Seed = 3 }, topology);
        var list = Enumerable.Range(0, queues).Select(i =>
        {
            var driver = new ScriptedDriver();
            var (q, rt) = TestQueues.Create(driver, topology: topology, tagSet: set, name: $"shared{i}",
                options: new QueueOptions { MergePolicy = MergePolicy.Off });
            return (q, rt, driver);
        }).ToList();
        return (set, list);
    }

    private static int Fill(RequestQueue queue, int max)
    {
        var ok = 0;
        for (var i = 0; i < max; i++)
        {
            var task = TestQueues.Submit(queue, BlockOp.Read, i * 64, 8, flags: RequestFlags.NoWait);
            if (task.IsCompleted && task.Result == BlockStatus.Again)
            {
                break;
            }

            ok++;
        }

        return ok;
    }

    [Fact]
    public void The_set_becomes_shared_with_the_second_queue_and_unshared_at_one()
    {
        var topology = CpuTopology.Simulated(2);
        var set = new TagSet(new TagSetOptions { QueueDepth = 8 }, topology);
        var (a, _) = TestQueues.Create(new ScriptedDriver(), topology: topology, tagSet: set, name: "a");
        Assert.False(set.IsShared);

        var (b, _) = TestQueues.Create(new ScriptedDriver(), topology: topology, tagSet: set, name: "b");
        Assert.True(set.IsShared);

        set.RemoveQueue(b);
        Assert.False(set.IsShared);
        Assert.Equal([a], set.Queues);
    }

    [Fact]
    public void Three_active_queues_on_depth_128_get_43_each()
    {
        // §15 "fair sharing": depth 128, 3 active queues: the 44th in-flight request of one queue fails NOWAIT while 43 succeed.
        var (set, queues) = Create(128, 3);
        foreach (var (q, _, _) in queues)
        {
            Assert.Equal(1, Fill(q, 1));
        }

        Assert.Equal(3, set.TagsOf(0).ActiveQueues);
        Assert.Equal(42, Fill(queues[0].Queue, 100));
        Assert.Equal(43, queues[0].Queue.HardwareContexts[0].ActiveRequests);
    }

    [Fact]
    public void Thirty_two_users_of_depth_64_still_get_4()
    {
        var (_, queues) = Create(64, 32);
        foreach (var (q, _, _) in queues)
        {
            Fill(q, 1);
        }

        Assert.Equal(3, Fill(queues[0].Queue, 10));
    }

    [Fact]
    public void A_queue_going_idle_releases_its_share()
    {
        var (set, queues) = Create(128, 3);
        foreach (var (q, _, _) in queues)
        {
            Fill(q, 1);
        }

        // Queues 1 and 2 finish their I/O; their timeout scans find nothing in flight and mark them idle.
        foreach (var (q, rt, driver) in queues.Skip(1))
        {
            rt.RunRound();
            driver.CompleteAll();
            q.HardwareContexts[0].ScanTimeouts(q.Clock.NowMilliseconds, driver);
        }

        Assert.Equal(1, set.TagsOf(0).ActiveQueues);
        Assert.Equal(127, Fill(queues[0].Queue, 200));
    }

    [Fact]
    public void A_queue_going_idle_wakes_the_waiters_held_back_by_the_fair_share()
    {
        // §2.5 item 24: tag_idle wakes all waiters; with one active queue left its limit is the depth.
        var (_, queues) = Create(128, 3);
        foreach (var (q, _, _) in queues)
        {
            Fill(q, 1);
        }

        var first = queues[0].Queue;
        Assert.Equal(42, Fill(first, 100));
        var waiting = TestQueues.Submit(first, BlockOp.Read, 1 << 20, 8);
        Assert.False(waiting.IsCompleted);
        Assert.Equal(43, first.HardwareContexts[0].ActiveRequests);

        foreach (var (q, rt, driver) in queues.Skip(1))
        {
            rt.RunRound();
            driver.CompleteAll();
            q.HardwareContexts[0].ScanTimeouts(q.Clock.NowMilliseconds, driver);
        }

        // The waiter got its tag (the 44th) without any tag being freed on its own queue.
        Assert.Equal(44, first.HardwareContexts[0].ActiveRequests);
    }

    [Fact]
    public void Fair_sharing_can_be_switched_off()
    {
        var (_, queues) = Create(128, 3, fair: false);
        foreach (var (q, _, _) in queues)
        {
            Fill(q, 1);
        }

        Assert.Equal(125, Fill(queues[0].Queue, 200));
    }

    [Fact]
    public void A_private_set_is_never_limited()
    {
        var (_, queues) = Create(64, 1);

        Assert.Equal(64, Fill(queues[0].Queue, 100));
        Assert.Equal(0, queues[0].Queue.HardwareContexts[0].ActiveRequests);
    }
}
