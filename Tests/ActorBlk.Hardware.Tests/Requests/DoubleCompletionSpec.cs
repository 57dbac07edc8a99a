using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;
using ActorBlk.Testing;
using Xunit;

namespace ActorBlk.Hardware.Tests.Requests;

/// <summary>
/// Exactly once, made visible: a second completion of a bio is refused, and counted in its
/// queue's <see cref="RequestQueue.DoubleCompletions"/> (and <c>kernel/debug/block/&lt;dev&gt;/double_completions</c>),
/// whether the bio still waits for its awaiter or is back in its pool. The specs that assert the
/// counter is 0 under faults, hotplug and teardown rely on it counting; these cases complete
/// bios twice on purpose, through the internal completion call, and see it count.
/// </summary>
public sealed class DoubleCompletionSpec
{
    private static (RequestQueue Queue, ManualRuntime Runtime, ScriptedDriver Driver) Create()
    {
        var driver = new ScriptedDriver();
        var (queue, runtime) = TestQueues.Create(driver, options: new QueueOptions { MergePolicy = MergePolicy.Off });
        return (queue, runtime, driver);
    }

    private static Bio Rent(RequestQueue queue)
    {
        var bio = queue.Bios.Rent();
        bio.Op = BlockOp.Read;
        bio.Sector = 0;
        bio.Size = 4096;
        bio.Buffer = new byte[4096];
        bio.Cpu = 0;
        bio.Queue = queue;
        return bio;
    }

    [Fact]
    public async Task A_second_completion_of_a_bio_not_yet_awaited_is_refused_and_counted()
    {
        var (queue, _, _) = Create();
        var bio = Rent(queue);
        var task = bio.AsStatusTask();

        Assert.True(bio.Complete(BlockStatus.Ok));
        Assert.False(bio.Complete(BlockStatus.IoError));

        Assert.Equal(1, queue.DoubleCompletions);
        Assert.Equal(BlockStatus.Ok, await task);                 // the first completion stands
    }

    [Fact]
    public async Task A_completion_of_a_bio_back_in_its_pool_is_refused_and_counted_in_its_queue()
    {
        var (queue, _, _) = Create();
        var bio = Rent(queue);
        var task = bio.AsStatusTask();
        Assert.True(bio.Complete(BlockStatus.Ok));
        Assert.Equal(BlockStatus.Ok, await task);                 // reading the result returns the bio to its pool

        Assert.False(bio.Complete(BlockStatus.Ok));
        Assert.False(bio.Complete(BlockStatus.Ok));

        Assert.Equal(2, queue.DoubleCompletions);
    }

    [Fact]
    public async Task A_bio_rented_again_completes_normally_and_a_normal_io_counts_nothing()
    {
        var (queue, runtime, driver) = Create();
        for (var i = 0; i < 3; i++)
        {
            var io = TestQueues.Submit(queue, BlockOp.Read, i * 8, 8);
            runtime.RunRound();
            Assert.Equal(1, driver.CompleteAll());
            Assert.Equal(BlockStatus.Ok, await io);
        }

        Assert.Equal(0, queue.DoubleCompletions);
        Assert.Equal(0, queue.HardwareContexts[0].Tags.InUse);
    }

    [Fact]
    public void The_counter_is_the_debug_attribute_double_completions()
    {
        var (queue, _, _) = Create();
        queue.Attributes.Publish();
        const string path = "kernel/debug/block/test0/double_completions";
        Assert.Equal("0\n", queue.Attributes.Read(path));

        var bio = Rent(queue);
        bio.EndIo = new Ignore();
        Assert.True(bio.Complete(BlockStatus.Ok));               // end-io: released to the pool at once
        Assert.False(bio.Complete(BlockStatus.Ok));

        Assert.Equal("1\n", queue.Attributes.Read(path));
    }

    private sealed class Ignore : IBioEndIo
    {
        public void OnBioComplete(Bio bio, BlockStatus status)
        {
        }
    }
}
