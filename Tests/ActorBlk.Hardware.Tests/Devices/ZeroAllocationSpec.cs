using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Topology;
using Xunit;

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

    private static async Task<long> LeastOf(int runs, Func<Task<long>> measure)
    {
        var least = long.MaxValue;
        for (var i = 0; i < runs; i++)
        {
            least = Math.Min(least, await measure());
        }

        return least;
    }

    private static async Task<long> Measure(IBlockDevice device, int ios)
    {
        var before = GC.GetTotalAllocatedBytes(precise: true);
        await RunIos(device, ios);
        return GC.GetTotalAllocatedBytes(precise: true) - before;
    }

    // Runs on a pool thread without the test framework's synchronization context, with execution
    // context flow suppressed: the awaits are the application's, not xUnit's.
    private static Task RunIos(IBlockDevice device, int ios)
    {
        using (ExecutionContext.SuppressFlow())
        {
            return Task.Run(async () =>
            {
                var buffer = new byte[4096];
                for (var i = 0; i < ios; i++)
                {
                    var offset = (i % 4096) * 4096L;
                    if ((i & 1) == 0)
                    {
                        await device.WriteAsync(offset, buffer, cpu: i % 4);
                    }
                    else
                    {
                        await device.ReadAsync(offset, buffer, cpu: i % 4);
                    }
                }
            });
        }
    }
}
