using ActorBlk.Hardware.Queues;
using Xunit;

namespace ActorBlk.Hardware.Tests.Queues;

/// <summary>blk-mq-semantics §9.</summary>
public sealed class QueueUsageCounterSpec
{
    private sealed class Waiter : IFreezeWaiter
    {
        public int Calls;

        public void OnUnfrozen() => Calls++;
    }

    [Fact]
    public void Starts_atomic_and_switches_to_per_cpu_on_registration()
    {
        // §15 "usage counter": unregistered queue reports atomic mode; registered reports per-CPU.
        var counter = new QueueUsageCounter();
        Assert.False(counter.IsPerCpu);

        counter.SwitchToPerCpu(4);

        Assert.True(counter.IsPerCpu);
    }

    [Fact]
    public void A_reference_taken_in_atomic_mode_can_be_dropped_in_per_cpu_mode()
    {
        var counter = new QueueUsageCounter();
        Assert.Equal(EnterResult.Entered, counter.TryEnter(0));
        counter.SwitchToPerCpu(4);
        counter.Exit(3);

        Assert.Equal(0, counter.Count);
    }

    [Fact]
    public async Task Freeze_blocks_entry_and_completes_when_the_last_reference_drops()
    {
        var counter = new QueueUsageCounter();
        counter.SwitchToPerCpu(2);
        counter.TryEnter(0);
        counter.TryEnter(1);

        counter.Freeze();
        var drained = counter.WaitDrainedAsync();

        Assert.Equal(EnterResult.Frozen, counter.TryEnter(0));
        counter.Exit(1);
        Assert.False(drained.IsCompleted);
        counter.Exit(0);
        await drained;
    }

    [Fact]
    public void Nested_freezes_need_as_many_unfreezes()
    {
        // §15 "freeze depth": freeze x2 + unfreeze x1 -> allocation still blocks.
        var counter = new QueueUsageCounter();
        counter.Freeze();
        counter.Freeze();
        counter.Unfreeze();

        Assert.Equal(EnterResult.Frozen, counter.TryEnter(0));
        counter.Unfreeze();
        Assert.Equal(EnterResult.Entered, counter.TryEnter(0));
    }

    [Fact]
    public void Waiters_are_called_back_when_the_queue_thaws()
    {
        var counter = new QueueUsageCounter();
        var waiter = new Waiter();
        counter.Freeze();

        Assert.Equal(EnterResult.Waiting, counter.EnterOrWait(0, waiter));
        Assert.Equal(0, waiter.Calls);
        counter.Unfreeze();

        Assert.Equal(1, waiter.Calls);
        Assert.Equal(0, counter.WaiterCount);
    }

    [Fact]
    public void Dying_fails_entry_and_wakes_waiters()
    {
        // §15 "dying": allocation waiting on a frozen queue returns ENODEV when the queue is marked dying.
        var counter = new QueueUsageCounter();
        var waiter = new Waiter();
        counter.Freeze();
        counter.EnterOrWait(0, waiter);

        counter.MarkDying();

        Assert.Equal(1, waiter.Calls);
        Assert.Equal(EnterResult.Dying, counter.TryEnter(0));
        Assert.Equal(EnterResult.Dying, counter.EnterOrWait(0, waiter));
        Assert.False(counter.Unfreeze());
    }

    [Fact]
    public void Unbalanced_unfreeze_is_refused()
    {
        Assert.Throws<InvalidOperationException>(() => new QueueUsageCounter().Unfreeze());
    }

    [Fact]
    public async Task No_entry_slips_past_a_freeze_under_concurrency()
    {
        var counter = new QueueUsageCounter();
        counter.SwitchToPerCpu(4);
        var stop = 0;
        var enteredAfterFreeze = 0;
        var frozen = 0;
        var workers = Enumerable.Range(0, 3).Select(cpu => Task.Run(() =>
        {
            while (Volatile.Read(ref stop) == 0)
            {
                if (counter.TryEnter(cpu) == EnterResult.Entered)
                {
                    if (Volatile.Read(ref frozen) == 1)
                    {
                        // Holding a reference while the freezer believes the queue drained: must never happen.
                        Interlocked.Increment(ref enteredAfterFreeze);
                    }

                    counter.Exit((cpu + 1) % 4);
                }
            }
        })).ToArray();

        for (var round = 0; round < 200; round++)
        {
            counter.Freeze();
            await counter.WaitDrainedAsync();
            Volatile.Write(ref frozen, 1);
            Thread.SpinWait(1000);
            Volatile.Write(ref frozen, 0);
            counter.Unfreeze();
        }

        Volatile.Write(ref stop, 1);
        await Task.WhenAll(workers);
        Assert.Equal(0, enteredAfterFreeze);
        Assert.Equal(0, counter.Count);
    }
}
