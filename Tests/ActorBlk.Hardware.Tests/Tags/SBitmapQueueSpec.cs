using ActorBlk.Hardware.Tags;
using Xunit;

namespace ActorBlk.Hardware.Tests.Tags;

/// <summary>blk-mq-semantics §2.4.</summary>
public sealed class SBitmapQueueSpec
{
    private sealed class Waiter : TagWaiter
    {
        public int Woken;

        protected internal override void OnTagAvailable() => Interlocked.Increment(ref Woken);
    }

    [Theory]
    [InlineData(64, 8)]
    [InlineData(32, 4)]
    [InlineData(12, 1)]
    [InlineData(4, 1)]
    public void Wake_batch_is_a_eighth_of_the_depth_clamped_to_1_8(int depth, int batch)
    {
        Assert.Equal(batch, SBitmapQueue.CalculateWakeBatch(depth));
        Assert.Equal(batch, new SBitmapQueue(depth, 1).WakeBatch);
    }

    [Fact]
    public void Shared_wake_batch_divides_the_depth_among_users()
    {
        // §2.4 item 17: depth 256, 10 users -> ceil(25.6) = 26 -> 26 / 8 = 3.
        Assert.Equal(3, SBitmapQueue.CalculateSharedWakeBatch(256, 10));
    }

    [Fact]
    public void A_waiter_is_woken_only_after_a_full_batch_of_frees()
    {
        // §15 "wake batch": depth 32 -> batch 4; a waiter is woken only after 4 frees.
        var q = new SBitmapQueue(32, 1, seed: 1);
        var bits = Enumerable.Range(0, 32).Select(_ => q.TryGet(0)).ToList();
        var waiter = new Waiter();
        Assert.Equal(-1, q.TryGetOrWait(0, waiter, 0));

        for (var i = 0; i < 3; i++)
        {
            q.Clear(bits[i], 0);
            Assert.Equal(0, waiter.Woken);
        }

        q.Clear(bits[3], 0);
        Assert.Equal(1, waiter.Woken);
        Assert.Equal(0, q.WaitersActive);
    }

    [Fact]
    public void Wake_ups_rotate_over_the_wait_queues()
    {
        var q = new SBitmapQueue(8, 1, seed: 1);
        var bits = Enumerable.Range(0, 8).Select(_ => q.TryGet(0)).ToList();
        var waiters = Enumerable.Range(0, 3).Select(_ => new Waiter()).ToList();
        for (var i = 0; i < 3; i++)
        {
            q.AddWaiter(waiters[i], i);
        }

        q.Clear(bits[0], 0);

        Assert.Equal(1, waiters[0].Woken);
        Assert.Equal(1, q.WakeIndex);
        q.Clear(bits[1], 0);
        Assert.Equal(1, waiters[1].Woken);
        Assert.Equal(0, waiters[2].Woken);
    }

    [Fact]
    public void A_waiter_that_retries_successfully_is_never_also_woken()
    {
        var q = new SBitmapQueue(4, 1, seed: 1);
        var waiter = new Waiter();

        var bit = q.TryGetOrWait(0, waiter, 0);

        Assert.True(bit >= 0);
        Assert.False(waiter.IsWaiting);
        Assert.Equal(0, q.WaitersActive);
    }

    [Fact]
    public void Wake_all_wakes_every_queue()
    {
        var q = new SBitmapQueue(4, 1);
        var waiters = Enumerable.Range(0, 10).Select(_ => new Waiter()).ToList();
        for (var i = 0; i < 10; i++)
        {
            q.AddWaiter(waiters[i], i);
        }

        q.WakeAll();

        Assert.All(waiters, w => Assert.Equal(1, w.Woken));
        Assert.Equal(0, q.WaitersActive);
    }
}
