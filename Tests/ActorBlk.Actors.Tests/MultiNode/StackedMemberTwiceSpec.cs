using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers.Stacking;
using Xunit;

namespace ActorBlk.Actors.Tests.MultiNode;

/// <summary>
/// A table that names one device twice by two of its names is refused as one that names it twice
/// by the same name (<c>DeviceOptionsException</c> on <c>table</c>): this node's device by its
/// plain name and as the registry names it (<c>name@host:port</c>), another node's by a plain name
/// only that node has and by <c>name@host:port</c>, or by this node's local queue of it (the queue
/// a handle connected) and by <c>name@host:port</c>. Members are compared by the device they open,
/// not by the handle: two handles of one device were two legs of a mirror (one copy counted as
/// two) or two extents over the same data.
/// </summary>
[Collection(ClusterCollection.Name)]
public sealed class StackedMemberTwiceSpec
{
    private static readonly TimeSpan Liveness = TimeSpan.FromSeconds(90);

    private const long LegBytes = (4L << 20) + MirrorSuperblock.DataOffset;

    private static DeviceOptions Memory(string name) => new() { Name = name, Size = LegBytes, MemoryBacked = true, PollQueues = 0 };

    private static MirrorOptions Options => new() { RegionBytes = 256 << 10, AssumeClean = true };

    [Fact]
    public async Task A_device_of_this_node_named_by_its_name_and_its_registry_id_is_refused_as_named_twice()
    {
        var a = ClusterNode.Start("a");
        await using var _a = a;
        await a.JoinAsync(a, Liveness);
        await a.Layer.CreateDeviceAsync(Memory("t0"));
        await a.Layer.CreateDeviceAsync(Memory("t1"));
        await a.Layer.CreateStackedDeviceAsync("st0");

        foreach (var table in new[] { StackTable.Linear("t0", $"t0@{a.Name}"), StackTable.Striped(4096, $"t0@{a.Name}", "t0"), StackTable.Mirror(Options, "t0", $"t0@{a.Name}", "t1") })
        {
            var refused = await Assert.ThrowsAsync<DeviceOptionsException>(() => a.Layer.LoadTableAsync("st0", table));
            Assert.Equal("table", refused.Option);
            Assert.Contains("are the same device (t0)", refused.Message, StringComparison.Ordinal);
        }

        // Nothing was kept: the same devices, each named once, make a mirror.
        var md = await a.Layer.LoadTableAsync("st0", StackTable.Mirror(Options, $"t0@{a.Name}", "t1"));
        Assert.Equal(2, ((MirrorTarget)md.Queue.BioDriver!).Legs.Count);
    }

    [Fact]
    public async Task Another_nodes_device_named_by_its_plain_name_and_its_registry_id_is_refused_as_named_twice()
    {
        var a = ClusterNode.Start("a");
        await using var _a = a;
        var b = ClusterNode.Start("b");
        await using var _b = b;
        await a.JoinAsync(a, Liveness);
        await b.JoinAsync(a, Liveness);
        b.ExportNbd();
        await b.Layer.CreateDeviceAsync(Memory("far0"));
        await a.Layer.CreateDeviceAsync(Memory("near0"));
        await a.Layer.CreateStackedDeviceAsync("md0");

        var id = $"far0@{b.Name}";
        var refused = await Assert.ThrowsAsync<DeviceOptionsException>(() => a.Layer.LoadTableAsync("md0", StackTable.Mirror(Options, "near0", id, "far0")));
        Assert.Equal("table", refused.Option);
        Assert.Contains($"members '{id}' and 'far0' are the same device ({id})", refused.Message, StringComparison.Ordinal);
        var linear = await Assert.ThrowsAsync<DeviceOptionsException>(() => a.Layer.LoadTableAsync("md0", StackTable.Linear("far0", id)));
        Assert.Equal("table", linear.Option);

        // The same name twice opens one handle, which the mirror refused by itself: now named.
        var twice = await Assert.ThrowsAsync<DeviceOptionsException>(() => a.Layer.LoadTableAsync("md0", StackTable.Mirror(Options, id, id)));
        Assert.Contains($"member '{id}' is listed twice", twice.Message, StringComparison.Ordinal);

        // Nothing was kept: named once, the remote device is a leg.
        var md0 = await a.Layer.LoadTableAsync("md0", StackTable.Mirror(Options, "near0", id));
        Assert.Equal(2, ((MirrorTarget)md0.Queue.BioDriver!).Legs.Count);
    }

    // A review: the local queue a handle of far0@b connected on this node is a device here too (a
    // member may name it); keyed by its own name, Linear(queue, far0@b) loaded with two whole
    // extents over one device, and a mirror over the two passed both this check and the exclusive
    // claim.
    [Fact]
    public async Task Another_nodes_device_named_by_its_local_queue_here_and_its_registry_id_is_refused_as_named_twice()
    {
        var a = ClusterNode.Start("a");
        await using var _a = a;
        var b = ClusterNode.Start("b");
        await using var _b = b;
        await a.JoinAsync(a, Liveness);
        await b.JoinAsync(a, Liveness);
        b.ExportNbd();
        await b.Layer.CreateDeviceAsync(Memory("far0"));
        var id = $"far0@{b.Name}";
        await a.WaitForDevicesAsync(d => d.Any(e => e.Id == id && e.NbdEndpoint.Length > 0), Liveness);
        await using var handle = await a.Layer.OpenAsync(id);
        var queue = handle.Name;
        Assert.NotEqual(id, queue);
        await a.Layer.CreateStackedDeviceAsync("st0");

        foreach (var table in new[] { StackTable.Linear(queue, id), StackTable.Striped(4096, id, queue), StackTable.Mirror(Options, queue, id) })
        {
            var refused = await Assert.ThrowsAsync<DeviceOptionsException>(() => a.Layer.LoadTableAsync("st0", table));
            Assert.Equal("table", refused.Option);
            Assert.Contains($"are the same device ({id})", refused.Message, StringComparison.Ordinal);
        }
    }
}
