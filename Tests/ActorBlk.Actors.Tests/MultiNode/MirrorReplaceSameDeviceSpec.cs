using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers.Stacking;
using Xunit;

namespace ActorBlk.Actors.Tests.MultiNode;

/// <summary>
/// A replacement leg named as the registry names a device (<c>name@host:port</c>) is compared with
/// the mirror's legs by the device it opens, not by the handle: a leg of the mirror already, named
/// so, is refused as it is by its plain name.
/// </summary>
[Collection(ClusterCollection.Name)]
public sealed class MirrorReplaceSameDeviceSpec
{
    private static readonly TimeSpan Liveness = TimeSpan.FromSeconds(90);

    private const long LegBytes = (4L << 20) + MirrorSuperblock.DataOffset;

    private static DeviceOptions Memory(string name) => new() { Name = name, Size = LegBytes, MemoryBacked = true, PollQueues = 0 };

    [Fact]
    public async Task A_leg_of_the_mirror_named_by_its_registry_id_is_refused_as_a_replacement()
    {
        var a = ClusterNode.Start("a");
        await using var _a = a;
        await a.JoinAsync(a, Liveness);
        await a.Layer.CreateDeviceAsync(Memory("l0"));
        await a.Layer.CreateDeviceAsync(Memory("l1"));
        await a.Layer.CreateStackedDeviceAsync("md0");
        var md0 = await a.Layer.LoadTableAsync("md0", StackTable.Mirror(new MirrorOptions { RegionBytes = 256 << 10, AssumeClean = true }, "l0", "l1"));
        var mirror = (MirrorTarget)md0.Queue.BioDriver!;
        await a.Layer.WriteAttributeAsync("block/md0/md/dev-l1/state", "faulty");

        var refused = await Assert.ThrowsAsync<InvalidOperationException>(() => a.Layer.ReplaceMirrorLegAsync("md0", 1, $"l0@{a.Name}"));
        Assert.Contains("leg 0", refused.Message, StringComparison.Ordinal);
        Assert.Equal(MirrorLegState.Faulty, mirror.LegState(1));
        Assert.Equal("l1", mirror.Legs[1].Name);
    }
}
