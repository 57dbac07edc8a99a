using ActorBlk.Hardware.Drivers;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;
using ActorBlk.Hardware.Tags;
using ActorBlk.Hardware.Topology;

namespace ActorBlk.Testing;

/// <summary>Builds queues over a simulated topology with a manual runtime.</summary>
public static class TestQueues
{
    public static (RequestQueue Queue, ManualRuntime Runtime) Create(
        IBlockDriver driver,
        int cpus = 4,
        int hwQueues = 1,
        int depth = 64,
        int reserved = 0,
        QueueOptions? options = null,
        CpuTopology? topology = null,
        TagSet? tagSet = null,
        int pollQueues = 0,
        string name = "test0",
        BlockClock? clock = null,
        DispatchMode mode = DispatchMode.Ring)
    {
        topology ??= CpuTopology.Simulated(cpus);
        tagSet ??= new TagSet(new TagSetOptions { HardwareQueues = hwQueues, QueueDepth = depth, ReservedTags = reserved, PollQueues = pollQueues, Seed = 7 }, topology, driver.InitRequest);
        var queue = new RequestQueue(name, tagSet, driver, options, clock);
        tagSet.AddQueue(queue);
        var runtime = new ManualRuntime { Mode = mode };
        queue.Start(runtime);
        return (queue, runtime);
    }

    /// <summary>
    /// A queue served by a real dispatch loop (<see cref="RingRuntime"/>, no spin, no direct
    /// issue) over a <see cref="ScriptedDriver"/> that completes inline: one hardware queue of
    /// depth 64 on four simulated CPUs. The caller detaches the runtime.
    /// </summary>
    public static (RequestQueue Queue, RingRuntime Runtime, ScriptedDriver Driver) CreateLoop(BlockSoftIrq softIrq, string name, MergePolicy merges = MergePolicy.Off)
    {
        var driver = new ScriptedDriver { CompleteInline = true };
        var topology = CpuTopology.Simulated(4);
        var tagSet = new TagSet(new TagSetOptions { HardwareQueues = 1, QueueDepth = 64, Seed = 7 }, topology, driver.InitRequest);
        var queue = new RequestQueue(name, tagSet, driver, new QueueOptions { MergePolicy = merges });
        tagSet.AddQueue(queue);
        var runtime = new RingRuntime(softIrq, spin: TimeSpan.Zero, directIssue: false);
        queue.Start(runtime);
        return (queue, runtime, driver);
    }

    /// <summary>Rents and submits a bio on <paramref name="cpu"/>; returns its status task.</summary>
    public static ValueTask<BlockStatus> Submit(RequestQueue queue, BlockOp op, long sector, int sectors, int cpu = 0, RequestFlags flags = RequestFlags.None, byte[]? buffer = null)
    {
        var bio = queue.Bios.Rent();
        bio.Op = op;
        bio.Flags = flags;
        bio.Sector = sector;
        bio.Size = sectors << Bio.SectorShift;
        bio.Buffer = op.HasData() ? buffer ?? new byte[bio.Size] : default;
        bio.Cpu = cpu;
        bio.Plug = BlockPlug.Current;
        var task = bio.AsStatusTask();
        queue.Submit(bio);
        return task;
    }
}
