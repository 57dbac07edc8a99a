using ActorBlk.Actors.Tests.Support;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;
using ActorBlk.Hardware.Topology;
using ActorBlk.Testing;
using Akka.Actor;
using Xunit;
using Xunit.Abstractions;

namespace ActorBlk.Actors.Tests;

/// <summary>
/// The message path of mailbox dispatch (<see cref="MailboxRuntime"/>): bios and redirected
/// completions from threads other than their context's own are published to the context's inbox,
/// and one <see cref="MailboxRuntime.DrainInbox"/> message carries a whole burst; the context
/// actor runs the burst in one turn and its requests reach the driver in one dispatch round.
/// Counted with the runtime's counters and probes, never with time.
/// </summary>
public sealed class MailboxInboxSpec : Akka.TestKit.Xunit2.TestKit
{
    private static readonly TimeSpan Liveness = TimeSpan.FromSeconds(60);

    // How often an awaited condition is looked at (the TestKit's default is coarse).
    private static readonly TimeSpan Poll = TimeSpan.FromMilliseconds(10);
    private readonly ITestOutputHelper _output;

    public MailboxInboxSpec(ITestOutputHelper output)
        : base(Configs.Simulated, output: output) => _output = output;

    [Fact]
    public async Task A_burst_of_bios_from_another_thread_costs_one_message_and_reaches_the_dispatcher_as_one_batch()
    {
        const int N = 40;
        var rig = new MailboxRig(new ScriptedDriver(), CpuTopology.Simulated(4, sockets: 2),
            new QueueOptions { MergePolicy = MergePolicy.Off, RqAffinity = CompletionAffinity.SubmittingCpu }, depth: 64);
        var contexts = Enumerable.Range(0, 4).Select(_ => CreateTestProbe()).ToArray();
        var dispatcher = CreateTestProbe();
        rig.Start([.. contexts.Select(p => p.Ref)], [dispatcher.Ref]);
        var ends = new EndIoLedger(N);

        // The test thread is no context's thread: every bio goes to CPU 2's inbox.
        for (var i = 0; i < N; i++)
        {
            rig.Device.SubmitWithEndIo(BlockOp.Read, (long)i * 8192, 4096, new byte[4096], RequestFlags.None, cpu: 2, ends.For(i));
        }

        await contexts[2].ExpectMsgAsync<MailboxRuntime.DrainInbox>();
        await contexts[2].ExpectNoMsgAsync(TimeSpan.FromMilliseconds(200));
        var counters = rig.Runtime.InboxCounters(2);
        Assert.Equal(1, counters.Messages);
        Assert.Equal(N, counters.Waiting);
        Assert.Equal(0, counters.Overflows);

        // The context actor's turn, as the actor runs it: the whole burst, one Run for the dispatcher.
        var ctx = rig.Queue.SoftwareContexts[2];
        using (CurrentCpu.Bind(2))
        {
            Assert.Equal(N, rig.Runtime.Drain(ctx));
        }

        await dispatcher.ExpectMsgAsync<HardwareQueue.Run>();
        await dispatcher.ExpectNoMsgAsync(TimeSpan.FromMilliseconds(200));
        var hctx = rig.Queue.HardwareContexts[0];
        rig.Runtime.BeginTurn(0);
        var batch = new Request[64];
        Assert.Equal(N, hctx.TakeBatch(batch));
        hctx.FinishRound(batch.AsSpan(0, N), hctx.Issue(rig.Driver, batch.AsSpan(0, N)));
        Assert.Equal(N, rig.Driver.Calls.Count);

        // Completions reaped on CPU 0 go back to CPU 2 (rq_affinity 2): one message for all of them.
        using (CurrentCpu.Bind(0))
        {
            Assert.Equal(N, rig.Driver.CompleteAll());
        }

        await contexts[2].ExpectMsgAsync<MailboxRuntime.DrainInbox>();
        await contexts[2].ExpectNoMsgAsync(TimeSpan.FromMilliseconds(200));
        Assert.Equal(0, ends.Completed);
        using (CurrentCpu.Bind(2))
        {
            Assert.Equal(N, rig.Runtime.Drain(ctx));
        }

        counters = rig.Runtime.InboxCounters(2);
        Assert.Equal(2, counters.Messages);
        Assert.Equal(2 * N, counters.Drained);
        Assert.Equal(2, counters.Turns);
        ends.AssertEachOnce(BlockStatus.Ok);
        Assert.Equal(0, rig.Queue.DoubleCompletions);
        foreach (var other in new[] { contexts[0], contexts[1], contexts[3] })
        {
            await other.ExpectNoMsgAsync(TimeSpan.Zero);
        }
    }

    [Fact]
    public async Task A_turn_runs_at_most_one_batch_and_asks_for_another_turn_for_the_rest()
    {
        const int N = MailboxRuntime.DrainBatch + 10;
        var rig = new MailboxRig(new ScriptedDriver(), CpuTopology.Simulated(4, sockets: 2), depth: 128);
        var contexts = Enumerable.Range(0, 4).Select(_ => CreateTestProbe()).ToArray();
        var dispatcher = CreateTestProbe();
        rig.Start([.. contexts.Select(p => p.Ref)], [dispatcher.Ref]);
        var ends = new EndIoLedger(N);
        for (var i = 0; i < N; i++)
        {
            rig.Device.SubmitWithEndIo(BlockOp.Read, (long)i * 8192, 4096, new byte[4096], RequestFlags.None, cpu: 1, ends.For(i));
        }

        await contexts[1].ExpectMsgAsync<MailboxRuntime.DrainInbox>();
        var ctx = rig.Queue.SoftwareContexts[1];
        using (CurrentCpu.Bind(1))
        {
            Assert.Equal(MailboxRuntime.DrainBatch, rig.Runtime.Drain(ctx));
        }

        // The rest waits for the next turn, which the first turn asked for itself.
        await contexts[1].ExpectMsgAsync<MailboxRuntime.DrainInbox>();
        using (CurrentCpu.Bind(1))
        {
            Assert.Equal(10, rig.Runtime.Drain(ctx));
        }

        await contexts[1].ExpectNoMsgAsync(TimeSpan.FromMilliseconds(200));
        Assert.Equal(2, rig.Runtime.InboxCounters(1).Messages);
        Assert.Equal(N, rig.Queue.HardwareContexts[0].Ring.Count);
    }

    [Fact]
    public async Task Bios_from_another_thread_while_the_cpus_thread_is_busy_cost_one_message_and_one_dispatch_round()
    {
        const int N = 48;
        var device = await BlockLayer.Get(Sys).CreateDeviceAsync(new DeviceOptions
        {
            Name = "inbox0", Size = 16 << 20, SubmitQueues = 4, Dispatch = DispatchMode.Mailbox, IrqMode = IrqMode.None,
        });
        var runtime = (MailboxRuntime)device.Queue.Runtime;

        // Four CPUs, four hardware queues: hctx 2 is homed on CPU 2, so its driver actor shares
        // CPU 2's thread with the CPU's software-context actor. One read first, so both exist.
        var warm = new EndIoLedger(1);
        device.SubmitWithEndIo(BlockOp.Read, 0, 4096, new byte[4096], RequestFlags.None, 2, warm.For(0));
        await AwaitConditionAsync(() => Task.FromResult(warm.Completed == 1), Liveness, Poll);

        using var gate = new Gate();
        Sys.ActorOf(Props.Create(() => new GateActor(gate)).WithDispatcher(MailboxDispatcherConfigurator.For(Sys, 2, false, TimeSpan.Zero, 64))).Tell("block");
        await AwaitConditionAsync(() => Task.FromResult(gate.Entered.IsSet), Liveness, Poll);

        var before = runtime.InboxCounters(2);
        var hctx = device.Queue.HardwareContexts[2];
        var queuedBefore = hctx.QueuedCount;
        var roundsOf32Before = hctx.DispatchedHistogram[6];
        var ends = new EndIoLedger(N);
        for (var i = 0; i < N; i++)
        {
            device.SubmitWithEndIo(BlockOp.Read, (long)i * 8192, 4096, new byte[4096], RequestFlags.None, 2, ends.For(i));
        }

        var waiting = runtime.InboxCounters(2);
        Assert.Equal(before.Messages + 1, waiting.Messages);
        Assert.Equal(N, waiting.Waiting);
        Assert.Equal(0, ends.Completed);

        gate.Release.Set();
        await AwaitConditionAsync(() => Task.FromResult(ends.Completed == N), Liveness, Poll);

        // The null driver completes each request inside its queueing call, so the last call-back
        // can run before the inbox's turn counts what it drained and before the dispatch round
        // records its size: await the counters, which then must match exactly.
        await AwaitAssertAsync(() =>
        {
            var after = runtime.InboxCounters(2);
            Assert.Equal(before.Messages + 1, after.Messages);
            Assert.Equal(before.Turns + 1, after.Turns);
            Assert.Equal(before.Drained + N, after.Drained);
            Assert.Equal(queuedBefore + N, hctx.QueuedCount);
            Assert.Equal(roundsOf32Before + 1, hctx.DispatchedHistogram[6]);
        }, Liveness, Poll);
        ends.AssertEachOnce(BlockStatus.Ok);
        Assert.Equal(0, device.Queue.DoubleCompletions);
    }

    [Fact]
    public async Task Bios_beyond_the_inbox_travel_as_messages_and_every_one_completes_once()
    {
        const int N = MailboxRuntime.InboxCapacity + 44;
        var device = await BlockLayer.Get(Sys).CreateDeviceAsync(new DeviceOptions
        {
            Name = "inbox1", Size = 16 << 20, SubmitQueues = 4, Dispatch = DispatchMode.Mailbox,
        });
        var runtime = (MailboxRuntime)device.Queue.Runtime;
        var warm = new EndIoLedger(1);
        device.SubmitWithEndIo(BlockOp.Read, 0, 4096, new byte[4096], RequestFlags.None, 3, warm.For(0));
        await AwaitConditionAsync(() => Task.FromResult(warm.Completed == 1), Liveness, Poll);

        using var gate = new Gate();
        Sys.ActorOf(Props.Create(() => new GateActor(gate)).WithDispatcher(MailboxDispatcherConfigurator.For(Sys, 3, false, TimeSpan.Zero, 64))).Tell("block");
        await AwaitConditionAsync(() => Task.FromResult(gate.Entered.IsSet), Liveness, Poll);

        var before = runtime.InboxCounters(3);
        var ends = new EndIoLedger(N);
        for (var i = 0; i < N; i++)
        {
            device.SubmitWithEndIo(BlockOp.Read, (long)(i % 2048) * 8192, 4096, new byte[4096], RequestFlags.None, 3, ends.For(i));
        }

        var waiting = runtime.InboxCounters(3);
        Assert.Equal(before.Messages + 1, waiting.Messages);
        Assert.Equal(before.Overflows + 44, waiting.Overflows);
        Assert.Equal(MailboxRuntime.InboxCapacity, waiting.Waiting);

        // More bios than tags (64): the rest wait for tags and resume through the inbox.
        gate.Release.Set();
        await AwaitConditionAsync(() => Task.FromResult(ends.Completed == N), Liveness, Poll);
        ends.AssertEachOnce(BlockStatus.Ok);
        Assert.Equal(0, device.Queue.DoubleCompletions);
        await AwaitAssertAsync(() => Assert.Equal(0, device.Queue.HardwareContexts.Sum(h => h.ActiveRequests)), Liveness, Poll);
    }

    [Fact]
    public async Task Producers_on_other_threads_racing_the_draining_turn_lose_no_bio()
    {
        // No spin: CPU 1's thread parks as soon as it is idle, so producers keep racing both the
        // inbox's scheduled flag and the thread's announcement that it sleeps. A lost wake-up
        // leaves bios in the inbox for ever.
        const int Producers = 4;
        const int PerProducer = 5_000;
        const int Depth = 16;
        using var system = ActorSystem.Create("inbox-race", Akka.Configuration.ConfigurationFactory.ParseString("actorblk.mailbox.spin-microseconds = 0").WithFallback(Configs.Simulated));
        try
        {
            var device = await BlockLayer.Get(system).CreateDeviceAsync(new DeviceOptions
            {
                Name = "inbox2", Size = 16 << 20, SubmitQueues = 2, Dispatch = DispatchMode.Mailbox, IrqMode = IrqMode.Timer, CompletionNsec = 1_000,
            });
            var runtime = (MailboxRuntime)device.Queue.Runtime;
            var ends = new EndIoLedger(Producers * PerProducer);
            var producers = Enumerable.Range(0, Producers).Select(p => Task.Factory.StartNew(() =>
            {
                using var slots = new SemaphoreSlim(Depth);
                for (var i = 0; i < PerProducer; i++)
                {
                    slots.Wait();
                    var id = (p * PerProducer) + i;
                    device.SubmitWithEndIo(BlockOp.Read, (long)(id % 2048) * 4096, 4096, new byte[4096], RequestFlags.None, 1, ends.For(id, slots));
                }

                for (var i = 0; i < Depth; i++)
                {
                    slots.Wait();
                }
            }, TaskCreationOptions.LongRunning)).ToArray();

            await Task.WhenAll(producers).WaitAsync(Liveness);
            ends.AssertEachOnce(BlockStatus.Ok);
            Assert.Equal(0, device.Queue.DoubleCompletions);
            // A turn counts what it drained after handing the last bio on, which may complete
            // (and release its producer) first: await the count.
            var counters = runtime.InboxCounters(1);
            await AwaitAssertAsync(() =>
            {
                counters = runtime.InboxCounters(1);
                Assert.True(counters.Drained >= Producers * PerProducer - counters.Overflows, $"{counters.Drained} drained, {counters.Overflows} overflowed");
                Assert.Equal(0, counters.Waiting);
            }, Liveness, Poll);

            // How much the inbox batched in this run (informative: it depends on the scheduling).
            _output.WriteLine($"{Producers * PerProducer} I/Os: {counters.Messages} DrainInbox messages, {counters.Turns} turns, {counters.Drained} items drained, {counters.Overflows} overflows");
        }
        finally
        {
            await system.Terminate();
        }
    }

    // Blocks the thread of the dispatcher it runs on until released (released at the latest when
    // the spec ends; the events are left to the finalizer, as the actor may still be leaving Wait).
    private sealed class Gate : IDisposable
    {
        public ManualResetEventSlim Entered { get; } = new();

        public ManualResetEventSlim Release { get; } = new();

        public void Dispose() => Release.Set();
    }

    private sealed class GateActor(Gate gate) : UntypedActor
    {
        protected override void OnReceive(object message)
        {
            gate.Entered.Set();
            gate.Release.Wait();
        }
    }

    // One end-io per I/O, counting how often each completed and with what status.
    private sealed class EndIoLedger(int count)
    {
        private readonly int[] _calls = new int[count];
        private readonly BlockStatus[] _status = new BlockStatus[count];
        private int _completed;

        public int Completed => Volatile.Read(ref _completed);

        public IBioEndIo For(int id, SemaphoreSlim? slot = null) => new End(this, id, slot);

        public void AssertEachOnce(BlockStatus expected)
        {
            for (var i = 0; i < _calls.Length; i++)
            {
                Assert.True(Volatile.Read(ref _calls[i]) == 1, $"I/O {i} completed {_calls[i]} times");
                Assert.Equal(expected, _status[i]);
            }
        }

        private sealed class End(EndIoLedger ledger, int id, SemaphoreSlim? slot) : IBioEndIo
        {
            public void OnBioComplete(Bio bio, BlockStatus status)
            {
                ledger._status[id] = status;
                Interlocked.Increment(ref ledger._calls[id]);
                Interlocked.Increment(ref ledger._completed);
                slot?.Release();
            }
        }
    }
}
