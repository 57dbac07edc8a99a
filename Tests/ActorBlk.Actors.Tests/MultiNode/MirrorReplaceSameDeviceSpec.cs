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

    // A device of this node named name@host:port is the same device as by its plain name for the
    // claims too: a mirror does not take a device a linear device is built on, however it is named.
    [Fact]
    public async Task A_device_of_this_node_named_by_its_registry_id_is_claimed_as_by_its_name()
    {
        var a = ClusterNode.Start("a");
        await using var _a = a;
        await a.JoinAsync(a, Liveness);
        await a.Layer.CreateDeviceAsync(Memory("x0"));
        await a.Layer.CreateDeviceAsync(Memory("x1"));
        await a.Layer.CreateStackedDeviceAsync("lv");
        await a.Layer.LoadTableAsync("lv", StackTable.Linear("x0"));
        await a.Layer.CreateStackedDeviceAsync("md1");

        var refused = await Assert.ThrowsAsync<DeviceOptionsException>(() => a.Layer.LoadTableAsync("md1", StackTable.Mirror($"x0@{a.Name}", "x1")));
        Assert.Contains("claimed by lv", refused.Message, StringComparison.Ordinal);
    }
}
