using System.Collections.Concurrent;
using System.Diagnostics;
using ActorBlk.Actors.Tests.Support;
using Akka.Actor;
using Akka.Configuration;
using Xunit;
using Xunit.Abstractions;

namespace ActorBlk.Actors.Tests;

/// <summary>
/// The library's Akka scheduler (<see cref="TimerQueueScheduler"/>): the defaults select it, it keeps
/// the wheel's contract (never early, cancel, fixed-delay repeats, failures logged, pending work run
/// once at shutdown), it frees a cancelled registration at once, and under concurrent scheduling and
/// cancelling every registration runs at most once, every one not cancelled exactly once.
/// </summary>
public sealed class TimerQueueSchedulerSpec : Akka.TestKit.Xunit2.TestKit
{
    private readonly ITestOutputHelper _output;

    public TimerQueueSchedulerSpec(ITestOutputHelper output)
        : base(Configs.Simulated, output: output)
    {
        _output = output;
    }

    [Fact]
    public void The_library_defaults_select_the_timer_queue_scheduler()
    {
        Assert.IsType<TimerQueueScheduler>(Sys.Scheduler);
        Assert.Equal(typeof(TimerQueueScheduler).AssemblyQualifiedName!.Split(',')[0],
            ActorBlkSettings.DefaultConfig().GetString("akka.scheduler.implementation").Split(',')[0].Trim());
    }

    [Fact]
    public void Scheduled_tells_arrive_once_each_and_not_before_their_delays()
    {
        var clock = Stopwatch.StartNew();
        Sys.Scheduler.ScheduleTellOnce(TimeSpan.FromMilliseconds(40), TestActor, "due", ActorRefs.NoSender);
        Sys.Scheduler.ScheduleTellOnce(TimeSpan.FromMilliseconds(120), TestActor, "later", ActorRefs.NoSender);
        Sys.Scheduler.ScheduleTellOnce(TimeSpan.FromMilliseconds(200), TestActor, "fence", ActorRefs.NoSender);

        // A stalled machine may deliver them together, in any order; each still not before its
        // time, and none twice (a second run of one would come before the last).
        var arrivals = new List<(string Message, TimeSpan At)>();
        for (var i = 0; i < 3; i++)
        {
            arrivals.Add(((string)ReceiveOne(TimeSpan.FromSeconds(20))!, clock.Elapsed));
        }

        Assert.Equal(["due", "fence", "later"], arrivals.Select(a => a.Message).Order());
        var delays = new Dictionary<string, int> { ["due"] = 40, ["later"] = 120, ["fence"] = 200 };
        Assert.All(arrivals, a => Assert.True(a.At >= TimeSpan.FromMilliseconds(delays[a.Message]), $"{a.Message} after {a.At.TotalMilliseconds} ms"));
    }

    [Fact]
    public void Tells_to_local_actors_arrive_unwrapped_and_local_time_is_utc()
    {
        Sys.Scheduler.ScheduleTellOnce(TimeSpan.Zero, TestActor, "plain", ActorRefs.NoSender);
        Assert.Equal("plain", ExpectMsg<string>());
        Assert.Equal(TimeSpan.Zero, Sys.Scheduler.Now.Offset);
    }

    [Fact]
    public void A_receive_timeout_fires_through_scheduled_ticks_that_do_not_influence_it()
    {
        // A receive timeout is itself a scheduled tell. An actor whose periodic timer (also on the
        // scheduler) sends it messages that do not influence the timeout still gets the timeout
        // while they keep coming; a message that does influence it (the string) restarts it.
        var actor = Sys.ActorOf(Props.Create(() => new IdleWatcher(TestActor)));
        ExpectMsg<ReceiveTimeout>();
        actor.Tell("stop-ticking");
        ExpectMsg("stopped");
        ExpectMsg<ReceiveTimeout>();
    }

    [Fact]
    public async Task A_cancelled_tell_never_arrives_and_its_timer_is_freed_at_once()
    {
        using var scheduler = Standalone();
        var cancel = new Cancelable((IScheduler)scheduler);
        ((IScheduler)scheduler).ScheduleTellOnce(TimeSpan.FromHours(1), TestActor, "never", ActorRefs.NoSender, cancel);
        Assert.Equal(1, scheduler.Pending);

        cancel.Cancel();
        Assert.Equal(0, scheduler.Pending);

        // Already cancelled when scheduled: nothing is armed at all.
        ((IScheduler)scheduler).ScheduleTellOnce(TimeSpan.Zero, TestActor, "never", ActorRefs.NoSender, cancel);
        Assert.Equal(0, scheduler.Pending);

        ((IScheduler)scheduler).ScheduleTellOnce(TimeSpan.FromMilliseconds(20), TestActor, "fence", ActorRefs.NoSender);
        await ExpectMsgAsync("fence");
        await AwaitConditionAsync(() => Task.FromResult(scheduler.Pending == 0));
    }

    [Fact]
    public async Task A_repeated_action_runs_until_it_is_cancelled()
    {
        var runs = 0;
        var cancel = new Cancelable(Sys.Scheduler);
        Sys.Scheduler.Advanced.ScheduleRepeatedly(TimeSpan.FromMilliseconds(5), TimeSpan.FromMilliseconds(5), () => Interlocked.Increment(ref runs), cancel);
        await AwaitConditionAsync(() => Task.FromResult(Volatile.Read(ref runs) >= 5));

        cancel.Cancel();
        var atCancel = Volatile.Read(ref runs);

        // A run already under way when the cancel came may still finish; none starts after it.
        var fence = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        Sys.Scheduler.Advanced.ScheduleOnce(TimeSpan.FromMilliseconds(60), () => fence.SetResult());
        await fence.Task.WaitAsync(TimeSpan.FromSeconds(30));
        Assert.InRange(Volatile.Read(ref runs), atCancel, atCancel + 1);
    }

    [Fact]
    public async Task A_repeated_action_that_throws_is_logged_and_not_run_again()
    {
        using var scheduler = Standalone();
        var runs = 0;
        var fence = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await EventFilter.Error(contains: "Error while executing scheduled task").ExpectOneAsync(async () =>
        {
            ((IScheduler)scheduler).Advanced.ScheduleRepeatedly(TimeSpan.Zero, TimeSpan.FromMilliseconds(1), () =>
            {
                Interlocked.Increment(ref runs);
                throw new InvalidOperationException("scheduled failure");
            });
            await AwaitConditionAsync(() => Task.FromResult(Volatile.Read(ref runs) == 1));
        });

        // Other registrations go on; the failed one did not run again before this one ran 30 ms later.
        ((IScheduler)scheduler).Advanced.ScheduleOnce(TimeSpan.FromMilliseconds(30), () => fence.SetResult());
        await fence.Task.WaitAsync(TimeSpan.FromSeconds(30));
        Assert.Equal(1, Volatile.Read(ref runs));
        await AwaitConditionAsync(() => Task.FromResult(scheduler.Pending == 0));
    }

    [Fact]
    public void Shutdown_runs_each_pending_registration_once_and_then_refuses_new_ones()
    {
        var scheduler = Standalone();
        var once = 0;
        var repeated = 0;
        var cancelled = 0;
        var cancel = new Cancelable((IScheduler)scheduler);
        for (var i = 0; i < 3; i++)
        {
            ((IScheduler)scheduler).Advanced.ScheduleOnce(TimeSpan.FromHours(1), () => Interlocked.Increment(ref once));
        }

        ((IScheduler)scheduler).Advanced.ScheduleRepeatedly(TimeSpan.FromHours(1), TimeSpan.FromHours(1), () => Interlocked.Increment(ref repeated));
        ((IScheduler)scheduler).Advanced.ScheduleOnce(TimeSpan.FromHours(1), () => Interlocked.Increment(ref cancelled), cancel);
        cancel.Cancel();
        Assert.Equal(4, scheduler.Pending);

        scheduler.Dispose();
        scheduler.Dispose();

        Assert.Equal(3, once);
        Assert.Equal(1, repeated);
        Assert.Equal(0, cancelled);
        Assert.Equal(0, scheduler.Pending);
        Assert.Throws<SchedulerException>(() => ((IScheduler)scheduler).Advanced.ScheduleOnce(TimeSpan.Zero, () => { }));
    }

    [Fact]
    public async Task Under_concurrent_scheduling_and_cancelling_each_registration_runs_at_most_once()
    {
        using var scheduler = Standalone();
        const int Threads = 4;
        const int PerThread = 2_500;
        var runs = new int[Threads * PerThread];
        var early = 0;
        var expected = new ConcurrentBag<int>();

        var workers = Enumerable.Range(0, Threads).Select(t => Task.Run(() =>
        {
            var random = new Random(t);
            for (var i = 0; i < PerThread; i++)
            {
                var id = (t * PerThread) + i;
                var delay = TimeSpan.FromMilliseconds(random.Next(0, 3));
                var scheduled = Stopwatch.GetTimestamp();
                var cancel = random.Next(3) == 0 ? new Cancelable((IScheduler)scheduler) : null;
                ((IScheduler)scheduler).Advanced.ScheduleOnce(delay, () =>
                {
                    if (Stopwatch.GetElapsedTime(scheduled) < delay)
                    {
                        Interlocked.Increment(ref early);
                    }

                    Interlocked.Increment(ref runs[id]);
                }, cancel);
                if (cancel is null)
                {
                    expected.Add(id);
                }
                else if (random.Next(2) == 0)
                {
                    cancel.Cancel();
                }
                else
                {
                    expected.Add(id);
                }
            }
        })).ToArray();
        await Task.WhenAll(workers);

        // Cancelled after it may have run, or never cancelled: it runs exactly once.
        await AwaitConditionAsync(() => Task.FromResult(expected.All(id => Volatile.Read(ref runs[id]) == 1)), TimeSpan.FromSeconds(60));
        await AwaitConditionAsync(() => Task.FromResult(scheduler.Pending == 0), TimeSpan.FromSeconds(60));
        Assert.All(runs, r => Assert.InRange(r, 0, 1));
        Assert.Equal(0, early);
        _output.WriteLine($"ran {runs.Sum()} of {runs.Length}, {runs.Length - expected.Count} cancelled before their time");
    }

    [Fact]
    public async Task A_shutdown_racing_timers_and_schedules_runs_each_registration_at_most_once_and_every_accepted_one()
    {
        var scheduler = Standalone();
        const int Threads = 4;
        const int Cap = 50_000;
        var runs = new int[Threads * Cap];
        var repeats = 0;
        var accepted = new ConcurrentBag<int>();
        var refused = new ConcurrentBag<int>();
        var halfway = new CountdownEvent(Threads);

        // Repeated ones too: a shutdown must not leave one armed behind it.
        for (var i = 0; i < 50; i++)
        {
            ((IScheduler)scheduler).Advanced.ScheduleRepeatedly(TimeSpan.FromMilliseconds(i % 3), TimeSpan.FromMilliseconds(1), () => Interlocked.Increment(ref repeats));
        }

        // Each thread schedules until the shutdown refuses it, so schedules race the shutdown.
        var workers = Enumerable.Range(0, Threads).Select(t => Task.Run(() =>
        {
            var random = new Random(t);
            for (var i = 0; i < Cap; i++)
            {
                if (i == 1_000)
                {
                    halfway.Signal();
                }

                var id = (t * Cap) + i;
                var cancel = random.Next(4) == 0 ? new Cancelable((IScheduler)scheduler) : null;
                try
                {
                    ((IScheduler)scheduler).Advanced.ScheduleOnce(TimeSpan.FromMilliseconds(random.Next(0, 3)), () => Interlocked.Increment(ref runs[id]), cancel);
                }
                catch (SchedulerException)
                {
                    refused.Add(id);
                    return;
                }

                if (cancel is null)
                {
                    accepted.Add(id);
                }
                else
                {
                    cancel.Cancel();
                }
            }
        })).ToArray();

        halfway.Wait(TimeSpan.FromSeconds(60));
        scheduler.Dispose();
        await Task.WhenAll(workers);

        // Every accepted one ran, by its timer or by the shutdown, exactly once; a refused one never.
        await AwaitConditionAsync(() => Task.FromResult(accepted.All(id => Volatile.Read(ref runs[id]) == 1)), TimeSpan.FromSeconds(60));
        await AwaitConditionAsync(() => Task.FromResult(scheduler.Pending == 0), TimeSpan.FromSeconds(60));
        Assert.All(runs, r => Assert.InRange(r, 0, 1));
        Assert.All(refused, id => Assert.Equal(0, runs[id]));
        Assert.Equal(Threads, refused.Count);

        // Nothing was left armed: the repeated actions stay still (a fence on another scheduler).
        var repeated = Volatile.Read(ref repeats);
        var fence = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        Sys.Scheduler.Advanced.ScheduleOnce(TimeSpan.FromMilliseconds(30), () => fence.SetResult());
        await fence.Task.WaitAsync(TimeSpan.FromSeconds(30));
        Assert.Equal(repeated, Volatile.Read(ref repeats));
        _output.WriteLine($"accepted {accepted.Count}, refused after the shutdown {refused.Count}, repeated runs {repeated}");
    }

    private sealed record Tick : INotInfluenceReceiveTimeout;

    private sealed class IdleWatcher : ReceiveActor, IWithTimers
    {
        public IdleWatcher(IActorRef probe)
        {
            Receive<Tick>(_ => { });
            Receive<ReceiveTimeout>(t => probe.Tell(t));
            Receive<string>(_ =>
            {
                Timers.Cancel("tick");
                probe.Tell("stopped");
            });
        }

        public ITimerScheduler Timers { get; set; } = null!;

        protected override void PreStart()
        {
            Timers.StartPeriodicTimer("tick", new Tick(), TimeSpan.FromMilliseconds(5));
            Context.SetReceiveTimeout(TimeSpan.FromMilliseconds(100));
        }
    }

    private TimerQueueScheduler Standalone() => new(ConfigurationFactory.Empty, Sys.Log);
}
