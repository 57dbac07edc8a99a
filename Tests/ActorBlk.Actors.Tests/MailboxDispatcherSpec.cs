using ActorBlk.Actors.Tests.Support;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;
using Akka.Actor;
using Akka.Configuration;
using Xunit;
using Xunit.Abstractions;

namespace ActorBlk.Actors.Tests;

/// <summary>
/// The per-CPU dispatcher of mailbox dispatch (<see cref="MailboxDispatcher"/>): each CPU's
/// software-context actor and the driver actors homed on that CPU run on one thread; a bio an
/// end-io submits on that thread runs its submission path at once; the thread neither loses a
/// wake-up nor outlives its dispatcher or actor system.
/// </summary>
public sealed class MailboxDispatcherSpec : Akka.TestKit.Xunit2.TestKit
{
    private static readonly TimeSpan Liveness = TimeSpan.FromSeconds(60);

    // AwaitConditionAsync polls every tenth of its limit unless told otherwise (seconds here).
    private static readonly TimeSpan Poll = TimeSpan.FromMilliseconds(10);

    public MailboxDispatcherSpec(ITestOutputHelper output)
        : base(Configs.Simulated, output: output)
    {
    }

    [Fact]
    public async Task A_closed_loop_runs_on_its_cpus_thread_and_submits_from_the_end_io_without_a_message()
    {
        const int Depth = 8;
        const int Ios = 20_000;
        var device = await BlockLayer.Get(Sys).CreateDeviceAsync(new DeviceOptions
        {
            Name = "loop0", Size = 16 << 20, SubmitQueues = 4, Dispatch = DispatchMode.Mailbox,
        });

        // Four CPUs, four hardware queues: hctx 2 is homed on CPU 2, so its driver actor shares
        // CPU 2's thread with the CPU's software-context actor.
        var loop = new ClosedLoop(device, Ios);
        for (var i = 0; i < Depth; i++)
        {
            loop.Start(cpu: 2);
        }

        await loop.Done.WaitAsync(Liveness);

        Assert.Equal(Ios + Depth, loop.Completed);
        Assert.Equal(0, loop.Errors);
        Assert.Equal(["actorblk/mailbox/cpu2"], loop.Threads.Distinct());
        var thread = (MailboxDispatcher)Sys.Dispatchers.Lookup(MailboxDispatcherConfigurator.For(Sys, 2, false, TimeSpan.Zero, 1));

        // Only the first bio of each slot travelled as a message; every resubmission from an end-io
        // on the driver actor's turn ran inline.
        Assert.True(thread.InlineSubmissions >= Ios - Depth, $"{thread.InlineSubmissions} of {Ios} submissions ran inline");
        Assert.Equal(0, device.Queue.DoubleCompletions);
        Assert.Equal(0, device.Queue.HardwareContexts.Sum(h => h.ActiveRequests));
    }

    [Fact]
    public async Task With_the_default_dispatcher_every_bio_is_a_message_and_io_completes()
    {
        using var system = ActorSystem.Create("default-dispatcher", ConfigurationFactory.ParseString("actorblk.mailbox.dispatcher = default").WithFallback(Configs.Simulated));
        try
        {
            var device = await BlockLayer.Get(system).CreateDeviceAsync(new DeviceOptions
            {
                Name = "dflt0", Size = 16 << 20, SubmitQueues = 4, Dispatch = DispatchMode.Mailbox,
            });

            var loop = new ClosedLoop(device, 2_000);
            for (var i = 0; i < 4; i++)
            {
                loop.Start(cpu: 1);
            }

            await loop.Done.WaitAsync(Liveness);
            Assert.Equal(2_004, loop.Completed);
            Assert.DoesNotContain(loop.Threads, t => t?.StartsWith("actorblk/mailbox/", StringComparison.Ordinal) == true);
        }
        finally
        {
            await system.Terminate();
        }
    }

    [Fact]
    public void A_malformed_mailbox_setting_is_refused()
    {
        Assert.Throws<ConfigurationException>(() => ActorBlkSettings.Create(ConfigurationFactory.ParseString("actorblk.mailbox.dispatcher = pinned")));
        Assert.Throws<ConfigurationException>(() => ActorBlkSettings.Create(ConfigurationFactory.ParseString("actorblk.mailbox.throughput = 0")));
        Assert.Throws<ConfigurationException>(() => ActorBlkSettings.Create(ConfigurationFactory.ParseString("actorblk.mailbox.spin-microseconds = -1")));
        Assert.Throws<ConfigurationException>(() => ActorBlkSettings.Create(ConfigurationFactory.ParseString("actorblk.mailbox.busy-spin-microseconds = -1")));
        Assert.Equal(TimeSpan.FromMicroseconds(1000), ActorBlkSettings.Create(ConfigurationFactory.Empty).MailboxBusySpin);
        var settings = ActorBlkSettings.Create(ConfigurationFactory.ParseString("actorblk.mailbox { dispatcher = default, throughput = 5, spin-microseconds = 0, busy-spin-microseconds = 0, pin = off }"));
        Assert.False(settings.MailboxDispatcher);
        Assert.False(settings.MailboxPin);
        Assert.True(ActorBlkSettings.Create(ConfigurationFactory.Empty).MailboxPin);
        Assert.Equal(5, settings.MailboxThroughput);
        Assert.Equal(TimeSpan.Zero, settings.MailboxSpin);
        Assert.Equal(TimeSpan.Zero, settings.MailboxBusySpin);
    }

    [Fact]
    public async Task Producers_racing_a_parking_thread_lose_no_message()
    {
        // No spin: the thread parks as soon as its queue is empty, so producers keep racing the
        // announcement that it sleeps. A lost wake-up leaves messages unprocessed for ever.
        const int Producers = 4;
        const int PerProducer = 50_000;
        var id = MailboxDispatcherConfigurator.For(Sys, 7, false, TimeSpan.Zero, 1);
        var dispatcher = (MailboxDispatcher)Sys.Dispatchers.Lookup(id);
        var counter = new Counter();
        var actor = Sys.ActorOf(Props.Create(() => new CountingActor(counter)).WithDispatcher(id));

        var producers = Enumerable.Range(0, Producers).Select(p => Task.Factory.StartNew(() =>
        {
            for (var i = 0; i < PerProducer; i++)
            {
                actor.Tell(i);
                if (i % 64 == p)
                {
                    Thread.Yield();
                }
            }
        }, TaskCreationOptions.LongRunning)).ToArray();
        await Task.WhenAll(producers);

        await AwaitConditionAsync(() => Task.FromResult(Volatile.Read(ref counter.Count) == Producers * PerProducer), Liveness, Poll);
        Assert.True(dispatcher.Parks > 0, "the thread never parked: the race was not exercised");
    }

    [Fact]
    public async Task A_shut_down_dispatcher_ends_its_thread_and_a_later_message_starts_another()
    {
        var id = MailboxDispatcherConfigurator.For(Sys, 9, false, TimeSpan.Zero, 8);
        var dispatcher = (MailboxDispatcher)Sys.Dispatchers.Lookup(id);
        var counter = new Counter();
        var actor = Sys.ActorOf(Props.Create(() => new CountingActor(counter)).WithDispatcher(id));
        actor.Tell(1);
        await AwaitConditionAsync(() => Task.FromResult(Volatile.Read(ref counter.Count) == 1), Liveness, Poll);
        Assert.True(dispatcher.IsRunning);
        Assert.Equal(1, dispatcher.ThreadsStarted);

        dispatcher.Terminate();
        await AwaitConditionAsync(() => Task.FromResult(!dispatcher.IsRunning), Liveness, Poll);

        actor.Tell(2);
        await AwaitConditionAsync(() => Task.FromResult(Volatile.Read(ref counter.Count) == 2), Liveness, Poll);
        Assert.Equal(2, dispatcher.ThreadsStarted);
    }

    [Fact]
    public async Task The_thread_ends_with_its_actor_system()
    {
        var system = ActorSystem.Create("ends", Configs.Simulated);
        var id = MailboxDispatcherConfigurator.For(system, 0, false, TimeSpan.FromMicroseconds(20), 64);
        var dispatcher = (MailboxDispatcher)system.Dispatchers.Lookup(id);
        var counter = new Counter();
        system.ActorOf(Props.Create(() => new CountingActor(counter)).WithDispatcher(id)).Tell(1);
        await AwaitConditionAsync(() => Task.FromResult(Volatile.Read(ref counter.Count) == 1), Liveness, Poll);

        await system.Terminate();
        await AwaitConditionAsync(() => Task.FromResult(!dispatcher.IsRunning), Liveness, Poll);
    }

    private sealed class Counter
    {
        public int Count;
    }

    private sealed class CountingActor(Counter counter) : UntypedActor
    {
        protected override void OnReceive(object message) => Interlocked.Increment(ref counter.Count);
    }

    // A closed loop like one bench job: each slot resubmits from its end-io with no CPU named, so
    // the next bio goes to the software context of the CPU the completion runs on.
    private sealed class ClosedLoop(IBlockDevice device, int ios)
    {
        private readonly TaskCompletionSource _done = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private readonly byte[] _buffer = new byte[4096];
        private readonly List<string?> _threads = [];
        private int _left = ios;
        private int _inFlight;
        private int _completed;
        private int _errors;

        public Task Done => _done.Task;

        public int Completed => Volatile.Read(ref _completed);

        public int Errors => Volatile.Read(ref _errors);

        public IReadOnlyList<string?> Threads
        {
            get
            {
                lock (_threads)
                {
                    return [.. _threads];
                }
            }
        }

        public void Start(int cpu)
        {
            Interlocked.Increment(ref _inFlight);
            device.SubmitWithEndIo(BlockOp.Read, 0, _buffer.Length, _buffer, RequestFlags.None, cpu, new Slot(this));
        }

        private void OnComplete(Slot slot, BlockStatus status)
        {
            Interlocked.Increment(ref _completed);
            if (status != BlockStatus.Ok)
            {
                Interlocked.Increment(ref _errors);
            }

            lock (_threads)
            {
                _threads.Add(Thread.CurrentThread.Name);
            }

            var left = Interlocked.Decrement(ref _left);
            if (left >= 0)
            {
                var offset = (long)(left % 4096) * 4096;
                device.SubmitWithEndIo(BlockOp.Read, offset, _buffer.Length, _buffer, RequestFlags.None, IBlockDevice.AnyCpu, slot);
                return;
            }

            if (Interlocked.Decrement(ref _inFlight) == 0)
            {
                _done.TrySetResult();
            }
        }

        private sealed class Slot(ClosedLoop loop) : IBioEndIo
        {
            public void OnBioComplete(Bio bio, BlockStatus status) => loop.OnComplete(this, status);
        }
    }
}
