using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers.Stacking;
using ActorBlk.Hardware.Sysfs;
using ActorBlk.Testing;
using Xunit;

namespace ActorBlk.Hardware.Tests.Drivers;

/// <summary>
/// A mirror refuses a leg smaller than its data plus its metadata area
/// (<see cref="MirrorSuperblock.DataOffset"/> + <see cref="MirrorTarget.DataBytes"/>), as md
/// refuses a disk too small for the array: at assembly, at a replacement and at a re-add (by
/// hand, and by itself when a reconnecting leg comes back as a smaller device). Each refusal is
/// typed and names the leg, its size and the mirror's; nothing changes: the device refused gets
/// no write (no superblock), the mirror serves I/O on its legs as before, and a device that fits
/// is taken afterwards. One block short is enough to be refused.
/// </summary>
public sealed class MirrorTooSmallLegSpec : IAsyncLifetime
{
    private const int Block = 4096;
    private const long LegBytes = 4L << 20;
    private const long DataBytes = LegBytes - MirrorSuperblock.DataOffset;
    private const long Short = LegBytes - Block;
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(60);

    private readonly MirrorDevices _devices = new(LegBytes);

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync() => await _devices.DisposeAsync();

    private (BlockDevice Device, FaultyLeg Faults) Leg(string name, long size = LegBytes) => _devices.Leg(name, size);

    private BlockDevice Serve(MirrorTarget target, string name = "md0") => _devices.Serve(target, name);

    private static MirrorOptions Options() => new() { RegionBytes = 64 << 10, AssumeClean = true };

    private static byte[] Stamp(long block, int version) => BlockStamp.Of(block, version);

    private static Task<byte[]> ReadRaw(IBlockDevice leg, long offset) => MirrorDevices.ReadDataAsync(leg, offset, Block);

    // The refusal names the leg, its size and the mirror's (data, and data plus metadata).
    private static void AssertNamesSizes(string message, string leg, long size)
    {
        Assert.Contains($"leg {leg} holds {size} bytes", message, StringComparison.Ordinal);
        Assert.Contains($"{DataBytes} bytes of data", message, StringComparison.Ordinal);
        Assert.Contains($"{MirrorSuperblock.DataOffset >> 10} KiB of metadata", message, StringComparison.Ordinal);
    }

    // The mirror still serves I/O on its legs: a write lands on every leg in sync, and reads back.
    private static async Task AssertServesAsync(BlockDevice md, int version, params IBlockDevice[] legs)
    {
        await md.WriteAsync(9 * Block, Stamp(9, version));
        var back = new byte[Block];
        await md.ReadAsync(9 * Block, back);
        Assert.Equal(Stamp(9, version), back);
        foreach (var leg in legs)
        {
            Assert.Equal(Stamp(9, version), await ReadRaw(leg, 9 * Block));
        }
    }

    [Fact]
    public async Task Assembly_refuses_a_leg_too_small_for_the_mirrors_data_and_writes_nothing()
    {
        var (a, fa) = Leg("a");
        var (b, _) = Leg("b");
        var mirror = await MirrorTarget.AssembleAsync("md0", [a, b], Options());
        var md = Serve(mirror);
        await md.WriteAsync(5 * Block, Stamp(5, 1));
        await mirror.StopAsync();
        mirror.Dispose();

        // b's slot is given a blank device one block short of the mirror's data and metadata.
        var (s, fs) = Leg("s", Short);
        var written = Interlocked.Read(ref fa.Writes);
        var refused = await Assert.ThrowsAsync<MirrorAssemblyException>(() => MirrorTarget.AssembleAsync("md0", [a, s], Options()));
        Assert.Equal("md0", refused.Device);
        AssertNamesSizes(refused.Message, "s", Short);
        Assert.Contains("too small to assemble", refused.Message, StringComparison.Ordinal);

        // Nothing written: no superblock on s, no new generation on a.
        Assert.Equal((0L, written), (Interlocked.Read(ref fs.Writes), Interlocked.Read(ref fa.Writes)));
        Assert.Equal(new byte[MirrorSuperblock.SuperblockBytes], await ReadHeader(s));

        // The mirror's own legs start it again, in sync, its data there.
        var again = await MirrorTarget.AssembleAsync("md0", [a, b], Options());
        var md1 = Serve(again, "md1");
        await again.SyncIdle.WaitAsync(Patience);
        Assert.Equal(0, again.Degraded);
        Assert.Equal(DataBytes, md1.Capacity);
        Assert.Equal(Stamp(5, 1), await ReadRaw(b, 5 * Block));
        await AssertServesAsync(md1, 1, a, b);
        await again.StopAsync();
        again.Dispose();
    }

    [Fact]
    public async Task A_new_mirror_takes_the_size_of_its_smallest_leg_and_refuses_one_that_cannot_hold_the_metadata_and_a_chunk()
    {
        // Legs of different sizes make a mirror of the smaller (md's create takes the smallest).
        var (a, _) = Leg("a");
        var (s, _) = Leg("s", Short);
        var mirror = await MirrorTarget.AssembleAsync("md0", [a, s], Options());
        Assert.Equal(Short - MirrorSuperblock.DataOffset, mirror.DataBytes);
        await mirror.StopAsync();
        mirror.Dispose();

        // A leg with no room for the metadata area and one sync chunk: refused, named, nothing written.
        var (c, fc) = Leg("c");
        var (t, ft) = Leg("t", MirrorSuperblock.DataOffset + MirrorTarget.SyncChunkBytes - Block);
        var tiny = await Assert.ThrowsAsync<ArgumentException>(() => MirrorTarget.AssembleAsync("md1", [c, t], Options()));
        Assert.Contains($"leg t holds {MirrorSuperblock.DataOffset + MirrorTarget.SyncChunkBytes - Block} bytes", tiny.Message, StringComparison.Ordinal);
        Assert.Equal((0L, 0L), (Interlocked.Read(ref fc.Writes), Interlocked.Read(ref ft.Writes)));
    }

    [Fact]
    public async Task A_replacement_too_small_is_refused_and_the_slot_keeps_its_faulty_leg()
    {
        var (a, _) = Leg("a");
        var (b, _) = Leg("b");
        var mirror = await MirrorTarget.AssembleAsync("md0", [a, b], Options());
        var md = Serve(mirror);
        await md.WriteAsync(5 * Block, Stamp(5, 1));
        await mirror.FailLegAsync(1);

        var (s, fs) = Leg("s", Short);
        var refused = await Assert.ThrowsAsync<MirrorLegTooSmallException>(() => mirror.ReplaceLegAsync(1, s));
        AssertNamesSizes(refused.Message, "s", Short);
        Assert.Contains("too small to replace a leg", refused.Message, StringComparison.Ordinal);

        // Nothing changed: b still holds the slot, faulty; s is no member and got no write.
        Assert.Same(b, mirror.Legs[1]);
        Assert.Equal(MirrorLegState.Faulty, mirror.LegState(1));
        Assert.DoesNotContain(s, mirror.Members);
        Assert.Equal(0, Interlocked.Read(ref fs.Writes));
        Assert.Equal(new byte[MirrorSuperblock.SuperblockBytes], await ReadHeader(s));
        await AssertServesAsync(md, 1, a);
        Assert.Equal(1, mirror.Degraded);

        // Nothing was left held (the replacement lock, a suspension of I/O): a device that fits takes the slot.
        var (c, _) = Leg("c");
        Assert.Same(b, await mirror.ReplaceLegAsync(1, c).WaitAsync(Patience));
        await mirror.SyncIdle.WaitAsync(Patience);
        Assert.Equal(MirrorLegState.InSync, mirror.LegState(1));
        Assert.Equal(Stamp(5, 1), await ReadRaw(c, 5 * Block));
        Assert.Equal(Stamp(9, 1), await ReadRaw(c, 9 * Block));
        Assert.Equal(0, md.Queue.DoubleCompletions);
    }

    // The outside audit's case: a remote leg's node came back with a device half the size, and the
    // mirror re-added it by itself, then failed it again at the first write past its end.
    [Fact]
    public async Task A_leg_that_reconnects_as_a_smaller_device_is_refused_by_itself_and_by_hand_and_stays_faulty()
    {
        var (a, _) = Leg("a");
        var (b, _) = Leg("b");
        var remote = new LateLeg("r");
        remote.Appear(b);
        var mirror = await MirrorTarget.AssembleAsync("md0", [a, remote], Options());
        var md = Serve(mirror);
        await md.WriteAsync(5 * Block, Stamp(5, 1));
        await mirror.FailLegAsync(1);
        await md.WriteAsync(6 * Block, Stamp(6, 1));

        // It comes back one block short, holding its own superblock (it is this mirror's leg, in
        // step but for the bitmap): only its size is wrong.
        var (s, fs) = Leg("s", Short);
        var metadata = new byte[MirrorSuperblock.SuperblockBytes];
        await b.ReadAsync(0, metadata);
        await s.WriteAsync(0, metadata);
        var written = Interlocked.Read(ref fs.Writes);
        var automatic = new TaskCompletionSource<(string Leg, string Reason)>(TaskCreationOptions.RunContinuationsAsynchronously);
        mirror.AutomaticReAddFailed += (leg, why) => automatic.TrySetResult((leg, why));
        remote.Appear(s);
        var (leg, reason) = await automatic.Task.WaitAsync(Patience);
        Assert.Equal("r", leg);
        AssertNamesSizes(reason, "r", Short);
        Assert.Contains("too small to re-add", reason, StringComparison.Ordinal);
        Assert.Equal(MirrorLegState.Faulty, mirror.LegState(1));

        var manual = await Assert.ThrowsAsync<MirrorLegTooSmallException>(() => mirror.ReAddAsync(1));
        Assert.Equal(reason, manual.Message);
        Assert.Equal(("r", Short), (manual.Leg, manual.LegBytes));

        // By attribute: ENOSPC, as md's refusal of a disk too small for the array (not EBUSY).
        var byAttribute = await Assert.ThrowsAsync<AttributeException>(async () => await md.Attributes.WriteAsync("block/md0/md/dev-r/state", "re-add"));
        Assert.Equal((AttributeErrno.ENOSPC, reason), (byAttribute.Errno, byAttribute.Reason));
        Assert.Equal(MirrorLegState.Faulty, mirror.LegState(1));
        Assert.Equal(0, mirror.AutomaticReAdds);

        // Nothing written to it (no superblock of a new generation), and the mirror goes on.
        Assert.Equal(written, Interlocked.Read(ref fs.Writes));
        Assert.Equal(metadata, await ReadHeader(s));
        await AssertServesAsync(md, 1, a);

        // Back as a device that fits (b, behind by the writes since it failed): taken back by itself.
        var resynced = new TaskCompletionSource<MirrorSyncEnded>(TaskCreationOptions.RunContinuationsAsynchronously);
        mirror.SyncEnded += ended => resynced.TrySetResult(ended);
        remote.Appear(b);
        Assert.Equal(MirrorSyncOutcome.Done, (await resynced.Task.WaitAsync(Patience)).Outcome);
        Assert.Equal(MirrorLegState.InSync, mirror.LegState(1));
        // Counted as the leg turned rebuilding, so seen by whoever sees its recovery end.
        Assert.Equal(1, mirror.AutomaticReAdds);
        Assert.Equal(Stamp(6, 1), await ReadRaw(b, 6 * Block));
        Assert.Equal(Stamp(9, 1), await ReadRaw(b, 9 * Block));
        Assert.Equal(0, md.Queue.DoubleCompletions);
    }

    private static async Task<byte[]> ReadHeader(IBlockDevice leg)
    {
        var buffer = new byte[MirrorSuperblock.SuperblockBytes];
        await leg.ReadAsync(0, buffer);
        return buffer;
    }
}
