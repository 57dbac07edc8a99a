using ActorBlk.Actors.Tests.Support;
using Akka.Actor;
using Xunit;
using Xunit.Abstractions;

namespace ActorBlk.Actors.Tests;

/// <summary>
/// The idle spin of a per-CPU mailbox thread (<see cref="MailboxIdleSpin"/>): with I/O submitted on
/// its CPU outstanding the thread keeps spinning instead of parking, up to a bound; with nothing
/// outstanding it parks after the short spin (and one grace interval after work was last
/// expected). The policy is driven with made-up timestamps, the dispatcher with counts; no time.
/// </summary>
public sealed class MailboxIdleSpinSpec : Akka.TestKit.Xunit2.TestKit
{
    private static readonly TimeSpan Liveness = TimeSpan.FromSeconds(60);

    // AwaitConditionAsync polls every tenth of its limit unless told otherwise: 6 s per wait here.
    private static readonly TimeSpan Poll = TimeSpan.FromMilliseconds(10);

    public MailboxIdleSpinSpec(ITestOutputHelper output)
        : base(Configs.Simulated, output: output)
    {
    }

    [Fact]
    public void With_nothing_expected_the_thread_parks_after_the_short_spin()
    {
        var spin = new MailboxIdleSpin(spinTicks: 20, busySpinTicks: 1000);
        var probe = new Probe(false);
        spin.Begin(now: 100);

        Assert.True(spin.InInterval(119));
        Assert.False(spin.InInterval(120));
        Assert.False(spin.Extend(120, ref probe));
        Assert.Equal(1, probe.Asked);
        Assert.Equal(0, spin.Extensions);
    }

    [Fact]
    public void With_work_expected_the_thread_spins_up_to_the_bound_and_then_parks()
    {
        var spin = new MailboxIdleSpin(spinTicks: 20, busySpinTicks: 1000);
        var probe = new Probe(true);
        spin.Begin(now: 0);

        var now = 0L;
        var intervals = 0;
        while (true)
        {
            while (spin.InInterval(now))
            {
                now++;
            }

            if (!spin.Extend(now, ref probe))
            {
                break;
            }

            intervals++;
            Assert.True(intervals < 1000, "the spin never ended");
        }

        // Parked exactly at the bound, 1000 ticks after the queue ran empty, in intervals of 20.
        Assert.Equal(1000, now);
        Assert.Equal(49, intervals);
        Assert.Equal(49, spin.Extensions);
        Assert.Equal(1, spin.BoundReached);
    }

    [Fact]
    public void When_work_stops_being_expected_the_thread_spins_one_grace_interval_and_parks()
    {
        var spin = new MailboxIdleSpin(spinTicks: 20, busySpinTicks: 1000);
        var expected = new Probe(true);
        var none = new Probe(false);
        spin.Begin(now: 0);

        Assert.True(spin.Extend(20, ref expected));
        Assert.True(spin.InInterval(39));

        // The last completion made the count drop to zero; its end-io may publish the next bio
        // a moment later, so one more interval is spun before the thread parks.
        Assert.True(spin.Extend(40, ref none));
        Assert.False(spin.Extend(60, ref none));
        Assert.Equal(2, spin.Extensions);
        Assert.Equal(0, spin.BoundReached);
    }

    [Fact]
    public void A_bound_no_longer_than_the_spin_turns_the_busy_spin_off()
    {
        var spin = new MailboxIdleSpin(spinTicks: 20, busySpinTicks: 0);
        var probe = new Probe(true);
        spin.Begin(now: 0);

        Assert.False(spin.Extend(20, ref probe));
        Assert.Equal(0, probe.Asked);
        Assert.Equal(0, spin.BoundReached);

        // No spin at all: the thread parks as soon as its queue is empty.
        var none = new MailboxIdleSpin(spinTicks: 0, busySpinTicks: 0);
        none.Begin(now: 5);
        Assert.False(none.InInterval(5));
        Assert.False(none.Extend(5, ref probe));
    }

    [Fact]
    public async Task A_thread_whose_source_expects_work_does_not_park_until_it_stops_expecting_it()
    {
        // A spin of one microsecond and a bound of an hour: the idle thread asks its source again
        // and again, and parks only once the source expects nothing.
        var id = MailboxDispatcherConfigurator.For(Sys, 11, false, TimeSpan.FromMicroseconds(1), 8, TimeSpan.FromHours(1));
        var dispatcher = (MailboxDispatcher)Sys.Dispatchers.Lookup(id);
        var source = new Source { Expecting = true };
        dispatcher.Watch(source);
        var counter = new Counter();
        var actor = Sys.ActorOf(Props.Create(() => new CountingActor(counter)).WithDispatcher(id));

        actor.Tell(1);
        await AwaitConditionAsync(() => Task.FromResult(Volatile.Read(ref source.Asked) >= 1_000), Liveness, Poll);
        Assert.Equal(0, dispatcher.Parks);
        Assert.True(dispatcher.BusySpinExtensions > 0);

        source.Expecting = false;
        await AwaitConditionAsync(() => Task.FromResult(dispatcher.Parks == 1), Liveness, Poll);
        Assert.Equal(0, dispatcher.BusySpinBoundReached);

        // Unwatched, the source is not asked any more: the next idle period parks at once.
        dispatcher.Unwatch(source);
        source.Expecting = true;
        var asked = Volatile.Read(ref source.Asked);
        actor.Tell(2);
        await AwaitConditionAsync(() => Task.FromResult(dispatcher.Parks == 2), Liveness, Poll);
        Assert.Equal(2, Volatile.Read(ref counter.Count));
        Assert.Equal(asked, Volatile.Read(ref source.Asked));
    }

    private struct Probe(bool expects) : IExpectedWorkProbe
    {
        public int Asked;

        public bool ExpectsWork()
        {
            Asked++;
            return expects;
        }
    }

    private sealed class Source : IMailboxWorkSource
    {
        public volatile bool Expecting;
        public long Asked;

        public bool ExpectsWork
        {
            get
            {
                Interlocked.Increment(ref Asked);
                return Expecting;
            }
        }
    }

    private sealed class Counter
    {
        public int Count;
    }

    private sealed class CountingActor(Counter counter) : UntypedActor
    {
        protected override void OnReceive(object message) => Interlocked.Increment(ref counter.Count);
    }
}
