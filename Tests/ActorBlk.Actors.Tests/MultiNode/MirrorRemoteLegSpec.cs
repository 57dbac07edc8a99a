using ActorBlk.Actors.Clustering;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers.Stacking;
using ActorBlk.Hardware.Requests;
using ActorBlk.Testing;
using Akka.Cluster;
using Xunit;

namespace ActorBlk.Actors.Tests.MultiNode;

/// <summary>
/// Issue 13 items 1-3 over the cluster: a mirror whose legs are named as in the cluster's registry
/// (<c>name@host:port</c>). The remote leg is opened with <see cref="BlockLayer.OpenAsync(string, CancellationToken)"/>
/// by <see cref="BlockLayer.LoadTableAsync"/>; its node crashing makes it faulty with no error to the
/// caller, and its return at the same address re-adds it by itself and resyncs the dirty regions only.
/// </summary>
[Collection(MirrorClusterCollection.Name)]
public sealed class MirrorRemoteLegSpec : Akka.TestKit.Xunit2.TestKit, IDisposable
{
    private static readonly TimeSpan Liveness = TimeSpan.FromSeconds(90);

    private const long LegBytes = (16L << 20) + MirrorSuperblock.DataOffset;

    private const int Region = 256 << 10;

    private readonly string _legFile = Path.Combine(Path.GetTempPath(), $"actorblk-mirror-leg-{Guid.NewGuid():N}.img");

    public MirrorRemoteLegSpec()
        : base(Support.Configs.Simulated)
    {
    }

    void IDisposable.Dispose()
    {
        File.Delete(_legFile);
    }

    private DeviceOptions FileLeg() => new() { Name = "leg", Driver = "file", Path = _legFile, Size = LegBytes, PollQueues = 0 };

    private static DeviceOptions Memory(string name) => new() { Name = name, Size = LegBytes, MemoryBacked = true, PollQueues = 0 };

    private static byte[] Pattern(int length, int seed) => [.. Enumerable.Range(0, length).Select(i => (byte)(seed + (i * 13)))];

    private static Task<byte[]> ReadAllAsync(IBlockDevice device, long offset, long length) => MirrorDevices.ReadAllAsync(device, offset, length, Liveness);

    private Task UntilAsync(Func<bool> condition) => AwaitConditionAsync(() => Task.FromResult(condition()), Liveness, TimeSpan.FromMilliseconds(50));

    [Fact]
    public async Task A_remote_leg_whose_node_crashes_goes_faulty_without_errors_and_on_its_return_is_resynced_for_the_dirty_regions_only()
    {
        // a holds the mirror and is the oldest member (a 2-node cluster survives the loss of its younger node).
        var a = ClusterNode.Start("a");
        await using var _a = a;
        var c = ClusterNode.Start("c");
        await a.JoinAsync(a, Liveness);
        await c.JoinAsync(a, Liveness);
        c.ExportNbd();
        a.ExportNbd();
        var cPort = c.Cluster.SelfAddress.Port!.Value;
        // Kept from other processes until c is back on it, after its crash and removal.
        using var keptC = ReservedPort.Of(cPort);
        var cName = c.Name;
        await c.Layer.CreateDeviceAsync(FileLeg());
        var local = await a.Layer.CreateDeviceAsync(Memory("local"));

        // The remote leg is named as in the registry; LoadTableAsync waits for it to be published.
        await a.Layer.CreateStackedDeviceAsync("md0");
        var md0 = await a.Layer.LoadTableAsync("md0", StackTable.Mirror(new MirrorOptions { RegionBytes = Region }, "local", $"leg@{cName}"));
        var mirror = (MirrorTarget)md0.Queue.BioDriver!;
        Assert.IsType<ClusterBlockDevice>(mirror.Legs[1]);
        Assert.True(((ClusterBlockDevice)mirror.Legs[1]).IsRemote);
        Assert.Contains("local", a.Layer.Devices.Select(d => d.Name));
        await mirror.SyncIdle.WaitAsync(Liveness);
        Assert.Equal(0, mirror.Degraded);

        // The remote leg's local queue is not held by the mirror (its handle replaces it), the local leg is.
        await Assert.ThrowsAsync<DeviceBusyException>(() => a.Layer.DestroyDeviceAsync("local"));

        // Writes reach both legs: read each leg's data area directly.
        var first = Pattern(1 << 20, 5);
        await md0.WriteAsync(0, first, RequestFlags.Fua);
        Assert.True(c.Layer.TryGetDevice("leg", out var legOnC));
        Assert.Equal(first, await ReadAllAsync(legOnC, MirrorSuperblock.DataOffset, first.Length));
        Assert.Equal(first, await ReadAllAsync(local, MirrorSuperblock.DataOffset, first.Length));

        // The leg's node crashes. Writes and reads go on with no error; the leg is faulty.
        var cAddress = c.Cluster.SelfUniqueAddress;
        await c.CrashAsync();

        // Idle, the mirror still learns of it: the handle's queue is retired when the node turns
        // unreachable, and the leg is marked faulty with no I/O to meet the error.
        await UntilAsync(() => mirror.LegState(1) == MirrorLegState.Faulty);
        Assert.Equal("1\n", a.Layer.ReadAttribute("block/md0/md/degraded"));
        var written = new Dictionary<long, byte[]>();
        for (var i = 0; i < 6; i++)
        {
            // Three regions, two writes each: regions 8, 20 and 40.
            var offset = ((long)(i % 3 == 0 ? 8 : i % 3 == 1 ? 20 : 40) * Region) + (i * 8192);
            var data = Pattern(8192, 100 + i);
            await md0.WriteAsync(offset, data).AsTask().WaitAsync(Liveness);
            written[offset] = data;
        }

        Assert.Equal(1, mirror.Degraded);
        Assert.Equal(MirrorLegState.Faulty, mirror.LegState(1));
        foreach (var (offset, data) in written)
        {
            var back = new byte[data.Length];
            await md0.ReadAsync(offset, back);
            Assert.Equal(data, back);
        }

        await a.WaitForEventAsync(e => e is ClusterEvent.MemberRemoved r && r.Member.UniqueAddress.Equals(cAddress), Liveness);
        // The three regions written while degraded, and maybe the four of the first write (the
        // bitmap daemon clears an idle region's bit only after daemon_sleep with every leg in sync).
        var dirty = mirror.DirtyRegions();
        Assert.InRange(dirty, 3, 7);
        var resyncedBefore = mirror.ResyncedRegions;

        // The node returns at the same address with the same file: the leg is re-added by itself
        // and only the dirty regions are copied.
        await using var back2 = ClusterNode.Start("c", cPort);
        await back2.JoinAsync(a, Liveness);
        back2.ExportNbd();
        var legAgain = await back2.Layer.CreateDeviceAsync(FileLeg());
        await UntilAsync(() => mirror.LegState(1) == MirrorLegState.InSync && mirror.SyncAction == "idle");
        Assert.Equal(0, mirror.Degraded);
        // Counted as the leg turned rebuilding, so seen by whoever sees it in sync again.
        Assert.Equal(1, mirror.AutomaticReAdds);
        Assert.Equal(dirty, mirror.ResyncedRegions - resyncedBefore);
        Assert.True(dirty < mirror.Regions);

        // Block for block equal, and the writes made while degraded are on the returned leg.
        var dataBytes = mirror.DataBytes;
        Assert.Equal(await ReadAllAsync(local, MirrorSuperblock.DataOffset, dataBytes), await ReadAllAsync(legAgain, MirrorSuperblock.DataOffset, dataBytes));
        foreach (var (offset, data) in written)
        {
            var back = new byte[data.Length];
            await legAgain.ReadAsync(MirrorSuperblock.DataOffset + offset, back);
            Assert.Equal(data, back);
        }

        Assert.Equal(0L, md0.Queue.DoubleCompletions);

        // Destroying the mirror closes the remote leg: its local queue on a goes too.
        var legQueue = mirror.Legs[1].Name;
        await a.Layer.DestroyDeviceAsync("md0");
        Assert.False(a.Layer.TryGetDevice(legQueue, out _));
        await a.Layer.DestroyDeviceAsync("local");
    }

    [Fact]
    public async Task A_remote_leg_that_never_appears_refuses_the_table_with_the_member_named()
    {
        var a = ClusterNode.Start("a", hocon: "actorblk.cluster.registry.member-wait = 2s");
        await using var _a = a;
        await a.JoinAsync(a, Liveness);
        await a.Layer.CreateDeviceAsync(Memory("local"));
        await a.Layer.CreateStackedDeviceAsync("md1");
        var refused = await Assert.ThrowsAsync<DeviceOptionsException>(() => a.Layer.LoadTableAsync("md1", StackTable.Mirror("local", "ghost@127.0.0.1:1")));
        Assert.Equal("members", refused.Option);
        Assert.Contains("ghost@127.0.0.1:1", refused.Message);

        // Nothing is held: the local leg can go, and so can the placeholder.
        await a.Layer.DestroyDeviceAsync("md1");
        await a.Layer.DestroyDeviceAsync("local");
    }

    [Fact]
    public async Task A_remote_leg_that_is_published_but_never_exported_refuses_the_table_after_member_wait_without_spinning()
    {
        var a = ClusterNode.Start("a", hocon: "actorblk.cluster.registry.member-wait = 3s");
        await using var _a = a;
        var b = ClusterNode.Start("b");
        await using var _b = b;
        await a.JoinAsync(a, Liveness);
        await b.JoinAsync(a, Liveness);

        // b publishes its device but runs no NBD export: opening it is refused until an endpoint shows.
        await b.Layer.CreateDeviceAsync(Memory("noexport"));
        await a.WaitForDevicesAsync(d => d.Any(e => e.Id == $"noexport@{b.Name}"), Liveness);
        await a.Layer.CreateDeviceAsync(Memory("local"));
        await a.Layer.CreateStackedDeviceAsync("md2");
        var refused = await Assert.ThrowsAsync<DeviceOptionsException>(
            () => a.Layer.LoadTableAsync("md2", StackTable.Mirror("local", $"noexport@{b.Name}")).WaitAsync(Liveness));
        Assert.Equal("members", refused.Option);
        Assert.Contains("NBD", refused.Message, StringComparison.Ordinal);
    }
}
