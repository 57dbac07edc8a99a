using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers.File;
using ActorBlk.Hardware.IoUring;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Topology;
using ActorBlk.Testing;
using Xunit;

namespace ActorBlk.Hardware.Tests.Drivers.File;

/// <summary>
/// Opening the backing store: creation at a size, sizes taken from the file, the geometry, and
/// every way it can fail, each a <see cref="BlockDeviceOpenException"/> naming the device, the
/// path and the cause.
/// </summary>
[System.Runtime.Versioning.SupportedOSPlatform("linux")]
public sealed class FileOpenSpec : IDisposable
{
    private readonly TempDirectory _dir = new("actorblk-open");

    public void Dispose() => _dir.Dispose();

    private static FileBlockDriver Open(string path, long? size = null, bool direct = true, bool readOnly = false, int bs = 512) =>
        new(new FileBlockOptions { Path = path, SizeBytes = size, Direct = direct, ReadOnly = readOnly, BlockSize = bs }, "disk7");

    [Fact]
    public void A_missing_file_is_created_at_the_size_asked_for()
    {
        var path = _dir.File("new.img");
        using var driver = Open(path, 3 << 20);

        Assert.True(driver.CreatedFile);
        Assert.Equal(3L << 20, new FileInfo(path).Length);
        Assert.Equal((3L << 20) >> 9, driver.Limits.CapacitySectors);
    }

    [Fact]
    public void An_existing_file_serves_its_whole_blocks_or_the_prefix_asked_for()
    {
        var path = _dir.CreateFile("old.img", (1 << 20) + 100);
        using (var whole = Open(path))
        {
            Assert.False(whole.CreatedFile);
            Assert.Equal(1L << 20, whole.Limits.CapacityBytes);
        }

        using var prefix = Open(path, 512 * 1024);
        Assert.Equal(512L * 1024, prefix.Limits.CapacityBytes);
    }

    [Fact]
    public void Geometry_follows_the_kernel()
    {
        var path = _dir.CreateFile("geo.img", 1 << 20);
        using (var direct = Open(path))
        {
            // O_DIRECT: the logical block covers the direct-I/O offset alignment and memory has
            // an alignment.
            Assert.True(direct.Limits.LogicalBlockSize >= 512);
            Assert.True(direct.Limits.MemoryAlignment >= 1);
            Assert.True(direct.Limits.PhysicalBlockSize >= direct.Limits.LogicalBlockSize);
            Assert.True(direct.Limits.VolatileWriteCache);
            Assert.True(direct.Limits.MaxDiscardSectors > 0);
            Assert.False(direct.IsBlockDevice);
        }

        using (var buffered = Open(path, direct: false))
        {
            // Buffered I/O takes any memory.
            Assert.Equal(1, buffered.Limits.MemoryAlignment);
            Assert.Equal(512, buffered.Limits.LogicalBlockSize);
        }

        using var big = Open(path, bs: 4096);
        Assert.Equal(4096, big.Limits.LogicalBlockSize);
    }

    [Fact]
    public void A_file_another_device_serves_is_busy_but_readers_may_share()
    {
        var path = _dir.CreateFile("shared.img", 1 << 20);
        using (var first = Open(path))
        {
            var error = Assert.Throws<BlockDeviceOpenException>(() => Open(path));
            Assert.Equal(OpenFailure.Busy, error.Cause);
            Assert.Contains("in use", error.Message, StringComparison.Ordinal);
            Assert.Equal(OpenFailure.Busy, Assert.Throws<BlockDeviceOpenException>(() => Open(path, readOnly: true)).Cause);
        }

        using var reader = Open(path, readOnly: true);
        using var another = Open(path, readOnly: true);
        Assert.Equal(OpenFailure.Busy, Assert.Throws<BlockDeviceOpenException>(() => Open(path)).Cause);
    }

    [Fact]
    public void A_path_that_does_not_exist_without_a_size_is_not_found()
    {
        var path = _dir.File("absent.img");
        var error = Assert.Throws<BlockDeviceOpenException>(() => Open(path));

        Assert.Equal(OpenFailure.NotFound, error.Cause);
        Assert.Equal("disk7", error.Device);
        Assert.Equal(path, error.Path);
        Assert.Equal(2, error.Errno);
        Assert.Contains("disk7", error.Message, StringComparison.Ordinal);
        Assert.Contains(path, error.Message, StringComparison.Ordinal);
        Assert.False(System.IO.File.Exists(path));
    }

    [Fact]
    public void A_missing_directory_on_the_way_is_not_found()
    {
        var error = Assert.Throws<BlockDeviceOpenException>(() => Open(_dir.File("no/such/dir.img"), 1 << 20));
        Assert.Equal(OpenFailure.NotFound, error.Cause);
    }

    [Fact]
    public void A_directory_cannot_back_a_device()
    {
        var error = Assert.Throws<BlockDeviceOpenException>(() => Open(_dir.Path));
        Assert.Equal(OpenFailure.NotABlockTarget, error.Cause);
        Assert.Contains("directory", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void A_file_the_caller_may_not_open_is_permission_denied()
    {
        var path = _dir.CreateFile("private.img", 1 << 20);
        System.IO.File.SetUnixFileMode(path, UnixFileMode.UserRead | UnixFileMode.UserWrite);
        System.IO.File.SetUnixFileMode(_dir.Path, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute |
            UnixFileMode.OtherRead | UnixFileMode.OtherExecute);

        BlockDeviceOpenException? error = null;
        Unprivileged.Run(() => error = Assert.Throws<BlockDeviceOpenException>(() => Open(path)));

        Assert.Equal(OpenFailure.PermissionDenied, error!.Cause);
        Assert.Equal(13, error.Errno);
        Assert.Contains("permission denied", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void A_file_smaller_than_the_size_asked_for_is_too_small()
    {
        var path = _dir.CreateFile("small.img", 1 << 20);
        var error = Assert.Throws<BlockDeviceOpenException>(() => Open(path, 2 << 20));

        Assert.Equal(OpenFailure.TooSmall, error.Cause);
        Assert.Contains("1048576", error.Message, StringComparison.Ordinal);
        Assert.Contains("2097152", error.Message, StringComparison.Ordinal);
        Assert.Equal(1L << 20, new FileInfo(path).Length);
    }

    [Fact]
    public void A_file_smaller_than_one_block_is_too_small()
    {
        var path = _dir.CreateFile("tiny.img", 100);
        Assert.Equal(OpenFailure.TooSmall, Assert.Throws<BlockDeviceOpenException>(() => Open(path)).Cause);
    }

    [Fact]
    public void A_size_that_is_not_whole_blocks_is_refused()
    {
        var path = _dir.CreateFile("odd.img", 1 << 20);
        Assert.Equal(OpenFailure.Misaligned, Assert.Throws<BlockDeviceOpenException>(() => Open(path, 1000)).Cause);

        var options = new DeviceOptions { Name = "odd", Driver = "file", Path = path, Size = 1000 };
        Assert.Equal("size", Assert.Throws<DeviceOptionsException>(options.Validate).Option);
    }

    [Fact]
    public void Options_of_the_file_driver_are_checked()
    {
        Assert.Equal("path", Assert.Throws<DeviceOptionsException>(new DeviceOptions { Name = "f", Driver = "file" }.Validate).Option);
        Assert.Equal("path", Assert.Throws<DeviceOptionsException>(new DeviceOptions { Name = "n", Path = "/tmp/x" }.Validate).Option);
        Assert.Equal("submit_batch", Assert.Throws<DeviceOptionsException>(new DeviceOptions { Name = "f", Driver = "file", Path = "/tmp/x", SubmitBatch = -1 }.Validate).Option);
        Assert.Equal("driver", Assert.Throws<DeviceOptionsException>(new DeviceOptions { Name = "f", Driver = "floppy" }.Validate).Option);
    }

    [Fact]
    public void Io_poll_on_a_driver_that_cannot_poll_is_refused_before_the_file_is_opened()
    {
        // Accepted, it gave a device whose every polled submission was refused (an outside audit).
        // Refused before the driver opens anything: a file to be created is not created.
        var missing = Path.Combine(Path.GetDirectoryName(_dir.CreateFile("other.img", 4096))!, "never.img");
        Assert.Equal("io_poll", Assert.Throws<DeviceOptionsException>(() => DeviceBuilder.CreateDriver(
            new DeviceOptions { Name = "fnew", Driver = "file", Path = missing, Size = 1 << 20, IoPoll = true, PollQueues = 1 })).Option);
        Assert.False(System.IO.File.Exists(missing));

        var path = _dir.CreateFile("poll.img", 1 << 20);
        var options = new DeviceOptions { Name = "fpoll", Driver = "file", Path = path, IoPoll = true, PollQueues = 1 };

        var refused = Assert.Throws<DeviceOptionsException>(() => DeviceBuilder.CreateDriver(options));

        Assert.Equal("io_poll", refused.Option);
        Assert.Contains("cannot poll", refused.Message, StringComparison.Ordinal);
        // Nothing holds the file: it opens at once, exclusively.
        DeviceBuilder.CreateDriver(options with { IoPoll = false, PollQueues = 0 }).Dispose();
    }

    [Fact]
    public async Task A_read_only_device_refuses_writes_and_serves_reads()
    {
        var path = _dir.CreateFile("ro.img", 1 << 20, seed: 5);
        using var softIrq = new BlockSoftIrq(2);
        await using var device = DeviceBuilder.CreateRingDevice(
            new DeviceOptions { Name = "ro", Driver = "file", Path = path, ReadOnly = true }, CpuTopology.Simulated(2), softIrq);

        var error = await Assert.ThrowsAsync<InvalidBlockRequestException>(async () => await device.WriteAsync(0, new byte[4096]));
        Assert.Equal(InvalidRequestReason.ReadOnly, error.Reason);
        var back = new byte[4096];
        await device.ReadAsync(0, back);
        Assert.Equal(System.IO.File.ReadAllBytes(path)[..4096], back);
        await device.FlushAsync();
    }

    [Fact]
    public async Task Psync_serves_when_the_kernel_refuses_io_uring_and_says_why()
    {
        // A kernel where io_uring_setup fails with EPERM (kernel.io_uring_disabled = 2).
        var refused = IoUringSupport.Unavailable(1, IoUringSupport.ExplainSetupFailure(-1));
        var path = _dir.File("fallback.img");
        var driver = new FileBlockDriver(new FileBlockOptions { Path = path, SizeBytes = 1 << 20 }, "fb0", refused);

        Assert.Equal(IoEngine.IoUring, driver.RequestedEngine);
        Assert.Equal(IoEngine.Psync, driver.Engine);
        Assert.Contains("EPERM", driver.FallbackReason, StringComparison.Ordinal);
        Assert.Contains("io_uring_disabled", driver.FallbackReason, StringComparison.Ordinal);

        using var softIrq = new BlockSoftIrq(2);
        var tagSet = DeviceBuilder.CreateTagSet(new DeviceOptions { Name = "fb0" }, driver, CpuTopology.Simulated(2));
        var queue = new RequestQueue("fb0", tagSet, driver, new QueueOptions());
        tagSet.AddQueue(queue);
        queue.Start(new RingRuntime(softIrq));
        queue.Register();
        await using var device = new BlockDevice(queue, async d =>
        {
            await d.Queue.ShutdownAsync(TimeSpan.FromSeconds(5));
            driver.Dispose();
        });

        await device.WriteAsync(0, new byte[4096]);
        Assert.Contains("psync (fallback: io_uring_setup: not permitted (EPERM)", driver.Description, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(38, "ENOSYS")]
    [InlineData(1, "io_uring_disabled")]
    [InlineData(12, "locked-memory")]
    public void A_failed_io_uring_setup_is_explained(int errno, string words) =>
        Assert.Contains(words, IoUringSupport.ExplainSetupFailure(-errno), StringComparison.Ordinal);
}
