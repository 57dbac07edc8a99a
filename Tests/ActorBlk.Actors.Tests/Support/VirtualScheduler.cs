using System.Diagnostics;
using Akka.Actor;
using Akka.Configuration;
using Akka.Dispatch;
using Akka.Event;

namespace ActorBlk.Actors.Tests.Support;

/// <summary>
/// Virtual time for the actor system (<c>akka.scheduler.implementation</c>): timers fire only when
/// a spec calls <see cref="Advance"/>, as with Akka's <c>TestScheduler</c>, but no timer is lost.
/// </summary>
/// <remarks>
/// <c>TestScheduler.Advance</c> fires a snapshot of the timers due at an instant, then drops that
/// instant's whole queue: a timer an actor arms for the same instant meanwhile (an actor that read
/// the time just before the advance moved it, or one preempted between adding the instant and
/// queuing its timer) went with it and never fired, and a spec waiting for it hung (a timeout scan
/// that re-arms itself, a reopen's back-off armed in reaction to a fired scan). Here the time and
/// the timers change under one lock, as <see cref="ActorBlk.Testing.ManualTimeProvider"/>'s do: a
/// timer is due at the time it read plus its delay, and fires at the first advance that reaches it.
/// </remarks>
public sealed class VirtualScheduler : IScheduler, IAdvancedScheduler
{
    private static readonly long Started = Stopwatch.GetTimestamp();

    private readonly object _lock = new();
    private readonly object _advancing = new();
    private readonly PriorityQueue<Item, (long Due, long Seq)> _timers = new();
    private long _seq;
    private DateTimeOffset _now = DateTimeOffset.UtcNow;

    /// <summary>Creates the scheduler; the actor system calls this with its scheduler configuration.</summary>
    /// <param name="config">The scheduler configuration (unused).</param>
    /// <param name="log">The scheduler's log (unused).</param>
    public VirtualScheduler(Config config, ILoggingAdapter log)
    {
    }

    /// <inheritdoc />
    public DateTimeOffset Now
    {
        get
        {
            lock (_lock)
            {
                return _now;
            }
        }
    }

    /// <inheritdoc />
    public TimeSpan MonotonicClock => Stopwatch.GetElapsedTime(Started);

    /// <inheritdoc />
    public TimeSpan HighResMonotonicClock => Stopwatch.GetElapsedTime(Started);

    /// <inheritdoc />
    public IAdvancedScheduler Advanced => this;

    /// <summary>Timers waiting to fire (cancelled ones until their time comes).</summary>
    public int PendingTimers
    {
        get
        {
            lock (_lock)
            {
                return _timers.Count;
            }
        }
    }

    /// <summary>
    /// The timers not cancelled that will tell <paramref name="receiver"/> something: an actor's
    /// own timers (<c>IWithTimers</c>) tell the actor itself. An actor that re-arms its timer once
    /// it has handled one is quiet again when this is above 0.
    /// </summary>
    /// <param name="receiver">The actor the timers tell.</param>
    public int ArmedFor(IActorRef receiver)
    {
        lock (_lock)
        {
            return _timers.UnorderedItems.Count(t => Equals(t.Element.Receiver, receiver) && t.Element.Cancelable is not { IsCancellationRequested: true });
        }
    }

    /// <summary>
    /// Moves the time on by <paramref name="offset"/>, then fires every timer due by then in due
    /// order, also those armed while they fire for a time the advance has reached (a zero delay);
    /// a repeating one is re-armed for its interval after the new time, as <c>TestScheduler</c> does.
    /// </summary>
    /// <param name="offset">How far to move the time; not negative.</param>
    public void Advance(TimeSpan offset)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(offset, TimeSpan.Zero);
        lock (_advancing)
        {
            long now;
            lock (_lock)
            {
                _now = _now.Add(offset);
                now = _now.UtcTicks;
            }

            // A timer that re-arms itself with no delay would be due again at once, for ever: the
            // advance fails instead of hanging the spec. An action that throws does not stop the
            // others (as Akka's scheduler logs and goes on); the first exception is thrown after.
            var fired = 0;
            Exception? failure = null;
            while (TakeDue(now) is { } item)
            {
                if (item.Cancelable is { IsCancellationRequested: true })
                {
                    continue;
                }

                if (++fired > MaxFiredPerAdvance)
                {
                    throw new InvalidOperationException($"more than {MaxFiredPerAdvance} timers fired in one advance: a timer re-arms itself with no delay");
                }

                try
                {
                    item.Fire();
                }
                catch (Exception ex)
                {
                    failure ??= ex;
                }

                if (item.Interval is { } interval && item.Cancelable is not { IsCancellationRequested: true })
                {
                    Schedule(interval, interval, item);
                }
            }

            if (failure is not null)
            {
                System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(failure);
            }
        }
    }

    private const int MaxFiredPerAdvance = 100_000;

    /// <inheritdoc />
    public void ScheduleTellOnce(TimeSpan delay, ICanTell receiver, object message, IActorRef? sender) =>
        Schedule(delay, null, new Item(receiver, message, sender, null, null));

    /// <inheritdoc />
    public void ScheduleTellOnce(TimeSpan delay, ICanTell receiver, object message, IActorRef? sender, ICancelable cancelable) =>
        Schedule(delay, null, new Item(receiver, message, sender, null, cancelable));

    /// <inheritdoc />
    public void ScheduleTellRepeatedly(TimeSpan initialDelay, TimeSpan interval, ICanTell receiver, object message, IActorRef? sender) =>
        Schedule(initialDelay, interval, new Item(receiver, message, sender, null, null));

    /// <inheritdoc />
    public void ScheduleTellRepeatedly(TimeSpan initialDelay, TimeSpan interval, ICanTell receiver, object message, IActorRef? sender, ICancelable cancelable) =>
        Schedule(initialDelay, interval, new Item(receiver, message, sender, null, cancelable));

    /// <inheritdoc />
    public void ScheduleOnce(TimeSpan delay, Action action, ICancelable cancelable) =>
        Schedule(delay, null, new Item(null, null, null, action, cancelable));

    /// <inheritdoc />
    public void ScheduleOnce(TimeSpan delay, Action action) =>
        Schedule(delay, null, new Item(null, null, null, action, null));

    /// <inheritdoc />
    public void ScheduleRepeatedly(TimeSpan initialDelay, TimeSpan interval, Action action, ICancelable cancelable) =>
        Schedule(initialDelay, interval, new Item(null, null, null, action, cancelable));

    /// <inheritdoc />
    public void ScheduleRepeatedly(TimeSpan initialDelay, TimeSpan interval, Action action) =>
        Schedule(initialDelay, interval, new Item(null, null, null, action, null));

    /// <inheritdoc />
    public void ScheduleOnce(TimeSpan delay, IRunnable action, ICancelable cancelable) =>
        ScheduleOnce(delay, action.Run, cancelable);

    /// <inheritdoc />
    public void ScheduleOnce(TimeSpan delay, IRunnable action) =>
        ScheduleOnce(delay, action.Run);

    /// <inheritdoc />
    public void ScheduleRepeatedly(TimeSpan initialDelay, TimeSpan interval, IRunnable action, ICancelable cancelable) =>
        ScheduleRepeatedly(initialDelay, interval, action.Run, cancelable);

    /// <inheritdoc />
    public void ScheduleRepeatedly(TimeSpan initialDelay, TimeSpan interval, IRunnable action) =>
        ScheduleRepeatedly(initialDelay, interval, action.Run);

    // The time read and the timer queued under one lock: it is due at that time plus its delay.
    private void Schedule(TimeSpan delay, TimeSpan? interval, Item item)
    {
        if (interval is { } i)
        {
            ArgumentOutOfRangeException.ThrowIfLessThanOrEqual(i, TimeSpan.Zero, nameof(interval));
        }

        lock (_lock)
        {
            item.Interval = interval;
            var due = _now.UtcTicks + Math.Max(0, delay.Ticks);
            _timers.Enqueue(item, (due, _seq++));
        }
    }

    private Item? TakeDue(long now)
    {
        lock (_lock)
        {
            return _timers.TryPeek(out _, out var key) && key.Due <= now ? _timers.Dequeue() : null;
        }
    }

    private sealed class Item(ICanTell? receiver, object? message, IActorRef? sender, Action? action, ICancelable? cancelable)
    {
        public ICancelable? Cancelable { get; } = cancelable;

        public ICanTell? Receiver { get; } = receiver;

        public TimeSpan? Interval { get; set; }

        public void Fire()
        {
            if (action is not null)
            {
                action();
            }
            else
            {
                Receiver!.Tell(message!, sender);
            }
        }
    }
}
