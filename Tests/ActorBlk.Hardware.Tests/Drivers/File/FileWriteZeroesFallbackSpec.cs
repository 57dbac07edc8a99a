using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers.File;
using ActorBlk.Hardware.Interop;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;
using ActorBlk.Hardware.Tests.Nbd;
using ActorBlk.Hardware.Topology;
using ActorBlk.Testing;
using Xunit;

namespace ActorBlk.Hardware.Tests.Drivers.File;

/// <summary>
/// A write-zeroes with <see cref="RequestFlags.NoUnmap"/> (<c>REQ_NOUNMAP</c>, NBD's NO_HOLE) on a
/// file device, over written data, with both engines: <c>FALLOC_FL_ZERO_RANGE</c> where the file
/// system has it (the temp directory's, ext4 on the CI machine), and where it refuses it with
/// EOPNOTSUPP (tmpfs, /dev/shm) the fallback of <c>FileEngine.ZeroFileRange</c>: a punched hole
/// allocated again (through io_uring the refused entry goes to the engine's worker thread). The
/// range reads as zeroes, its neighbours keep their bytes, each request completes once with Ok,
/// and no block of the range is freed (on tmpfs, where the kernel reports pages fallocated and not
/// yet written as holes, the range's whole pages then read as a hole in the allocation map).
/// </summary>
public sealed class FileWriteZeroesFallbackSpec : IDisposable
{
    private const long KiB = 1024;
    private const long MiB = 1024 * KiB;
    private const long FileBytes = 4 * MiB;
    private const long Written = 3 * MiB;

    private readonly List<string> _dirs = [];
    private readonly BlockSoftIrq _softIrq = new(2);

    public void Dispose()
    {
        _softIrq.Dispose();
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
    [InlineData("temp", IoEngine.IoUring, true)]
    [InlineData("temp", IoEngine.IoUring, false)]
    [InlineData("temp", IoEngine.Psync, true)]
    [InlineData("temp", IoEngine.Psync, false)]
    [InlineData("shm", IoEngine.IoUring, false)]
    [InlineData("shm", IoEngine.Psync, false)]
    [InlineData("shm", IoEngine.IoUring, true)]
    public async Task A_no_unmap_write_zeroes_over_data_zeroes_its_range_only_completes_once_and_keeps_it_allocated(string root, IoEngine engine, bool direct)
    {
        var path = SparseFile(root, "nounmap.img");
        await using var device = Open(path, engine, direct);
        var lbs = device.LogicalBlockSize;
        var data = new byte[Written];
        new Random(17).NextBytes(data);
        await device.WriteAsync(0, data);
        await device.FlushAsync();
        var allocated = AllocatedBytes(path);
        Assert.InRange(allocated, Written, Written + (256 * KiB));

        // Eight adjacent pieces at once over two CPUs (both hardware queues), the range starting
        // and ending a logical block inside a page: the fallback's punch must zero partial pages.
        var start = (1 * MiB) + lbs;
        var piece = (128 * KiB) + lbs;
        var ledger = new CompletionLedger(16);
        var zeroes = Enumerable.Range(0, 8)
            .Select(i => ledger.Submit(device, BlockOp.WriteZeroes, start + (i * piece), piece, default, cpu: i % 2, RequestFlags.NoUnmap))
            .ToArray();
        Assert.All(await Task.WhenAll(zeroes), s => Assert.Equal(BlockStatus.Ok, s));

        // Read through the device (after the write-zeroes, on both queues) and through a
        // descriptor of our own: only the range is zero.
        var back = new byte[FileBytes];
        await Task.WhenAll(
            device.ReadAsync(0, back.AsMemory(0, (int)(FileBytes / 2)), cpu: 0).AsTask(),
            device.ReadAsync(FileBytes / 2, back.AsMemory((int)(FileBytes / 2)), cpu: 1).AsTask());
        var expected = new byte[FileBytes];
        data.CopyTo(expected, 0);
        Array.Clear(expected, (int)start, (int)(8 * piece));
        Assert.True(expected.AsSpan().SequenceEqual(back), $"the device reads other bytes than the range at {start} (+{8 * piece}) zeroed: first difference at {expected.AsSpan().CommonPrefixLength(back)}");
        Assert.True(expected.AsSpan().SequenceEqual(System.IO.File.ReadAllBytes(path)), "the file holds other bytes than the range zeroed");

        // Exactly once each, nothing left held. The ledger's call-back runs while its request
        // still holds its tag (unless another waits), freed once the call-back returns
        // (CompleteHolding); the fallback completes on its worker thread, which the reads above do
        // not wait for: await the tags.
        Assert.Equal((8L, 8L, 0, 0), (ledger.Submitted, ledger.Completed, ledger.Duplicated, ledger.Missing));
        Assert.Equal(0, device.Queue.DoubleCompletions);
        await Condition.EventuallyAsync(() => device.Queue.HardwareContexts.All(h => h.Tags.InUse == 0), "every tag free once the last call-back returned");
        Assert.All(device.Queue.HardwareContexts, h => Assert.Equal(0, h.Tags.InUse));

        // Provisioned: no block of the range was freed. Zero range keeps them (unwritten); on
        // tmpfs the fallback allocates the punched range again, page for page. Fallocated tmpfs
        // pages not yet written are reported as holes, as ext4's unwritten extents are (the
        // allocation map then answers zeroes there): each piece's whole pages are a hole, a
        // page it shares with a neighbour (or the data around the range) is data.
        await device.FlushAsync();
        if (root == "shm")
        {
            Assert.Equal(allocated, AllocatedBytes(path));
            var page = Environment.SystemPageSize;
            var holes = new List<(long Start, long End)>();
            for (var i = 0; i < 8; i++)
            {
                var (from, to) = ((start + (i * piece) + page - 1) / page * page, (start + ((i + 1) * piece)) / page * page);
                if (holes.Count > 0 && holes[^1].End == from)
                {
                    holes[^1] = (holes[^1].Start, to);
                }
                else if (to > from)
                {
                    holes.Add((from, to));
                }
            }

            Assert.Equal(holes, Holes(path, Written));
        }
        else
        {
            Assert.InRange(AllocatedBytes(path), allocated, allocated + (256 * KiB));
        }
    }

    /// <summary>
    /// tmpfs refuses zero range once: the engine remembers it (as the kernel's loop driver clears
    /// the limit of a mode its backing file refused, <c>loop_clear_limits</c>) and later NoUnmap
    /// write-zeroes, on either hardware queue, go to the fallback without asking again. They used
    /// to ask every time: one refused fallocate per request with psync, two through io_uring (its
    /// ring's entry, then the worker's retry before punching).
    /// </summary>
    [SkippableTheory]
    [InlineData(IoEngine.IoUring)]
    [InlineData(IoEngine.Psync)]
    public async Task Zero_range_refused_once_is_not_asked_for_again(IoEngine engine)
    {
        var path = SparseFile("shm", "again.img");
        await using var device = Open(path, engine, direct: false);
        var driver = Assert.IsType<FileBlockDriver>(device.Queue.Driver);
        var data = new byte[1 * MiB];
        new Random(23).NextBytes(data);
        await device.WriteAsync(0, data);
        var allocated = AllocatedBytes(path);
        Assert.Equal(0, driver.ZeroModeRefusals);

        var expected = (byte[])data.Clone();
        for (var i = 0; i < 6; i++)
        {
            Assert.Equal(BlockStatus.Ok, await device.ExecuteAsync(BlockOp.WriteZeroes, i * 128 * KiB, 64 * KiB, default, RequestFlags.NoUnmap, cpu: i % 2));
            Array.Clear(expected, (int)(i * 128 * KiB), (int)(64 * KiB));
        }

        Assert.Equal(1, driver.ZeroModeRefusals);
        var back = new byte[1 * MiB];
        await device.ReadAsync(0, back);
        Assert.Equal(expected, back);
        Assert.Equal(allocated, AllocatedBytes(path));

        // A write-zeroes that may unmap still punches: its mode was never refused.
        await device.WriteZeroesAsync(0, 1 * MiB);
        Assert.Equal(0, AllocatedBytes(path));
        Assert.Equal(1, driver.ZeroModeRefusals);
    }

    private BlockDevice Open(string path, IoEngine engine, bool direct)
    {
        try
        {
            return DeviceBuilder.CreateRingDevice(
                new DeviceOptions { Name = "zf0", Driver = "file", Path = path, Direct = direct, Engine = engine, SubmitQueues = 2, HwQueueDepth = 16 },
                CpuTopology.Simulated(2), _softIrq);
        }
        catch (BlockDeviceOpenException ex) when (direct && new DriveInfo(path).DriveFormat == "tmpfs")
        {
            // tmpfs takes O_DIRECT since Linux 6.6 (/dev/shm, or a temp directory on tmpfs).
            Skip.If(true, $"O_DIRECT on tmpfs refused: {ex.Message}");
            throw;
        }
    }

    // An empty sparse file of FileBytes under the temp directory or /dev/shm. On /dev/shm the
    // spec is about the fallback: skipped unless the file system refuses FALLOC_FL_ZERO_RANGE
    // with EOPNOTSUPP (tmpfs does) and reports holes.
    private string SparseFile(string root, string name)
    {
        var parent = root == "shm" ? "/dev/shm" : Path.GetTempPath();
        Skip.IfNot(Directory.Exists(parent), $"{parent} does not exist");
        var dir = Path.Combine(parent, $"actorblk-zerofallback-{Guid.NewGuid():N}");
        Directory.CreateDirectory(dir);
        _dirs.Add(dir);
        var path = Path.Combine(dir, name);
        using (var stream = new FileStream(path, FileMode.CreateNew, FileAccess.Write))
        {
            stream.SetLength(FileBytes);
        }

        if (root == "shm")
        {
            var fd = LibC.Open(path, LibC.O_RDWR | LibC.O_CLOEXEC, 0);
            Assert.True(fd >= 0, $"open {path}: {-fd}");
            try
            {
                var zeroRange = LibC.Check(LibC.FAllocate(fd, LibC.FALLOC_FL_ZERO_RANGE | LibC.FALLOC_FL_KEEP_SIZE, 0, 4096));
                Skip.IfNot(zeroRange == -LibC.EOPNOTSUPP, $"the file system of {parent} does not refuse FALLOC_FL_ZERO_RANGE ({zeroRange}): no fallback to exercise");
                Skip.IfNot(LibC.LSeek(fd, 0, LibC.SEEK_DATA) == -LibC.ENXIO, $"the file system of {parent} reports no holes");
            }
            finally
            {
                LibC.Close(fd);
            }
        }

        return path;
    }

    // st_blocks in bytes.
    private static unsafe long AllocatedBytes(string path)
    {
        LibC.Statx statx;
        Assert.Equal(0, LibC.StatX(LibC.AT_FDCWD, path, 0, LibC.STATX_BASIC_STATS, &statx));
        return (long)statx.Blocks * 512;
    }

    // The holes of a file's first `end` bytes, by lseek(SEEK_HOLE) and lseek(SEEK_DATA).
    private static List<(long Start, long End)> Holes(string path, long end)
    {
        var fd = LibC.Open(path, LibC.O_RDONLY | LibC.O_CLOEXEC, 0);
        Assert.True(fd >= 0, $"open {path}: {-fd}");
        try
        {
            var holes = new List<(long, long)>();
            for (var at = 0L; at < end;)
            {
                var hole = LibC.LSeek(fd, at, LibC.SEEK_HOLE);
                Assert.True(hole >= 0, $"SEEK_HOLE at {at}: {hole}");
                if (hole >= end)
                {
                    break;
                }

                var data = LibC.LSeek(fd, hole, LibC.SEEK_DATA);
                Assert.True(data >= 0 || data == -LibC.ENXIO, $"SEEK_DATA at {hole}: {data}");
                at = data < 0 ? end : Math.Min(data, end);
                holes.Add((hole, at));
            }

            return holes;
        }
        finally
        {
            LibC.Close(fd);
        }
    }
}
