using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers;
using ActorBlk.Hardware.Topology;
using Xunit;

namespace ActorBlk.Hardware.Tests.Drivers;

/// <summary>null_blk's parameters and defaults (blk-mq-semantics §12).</summary>
public sealed class NullBlockDriverSpec
{
    [Fact]
    public void Defaults_are_null_blks()
    {
        // §12.1: gb = 250, bs = 512, submit_queues = 1, hw_queue_depth = 64, irqmode = 1, completion_nsec = 10000, timeout 5 s.
        var options = new DeviceOptions();
        var driver = new NullBlockDriver(options.ToNullBlockOptions());
        var set = DeviceBuilder.CreateTagSet(options, driver, CpuTopology.Simulated(4));

        Assert.Equal(250L << 30, driver.Limits.CapacityBytes);
        Assert.Equal(512, driver.Limits.LogicalBlockSize);
        Assert.Equal(IrqMode.SoftIrq, driver.Options.IrqMode);
        Assert.Equal(10_000, driver.Options.CompletionNsec);
        Assert.Equal(1, set.HardwareQueueCount);
        Assert.Equal(64, set.QueueDepth);
        Assert.Equal(5_000, options.EffectiveTimeoutMs);
        Assert.False(driver.Limits.VolatileWriteCache);
        Assert.Equal(0, driver.Limits.MaxDiscardSectors);
    }

    // §12.1: submit_queues 0 -> 1 (an outside audit saw 0 refused); a negative count is still refused.
    [Fact]
    public void Submit_queues_0_means_one_hardware_queue()
    {
        var options = new DeviceOptions { Name = "sq0", SubmitQueues = 0 };
        options.Validate();
        Assert.Equal(1, options.SubmitQueues);
        var driver = new NullBlockDriver(options.ToNullBlockOptions());
        Assert.Equal(1, DeviceBuilder.CreateTagSet(options, driver, CpuTopology.Simulated(4)).HardwareQueueCount);
        Assert.Throws<DeviceOptionsException>(() => new DeviceOptions { Name = "sq1", SubmitQueues = -1 }.Validate());
    }

    [Fact]
    public void Memory_backed_devices_block_and_support_discard()
    {
        var driver = new NullBlockDriver(new NullBlockOptions { SizeBytes = 1 << 20, MemoryBacked = true });

        Assert.True(driver.Features.HasFlag(DriverFeatures.Blocking));
        Assert.True(driver.Limits.MaxDiscardSectors > 0);
        Assert.NotNull(driver.Store);
    }

    [Theory]
    [InlineData(1000)]
    [InlineData(256)]
    [InlineData(8192)]
    public void Block_sizes_outside_512_to_4096_or_not_powers_of_two_are_refused(int bs)
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => new NullBlockDriver(new NullBlockOptions { BlockSize = bs }));
    }

    [Fact]
    public void A_size_that_is_not_a_multiple_of_the_block_size_is_refused()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => new NullBlockDriver(new NullBlockOptions { SizeBytes = 4097, BlockSize = 4096 }));
    }

    [Fact]
    public async Task Timer_mode_completes_after_completion_nsec()
    {
        using var softIrq = new ActorBlk.Hardware.Queues.BlockSoftIrq(2);
        await using var device = DeviceBuilder.CreateRingDevice(
            new DeviceOptions { Name = "timer", Size = 1 << 20, IrqMode = IrqMode.Timer, CompletionNsec = 2_000_000 },
            CpuTopology.Simulated(2), softIrq);
        var started = System.Diagnostics.Stopwatch.GetTimestamp();

        await device.ReadAsync(0, new byte[512]);

        // The timer fires no earlier than completion_nsec (2 ms) after dispatch.
        Assert.True(System.Diagnostics.Stopwatch.GetElapsedTime(started) >= TimeSpan.FromMilliseconds(2));
    }
}
