using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;
using ActorBlk.Testing;
using Xunit;

namespace ActorBlk.Hardware.Tests.Tags;

/// <summary>
/// blk-mq-semantics §2.6 items 28-30: <c>queue/nr_requests</c> defaults to the tag depth; a write
/// below 4 becomes 4, one at or below the reserved tags or above the depth (no scheduler) is
/// refused with EINVAL and changes nothing; a valid write resizes every hardware queue's normal
/// tags to <c>nr - reserved</c> and wakes the tag waiters.
/// </summary>
public sealed class NrRequestsSpec
{
    private static int Fill(RequestQueue queue, int max, int cpu = 0)
    {
        var ok = 0;
        for (var i = 0; i < max; i++)
        {
            var task = TestQueues.Submit(queue, BlockOp.Read, i * 64, 8, cpu, RequestFlags.NoWait);
            if (task.IsCompleted && task.Result == BlockStatus.Again)
            {
                break;
            }

            ok++;
        }

        return ok;
    }

    private static QueueOptions NoMerges => new() { MergePolicy = MergePolicy.Off };

    [Fact]
    public void Defaults_to_the_tag_depth()
    {
        // Item 28: without a scheduler nr_requests = queue_depth.
        var (queue, _) = TestQueues.Create(new ScriptedDriver(), depth: 64);

        Assert.Equal(64, queue.NrRequests);
    }

    [Theory]
    [InlineData(0, 4)]
    [InlineData(2, 4)]
    [InlineData(4, 4)]
    [InlineData(17, 17)]
    [InlineData(64, 64)]
    public async Task Values_below_4_become_4(long written, int effective)
    {
        // Item 29: "write 2 -> reads back 4".
        var (queue, _) = TestQueues.Create(new ScriptedDriver(), depth: 64);

        Assert.Equal(effective, await queue.SetNrRequestsAsync(written));
        Assert.Equal(effective, queue.NrRequests);
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    public async Task Writing_the_current_value_succeeds_on_a_device_of_fewer_than_4_tags(int depth)
    {
        // Item 29: "equal to current -> no-op success" comes before the clamp to 4: a harness
        // that writes back what it read got EINVAL ("2 exceeds the tag depth 2") on such a device
        // (an outside audit). Any other value is raised to 4 and refused, naming the 4.
        var (queue, _) = TestQueues.Create(new ScriptedDriver(), depth: depth);
        Assert.Equal(depth, queue.NrRequests);

        Assert.Equal(depth, await queue.SetNrRequestsAsync(depth));
        var other = depth == 1 ? 2 : 1;
        var refused = await Assert.ThrowsAsync<ArgumentOutOfRangeException>(() => queue.SetNrRequestsAsync(other));
        Assert.StartsWith($"nr_requests: {other} (raised to the minimum 4) exceeds the tag depth {depth};", refused.Message, StringComparison.Ordinal);
        Assert.Equal(depth, queue.NrRequests);
    }

    [Theory]
    [InlineData(65)]
    [InlineData(1000)]
    [InlineData(-1)]
    [InlineData(1L + uint.MaxValue)]
    public async Task Above_the_depth_or_not_a_u32_is_refused_and_changes_nothing(long written)
    {
        // Item 29: no scheduler and nr > queue_depth -> EINVAL; > UINT_MAX -> EINVAL.
        var (queue, _) = TestQueues.Create(new ScriptedDriver(), depth: 64, options: NoMerges);

        await Assert.ThrowsAsync<ArgumentOutOfRangeException>(() => queue.SetNrRequestsAsync(written));
        Assert.Equal(64, queue.NrRequests);
        Assert.Equal(64, Fill(queue, 100));
    }

    [Theory]
    [InlineData(4)]
    [InlineData(8)]
    public async Task At_or_below_the_reserved_tags_is_refused(long written)
    {
        // Item 29: nr <= reserved_tags -> EINVAL (after the clamp to 4).
        var (queue, _) = TestQueues.Create(new ScriptedDriver(), depth: 64, reserved: 8);

        await Assert.ThrowsAsync<ArgumentOutOfRangeException>(() => queue.SetNrRequestsAsync(written));
        Assert.Equal(64, queue.NrRequests);
    }

    [Fact]
    public async Task Shrinking_limits_the_normal_tags_to_nr_minus_reserved_and_growing_back_restores_them()
    {
        // Item 29: each hctx's normal bitmap is resized to nr - nr_reserved; reserved tags never are.
        var (queue, _) = TestQueues.Create(new ScriptedDriver(), depth: 64, reserved: 2, options: NoMerges);

        Assert.Equal(16, await queue.SetNrRequestsAsync(16));
        Assert.Equal(14, Fill(queue, 100));

        var (again, _) = TestQueues.Create(new ScriptedDriver(), depth: 64, reserved: 2, options: NoMerges, name: "again");
        await again.SetNrRequestsAsync(16);
        Assert.Equal(64, await again.SetNrRequestsAsync(64));
        Assert.Equal(62, Fill(again, 100));
    }

    [Fact]
    public async Task Writing_the_current_value_is_a_no_op()
    {
        var (queue, _) = TestQueues.Create(new ScriptedDriver(), depth: 32);
        Assert.Equal(1, Fill(queue, 1));

        // A resize freezes the queue and waits for the staged request, which is never dispatched
        // here; writing the same value returns at once.
        var write = queue.SetNrRequestsAsync(32);
        Assert.True(write.IsCompletedSuccessfully);
        Assert.Equal(32, await write);

        var resize = queue.SetNrRequestsAsync(16);
        Assert.False(resize.IsCompleted);
    }
}
