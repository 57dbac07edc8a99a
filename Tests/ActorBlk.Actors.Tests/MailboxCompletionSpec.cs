using ActorBlk.Actors.Tests.Support;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;
using Xunit;
using Xunit.Abstractions;

namespace ActorBlk.Actors.Tests;

/// <summary>
/// Where completions run in mailbox dispatch: on the submitting CPU's mailbox thread. A timer
/// completion armed on that thread fires there (<see cref="CpuTimerHost"/>, as null_blk's hrtimer
/// fires on the CPU that armed it); one that completes on a thread foreign to the CPUs (here the
/// null timer's own thread, when a blocking driver arms it) is handed to the CPU's inbox
/// (<see cref="IQueueRuntime.CompletesInPlace"/>). Either way the end-io runs on the mailbox thread
/// and the bio it submits next takes the inline path. Counted with the threads' names and the
/// runtime's counters, never with time.
/// </summary>
public sealed class MailboxCompletionSpec : Akka.TestKit.Xunit2.TestKit
{
    private const int N = 32;
    private const string Cpu2Thread = "actorblk/mailbox/cpu2";
    private static readonly TimeSpan Liveness = TimeSpan.FromSeconds(60);
    private static readonly TimeSpan Poll = TimeSpan.FromMilliseconds(10);

    public MailboxCompletionSpec(ITestOutputHelper output)
        : base(Configs.Simulated, output: output)
    {
    }

    [Fact]
    public async Task A_timer_completion_armed_on_the_cpus_thread_fires_there_and_the_next_bio_is_submitted_inline()
    {
        var device = await CreateAsync("ctimer0", blocking: false);
        var runtime = (MailboxRuntime)device.Queue.Runtime;
        var thread = Cpu2();
        var fired = thread.TimersFired;
        var inline = thread.InlineSubmissions;
        var handedOver = runtime.CompletionsDrained(2);

        var ledger = await RunAsync(device);

        ledger.AssertAll(Cpu2Thread);
        await AwaitAssertAsync(() => Assert.Equal(fired + (2 * N), thread.TimersFired), Liveness, Poll);
        Assert.Equal(inline + N, thread.InlineSubmissions);
        Assert.Equal(handedOver, runtime.CompletionsDrained(2));
        Assert.Equal(0, thread.TimersArmed);
        Assert.Equal(0, device.Queue.DoubleCompletions);
    }

    [Fact]
    public async Task A_completion_on_a_foreign_thread_is_handed_to_the_submitting_cpus_thread()
    {
        // A blocking driver issues on a thread of its own, so the null timer's own thread fires
        // the completions: that thread is no CPU's, and each completion goes to CPU 2's inbox.
        var device = await CreateAsync("ctimer1", blocking: true);
        var runtime = (MailboxRuntime)device.Queue.Runtime;
        var thread = Cpu2();
        var fired = thread.TimersFired;
        var inline = thread.InlineSubmissions;
        var handedOver = runtime.CompletionsDrained(2);

        var ledger = await RunAsync(device);

        ledger.AssertAll(Cpu2Thread);
        Assert.Equal(handedOver + (2 * N), runtime.CompletionsDrained(2));
        Assert.Equal(inline + N, thread.InlineSubmissions);
        Assert.Equal(fired, thread.TimersFired);
        Assert.Equal(0, device.Queue.DoubleCompletions);
    }

    private async Task<IBlockDevice> CreateAsync(string name, bool blocking)
    {
        var device = await BlockLayer.Get(Sys).CreateDeviceAsync(new DeviceOptions
        {
            Name = name, Size = 16 << 20, SubmitQueues = 4, Dispatch = DispatchMode.Mailbox,
            IrqMode = IrqMode.Timer, CompletionNsec = 1_000, Blocking = blocking,
        });

        // One read first, so CPU 2's actors and thread exist.
        var warm = new Ledger(device, 1, resubmit: false);
        warm.Submit(0);
        await AwaitConditionAsync(() => Task.FromResult(warm.Completed == 1), Liveness, Poll);
        return device;
    }

    // N reads from the test thread on CPU 2; each end-io submits one more read on CPU 2.
    private async Task<Ledger> RunAsync(IBlockDevice device)
    {
        var ledger = new Ledger(device, N, resubmit: true);
        for (var i = 0; i < N; i++)
        {
            ledger.Submit(i);
        }

        await AwaitConditionAsync(() => Task.FromResult(ledger.Completed == 2 * N), Liveness, Poll);
        return ledger;
    }

    private MailboxDispatcher Cpu2() =>
        (MailboxDispatcher)Sys.Dispatchers.Lookup(MailboxDispatcherConfigurator.For(Sys, 2, false, TimeSpan.Zero, 64));

    // Counts each I/O's completions, its status and the thread each end-io ran on.
    private sealed class Ledger
    {
        private readonly IBlockDevice _device;
        private readonly int _count;
        private readonly bool _resubmit;
        private readonly int[] _calls;
        private readonly BlockStatus[] _status;
        private readonly string?[] _threads;
        private int _completed;

        public Ledger(IBlockDevice device, int count, bool resubmit)
        {
            _device = device;
            _count = count;
            _resubmit = resubmit;
            _calls = new int[2 * count];
            _status = new BlockStatus[2 * count];
            _threads = new string?[2 * count];
        }

        public int Completed => Volatile.Read(ref _completed);

        public void Submit(int id) =>
            _device.SubmitWithEndIo(BlockOp.Read, (long)id * 8192, 4096, new byte[4096], RequestFlags.None, 2, new End(this, id));

        public void AssertAll(string thread)
        {
            for (var i = 0; i < _calls.Length; i++)
            {
                Assert.True(Volatile.Read(ref _calls[i]) == 1, $"I/O {i} completed {_calls[i]} times");
                Assert.Equal(BlockStatus.Ok, _status[i]);
                Assert.Equal(thread, _threads[i]);
            }
        }

        private sealed class End(Ledger ledger, int id) : IBioEndIo
        {
            public void OnBioComplete(Bio bio, BlockStatus status)
            {
                ledger._status[id] = status;
                ledger._threads[id] = Thread.CurrentThread.Name;
                Interlocked.Increment(ref ledger._calls[id]);
                if (ledger._resubmit && id < ledger._count)
                {
                    ledger.Submit(id + ledger._count);
                }

                Interlocked.Increment(ref ledger._completed);
            }
        }
    }
}
