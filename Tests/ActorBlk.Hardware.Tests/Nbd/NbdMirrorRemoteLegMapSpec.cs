using System.Net;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers;
using ActorBlk.Hardware.Drivers.Stacking;
using ActorBlk.Hardware.Nbd;
using ActorBlk.Hardware.Topology;
using ActorBlk.Testing;
using Xunit;

namespace ActorBlk.Hardware.Tests.Nbd;

/// <summary>
/// A mirror whose legs are NBD client devices (remote legs, each a <see cref="FaultyLeg"/> over a
/// memory-backed device exported by our NBD server on 127.0.0.1): its map asks the in-sync remote
/// legs with block status (<see cref="IAllocationMap.GetExtentAsync"/>), and a recovery from a
/// remote source zeroes the target where the source's map shows a hole instead of reading the
/// chunk across the network, so the rebuilt leg stays sparse and the source is read for its data
/// only. Before, a remote leg could not tell: the mirror's map was all data and a recovery read
/// every chunk of the source.
/// </summary>
public sealed class NbdMirrorRemoteLegMapSpec : IAsyncLifetime
{
    private const int Block = 4096;
    private const long LegBytes = 4L << 20;
    private const long Region = 64 << 10;
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(60);

    private readonly RingDevices _devices = new(2);
    private readonly List<BlockDevice> _stacked = [];
    private readonly List<NbdServer> _servers = [];

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync()
    {
        for (var i = _stacked.Count - 1; i >= 0; i--)
        {
            if (_stacked[i].Queue.Kind == ActorBlk.Hardware.Queues.QueueKind.BioBased)
            {
                await _stacked[i].DisposeAsync();
            }
        }

        await _devices.DisposeAsync();
        foreach (var server in _servers)
        {
            await server.DisposeAsync();
        }
    }

    [Fact]
    public async Task A_mirror_of_remote_legs_answers_block_status_from_them()
    {
        var (ra, fa) = RemoteLeg("a");
        var (rb, fb) = RemoteLeg("b");
        var mirror = await MirrorTarget.AssembleAsync("md0", [ra, rb], new MirrorOptions { RegionBytes = Region, AssumeClean = true });
        var md = Serve(mirror);
        await md.WriteAsync(2 * Block, Filled(2 * Block));
        await md.WriteAsync(3 * Region, Filled(Block));

        Assert.Equal(
            [(0L, 2L * Block, false), (2L * Block, 2L * Block, true), (4L * Block, (3 * Region) - (4 * Block), false), (3 * Region, Block, true), ((3 * Region) + Block, (4 * Region) - (3 * Region) - Block, false)],
            await MapAsync(mirror, 0, 4 * Region));

        // The synchronous map cannot wait on the network: it cannot tell.
        Assert.False(mirror.TryGetExtent(0, 4 * Region, out _, out _));
        Assert.True(fa.ShowsMap && fb.ShowsMap);

        // Our server exporting the mirror answers from the remote legs too.
        await using var server = NbdServer.Start(new NbdDeviceList([md]), new NbdServerOptions { Listen = new IPEndPoint(IPAddress.Loopback, 0) });
        var (client, _, _) = await RawNbdClient.OpenAsync(server.LocalEndPoint, "md0", structured: true, allocation: true);
        await using var held = client;
        await client.SendRequestAsync(NbdCommand.BlockStatus, 1, 0, (uint)Region, NbdCommandFlags.None);
        var chunk = await client.ReadChunkAsync();
        Assert.Equal((NbdChunkType.BlockStatus, 1UL), (chunk.Type, chunk.Cookie));
        Assert.Equal(
            [(2L * Block, (uint)(NbdAllocationFlags.Hole | NbdAllocationFlags.Zero)), (2L * Block, 0u), (Region - (4 * Block), (uint)(NbdAllocationFlags.Hole | NbdAllocationFlags.Zero))],
            Enumerable.Range(0, (chunk.Data.Length - 4) / 8).Select(i =>
                ((long)System.Buffers.Binary.BinaryPrimitives.ReadUInt32BigEndian(chunk.Data.AsSpan(4 + (8 * i))), System.Buffers.Binary.BinaryPrimitives.ReadUInt32BigEndian(chunk.Data.AsSpan(8 + (8 * i))))));
    }

    // The recovery of a local leg from a remote source: the chunks the source's map shows as holes
    // are zeroed on the target without being read; the one chunk with data is read and copied.
    [Fact]
    public async Task A_recovery_from_a_remote_source_reads_its_data_only_and_the_rebuilt_leg_stays_sparse()
    {
        var (ra, fa) = RemoteLeg("a");
        var (b, fb) = LocalLeg("b");
        var clock = new ManualTimeProvider();
        var mirror = await MirrorTarget.AssembleAsync("md0", [ra, b], new MirrorOptions { RegionBytes = Region, AssumeClean = false, SyncSpeedMinKiB = 1024, SyncSpeedMaxKiB = 1024 }, clock);
        Serve(mirror);
        Assert.Equal(MirrorLegState.Rebuilding, mirror.LegState(1));
        var data = Filled(Block);
        await ra.WriteAsync(MirrorSuperblock.DataOffset + (9 * Region) + Block, data);
        var readsBefore = Interlocked.Read(ref fa.Reads);

        await MirrorSync.PumpUntilIdleAsync(clock, mirror, Patience);
        Assert.Equal(MirrorLegState.InSync, mirror.LegState(1));
        var chunks = mirror.DataBytes / MirrorTarget.SyncChunkBytes;
        Assert.Equal(1, Interlocked.Read(ref fa.Reads) - readsBefore);
        Assert.Equal(MirrorTarget.SyncChunkBytes, fb.DataBytesWritten);
        Assert.Equal(chunks - 1, fb.WriteZeroes);

        var read = new byte[Block];
        await b.ReadAsync(MirrorSuperblock.DataOffset + (9 * Region) + Block, read);
        Assert.Equal(data, read);

        // The rebuilt local leg is sparse but for the chunk copied.
        Assert.True(((IAllocationMap)fb).TryGetExtent(MirrorSuperblock.DataOffset, 9 * Region, out var hole, out var allocated));
        Assert.Equal((9 * Region, false), (hole, allocated));
    }

    // A FaultyLeg over a memory-backed device, exported by an NBD server of its own and imported
    // as an NBD client device: the mirror's leg is the client device.
    private (BlockDevice Remote, FaultyLeg Faults) RemoteLeg(string name)
    {
        var (leg, faults) = LocalLeg(name);
        var server = NbdServer.Start(new NbdDeviceList([leg]), new NbdServerOptions { Listen = new IPEndPoint(IPAddress.Loopback, 0) });
        _servers.Add(server);
        var remote = _devices.Create(new DeviceOptions { Name = "r" + name, Driver = "nbd", Uri = server.ExportUri(name) }, CpuTopology.Simulated(2));
        Assert.True(((ActorBlk.Hardware.Drivers.Nbd.NbdClientDriver)remote.Queue.Driver).HasAllocationMap);
        return (remote, faults);
    }

    private (BlockDevice Device, FaultyLeg Faults) LocalLeg(string name)
    {
        var inner = _devices.Create(new DeviceOptions { Name = name + "-disk", Size = LegBytes, MemoryBacked = true, WriteCache = true }, CpuTopology.Simulated(2));
        var (device, faults) = FaultyLeg.Create(name, inner);
        faults.ShowsMap = true;
        faults.CountFrom = MirrorSuperblock.DataOffset;
        _stacked.Add(device);
        return (device, faults);
    }

    private BlockDevice Serve(MirrorTarget target)
    {
        var device = BioDevices.Create("md0", target);
        _stacked.Add(device);
        return device;
    }

    private static async Task<List<(long Offset, long Length, bool Data)>> MapAsync(IAllocationMap map, long offset, long length)
    {
        var extents = new List<(long Offset, long Length, bool Data)>();
        var end = offset + length;
        while (offset < end)
        {
            var extent = await map.GetExtentAsync(offset, end - offset).AsTask().WaitAsync(Patience);
            Assert.NotNull(extent);
            Assert.InRange(extent.Value.Length, 1, end - offset);
            extents.Add((offset, extent.Value.Length, extent.Value.Allocated));
            offset += extent.Value.Length;
        }

        return extents;
    }

    private static byte[] Filled(int length)
    {
        var data = new byte[length];
        new Random(length).NextBytes(data);
        return data;
    }
}
