using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers.Stacking;
using ActorBlk.Hardware.Queues;
using ActorBlk.Testing;
using Xunit;
using Xunit.Abstractions;

namespace ActorBlk.Actors.Tests.MultiNode;

/// <summary>
/// Issue 13 items 1 and 6 across nodes: a mirror over a local leg and a leg that is another node's
/// device (opened over NBD). Two actor systems on 127.0.0.1 (port 0) form one cluster; the mirror
/// lives on the first (the oldest). Reads are balanced over the local and the remote leg, a read
/// error on either leg is corrected from the other (the good data written back over the network
/// for the remote one), and a mirror table naming a leg as <c>name@host:port</c> opens it, writes
/// through to the owner, and closes it with the mirror.
/// </summary>
[Collection(MirrorClusterCollection.Name)]
public sealed class MirrorClusterSpec : Akka.TestKit.Xunit2.TestKit
{
    // Liveness bounds for a loaded 2-core machine (joining, gossip, NBD).
    private static readonly TimeSpan Liveness = TimeSpan.FromSeconds(90);

    private const int Block = 4096;
    private const int LegBytes = 16 << 20;

    private readonly ITestOutputHelper _output;

    public MirrorClusterSpec(ITestOutputHelper output)
        : base(Support.Configs.Simulated, output: output)
    {
        _output = output;
    }

    private static DeviceOptions Memory(string name) => new() { Name = name, Size = LegBytes, MemoryBacked = true, PollQueues = 0 };

    // The block's number and the version are in its first bytes.
    private static byte[] Stamp(long block, int version) => BlockStamp.Labelled(block, version, label: block);

    // a (the seed, the mirror's node) and b (the owner of the remote leg, exporting over NBD).
    private static async Task<(ClusterNode A, ClusterNode B)> StartClusterAsync(string remoteLeg)
    {
        var a = ClusterNode.Start("a");
        var b = ClusterNode.Start("b");
        await a.JoinAsync(a, Liveness);
        await b.JoinAsync(a, Liveness);
        b.ExportNbd();
        await b.Layer.CreateDeviceAsync(Memory(remoteLeg));
        await a.WaitForDevicesAsync(d => d.Any(e => e.Id == $"{remoteLeg}@{b.Name}" && e.NbdEndpoint.Length > 0), Liveness);
        return (a, b);
    }

    private static BlockDevice Serve(MirrorTarget target, string name) => BioDevices.Create(name, target);

    private static async Task<byte[]> ReadAsync(IBlockDevice device, long offset)
    {
        var buffer = new byte[Block];
        await device.ReadAsync(offset, buffer).AsTask().WaitAsync(Liveness);
        return buffer;
    }

    [Fact]
    public async Task Reads_are_balanced_over_a_local_and_a_remote_leg_and_a_read_error_of_either_is_corrected_from_the_other()
    {
        var (a, b) = await StartClusterAsync("rleg");
        await using var _a = a;
        await using var _b = b;
        Assert.True(b.Layer.TryGetDevice("rleg", out var owner));
        var local = await a.Layer.CreateDeviceAsync(Memory("lleg"));
        await using var remote = await a.Layer.OpenAsync($"rleg@{b.Name}", new DeviceOptions { Completion = CompletionContinuation.ThreadPool, IoTimeoutMs = 10_000 });
        Assert.True(remote.IsRemote);

        // Both legs behind the fault switch, so each can be given a bad range.
        var (legA, faultsA) = FaultyLeg.Create("mix-a", local);
        var (legB, faultsB) = FaultyLeg.Create("mix-b", remote);
        var mirror = await MirrorTarget.AssembleAsync("mdmix", [legA, legB], new MirrorOptions { RegionBytes = 64 << 10, AssumeClean = true }).WaitAsync(Liveness);
        var md = Serve(mirror, "mdmix");
        try
        {
            const int blocks = 64;
            for (var block = 0; block < blocks; block++)
            {
                await md.WriteAsync(block * (long)Block, Stamp(block, 1)).AsTask().WaitAsync(Liveness);
            }

            // Written through to the other node's device.
            Assert.Equal(Stamp(33, 1), await ReadAsync(owner, MirrorSuperblock.DataOffset + (33 * Block)));

            // One read at a time: both legs idle at every choice, so the choice alternates.
            long reads0 = faultsA.Reads, reads1 = faultsB.Reads;
            var remoteStat = remote.Queue.Stats.Read().ReadIos;
            for (var i = 0; i < 200; i++)
            {
                var block = i * 7 % blocks;
                Assert.Equal(Stamp(block, 1), await ReadAsync(md, block * (long)Block));
            }

            var localReads = faultsA.Reads - reads0;
            var remoteReads = faultsB.Reads - reads1;
            _output.WriteLine($"QD1: {localReads} reads on the local leg, {remoteReads} on the remote leg");
            Assert.Equal(200, localReads + remoteReads);
            Assert.InRange(localReads, 60, 140);
            Assert.Equal((ulong)remoteReads, remote.Queue.Stats.Read().ReadIos - remoteStat);

            // QD32: the leg with fewer reads in flight is chosen; both serve, the data is right.
            reads0 = faultsA.Reads;
            reads1 = faultsB.Reads;
            await Task.WhenAll(Enumerable.Range(0, 32).Select(w => Task.Run(async () =>
            {
                var buffer = new byte[Block];
                for (var i = 0; i < 40; i++)
                {
                    var block = (w + (i * 32)) % blocks;
                    await md.ReadAsync(block * (long)Block, buffer);
                    Assert.Equal(Stamp(block, 1), buffer);
                }
            }))).WaitAsync(Liveness);
            localReads = faultsA.Reads - reads0;
            remoteReads = faultsB.Reads - reads1;
            _output.WriteLine($"QD32: {localReads} reads on the local leg, {remoteReads} on the remote leg");
            Assert.Equal(32 * 40, localReads + remoteReads);
            Assert.True(localReads > 0 && remoteReads > 0, $"reads: local {localReads}, remote {remoteReads}");

            // A read error on the local leg (its data gone bad) is served from the remote leg and
            // the good data written back over the bad range.
            await local.WriteAsync(MirrorSuperblock.DataOffset + (10 * Block), new byte[Block]).AsTask().WaitAsync(Liveness);
            faultsA.BadRange(MirrorSuperblock.DataOffset + (10 * Block), Block);
            for (var i = 0; i < 8 && faultsA.ReadErrors == 0; i++)
            {
                Assert.Equal(Stamp(10, 1), await ReadAsync(md, 10 * Block));
            }

            Assert.Equal(1, faultsA.ReadErrors);
            Assert.False(faultsA.HasBadRange);
            Assert.Equal(1, mirror.CorrectedReadErrors(0));
            Assert.Equal(Stamp(10, 1), await ReadAsync(local, MirrorSuperblock.DataOffset + (10 * Block)));

            // And one on the remote leg is served from the local leg and repaired on the other node.
            await owner.WriteAsync(MirrorSuperblock.DataOffset + (20 * Block), new byte[Block]).AsTask().WaitAsync(Liveness);
            faultsB.BadRange(MirrorSuperblock.DataOffset + (20 * Block), Block);
            for (var i = 0; i < 8 && faultsB.ReadErrors == 0; i++)
            {
                Assert.Equal(Stamp(20, 1), await ReadAsync(md, 20 * Block));
            }

            Assert.Equal(1, faultsB.ReadErrors);
            Assert.False(faultsB.HasBadRange);
            Assert.Equal(1, mirror.CorrectedReadErrors(1));
            Assert.Equal(Stamp(20, 1), await ReadAsync(owner, MirrorSuperblock.DataOffset + (20 * Block)));
            Assert.Equal((MirrorLegState.InSync, MirrorLegState.InSync), (mirror.LegState(0), mirror.LegState(1)));
            Assert.Equal(0L, md.Queue.DoubleCompletions);
        }
        finally
        {
            await mirror.StopAsync().WaitAsync(Liveness);
            await md.DisposeAsync();
            await legB.DisposeAsync();
            await legA.DisposeAsync();
        }
    }

    [Fact]
    public async Task A_mirror_table_naming_a_leg_of_another_node_opens_it_writes_through_and_closes_it_with_the_mirror()
    {
        var (a, b) = await StartClusterAsync("tleg");
        await using var _a = a;
        await using var _b = b;
        Assert.True(b.Layer.TryGetDevice("tleg", out var owner));
        var local = await a.Layer.CreateDeviceAsync(Memory("sleg"));
        await a.Layer.CreateStackedDeviceAsync("mdt");
        var md = await a.Layer.LoadTableAsync("mdt", StackTable.Mirror(new MirrorOptions { RegionBytes = 64 << 10, AssumeClean = true }, "sleg", $"tleg@{b.Name}"));
        var mirror = (MirrorTarget)md.Queue.BioDriver!;
        var remote = mirror.Legs[1];
        var remoteQueue = remote.Name;
        Assert.NotEqual("tleg", remoteQueue);
        Assert.True(a.Layer.TryGetDevice(remote.Name, out _));
        Assert.Equal(1, b.Nbd!.ConnectionCount);

        await md.WriteAsync(5 * Block, Stamp(5, 1)).AsTask().WaitAsync(Liveness);
        Assert.Equal(Stamp(5, 1), await ReadAsync(owner, MirrorSuperblock.DataOffset + (5 * Block)));
        Assert.Equal(Stamp(5, 1), await ReadAsync(local, MirrorSuperblock.DataOffset + (5 * Block)));

        // Reads at QD1 alternate: both legs' disk statistics count them.
        var localBefore = local.Queue.Stats.Read().ReadIos;
        var remoteBefore = remote.Queue.Stats.Read().ReadIos;
        for (var i = 0; i < 100; i++)
        {
            Assert.Equal(Stamp(5, 1), await ReadAsync(md, 5 * Block));
        }

        var localReads = local.Queue.Stats.Read().ReadIos - localBefore;
        var remoteReads = remote.Queue.Stats.Read().ReadIos - remoteBefore;
        _output.WriteLine($"{localReads} reads on the local leg, {remoteReads} on the remote leg");
        Assert.Equal(100UL, localReads + remoteReads);
        Assert.InRange(localReads, 30UL, 70UL);
        Assert.Equal("0\n", a.Layer.ReadAttribute("block/mdt/md/degraded"));
        Assert.Equal("in_sync\n", a.Layer.ReadAttribute($"block/mdt/md/dev-{remote.Name}/state"));

        // Removing the mirror closes its handle of the remote leg: the local queue and the NBD connection go.
        Assert.Equal(0, await a.Layer.DestroyDeviceAsync("mdt").WaitAsync(Liveness));
        Assert.False(a.Layer.TryGetDevice(remoteQueue, out _));
        Assert.Throws<ObjectDisposedException>(() => remote.Capacity);
        await AwaitConditionAsync(() => Task.FromResult(b.Nbd.ConnectionCount == 0), Liveness, TimeSpan.FromMilliseconds(50), "b's NBD connection to close");
        Assert.True(b.Layer.TryGetDevice("tleg", out _));
    }

    [Fact]
    public void A_stacked_devices_entry_may_name_a_member_of_another_node_as_name_at_node_but_not_an_unknown_plain_name()
    {
        static ActorBlkSettings Parse(string members) => ActorBlkSettings.Create(Akka.Configuration.ConfigurationFactory.ParseString($$"""
            actorblk.devices = [ { name = lega, size = 16m } ]
            actorblk.stacked-devices = [ { name = md0, type = mirror, members = [{{members}}] } ]
            """));

        var table = Assert.IsType<MirrorTable>(Parse("lega, \"legb@127.0.0.1:4054\"").StackedDevices.Single().Table);
        Assert.Equal(["lega", "legb@127.0.0.1:4054"], table.Legs);
        var unknown = Assert.Throws<DeviceOptionsException>(() => Parse("lega, legb"));
        Assert.Equal("members", unknown.Option);
        Assert.Contains("'legb'", unknown.Message, StringComparison.Ordinal);
    }
}
