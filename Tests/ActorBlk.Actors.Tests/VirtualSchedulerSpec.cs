using ActorBlk.Actors.Tests.Support;
using Akka.Actor;
using Xunit;
using Xunit.Abstractions;

namespace ActorBlk.Actors.Tests;

/// <summary>
/// The specs' virtual time (<see cref="VirtualScheduler"/>, selected by <see cref="Configs.VirtualTime"/>):
/// timers fire only when a spec advances the time, never early, and none is lost, also one armed
/// for the instant an advance is firing (Akka's <c>TestScheduler</c> dropped such a timer, and a
/// spec waiting for a timeout scan or a reopen's back-off hung).
/// </summary>
public sealed class VirtualSchedulerSpec : Akka.TestKit.Xunit2.TestKit
{
    public VirtualSchedulerSpec(ITestOutputHelper output)
        : base(Configs.VirtualTime, output: output)
    {
    }

    private VirtualScheduler Scheduler => (VirtualScheduler)Sys.Scheduler;

    [Fact]
    public async Task Timers_fire_when_the_time_reaches_them_in_due_order_and_a_cancelled_one_never()
    {
        Scheduler.ScheduleTellOnce(TimeSpan.FromMilliseconds(100), TestActor, "second", ActorRefs.NoSender);
        Scheduler.ScheduleTellOnce(TimeSpan.FromMilliseconds(50), TestActor, "first", ActorRefs.NoSender);
        var cancelled = new Cancelable((IScheduler)Scheduler);
        Scheduler.ScheduleTellOnce(TimeSpan.FromMilliseconds(50), TestActor, "cancelled", ActorRefs.NoSender, cancelled);
        cancelled.Cancel();

        Scheduler.Advance(TimeSpan.FromMilliseconds(49));
        await ExpectNoMsgAsync(TimeSpan.FromMilliseconds(100));
        Scheduler.Advance(TimeSpan.FromMilliseconds(51));
        await ExpectMsgAsync("first");
        await ExpectMsgAsync("second");
        await ExpectNoMsgAsync(TimeSpan.FromMilliseconds(100));
        Assert.Equal(0, Scheduler.PendingTimers);
    }

    // TestScheduler fired a snapshot of an instant's timers, then removed the instant: this one,
    // armed by a timer of that instant, went with it (checked by hand: never delivered there).
    [Fact]
    public async Task A_timer_armed_for_the_instant_being_fired_fires_in_the_same_advance()
    {
        Scheduler.ScheduleOnce(TimeSpan.FromMilliseconds(50), () =>
            Scheduler.ScheduleTellOnce(TimeSpan.Zero, TestActor, "armed while firing", ActorRefs.NoSender));

        Scheduler.Advance(TimeSpan.FromMilliseconds(50));
        await ExpectMsgAsync("armed while firing");
    }

    // The specs' pattern: an actor re-arms its timer each time it fires (a timeout scan), while the
    // spec steps the time by the timer's interval until it has fired again. The count is seen
    // before the timer is re-armed, so arming and advancing interleave; every arming lands on the
    // queue whatever the interleaving, so the count only waits for steps.
    [Fact]
    public async Task A_timer_an_actor_re_arms_as_the_time_steps_by_its_interval_is_never_lost()
    {
        var fired = new Counter();
        var ticker = Sys.ActorOf(Props.Create(() => new Ticker(fired, TimeSpan.FromMilliseconds(50))));
        ticker.Tell(Ticker.Tick.Instance);
        for (var n = 1; n <= 500; n++)
        {
            var expected = n;
            await AwaitConditionAsync(() =>
            {
                if (fired.Value < expected)
                {
                    Scheduler.Advance(TimeSpan.FromMilliseconds(50));
                }

                return Task.FromResult(fired.Value >= expected);
            }, TimeSpan.FromSeconds(10), TimeSpan.FromMilliseconds(1), $"tick {expected} never came: the re-armed timer was lost");
        }
    }

    private sealed class Counter
    {
        private int _value;

        public int Value => Volatile.Read(ref _value);

        public void Increment() => Interlocked.Increment(ref _value);
    }

    private sealed class Ticker : ReceiveActor, IWithTimers
    {
        public Ticker(Counter fired, TimeSpan interval)
        {
            Receive<Tick>(_ =>
            {
                fired.Increment();
                Timers.StartSingleTimer("tick", Tick.Instance, interval);
            });
        }

        public ITimerScheduler Timers { get; set; } = null!;

        public sealed class Tick
        {
            public static readonly Tick Instance = new();
        }
    }
}
