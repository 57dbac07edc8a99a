using System.Threading.Channels;
using ActorBlk.Hardware.Drivers;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;
using ActorBlk.Hardware.Tags;
using ActorBlk.Hardware.Topology;
using Xunit;

namespace ActorBlk.Hardware.Tests.Queues;

/// <summary>
/// Issue 16 item 7: with the topology read from the system, dispatch loops run pinned to their
/// hardware queue's online CPUs and completion workers to their CPU (read back with
/// <c>sched_getaffinity</c> on the thread itself); with a simulated topology nothing is pinned and
/// CPUs are labels. Works on two CPUs; needs two to tell a pinned thread from an unpinned one.
/// </summary>
public sealed class ThreadPinningSpec
{
    private static readonly TimeSpan Within = TimeSpan.FromSeconds(60);

    // The CPUs this process may use (its main thread's mask): a pin is clipped to them.
    private static CpuSet ProcessCpus()
    {
        const string Key = "Cpus_allowed_list:";
        var line = File.ReadLines("/proc/self/status").First(l => l.StartsWith(Key, StringComparison.Ordinal));
        return CpuSet.Parse(line[Key.Length..].Trim());
    }

    [SkippableFact]
    public async Task With_the_system_topology_each_dispatch_loop_runs_pinned_to_its_queues_cpus()
    {
        var topology = CpuTopology.FromSysfs();
        var usable = topology.Online.Intersect(ProcessCpus());
        Skip.If(usable.Count < 2, $"one usable CPU ({usable}): a pinned thread looks like an unpinned one");

        await using var q = Start(topology, hardwareQueues: 2, CompletionAffinity.CacheGroup);
        foreach (var hctx in q.Queue.HardwareContexts)
        {
            var cpu = hctx.CpuMask.Intersect(usable).First;
            var done = q.Submit(cpu);
            var seen = await q.Driver.Queued.Reader.ReadAsync().AsTask().WaitAsync(Within);

            Assert.Equal(hctx.Index, seen.Hctx);
            Assert.Equal(hctx.CpuMask.Intersect(topology.Online).Intersect(usable), seen.Affinity);
            Assert.True(hctx.CpuMask.Contains(seen.Processor), $"hctx{hctx.Index} ran on CPU {seen.Processor}, outside {hctx.CpuMask}");

            // The thread is the CPU it runs on, not a label.
            Assert.Equal(-1, seen.Bound);
            Assert.True(seen.Request.End(BlockStatus.Ok));
            Assert.Equal(BlockStatus.Ok, (await done.Completion.Task.WaitAsync(Within)).Status);
        }
    }

    [SkippableFact]
    public async Task With_the_system_topology_a_redirected_completion_runs_on_a_worker_pinned_to_the_submitting_cpu()
    {
        var topology = CpuTopology.FromSysfs();
        var usable = topology.Online.Intersect(ProcessCpus());
        Skip.If(usable.Count < 2, $"one usable CPU ({usable}): nothing to redirect to");
        var submitCpu = usable.First;
        var completeCpu = usable.Next(submitCpu);

        await using var q = Start(topology, hardwareQueues: 1, CompletionAffinity.SubmittingCpu);
        var done = q.Submit(submitCpu);
        var seen = await q.Driver.Queued.Reader.ReadAsync().AsTask().WaitAsync(Within);

        // The "interrupt" arrives on another CPU: a thread of the spec pinned there completes it.
        bool pinned = false, completed = false;
        var interrupt = new Thread(() =>
        {
            pinned = CpuAffinity.TryPinCurrentThread(CpuSet.Of(completeCpu), "spec interrupt");
            completed = seen.Request.Complete(BlockStatus.Ok);
        });
        interrupt.Start();
        var ended = await done.Completion.Task.WaitAsync(Within);
        interrupt.Join();

        Assert.True(pinned);
        Assert.True(completed);

        Assert.Equal(BlockStatus.Ok, ended.Status);
        Assert.Equal($"actorblk-softirq/{submitCpu}", ended.Thread);
        Assert.Equal(CpuSet.Of(submitCpu), ended.Affinity);
        Assert.Equal(submitCpu, ended.Processor);
        Assert.True(q.SoftIrq.PinsWorkers);
    }

    [SkippableFact]
    public void With_the_system_topology_a_thread_that_is_not_ours_counts_as_the_cpu_it_runs_on()
    {
        var topology = CpuTopology.FromSysfs();
        var usable = topology.Online.Intersect(ProcessCpus());
        Skip.If(usable.Count < 2, $"one usable CPU ({usable})");

        // Pinned by the spec to each usable CPU in turn, an unbound thread resolves to exactly it.
        foreach (var cpu in usable)
        {
            var resolved = -1;
            var pinned = false;
            var thread = new Thread(() =>
            {
                pinned = CpuAffinity.TryPinCurrentThread(CpuSet.Of(cpu), "spec");
                resolved = CurrentCpu.Resolve(topology);
            });
            thread.Start();
            thread.Join();

            Assert.True(pinned);
            Assert.Equal(cpu, resolved);
        }
    }

    [SkippableFact]
    public async Task With_a_simulated_topology_nothing_is_pinned_and_cpus_are_labels()
    {
        var submitter = CpuAffinity.OfCurrentThread();
        Skip.If(submitter is null || submitter.Count < 2, "needs a thread allowed on two CPUs to tell a pin apart");

        // Two simulated CPUs, one hardware queue each: pinning hctx1 would narrow it to {1}.
        await using var q = Start(CpuTopology.Simulated(2), hardwareQueues: 2, CompletionAffinity.CacheGroup);
        var hctx = q.Queue.HardwareContexts[1];
        var done = q.Submit(cpu: 1);
        var seen = await q.Driver.Queued.Reader.ReadAsync().AsTask().WaitAsync(Within);

        // The dispatch thread kept the mask of the thread that started it, and counts as its home CPU.
        Assert.Equal(1, seen.Hctx);
        Assert.Equal(submitter, seen.Affinity);
        Assert.Equal(hctx.HomeCpu, seen.Bound);
        Assert.False(q.SoftIrq.PinsWorkers);
        Assert.True(seen.Request.End(BlockStatus.Ok));
        await done.Completion.Task.WaitAsync(Within);
    }

    private static PinnedQueue Start(CpuTopology topology, int hardwareQueues, CompletionAffinity affinity)
    {
        var driver = new HandOffDriver();
        var softIrq = new BlockSoftIrq(topology);
        var tagSet = new TagSet(new TagSetOptions { HardwareQueues = hardwareQueues, QueueDepth = 8 }, topology);
        var queue = new RequestQueue("pin0", tagSet, driver, new QueueOptions { RqAffinity = affinity, MergePolicy = MergePolicy.Off });
        tagSet.AddQueue(queue);
        var runtime = new RingRuntime(softIrq);
        queue.Start(runtime);
        return new PinnedQueue(queue, runtime, softIrq, driver);
    }

    private sealed record PinnedQueue(RequestQueue Queue, RingRuntime Runtime, BlockSoftIrq SoftIrq, HandOffDriver Driver) : IAsyncDisposable
    {
        public EndRecorder Submit(int cpu)
        {
            var recorder = new EndRecorder();
            var bio = Queue.Bios.Rent();
            bio.Op = BlockOp.Read;
            bio.Size = 512;
            bio.Buffer = new byte[512];
            bio.Cpu = cpu;
            bio.EndIo = recorder;
            Queue.Submit(bio);
            return recorder;
        }

        public async ValueTask DisposeAsync()
        {
            await Runtime.DetachAsync();
            SoftIrq.Dispose();
        }
    }

    /// <summary>What the thread that ran the call saw: its affinity, its CPU, its binding.</summary>
    private sealed record Seen(int Hctx, Request Request, CpuSet? Affinity, int Processor, int Bound);

    /// <summary>Starts each request and hands it to the spec, with what the dispatch thread saw.</summary>
    private sealed class HandOffDriver : IBlockDriver
    {
        public Channel<Seen> Queued { get; } = Channel.CreateUnbounded<Seen>();

        public string Kind => "hand-off";

        public QueueLimits Limits { get; } = new()
        {
            LogicalBlockSize = 512,
            PhysicalBlockSize = 512,
            CapacitySectors = 1 << 20,
            MaxHardwareSectors = QueueLimits.DefaultMaxSectors,
            MaxSectors = QueueLimits.DefaultMaxSectors,
        };

        public DriverFeatures Features => DriverFeatures.None;

        public BlockStatus QueueRq(HardwareContext hctx, Request request, bool last)
        {
            request.Start();
            Queued.Writer.TryWrite(new Seen(hctx.Index, request, CpuAffinity.OfCurrentThread(), CpuAffinity.CurrentProcessor(), CurrentCpu.Bound));
            return BlockStatus.Ok;
        }

        public void Dispose()
        {
        }
    }

    private sealed record Ended(BlockStatus Status, string? Thread, CpuSet? Affinity, int Processor);

    private sealed class EndRecorder : IBioEndIo
    {
        public TaskCompletionSource<Ended> Completion { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public void OnBioComplete(Bio bio, BlockStatus status) =>
            Completion.SetResult(new Ended(status, Thread.CurrentThread.Name, CpuAffinity.OfCurrentThread(), CpuAffinity.CurrentProcessor()));
    }
}
