using ActorBlk.Actors.Tests.Support;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;
using ActorBlk.Testing;
using Akka.Configuration;
using Xunit;
using Xunit.Abstractions;

namespace ActorBlk.Actors.Tests;

/// <summary>
/// Teardown under a retry storm (issue 16 item 2): callers that resubmit at once after every
/// error keep hammering a device while it is destroyed. Destroy finishes in bounded time, I/O to
/// the dying or dead queue fails fast with a typed error, and once destroy returned the name is
/// free. Liveness checks are bounded so a hang fails the test.
/// </summary>
public abstract class TeardownStormSpec : Akka.TestKit.Xunit2.TestKit
{
    private static readonly TimeSpan Generous = TimeSpan.FromSeconds(60);

    // AwaitConditionAsync polls every tenth of its limit unless told otherwise (seconds here).
    private static readonly TimeSpan Poll = TimeSpan.FromMilliseconds(10);

    private readonly TempDirectory _dir;

    protected TeardownStormSpec(DispatchMode mode, ITestOutputHelper output, IrqMode irqMode = IrqMode.SoftIrq)
        : base(Configs.Simulated, output: output)
    {
        Mode = mode;
        Irq = irqMode;
        _dir = new TempDirectory("actorblk-storm");
    }

    protected DispatchMode Mode { get; }

    protected IrqMode Irq { get; }

    private BlockLayer Layer => BlockLayer.Get(Sys);

    protected override void AfterAll()
    {
        base.AfterAll();
        _dir.Dispose();
    }

    private Task<IBlockDevice> CreateNull(string name) => Layer.CreateDeviceAsync(new DeviceOptions
    {
        Name = name,
        Dispatch = Mode,
        Size = 16 << 20,
        MemoryBacked = true,
        SubmitQueues = 2,
        PollQueues = 0,
        HwQueueDepth = 16,
        IrqMode = Irq,
    });

    private async Task<IBlockDevice> CreateFile(string name)
    {
        var path = _dir.File($"{name}.img");
        var entry = ConfigurationFactory.ParseString(
            $"name = {name}, driver = file, path = \"{path}\", size = 8m, submit_queues = 2, hw_queue_depth = 16, dispatch = {Mode.ToString().ToLowerInvariant()}");
        return await Layer.CreateDeviceAsync(DeviceConfig.Parse(entry));
    }

    private static async Task Bounded(Task work, string what)
    {
        var winner = await Task.WhenAny(work, Task.Delay(Generous));
        Assert.True(winner == work, $"{what} did not finish within {Generous.TotalSeconds} s");
        await work;
    }

    // 16 naive callers: every error is answered by an immediate resubmission, until told to stop.
    private async Task Storm(IBlockDevice device, Func<IBlockDevice, Task<IBlockDevice>> recreate)
    {
        var name = device.Name;
        using var stop = new CancellationTokenSource();
        var errors = 0L;
        var oks = 0L;
        var untyped = 0L;
        var warm = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);

        async Task Caller(int c)
        {
            var buffer = new byte[4096];
            var i = 0;
            while (!stop.IsCancellationRequested)
            {
                try
                {
                    var offset = ((c * 97L) + i++) % 2048 * 4096;
                    if (i % 2 == 0)
                    {
                        await device.WriteAsync(offset, buffer, cpu: c % 4);
                    }
                    else
                    {
                        await device.ReadAsync(offset, buffer, cpu: c % 4);
                    }

                    if (Interlocked.Increment(ref oks) == 200)
                    {
                        warm.TrySetResult();
                    }
                }
                catch (BlockIoException)
                {
                    Interlocked.Increment(ref errors);
                }
                catch (InvalidBlockRequestException)
                {
                    Interlocked.Increment(ref errors);
                }
                catch (Exception)
                {
                    Interlocked.Increment(ref untyped);
                }

                // No yield: a failed I/O completes synchronously, so each caller spins on its
                // thread-pool thread, as a naive client does; teardown must finish regardless.
            }
        }

        var callers = Enumerable.Range(0, 16).Select(c => Task.Run(() => Caller(c))).ToArray();
        await Bounded(warm.Task, "the warm-up");
        await Bounded(Layer.DestroyDeviceAsync(name), "destroy under a retry storm");

        // Once destroy returned the name is free, while the storm still runs.
        Assert.False(Layer.TryGetDevice(name, out _));
        Assert.Equal(QueueState.Dead, device.Queue.State);
        var before = Interlocked.Read(ref errors);
        await Bounded(AwaitConditionAsync(() => Task.FromResult(Interlocked.Read(ref errors) > before + 1000), Generous, Poll), "fast failures after destroy");

        var again = await recreate(device);
        Assert.True(Layer.TryGetDevice(name, out var listed));
        Assert.Same(again, listed);
        await again.WriteAsync(0, new byte[4096]);

        stop.Cancel();
        await Bounded(Task.WhenAll(callers), "the callers");
        Assert.Equal(0, untyped);
        Assert.True(errors > 0);
        await Layer.DestroyDeviceAsync(name);
    }

    [Fact]
    public async Task Destroying_a_null_device_under_a_retry_storm_is_bounded_and_frees_the_name()
    {
        var device = await CreateNull("storm0");
        await Storm(device, _ => CreateNull("storm0"));
    }

    [Fact]
    public async Task Destroying_a_file_device_under_a_retry_storm_is_bounded_and_frees_the_name()
    {
        var device = await CreateFile("storm1");
        await Storm(device, _ => CreateFile("storm1"));
    }

    [Fact]
    public async Task Destroying_a_device_under_a_storm_of_end_io_resubmissions_completes_every_bio_once()
    {
        // Callers that resubmit from their end_io call-back on every completion, success or error
        // (a loop like fio's): the path where a completion holds its tag and usage reference over
        // the call-back for the resubmission to take over, and, with inline completions in ring
        // dispatch, stages it on the dispatcher's own list.
        var name = "storm3";
        var device = await Layer.CreateDeviceAsync(new DeviceOptions
        {
            Name = name,
            Dispatch = Mode,
            Size = 16 << 20,
            MemoryBacked = true,
            SubmitQueues = 2,
            PollQueues = 0,
            HwQueueDepth = 16,
            IrqMode = IrqMode.None,
        });
        using var stop = new CancellationTokenSource();
        var callers = Enumerable.Range(0, 16).Select(c => new EndIoCaller(device, c, stop.Token)).ToArray();
        foreach (var caller in callers)
        {
            _ = Task.Run(caller.Next);
        }

        await Bounded(AwaitConditionAsync(() => Task.FromResult(callers.Sum(c => Interlocked.Read(ref c.Oks)) > 2000), Generous, Poll), "the warm-up");
        await Bounded(Layer.DestroyDeviceAsync(name), "destroy under a storm of end_io resubmissions");
        Assert.False(Layer.TryGetDevice(name, out _));
        var before = callers.Sum(c => Interlocked.Read(ref c.Failures));
        await Bounded(AwaitConditionAsync(() => Task.FromResult(callers.Sum(c => Interlocked.Read(ref c.Failures)) > before + 1000), Generous, Poll), "fast failures after destroy");

        stop.Cancel();
        await Bounded(Task.WhenAll(callers.Select(c => c.Stopped)), "the callers");
        foreach (var caller in callers)
        {
            Assert.Equal(Interlocked.Read(ref caller.Submitted), Interlocked.Read(ref caller.Completed));
        }

        Assert.Equal(0, device.Queue.DoubleCompletions);
        Assert.Equal(0, device.Queue.Usage.Count);
    }

    // One bio in flight, resubmitted from its own completion whatever the status; a refusal at
    // submission (the device is gone) is retried from the thread pool. Nested resubmissions (a
    // completion that ran inside its own submission) go through the pool too, so the stack stays flat.
    private sealed class EndIoCaller(IBlockDevice device, int index, CancellationToken stop) : IBioEndIo, IThreadPoolWorkItem
    {
        [ThreadStatic]
        private static int t_depth;

        private readonly byte[] _buffer = new byte[4096];
        private readonly TaskCompletionSource _stopped = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private int _i;
        public long Submitted;
        public long Completed;
        public long Oks;
        public long Failures;

        public Task Stopped => _stopped.Task;

        public void Next()
        {
            if (stop.IsCancellationRequested)
            {
                _stopped.TrySetResult();
                return;
            }

            var i = _i++;
            var offset = ((index * 97L) + i) % 2048 * 4096;
            Interlocked.Increment(ref Submitted);
            t_depth++;
            try
            {
                device.SubmitWithEndIo(i % 2 == 0 ? BlockOp.Write : BlockOp.Read, offset, 4096, _buffer, RequestFlags.None, index % 4, this);
            }
            catch (InvalidBlockRequestException)
            {
                // Refused before it was submitted: nothing will complete it.
                Interlocked.Decrement(ref Submitted);
                Interlocked.Increment(ref Failures);
                ThreadPool.UnsafeQueueUserWorkItem(this, preferLocal: false);
            }
            finally
            {
                t_depth--;
            }
        }

        public void OnBioComplete(Bio bio, BlockStatus status)
        {
            Interlocked.Increment(ref Completed);
            Interlocked.Increment(ref status == BlockStatus.Ok ? ref Oks : ref Failures);
            if (t_depth > 0)
            {
                ThreadPool.UnsafeQueueUserWorkItem(this, preferLocal: false);
                return;
            }

            Next();
        }

        void IThreadPoolWorkItem.Execute() => Next();
    }

    [Fact]
    public async Task Io_to_a_dead_queue_fails_fast_with_offline_and_allocates_nothing()
    {
        var device = await CreateNull("storm2");
        await Layer.DestroyDeviceAsync("storm2");
        var buffer = new byte[4096];

        // Warm the path once, then measure.
        Assert.Equal(BlockStatus.Offline, await device.ExecuteAsync(BlockOp.Read, 0, 4096, buffer));
        // The failure completes on the thread pool (so a retry loop yields), hence the process-wide
        // count; the actor system's own background work allows a little slack, far below one
        // object (24 bytes) per I/O.
        // The loop runs off the test framework's synchronization context, which would allocate a
        // post per await.
        const int count = 10_000;
        var wrong = 0;
        var allocated = GC.GetTotalAllocatedBytes(precise: true);
        await Task.Run(async () =>
        {
            for (var i = 0; i < count; i++)
            {
                var status = await device.ExecuteAsync(BlockOp.Read, 0, 4096, buffer);
                if (status != BlockStatus.Offline)
                {
                    wrong++;
                }
            }
        });

        var perIo = (GC.GetTotalAllocatedBytes(precise: true) - allocated) / (double)count;
        Assert.Equal(0, wrong);
        Assert.True(perIo < 24, $"{perIo:F1} bytes allocated per failed I/O");
        var error = await Assert.ThrowsAsync<BlockIoException>(async () => await device.WriteAsync(0, buffer));
        Assert.Equal(BlockStatus.Offline, error.Status);
        Assert.Equal(0, device.Queue.Usage.Count);
    }
}

/// <summary>Teardown storms in ring dispatch (alone: the allocation check reads a process-wide count).</summary>
[Collection(ProcessCountersCollection.Name)]
public sealed class RingTeardownStormSpec(ITestOutputHelper output) : TeardownStormSpec(DispatchMode.Ring, output);

/// <summary>Teardown storms in mailbox dispatch (alone: the allocation check reads a process-wide count).</summary>
[Collection(ProcessCountersCollection.Name)]
public sealed class MailboxTeardownStormSpec(ITestOutputHelper output) : TeardownStormSpec(DispatchMode.Mailbox, output);

/// <summary>
/// Teardown storms in mailbox dispatch with timer completions (irqmode 2): completions still armed
/// on the CPUs' mailbox threads (<c>CpuTimerHost</c>) when the device goes (alone: the allocation
/// check reads a process-wide count).
/// </summary>
[Collection(ProcessCountersCollection.Name)]
public sealed class MailboxTimerTeardownStormSpec(ITestOutputHelper output) : TeardownStormSpec(DispatchMode.Mailbox, output, IrqMode.Timer);
