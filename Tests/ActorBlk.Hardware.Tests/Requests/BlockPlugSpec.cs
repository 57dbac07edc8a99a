using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;
using ActorBlk.Testing;
using Xunit;

namespace ActorBlk.Hardware.Tests.Requests;

/// <summary>blk-mq-semantics §3.3.</summary>
public sealed class BlockPlugSpec
{
    private static (RequestQueue Queue, ManualRuntime Runtime, ScriptedDriver Driver) Create(string name = "plug0", ScriptedDriver? driver = null, RequestQueue? sibling = null)
    {
        driver ??= new ScriptedDriver();
        var (queue, runtime) = TestQueues.Create(driver, name: name, tagSet: sibling?.TagSet);
        return (queue, runtime, driver);
    }

    private static int Staged(RequestQueue queue) => queue.HardwareContexts.Sum(h => h.Ring.Count);

    [Fact]
    public void The_33rd_plugged_request_flushes_the_first_32()
    {
        var (queue, _, _) = Create();
        using (var plug = BlockPlug.Start())
        {
            for (var i = 0; i < 32; i++)
            {
                TestQueues.Submit(queue, BlockOp.Read, i * 100, 8);
            }

            Assert.Equal(0, Staged(queue));
            Assert.Equal(32, plug.Count);

            TestQueues.Submit(queue, BlockOp.Read, 5000, 8);
            Assert.Equal(32, Staged(queue));
            Assert.Equal(1, plug.Count);
        }

        Assert.Equal(33, Staged(queue));
    }

    [Fact]
    public void A_plug_holding_several_queues_flushes_at_64()
    {
        var (a, _, _) = Create("plugA");
        var (b, _, _) = Create("plugB");
        using var plug = BlockPlug.Start();
        for (var i = 0; i < 40; i++)
        {
            TestQueues.Submit(i % 2 == 0 ? a : b, BlockOp.Read, i * 100, 8);
        }

        Assert.True(plug.HasMultipleQueues);
        Assert.Equal(64, plug.Limit);
        Assert.Equal(0, Staged(a) + Staged(b));
    }

    [Fact]
    public void A_plugged_request_of_128_KiB_flushes_before_the_next_one()
    {
        var (queue, _, _) = Create();
        using var plug = BlockPlug.Start();
        TestQueues.Submit(queue, BlockOp.Write, 0, 256);
        Assert.Equal(0, Staged(queue));

        TestQueues.Submit(queue, BlockOp.Write, 10_000, 8);

        Assert.Equal(1, Staged(queue));
        Assert.Equal(1, plug.Count);
    }

    [Fact]
    public void Bios_merge_into_the_last_plugged_request()
    {
        var (queue, _, _) = Create();
        using (var plug = BlockPlug.Start())
        {
            TestQueues.Submit(queue, BlockOp.Write, 0, 8);
            TestQueues.Submit(queue, BlockOp.Write, 8, 8);
            Assert.Equal(1, plug.Count);
        }

        Assert.Equal(1, Staged(queue));
        Assert.Equal(1, queue.SoftwareContexts[0].Merged);
    }

    [Fact]
    public void Nested_plugs_are_ignored()
    {
        var (queue, _, _) = Create();
        using var outer = BlockPlug.Start();
        using (var inner = BlockPlug.Start())
        {
            Assert.True(inner.IsNested);
            TestQueues.Submit(queue, BlockOp.Read, 0, 8);
        }

        Assert.Equal(0, Staged(queue));
        Assert.Equal(1, outer.Count);
    }

    [Fact]
    public void Awaiting_a_plugged_io_flushes_the_plug()
    {
        // §3.3 item 13: a task that blocks flushes its plug; here, a flow that awaits a plugged I/O.
        var (queue, _, _) = Create();
        using var plug = BlockPlug.Start();
        var task = TestQueues.Submit(queue, BlockOp.Read, 0, 8);
        Assert.Equal(0, Staged(queue));

        _ = task.AsTask();

        Assert.Equal(1, Staged(queue));
        Assert.Equal(1, plug.FlushCount);
    }

    [Fact]
    public void Requests_for_one_hardware_queue_are_staged_in_one_batch()
    {
        var (queue, runtime, driver) = Create();
        using (BlockPlug.Start())
        {
            for (var i = 0; i < 5; i++)
            {
                TestQueues.Submit(queue, BlockOp.Read, i * 100, 8);
            }
        }

        runtime.RunRound();

        Assert.Equal(5, driver.Calls.Count);
        Assert.Equal([false, false, false, false, true], driver.Calls.Select(c => c.Last));
    }
}
