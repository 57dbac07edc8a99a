namespace ActorBlk.Testing;

/// <summary>
/// A clock that moves only when a test calls <see cref="Advance"/>: timers (and so
/// <c>Task.Delay(d, provider)</c>) fire when the clock reaches them, never by wall-clock time.
/// </summary>
public sealed class ManualTimeProvider : TimeProvider
{
    private readonly object _lock = new();
    private readonly List<ManualTimer> _timers = [];
    private long _ticks;

    /// <summary>Time since the start of the clock.</summary>
    public TimeSpan Now
    {
        get
        {
            lock (_lock)
            {
                return TimeSpan.FromTicks(_ticks);
            }
        }
    }

    /// <summary>Timers waiting to fire.</summary>
    public int PendingTimers
    {
        get
        {
            lock (_lock)
            {
                return _timers.Count(t => t.Due is not null);
            }
        }
    }

    /// <inheritdoc />
    public override long TimestampFrequency => TimeSpan.TicksPerSecond;

    /// <inheritdoc />
    public override long GetTimestamp()
    {
        lock (_lock)
        {
            return _ticks;
        }
    }

    /// <inheritdoc />
    public override DateTimeOffset GetUtcNow() => DateTimeOffset.UnixEpoch + Now;

    /// <inheritdoc />
    public override ITimer CreateTimer(TimerCallback callback, object? state, TimeSpan dueTime, TimeSpan period)
    {
        var timer = new ManualTimer(this, callback, state);
        timer.Change(dueTime, period);
        return timer;
    }

    /// <summary>
    /// Moves the clock to <see cref="Now"/> + <paramref name="by"/>, then fires the timers due by
    /// then, in due order. A timer set while they fire counts from the new time, so what runs
    /// after an advance does not depend on how the firing interleaves with other threads.
    /// </summary>
    public void Advance(TimeSpan by)
    {
        List<ManualTimer> due;
        lock (_lock)
        {
            _ticks += by.Ticks;
            due = [.. _timers.Where(t => t.Due is { } d && d <= _ticks).OrderBy(t => t.Due)];
            foreach (var t in due)
            {
                t.Due = t.Period is { } p && p > 0 ? _ticks + p : null;
            }
        }

        foreach (var t in due)
        {
            t.Fire();
        }
    }

    /// <summary>Completes when at least <paramref name="count"/> timers are waiting to fire (at once if they are).</summary>
    public async Task WhenTimersPendingAsync(int count = 1)
    {
        while (true)
        {
            Task next;
            lock (_lock)
            {
                if (_timers.Count(t => t.Due is not null) >= count)
                {
                    return;
                }

                _pending ??= new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                next = _pending.Task;
            }

            await next.ConfigureAwait(false);
        }
    }

    private TaskCompletionSource? _pending;

    // Under the lock: a timer was set.
    private void Scheduled()
    {
        _pending?.TrySetResult();
        _pending = null;
    }

    private sealed class ManualTimer(ManualTimeProvider clock, TimerCallback callback, object? state) : ITimer
    {
        public long? Due { get; set; }

        public long? Period { get; set; }

        public bool Change(TimeSpan dueTime, TimeSpan period)
        {
            lock (clock._lock)
            {
                if (!clock._timers.Contains(this))
                {
                    clock._timers.Add(this);
                }

                Due = dueTime == Timeout.InfiniteTimeSpan ? null : clock._ticks + Math.Max(0, dueTime.Ticks);
                Period = period == Timeout.InfiniteTimeSpan ? null : period.Ticks;
                if (Due is not null)
                {
                    clock.Scheduled();
                }
            }

            return true;
        }

        public void Fire() => callback(state);

        public void Dispose()
        {
            lock (clock._lock)
            {
                clock._timers.Remove(this);
            }
        }

        public ValueTask DisposeAsync()
        {
            Dispose();
            return ValueTask.CompletedTask;
        }
    }
}
