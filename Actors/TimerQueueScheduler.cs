using System.Collections.Concurrent;
using System.Diagnostics;
using Akka.Actor;
using Akka.Configuration;
using Akka.Dispatch;
using Akka.Event;

namespace ActorBlk.Actors;

/// <summary>
/// An Akka scheduler that wakes only when something is due. ActorBlk's default
/// (<c>akka.scheduler.implementation</c> in the library's reference.conf).
/// </summary>
/// <remarks>
/// <para>
/// Akka's default, <see cref="HashedWheelTimerScheduler"/>, ticks every
/// <c>akka.scheduler.tick-duration</c> (10 ms) whether or not anything is scheduled: each tick is a
/// <c>Task.Delay</c>, so the runtime's timer thread and a thread-pool worker wake about a hundred
/// times a second each, and the pool wakes a second worker behind the first. On a small machine
/// those threads land on the CPU a dispatch loop sleeps on, and an I/O completion that arrives
/// while one of them runs waits for it (README, "Queue depth 1 (item 10, sixth pass)").
/// </para>
/// <para>
/// This scheduler puts each registration on the runtime's timer queue
/// (<see cref="System.Threading.Timer"/>), which sleeps until the earliest deadline: an idle node
/// does not wake at all. What it keeps from the wheel: an action never runs before its delay (the
/// due time is rounded up to whole milliseconds, plus one, as the timer queue counts in
/// milliseconds); a repeated action runs again <c>interval</c> after the end of its run (fixed
/// delay); a cancelled registration does not run, and its timer is freed at once; an action that
/// throws is logged and, if repeated, not run again; on shutdown every registration still pending
/// runs once, and scheduling after shutdown throws <see cref="SchedulerException"/>. Actions run
/// on the thread pool; two registrations due at the same time may run in either order or at once,
/// as with the wheel's callers, which never relied on an order between them.
/// </para>
/// </remarks>
public sealed class TimerQueueScheduler : SchedulerBase, IDateTimeOffsetNowTimeProvider, IDisposable
{
    // Both clocks count from the first scheduler of the process, as Akka's own count from its start.
    private static readonly long Epoch = Stopwatch.GetTimestamp();

    private readonly ConcurrentDictionary<Registration, byte> _pending = new();
    private int _stopped;
    private long _runs;

    /// <summary>Created by the actor system from <c>akka.scheduler.implementation</c>.</summary>
    /// <param name="scheduler">The system's configuration.</param>
    /// <param name="log">Where failures of scheduled actions are logged.</param>
    public TimerQueueScheduler(Config scheduler, ILoggingAdapter log)
        : base(scheduler, log)
    {
    }

    /// <inheritdoc />
    protected override DateTimeOffset TimeNow => DateTimeOffset.Now;

    /// <inheritdoc />
    public override TimeSpan MonotonicClock => Stopwatch.GetElapsedTime(Epoch);

    /// <inheritdoc />
    public override TimeSpan HighResMonotonicClock => Stopwatch.GetElapsedTime(Epoch);

    /// <summary>Registrations waiting for their time (each holds one armed timer).</summary>
    internal int Pending => _pending.Count;

    /// <summary>Scheduled actions run so far (repeated ones count each run).</summary>
    internal long Runs => Interlocked.Read(ref _runs);

    /// <inheritdoc />
    protected override void InternalScheduleTellOnce(TimeSpan delay, ICanTell receiver, object message, IActorRef sender, ICancelable cancelable) =>
        Schedule(delay, TimeSpan.Zero, new ScheduledTell(receiver, message, sender), cancelable);

    /// <inheritdoc />
    protected override void InternalScheduleTellRepeatedly(TimeSpan initialDelay, TimeSpan interval, ICanTell receiver, object message, IActorRef sender, ICancelable cancelable) =>
        Schedule(initialDelay, interval, new ScheduledTell(receiver, message, sender), cancelable);

    /// <inheritdoc />
    protected override void InternalScheduleOnce(TimeSpan delay, Action action, ICancelable cancelable) =>
        Schedule(delay, TimeSpan.Zero, new ActionRunnable(action), cancelable);

    /// <inheritdoc />
    protected override void InternalScheduleOnce(TimeSpan delay, IRunnable action, ICancelable cancelable) =>
        Schedule(delay, TimeSpan.Zero, action, cancelable);

    /// <inheritdoc />
    protected override void InternalScheduleRepeatedly(TimeSpan initialDelay, TimeSpan interval, Action action, ICancelable cancelable) =>
        Schedule(initialDelay, interval, new ActionRunnable(action), cancelable);

    /// <inheritdoc />
    protected override void InternalScheduleRepeatedly(TimeSpan initialDelay, TimeSpan interval, IRunnable action, ICancelable cancelable) =>
        Schedule(initialDelay, interval, action, cancelable);

    /// <summary>
    /// Stops every timer and runs each registration still pending once, as the wheel does when
    /// the actor system terminates.
    /// </summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _stopped, 1) != 0)
        {
            return;
        }

        foreach (var registration in _pending.Keys)
        {
            if (registration.TryClaimForShutdown())
            {
                _pending.TryRemove(registration, out _);
                if (!registration.Cancelled)
                {
                    Run(registration);
                }
            }
        }
    }

    private void Schedule(TimeSpan delay, TimeSpan interval, IRunnable action, ICancelable? cancelable)
    {
        if (Volatile.Read(ref _stopped) != 0)
        {
            throw new SchedulerException("cannot enqueue after timer shutdown");
        }

        if (cancelable is { IsCancellationRequested: true })
        {
            return;
        }

        // A registration cancelled meanwhile (even inside its constructor) is Done, and Arm says so.
        var registration = new Registration(this, action, interval, cancelable);
        _pending[registration] = 0;
        if (!registration.Arm(delay))
        {
            _pending.TryRemove(registration, out _);
            return;
        }

        // A shutdown that began meanwhile may have missed it: it runs once now, as the others did.
        if (Volatile.Read(ref _stopped) != 0 && registration.TryClaimForShutdown())
        {
            _pending.TryRemove(registration, out _);
            Run(registration);
        }
    }

    private bool Run(Registration registration)
    {
        try
        {
            Interlocked.Increment(ref _runs);
            registration.Action.Run();
            return true;
        }
        catch (SchedulerException)
        {
            // From an actor that terminated meanwhile, as the wheel ignores it.
            return false;
        }
        catch (Exception ex)
        {
            Log.Error(ex, "Error while executing scheduled task {0}", registration.Action);
            return false;
        }
    }

    private void Fired(Registration registration)
    {
        if (!registration.TryStartRun())
        {
            return;
        }

        if (registration.Cancelled || Volatile.Read(ref _stopped) != 0)
        {
            Forget(registration);
            return;
        }

        // The timer queue's clock is the kernel's coarse one (a tick of 1-4 ms): a timer can fire
        // before its time by the high-resolution clock. It then waits out the rest.
        if (registration.Remaining() is var remaining && remaining > TimeSpan.Zero)
        {
            if (!registration.TryRearm(remaining))
            {
                Forget(registration);
            }

            return;
        }

        var ran = Run(registration);
        if (ran && registration.Interval > TimeSpan.Zero && !registration.Cancelled && Volatile.Read(ref _stopped) == 0 &&
            registration.TryRearm(registration.Interval))
        {
            return;
        }

        Forget(registration);
    }

    private void Forget(Registration registration)
    {
        registration.Release();
        _pending.TryRemove(registration, out _);
    }

    // Rounded up to whole milliseconds plus one: the timer queue counts milliseconds from a coarse
    // tick, so a due time of exactly the delay could fire up to a millisecond early.
    private static long DueMilliseconds(TimeSpan delay) =>
        delay <= TimeSpan.Zero ? 0 : Math.Min((long)Math.Ceiling(delay.TotalMilliseconds) + 1, 0xFFFFFFFEL);

    private sealed class ScheduledTell(ICanTell receiver, object message, IActorRef sender) : IRunnable
    {
        public void Run() => receiver.Tell(message, sender);

        public void Execute() => Run();

        public override string ToString() => $"[{receiver}.Tell({message}, {sender})]";
    }

    private sealed class Registration
    {
        // Idle: armed, or being armed. Running: a timer callback owns it. Done: released, cancelled
        // or claimed by the shutdown; its timer is disposed.
        private const int Idle = 0;
        private const int Running = 1;
        private const int Done = 2;

        private readonly TimerQueueScheduler _owner;
        private readonly ICancelable? _cancelable;
        private readonly Timer _timer;
        private readonly CancellationTokenRegistration _onCancel;
        private int _state;
        private long _due;

        public Registration(TimerQueueScheduler owner, IRunnable action, TimeSpan interval, ICancelable? cancelable)
        {
            _owner = owner;
            Action = action;
            Interval = interval;
            _cancelable = cancelable;
            _timer = new Timer(static s => ((Registration)s!).OnTimer(), this, Timeout.Infinite, Timeout.Infinite);

            // A cancellation frees the timer at once instead of at its due time (an ask whose reply
            // came keeps no timer until its timeout). Registered last: the call-back may run at once.
            if (cancelable is not null)
            {
                _onCancel = cancelable.Token.UnsafeRegister(static s => ((Registration)s!).OnCancelled(), this);
            }
        }

        public IRunnable Action { get; }

        public TimeSpan Interval { get; }

        public bool Cancelled => _cancelable?.IsCancellationRequested ?? false;

        /// <summary>Starts the first wait; false when the registration is already Done.</summary>
        public bool Arm(TimeSpan delay) => Volatile.Read(ref _state) != Done && Change(delay);

        /// <summary>How long until the registration's time, by the high-resolution clock.</summary>
        public TimeSpan Remaining() => Stopwatch.GetElapsedTime(Stopwatch.GetTimestamp(), _due);

        public bool TryStartRun() => Interlocked.CompareExchange(ref _state, Running, Idle) == Idle;

        /// <summary>From a timer call-back: waits again; false when it cannot.</summary>
        public bool TryRearm(TimeSpan delay) =>
            Interlocked.CompareExchange(ref _state, Idle, Running) == Running && Change(delay);

        public bool TryClaimForShutdown()
        {
            if (Interlocked.CompareExchange(ref _state, Done, Idle) != Idle)
            {
                return false;
            }

            Free();
            return true;
        }

        public void Release()
        {
            Volatile.Write(ref _state, Done);
            Free();
        }

        private bool Change(TimeSpan delay)
        {
            // Published before the timer can fire (Timer.Change takes the timer queue's lock).
            _due = Stopwatch.GetTimestamp() + (long)(Math.Max(0, delay.Ticks) * ((double)Stopwatch.Frequency / TimeSpan.TicksPerSecond));
            try
            {
                return _timer.Change(DueMilliseconds(delay), Timeout.Infinite);
            }
            catch (ObjectDisposedException)
            {
                // Cancelled or claimed by the shutdown between the state's check and here.
                return false;
            }
        }

        private void Free()
        {
            _timer.Dispose();
            _onCancel.Dispose();
        }

        private void OnTimer() => _owner.Fired(this);

        private void OnCancelled()
        {
            if (Interlocked.CompareExchange(ref _state, Done, Idle) == Idle)
            {
                _timer.Dispose();
                _owner._pending.TryRemove(this, out _);
            }
        }
    }
}
