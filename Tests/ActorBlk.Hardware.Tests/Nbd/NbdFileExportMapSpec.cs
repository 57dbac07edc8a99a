using System.Buffers.Binary;
using System.Globalization;
using System.Net;
using System.Text.RegularExpressions;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers;
using ActorBlk.Hardware.Drivers.Stacking;
using ActorBlk.Hardware.Interop;
using ActorBlk.Hardware.Nbd;
using ActorBlk.Hardware.Topology;
using ActorBlk.Testing;
using Xunit;

namespace ActorBlk.Hardware.Tests.Nbd;

/// <summary>
/// NBD block status of a file device, against real clients: the export of a sparse file lists
/// its holes (lseek SEEK_DATA/SEEK_HOLE, as qemu-nbd and nbdkit's file plugin report them), a
/// write a client saw acknowledged shows as data, a linear device over it reports them through
/// its table and a striped device over two through its chunks, and nbdcopy and qemu-img convert
/// copy a mostly-sparse 1 GiB file exactly while reading only its data. Before, the file device
/// (and every stacked device) answered one data extent for any range, so these clients read
/// every byte.
/// </summary>
public sealed partial class NbdFileExportMapSpec : IAsyncLifetime
{
    private const long KiB = 1024;
    private const long MiB = 1024 * KiB;

    private readonly TempDirectory _dir = new("actorblk-nbdmap");
    private readonly RingDevices _devices = new(2);
    private readonly List<BlockDevice> _stacked = [];
    private readonly List<(long Offset, byte[] Bytes)> _data = [];
    private NbdServer? _server;

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync()
    {
        if (_server is not null)
        {
            await _server.DisposeAsync();
        }

        foreach (var device in _stacked)
        {
            await device.DisposeAsync();
        }

        await _devices.DisposeAsync();
        _dir.Dispose();
    }

    [SkippableFact]
    public async Task Nbdinfo_map_lists_a_sparse_files_holes_as_hole_zero_and_a_written_block_as_data()
    {
        Skip.IfNot(ExternalTool.Exists("nbdinfo"), "nbdinfo (libnbd-bin) is not installed");
        Skip.IfNot(ExternalTool.Exists("qemu-io"), "qemu-io (qemu-utils) is not installed");
        var path = SparseFile("sparse.img", 64 * MiB, (1 * MiB, 8 * KiB), (4 * MiB, 4 * KiB), (8 * MiB, 64 * KiB));
        PunchHole(path, 8 * MiB, 32 * KiB);
        var file = FileDevice("file0", path);
        Serve(file);

        Assert.Equal(
            [
                (0L, 1 * MiB, 3, "hole,zero"), (1 * MiB, 8 * KiB, 0, "data"), ((1 * MiB) + (8 * KiB), (3 * MiB) - (8 * KiB), 3, "hole,zero"),
                (4 * MiB, 4 * KiB, 0, "data"), ((4 * MiB) + (4 * KiB), (4 * MiB) - (4 * KiB) + (32 * KiB), 3, "hole,zero"),
                ((8 * MiB) + (32 * KiB), 32 * KiB, 0, "data"), ((8 * MiB) + (64 * KiB), (56 * MiB) - (64 * KiB), 3, "hole,zero"),
            ],
            await MapAsync("file0"));

        // A write the client saw acknowledged is data at the next question; a trim is a hole again.
        await ExternalTool.RunAsync("qemu-io", "-f", "raw", "-c", "write -P 0x5a 32M 4k", "-c", "discard 1M 8k", Uri("file0"));
        Assert.Equal(
            [
                (0L, 4 * MiB, 3, "hole,zero"),
                (4 * MiB, 4 * KiB, 0, "data"), ((4 * MiB) + (4 * KiB), (4 * MiB) - (4 * KiB) + (32 * KiB), 3, "hole,zero"),
                ((8 * MiB) + (32 * KiB), 32 * KiB, 0, "data"), ((8 * MiB) + (64 * KiB), (24 * MiB) - (64 * KiB), 3, "hole,zero"),
                (32 * MiB, 4 * KiB, 0, "data"), ((32 * MiB) + (4 * KiB), (32 * MiB) - (4 * KiB), 3, "hole,zero"),
            ],
            await MapAsync("file0"));
    }

    [SkippableFact]
    public async Task A_linear_device_over_a_file_device_reports_the_files_holes_through_its_table()
    {
        Skip.IfNot(ExternalTool.Exists("nbdinfo"), "nbdinfo (libnbd-bin) is not installed");
        var path = SparseFile("member.img", 8 * MiB, (5 * MiB, 4 * KiB));
        var file = FileDevice("file1", path);

        // The file's second half, then its first.
        var linear = Stacked("dm-0", new LinearTarget([new LinearExtent(file, 4 * MiB, 4 * MiB), new LinearExtent(file, 0, 4 * MiB)]));
        Serve(linear);

        Assert.Equal(
            [(0L, 1 * MiB, 3, "hole,zero"), (1 * MiB, 4 * KiB, 0, "data"), ((1 * MiB) + (4 * KiB), (7 * MiB) - (4 * KiB), 3, "hole,zero")],
            await MapAsync("dm-0"));
    }

    // Neighbouring extents in one state are one, as qemu-nbd answers (an outside audit): across
    // the linear table's boundary the hole came back as two extents, and REQ_ONE got only the
    // first (nbdinfo merges them itself, so a raw client asks here).
    [SkippableFact]
    public async Task Block_status_merges_a_hole_that_crosses_a_linear_devices_table_boundary()
    {
        var path = SparseFile("member.img", 8 * MiB, (5 * MiB, 4 * KiB));
        var file = FileDevice("file1", path);
        var linear = Stacked("dm-0", new LinearTarget([new LinearExtent(file, 4 * MiB, 4 * MiB), new LinearExtent(file, 0, 4 * MiB)]));
        Serve(linear);
        var (client, _, _) = await RawNbdClient.OpenAsync(_server!.LocalEndPoint, "dm-0", structured: true, allocation: true);
        await using var _ = client;
        const uint HoleZero = (uint)(NbdAllocationFlags.Hole | NbdAllocationFlags.Zero);

        async Task<(long Length, uint Flags)[]> StatusAsync(ulong cookie, long offset, long length, NbdCommandFlags flags = NbdCommandFlags.None)
        {
            await client.SendRequestAsync(NbdCommand.BlockStatus, cookie, (ulong)offset, (uint)length, flags);
            var chunk = await client.ReadChunkAsync();
            Assert.Equal((NbdChunkType.BlockStatus, cookie), (chunk.Type, chunk.Cookie));
            return [.. Enumerable.Range(0, (chunk.Data.Length - 4) / 8).Select(i =>
                ((long)BinaryPrimitives.ReadUInt32BigEndian(chunk.Data.AsSpan(4 + (8 * i))), BinaryPrimitives.ReadUInt32BigEndian(chunk.Data.AsSpan(8 + (8 * i)))))];
        }

        Assert.Equal([(1 * MiB, HoleZero), (4 * KiB, 0u), ((7 * MiB) - (4 * KiB), HoleZero)], await StatusAsync(1, 0, 8 * MiB));
        Assert.Equal([((7 * MiB) - (4 * KiB), HoleZero)], await StatusAsync(2, (1 * MiB) + (4 * KiB), (7 * MiB) - (4 * KiB), NbdCommandFlags.ReqOne));
    }

    // Before, a striped device answered one data extent (16 MiB of data here).
    [SkippableFact]
    public async Task A_striped_device_over_two_file_devices_reports_their_holes_chunk_by_chunk()
    {
        Skip.IfNot(ExternalTool.Exists("nbdinfo"), "nbdinfo (libnbd-bin) is not installed");

        // 64 KiB chunks, chunk c on stripe c mod 2 at chunk c div 2: stripe 0's data across its
        // chunks 16 and 17 is the device's chunks 32 and 34, stripe 1's 4 KiB in its chunk 48 the
        // device's chunk 97.
        var first = FileDevice("file2", SparseFile("stripe0.img", 8 * MiB, ((1 * MiB) + (32 * KiB), 64 * KiB)));
        var second = FileDevice("file3", SparseFile("stripe1.img", 8 * MiB, (3 * MiB, 4 * KiB)));
        var striped = Stacked("dm-1", new StripedTarget([first, second], 64 * (int)KiB));
        Serve(striped);

        Assert.Equal(
            [
                (0L, (2 * MiB) + (32 * KiB), 3, "hole,zero"), ((2 * MiB) + (32 * KiB), 32 * KiB, 0, "data"),
                ((2 * MiB) + (64 * KiB), 64 * KiB, 3, "hole,zero"), ((2 * MiB) + (128 * KiB), 32 * KiB, 0, "data"),
                ((2 * MiB) + (160 * KiB), (4 * MiB) - (96 * KiB), 3, "hole,zero"), ((6 * MiB) + (64 * KiB), 4 * KiB, 0, "data"),
                ((6 * MiB) + (68 * KiB), (10 * MiB) - (68 * KiB), 3, "hole,zero"),
            ],
            await MapAsync("dm-1"));
    }

    // Before, a mirror answered one data extent, and its recovery wrote every byte of a new file
    // leg (8 MiB allocated here, where its source holds 8 KiB of data).
    [SkippableFact]
    public async Task A_mirror_over_two_file_devices_reports_its_holes_and_its_rebuilt_leg_stays_as_sparse_as_its_source()
    {
        Skip.IfNot(ExternalTool.Exists("nbdinfo"), "nbdinfo (libnbd-bin) is not installed");
        Skip.IfNot(ExternalTool.Exists("stat"), "stat is not installed");

        // The first leg holds 8 KiB of the mirror's data at 1 MiB (after the legs' 64 KiB of metadata).
        var source = FileDevice("file6", SparseFile("leg0.img", 8 * MiB, ((1 * MiB) + MirrorSuperblock.DataOffset, 8 * KiB)));
        var copyPath = SparseFile("leg1.img", 8 * MiB);
        var target = FileDevice("file7", copyPath);
        var mirror = await MirrorTarget.AssembleAsync("md9", [source, target], new MirrorOptions { AssumeClean = false, SyncSpeedMinKiB = 1_000_000, SyncSpeedMaxKiB = 1_000_000 });
        var md = Stacked("md9", mirror);
        await mirror.SyncIdle.WaitAsync(TimeSpan.FromSeconds(60));
        Assert.Equal(MirrorLegState.InSync, mirror.LegState(1));
        Serve(md);

        var end = mirror.DataBytes;
        Assert.Equal(
            [(0L, 1 * MiB, 3, "hole,zero"), (1 * MiB, 8 * KiB, 0, "data"), ((1 * MiB) + (8 * KiB), end - (1 * MiB) - (8 * KiB), 3, "hole,zero")],
            await MapAsync("md9"));

        // The copy zeroed the source's holes (punching them) and copied the one 64 KiB chunk with data.
        var blocks = long.Parse((await ExternalTool.RunAsync("stat", "-c", "%b", copyPath)).Trim(), CultureInfo.InvariantCulture);
        Assert.InRange(blocks * 512, MirrorTarget.SyncChunkBytes, 1 * MiB);
    }

    [SkippableTheory]
    [InlineData("nbdcopy")]
    [InlineData("qemu-img")]
    public async Task A_mostly_sparse_1_GiB_file_copies_exactly_and_sparse_reading_only_its_data(string tool)
    {
        Skip.IfNot(ExternalTool.Exists(tool), $"{tool} is not installed");
        Skip.IfNot(ExternalTool.Exists("stat"), "stat is not installed");
        const long size = 1024 * MiB;
        var path = SparseFile("big.img", size, (0, 64 * KiB), (300 * MiB, 1 * MiB), (700 * MiB, 4 * KiB), (size - (64 * KiB), 64 * KiB));
        var file = FileDevice("big0", path);
        Serve(file);

        var copy = _dir.File($"copy-{tool}.img");
        if (tool == "nbdcopy")
        {
            await ExternalTool.RunAsync("nbdcopy", "--connections=2", Uri("big0"), copy);
        }
        else
        {
            await ExternalTool.RunAsync("qemu-img", "convert", "-f", "raw", "-O", "raw", Uri("big0"), copy);
        }

        await AssertCopyHoldsTheDataAsync(copy, size);

        // Only the data crossed the wire: the holes were never read (1 MiB + 132 KiB of data;
        // block status rounds nothing here, the file system's blocks being 4 KiB or finer).
        var read = (long)file.Queue.Stats.Read().ReadSectors * 512;
        Assert.InRange(read, (1 * MiB) + (132 * KiB), 8 * MiB);

        // And the copy is sparse: far fewer blocks allocated than its size.
        var blocks = long.Parse((await ExternalTool.RunAsync("stat", "-c", "%b", copy)).Trim(), CultureInfo.InvariantCulture);
        Assert.InRange(blocks * 512, 1 * MiB, 64 * MiB);
    }

    private BlockDevice FileDevice(string name, string path) =>
        _devices.Create(new DeviceOptions { Name = name, Driver = "file", Path = path, SubmitQueues = 2 }, CpuTopology.Simulated(2));

    private BlockDevice Stacked(string name, IBioDriver target)
    {
        var device = BioDevices.Create(name, target);
        _stacked.Add(device);
        return device;
    }

    private void Serve(params IBlockDevice[] devices) =>
        _server = NbdServer.Start(new NbdDeviceList(devices), new NbdServerOptions { Listen = new IPEndPoint(IPAddress.Loopback, 0) });

    private string Uri(string export) => $"nbd://127.0.0.1:{_server!.LocalEndPoint.Port}/{export}";

    private async Task<(long Offset, long Length, int Type, string Description)[]> MapAsync(string export)
    {
        var map = await ExternalTool.RunAsync("nbdinfo", "--map", Uri(export));
        return [.. MapRow().Matches(map).Select(m => (
            long.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture),
            long.Parse(m.Groups[2].Value, CultureInfo.InvariantCulture),
            int.Parse(m.Groups[3].Value, CultureInfo.InvariantCulture),
            m.Groups[4].Value))];
    }

    // A sparse file with random bytes in the given ranges (kept in _data) and holes everywhere
    // else; skipped on a file system that reports no holes.
    private string SparseFile(string name, long size, params (long Offset, long Length)[] data)
    {
        var path = _dir.File(name);
        using (var stream = new FileStream(path, FileMode.CreateNew, FileAccess.Write))
        {
            stream.SetLength(size);
        }

        var fd = LibC.Open(path, LibC.O_RDONLY | LibC.O_CLOEXEC, 0);
        try
        {
            Skip.IfNot(LibC.LSeek(fd, 0, LibC.SEEK_DATA) == -LibC.ENXIO, $"the file system of {_dir.Path} reports no holes");
        }
        finally
        {
            LibC.Close(fd);
        }

        using (var stream = new FileStream(path, FileMode.Open, FileAccess.Write))
        {
            var random = new Random(17);
            foreach (var (offset, length) in data)
            {
                var bytes = new byte[length];
                random.NextBytes(bytes);
                stream.Position = offset;
                stream.Write(bytes);
                _data.Add((offset, bytes));
            }
        }

        return path;
    }

    private static void PunchHole(string path, long offset, long length)
    {
        var fd = LibC.Open(path, LibC.O_RDWR | LibC.O_CLOEXEC, 0);
        try
        {
            Assert.Equal(0, LibC.FAllocate(fd, LibC.FALLOC_FL_PUNCH_HOLE | LibC.FALLOC_FL_KEEP_SIZE, offset, length));
        }
        finally
        {
            LibC.Close(fd);
        }
    }

    // The copy holds the data written and zeroes elsewhere. (The source is locked by the device:
    // what it holds is kept in _data instead.)
    private async Task AssertCopyHoldsTheDataAsync(string copy, long size)
    {
        Assert.Equal(size, new FileInfo(copy).Length);
        await using var stream = new FileStream(copy, FileMode.Open, FileAccess.Read, FileShare.ReadWrite, 1 << 20);
        var actual = new byte[4 * MiB];
        var expected = new byte[4 * MiB];
        for (long at = 0; at < size; at += actual.Length)
        {
            await stream.ReadExactlyAsync(actual);
            Array.Clear(expected);
            foreach (var (offset, bytes) in _data)
            {
                var from = Math.Max(offset, at);
                var to = Math.Min(offset + bytes.Length, at + expected.Length);
                if (from < to)
                {
                    bytes.AsSpan((int)(from - offset), (int)(to - from)).CopyTo(expected.AsSpan((int)(from - at)));
                }
            }

            Assert.True(actual.AsSpan().SequenceEqual(expected), $"the copy differs in the 4 MiB at {at}");
        }
    }

    [GeneratedRegex(@"^\s*(\d+)\s+(\d+)\s+(\d+)\s+(\S+)\s*$", RegexOptions.Multiline)]
    private static partial Regex MapRow();
}
