using ActorBlk.Actors.Clustering;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers;
using ActorBlk.Hardware.Drivers.Stacking;
using Xunit;

namespace ActorBlk.Actors.Tests.MultiNode;

/// <summary>
/// README, "Mirrors", "Replacing a leg", with legs on other nodes (<c>name@host:port</c>): actor
/// systems on 127.0.0.1 (port 0) in one cluster, the mirror on the first (the oldest, so the
/// cluster survives the loss of another), <see cref="BlockLayer.ReplaceMirrorLegAsync"/> naming
/// a device of another node.
/// </summary>
[Collection(MirrorClusterCollection.Name)]
public sealed class MirrorReplaceRemoteSpec : Akka.TestKit.Xunit2.TestKit
{
    // Liveness bounds for a loaded 2-core machine (joining, gossip, failure detection, NBD, a whole recovery).
    private static readonly TimeSpan Liveness = TimeSpan.FromSeconds(90);

    private const int Block = 4096;

    private const long DataBytes = 16L << 20;

    private const long LegBytes = DataBytes + MirrorSuperblock.DataOffset;

    public MirrorReplaceRemoteSpec()
        : base(Support.Configs.Simulated)
    {
    }

    private static DeviceOptions Memory(string name) => new() { Name = name, Size = LegBytes, MemoryBacked = true, PollQueues = 0 };

    // Never all zero: the block's number and the version are in its first bytes.
    private static byte[] Stamp(long block, int version)
    {
        var data = new byte[Block];
        new Random(HashCode.Combine(block, version)).NextBytes(data);
        BitConverter.TryWriteBytes(data, block + 1);
        BitConverter.TryWriteBytes(data.AsSpan(8), version);
        return data;
    }

    private Task UntilAsync(Func<bool> condition, string what) =>
        AwaitConditionAsync(() => Task.FromResult(condition()), Liveness, TimeSpan.FromMilliseconds(50), what);

    // The old leg's handle is closed before ReplaceMirrorLegAsync returns, as a destroyed mirror's
    // handles are before the destroy is answered: its local queue is gone then. The leg was failed
    // by hand, so its node is up and its queue still there to go.
    [Fact]
    public async Task A_remote_leg_failed_by_hand_has_its_handle_closed_and_its_local_queue_gone_when_the_replacement_returns()
    {
        var a = ClusterNode.Start("a");
        await using var _a = a;
        var b = ClusterNode.Start("b");
        await using var _b = b;
        await a.JoinAsync(a, Liveness);
        await b.JoinAsync(a, Liveness);
        b.ExportNbd();
        await b.Layer.CreateDeviceAsync(Memory("old"));
        var fresh = await b.Layer.CreateDeviceAsync(Memory("new"));
        await a.WaitForDevicesAsync(d => new[] { $"old@{b.Name}", $"new@{b.Name}" }.All(id => d.Any(e => e.Id == id && e.NbdEndpoint.Length > 0)), Liveness);
        var local = await a.Layer.CreateDeviceAsync(Memory("local"));
        await a.Layer.CreateStackedDeviceAsync("md1");
        var md1 = await a.Layer.LoadTableAsync("md1", StackTable.Mirror(new MirrorOptions { RegionBytes = 256 << 10, AssumeClean = true }, "local", $"old@{b.Name}"));
        var mirror = (MirrorTarget)md1.Queue.BioDriver!;
        var oldLeg = Assert.IsType<ClusterBlockDevice>(mirror.Legs[1]);
        var oldQueue = oldLeg.Name;
        Assert.True(a.Layer.TryGetDevice(oldQueue, out _));
        await md1.WriteAsync(7 * Block, Stamp(7, 1)).AsTask().WaitAsync(Liveness);
        await a.Layer.WriteAttributeAsync($"block/md1/md/dev-{oldQueue}/state", "faulty");

        Assert.Equal(oldQueue, await a.Layer.ReplaceMirrorLegAsync("md1", 1, $"new@{b.Name}").WaitAsync(Liveness));
        Assert.True(oldLeg.IsClosed);
        Assert.False(a.Layer.TryGetDevice(oldQueue, out _));

        await UntilAsync(() => mirror.LegState(1) == MirrorLegState.InSync && mirror.SyncAction == "idle", "the recovery to end");
        var back = new byte[Block];
        await fresh.ReadAsync(MirrorSuperblock.DataOffset + (7 * Block), back).AsTask().WaitAsync(Liveness);
        Assert.Equal(Stamp(7, 1), back);
        Assert.Equal(0, await a.Layer.DestroyDeviceAsync("md1").WaitAsync(Liveness));
        await a.Layer.DestroyDeviceAsync(local.Name);
    }
}
