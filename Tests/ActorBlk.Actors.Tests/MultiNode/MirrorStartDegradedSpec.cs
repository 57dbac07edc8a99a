using ActorBlk.Actors.Clustering;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers.Stacking;
using ActorBlk.Hardware.Requests;
using ActorBlk.Testing;
using Akka.Actor;
using Akka.Cluster;
using Akka.Event;
using Xunit;

namespace ActorBlk.Actors.Tests.MultiNode;

/// <summary>
/// A mirror whose remote leg is missing when its table is loaded (its node is down): refused as
/// before by default; with <see cref="MirrorOptions.StartDegraded"/> (mdadm --run) it starts with
/// that slot faulty, serves I/O, and takes the leg back by itself when the device appears.
/// </summary>
[Collection(MirrorClusterCollection.Name)]
public sealed class MirrorStartDegradedSpec : Akka.TestKit.Xunit2.TestKit, IDisposable
{
    private static readonly TimeSpan Liveness = TimeSpan.FromSeconds(90);

    private const long LegBytes = (16L << 20) + MirrorSuperblock.DataOffset;

    private const int Region = 256 << 10;

    private readonly string _legFile = Path.Combine(Path.GetTempPath(), $"actorblk-degraded-leg-{Guid.NewGuid():N}.img");

    public MirrorStartDegradedSpec()
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

    private static MirrorOptions Options(bool startDegraded) => new() { RegionBytes = Region, StartDegraded = startDegraded };

    private Task UntilAsync(Func<bool> condition) => AwaitConditionAsync(() => Task.FromResult(condition()), Liveness, TimeSpan.FromMilliseconds(50));

    private static async Task<MirrorSuperblock> SuperblockAsync(IBlockDevice leg)
    {
        var block = new byte[MirrorSuperblock.SuperblockBytes];
        await leg.ReadAsync(0, block).AsTask().WaitAsync(Liveness);
        return MirrorSuperblock.TryDecode(block) ?? throw new InvalidOperationException($"{leg.Name} holds no mirror superblock");
    }

    private static async Task<byte[]> ReadAsync(IBlockDevice device, long offset, int length)
    {
        var back = new byte[length];
        await device.ReadAsync(offset, back).AsTask().WaitAsync(Liveness);
        return back;
    }

    // A mirror over two local legs, written and stopped cleanly: "local" then carries its superblock
    // (leg 0 of 2, both in sync), as after a node restart.
    private static async Task<byte[]> MakeMirrorOnAsync(ClusterNode node, string name)
    {
        await node.Layer.CreateDeviceAsync(Memory("local"));
        await node.Layer.CreateDeviceAsync(Memory("other"));
        await node.Layer.CreateStackedDeviceAsync(name);
        var md = await node.Layer.LoadTableAsync(name, StackTable.Mirror(new MirrorOptions { RegionBytes = Region, AssumeClean = true }, "local", "other"));
        var data = Pattern(64 << 10, 3);
        await md.WriteAsync(0, data, RequestFlags.Fua).AsTask().WaitAsync(Liveness);
        await node.Layer.DestroyDeviceAsync(name);
        await node.Layer.DestroyDeviceAsync("other");
        return data;
    }

    [Fact]
    public async Task Without_start_degraded_a_mirror_whose_remote_leg_is_missing_is_still_refused()
    {
        var a = ClusterNode.Start("a", hocon: "actorblk.cluster.registry.member-wait = 2s");
        await using var _a = a;
        await a.JoinAsync(a, Liveness);
        await MakeMirrorOnAsync(a, "md0");
        await a.Layer.CreateStackedDeviceAsync("md0");

        var refused = await Assert.ThrowsAsync<DeviceOptionsException>(
            () => a.Layer.LoadTableAsync("md0", StackTable.Mirror(Options(startDegraded: false), "local", "ghost@127.0.0.1:1")).WaitAsync(Liveness));
        Assert.Equal("members", refused.Option);
        Assert.Contains("ghost@127.0.0.1:1", refused.Message);
        await a.Layer.DestroyDeviceAsync("md0");
        await a.Layer.DestroyDeviceAsync("local");
    }

    [Fact]
    public async Task With_start_degraded_a_mirror_whose_remote_leg_is_missing_starts_degraded_serves_io_and_releases_the_leg_when_destroyed()
    {
        var a = ClusterNode.Start("a", hocon: "actorblk.cluster.registry.member-wait = 2s");
        await using var _a = a;
        await a.JoinAsync(a, Liveness);
        var before = await MakeMirrorOnAsync(a, "md0");
        Assert.True(a.Layer.TryGetDevice("local", out var local));
        var generation = (await SuperblockAsync(local)).Generation;

        var warned = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
        var listener = a.System.ActorOf(Props.Create(() => new WarningListener(warned, "ghost@127.0.0.1:1")));
        a.System.EventStream.Subscribe(listener, typeof(Warning));
        await a.Layer.CreateStackedDeviceAsync("md0");
        var md0 = await a.Layer.LoadTableAsync("md0", StackTable.Mirror(Options(startDegraded: true), "local", "ghost@127.0.0.1:1")).WaitAsync(Liveness);
        Assert.Contains("start-degraded", await warned.Task.WaitAsync(Liveness));
        var mirror = (MirrorTarget)md0.Queue.BioDriver!;
        var missing = Assert.IsType<ClusterBlockDevice>(mirror.Legs[1]);
        Assert.True(missing.IsMissing);
        Assert.Equal(MirrorLegState.InSync, mirror.LegState(0));
        Assert.Equal(MirrorLegState.Faulty, mirror.LegState(1));
        Assert.Equal(1, mirror.Degraded);
        Assert.Equal("1\n", a.Layer.ReadAttribute("block/md0/md/degraded"));
        Assert.Equal("faulty\n", a.Layer.ReadAttribute($"block/md0/md/dev-{missing.Name}/state"));

        // The start is a leg failure as far as the metadata goes: a newer generation, the slot faulty.
        var sb = await SuperblockAsync(local);
        Assert.True(sb.Generation > generation);
        Assert.Equal(mirror.Generation, sb.Generation);
        Assert.Equal(MirrorLegState.Faulty, sb.States[1]);
        Assert.Equal(MirrorLegState.InSync, sb.States[0]);

        // It serves: the data of before, and new writes.
        Assert.Equal(before, await ReadAsync(md0, 0, before.Length));
        var data = Pattern(8192, 77);
        await md0.WriteAsync(3 * Region, data).AsTask().WaitAsync(Liveness);
        Assert.Equal(data, await ReadAsync(md0, 3 * Region, data.Length));
        Assert.Equal(0L, md0.Queue.DoubleCompletions);

        // Destroyed while the leg is missing: its handle is closed (the slot released) and the local leg is free.
        await a.Layer.DestroyDeviceAsync("md0");
        Assert.True(missing.IsClosed);
        await a.Layer.DestroyDeviceAsync("local");
    }

    [Fact]
    public async Task With_start_degraded_a_missing_leg_does_not_make_a_new_mirror_of_blank_legs()
    {
        var a = ClusterNode.Start("a", hocon: "actorblk.cluster.registry.member-wait = 2s");
        await using var _a = a;
        await a.JoinAsync(a, Liveness);
        await a.Layer.CreateDeviceAsync(Memory("blank"));
        await a.Layer.CreateStackedDeviceAsync("md0");

        var refused = await Assert.ThrowsAsync<MirrorAssemblyException>(
            () => a.Layer.LoadTableAsync("md0", StackTable.Mirror(Options(startDegraded: true), "blank", "ghost@127.0.0.1:1")).WaitAsync(Liveness));
        Assert.Contains("no present leg holds mirror metadata", refused.Message);

        // Nothing is held.
        await a.Layer.DestroyDeviceAsync("md0");
        await a.Layer.DestroyDeviceAsync("blank");
    }

    [Fact]
    public async Task A_mirror_started_degraded_takes_its_leg_back_when_the_node_returns_and_the_leg_then_carries_the_degraded_writes()
    {
        // a holds the mirror and is the oldest member; c owns the remote leg.
        var a = ClusterNode.Start("a", hocon: "actorblk.cluster.registry.member-wait = 2s");
        await using var _a = a;
        var c = ClusterNode.Start("c");
        await a.JoinAsync(a, Liveness);
        await c.JoinAsync(a, Liveness);
        c.ExportNbd();
        a.ExportNbd();
        var cPort = c.Cluster.SelfAddress.Port!.Value;
        // Kept from other processes until c is back on it, after its crash and removal.
        using var keptC = ReservedPort.Of(cPort);
        var legId = $"leg@{c.Name}";
        await c.Layer.CreateDeviceAsync(FileLeg());
        await a.Layer.CreateDeviceAsync(Memory("local"));

        // a has the leg from the registry before the table names it: a's member-wait is short (2 s,
        // for the load while c is away), shorter than replication can take on a loaded machine.
        await a.WaitForDevicesAsync(d => d.Any(e => e.Id == legId && e.NbdEndpoint.Length > 0), Liveness);

        // The mirror is made with both legs, written, and stopped cleanly.
        await a.Layer.CreateStackedDeviceAsync("md0");
        var md0 = await a.Layer.LoadTableAsync("md0", StackTable.Mirror(Options(startDegraded: false), "local", legId));
        var first = Pattern(1 << 20, 5);
        await md0.WriteAsync(0, first, RequestFlags.Fua).AsTask().WaitAsync(Liveness);
        await ((MirrorTarget)md0.Queue.BioDriver!).SyncIdle.WaitAsync(Liveness);
        await a.Layer.DestroyDeviceAsync("md0");

        // c is lost; the mirror is loaded again while its leg's node is away.
        var cAddress = c.Cluster.SelfUniqueAddress;
        await c.CrashAsync();
        await a.WaitForEventAsync(e => e is ClusterEvent.MemberRemoved r && r.Member.UniqueAddress.Equals(cAddress), Liveness);
        await a.WaitForDevicesAsync(d => d.All(e => e.Id != legId), Liveness);
        await a.Layer.CreateStackedDeviceAsync("md0");
        md0 = await a.Layer.LoadTableAsync("md0", StackTable.Mirror(Options(startDegraded: true), "local", legId)).WaitAsync(Liveness);
        var mirror = (MirrorTarget)md0.Queue.BioDriver!;
        Assert.Equal(MirrorLegState.Faulty, mirror.LegState(1));
        Assert.Equal(1, mirror.Degraded);

        // Writes while degraded: three regions.
        var written = new Dictionary<long, byte[]>();
        for (var i = 0; i < 3; i++)
        {
            var offset = ((long)(8 + (12 * i)) * Region) + (i * 8192);
            var data = Pattern(8192, 100 + i);
            await md0.WriteAsync(offset, data).AsTask().WaitAsync(Liveness);
            written[offset] = data;
        }

        var dirty = mirror.DirtyRegions();
        Assert.InRange(dirty, 3, 3 + (first.Length / Region));

        // c returns at the same address with the same file: the leg is taken back by itself and only
        // the dirty regions are copied.
        await using var back = ClusterNode.Start("c", cPort);
        await back.JoinAsync(a, Liveness);
        back.ExportNbd();
        var legAgain = await back.Layer.CreateDeviceAsync(FileLeg());
        await UntilAsync(() => mirror.LegState(1) == MirrorLegState.InSync && mirror.SyncAction == "idle");
        Assert.False(((ClusterBlockDevice)mirror.Legs[1]).IsMissing);
        Assert.Equal(0, mirror.Degraded);
        // Counted as the leg turned rebuilding, so seen by whoever sees it in sync again.
        Assert.Equal(1, mirror.AutomaticReAdds);
        Assert.Equal(dirty, mirror.ResyncedRegions);
        foreach (var (offset, data) in written)
        {
            Assert.Equal(data, await ReadAsync(legAgain, MirrorSuperblock.DataOffset + offset, data.Length));
        }

        // The local leg fails: the mirror reads everything from the returned leg.
        await mirror.FailLegAsync(0);
        Assert.Equal(MirrorLegState.Faulty, mirror.LegState(0));
        Assert.Equal(first, await ReadAsync(md0, 0, first.Length));
        foreach (var (offset, data) in written)
        {
            Assert.Equal(data, await ReadAsync(md0, offset, data.Length));
        }

        Assert.Equal(0L, md0.Queue.DoubleCompletions);
        var legQueue = mirror.Legs[1].Name;
        await a.Layer.DestroyDeviceAsync("md0");
        Assert.False(a.Layer.TryGetDevice(legQueue, out _));
    }

    // Completes with the first warning that names the member.
    private sealed class WarningListener : ReceiveActor
    {
        public WarningListener(TaskCompletionSource<string> warned, string member) =>
            Receive<Warning>(w =>
            {
                var text = w.Message?.ToString() ?? string.Empty;
                if (text.Contains(member, StringComparison.Ordinal))
                {
                    warned.TrySetResult(text);
                }
            });
    }
}
