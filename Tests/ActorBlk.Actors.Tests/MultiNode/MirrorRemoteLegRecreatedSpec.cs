using System.Collections.Concurrent;
using ActorBlk.Actors.Clustering;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers.Stacking;
using ActorBlk.Hardware.Requests;
using ActorBlk.Testing;
using Xunit;

namespace ActorBlk.Actors.Tests.MultiNode;

/// <summary>
/// A mirror on one node over a local leg and a remote leg (<c>name@host:port</c>, another node's
/// memory-backed device opened over NBD) when the remote leg's owner destroys that device and
/// creates another under its name, of the same size, back to back. The remote leg must go faulty
/// (the mirror serves from the local leg with no error to the caller) and never serve the new,
/// empty device's zeros; once its handle connects to the new device, the automatic re-add copies
/// the whole mirror to it (the new device carries no mirror superblock), after which every block
/// written reads back right through the mirror (reads balanced over both legs) and on the new
/// device itself.
/// </summary>
[Collection(MirrorClusterCollection.Name)]
public sealed class MirrorRemoteLegRecreatedSpec : Akka.TestKit.Xunit2.TestKit
{
    // Liveness bounds for a loaded 2-core machine (joining, gossip, NBD reconnects, a whole resync).
    private static readonly TimeSpan Liveness = TimeSpan.FromSeconds(90);

    private const int Block = 4096;

    private const int Region = 256 << 10;

    private const long DataBytes = 16L << 20;

    private const long LegBytes = DataBytes + MirrorSuperblock.DataOffset;

    private const int Blocks = (int)(DataBytes / Block);

    public MirrorRemoteLegRecreatedSpec()
        : base(Support.Configs.Simulated)
    {
    }

    private static DeviceOptions Memory(string name) => new() { Name = name, Size = LegBytes, MemoryBacked = true, PollQueues = 0 };

    // Never all zero: the block's number and the version are in its first bytes.
    private static byte[] Stamp(long block, int version) => BlockStamp.Labelled(block, version, label: block + 1);

    // Two nodes exporting over NBD: a (the seed) will own the remote leg, b the mirror.
    private static async Task<(ClusterNode A, ClusterNode B)> StartPairAsync()
    {
        var a = ClusterNode.Start("a");
        var b = ClusterNode.Start("b");
        await a.JoinAsync(a, Liveness);
        await b.JoinAsync(a, Liveness);
        a.ExportNbd();
        b.ExportNbd();
        return (a, b);
    }

    // Writes every block's first version, in 1 MiB FUA writes, and returns what was written.
    private static async Task<byte[][]> WriteEveryBlockAsync(IBlockDevice mirror)
    {
        var expected = Enumerable.Range(0, Blocks).Select(i => Stamp(i, 1)).ToArray();
        const int PerWrite = (1 << 20) / Block;
        for (var block = 0; block < Blocks; block += PerWrite)
        {
            var chunk = expected.Skip(block).Take(PerWrite).SelectMany(x => x).ToArray();
            await mirror.WriteAsync((long)block * Block, chunk, RequestFlags.Fua).AsTask().WaitAsync(Liveness);
        }

        return expected;
    }

    // what: the state to report, read when the wait fails (a message built before the wait
    // reported the state at its start, which once sent a diagnosis astray).
    private async Task UntilAsync(Func<bool> condition, Func<string> what)
    {
        try
        {
            await AwaitConditionAsync(() => Task.FromResult(condition()), Liveness, TimeSpan.FromMilliseconds(50));
        }
        catch (Exception ex) when (ex is not OperationCanceledException)
        {
            throw new Xunit.Sdk.XunitException($"{what()}: {ex.Message}");
        }
    }

    // Reads every block, one 4 KiB read at a time (each bounded), and says which differ from what
    // was written, and how many of those read as zeros.
    private static async Task<(int Wrong, int Zeros, long FirstWrong)> VerifyAsync(IBlockDevice device, long baseOffset, byte[][] expected)
    {
        var back = new byte[Block];
        int wrong = 0, zeros = 0;
        long first = -1;
        for (var block = 0; block < expected.Length; block++)
        {
            await device.ReadAsync(baseOffset + ((long)block * Block), back).AsTask().WaitAsync(Liveness);
            if (!back.AsSpan().SequenceEqual(expected[block]))
            {
                wrong++;
                first = first < 0 ? block : first;
                if (!back.AsSpan().ContainsAnyExcept((byte)0))
                {
                    zeros++;
                }
            }
        }

        return (wrong, zeros, first);
    }

    // README "Mirrors": "When the leg's node is lost (killed, cut off, or it removes the device),
    // the leg's queue goes offline: its I/O in flight and later fails Offline, the mirror marks the
    // leg faulty and goes on degraded, with no error to the caller. When the node comes back and
    // publishes the device again, the handle connects a new queue (Reconnected), and the mirror
    // re-adds the leg by itself"; a re-add copies "the bitmap's dirty regions when its superblock is
    // this mirror's, whole otherwise". README "Cluster", remote devices: "A handle follows the name:
    // when the owner destroys a device and creates another under its name, the handle's queue goes
    // offline first ... That holds however quickly the device is created again: the NBD reconnect
    // refuses another device of the same server (its diskseq)". Before, the leg's NBD connection
    // reconnected within the reopen back-off straight to the new device, the leg stayed in sync,
    // and the reads balanced onto it returned zeros after acknowledged writes.
    [Fact]
    public async Task A_remote_leg_destroyed_and_created_again_goes_faulty_and_is_resynced_whole_never_serving_the_new_devices_zeros()
    {
        // a owns the remote leg and is the seed; b holds the mirror.
        var (a, b) = await StartPairAsync();
        await using var _a = a;
        await using var _b = b;
        await a.Layer.CreateDeviceAsync(Memory("rleg"));
        var local = await b.Layer.CreateDeviceAsync(Memory("lleg"));
        await b.WaitForDevicesAsync(d => d.Any(e => e.Id == $"rleg@{a.Name}" && e.NbdEndpoint.Length > 0), Liveness);

        await b.Layer.CreateStackedDeviceAsync("md0");
        var md0 = await b.Layer.LoadTableAsync("md0", StackTable.Mirror(new MirrorOptions { RegionBytes = Region }, "lleg", $"rleg@{a.Name}"));
        var mirror = (MirrorTarget)md0.Queue.BioDriver!;
        var remote = Assert.IsType<ClusterBlockDevice>(mirror.Legs[1]);
        Assert.True(remote.IsRemote);
        await mirror.SyncIdle.WaitAsync(Liveness);
        Assert.Equal(0, mirror.Degraded);
        Assert.Equal(DataBytes, mirror.DataBytes);

        // Every block written, in 1 MiB writes, and acknowledged durable.
        var expected = await WriteEveryBlockAsync(md0);

        await md0.FlushAsync().AsTask().WaitAsync(Liveness);
        Assert.True(a.Layer.TryGetDevice("rleg", out var oldOwner));
        var onOld = new byte[Block];
        await oldOwner.ReadAsync(MirrorSuperblock.DataOffset + (123L * Block), onOld);
        Assert.Equal(expected[123], onOld);

        var failed = new ConcurrentQueue<(string Leg, int InSync, int Legs)>();
        var legFailed = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        mirror.LegFailed += (leg, inSync, legs) =>
        {
            failed.Enqueue((leg, inSync, legs));
            legFailed.TrySetResult();
        };
        var reconnected = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        remote.Reconnected += (_, _) => reconnected.TrySetResult();
        var incarnation = remote.Incarnation;
        var resyncedBefore = mirror.ResyncedRegions;
        var reAddFailures = new ConcurrentQueue<string>();
        mirror.AutomaticReAddFailed += (leg, why) => reAddFailures.Enqueue($"{leg}: {why}");

        // Back to back, nothing between: the new device is empty (no mirror superblock, zeros).
        await a.Layer.DestroyDeviceAsync("rleg");
        await a.Layer.CreateDeviceAsync(Memory("rleg"));

        // At once, before the registry could tell anyone: writes and reads through the mirror meet
        // no error, and no read returns the new device's zeros.
        for (var block = 5; block < Blocks; block += 37)
        {
            expected[block] = Stamp(block, 2);
            await md0.WriteAsync((long)block * Block, expected[block]).AsTask().WaitAsync(Liveness);
        }

        var (wrong, zeros, first) = await VerifyAsync(md0, 0, expected);
        Assert.True(wrong == 0, $"right after the leg's device was created again, {wrong} of {Blocks} blocks read wrong through the mirror ({zeros} of them zeros, the first block {first}); leg 1 is {mirror.LegState(1)}");

        // The leg went faulty (once, the local leg still in sync), its handle moved to the new
        // device, and the automatic re-add made it whole again.
        await legFailed.Task.WaitAsync(Liveness);
        await reconnected.Task.WaitAsync(Liveness);
        await UntilAsync(() => mirror.AutomaticReAdds == 1 && mirror.LegState(1) == MirrorLegState.InSync && mirror.SyncAction == "idle",
            () => $"the re-add of the leg (re-adds {mirror.AutomaticReAdds}, leg 1 {mirror.LegState(1)}, sync {mirror.SyncAction}, refused: {string.Join("; ", reAddFailures)})");
        await mirror.SyncIdle.WaitAsync(Liveness);
        Assert.Equal(new[] { (remote.Name, 1, 2) }, failed.Select(f => (f.Leg, f.InSync, f.Legs)).ToArray());
        Assert.True(remote.Incarnation > incarnation);
        Assert.Empty(reAddFailures);
        Assert.Equal(0, mirror.Degraded);
        Assert.Equal(MirrorLegState.InSync, mirror.LegState(0));
        Assert.Equal(1L, mirror.AutomaticReAdds);

        // Whole: the new device holds no superblock of this mirror, so every region was copied.
        Assert.Equal(mirror.Regions, mirror.ResyncedRegions - resyncedBefore);
        Assert.Equal((int)(DataBytes / Region), mirror.Regions);

        // Every block reads back right through the mirror, the reads balanced over both legs.
        var remoteBefore = remote.Queue.Stats.Read().ReadIos;
        var localBefore = local.Queue.Stats.Read().ReadIos;
        (wrong, zeros, first) = await VerifyAsync(md0, 0, expected);
        Assert.True(wrong == 0, $"after the re-add, {wrong} of {Blocks} blocks read wrong through the mirror ({zeros} of them zeros, the first block {first})");
        var remoteReads = remote.Queue.Stats.Read().ReadIos - remoteBefore;
        var localReads = local.Queue.Stats.Read().ReadIos - localBefore;
        Assert.InRange(remoteReads, (ulong)Blocks / 4, (ulong)Blocks * 3 / 4);
        Assert.InRange(localReads, (ulong)Blocks / 4, (ulong)Blocks * 3 / 4);

        // And on the new device itself, at the leg's offset (the mirror's data follows its 64 KiB of metadata).
        Assert.True(a.Layer.TryGetDevice("rleg", out var newOwner));
        Assert.NotSame(oldOwner, newOwner);
        (wrong, zeros, first) = await VerifyAsync(newOwner, MirrorSuperblock.DataOffset, expected);
        Assert.True(wrong == 0, $"after the re-add, {wrong} of {Blocks} blocks of the new device on {a.Name} are wrong ({zeros} of them zeros, the first block {first})");
        Assert.Equal(0L, md0.Queue.DoubleCompletions);

        await b.Layer.DestroyDeviceAsync("md0");
        await b.Layer.DestroyDeviceAsync("lleg");
    }

    // The same on an idle mirror: nothing meets the old queue's Offline, so only the handle can
    // tell the mirror. A helper's audit found its Disconnected missing when the NBD reconnect (not
    // the registry) took the queue offline; the handle then connected the new device, the leg
    // still counted in sync, its Reconnected took nothing back, and half the reads that followed
    // were the new device's zeros.
    [Fact]
    public async Task On_an_idle_mirror_a_remote_leg_created_again_goes_faulty_and_is_resynced_whole()
    {
        var (a, b) = await StartPairAsync();
        await using var _a = a;
        await using var _b = b;
        await a.Layer.CreateDeviceAsync(Memory("rleg"));
        await b.Layer.CreateDeviceAsync(Memory("lleg"));
        await b.WaitForDevicesAsync(d => d.Any(e => e.Id == $"rleg@{a.Name}" && e.NbdEndpoint.Length > 0), Liveness);
        await b.Layer.CreateStackedDeviceAsync("md1");
        var md1 = await b.Layer.LoadTableAsync("md1", StackTable.Mirror(new MirrorOptions { RegionBytes = Region }, "lleg", $"rleg@{a.Name}"));
        var mirror = (MirrorTarget)md1.Queue.BioDriver!;
        var remote = Assert.IsType<ClusterBlockDevice>(mirror.Legs[1]);
        await mirror.SyncIdle.WaitAsync(Liveness);
        var expected = await WriteEveryBlockAsync(md1);

        var legFailed = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        mirror.LegFailed += (_, _, _) => legFailed.TrySetResult();
        var disconnected = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        remote.Disconnected += (_, _) => disconnected.TrySetResult();
        var resyncedBefore = mirror.ResyncedRegions;

        // Idle for real: the bitmap's last clearing written, so the mirror has nothing to write.
        await UntilAsync(() => mirror.DirtyRegions() == 0, () => $"a clean bitmap ({mirror.DirtyRegions()} dirty regions)");
        await a.Layer.DestroyDeviceAsync("rleg");
        await a.Layer.CreateDeviceAsync(Memory("rleg"));

        // No I/O: the handle says its device went, the leg fails, and the re-add copies it whole.
        await disconnected.Task.WaitAsync(Liveness);
        await legFailed.Task.WaitAsync(Liveness);
        await UntilAsync(() => mirror.AutomaticReAdds == 1 && mirror.LegState(1) == MirrorLegState.InSync && mirror.SyncAction == "idle",
            () => $"the re-add of the leg (re-adds {mirror.AutomaticReAdds}, leg 1 {mirror.LegState(1)}, sync {mirror.SyncAction})");
        await mirror.SyncIdle.WaitAsync(Liveness);
        Assert.Equal(mirror.Regions, mirror.ResyncedRegions - resyncedBefore);
        var (wrong, zeros, first) = await VerifyAsync(md1, 0, expected);
        Assert.True(wrong == 0, $"after the re-add, {wrong} of {Blocks} blocks read wrong through the mirror ({zeros} of them zeros, the first block {first})");

        await b.Layer.DestroyDeviceAsync("md1");
        await b.Layer.DestroyDeviceAsync("lleg");
    }
}
