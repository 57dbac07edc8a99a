using ActorBlk.Hardware.Drivers;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;
using ActorBlk.Hardware.Tags;
using ActorBlk.Hardware.Topology;
using ActorBlk.Testing;
using Xunit;

namespace ActorBlk.Hardware.Tests.Queues;

/// <summary>Two-phase initialisation of the data-plane queue (blk-mq-semantics §9-§10).</summary>
public sealed class QueueLifecycleSpec
{
    private static readonly CpuTopology Cpus = CpuTopology.Simulated(4);

    [Fact]
    public void A_placeholder_has_the_generic_defaults_and_nothing_per_cpu()
    {
        // §10 item 1: nr_requests = 128, a 30 s timeout, the counter in atomic mode, no mq parts.
        var queue = RequestQueue.Allocate("dm-0", Cpus);

        Assert.Equal(QueueKind.Placeholder, queue.Kind);
        Assert.Equal(QueueState.Allocated, queue.State);
        Assert.Equal(128, queue.NrRequests);
        Assert.Equal(30_000, queue.IoTimeoutMs);
        Assert.False(queue.Usage.IsPerCpu);
        Assert.Empty(queue.SoftwareContexts);
        Assert.Empty(queue.HardwareContexts);
        Assert.False(queue.AcceptsIo);
        Assert.Throws<InvalidOperationException>(() => queue.TagSet);
        Assert.Throws<InvalidOperationException>(() => queue.Driver);
        Assert.Throws<InvalidOperationException>(() => queue.Register());
        Assert.Throws<InvalidOperationException>(() => queue.Start(new ManualRuntime()));
    }

    [Fact]
    public async Task A_placeholder_initialised_as_multi_queue_later_serves_io_after_registration()
    {
        // §10 item 2: phase 2 on the existing queue: contexts for every possible CPU, the set's
        // hardware queues, nr_requests = the depth, the set's timeout; the type is then fixed.
        var queue = RequestQueue.Allocate("dm-1", Cpus);
        using var driver = new ScriptedDriver { CompleteInline = true };
        var tags = new TagSet(new TagSetOptions { HardwareQueues = 2, QueueDepth = 32, TimeoutMs = 7000 }, Cpus, driver.InitRequest);

        queue.InitializeMq(tags, driver);
        Assert.Equal(QueueKind.MultiQueue, queue.Kind);
        Assert.Equal(QueueState.Initialized, queue.State);
        Assert.Equal(4, queue.SoftwareContexts.Count);
        Assert.Equal(2, queue.HardwareContexts.Count);
        Assert.Equal(32, queue.NrRequests);
        Assert.Equal(7000, queue.IoTimeoutMs);
        Assert.False(queue.Usage.IsPerCpu);
        Assert.Throws<InvalidOperationException>(() => queue.InitializeMq(tags, driver));

        tags.AddQueue(queue);
        var runtime = new ManualRuntime();
        queue.Start(runtime);
        queue.Register();
        Assert.Equal(QueueState.Registered, queue.State);
        Assert.True(queue.Usage.IsPerCpu);
        Assert.NotNull(queue.Attributes.Current);

        var read = TestQueues.Submit(queue, BlockOp.Read, 0, 8, cpu: 1);
        var hctx = queue.SoftwareContexts[1].HardwareQueue(HctxType.Default).Index;
        runtime.RunRound(hctx);
        Assert.Equal(BlockStatus.Ok, await read);

        Assert.Equal(0, await queue.ShutdownAsync(TimeSpan.FromSeconds(5)));
        Assert.Equal(QueueState.Dead, queue.State);
        Assert.Null(queue.Attributes.Current);
    }

    [Fact]
    public void An_unregistered_queue_is_destroyed_in_place_and_a_registered_one_is_not()
    {
        using var driver = new ScriptedDriver();
        var tags = new TagSet(new TagSetOptions(), Cpus, driver.InitRequest);
        var probe = new RequestQueue("probe", tags, driver);
        probe.Destroy();
        Assert.Equal(QueueState.Dead, probe.State);
        Assert.Throws<InvalidOperationException>(() => probe.InitializeBioBased(new NoBios()));

        var (live, _) = TestQueues.Create(driver, tagSet: tags, name: "live");
        live.Register();
        Assert.Throws<InvalidOperationException>(() => live.Destroy());
    }

    private sealed class NoBios : IBioDriver
    {
        public QueueLimits Limits { get; } = new();

        public string Description => "none";

        public void SubmitBio(RequestQueue queue, Bio bio) => queue.EndBio(bio, BlockStatus.NotSupported);

        public void Detach(RequestQueue queue)
        {
        }

        public void Dispose()
        {
        }
    }
}
