using ActorBlk.Hardware.Queues;
using Xunit;

namespace ActorBlk.Hardware.Tests.Queues;

/// <summary>
/// The teardown's bounded wait for a queue to drain (blk-mq-semantics §10, <c>blk_mq_destroy_queue</c>).
/// A leak audit counted one live timer per destroyed queue for the whole drain timeout (30 s by
/// default): the wait was a bare <c>Task.Delay</c> beside the drain, never cancelled once the
/// queue had drained. The timer now goes when the wait ends.
/// </summary>
public sealed class DrainWaitSpec
{
    [Fact]
    public async Task A_queue_that_drains_within_the_timeout_leaves_no_timer_behind()
    {
        var time = new TrackingTime();
        var drained = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var wait = RequestQueue.CompletesWithinAsync(drained.Task, TimeSpan.FromSeconds(30), time);
        Assert.False(wait.IsCompleted);
        drained.SetResult();

        Assert.True(await wait);
        var timer = Assert.Single(time.Timers);
        Assert.True(timer.Disposed, "the 30 s drain timer outlived the drain");
    }

    [Fact]
    public async Task A_queue_drained_already_starts_no_timer_and_one_that_never_drains_times_out()
    {
        var time = new TrackingTime();
        Assert.True(await RequestQueue.CompletesWithinAsync(Task.CompletedTask, TimeSpan.FromSeconds(30), time));
        Assert.Empty(time.Timers);

        // A timer that fired is disposed by its own call-back once it has completed the delay, and
        // the wait's continuation may run before that (inline, or on another thread: a loaded
        // clean-clone run saw it not yet disposed), so the disposal is awaited.
        var never = new TaskCompletionSource().Task;
        Assert.False(await RequestQueue.CompletesWithinAsync(never, TimeSpan.FromMilliseconds(1), time));
        var timer = Assert.Single(time.Timers);
        await Nbd.Condition.EventuallyAsync(() => timer.Disposed, "the fired drain timer is disposed");
    }

    // The system's timers, each remembered with whether it was disposed.
    private sealed class TrackingTime : TimeProvider
    {
        private readonly List<Tracked> _timers = [];

        public IReadOnlyList<Tracked> Timers
        {
            get
            {
                lock (_timers)
                {
                    return [.. _timers];
                }
            }
        }

        public override ITimer CreateTimer(TimerCallback callback, object? state, TimeSpan dueTime, TimeSpan period)
        {
            var timer = new Tracked(System.CreateTimer(callback, state, dueTime, period));
            lock (_timers)
            {
                _timers.Add(timer);
            }

            return timer;
        }
    }

    private sealed class Tracked(ITimer inner) : ITimer
    {
        private int _disposed;

        public bool Disposed => Volatile.Read(ref _disposed) != 0;

        public bool Change(TimeSpan dueTime, TimeSpan period) => inner.Change(dueTime, period);

        public void Dispose()
        {
            Volatile.Write(ref _disposed, 1);
            inner.Dispose();
        }

        public ValueTask DisposeAsync()
        {
            Volatile.Write(ref _disposed, 1);
            return inner.DisposeAsync();
        }
    }
}
