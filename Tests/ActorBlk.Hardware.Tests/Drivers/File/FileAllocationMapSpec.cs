using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers;
using ActorBlk.Hardware.Drivers.File;
using ActorBlk.Hardware.Interop;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;
using ActorBlk.Hardware.Topology;
using ActorBlk.Testing;
using Xunit;

namespace ActorBlk.Hardware.Tests.Drivers.File;

/// <summary>
/// The file device's allocation map (<see cref="IAllocationMap"/>, NBD block status) on real
/// sparse files, holes punched with <c>FALLOC_FL_PUNCH_HOLE</c>: on the temp directory's file
/// system (ext4 on the CI machine) and on tmpfs (/dev/shm), both of which answer SEEK_HOLE. A
/// device that serves a prefix of a larger file reports nothing past its end; a file cut behind
/// the device's back is no hole past its new end; a write that completed shows as data and a
/// discard as a hole again; a block device cannot tell.
/// </summary>
public sealed class FileAllocationMapSpec : IDisposable
{
    private const long KiB = 1024;
    private const long MiB = 1024 * KiB;

    private readonly List<string> _dirs = [];

    public void Dispose()
    {
        foreach (var dir in _dirs)
        {
            try
            {
                Directory.Delete(dir, recursive: true);
            }
            catch (IOException)
            {
            }
        }
    }

    [SkippableTheory]
    [InlineData("temp", 512)]
    [InlineData("temp", 4096)]
    [InlineData("shm", 512)]
    public void The_extent_walk_lists_the_data_and_the_holes_of_a_sparse_file(string root, int blockSize)
    {
        var path = SparseFile(root, "walk.img", 8 * MiB);
        Write(path, 1 * MiB, 8 * KiB);
        Write(path, 4 * MiB, 4 * KiB);
        Write(path, 6 * MiB, 64 * KiB);
        PunchHole(path, (6 * MiB) + (16 * KiB), 16 * KiB);
        Write(path, (8 * MiB) - (4 * KiB), 4 * KiB);

        using var driver = new FileBlockDriver(new FileBlockOptions { Path = path, Direct = false, BlockSize = blockSize });
        Assert.Equal(
            [
                (0L, 1 * MiB, false), (1 * MiB, 8 * KiB, true), ((1 * MiB) + (8 * KiB), (3 * MiB) - (8 * KiB), false),
                (4 * MiB, 4 * KiB, true), ((4 * MiB) + (4 * KiB), (2 * MiB) - (4 * KiB), false),
                (6 * MiB, 16 * KiB, true), ((6 * MiB) + (16 * KiB), 16 * KiB, false), ((6 * MiB) + (32 * KiB), 32 * KiB, true),
                ((6 * MiB) + (64 * KiB), (2 * MiB) - (68 * KiB), false), ((8 * MiB) - (4 * KiB), 4 * KiB, true),
            ],
            Walk(driver, 0, 8 * MiB));

        // A range asked about cuts the extent; so does an unaligned start (its first block decides).
        Assert.True(driver.TryGetExtent(0, 4 * KiB, out var length, out var allocated));
        Assert.Equal((4 * KiB, false), (length, allocated));
        Assert.True(driver.TryGetExtent((1 * MiB) + 512, 1 * MiB, out length, out allocated));
        Assert.Equal(((8 * KiB) - 512, true), (length, allocated));
    }

    [SkippableFact]
    public void A_device_smaller_than_its_file_reports_nothing_past_its_end()
    {
        var path = SparseFile("temp", "prefix.img", 8 * MiB);
        Write(path, 3 * MiB, 4 * KiB);
        using var driver = new FileBlockDriver(new FileBlockOptions { Path = path, SizeBytes = 2 * MiB, Direct = false });

        Assert.Equal([(0L, 2 * MiB, false)], Walk(driver, 0, 2 * MiB));
        Assert.Throws<ArgumentOutOfRangeException>(() => driver.TryGetExtent(0, (2 * MiB) + 512, out _, out _));
        Assert.Throws<ArgumentOutOfRangeException>(() => driver.TryGetExtent(2 * MiB, 512, out _, out _));
    }

    [SkippableFact]
    public async Task Past_the_end_of_a_file_cut_behind_the_devices_back_nothing_is_a_hole_because_reads_there_fail()
    {
        var path = SparseFile("temp", "cut.img", 4 * MiB);
        Write(path, 0, 64 * KiB);
        using var softIrq = new BlockSoftIrq(2);
        await using var device = DeviceBuilder.CreateRingDevice(
            new DeviceOptions { Name = "cut0", Driver = "file", Path = path, Direct = false, Engine = IoEngine.Psync },
            CpuTopology.Simulated(2), softIrq);
        var map = IAllocationMap.Of(device)!;

        // The lock is advisory: another process can cut the file (here, the test).
        Assert.Equal(0, Truncate(path, (1 * MiB) + 100));
        Assert.True(map.TryGetExtent(64 * KiB, (4 * MiB) - (64 * KiB), out var length, out var allocated));
        Assert.Equal(((1 * MiB) - (64 * KiB), false), (length, allocated));
        Assert.False(map.TryGetExtent(1 * MiB, 3 * MiB, out _, out _));
        Assert.False(map.TryGetExtent(2 * MiB, 2 * MiB, out _, out _));

        // What the map declines to call a hole fails to read: the block layer's answer agrees.
        await Assert.ThrowsAnyAsync<Exception>(async () => await device.ReadAsync(2 * MiB, new byte[4096]));
    }

    [SkippableTheory]
    [InlineData("temp", IoEngine.IoUring, true)]
    [InlineData("temp", IoEngine.Psync, false)]
    [InlineData("shm", IoEngine.IoUring, false)]
    public async Task A_completed_write_shows_as_data_and_a_discard_as_a_hole_again(string root, IoEngine engine, bool direct)
    {
        var path = SparseFile(root, "written.img", 4 * MiB);
        using var softIrq = new BlockSoftIrq(2);
        await using var device = DeviceBuilder.CreateRingDevice(
            new DeviceOptions { Name = "written0", Driver = "file", Path = path, Direct = direct, Engine = engine, SubmitQueues = 2 },
            CpuTopology.Simulated(2), softIrq);
        var map = IAllocationMap.Of(device);
        Assert.IsType<FileBlockDriver>(map);
        Assert.Equal([(0L, 4 * MiB, false)], Walk(map!, 0, 4 * MiB));

        var data = new byte[8 * KiB];
        new Random(3).NextBytes(data);
        await device.WriteAsync(1 * MiB, data);
        Assert.Equal([(0L, 1 * MiB, false), (1 * MiB, 8 * KiB, true), ((1 * MiB) + (8 * KiB), (3 * MiB) - (8 * KiB), false)], Walk(map!, 0, 4 * MiB));

        await device.DiscardAsync(1 * MiB, 4 * KiB);
        Assert.Equal([(0L, (1 * MiB) + (4 * KiB), false), ((1 * MiB) + (4 * KiB), 4 * KiB, true), ((1 * MiB) + (8 * KiB), (3 * MiB) - (8 * KiB), false)], Walk(map!, 0, 4 * MiB));
    }

    /// <summary>
    /// A write-zeroes that may unmap (NBD's WRITE_ZEROES without NO_HOLE, which nbdcopy and
    /// <c>qemu-img convert</c> send over a whole sparse destination) punches a hole, as the
    /// kernel's loop driver, nbdkit's file plugin and qemu-nbd with <c>--discard=unmap</c> do; one with
    /// <see cref="RequestFlags.NoUnmap"/> keeps the range provisioned. Every write-zeroes used to
    /// be <c>FALLOC_FL_ZERO_RANGE</c>, which allocates the whole range (unwritten extents): an
    /// outside audit's <c>nbdcopy</c> of a 1 GiB image holding 1 MiB of data left the 1 GiB
    /// sparse file behind the export fully allocated, and once anything read that file through
    /// the page cache, block status reported all of it as data.
    /// On tmpfs, which has no zero-range, the NoUnmap write-zeroes takes the fallback (punch, then
    /// allocate again; through io_uring the EOPNOTSUPP goes to the worker thread).
    /// </summary>
    [SkippableTheory]
    [InlineData("temp", IoEngine.IoUring, true)]
    [InlineData("temp", IoEngine.Psync, false)]
    [InlineData("shm", IoEngine.IoUring, false)]
    [InlineData("shm", IoEngine.Psync, false)]
    public async Task A_write_zeroes_that_may_unmap_frees_the_range_and_one_with_no_unmap_keeps_it_allocated(string root, IoEngine engine, bool direct)
    {
        var path = SparseFile(root, "zeroed.img", 8 * MiB);
        using var softIrq = new BlockSoftIrq(2);
        await using var device = DeviceBuilder.CreateRingDevice(
            new DeviceOptions { Name = "zeroed0", Driver = "file", Path = path, Direct = direct, Engine = engine },
            CpuTopology.Simulated(2), softIrq);
        var map = IAllocationMap.Of(device)!;
        var data = new byte[64 * KiB];
        new Random(7).NextBytes(data);
        await device.WriteAsync(1 * MiB, data);
        await device.FlushAsync();
        var written = AllocatedBytes(path);
        Assert.InRange(written, 64 * KiB, 1 * MiB);

        // The whole device, as nbdcopy zeroes its destination: nothing is allocated after it.
        await device.WriteZeroesAsync(0, 8 * MiB);
        Assert.Equal(0, AllocatedBytes(path));
        Assert.Equal([(0L, 8 * MiB, false)], Walk(map, 0, 8 * MiB));

        // NO_HOLE: the range stays (or becomes) provisioned, and reads as zeroes.
        Assert.Equal(BlockStatus.Ok, await device.ExecuteAsync(BlockOp.WriteZeroes, 2 * MiB, 1 * MiB, default, RequestFlags.NoUnmap));
        Assert.InRange(AllocatedBytes(path), 1 * MiB, 2 * MiB);
        var back = new byte[1 * MiB];
        new Random(8).NextBytes(back);
        await device.ReadAsync(2 * MiB, back);
        Assert.All(back, b => Assert.Equal(0, b));

        // Inside one page (and one file-system block): the punch zeroes those bytes only.
        await device.WriteAsync(4 * MiB, data.AsMemory(0, 8192));
        await device.WriteZeroesAsync((4 * MiB) + 512, 1024);
        var page = new byte[8192];
        await device.ReadAsync(4 * MiB, page);
        var expected = data[..8192];
        Array.Clear(expected, 512, 1024);
        Assert.Equal(expected, page);
    }

    [SkippableFact]
    public void A_disposed_driver_cannot_tell()
    {
        var path = SparseFile("temp", "disposed.img", 1 * MiB);
        var driver = new FileBlockDriver(new FileBlockOptions { Path = path, Direct = false });
        Assert.True(driver.TryGetExtent(0, 1 * MiB, out _, out var allocated));
        Assert.False(allocated);
        driver.Dispose();
        Assert.False(driver.TryGetExtent(0, 1 * MiB, out _, out _));
    }

    [SkippableFact]
    public void A_block_device_cannot_tell()
    {
        using var dir = new TempDirectory("actorblk-loop");
        using var loop = LoopDevice.TryAttach(dir.CreateFile("backing.img", 8 * MiB), out var reason);
        Skip.If(loop is null, reason);
        using var driver = new FileBlockDriver(new FileBlockOptions { Path = loop!.Path, Direct = false, ReadOnly = true });
        Assert.True(driver.IsBlockDevice);
        Assert.False(driver.TryGetExtent(0, 8 * MiB, out _, out _));
    }

    private static List<(long Offset, long Length, bool Data)> Walk(IAllocationMap map, long from, long end)
    {
        var extents = new List<(long, long, bool)>();
        for (var offset = from; offset < end;)
        {
            Assert.True(map.TryGetExtent(offset, end - offset, out var length, out var data), $"cannot tell at {offset}");
            Assert.InRange(length, 1, end - offset);

            // One state's consecutive extents read as one, as a client sees them.
            if (extents.Count > 0 && extents[^1].Item3 == data)
            {
                extents[^1] = (extents[^1].Item1, extents[^1].Item2 + length, data);
            }
            else
            {
                extents.Add((offset, length, data));
            }

            offset += length;
        }

        return extents;
    }

    // A sparse file (no data at all) under the temp directory or /dev/shm; skipped where that
    // directory is missing or its file system reports no holes.
    private string SparseFile(string root, string name, long length)
    {
        var parent = root == "shm" ? "/dev/shm" : Path.GetTempPath();
        Skip.IfNot(Directory.Exists(parent), $"{parent} does not exist");
        var dir = Path.Combine(parent, $"actorblk-seekhole-{Guid.NewGuid():N}");
        Directory.CreateDirectory(dir);
        _dirs.Add(dir);
        var path = Path.Combine(dir, name);
        using (var stream = new FileStream(path, FileMode.CreateNew, FileAccess.Write))
        {
            stream.SetLength(length);
        }

        var fd = LibC.Open(path, LibC.O_RDONLY | LibC.O_CLOEXEC, 0);
        Assert.True(fd >= 0, $"open {path}: {-fd}");
        try
        {
            Skip.IfNot(LibC.LSeek(fd, 0, LibC.SEEK_DATA) == -LibC.ENXIO, $"the file system of {parent} reports no holes (SEEK_DATA on an empty sparse file did not fail with ENXIO)");
        }
        finally
        {
            LibC.Close(fd);
        }

        return path;
    }

    private static void Write(string path, long offset, long length)
    {
        var data = new byte[length];
        new Random((int)(offset >> 12)).NextBytes(data);
        using var stream = new FileStream(path, FileMode.Open, FileAccess.Write);
        stream.Position = offset;
        stream.Write(data);
    }

    private static void PunchHole(string path, long offset, long length)
    {
        var fd = LibC.Open(path, LibC.O_RDWR | LibC.O_CLOEXEC, 0);
        Assert.True(fd >= 0, $"open {path}: {-fd}");
        try
        {
            Assert.Equal(0, LibC.FAllocate(fd, LibC.FALLOC_FL_PUNCH_HOLE | LibC.FALLOC_FL_KEEP_SIZE, offset, length));
        }
        finally
        {
            LibC.Close(fd);
        }
    }

    // st_blocks in bytes: what the file holds allocated, unwritten extents included.
    private static unsafe long AllocatedBytes(string path)
    {
        LibC.Statx statx;
        Assert.Equal(0, LibC.StatX(LibC.AT_FDCWD, path, 0, LibC.STATX_BASIC_STATS, &statx));
        return (long)statx.Blocks * 512;
    }

    private static int Truncate(string path, long length)
    {
        var fd = LibC.Open(path, LibC.O_RDWR | LibC.O_CLOEXEC, 0);
        Assert.True(fd >= 0, $"open {path}: {-fd}");
        try
        {
            return LibC.FTruncate(fd, length);
        }
        finally
        {
            LibC.Close(fd);
        }
    }
}
