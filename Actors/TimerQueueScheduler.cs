using System.Collections.Concurrent;
using System.Diagnostics;
using Akka.Actor;
using Akka.Actor.Scheduler;
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
/// <c>akka.scheduler.tick-duration</c> (10 ms) whether or not anything is scheduled: each tick wakes
/// the runtime's timer thread and a thread-pool worker, and the pool wakes a second worker behind
/// the first. On a small machine those threads land on the CPU a dispatch loop sleeps on, and an
/// I/O completion that arrives while one of them runs waits for it (README, "Queue depth 1
/// (item 10, sixth pass)").
/// </para>
/// <para>
/// This scheduler puts each registration on the runtime's timer queue
/// (<see cref="System.Threading.Timer"/>), which sleeps until the earliest deadline: an idle node
/// does not wake at all. What it keeps from the wheel:
/// </para>
/// <list type="bullet">
/// <item>An action never runs before its delay. The timer queue counts the kernel's coarse ticks,
/// so a timer that fires early by the high-resolution clock waits out the rest.</item>
/// <item>A cancelled registration does not run (beyond a run already under way), and its timer is
/// freed at once.</item>
/// <item>An action that throws is logged and, if repeated, not run again.</item>
/// <item>Tells to local actors are wrapped as scheduled messages (<see cref="IScheduledTellMsg"/>),
/// which the actor cell unwraps, so they skip serialization checks as the wheel's do.</item>
/// <item>On shutdown every registration still waiting runs once, a call-back under way is waited
/// for (at most <c>akka.scheduler.shutdown-timeout</c>), and scheduling afterwards throws
/// <see cref="SchedulerException"/>.</item>
/// </list>
/// <para>
/// Where it differs: a repeated action runs again <c>interval</c> after the end of its run (fixed
/// delay; the wheel's ticks keep close to a fixed rate), and actions run on the thread pool, so
/// two registrations due at the same moment may run in either order or at once (the wheel ran them
/// one after the other on its tick).
/// </para>
/// </remarks>
public sealed class TimerQueueScheduler : SchedulerBase, IDateTimeOffsetNowTimeProvider, IDisposable
{
    // Both clocks count from the first use of this type in the process.
    private static readonly long Epoch = Stopwatch.GetTimestamp();

    // The scheduler whose call-back this thread is running, so a shutdown started from inside an
    // action does not wait for itself.
    [ThreadStatic]
    private static TimerQueueScheduler? t_inCallback;

    private readonly ConcurrentDictionary<Registration, byte> _pending = new();
    private readonly TimeSpan _shutdownTimeout;
    private int _stopped;
    private int _callbacks;

    /// <summary>Created by the actor system from <c>akka.scheduler.implementation</c>.</summary>
    /// <param name="scheduler">The system's configuration.</param>
    /// <param name="log">Where failures of scheduled actions are logged.</param>
    public TimerQueueScheduler(Config scheduler, ILoggingAdapter log)
        : base(scheduler, log)
    {
        _shutdownTimeout = ShutdownTimeout(scheduler);
    }

    /// <summary>
    /// <c>akka.scheduler.shutdown-timeout</c> of <paramref name="config"/> (5 s when absent). HOCON's
    /// null, a list or a section failed the actor system's creation with "Value cannot be null."
    /// and no key (an audit): refused naming the key, as a value that is not a duration is.
    /// </summary>
    /// <exception cref="ConfigurationException">The value is not a duration.</exception>
    public static TimeSpan ShutdownTimeout(Config config) => AkkaDuration(config, "akka.scheduler.shutdown-timeout", TimeSpan.FromSeconds(5), "5s");

    /// <summary>A duration among Akka's keys that ActorBlk reads (<see cref="ActorBlkSettings.AkkaText"/>), or <paramref name="fallback"/> when absent.</summary>
    internal static TimeSpan AkkaDuration(Config config, string key, TimeSpan fallback, string shown, bool allowInfinite = false)
    {
        ArgumentNullException.ThrowIfNull(config);
        if (ActorBlkSettings.AkkaText(config, key, shown) is not { } text)
        {
            return fallback;
        }

        try
        {
            return config.GetTimeSpan(key, fallback, allowInfinite);
        }
        catch (Exception ex) when (ex is FormatException or OverflowException or ArgumentException)
        {
            throw new ConfigurationException($"{key}: '{text}' is not a duration (e.g. {shown}).");
        }
    }

    /// <inheritdoc />
    protected override DateTimeOffset TimeNow => DateTimeOffset.UtcNow;

    /// <inheritdoc />
    public override TimeSpan MonotonicClock => Stopwatch.GetElapsedTime(Epoch);

    /// <inheritdoc />
    public override TimeSpan HighResMonotonicClock => Stopwatch.GetElapsedTime(Epoch);

    /// <summary>Registrations waiting for their time or running (each holds one timer).</summary>
    internal int Pending => _pending.Count;

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
    /// Stops every timer, runs each registration still waiting once, and waits for call-backs under
    /// way, as the wheel does when the actor system terminates.
    /// </summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _stopped, 1) != 0)
        {
            return;
        }

        // Claimed first, then run: a timer that fires meanwhile finds its registration taken, and a
        // call-back that already holds one sees the stop and runs it itself.
        var claimed = new List<Registration>();
        foreach (var registration in _pending.Keys)
        {
            if (registration.TryClaimForShutdown())
            {
                _pending.TryRemove(registration, out _);
                claimed.Add(registration);
            }
        }

        foreach (var registration in claimed)
        {
            if (!registration.Cancelled)
            {
                Run(registration);
            }
        }

        var own = ReferenceEquals(t_inCallback, this) ? 1 : 0;
        if (!SpinWait.SpinUntil(() => Volatile.Read(ref _callbacks) <= own, _shutdownTimeout))
        {
            Log.Warning("Failed to shutdown scheduler within {0}", _shutdownTimeout);
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
        if (Volatile.Read(ref _stopped) != 0)
        {
            RunIfClaimedForShutdown(registration);
        }
    }

    // A waiting registration the shutdown did not reach: taken from the timer and run once.
    private void RunIfClaimedForShutdown(Registration registration)
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

    private bool Run(Registration registration)
    {
        try
        {
            registration.Action.Run();
            return true;
        }
        catch (SchedulerException) when (Volatile.Read(ref _stopped) != 0)
        {
            // From an actor system that is shutting down, as the wheel ignores it then.
            return false;
        }
        catch (Exception ex)
        {
            try
            {
                Log.Error(ex, "Error while executing scheduled task {0}", registration.Action);
            }
            catch (Exception)
            {
                // A failing logger must not take the timer thread down with it.
            }

            return false;
        }
    }

    private void OnTimer(Registration registration)
    {
        Interlocked.Increment(ref _callbacks);
        var outer = t_inCallback;
        t_inCallback = this;
        try
        {
            Fired(registration);
        }
        finally
        {
            t_inCallback = outer;
            Interlocked.Decrement(ref _callbacks);
        }
    }

    private void Fired(Registration registration)
    {
        if (!registration.TryStartRun())
        {
            return;
        }

        if (registration.Cancelled)
        {
            Forget(registration);
            return;
        }

        // At shutdown a registration whose timer fired runs once now, as the waiting ones do.
        var stopping = Volatile.Read(ref _stopped) != 0;

        // The timer queue's clock is the kernel's coarse one (a tick of 1-4 ms): a timer can fire
        // before its time by the high-resolution clock. It then waits out the rest.
        if (!stopping && registration.Remaining() is var remaining && remaining > TimeSpan.Zero)
        {
            Rearm(registration, remaining);
            return;
        }

        if (Run(registration) && !stopping && registration.Interval > TimeSpan.Zero)
        {
            Rearm(registration, registration.Interval);
            return;
        }

        Forget(registration);
    }

    private void Rearm(Registration registration, TimeSpan delay)
    {
        if (!registration.TryRearm(delay))
        {
            Forget(registration);
            return;
        }

        // A shutdown or a cancel that came while the call-back held the registration could not
        // take it: look again now that it waits (both sides use full fences, so one sees the other).
        if (Volatile.Read(ref _stopped) != 0)
        {
            RunIfClaimedForShutdown(registration);
        }
        else if (registration.Cancelled)
        {
            registration.CancelIfWaiting();
        }
    }

    private void Forget(Registration registration)
    {
        registration.Release();
        _pending.TryRemove(registration, out _);
    }

    // Rounded up to whole milliseconds plus one, and capped at the timer queue's largest due time
    // (about 49.7 days; a longer delay waits again from there).
    private static long DueMilliseconds(TimeSpan delay) =>
        delay <= TimeSpan.Zero ? 0 : (long)Math.Min(Math.Ceiling(delay.TotalMilliseconds) + 1, 0xFFFFFFFE);

    private sealed class ScheduledTell : IRunnable
    {
        private readonly ICanTell _receiver;
        private readonly object _message;
        private readonly IActorRef _sender;

        public ScheduledTell(ICanTell receiver, object message, IActorRef sender)
        {
            _receiver = receiver;
            _message = receiver is not ActorRefWithCell
                ? message
                : message is INotInfluenceReceiveTimeout ? new ScheduledMessageNoReceiveTimeout(message) : new ScheduledMessage(message);
            _sender = sender;
        }

        public void Run() => _receiver.Tell(_message, _sender);

        public void Execute() => Run();

        public override string ToString() => $"[{_receiver}.Tell({_message}, {_sender})]";
    }

    // The actor cell unwraps these before the actor sees the message (as it does the wheel's).
    private class ScheduledMessage(object message) : IScheduledTellMsg
    {
        public object Message => message;

        public override string ToString() => $"{{Scheduled: {message}}}";
    }

    private sealed class ScheduledMessageNoReceiveTimeout(object message) : ScheduledMessage(message), INotInfluenceReceiveTimeout;

    private sealed class Registration
    {
        // Idle: armed, or being armed. Running: a timer call-back owns it. Done: released, cancelled
        // or claimed by the shutdown; its timer is disposed.
        private const int Idle = 0;
        private const int Running = 1;
        private const int Done = 2;

        private readonly ICancelable? _cancelable;
        private readonly Timer _timer;
        private readonly CancellationTokenRegistration _onCancel;
        private int _state;
        private long _due;

        public Registration(TimerQueueScheduler owner, IRunnable action, TimeSpan interval, ICancelable? cancelable)
        {
            Owner = owner;
            Action = action;
            Interval = interval;
            _cancelable = cancelable;

            // The caller's execution context (its AsyncLocals) does not flow into scheduled actions,
            // as it does not into the wheel's.
            var restoreFlow = !ExecutionContext.IsFlowSuppressed();
            if (restoreFlow)
            {
                ExecutionContext.SuppressFlow();
            }

            try
            {
                _timer = new Timer(static s => ((Registration)s!).Owner.OnTimer((Registration)s!), this, Timeout.Infinite, Timeout.Infinite);
            }
            finally
            {
                if (restoreFlow)
                {
                    ExecutionContext.RestoreFlow();
                }
            }

            // A cancellation frees the timer at once instead of at its due time (an ask whose reply
            // came keeps no timer until its timeout). Registered last: the call-back may run at once.
            // A Cancelable that was disposed has no token; its state is still read before each run.
            if (cancelable is not null)
            {
                try
                {
                    _onCancel = cancelable.Token.UnsafeRegister(static s => ((Registration)s!).CancelIfWaiting(), this);
                }
                catch (ObjectDisposedException)
                {
                }
            }
        }

        public TimerQueueScheduler Owner { get; }

        public IRunnable Action { get; }

        public TimeSpan Interval { get; }

        public bool Cancelled => _cancelable?.IsCancellationRequested ?? false;

        /// <summary>Starts the first wait; false when the registration is already Done.</summary>
        public bool Arm(TimeSpan delay) => Volatile.Read(ref _state) != Done && Change(delay);

        /// <summary>How long until the registration's time, by the high-resolution clock.</summary>
        public TimeSpan Remaining() => Stopwatch.GetElapsedTime(Stopwatch.GetTimestamp(), Volatile.Read(ref _due));

        public bool TryStartRun() => Interlocked.CompareExchange(ref _state, Running, Idle) == Idle;

        /// <summary>From a timer call-back that owns it: waits again; false when it cannot.</summary>
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

        /// <summary>A cancellation: frees a waiting registration (one that runs is the call-back's).</summary>
        public void CancelIfWaiting()
        {
            if (Interlocked.CompareExchange(ref _state, Done, Idle) == Idle)
            {
                Free();
                Owner._pending.TryRemove(this, out _);
            }
        }

        private bool Change(TimeSpan delay)
        {
            // Published before the timer can fire (Timer.Change takes the timer queue's lock). A
            // delay beyond the clock's range saturates: the registration keeps waiting.
            var now = Stopwatch.GetTimestamp();
            var ticks = Math.Max(0, delay.Ticks) * ((double)Stopwatch.Frequency / TimeSpan.TicksPerSecond);
            Volatile.Write(ref _due, ticks >= long.MaxValue - now ? long.MaxValue : now + (long)ticks);
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
    }
}
