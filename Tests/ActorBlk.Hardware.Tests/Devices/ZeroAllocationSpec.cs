using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Topology;
using Xunit;
using static ActorBlk.Testing.AllocationMeter;

namespace ActorBlk.Hardware.Tests.Devices;

/// <summary>Allocation measurements read a process-wide counter: nothing else may run meanwhile.</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class AllocationCollection
{
    public const string Name = "allocation";
}

/// <summary>
/// The ring path allocates nothing per I/O in steady state: <c>ReadAsync</c> and <c>WriteAsync</c>
/// return <c>ValueTask</c>s backed by pooled bios, and awaiting them costs no allocation either.
/// </summary>
[Collection(AllocationCollection.Name)]
public sealed class ZeroAllocationSpec
{
    private const int Ios = 100_000;

    [Theory]
    [InlineData(IrqMode.None)]
    [InlineData(IrqMode.SoftIrq)]
    public async Task Awaited_reads_and_writes_allocate_nothing_per_io(IrqMode irqmode)
    {
        using var softIrq = new BlockSoftIrq(4);
        await using var device = DeviceBuilder.CreateRingDevice(
            new DeviceOptions { Name = "alloc", Size = 64 << 20, IrqMode = irqmode, MemoryBacked = true },
            CpuTopology.Simulated(4), softIrq);

        // Warm-up: JIT tiers, pools, lazily started workers.
        await RunIos(device, 20_000);

        // The least of three runs: the runtime's own background work (thread injection, tiering)
        // allocates now and then, whereas an allocation per I/O would show in every run.
        var once = await LeastOf(3, () => Measure(device, Ios));
        var twice = await LeastOf(3, () => Measure(device, 2 * Ios));

        // Doubling the I/O count must not double what is allocated: what little there is (a timer
        // or a thread-pool work item elsewhere in the process) does not scale with the I/Os.
        Assert.True(once < 64 * 1024, $"{once} bytes allocated over {Ios} I/Os");
        Assert.True(twice - once < 16 * 1024, $"{once} bytes for {Ios} I/Os but {twice} for {2 * Ios}");
    }
}
