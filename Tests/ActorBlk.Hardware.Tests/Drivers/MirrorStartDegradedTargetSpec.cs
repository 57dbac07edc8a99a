using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers.Stacking;
using ActorBlk.Testing;
using Xunit;

namespace ActorBlk.Hardware.Tests.Drivers;

/// <summary>
/// <see cref="MirrorOptions.StartDegraded"/> on data-plane devices: a leg is a
/// <see cref="LateLeg"/>, missing until the test hands it its device (as a remote leg whose node
/// is down until it returns).
/// </summary>
public sealed class MirrorStartDegradedTargetSpec : IAsyncLifetime
{
    private const int Block = 4096;
    private const long LegBytes = 4L << 20;
    private const long Region = 64 << 10;
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(60);

    private readonly MirrorDevices _devices = new(LegBytes);

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync() => await _devices.DisposeAsync();

    private BlockDevice Leg(string name, bool discard = true) => _devices.Disk(name, LegBytes, discard);

    private BlockDevice Serve(MirrorTarget target, string name) => _devices.Serve(target, name);

    private async Task StopAsync(MirrorTarget mirror, BlockDevice md)
    {
        await mirror.StopAsync();
        await _devices.RemoveAsync(md);
    }

    private static MirrorOptions Options(bool startDegraded = true) => new() { RegionBytes = Region, AssumeClean = true, StartDegraded = startDegraded };

    // The re-add runs off the Reconnected handler: polled, as TestKit's AwaitConditionAsync does.
    private static async Task UntilAsync(Func<bool> condition)
    {
        using var timer = new PeriodicTimer(TimeSpan.FromMilliseconds(20));
        var until = DateTime.UtcNow + Patience;
        while (!condition())
        {
            Assert.True(DateTime.UtcNow < until, "the condition did not hold in time");
            await timer.WaitForNextTickAsync();
        }
    }

    // The reason of the mirror's first refused automatic re-add.
    private static Task<string> FirstRefusal(MirrorTarget mirror)
    {
        var refused = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
        mirror.AutomaticReAddFailed += (_, why) => refused.TrySetResult(why);
        return refused.Task;
    }

    private static byte[] Stamp(long block, int version) => BlockStamp.Of(block, version);

    private static Task<byte[]> ReadRaw(IBlockDevice leg, long offset) => MirrorDevices.ReadDataAsync(leg, offset, Block);

    [Fact]
    public async Task A_missing_leg_is_refused_without_the_option_and_never_makes_a_new_mirror_with_it()
    {
        var a = Leg("a");
        await Assert.ThrowsAsync<ArgumentException>(() => MirrorTarget.AssembleAsync("md0", [a, new LateLeg("b")], Options(startDegraded: false)));
        var blank = await Assert.ThrowsAsync<MirrorAssemblyException>(() => MirrorTarget.AssembleAsync("md0", [a, new LateLeg("b")], Options()));
        Assert.Contains("b", blank.Message);
        await Assert.ThrowsAsync<ArgumentException>(() => MirrorTarget.AssembleAsync("md0", [new LateLeg("a"), new LateLeg("b")], Options()));
    }

    [Fact]
    public async Task A_leg_that_went_on_without_the_present_one_is_not_taken_back_by_itself_when_it_appears()
    {
        // The mirror runs on a and b; a fails, b goes on alone with newer writes, then stops.
        var a = Leg("a");
        var b = Leg("b");
        var first = await MirrorTarget.AssembleAsync("md0", [a, b], Options());
        var md = Serve(first, "md0");
        await md.WriteAsync(2 * Region, Stamp(2, 1));
        await first.FailLegAsync(0);
        await md.WriteAsync(2 * Region, Stamp(2, 2));
        await StopAsync(first, md);

        // Started degraded from a alone (stale: its metadata never heard it failed), b missing.
        var late = new LateLeg("b");
        var second = await MirrorTarget.AssembleAsync("md0", [a, late], Options());
        var md2 = Serve(second, "md1");
        Assert.Equal(MirrorLegState.InSync, second.LegState(0));
        Assert.Equal(MirrorLegState.Faulty, second.LegState(1));
        var back = new byte[Block];
        await md2.ReadAsync(2 * Region, back);
        Assert.Equal(Stamp(2, 1), back);

        // b appears: it counts a faulty and itself in sync, so it was written apart. The automatic
        // re-add refuses it, and its newer write is left alone.
        var refused = FirstRefusal(second);
        late.Appear(b);
        Assert.Contains("split brain", await refused.WaitAsync(Patience));
        Assert.Equal(MirrorLegState.Faulty, second.LegState(1));
        Assert.Equal(0, second.AutomaticReAdds);
        Assert.Equal(Stamp(2, 2), await ReadRaw(b, 2 * Region));

        // A re-add by hand decides it: b is copied over from a.
        await second.ReAddAsync(1);
        await second.SyncIdle.WaitAsync(Patience);
        Assert.Equal(MirrorLegState.InSync, second.LegState(1));
        Assert.Equal(Stamp(2, 1), await ReadRaw(b, 2 * Region));
        Assert.Equal(0, md2.Queue.DoubleCompletions);
    }

    // A faulty leg whose bitmap record a checkpoint gave up (another leg's whole copy) is copied
    // whole on return: its slot's last generation in sync is raised to that checkpoint. The
    // split-brain rule still judges it by the generation it was really last in sync: a copy of it
    // that went on apart up to exactly the raised number would otherwise pass as in step, and be
    // resynced from the bitmap only (the outside audit's case, README "Mirrors").
    [Fact]
    public async Task A_leg_copied_whole_on_return_that_went_on_apart_up_to_its_raised_generation_is_still_refused()
    {
        var a = Leg("a");
        var b = Leg("b");
        var c = Leg("c");
        var d = Leg("d");
        var remote = new LateLeg("c");
        remote.Appear(c);
        var first = await MirrorTarget.AssembleAsync("md0", [a, b, remote], Options());
        var md = Serve(first, "md0");
        await md.WriteAsync(5 * Region, Stamp(5, 1));

        // c fails; b is replaced by a new device, whose whole copy checkpoints.
        await first.FailLegAsync(2);
        await first.FailLegAsync(1);
        await first.ReplaceLegAsync(1, d);
        await UntilAsync(() => first.LegState(1) == MirrorLegState.InSync && first.SyncAction == "idle");
        await StopAsync(first, md);

        var metadata = new byte[MirrorSuperblock.SuperblockBytes];
        await a.ReadAsync(0, metadata);
        var reference = MirrorSuperblock.TryDecode(metadata)!;
        Assert.True(reference.WholeOnReturn[2]);
        await c.ReadAsync(0, metadata);
        var own = MirrorSuperblock.TryDecode(metadata)!;
        Assert.Equal(own.Generation, reference.LastHeld[2]);
        Assert.True(reference.LastInSync[2] > own.Generation);

        // c went on elsewhere, alone, up to exactly its slot's raised generation, with a write of its own.
        new MirrorSuperblock
        {
            ArrayId = own.ArrayId,
            Role = 2,
            Legs = 3,
            Clean = true,
            Generation = reference.LastInSync[2],
            DataBytes = own.DataBytes,
            RegionBytes = own.RegionBytes,
            States = [MirrorLegState.Faulty, MirrorLegState.Faulty, MirrorLegState.InSync],
            LastInSync = own.LastInSync,
        }.Encode(metadata);
        await c.WriteAsync(0, metadata);
        await c.WriteAsync(MirrorSuperblock.DataOffset + (5 * Region), Stamp(5, 9));

        var late = new LateLeg("c");
        var second = await MirrorTarget.AssembleAsync("md0", [a, d, late], Options());
        Assert.Equal(MirrorLegState.Faulty, second.LegState(2));
        var refused = FirstRefusal(second);
        late.Appear(c);
        Assert.Contains("split brain", await refused.WaitAsync(Patience));
        Assert.Contains($"written after generation {own.Generation}", await refused);
        Assert.Equal(MirrorLegState.Faulty, second.LegState(2));
        Assert.Equal(Stamp(5, 9), await ReadRaw(c, 5 * Region));

        // A re-add by hand copies it whole.
        await second.ReAddAsync(2);
        await second.SyncIdle.WaitAsync(Patience);
        Assert.Equal(MirrorLegState.InSync, second.LegState(2));
        Assert.Equal(Stamp(5, 1), await ReadRaw(c, 5 * Region));
        await second.StopAsync();
        second.Dispose();
    }

    [Fact]
    public async Task A_leg_missing_at_the_start_is_taken_back_with_the_dirty_regions_only_when_it_appears()
    {
        var a = Leg("a");
        var b = Leg("b");
        var first = await MirrorTarget.AssembleAsync("md0", [a, b], Options());
        var md = Serve(first, "md0");
        await md.WriteAsync(1 * Region, Stamp(1, 1));
        await StopAsync(first, md);

        var late = new LateLeg("b");
        var second = await MirrorTarget.AssembleAsync("md0", [a, late], Options());
        Assert.True(second.Generation > first.Generation);
        var md2 = Serve(second, "md1");
        await md2.WriteAsync(5 * Region, Stamp(5, 1));
        await md2.WriteAsync(9 * Region, Stamp(9, 1));
        Assert.Equal(2, second.DirtyRegions());
        var takenBack = new System.Collections.Concurrent.ConcurrentQueue<MirrorLegTakenBack>();
        second.LegTakenBack += takenBack.Enqueue;

        late.Appear(b);
        await UntilAsync(() => second.LegState(1) == MirrorLegState.InSync && second.SyncAction == "idle");

        // Counted as the leg turned rebuilding, so seen by whoever sees it in sync again.
        Assert.Equal(1, second.AutomaticReAdds);
        Assert.Equal(new MirrorLegTakenBack("b", MirrorLegReturn.Reconnect, 2), Assert.Single(takenBack));
        Assert.Equal(2, second.ResyncedRegions);
        Assert.Equal(Stamp(5, 1), await ReadRaw(b, 5 * Region));
        Assert.Equal(Stamp(9, 1), await ReadRaw(b, 9 * Region));
        Assert.Equal(Stamp(1, 1), await ReadRaw(b, 1 * Region));
        Assert.Equal(0, md2.Queue.DoubleCompletions);
    }

    [Fact]
    public async Task A_leg_written_apart_is_copied_whole_by_a_re_add_by_hand_after_a_crash_although_its_generation_is_not_newer()
    {
        // The mirror runs on a and b; a fails, b alone gets a write to a region a never had, and
        // the node dies (no clean stop: b's generation is only one ahead of a's).
        var a = Leg("a");
        var b = Leg("b");
        var first = await MirrorTarget.AssembleAsync("md0", [a, b], Options() with { BitmapDaemonInterval = TimeSpan.FromHours(1) });
        var md = Serve(first, "md0");
        await first.FailLegAsync(0);
        await md.WriteAsync(7 * Region, Stamp(7, 1));
        first.Dispose();

        // Started degraded from a alone: its generation then equals b's, a history of its own.
        var late = new LateLeg("b");
        var second = await MirrorTarget.AssembleAsync("md0", [a, late], Options());
        var md2 = Serve(second, "md1");
        await md2.WriteAsync(3 * Region, Stamp(3, 1));
        var refused = FirstRefusal(second);
        late.Appear(b);
        Assert.Contains("split brain", await refused.WaitAsync(Patience));

        // By hand: b becomes a copy of a, the region only b wrote included.
        await second.ReAddAsync(1);
        await UntilAsync(() => second.LegState(1) == MirrorLegState.InSync && second.SyncAction == "idle");
        Assert.Equal(await ReadRaw(a, 7 * Region), await ReadRaw(b, 7 * Region));
        Assert.Equal(new byte[Block], await ReadRaw(b, 7 * Region));
        Assert.Equal(Stamp(3, 1), await ReadRaw(b, 3 * Region));
    }

    // Found from outside with two real nodes: the node of b stopped while the mirror stopped
    // cleanly, so b failed the stop's superblock write of a new generation and was recorded last in
    // sync at that generation, though it held the one before. b then started degraded on its own
    // node (a missing), which bumped its generation to exactly the recorded number, took writes
    // and was killed; a started degraded (b missing) and took writes; b came back and was taken
    // back by itself, resyncing a's dirty regions only: thousands of blocks read b's split-brain
    // data and check counted mismatches on a mirror that said 2/2 in sync.
    [Fact]
    public async Task A_leg_that_failed_the_write_of_a_new_generation_and_went_on_elsewhere_is_refused_when_it_appears()
    {
        var a = Leg("a");
        var b = Leg("b");
        var (faultyB, faults) = FaultyLeg.Create("fb", b);
        _devices.Add(faultyB);
        var first = await MirrorTarget.AssembleAsync("md0", [a, faultyB], Options());
        var md = Serve(first, "md0");
        await md.WriteAsync(2 * Region, Stamp(2, 1));
        faults.Dead = true;
        await StopAsync(first, md);

        // b's own node: started degraded from b alone (a missing), a write, then killed.
        var there = await MirrorTarget.AssembleAsync("md0", [new LateLeg("a"), b], Options());
        var mdThere = Serve(there, "md-there");
        await mdThere.WriteAsync(2 * Region, Stamp(2, 2));
        there.Dispose();

        // a's node: started degraded from a alone (b missing), a write; then b appears.
        var late = new LateLeg("b");
        var here = await MirrorTarget.AssembleAsync("md0", [a, late], Options());
        var mdHere = Serve(here, "md-here");
        await mdHere.WriteAsync(3 * Region, Stamp(3, 1));
        var refused = FirstRefusal(here);
        late.Appear(b);
        await UntilAsync(() => refused.IsCompleted || here.LegState(1) != MirrorLegState.Faulty);
        Assert.True(refused.IsCompleted, "the leg written apart was taken back by itself");
        Assert.Contains("split brain", await refused);
        Assert.Equal(MirrorLegState.Faulty, here.LegState(1));
        Assert.Equal(Stamp(2, 2), await ReadRaw(b, 2 * Region));

        // What the mirror serves is a's history.
        var back = new byte[Block];
        await mdHere.ReadAsync(2 * Region, back);
        Assert.Equal(Stamp(2, 1), back);
    }

    [Fact]
    public async Task A_leg_of_an_ordinary_mirror_that_failed_while_another_was_faulty_is_taken_back_by_itself_once_that_one_is_in_sync_again()
    {
        // Three legs, not started degraded: l2 fails, then the remote r (its superblock still
        // counts l2 faulty); l2 is re-added and in sync again, then r's node returns.
        var l1 = Leg("l1");
        var l2 = Leg("l2");
        var r = Leg("r");
        var remote = new LateLeg("r");
        remote.Appear(r);
        var mirror = await MirrorTarget.AssembleAsync("md0", [l1, l2, remote], Options(startDegraded: false));
        var md = Serve(mirror, "md0");
        string? refused = null;
        mirror.AutomaticReAddFailed += (_, why) => refused = why;
        var countedAtTakeBack = new List<long>();
        mirror.LegTakenBack += back =>
        {
            if (back.How == MirrorLegReturn.Reconnect)
            {
                lock (countedAtTakeBack)
                {
                    countedAtTakeBack.Add(mirror.AutomaticReAdds);
                }
            }
        };
        await mirror.FailLegAsync(1);
        await md.WriteAsync(3 * Region, Stamp(3, 1));
        await mirror.FailLegAsync(2);
        await mirror.ReAddAsync(1);
        await UntilAsync(() => mirror.LegState(1) == MirrorLegState.InSync && mirror.SyncAction == "idle");
        await md.WriteAsync(4 * Region, Stamp(4, 1));

        remote.Appear(r);
        await UntilAsync(() => refused is not null || (mirror.LegState(2) == MirrorLegState.InSync && mirror.SyncAction == "idle"));
        Assert.Null(refused);
        // Counted as the leg turned rebuilding: seen by the event that says so, and by anyone who
        // sees it in sync again (counted once its recovery had started, the count could land
        // after the recovery ended; the manual re-add of l2 is not counted).
        Assert.Equal(1, mirror.AutomaticReAdds);
        lock (countedAtTakeBack)
        {
            Assert.Equal([1L], countedAtTakeBack);
        }
        Assert.Equal(Stamp(4, 1), await ReadRaw(r, 4 * Region));
        Assert.Equal(Stamp(3, 1), await ReadRaw(r, 3 * Region));
    }

    [Fact]
    public async Task A_leg_missing_at_the_start_whose_device_appears_blank_or_another_mirrors_is_not_copied_over_by_itself()
    {
        var a = Leg("a");
        var b = Leg("b");
        var first = await MirrorTarget.AssembleAsync("md0", [a, b], Options());
        var md = Serve(first, "md0");
        await md.WriteAsync(1 * Region, Stamp(1, 1));
        await StopAsync(first, md);

        var c = Leg("c");
        var d = Leg("d");
        var other = await MirrorTarget.AssembleAsync("md9", [c, d], Options());
        var md9 = Serve(other, "md9");
        await md9.WriteAsync(1 * Region, Stamp(1, 9));
        await StopAsync(other, md9);

        var late = new LateLeg("b");
        var second = await MirrorTarget.AssembleAsync("md0", [a, late], Options());
        var refusals = System.Threading.Channels.Channel.CreateUnbounded<string>();
        second.AutomaticReAddFailed += (_, why) => refusals.Writer.TryWrite(why);

        late.Appear(Leg("blank"));
        Assert.Contains("holds no mirror metadata", await refusals.Reader.ReadAsync().AsTask().WaitAsync(Patience));
        Assert.Equal(MirrorLegState.Faulty, second.LegState(1));
        Assert.Equal("b", second.LastAutomaticReAddFailure?.Leg);
        Assert.Contains("holds no mirror metadata", second.LastAutomaticReAddFailure?.Reason);

        late.Appear(c);
        Assert.Contains("belongs to another mirror", await refusals.Reader.ReadAsync().AsTask().WaitAsync(Patience));
        Assert.Equal(MirrorLegState.Faulty, second.LegState(1));
        Assert.Equal(Stamp(1, 9), await ReadRaw(c, 1 * Region));
        Assert.Equal(0, second.AutomaticReAdds);

        // By hand it may: c becomes a copy of a.
        await second.ReAddAsync(1);
        await UntilAsync(() => second.LegState(1) == MirrorLegState.InSync && second.SyncAction == "idle");
        Assert.Equal(Stamp(1, 1), await ReadRaw(c, 1 * Region));
    }

    [Fact]
    public async Task A_mirror_started_degraded_advertises_limits_any_leg_can_keep_and_a_returning_leg_with_weaker_ones_is_refused()
    {
        var a = Leg("a");
        var b = Leg("b");
        var first = await MirrorTarget.AssembleAsync("md0", [a, b], Options());
        Assert.True(first.Limits.MaxDiscardSectors > 0);
        await first.StopAsync();
        first.Dispose();

        // Started degraded: the missing leg's limits are unknown, so none it might lack is advertised.
        var late = new LateLeg("b");
        var second = await MirrorTarget.AssembleAsync("md0", [a, late], Options());
        Assert.Equal(0, second.Limits.MaxDiscardSectors);
        Assert.Equal(0, second.Limits.MaxWriteZeroesSectors);
        Assert.False(second.Limits.Fua);
        Assert.True(second.Limits.VolatileWriteCache);
        Assert.True(second.Limits.MemoryAlignment >= AlignedBuffer.PageAlignment);
        late.Appear(b);
        await UntilAsync(() => second.LegState(1) == MirrorLegState.InSync && second.SyncAction == "idle");
        await second.StopAsync();
        second.Dispose();

        // An ordinary mirror's remote leg comes back as a device without discard: refused, by
        // itself and by hand, the limit named.
        var remote = new LateLeg("b");
        remote.Appear(b);
        var third = await MirrorTarget.AssembleAsync("md0", [a, remote], Options(startDegraded: false));
        Assert.True(third.Limits.MaxDiscardSectors > 0);
        var refused = FirstRefusal(third);
        await third.FailLegAsync(1);
        var weak = Leg("b2", discard: false);
        var metadata = new byte[MirrorSuperblock.SuperblockBytes];
        await b.ReadAsync(0, metadata);
        await weak.WriteAsync(0, metadata);
        remote.Appear(weak);
        await UntilAsync(() => refused.IsCompleted || third.LegState(1) != MirrorLegState.Faulty);
        Assert.True(refused.IsCompleted, "the leg was taken back");
        Assert.Contains("no discard", await refused);
        Assert.Equal(MirrorLegState.Faulty, third.LegState(1));
        var manual = await Assert.ThrowsAsync<InvalidOperationException>(() => third.ReAddAsync(1));
        Assert.Contains("no discard", manual.Message);
        await third.StopAsync();
        third.Dispose();
    }
}
