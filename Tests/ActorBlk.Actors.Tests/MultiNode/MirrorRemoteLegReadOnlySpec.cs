using ActorBlk.Actors.Clustering;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers.Stacking;
using ActorBlk.Hardware.Requests;
using ActorBlk.Hardware.Sysfs;
using Xunit;

namespace ActorBlk.Actors.Tests.MultiNode;

/// <summary>
/// A remote leg made read-only on its own node (<c>queue/read_only</c> = 1 there) after the
/// mirror's node connected to it: its writes fail and it goes faulty, and a re-add by hand is
/// refused with EBUSY naming it read-only, as for a leg of this node (README, "Mirrors"), until
/// its owner makes it writable again. The local queue's NBD connection keeps the flags of its
/// handshake, so the handle follows what the owner publishes in the registry; before, the re-add
/// was taken (the command exited 0) and the leg went faulty again at its first write (an outside
/// cluster audit).
/// </summary>
[Collection(ClusterCollection.Name)]
public sealed class MirrorRemoteLegReadOnlySpec : Akka.TestKit.Xunit2.TestKit
{
    private static readonly TimeSpan Liveness = TimeSpan.FromSeconds(90);

    private const long LegBytes = (4L << 20) + MirrorSuperblock.DataOffset;

    public MirrorRemoteLegReadOnlySpec()
        : base(Support.Configs.Simulated)
    {
    }

    private static DeviceOptions Memory(string name) => new() { Name = name, Size = LegBytes, MemoryBacked = true, PollQueues = 0 };

    private Task UntilAsync(Func<bool> condition) => AwaitConditionAsync(() => Task.FromResult(condition()), Liveness, TimeSpan.FromMilliseconds(50));

    [Fact]
    public async Task A_remote_leg_made_read_only_by_its_owner_is_refused_by_a_re_add_until_it_is_writable_again()
    {
        var a = ClusterNode.Start("a");
        await using var _a = a;
        var c = ClusterNode.Start("c");
        await using var _c = c;
        await a.JoinAsync(a, Liveness);
        await c.JoinAsync(a, Liveness);
        c.ExportNbd();
        await c.Layer.CreateDeviceAsync(Memory("leg"));
        await a.Layer.CreateDeviceAsync(Memory("local"));
        await a.Layer.CreateStackedDeviceAsync("md0");
        var md0 = await a.Layer.LoadTableAsync("md0", StackTable.Mirror(new MirrorOptions { RegionBytes = 256 << 10, AssumeClean = true }, "local", $"leg@{c.Name}"));
        var mirror = (MirrorTarget)md0.Queue.BioDriver!;
        var leg = (ClusterBlockDevice)mirror.Legs[1];
        Assert.True(leg.IsRemote);
        Assert.False(leg.IsReadOnly);
        var state = $"block/md0/md/dev-{leg.Name}/state";

        // The owner makes its device read-only: the next write fails on it and the leg is faulty,
        // with no error to the caller.
        await c.Layer.WriteAttributeAsync("block/leg/queue/read_only", "1");
        var data = new byte[64 << 10];
        Random.Shared.NextBytes(data);
        await md0.WriteAsync(0, data, RequestFlags.Fua).AsTask().WaitAsync(Liveness);
        Assert.Equal(MirrorLegState.Faulty, mirror.LegState(1));

        // Once the registry shows it read-only, the handle says so and a re-add is refused.
        await a.WaitForDevicesAsync(ds => ds.Any(d => d.Id == $"leg@{c.Name}" && d.ReadOnly), Liveness);
        await UntilAsync(() => leg.IsReadOnly);
        var refused = await Assert.ThrowsAsync<AttributeException>(() => a.Layer.WriteAttributeAsync(state, "re-add").AsTask());
        Assert.Equal(AttributeErrno.EBUSY, refused.Errno);
        Assert.Contains("read-only", refused.Message, StringComparison.Ordinal);
        Assert.Equal(MirrorLegState.Faulty, mirror.LegState(1));
        Assert.Equal("faulty\n", a.Layer.ReadAttribute(state));

        // Writable again on its node: the re-add is taken and the leg is rebuilt with the write it missed.
        await c.Layer.WriteAttributeAsync("block/leg/queue/read_only", "0");
        await a.WaitForDevicesAsync(ds => ds.Any(d => d.Id == $"leg@{c.Name}" && !d.ReadOnly), Liveness);
        await UntilAsync(() => !leg.IsReadOnly);
        await a.Layer.WriteAttributeAsync(state, "re-add");
        await UntilAsync(() => mirror.LegState(1) == MirrorLegState.InSync);
        Assert.True(c.Layer.TryGetDevice("leg", out var onC));
        var back = new byte[data.Length];
        await onC.ReadAsync(MirrorSuperblock.DataOffset, back).AsTask().WaitAsync(Liveness);
        Assert.Equal(data, back);
    }

    // A handle opened while the device was read-only has a local queue connected read-only (the
    // entry and the export's handshake said so). Its owner making it writable replaces that queue
    // by one connected now: before, the handle stayed read-only for good (a review).
    [Fact]
    public async Task A_remote_device_opened_read_only_becomes_writable_when_its_owner_makes_it_so()
    {
        var a = ClusterNode.Start("a");
        await using var _a = a;
        var c = ClusterNode.Start("c");
        await using var _c = c;
        await a.JoinAsync(a, Liveness);
        await c.JoinAsync(a, Liveness);
        c.ExportNbd();
        await c.Layer.CreateDeviceAsync(Memory("ro"));
        await c.Layer.WriteAttributeAsync("block/ro/queue/read_only", "1");
        await a.WaitForDevicesAsync(ds => ds.Any(d => d.Id == $"ro@{c.Name}" && d.ReadOnly && !string.IsNullOrEmpty(d.NbdEndpoint)), Liveness);
        var handle = await a.Layer.OpenAsync($"ro@{c.Name}").WaitAsync(Liveness);
        Assert.True(handle.IsReadOnly);
        var data = new byte[4096];
        Random.Shared.NextBytes(data);
        Assert.Equal(InvalidRequestReason.ReadOnly, (await Assert.ThrowsAsync<InvalidBlockRequestException>(() => handle.WriteAsync(0, data).AsTask())).Reason);

        var incarnation = handle.Incarnation;
        await c.Layer.WriteAttributeAsync("block/ro/queue/read_only", "0");
        await UntilAsync(() => handle.Incarnation > incarnation && !handle.IsReadOnly);
        await handle.WriteAsync(0, data).AsTask().WaitAsync(Liveness);
        Assert.True(c.Layer.TryGetDevice("ro", out var onC));
        var back = new byte[data.Length];
        await onC.ReadAsync(0, back).AsTask().WaitAsync(Liveness);
        Assert.Equal(data, back);
        await handle.DisposeAsync();
    }
}
