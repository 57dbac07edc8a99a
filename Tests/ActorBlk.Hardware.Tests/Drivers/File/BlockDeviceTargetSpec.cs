using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers.File;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;
using ActorBlk.Hardware.Topology;
using ActorBlk.Testing;
using Xunit;

namespace ActorBlk.Hardware.Tests.Drivers.File;

/// <summary>
/// The file device over a real block device (a loop device): geometry from BLKGETSIZE64 and
/// BLKSSZGET, discard through BLKDISCARD, write-zeroes through BLKZEROOUT, and the exclusive open
/// that keeps a second user off. Skipped where loop devices cannot be created (not root).
/// </summary>
public sealed class BlockDeviceTargetSpec : IDisposable
{
    private readonly TempDirectory _dir = new("actorblk-loop");
    private readonly LoopDevice? _loop;
    private readonly string? _reason;

    public BlockDeviceTargetSpec()
    {
        _loop = LoopDevice.TryAttach(_dir.CreateFile("backing.img", 8 << 20), out _reason);
    }

    public void Dispose()
    {
        _loop?.Dispose();
        _dir.Dispose();
    }

    private static byte[] Pattern(int length, int seed)
    {
        var data = new byte[length];
        new Random(seed).NextBytes(data);
        return data;
    }

    [SkippableTheory]
    [InlineData(IoEngine.IoUring)]
    [InlineData(IoEngine.Psync)]
    public async Task A_block_device_serves_reads_writes_discard_and_write_zeroes(IoEngine engine)
    {
        Skip.If(_loop is null, _reason);
        using var softIrq = new BlockSoftIrq(2);
        await using var device = DeviceBuilder.CreateRingDevice(
            new DeviceOptions { Name = "loopdisk", Driver = "file", Path = _loop!.Path, Engine = engine, SubmitQueues = 2 },
            CpuTopology.Simulated(2), softIrq);
        var driver = Assert.IsType<FileBlockDriver>(device.Queue.Driver);

        Assert.True(driver.IsBlockDevice);
        Assert.Equal(8L << 20, device.Capacity);
        Assert.Contains("block device", driver.Description, StringComparison.Ordinal);

        var data = Pattern(1 << 20, 21);
        await device.WriteAsync(0, data);
        await device.FlushAsync();
        await device.DiscardAsync(128 * 1024, 128 * 1024);
        await device.WriteZeroesAsync(512 * 1024, 64 * 1024);

        var back = new byte[1 << 20];
        await device.ReadAsync(0, back);
        var expected = (byte[])data.Clone();
        Array.Clear(expected, 128 * 1024, 128 * 1024);
        Array.Clear(expected, 512 * 1024, 64 * 1024);
        Assert.Equal(expected, back);
    }

    [SkippableTheory]
    [InlineData(IoEngine.IoUring)]
    [InlineData(IoEngine.Psync)]
    public async Task A_flush_and_a_preflush_write_reach_the_disk_as_cache_flushes(IoEngine engine)
    {
        // /sys/block/loopN/stat counts flush requests the device completed (field 16): a flush
        // after writes is an fdatasync of the block device, which the kernel sends down as a
        // cache flush; a pre-flush write sends one before its data.
        Skip.If(_loop is null, _reason);
        using var softIrq = new BlockSoftIrq(2);
        await using var device = DeviceBuilder.CreateRingDevice(
            new DeviceOptions { Name = "flushdisk", Driver = "file", Path = _loop!.Path, Engine = engine }, CpuTopology.Simulated(2), softIrq);
        var stat = $"/sys/block/{Path.GetFileName(_loop.Path)}/stat";
        long Flushes() => long.Parse(System.IO.File.ReadAllText(stat).Split(' ', StringSplitOptions.RemoveEmptyEntries)[15]);

        await device.WriteAsync(0, Pattern(65536, 31));
        var before = Flushes();
        await device.FlushAsync();
        var afterFlush = Flushes();
        await device.WriteAsync(65536, Pattern(4096, 32), RequestFlags.PreFlush);
        var afterPreflush = Flushes();

        Assert.True(afterFlush > before, $"flushes {before} -> {afterFlush}");
        Assert.True(afterPreflush > afterFlush, $"flushes {afterFlush} -> {afterPreflush}");
    }

    [SkippableFact]
    public void A_block_device_in_use_is_busy()
    {
        Skip.If(_loop is null, _reason);
        using var first = new FileBlockDriver(new FileBlockOptions { Path = _loop!.Path }, "first");

        var error = Assert.Throws<BlockDeviceOpenException>(() => new FileBlockDriver(new FileBlockOptions { Path = _loop.Path }, "second"));
        Assert.Equal(OpenFailure.Busy, error.Cause);
        Assert.Contains("second", error.Message, StringComparison.Ordinal);
    }

    [SkippableFact]
    public void A_size_beyond_the_block_device_is_too_small()
    {
        Skip.If(_loop is null, _reason);
        var error = Assert.Throws<BlockDeviceOpenException>(() => new FileBlockDriver(new FileBlockOptions { Path = _loop!.Path, SizeBytes = 16 << 20 }, "big"));
        Assert.Equal(OpenFailure.TooSmall, error.Cause);
    }
}
