using ActorBlk.Actors.Clustering;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers.Stacking;
using ActorBlk.Hardware.Requests;
using ActorBlk.Hardware.Sysfs;
using ActorBlk.Testing;
using Akka.Cluster;
using Xunit;

namespace ActorBlk.Actors.Tests.MultiNode;

/// <summary>
/// README, "Mirrors", "Replacing a leg", with legs on other nodes (<c>name@host:port</c>): actor
/// systems on 127.0.0.1 (port 0) in one cluster, the mirror on the first (the oldest, so the
/// cluster survives the loss of another), <see cref="BlockLayer.ReplaceMirrorLegAsync"/> naming
/// a device of another node.
/// </summary>
[Collection(ClusterCollection.Name)]
public sealed class MirrorReplaceRemoteSpec : Akka.TestKit.Xunit2.TestKit
{
    // Liveness bounds for a loaded 2-core machine (joining, gossip, failure detection, NBD, a whole recovery).
    private static readonly TimeSpan Liveness = TimeSpan.FromSeconds(90);

    private const int Block = 4096;

    private const long DataBytes = 16L << 20;

    private const long LegBytes = DataBytes + MirrorSuperblock.DataOffset;

    private const int Blocks = (int)(DataBytes / Block);

    public MirrorReplaceRemoteSpec()
        : base(Support.Configs.Simulated)
    {
    }

    private static DeviceOptions Memory(string name) => new() { Name = name, Size = LegBytes, MemoryBacked = true, PollQueues = 0 };

    // Never all zero: the block's number and the version are in its first bytes.
    private static byte[] Stamp(long block, int version) => BlockStamp.Labelled(block, version, label: block + 1);

    private static Task<byte[]> ReadAllAsync(IBlockDevice device, long offset, long length) => MirrorDevices.ReadAllAsync(device, offset, length, Liveness);

    private Task UntilAsync(Func<bool> condition, string what) =>
        AwaitConditionAsync(() => Task.FromResult(condition()), Liveness, TimeSpan.FromMilliseconds(50), what);

    // The case the feature is for: a mirror on a over a local leg and a leg on b (leg@b) under
    // verified writes; b dies for good, the leg goes faulty and the writes go on degraded; the
    // leg is replaced by a device on c (leg2@c) while the writes go on, and the recovery copies
    // the whole data area to it.
    [Fact]
    public async Task A_leg_whose_node_died_is_replaced_by_a_device_of_another_node_under_verified_writes_and_recovered_whole()
    {
        // a holds the mirror (the oldest member); b the leg that dies; c the replacement. A short
        // member-wait for the refusal of a member that never appears.
        var a = ClusterNode.Start("a", hocon: "actorblk.cluster.registry.member-wait = 3s");
        await using var _a = a;
        var b = ClusterNode.Start("b");
        await using var _b = b;
        var c = ClusterNode.Start("c");
        await using var _c = c;
        await a.JoinAsync(a, Liveness);
        await b.JoinAsync(a, Liveness);
        await c.JoinAsync(a, Liveness);
        b.ExportNbd();
        c.ExportNbd();
        await b.Layer.CreateDeviceAsync(Memory("leg"));
        var leg2 = await c.Layer.CreateDeviceAsync(Memory("leg2"));
        await c.Layer.CreateDeviceAsync(Memory("leg3"));
        await a.WaitForDevicesAsync(d => new[] { $"leg@{b.Name}", $"leg2@{c.Name}", $"leg3@{c.Name}" }.All(id => d.Any(e => e.Id == id && e.NbdEndpoint.Length > 0)), Liveness);
        var local = await a.Layer.CreateDeviceAsync(Memory("local"));
        await a.Layer.CreateStackedDeviceAsync("md0");

        // A recovery under user I/O runs at sync_speed_min: 16 MiB at 50 MB/s.
        var md0 = await a.Layer.LoadTableAsync("md0", StackTable.Mirror(new MirrorOptions { RegionBytes = 256 << 10, SyncSpeedMinKiB = 50_000 }, "local", $"leg@{b.Name}"));
        var mirror = (MirrorTarget)md0.Queue.BioDriver!;
        await mirror.SyncIdle.WaitAsync(Liveness);
        var oldLeg = Assert.IsType<ClusterBlockDevice>(mirror.Legs[1]);
        Assert.True(oldLeg.IsRemote);
        var oldName = oldLeg.Name;

        var writers = Enumerable.Range(0, 4).Select(i => new Writer(md0, i, 4)).ToArray();
        foreach (var writer in writers)
        {
            writer.Start();
        }

        try
        {
            // Written through to b, then b dies for good: the leg goes faulty, the writes go on.
            await UntilAsync(() => writers.Sum(w => w.Completed) > 200, "writes before the crash");
            await b.CrashAsync();
            await UntilAsync(() => mirror.LegState(1) == MirrorLegState.Faulty, "the remote leg to go faulty");
            Assert.Equal("1\n", a.Layer.ReadAttribute("block/md0/md/degraded"));
            Assert.Equal("faulty\n", a.Layer.ReadAttribute($"block/md0/md/dev-{oldName}/state"));
            var degraded = writers.Sum(w => w.Completed);
            await UntilAsync(() => writers.Sum(w => w.Completed) > degraded + 200, "writes while degraded");

            // b is downed and removed: it is gone for good. Meanwhile the old handle's local queue
            // may have gone (offline while the registry still showed the device, it was replaced
            // by a reconnect that cannot connect); the handle is still the mirror's leg.
            var bAddress = b.Cluster.SelfUniqueAddress;
            await a.WaitForEventAsync(e => e is ClusterEvent.MemberRemoved r && r.Member.UniqueAddress.Equals(bAddress), Liveness);
            Assert.False(oldLeg.IsClosed);

            // A member that never appears is refused on `members` after member-wait; nothing changes.
            string[] Others() => [.. a.Layer.Devices.Select(d => d.Name).Where(n => n != oldName).Order()];
            var devicesBefore = Others();
            var ghost = await Assert.ThrowsAsync<DeviceOptionsException>(() => a.Layer.ReplaceMirrorLegAsync("md0", 1, $"ghost@{c.Name}").WaitAsync(Liveness));
            Assert.Equal("members", ghost.Option);
            Assert.Contains($"ghost@{c.Name}", ghost.Message, StringComparison.Ordinal);
            Assert.Same(oldLeg, mirror.Legs[1]);
            Assert.False(oldLeg.IsClosed);
            Assert.Equal(MirrorLegState.Faulty, mirror.LegState(1));
            Assert.Equal("1\n", a.Layer.ReadAttribute("block/md0/md/degraded"));
            Assert.Equal("faulty\n", a.Layer.ReadAttribute($"block/md0/md/dev-{oldName}/state"));
            Assert.Equal(devicesBefore, Others());

            // The replacement, while the writes go on: a handle of c's device takes the slot.
            Assert.Equal(oldName, await a.Layer.ReplaceMirrorLegAsync("md0", 1, $"leg2@{c.Name}").WaitAsync(Liveness));
            var replacement = Assert.IsType<ClusterBlockDevice>(mirror.Legs[1]);
            Assert.True(replacement.IsRemote);
            Assert.Equal($"leg2@{c.Name}", replacement.Device.Id);
            // Spare until the recovery (which may be done already) copied it whole.
            Assert.Contains(a.Layer.ReadAttribute($"block/md0/md/dev-{replacement.Name}/state"), new[] { "spare\n", "in_sync\n" });
            Assert.True(oldLeg.IsClosed);
            Assert.False(a.Layer.TryGetDevice(oldName, out _));
            Assert.DoesNotContain(mirror.Legs, l => l is ClusterBlockDevice h && h.Device.Id.EndsWith($"@{b.Name}", StringComparison.Ordinal));
            Assert.Throws<AttributeException>(() => a.Layer.ReadAttribute($"block/md0/md/dev-{oldName}/state"));
            Assert.Equal(1, c.Nbd!.ConnectionCount);

            var replaced = writers.Sum(w => w.Completed);
            await UntilAsync(() => mirror.LegState(1) == MirrorLegState.InSync && mirror.SyncAction == "idle", "the recovery to end");
            await UntilAsync(() => writers.Sum(w => w.Completed) > replaced + 200, "writes after the replacement");
        }
        finally
        {
            foreach (var writer in writers)
            {
                writer.Stop();
            }
        }

        await Task.WhenAll(writers.Select(w => w.Stopped)).WaitAsync(Liveness);
        Assert.Equal("idle\n", a.Layer.ReadAttribute("block/md0/md/sync_action"));
        Assert.Equal("0\n", a.Layer.ReadAttribute("block/md0/md/degraded"));
        var newLeg = Assert.IsType<ClusterBlockDevice>(mirror.Legs[1]);
        Assert.Equal("in_sync\n", a.Layer.ReadAttribute($"block/md0/md/dev-{newLeg.Name}/state"));

        // Every write completed once, with Ok.
        foreach (var writer in writers)
        {
            Assert.Equal((0L, 0L), (writer.Failures, writer.Doubles));
            Assert.Equal(writer.Submitted, writer.Completed);
        }

        Assert.Equal(0L, md0.Queue.DoubleCompletions);

        // The new leg holds the local leg's data area block for block, and every block's last write.
        var onLocal = await ReadAllAsync(local, MirrorSuperblock.DataOffset, DataBytes);
        var onNew = await ReadAllAsync(leg2, MirrorSuperblock.DataOffset, DataBytes);
        Assert.True(onLocal.AsSpan().SequenceEqual(onNew), "the new leg's data area differs from the local leg's");
        var checkedBlocks = 0;
        foreach (var (block, version) in writers.SelectMany(w => w.Latest))
        {
            Assert.True(Stamp(block, version).AsSpan().SequenceEqual(onNew.AsSpan((int)(block * Block), Block)), $"block {block} version {version}");
            checkedBlocks++;
        }

        Assert.True(checkedBlocks > 100, $"{checkedBlocks} blocks written");

        // A slot that is not faulty is not replaced; the handle opened for it is closed again.
        var notFaulty = await Assert.ThrowsAsync<InvalidOperationException>(() => a.Layer.ReplaceMirrorLegAsync("md0", 1, $"leg3@{c.Name}").WaitAsync(Liveness));
        Assert.Contains("not faulty", notFaulty.Message, StringComparison.Ordinal);
        Assert.Same(newLeg, mirror.Legs[1]);
        await UntilAsync(() => c.Nbd.ConnectionCount == 1, "the refused member's NBD connection to close");

        // Removing the mirror closes the new leg's handle too.
        Assert.Equal(0, await a.Layer.DestroyDeviceAsync("md0").WaitAsync(Liveness));
        Assert.True(newLeg.IsClosed);
        await UntilAsync(() => c.Nbd.ConnectionCount == 0, "c's NBD connection to close");
        await a.Layer.DestroyDeviceAsync("local");
    }

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

    // One writer at queue depth 1 over its own blocks (block % writers == its index), so the last
    // write of each block is known: each write's end_io is counted, a second completion of the same
    // write is a double, and the next write is submitted from the thread pool.
    private sealed class Writer(IBlockDevice device, int index, int writers) : IBioEndIo
    {
        private readonly Random _random = new(index);
        private readonly Dictionary<long, int> _latest = [];
        private readonly TaskCompletionSource _stopped = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private long _block;
        private int _version;
        private int _inFlight;
        private long _submitted;
        private long _completed;
        private long _failures;
        private long _doubles;
        private volatile bool _stop;

        public long Submitted => Interlocked.Read(ref _submitted);

        public long Completed => Interlocked.Read(ref _completed);

        public long Failures => Interlocked.Read(ref _failures);

        public long Doubles => Interlocked.Read(ref _doubles);

        public Task Stopped => _stopped.Task;

        // Read once stopped: each block this writer wrote and the version of its last write.
        public IReadOnlyDictionary<long, int> Latest => _latest;

        public void Start() => SubmitNext();

        public void Stop() => _stop = true;

        public void OnBioComplete(Bio bio, BlockStatus status)
        {
            if (Interlocked.Exchange(ref _inFlight, 0) != 1)
            {
                Interlocked.Increment(ref _doubles);
                return;
            }

            if (status == BlockStatus.Ok)
            {
                _latest[_block] = _version;
            }
            else
            {
                Interlocked.Increment(ref _failures);
            }

            Interlocked.Increment(ref _completed);
            ThreadPool.UnsafeQueueUserWorkItem(static w => w.SubmitNext(), this, preferLocal: false);
        }

        private void SubmitNext()
        {
            if (_stop)
            {
                _stopped.TrySetResult();
                return;
            }

            _block = ((long)_random.Next(Blocks / writers) * writers) + index;
            _version++;
            var data = Stamp(_block, _version);
            Volatile.Write(ref _inFlight, 1);
            Interlocked.Increment(ref _submitted);
            device.SubmitWithEndIo(BlockOp.Write, _block * Block, Block, data, RequestFlags.None, IBlockDevice.AnyCpu, this);
        }
    }
}
