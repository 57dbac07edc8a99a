using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers.Stacking;
using ActorBlk.Hardware.Requests;
using ActorBlk.Hardware.Tests.Nbd;
using ActorBlk.Testing;
using Xunit;

namespace ActorBlk.Hardware.Tests.Drivers;

/// <summary>
/// The mirror (raid1) target on data-plane devices without a control plane: each leg is a
/// <see cref="FaultyLeg"/> over a memory-backed ring device, so a test can kill a leg, bring it
/// back, or make a range fail reads.
/// </summary>
public sealed class MirrorTargetSpec : IAsyncLifetime
{
    private const int Block = 4096;
    private const long LegBytes = 4L << 20;
    private const long Region = 64 << 10;
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(60);

    private readonly MirrorDevices _devices = new(LegBytes);

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync() => await _devices.DisposeAsync();

    private (BlockDevice Device, FaultyLeg Faults) Leg(string name, long size = LegBytes) => _devices.Leg(name, size);

    // A leg with a volatile write cache: its writes are durable after a flush or as FUA writes only.
    private async Task<(BlockDevice Device, VolatileCacheLeg Cache)> CachedLeg(string name)
    {
        var inner = _devices.Ring(new DeviceOptions { Name = name + "-disk", Size = LegBytes, MemoryBacked = true, WriteCache = true });
        var (device, cache) = await VolatileCacheLeg.CreateAsync(name, inner);
        _devices.Add(device);
        return (device, cache);
    }

    private BlockDevice Serve(MirrorTarget target, string name = "md0") => _devices.Serve(target, name);

    private static MirrorOptions Options(bool assumeClean = true) => new() { RegionBytes = Region, AssumeClean = assumeClean };

    // The block's number and the version are in its first bytes.
    private static byte[] Stamp(long block, int version) => BlockStamp.Labelled(block, version, label: block);

    private static Task<byte[]> ReadRaw(IBlockDevice leg, long offset, int length) => MirrorDevices.ReadDataAsync(leg, offset, length);

    private static async Task AssertLegsEqual(MirrorTarget mirror)
    {
        for (long at = 0; at < mirror.DataBytes; at += 256 << 10)
        {
            var length = (int)Math.Min(256 << 10, mirror.DataBytes - at);
            var first = await ReadRaw(mirror.Legs[0], at, length);
            for (var l = 1; l < mirror.Legs.Count; l++)
            {
                var other = await ReadRaw(mirror.Legs[l], at, length);
                for (var b = 0; b < length; b += Block)
                {
                    Assert.True(first.AsSpan(b, Block).SequenceEqual(other.AsSpan(b, Block)), $"legs 0 and {l} differ in the block at {at + b}");
                }
            }
        }
    }

    [Fact]
    public async Task Writes_flushes_discards_and_write_zeroes_reach_every_leg_and_reads_spread_over_the_legs()
    {
        var (a, fa) = Leg("a");
        var (b, fb) = Leg("b");
        var mirror = await MirrorTarget.AssembleAsync("md0", [a, b], Options());
        var md = Serve(mirror);

        Assert.Equal(LegBytes - MirrorSuperblock.DataOffset, md.Capacity);
        Assert.Equal(0, mirror.Degraded);
        for (var k = 0; k < 16; k++)
        {
            await md.WriteAsync(k * 3 * Block, Stamp(k, 1), k % 2 == 0 ? RequestFlags.Fua : RequestFlags.None);
        }

        await md.FlushAsync();
        await md.DiscardAsync(100 * Block, 4 * Block);
        await md.WriteZeroesAsync(200 * Block, 4 * Block);
        foreach (var leg in new[] { a, b })
        {
            for (var k = 0; k < 16; k++)
            {
                Assert.Equal(Stamp(k, 1), await ReadRaw(leg, k * 3 * Block, Block));
            }
        }

        Assert.All(new[] { fa, fb }, f => Assert.True(f.Flushes >= 1 && f.Discards == 1 && f.WriteZeroes == 1, $"{f.Description}: {f.Flushes} flushes, {f.Discards} discards, {f.WriteZeroes} write-zeroes"));

        // 64 reads at once, then 64 one by one: both legs serve a fair share of each.
        var readsBefore = (fa.Reads, fb.Reads);
        var buffers = Enumerable.Range(0, 64).Select(_ => new byte[Block]).ToArray();
        await Task.WhenAll(Enumerable.Range(0, 64).Select(i => md.ReadAsync(i % 16 * 3 * Block, buffers[i]).AsTask()));
        for (var i = 0; i < 64; i++)
        {
            Assert.Equal(Stamp(i % 16, 1), buffers[i]);
            await md.ReadAsync(i % 16 * 3 * Block, buffers[i]);
        }

        var (ra, rb) = (fa.Reads - readsBefore.Item1, fb.Reads - readsBefore.Item2);
        Assert.Equal(128, ra + rb);
        Assert.InRange(ra, 32, 96);
        Assert.Equal(0, md.Queue.DoubleCompletions);
    }

    [Fact]
    public async Task A_leg_dying_under_verified_random_writes_costs_the_callers_nothing_and_every_acknowledged_write_is_on_the_survivor()
    {
        var (a, _) = Leg("a");
        var (b, fb) = Leg("b");
        var mirror = await MirrorTarget.AssembleAsync("md0", [a, b], Options());
        var md = Serve(mirror);
        fb.DieAfterWrites(300);

        // Eight writers, each owning the blocks congruent to it mod 8, so the last acknowledged
        // version of every block is known.
        var blocks = (int)(md.Capacity / Block);
        var (acknowledged, errors) = await VerifiedWriters.RunAsync(md, Block, writers: 8, writesEach: 120, (b, v) => Stamp(b, v));

        Assert.Equal(0, errors);
        Assert.True(fb.Dead);
        Assert.Equal(MirrorLegState.Faulty, mirror.LegState(1));
        Assert.Equal(MirrorLegState.InSync, mirror.LegState(0));
        Assert.Equal(1, mirror.Degraded);
        Assert.True(mirror.DirtyRegions() > 0);
        var back = new byte[Block];
        for (var block = 0; block < blocks; block++)
        {
            if (acknowledged[block] == 0)
            {
                continue;
            }

            Assert.Equal(Stamp(block, acknowledged[block]), await ReadRaw(a, (long)block * Block, Block));
            await md.ReadAsync((long)block * Block, back);
            Assert.Equal(Stamp(block, acknowledged[block]), back);
        }

        Assert.Equal(0, md.Queue.DoubleCompletions);
        Assert.Equal(0, md.Queue.Usage.Count);
    }

    [Fact]
    public async Task Writes_and_reads_during_the_resync_of_a_returning_leg_end_once_each_and_the_copy_never_overwrites_them()
    {
        var (a, _) = Leg("a");
        var (b, fb) = Leg("b");
        var mirror = await MirrorTarget.AssembleAsync("md0", [a, b], Options() with { SyncSpeedMinKiB = 100_000, SyncSpeedMaxKiB = 100_000 });
        var md = Serve(mirror);
        var blocks = (int)(md.Capacity / Block);
        var acknowledged = new int[blocks];
        var errors = 0;
        var version = 0;

        async Task Load(int writers, int writesEach)
        {
            var round = Interlocked.Increment(ref version) * 1000;
            await Task.WhenAll(Enumerable.Range(0, writers).Select(w => Task.Run(async () =>
            {
                var random = new Random(round + w);
                var back = new byte[Block];
                for (var n = 1; n <= writesEach; n++)
                {
                    var block = (random.Next(blocks / writers) * writers) + w;
                    try
                    {
                        await md.WriteAsync((long)block * Block, Stamp(block, round + n));
                        acknowledged[block] = round + n;
                        await md.ReadAsync((long)random.Next(blocks) * Block, back);
                    }
                    catch (BlockIoException)
                    {
                        Interlocked.Increment(ref errors);
                    }
                }
            }))).WaitAsync(Patience);
        }

        // b dies under load, comes back, and is resynced while the load goes on.
        fb.DieAfterWrites(100);
        await Load(4, 100);
        Assert.Equal(MirrorLegState.Faulty, mirror.LegState(1));
        fb.DieAfterWrites(long.MaxValue);
        fb.Dead = false;
        await mirror.ReAddAsync(1);
        await Load(4, 150);
        await mirror.SyncIdle.WaitAsync(Patience);

        Assert.Equal(0, errors);
        Assert.Equal(MirrorLegState.InSync, mirror.LegState(1));
        for (var block = 0; block < blocks; block++)
        {
            if (acknowledged[block] != 0)
            {
                Assert.Equal(Stamp(block, acknowledged[block]), await ReadRaw(b, (long)block * Block, Block));
            }
        }

        await AssertLegsEqual(mirror);
        Assert.Equal(0, md.Queue.DoubleCompletions);
        Assert.Equal(0, md.Queue.Usage.Count);
    }

    [Fact]
    public async Task A_returning_leg_is_resynced_for_the_dirty_regions_only_and_then_the_legs_match_block_for_block()
    {
        var (a, _) = Leg("a");
        var (b, fb) = Leg("b");
        var mirror = await MirrorTarget.AssembleAsync("md0", [a, b], Options());
        var md = Serve(mirror);

        fb.Dead = true;
        // Five regions written while b is away, two blocks in one of them.
        long[] dirty = [1, 7, 8, 20, 40];
        foreach (var r in dirty)
        {
            await md.WriteAsync(r * Region, Stamp(r, 2));
        }

        await md.WriteAsync((7 * Region) + Block, Stamp(99, 2));
        Assert.Equal(MirrorLegState.Faulty, mirror.LegState(1));
        Assert.Equal(dirty.Length, mirror.DirtyRegions());

        fb.Dead = false;
        var copiedBefore = fb.DataBytesCopied;
        await mirror.ReAddAsync(1);
        await mirror.SyncIdle.WaitAsync(Patience);

        Assert.Equal(dirty.Length, mirror.ResyncedRegions);
        Assert.Equal(dirty.Length * Region, fb.DataBytesCopied - copiedBefore);
        Assert.Equal(MirrorLegState.InSync, mirror.LegState(1));
        Assert.Equal(0, mirror.Degraded);
        Assert.Equal(0, mirror.DirtyRegions());
        await AssertLegsEqual(mirror);
        Assert.Equal(Stamp(99, 2), await ReadRaw(b, (7 * Region) + Block, Block));
    }

    [Fact]
    public async Task The_bitmap_and_generations_survive_a_restart_and_the_stale_leg_is_resynced_from_the_newer_one_only()
    {
        var (a, _) = Leg("a");
        var (b, fb) = Leg("b");
        var first = await MirrorTarget.AssembleAsync("md0", [a, b], Options());
        var md = Serve(first);
        fb.Dead = true;
        await md.WriteAsync(3 * Region, Stamp(3, 1));
        await md.WriteAsync(9 * Region, Stamp(9, 1));
        var generation = first.Generation;
        await first.StopAsync();
        await _devices.RemoveAsync(md);
        fb.Dead = false;

        // The restarted mirror holds the resync back (its clock does not move) to show the stale
        // leg is never read meanwhile.
        var clock = new ManualTimeProvider();
        var copiedBefore = fb.DataBytesCopied;
        var second = await MirrorTarget.AssembleAsync("md0", [a, b], Options() with { SyncSpeedMinKiB = 64, SyncSpeedMaxKiB = 64 }, clock);
        Assert.True(second.Generation > generation);
        Assert.Equal(first.ArrayId, second.ArrayId);
        Assert.Equal(MirrorLegState.Rebuilding, second.LegState(1));
        Assert.Equal(2, second.DirtyRegions());
        var md2 = Serve(second, "md1");
        var readsOfB = fb.Reads;
        var back = new byte[Block];
        for (var i = 0; i < 20; i++)
        {
            await md2.ReadAsync(9 * Region, back);
            Assert.Equal(Stamp(9, 1), back);
        }

        Assert.Equal(readsOfB, fb.Reads);
        while (!second.SyncIdle.IsCompleted)
        {
            await AwaitTimer(clock, second);
            clock.Advance(TimeSpan.FromSeconds(1));
        }

        await second.SyncIdle.WaitAsync(Patience);
        Assert.Equal(2, second.ResyncedRegions);
        Assert.Equal(2 * Region, fb.DataBytesCopied - copiedBefore);
        Assert.Equal(MirrorLegState.InSync, second.LegState(1));
        await AssertLegsEqual(second);
    }

    [Fact]
    public async Task After_a_crash_with_writes_in_flight_the_regions_in_the_bitmap_are_resynced_from_the_first_leg()
    {
        var (a, _) = Leg("a");
        var (b, fb) = Leg("b");
        var options = Options() with { BitmapDaemonInterval = TimeSpan.FromHours(1) };
        var first = await MirrorTarget.AssembleAsync("md0", [a, b], options);
        var md = Serve(first);
        await md.WriteAsync(2 * Region, Stamp(2, 1));
        await md.WriteAsync(5 * Region, Stamp(5, 1));
        Assert.Equal(2, first.DirtyRegions());

        // The node dies: no clean stop, and a write reached a but not b.
        first.Dispose();
        await a.WriteAsync(MirrorSuperblock.DataOffset + (5 * Region), Stamp(5, 2));

        // The resync waits for a clock that moves only when told, so its state is seen. As in md,
        // both legs stay in sync (each holds every acknowledged write): the mirror is not degraded,
        // and a region the crash left unequal is read from the first leg only (md's choose_first),
        // every time, until it is copied.
        var copiedBefore = fb.DataBytesCopied;
        var clock = new ManualTimeProvider();
        var second = await MirrorTarget.AssembleAsync("md0", [a, b], options with { SyncSpeedMinKiB = 64, SyncSpeedMaxKiB = 64 }, clock);
        Assert.Equal(MirrorLegState.InSync, second.LegState(1));
        Assert.Equal(0, second.Degraded);
        var md2 = Serve(second, "md1");
        var read = new byte[Block];
        for (var i = 0; i < 8; i++)
        {
            await md2.ReadAsync(5 * Region, read);
            Assert.Equal(Stamp(5, 2), read);
        }

        // md calls making the in-sync legs equal after a crash "resync" (a returning leg is "recover").
        Assert.Equal("resync", second.SyncAction);
        await PumpUntilIdle(clock, second);
        Assert.Equal(2, second.ResyncedRegions);
        Assert.Equal(2 * Region, fb.DataBytesCopied - copiedBefore);
        Assert.Equal(0, second.Degraded);
        Assert.Equal(0, second.DirtyRegions());
        await AssertLegsEqual(second);
    }

    [Fact]
    public async Task A_degraded_mirror_rebuilds_its_second_in_sync_leg_after_a_crash_but_not_after_a_clean_stop()
    {
        var (a, _) = Leg("a");
        var (b, _) = Leg("b");
        var (c, fc) = Leg("c");
        var options = Options() with { SyncSpeedMinKiB = 64, SyncSpeedMaxKiB = 64 };
        var first = await MirrorTarget.AssembleAsync("md0", [a, b, c], Options());
        var md = Serve(first);
        fc.Dead = true;
        await md.WriteAsync(4 * Region, Stamp(4, 1));
        await md.WriteAsync(6 * Region, Stamp(6, 1));

        // A clean stop: b is as good as a, only c is behind.
        await first.StopAsync();
        fc.Dead = false;
        var clock = new ManualTimeProvider();
        var second = await MirrorTarget.AssembleAsync("md0", [a, b, c], options, clock);
        Assert.Equal(MirrorLegState.InSync, second.LegState(1));
        Assert.Equal(MirrorLegState.Rebuilding, second.LegState(2));
        await second.FailLegAsync(2);
        var md2 = Serve(second, "md1");
        await md2.WriteAsync(6 * Region, Stamp(6, 2));

        // A crash with c still away, and a write that reached a only: b is rebuilt too.
        second.Dispose();
        await a.WriteAsync(MirrorSuperblock.DataOffset + (6 * Region), Stamp(6, 3));
        var third = await MirrorTarget.AssembleAsync("md0", [a, b, c], options, clock);
        Assert.Equal(MirrorLegState.InSync, third.LegState(0));
        Assert.Equal(MirrorLegState.InSync, third.LegState(1));
        Assert.Equal(MirrorLegState.Rebuilding, third.LegState(2));
        Assert.Equal("resync", third.SyncAction);
        await PumpUntilIdle(clock, third);
        Assert.Equal(0, third.Degraded);
        await AssertLegsEqual(third);
        Assert.Equal(Stamp(6, 3), await ReadRaw(c, 6 * Region, Block));
    }

    [Fact]
    public async Task The_bitmap_daemon_clears_a_region_idle_for_a_whole_interval_and_a_clean_stop_leaves_nothing_to_resync()
    {
        var (a, _) = Leg("a");
        var (b, _) = Leg("b");
        var clock = new ManualTimeProvider();
        var mirror = await MirrorTarget.AssembleAsync("md0", [a, b], Options(), clock);
        var md = Serve(mirror);
        await clock.WhenTimersPendingAsync(1).WaitAsync(Patience);
        await md.WriteAsync(Region, Stamp(1, 1));
        await md.WriteAsync(3 * Region, Stamp(3, 1));
        Assert.Equal(2, mirror.DirtyRegions());

        // Written since the last pass: kept by the first one, cleared by the second.
        clock.Advance(TimeSpan.FromSeconds(5));
        await clock.WhenTimersPendingAsync(1).WaitAsync(Patience);
        Assert.Equal(2, mirror.DirtyRegions());
        await md.WriteAsync(3 * Region, Stamp(3, 2));
        clock.Advance(TimeSpan.FromSeconds(5));
        await clock.WhenTimersPendingAsync(1).WaitAsync(Patience);
        Assert.Equal(1, mirror.DirtyRegions());

        // A clean stop clears the rest on the legs: the next start copies nothing.
        await mirror.StopAsync();
        var again = await MirrorTarget.AssembleAsync("md0", [a, b], Options());
        Assert.Equal(0, again.Degraded);
        Assert.Equal(0, again.DirtyRegions());
        await again.StopAsync();
        again.Dispose();
    }

    // The recovery writes its copies as plain writes: on a leg with a volatile write cache they
    // are durable only after a flush. The superblocks that count the leg in sync, and the bitmap
    // pages that clear the copied regions, are written only once every leg is flushed (md writes
    // its metadata with REQ_PREFLUSH | REQ_FUA), so the leg losing its cache after that loses no
    // copy; before, it lost them all while the metadata counted it in sync, and a restart copied
    // nothing again (README, "Mirrors").
    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task A_rebuilt_leg_with_a_volatile_write_cache_keeps_every_copied_chunk_through_a_power_loss_after_its_recovery(bool cleanStop)
    {
        var (a, _) = Leg("a");
        var (b, cache) = await CachedLeg("b");
        var options = Options() with { BitmapDaemonInterval = TimeSpan.FromHours(1) };
        var mirror = await MirrorTarget.AssembleAsync("md0", [a, b], options);
        var md = Serve(mirror);
        await mirror.FailLegAsync(1);
        for (var r = 0; r < 8; r++)
        {
            await md.WriteAsync(r * 2 * Region, Stamp(r, 1));
        }

        await mirror.ReAddAsync(1);
        await mirror.SyncIdle.WaitAsync(Patience);
        Assert.Equal(MirrorLegState.InSync, mirror.LegState(1));
        Assert.Equal(8, mirror.ResyncedRegions);

        // The node stops (cleanly, or it dies), and b loses what its cache held.
        if (cleanStop)
        {
            await mirror.StopAsync();
        }

        mirror.Dispose();
        await cache.PowerLossAsync();

        var again = await MirrorTarget.AssembleAsync("md0", [a, b], options);
        await again.SyncIdle.WaitAsync(Patience);
        Assert.Equal(0, again.Degraded);
        for (var r = 0; r < 8; r++)
        {
            Assert.Equal(Stamp(r, 1), await ReadRaw(b, r * 2 * Region, Block));
        }

        await AssertLegsEqual(again);
        await again.StopAsync();
        again.Dispose();
    }

    // Found by a randomized model check of the recovery offsets: a stop that could not mark the
    // mirror clean (a resync after a crash still owed, or a write in flight) wrote its superblocks
    // without flushing the legs, so writes acknowledged before the stop were lost to a power loss
    // after it; md's stop always flushes.
    [Fact]
    public async Task A_stop_that_cannot_mark_the_mirror_clean_still_flushes_every_leg_first()
    {
        var (a, ca) = await CachedLeg("a");
        var (b, cb) = await CachedLeg("b");
        var (c, _) = Leg("c");
        var clock = new ManualTimeProvider();
        var options = Options() with { SyncSpeedMinKiB = 64, SyncSpeedMaxKiB = 64, BitmapDaemonInterval = TimeSpan.FromHours(1) };
        var crashed = await MirrorTarget.AssembleAsync("md0", [a, b, c], options, clock);
        var md = Serve(crashed);
        for (var r = 0; r < 6; r++)
        {
            await md.WriteAsync(r * Region, Stamp(r, 1));
        }

        // The node dies: the next start owes a resync of the dirty regions, which frozen holds,
        // and a leg fails, so the stop clears no bit.
        crashed.Dispose();
        var mirror = await MirrorTarget.AssembleAsync("md0", [a, b, c], options, clock);
        md = Serve(mirror, "md1");
        await md.Attributes.WriteAsync("block/md1/md/sync_action", "frozen\n");
        await mirror.FailLegAsync(2);
        await md.WriteAsync(7 * Region, Stamp(7, 2));
        var flushes = (ca.Flushes, cb.Flushes);

        await mirror.StopAsync();
        Assert.True(ca.Flushes > flushes.Item1 && cb.Flushes > flushes.Item2, $"flushes before the stop {flushes}, after ({ca.Flushes}, {cb.Flushes})");

        // Power lost after the stop: the write acknowledged before it is on both legs.
        mirror.Dispose();
        await ca.PowerLossAsync();
        await cb.PowerLossAsync();
        Assert.Equal(Stamp(7, 2), await ReadRaw(a, 7 * Region, Block));
        Assert.Equal(Stamp(7, 2), await ReadRaw(b, 7 * Region, Block));
    }

    // The bitmap daemon clears the bit of a region whose write completed on both legs, but those
    // writes may still sit in the legs' volatile caches: the page clearing it is written only after
    // every leg is flushed, once per pass that clears bits; a write that only sets a bit flushes
    // nothing. Before, a leg losing its cache after the page was written left the legs different
    // in a region no resync covered.
    [Fact]
    public async Task The_bitmap_daemon_flushes_every_leg_before_it_writes_a_page_that_clears_bits_and_a_write_that_sets_one_flushes_nothing()
    {
        var (a, ca) = await CachedLeg("a");
        var (b, cb) = await CachedLeg("b");
        var clock = new ManualTimeProvider();
        var options = Options();
        var mirror = await MirrorTarget.AssembleAsync("md0", [a, b], options, clock);
        var md = Serve(mirror);
        await clock.WhenTimersPendingAsync(1).WaitAsync(Patience);
        var flushes = (ca.Flushes, cb.Flushes);
        for (var r = 0; r < 4; r++)
        {
            await md.WriteAsync(r * 2 * Region, Stamp(r, 1));
        }

        Assert.Equal(4, mirror.DirtyRegions());
        Assert.Equal(flushes, (ca.Flushes, cb.Flushes));

        // Written since the last pass: kept by the first one, cleared by the second.
        clock.Advance(TimeSpan.FromSeconds(5));
        await clock.WhenTimersPendingAsync(1).WaitAsync(Patience);
        clock.Advance(TimeSpan.FromSeconds(5));
        await clock.WhenTimersPendingAsync(1).WaitAsync(Patience);
        Assert.Equal(0, mirror.DirtyRegions());
        var afterPasses = (ca.Flushes, cb.Flushes);

        // The node dies and b loses its cache: the legs still hold the same data.
        mirror.Dispose();
        await cb.PowerLossAsync();
        var again = await MirrorTarget.AssembleAsync("md0", [a, b], options);
        await again.SyncIdle.WaitAsync(Patience);
        Assert.Equal(0, again.Degraded);
        for (var r = 0; r < 4; r++)
        {
            Assert.Equal(Stamp(r, 1), await ReadRaw(b, r * 2 * Region, Block));
        }

        await AssertLegsEqual(again);
        Assert.Equal((flushes.Item1 + 1, flushes.Item2 + 1), afterPasses);
        await again.StopAsync();
        again.Dispose();
    }

    [Fact]
    public async Task Three_legs_keep_the_bitmap_for_a_leg_still_away_while_another_returns()
    {
        var (a, _) = Leg("a");
        var (b, fb) = Leg("b");
        var (c, fc) = Leg("c");
        var mirror = await MirrorTarget.AssembleAsync("md0", [a, b, c], Options());
        var md = Serve(mirror);
        fc.Dead = true;
        await md.WriteAsync(2 * Region, Stamp(2, 1));
        fb.Dead = true;
        await md.WriteAsync(4 * Region, Stamp(4, 1));
        Assert.Equal(2, mirror.Degraded);
        Assert.Equal(2, mirror.DirtyRegions());

        // b returns: both regions are copied, but c still needs them, so the bits stay.
        fb.Dead = false;
        await mirror.ReAddAsync(1);
        await mirror.SyncIdle.WaitAsync(Patience);
        Assert.Equal(MirrorLegState.InSync, mirror.LegState(1));
        Assert.Equal(2, mirror.DirtyRegions());
        await md.WriteAsync(6 * Region, Stamp(6, 1));

        fc.Dead = false;
        await mirror.ReAddAsync(2);
        await mirror.SyncIdle.WaitAsync(Patience);
        Assert.Equal(0, mirror.Degraded);
        Assert.Equal(5, mirror.ResyncedRegions);
        Assert.Equal(0, mirror.DirtyRegions());
        await AssertLegsEqual(mirror);
    }

    [Fact]
    public async Task A_leg_dying_again_during_its_resync_leaves_the_mirror_degraded_and_a_later_re_add_completes()
    {
        var (a, _) = Leg("a");
        var (b, fb) = Leg("b");
        var mirror = await MirrorTarget.AssembleAsync("md0", [a, b], Options());
        var md = Serve(mirror);
        fb.Dead = true;
        for (var r = 0; r < 8; r++)
        {
            await md.WriteAsync(r * Region, Stamp(r, 1));
        }

        // Its superblock and two chunks (before the recovery's first checkpoint, after its
        // third region), then it is gone again.
        fb.Dead = false;
        fb.DieAfterWrites(3);
        await mirror.ReAddAsync(1);
        await mirror.SyncIdle.WaitAsync(Patience);
        Assert.Equal(MirrorLegState.Faulty, mirror.LegState(1));
        Assert.Equal(1, mirror.Degraded);

        // The two regions it got before it died again are owed to it still: no flush made
        // them durable on it, and its volatile cache may have lost them.
        Assert.Equal(2, mirror.ResyncedRegions);
        Assert.Equal(8, mirror.DirtyRegions());
        await md.WriteAsync(9 * Region, Stamp(9, 1));

        fb.DieAfterWrites(long.MaxValue);
        fb.Dead = false;
        await mirror.ReAddAsync(1);
        await mirror.SyncIdle.WaitAsync(Patience);
        Assert.Equal(MirrorLegState.InSync, mirror.LegState(1));
        Assert.Equal(2 + 9, mirror.ResyncedRegions);
        await AssertLegsEqual(mirror);
    }

    // The recovery's checkpoint after its third region flushes the legs, clears those bits and
    // writes a new generation, the rebuilding leg recorded at it: the leg dying at that very
    // superblock write holds an older one, so whatever the bitmap says it is copied whole when it
    // comes back (it may be another copy of the device than the one the checkpoint flushed).
    [Fact]
    public async Task A_leg_dying_at_the_superblock_write_of_a_recovery_checkpoint_is_copied_whole_when_it_comes_back()
    {
        var (a, _) = Leg("a");
        var (b, fb) = Leg("b");
        var mirror = await MirrorTarget.AssembleAsync("md0", [a, b], Options());
        var md = Serve(mirror);
        fb.Dead = true;
        for (var r = 0; r < 8; r++)
        {
            await md.WriteAsync(r * Region, Stamp(r, 1));
        }

        // Its superblock and three chunks, then the checkpoint: the flush, then its superblock fails.
        fb.Dead = false;
        fb.DieAfterWrites(4);
        await mirror.ReAddAsync(1);
        await mirror.SyncIdle.WaitAsync(Patience);
        Assert.Equal(MirrorLegState.Faulty, mirror.LegState(1));
        Assert.Equal(3, mirror.ResyncedRegions);
        Assert.Equal(5, mirror.DirtyRegions());

        fb.DieAfterWrites(long.MaxValue);
        fb.Dead = false;
        await mirror.ReAddAsync(1);
        await mirror.SyncIdle.WaitAsync(Patience);
        Assert.Equal(MirrorLegState.InSync, mirror.LegState(1));
        Assert.Equal(3 + mirror.Regions, mirror.ResyncedRegions);
        await AssertLegsEqual(mirror);
    }

    [Fact]
    public async Task A_new_leg_is_copied_whole()
    {
        var (a, _) = Leg("a");
        var (b, fb) = Leg("b");
        var clock = new ManualTimeProvider();
        var mirror = await MirrorTarget.AssembleAsync("md0", [a, b], Options(assumeClean: false) with { SyncSpeedMinKiB = 1024, SyncSpeedMaxKiB = 1024 }, clock);
        Assert.Equal(MirrorLegState.InSync, mirror.LegState(0));
        Assert.Equal(MirrorLegState.Rebuilding, mirror.LegState(1));
        await PumpUntilIdle(clock, mirror);
        Assert.Equal(mirror.Regions, mirror.ResyncedRegions);
        Assert.Equal(mirror.DataBytes, fb.DataBytesCopied);
        Assert.Equal(0, mirror.Degraded);
    }

    [Fact]
    public async Task Losing_every_leg_fails_io_with_Offline_and_nothing_hangs()
    {
        var (a, fa) = Leg("a");
        var (b, fb) = Leg("b");
        var mirror = await MirrorTarget.AssembleAsync("md0", [a, b], Options());
        var md = Serve(mirror);
        await md.WriteAsync(0, Stamp(0, 1));

        fa.Dead = true;
        await md.WriteAsync(Block, Stamp(1, 1)).AsTask().WaitAsync(Patience);
        Assert.Equal(1, mirror.Degraded);

        fb.Dead = true;
        var write = await Assert.ThrowsAsync<BlockIoException>(async () => await md.WriteAsync(2 * Block, Stamp(2, 1)).AsTask().WaitAsync(Patience));
        Assert.Equal(BlockStatus.Offline, write.Status);
        Assert.True(mirror.IsFailed);
        var statuses = await Task.WhenAll(Enumerable.Range(0, 16).Select(i => md.ExecuteAsync(i % 2 == 0 ? BlockOp.Read : BlockOp.Write, i * Block, Block, new byte[Block]).AsTask()))
            .WaitAsync(Patience);
        Assert.All(statuses, s => Assert.Equal(BlockStatus.Offline, s));
        Assert.Equal(BlockStatus.Offline, await md.ExecuteAsync(BlockOp.Flush, 0, 0, default).AsTask().WaitAsync(Patience));
        Assert.Equal(0, md.Queue.Usage.Count);
        Assert.Equal(0, md.Queue.DoubleCompletions);
    }

    [Fact]
    public async Task A_read_error_is_retried_on_the_other_leg_and_the_good_data_written_over_the_bad_range()
    {
        var (a, fa) = Leg("a");
        var (b, fb) = Leg("b");
        var mirror = await MirrorTarget.AssembleAsync("md0", [a, b], Options());
        var md = Serve(mirror);
        await md.WriteAsync(10 * Block, Stamp(10, 1));
        fa.BadRange(MirrorSuperblock.DataOffset + (10 * Block), Block);

        // Reads alternate between the legs; within a few, one meets the bad range on a.
        var back = new byte[Block];
        for (var i = 0; i < 8 && fa.ReadErrors == 0; i++)
        {
            await md.ReadAsync(10 * Block, back);
            Assert.Equal(Stamp(10, 1), back);
        }

        Assert.Equal(1, fa.ReadErrors);
        Assert.False(fa.HasBadRange);
        Assert.Equal(1, mirror.CorrectedReadErrors(0));
        Assert.Equal(MirrorLegState.InSync, mirror.LegState(0));
        Assert.Equal(Stamp(10, 1), await ReadRaw(a, 10 * Block, Block));
        Assert.Equal(0, fb.ReadErrors);
        Assert.Equal("1\n", md.Attributes.Read("block/md0/md/dev-a/errors"));
    }

    [Fact]
    public async Task A_stale_leg_alone_is_refused_as_a_source_when_the_newer_leg_cannot_be_read()
    {
        var (a, fa) = Leg("a");
        var (b, _) = Leg("b");
        var mirror = await MirrorTarget.AssembleAsync("md0", [a, b], Options());
        await mirror.StopAsync();
        mirror.Dispose();

        // a is unreadable at start and b counts it in sync: a may be the newer one.
        fa.Dead = true;
        var ex = await Assert.ThrowsAsync<MirrorAssemblyException>(() => MirrorTarget.AssembleAsync("md0", [a, b], Options()));
        Assert.Contains("a cannot be read", ex.Message, StringComparison.Ordinal);
    }

    // Not written apart: c failed in the history of the newest legs, after recording a faulty with
    // them, and a came back after c failed. c's superblock counts a faulty and itself in sync, but
    // it is no newer than the generation the newest legs last counted c in sync at, so it is a stale
    // leg, resumed from the bitmap. Before, every start with all three legs present was refused as
    // a split brain, after a clean stop too (found by MirrorRecoveryModelSpec).
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task A_faulty_leg_that_counted_a_leg_faulty_before_that_leg_returned_is_resumed_from_the_bitmap_at_a_start(bool cleanStop)
    {
        var (a, _) = Leg("a");
        var (b, _) = Leg("b");
        var (c, fc) = Leg("c");
        var options = Options() with { BitmapDaemonInterval = TimeSpan.FromHours(1) };
        var first = await MirrorTarget.AssembleAsync("md0", [a, b, c], options);
        var md = Serve(first);
        await first.FailLegAsync(0);
        await md.WriteAsync(5 * Region, Stamp(5, 2));
        await first.FailLegAsync(2);
        await md.WriteAsync(6 * Region, Stamp(6, 2));
        await first.ReAddAsync(0);
        await first.SyncIdle.WaitAsync(Patience);
        Assert.Equal(MirrorLegState.InSync, first.LegState(0));
        if (cleanStop)
        {
            await first.StopAsync();
        }

        first.Dispose();
        await first.SyncIdle.WaitAsync(Patience);

        var copiedBefore = fc.DataBytesCopied;
        var second = await MirrorTarget.AssembleAsync("md0", [a, b, c], options);
        Assert.Equal(MirrorLegState.Rebuilding, second.LegState(2));
        await second.SyncIdle.WaitAsync(Patience);
        Assert.Equal(MirrorLegState.InSync, second.LegState(2));
        Assert.Equal(2 * Region, fc.DataBytesCopied - copiedBefore);
        Assert.Equal(Stamp(5, 2), await ReadRaw(c, 5 * Region, Block));
        Assert.Equal(Stamp(6, 2), await ReadRaw(c, 6 * Region, Block));
        await AssertLegsEqual(second);
    }

    // The same leg re-added and the node dying before its own superblock is written: the newest
    // legs record it rebuilding, its superblock still counts a faulty and itself in sync.
    [Fact]
    public async Task A_faulty_leg_that_counted_a_leg_faulty_before_that_leg_returned_and_died_at_its_re_add_is_taken_back_at_a_start()
    {
        var (a, fa) = Leg("a");
        var (b, fb) = Leg("b");
        var (c, fc) = Leg("c");
        var options = Options() with { BitmapDaemonInterval = TimeSpan.FromHours(1) };
        var first = await MirrorTarget.AssembleAsync("md0", [a, b, c], options);
        var md = Serve(first);
        await first.FailLegAsync(0);
        await md.WriteAsync(5 * Region, Stamp(5, 2));
        await first.FailLegAsync(2);
        await md.WriteAsync(6 * Region, Stamp(6, 2));
        await first.ReAddAsync(0);
        await first.SyncIdle.WaitAsync(Patience);

        // c's re-add: a and b record it rebuilding; the node dies with c's superblock write held.
        var release = new TaskCompletionSource<BlockStatus>(TaskCreationOptions.RunContinuationsAsynchronously);
        var arrived = fc.HoldWrite(0, MirrorSuperblock.SuperblockBytes, release.Task);
        var reAdd = first.ReAddAsync(2);
        await arrived.WaitAsync(Patience);
        first.Dispose();
        fa.Dead = true;
        fb.Dead = true;
        fc.Dead = true;
        release.SetResult(BlockStatus.Offline);
        await Record.ExceptionAsync(() => reAdd.WaitAsync(Patience));
        await first.SyncIdle.WaitAsync(Patience);
        fa.Dead = false;
        fb.Dead = false;
        fc.Dead = false;
        Assert.Equal(MirrorLegState.Rebuilding, MirrorSuperblock.TryDecode(await ReadRaw(b, -MirrorSuperblock.DataOffset, MirrorSuperblock.SuperblockBytes))!.States[2]);
        var onC = MirrorSuperblock.TryDecode(await ReadRaw(c, -MirrorSuperblock.DataOffset, MirrorSuperblock.SuperblockBytes))!;
        Assert.Equal(MirrorLegState.Faulty, onC.States[0]);
        Assert.Equal(MirrorLegState.InSync, onC.States[2]);

        var second = await MirrorTarget.AssembleAsync("md0", [a, b, c], options);
        Assert.Equal(MirrorLegState.Rebuilding, second.LegState(2));
        await second.SyncIdle.WaitAsync(Patience);
        Assert.Equal(MirrorLegState.InSync, second.LegState(2));
        Assert.Equal(Stamp(5, 2), await ReadRaw(c, 5 * Region, Block));
        Assert.Equal(Stamp(6, 2), await ReadRaw(c, 6 * Region, Block));
        await AssertLegsEqual(second);
    }

    [Fact]
    public async Task Legs_written_apart_refuse_to_start_with_a_typed_error()
    {
        var (a, _) = Leg("a");
        var (b, _) = Leg("b");
        var mirror = await MirrorTarget.AssembleAsync("md0", [a, b], Options());
        await mirror.StopAsync();
        mirror.Dispose();

        // Each leg went on without the other: a at generation 9 counting b faulty, b likewise.
        await WriteSuperblock(a, mirror, role: 0, generation: 9, [MirrorLegState.InSync, MirrorLegState.Faulty]);
        await WriteSuperblock(b, mirror, role: 1, generation: 9, [MirrorLegState.Faulty, MirrorLegState.InSync]);
        var same = await Assert.ThrowsAsync<MirrorAssemblyException>(() => MirrorTarget.AssembleAsync("md0", [a, b], Options()));
        Assert.Contains("none is clearly newest", same.Message, StringComparison.Ordinal);

        // b older but written apart all the same.
        await WriteSuperblock(b, mirror, role: 1, generation: 8, [MirrorLegState.Faulty, MirrorLegState.InSync]);
        var apart = await Assert.ThrowsAsync<MirrorAssemblyException>(() => MirrorTarget.AssembleAsync("md0", [a, b], Options()));
        Assert.Contains("written apart", apart.Message, StringComparison.Ordinal);

        // b merely behind (it still counts a in sync): it is resynced from a (a clean bitmap: nothing to copy).
        await WriteSuperblock(b, mirror, role: 1, generation: 8, [MirrorLegState.InSync, MirrorLegState.InSync]);
        var healed = await MirrorTarget.AssembleAsync("md0", [a, b], Options());
        await healed.SyncIdle.WaitAsync(Patience);
        Assert.Equal(0, healed.ResyncedRegions);
        Assert.True(healed.Generation > 9);
        Assert.Equal(MirrorLegState.InSync, healed.LegState(1));
        await healed.StopAsync();
        healed.Dispose();

        // A leg of another mirror is refused.
        var (c, _) = Leg("c");
        var other = await MirrorTarget.AssembleAsync("md9", [c, Leg("d").Device], Options());
        await other.StopAsync();
        other.Dispose();
        var foreign = await Assert.ThrowsAsync<MirrorAssemblyException>(() => MirrorTarget.AssembleAsync("md0", [a, c], Options()));
        Assert.Contains("different mirrors", foreign.Message, StringComparison.Ordinal);
    }

    // The throttle averaged the rate over the whole pass: a recovery that had copied at
    // sync_speed_max, on meeting user I/O, waited until the whole pass so far averaged
    // sync_speed_min (here 17 chunks at 64 KiB/s: 17 s, and ~17 minutes for 1 GiB at md's
    // defaults). A new limit now starts a new average, so the next chunk waits one chunk's time.
    [Fact]
    public async Task Recovery_meeting_user_io_after_a_fast_start_slows_to_sync_speed_min_without_stalling()
    {
        var (a, fa) = Leg("a");
        var (b, fb) = Leg("b");
        var clock = new ManualTimeProvider();
        var mirror = await MirrorTarget.AssembleAsync("md0", [a, b], Options() with { SyncSpeedMinKiB = 64, SyncSpeedMaxKiB = 64 << 10 }, clock);
        var md = Serve(mirror);
        fb.Dead = true;
        for (var r = 0; r < 40; r++)
        {
            await md.WriteAsync(r * Region, Stamp(r, 1));
        }

        fb.Dead = false;
        await mirror.ReAddAsync(1);

        // Idle: 64 MiB/s, a chunk a millisecond.
        while (mirror.SyncProgress.Done < 17 * Region)
        {
            await AwaitTimer(clock, mirror);
            clock.Advance(TimeSpan.FromMilliseconds(1));
        }

        // A user write held in flight on leg a: the mirror is busy.
        var release = new TaskCompletionSource<BlockStatus>(TaskCreationOptions.RunContinuationsAsynchronously);
        var arrived = fa.HoldWrite(MirrorSuperblock.DataOffset + (39 * Region), Block, release.Task);
        var held = md.WriteAsync(39 * Region, Stamp(39, 2)).AsTask();
        await arrived.WaitAsync(Patience);

        // The chunks copied at the fast rate no longer count: within 2 s the copy moves on by the
        // chunk already timed at the fast rate and one more at 64 KiB/s a second (before, it
        // copied the first and then waited 17 s).
        await AwaitTimer(clock, mirror);
        var before = mirror.SyncProgress.Done;
        for (var i = 0; i < 20; i++)
        {
            clock.Advance(TimeSpan.FromMilliseconds(100));
            await AwaitTimer(clock, mirror);
        }

        Assert.InRange(mirror.SyncProgress.Done, before + (2 * Region), before + (3 * Region));
        Assert.Equal("recover\n", md.Attributes.Read("block/md0/md/sync_action"));

        release.SetResult(BlockStatus.Ok);
        await held.WaitAsync(Patience);
        while (!mirror.SyncIdle.IsCompleted)
        {
            clock.Advance(TimeSpan.FromMilliseconds(100));
            await AwaitTimer(clock, mirror);
        }

        await mirror.SyncIdle.WaitAsync(Patience);
        await AssertLegsEqual(mirror);
    }

    [Fact]
    public async Task Resync_keeps_to_sync_speed_max_on_virtual_time_and_a_write_during_it_is_never_overwritten_by_the_copy()
    {
        var (a, _) = Leg("a");
        var (b, fb) = Leg("b");
        var clock = new ManualTimeProvider();
        var mirror = await MirrorTarget.AssembleAsync("md0", [a, b], Options() with { SyncSpeedMinKiB = 512, SyncSpeedMaxKiB = 512 }, clock);
        var md = Serve(mirror);
        fb.Dead = true;
        for (var r = 0; r < 16; r++)
        {
            await md.WriteAsync(r * Region, Stamp(r, 1));
        }

        fb.Dead = false;
        await mirror.ReAddAsync(1);

        // 512 KiB/s: the first chunk goes at once, then the copy waits for the clock.
        await AwaitTimer(clock, mirror);
        Assert.Equal(MirrorTarget.SyncChunkBytes, mirror.SyncProgress.Done);
        Assert.Equal("recover\n", md.Attributes.Read("block/md0/md/sync_action"));
        Assert.Equal($"{MirrorTarget.SyncChunkBytes >> 9} / {(16 * Region) >> 9}\n", md.Attributes.Read("block/md0/md/sync_completed"));
        Assert.Equal("spare\n", md.Attributes.Read("block/md0/md/dev-b/state"));

        // A write to a region the copy has not reached yet: it goes to both legs, and the copy
        // of that region later must not put the old data back.
        await md.WriteAsync(12 * Region, Stamp(12, 2));

        clock.Advance(TimeSpan.FromSeconds(1));
        await AwaitTimer(clock, mirror);
        Assert.InRange(mirror.SyncProgress.Done, 512 << 10, (512 << 10) + MirrorTarget.SyncChunkBytes);

        while (!mirror.SyncIdle.IsCompleted)
        {
            clock.Advance(TimeSpan.FromSeconds(1));
            await AwaitTimer(clock, mirror);
        }

        await mirror.SyncIdle.WaitAsync(Patience);
        Assert.Equal(Stamp(12, 2), await ReadRaw(b, 12 * Region, Block));
        await AssertLegsEqual(mirror);
        Assert.Equal("idle\n", md.Attributes.Read("block/md0/md/sync_action"));
        Assert.Equal("0\n", md.Attributes.Read("block/md0/md/degraded"));
    }

    // md refuses at --re-add a device that cannot carry the array (an outside audit: a remote leg
    // that came back at half its size was re-added by itself and failed again on writes past its
    // end, without a word). A re-add checks the leg as assembly does: writable, large enough for
    // the data and the metadata, the mirror's block size; the leg stays faulty, the reason named.
    [Fact]
    public async Task A_leg_that_cannot_carry_the_mirror_is_refused_at_re_add_and_stays_faulty()
    {
        var (a, _) = Leg("a");
        var (b, _) = Leg("b");
        var mirror = await MirrorTarget.AssembleAsync("md0", [a, b], Options());
        var md = Serve(mirror);
        await mirror.SyncIdle.WaitAsync(Patience);
        await mirror.FailLegAsync(1);
        await md.WriteAsync(0, Stamp(0, 1));

        b.Queue.ReadOnly = true;
        var refused = await Assert.ThrowsAsync<InvalidOperationException>(() => mirror.ReAddAsync(1));
        Assert.Contains("read-only", refused.Message, StringComparison.Ordinal);
        Assert.Equal(MirrorLegState.Faulty, mirror.LegState(1));

        b.Queue.ReadOnly = false;
        await mirror.ReAddAsync(1);
        await mirror.SyncIdle.WaitAsync(Patience);
        Assert.Equal(MirrorLegState.InSync, mirror.LegState(1));
        Assert.Equal(Stamp(0, 1), await ReadRaw(b, 0, Block));
    }

    // md's --remove of a faulty member, then --add of a new device into its slot: the new device
    // is a spare that gets a superblock of this array and a full copy from the in-sync leg, while
    // writes go on; it is in sync when the recovery ends (README, "Mirrors", "Replacing a leg").
    [Fact]
    public async Task A_faulty_leg_replaced_under_verified_writes_by_a_blank_device_is_copied_whole_and_equals_the_survivor()
    {
        var (a, _) = Leg("a");
        var (b, fb) = Leg("b");
        var (c, _) = Leg("c");
        var mirror = await MirrorTarget.AssembleAsync("md0", [a, b], Options() with { SyncSpeedMinKiB = 1_000_000, SyncSpeedMaxKiB = 1_000_000 });
        var md = Serve(mirror);
        var failed = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        mirror.LegFailed += (_, _, _) => failed.TrySetResult();
        fb.DieAfterWrites(100);

        // b dies under the writers; c takes its slot while they go on.
        var writers = VerifiedWriters.RunAsync(md, Block, writers: 8, writesEach: 250, (k, v) => Stamp(k, v));
        await failed.Task.WaitAsync(Patience);
        Assert.Equal(MirrorLegState.Faulty, mirror.LegState(1));
        var old = await mirror.ReplaceLegAsync(1, c).WaitAsync(Patience);
        Assert.Same(b, old);
        Assert.Same(c, mirror.Legs[1]);
        Assert.Contains(c, mirror.Members);
        Assert.DoesNotContain(b, mirror.Members);
        Assert.NotEqual(MirrorLegState.Faulty, mirror.LegState(1));
        var (acknowledged, errors) = await writers.WaitAsync(Patience);
        await mirror.SyncIdle.WaitAsync(Patience);

        Assert.Equal(0, errors);
        Assert.Equal(MirrorLegState.InSync, mirror.LegState(1));
        Assert.Equal(0, mirror.Degraded);
        Assert.Equal(mirror.Regions, mirror.ResyncedRegions);
        for (var block = 0; block < acknowledged.Length; block++)
        {
            if (acknowledged[block] != 0)
            {
                Assert.Equal(Stamp(block, acknowledged[block]), await ReadRaw(c, (long)block * Block, Block));
            }
        }

        await AssertLegsEqual(mirror);
        Assert.Equal(0, md.Queue.DoubleCompletions);
        Assert.Equal(0, md.Queue.Usage.Count);
    }

    // The swap waits for the I/O in flight: a write or a flush held on the old leg (a remote leg
    // taking its I/O timeout) keeps the replacement, and the bios that arrive meanwhile, waiting;
    // its failure when it ends is the old device's and leaves the new one alone; nothing reaches
    // the old device once the replacement has returned. (A write holds the range gate the swap
    // takes too; a flush holds nothing but the bio: without the suspension its failure failed c.)
    [Theory]
    [InlineData(BlockOp.Write)]
    [InlineData(BlockOp.Flush)]
    public async Task A_replacement_waits_for_io_in_flight_on_the_old_leg_whose_failure_then_leaves_the_new_leg_alone(BlockOp op)
    {
        var (a, _) = Leg("a");
        var (b, fb) = Leg("b");
        var (c, _) = Leg("c");
        var mirror = await MirrorTarget.AssembleAsync("md0", [a, b], Options());
        var md = Serve(mirror);
        var release = new TaskCompletionSource<BlockStatus>(TaskCreationOptions.RunContinuationsAsynchronously);
        if (op == BlockOp.Flush)
        {
            await md.WriteAsync(3 * Block, Stamp(3, 1));
        }

        var arrived = op == BlockOp.Write ? fb.HoldWrite(MirrorSuperblock.DataOffset + (3 * Block), Block, release.Task) : fb.HoldFlush(release.Task);
        var held = op == BlockOp.Write ? md.WriteAsync(3 * Block, Stamp(3, 1)).AsTask() : md.FlushAsync().AsTask();
        await arrived.WaitAsync(Patience);
        await mirror.FailLegAsync(1);

        var replace = mirror.ReplaceLegAsync(1, c);
        var later = md.WriteAsync(9 * Block, Stamp(9, 1)).AsTask();
        Assert.False(replace.IsCompleted);
        Assert.False(held.IsCompleted);

        // A bio that may not wait is not held back: Again, as md answers for a suspended array.
        Assert.Equal(BlockStatus.Again, await md.ExecuteAsync(BlockOp.Read, 9 * Block, Block, new byte[Block], RequestFlags.NoWait).AsTask().WaitAsync(Patience));

        release.SetResult(BlockStatus.Offline);
        await held.WaitAsync(Patience);
        Assert.Same(b, await replace.WaitAsync(Patience));
        await later.WaitAsync(Patience);
        var reached = (fb.Reads, fb.Writes, fb.Flushes, fb.Discards, fb.WriteZeroes);
        await md.WriteAsync(10 * Block, Stamp(10, 1));
        await md.FlushAsync();
        await mirror.SyncIdle.WaitAsync(Patience);

        Assert.Equal(MirrorLegState.InSync, mirror.LegState(1));
        Assert.Equal(reached, (fb.Reads, fb.Writes, fb.Flushes, fb.Discards, fb.WriteZeroes));
        foreach (var k in new long[] { 3, 9, 10 })
        {
            Assert.Equal(Stamp(k, 1), await ReadRaw(c, k * Block, Block));
        }

        await AssertLegsEqual(mirror);
        Assert.Equal(0, md.Queue.DoubleCompletions);
    }

    // The refusals of a re-add, and those of the slot: only a faulty slot is replaced, by a device
    // that is no leg of the mirror already. Nothing changes.
    [Fact]
    public async Task A_replacement_is_refused_for_a_slot_not_faulty_and_for_a_device_that_cannot_carry_the_mirror()
    {
        var (a, _) = Leg("a");
        var (b, _) = Leg("b");
        var mirror = await MirrorTarget.AssembleAsync("md0", [a, b], Options());
        Serve(mirror);
        var (c, _) = Leg("c");

        var busy = await Assert.ThrowsAsync<InvalidOperationException>(() => mirror.ReplaceLegAsync(1, c));
        Assert.Contains("in_sync, not faulty", busy.Message, StringComparison.Ordinal);
        await mirror.FailLegAsync(1);

        var (small, _) = Leg("small", LegBytes / 2);
        Assert.Contains("too small to replace a leg", (await Assert.ThrowsAsync<MirrorLegTooSmallException>(() => mirror.ReplaceLegAsync(1, small))).Message, StringComparison.Ordinal);
        var inner = _devices.Ring(new DeviceOptions { Name = "big-disk", Size = LegBytes, MemoryBacked = true, WriteCache = true, BlockSize = 4096 });
        var (big, _) = FaultyLeg.Create("big", inner);
        _devices.Add(big);
        Assert.Contains("4096-byte blocks", (await Assert.ThrowsAsync<InvalidOperationException>(() => mirror.ReplaceLegAsync(1, big))).Message, StringComparison.Ordinal);
        c.Queue.ReadOnly = true;
        Assert.Contains("read-only", (await Assert.ThrowsAsync<InvalidOperationException>(() => mirror.ReplaceLegAsync(1, c))).Message, StringComparison.Ordinal);
        c.Queue.ReadOnly = false;
        Assert.Contains("leg 0 of this mirror already", (await Assert.ThrowsAsync<InvalidOperationException>(() => mirror.ReplaceLegAsync(1, a))).Message, StringComparison.Ordinal);
        Assert.Contains("re-add it instead", (await Assert.ThrowsAsync<InvalidOperationException>(() => mirror.ReplaceLegAsync(1, b))).Message, StringComparison.Ordinal);

        Assert.Equal(MirrorLegState.Faulty, mirror.LegState(1));
        Assert.Same(b, mirror.Legs[1]);
        await mirror.ReplaceLegAsync(1, c);
        await mirror.SyncIdle.WaitAsync(Patience);
        Assert.Equal(MirrorLegState.InSync, mirror.LegState(1));
    }

    // The new leg's superblock makes it this array's rebuilding slot: a restart in the middle of
    // its recovery finds it rebuilding (never in sync) and copies the regions still owed; a
    // restart after it finds both legs in sync and copies nothing.
    [Fact]
    public async Task A_replaced_leg_is_still_rebuilding_after_a_restart_during_its_recovery_and_in_sync_after_one_once_it_ended()
    {
        var (a, _) = Leg("a");
        var (b, _) = Leg("b");
        var (c, _) = Leg("c");
        var clock = new ManualTimeProvider();
        var slow = Options() with { SyncSpeedMinKiB = 64, SyncSpeedMaxKiB = 64, BitmapDaemonInterval = TimeSpan.FromHours(1) };
        var mirror = await MirrorTarget.AssembleAsync("md0", [a, b], slow, clock);
        var md = Serve(mirror);
        for (var r = 0; r < 8; r++)
        {
            await md.WriteAsync(r * Region, Stamp(r, 1));
        }

        await mirror.FailLegAsync(1);
        await mirror.ReplaceLegAsync(1, c);

        // 64 KiB/s: region 0 is copied (its bit cleared once the wait after it ends), then region 1.
        await AwaitTimer(clock, mirror);
        clock.Advance(TimeSpan.FromSeconds(1));
        await AwaitTimer(clock, mirror);
        Assert.Equal(2 * MirrorTarget.SyncChunkBytes, mirror.SyncProgress.Done);
        await mirror.StopAsync();
        mirror.Dispose();

        var restarted = await MirrorTarget.AssembleAsync("md0", [a, c], Options() with { SyncSpeedMinKiB = 64, SyncSpeedMaxKiB = 64 }, clock);
        Assert.Equal(MirrorLegState.Rebuilding, restarted.LegState(1));
        Assert.Equal(1, restarted.Degraded);
        await PumpUntilIdle(clock, restarted);
        Assert.Equal(MirrorLegState.InSync, restarted.LegState(1));
        Assert.Equal(restarted.Regions - 1, restarted.ResyncedRegions); // region 1's wait was cut: it is copied again
        await AssertLegsEqual(restarted);
        await restarted.StopAsync();
        restarted.Dispose();

        var again = await MirrorTarget.AssembleAsync("md0", [a, c], Options());
        await again.SyncIdle.WaitAsync(Patience);
        Assert.Equal(0, again.Degraded);
        Assert.Equal(0, again.ResyncedRegions);
        Assert.Equal(Stamp(7, 1), await ReadRaw(c, 7 * Region, Block));
        await again.StopAsync();
        again.Dispose();
    }

    // A slot's history starts again at a replacement: the device it held before is behind by every
    // write since, and the bitmap covers none of them once the new leg was in sync. Named again by
    // the table at a restart (a node's configuration still naming it after `new_dev`), it is copied
    // whole. Before, the newest legs recording the slot faulty (the new leg failed later) made it a
    // re-add from the bitmap: an outside mirror audit restarted the mirror's node so and read
    // 2/2 in sync with every other read of a flushed write returning the data it replaced.
    [Fact]
    public async Task A_leg_replaced_earlier_and_named_again_by_the_table_at_a_restart_is_copied_whole_not_from_the_bitmap()
    {
        var (a, _) = Leg("a");
        var (b, _) = Leg("b");
        var (c, _) = Leg("c");
        var mirror = await MirrorTarget.AssembleAsync("md0", [a, b], Options() with { BitmapDaemonInterval = TimeSpan.FromHours(1) });
        var md = Serve(mirror);
        for (var r = 0; r < 8; r++)
        {
            await md.WriteAsync(r * Region, Stamp(r, 1));
        }

        // b leaves with version 1; version 2 reaches a, and c by its recovery, whose end clears the bits.
        await mirror.FailLegAsync(1);
        for (var r = 0; r < 8; r++)
        {
            await md.WriteAsync(r * Region, Stamp(r, 2));
        }

        await mirror.ReplaceLegAsync(1, c);
        await mirror.SyncIdle.WaitAsync(Patience);
        Assert.Equal(MirrorLegState.InSync, mirror.LegState(1));
        await mirror.FailLegAsync(1);
        await mirror.StopAsync();
        mirror.Dispose();

        var restarted = await MirrorTarget.AssembleAsync("md0", [a, b], Options());
        await restarted.SyncIdle.WaitAsync(Patience);
        Assert.Equal(MirrorLegState.InSync, restarted.LegState(1));
        Assert.Equal(restarted.Regions, restarted.ResyncedRegions);
        for (var r = 0; r < 8; r++)
        {
            Assert.Equal(Stamp(r, 2), await ReadRaw(b, r * Region, Block));
        }

        await AssertLegsEqual(restarted);
        await restarted.StopAsync();
        restarted.Dispose();
    }

    // The same while the new leg is still rebuilding: the regions its recovery had copied lost
    // their bits, and the old device named again owed them too (before, it got the rest only).
    [Fact]
    public async Task A_leg_replaced_during_the_new_legs_recovery_and_named_again_at_a_restart_is_copied_whole()
    {
        var (a, _) = Leg("a");
        var (b, _) = Leg("b");
        var (c, _) = Leg("c");
        var clock = new ManualTimeProvider();
        var slow = Options() with { SyncSpeedMinKiB = 64, SyncSpeedMaxKiB = 64, BitmapDaemonInterval = TimeSpan.FromHours(1) };
        var mirror = await MirrorTarget.AssembleAsync("md0", [a, b], slow, clock);
        var md = Serve(mirror);
        await mirror.FailLegAsync(1);
        for (var r = 0; r < 8; r++)
        {
            await md.WriteAsync(r * Region, Stamp(r, 2));
        }

        await mirror.ReplaceLegAsync(1, c);
        await AwaitTimer(clock, mirror);
        clock.Advance(TimeSpan.FromSeconds(1));
        await AwaitTimer(clock, mirror);
        Assert.Equal(2 * MirrorTarget.SyncChunkBytes, mirror.SyncProgress.Done);
        await mirror.StopAsync();
        mirror.Dispose();

        var restarted = await MirrorTarget.AssembleAsync("md0", [a, b], Options());
        await restarted.SyncIdle.WaitAsync(Patience);
        Assert.Equal(MirrorLegState.InSync, restarted.LegState(1));
        Assert.Equal(restarted.Regions, restarted.ResyncedRegions);
        Assert.Equal(Stamp(0, 2), await ReadRaw(b, 0, Block));
        await AssertLegsEqual(restarted);
        await restarted.StopAsync();
        restarted.Dispose();
    }

    // The same rule at run time: a leg whose device comes back older than the generation at which
    // it was last in sync (a backup of it restored under the same name) is copied whole, not
    // from the bitmap, which was cleared of the writes it lacks.
    [Fact]
    public async Task A_re_added_leg_older_than_its_last_generation_in_sync_is_copied_whole()
    {
        var (a, _) = Leg("a");
        var (b, _) = Leg("b");
        var mirror = await MirrorTarget.AssembleAsync("md0", [a, b], Options() with { BitmapDaemonInterval = TimeSpan.FromHours(1) });
        var md = Serve(mirror);
        for (var r = 0; r < 8; r++)
        {
            await md.WriteAsync(r * Region, Stamp(r, 1));
        }

        var backup = await ReadRaw(b, -MirrorSuperblock.DataOffset, (int)(MirrorSuperblock.DataOffset + (8 * Region)));
        await mirror.FailLegAsync(1);
        for (var r = 0; r < 8; r++)
        {
            await md.WriteAsync(r * Region, Stamp(r, 2));
        }

        await mirror.ReAddAsync(1);
        await mirror.SyncIdle.WaitAsync(Patience);
        Assert.Equal(MirrorLegState.InSync, mirror.LegState(1));

        await mirror.FailLegAsync(1);
        await b.WriteAsync(0, backup);
        var resynced = mirror.ResyncedRegions;
        await mirror.ReAddAsync(1);
        await mirror.SyncIdle.WaitAsync(Patience);
        Assert.Equal(MirrorLegState.InSync, mirror.LegState(1));
        Assert.Equal(mirror.Regions, mirror.ResyncedRegions - resynced);
        Assert.Equal(Stamp(3, 2), await ReadRaw(b, 3 * Region, Block));
        await AssertLegsEqual(mirror);
    }

    // The in-sync legs' superblocks are written before a new or returning leg's: a crash between
    // the two writes must leave the newest generation on a leg in sync, else the assembly finds no
    // leg of the newest generation to read from and refuses the mirror. Slot 0 is replaced, so
    // the new leg comes first in slot order.
    [Fact]
    public async Task The_new_legs_superblock_is_written_after_the_in_sync_legs_so_a_crash_between_them_leaves_a_mirror_that_starts()
    {
        var (a, _) = Leg("a");
        var (b, fb) = Leg("b");
        var (c, _) = Leg("c");
        var mirror = await MirrorTarget.AssembleAsync("md0", [a, b], Options() with { BitmapDaemonInterval = TimeSpan.FromHours(1) });
        Serve(mirror);
        await mirror.FailLegAsync(0);

        var release = new TaskCompletionSource<BlockStatus>(TaskCreationOptions.RunContinuationsAsynchronously);
        var arrived = fb.HoldWrite(0, MirrorSuperblock.SuperblockBytes, release.Task);
        var replace = mirror.ReplaceLegAsync(0, c);
        await arrived.WaitAsync(Patience);

        // The crash: b's superblock of the replacement is not on b yet, so none may be on c.
        var onC = MirrorSuperblock.TryDecode(await ReadRaw(c, -MirrorSuperblock.DataOffset, MirrorSuperblock.SuperblockBytes));
        var onB = MirrorSuperblock.TryDecode(await ReadRaw(b, -MirrorSuperblock.DataOffset, MirrorSuperblock.SuperblockBytes));
        Assert.NotNull(onB);
        Assert.True(onC is null || onC.Generation <= onB.Generation, $"c holds generation {onC?.Generation}, b {onB.Generation}");

        release.SetResult(BlockStatus.Ok);
        await replace.WaitAsync(Patience);
        await mirror.SyncIdle.WaitAsync(Patience);
        Assert.Equal(MirrorLegState.InSync, mirror.LegState(0));
    }

    // The last in-sync leg failing the superblock write that records another in-sync leg's failure
    // must leave the leg being rebuilt at the in-sync legs' generation. Before, the rebuilding leg
    // took the new generation alone (the in-sync legs were written first, but their failure did
    // not stop the write to it), and the next assembly refused the mirror for ever: "no leg of the
    // newest generation is in sync" (an outside mirror audit: a local leg re-added and rebuilding
    // from two legs on another node, that node killed with SIGKILL mid-copy, then every restart of
    // the mirror's node with both nodes up refused it, the data whole on the remote legs).
    [Fact]
    public async Task The_last_in_sync_leg_failing_the_superblock_write_of_a_failure_leaves_the_rebuilding_leg_behind_and_the_mirror_starts_again()
    {
        var (a, fa) = Leg("a");
        var (b, _) = Leg("b");
        var (c, _) = Leg("c");
        var clock = new ManualTimeProvider();
        var slow = Options() with { SyncSpeedMinKiB = 64, SyncSpeedMaxKiB = 64, BitmapDaemonInterval = TimeSpan.FromHours(1) };
        var mirror = await MirrorTarget.AssembleAsync("md0", [a, b, c], slow, clock);
        var md = Serve(mirror);
        await mirror.FailLegAsync(2);
        for (var r = 0; r < 8; r++)
        {
            await md.WriteAsync(r * Region, Stamp(r, 1));
        }

        await mirror.ReAddAsync(2);
        await AwaitTimer(clock, mirror);
        Assert.Equal(MirrorLegState.Rebuilding, mirror.LegState(2));

        // b fails; the superblock recording it goes to a (which fails it: the mirror has failed) and
        // must then not go to c alone.
        var release = new TaskCompletionSource<BlockStatus>(TaskCreationOptions.RunContinuationsAsynchronously);
        var arrived = fa.HoldWrite(0, MirrorSuperblock.SuperblockBytes, release.Task);
        var failing = mirror.FailLegAsync(1);
        await arrived.WaitAsync(Patience);
        release.SetResult(BlockStatus.IoError);
        await failing.WaitAsync(Patience);
        Assert.Equal(3, mirror.Degraded);

        var onA = MirrorSuperblock.TryDecode(await ReadRaw(a, -MirrorSuperblock.DataOffset, MirrorSuperblock.SuperblockBytes));
        var onC = MirrorSuperblock.TryDecode(await ReadRaw(c, -MirrorSuperblock.DataOffset, MirrorSuperblock.SuperblockBytes));
        Assert.NotNull(onA);
        Assert.NotNull(onC);
        Assert.True(onC.Generation <= onA.Generation, $"the rebuilding leg c holds generation {onC.Generation}, the in-sync leg a {onA.Generation}");
        await mirror.StopAsync();
        mirror.Dispose();

        // Every leg back: a and b are the sources, c is rebuilt, and every acknowledged write reads back.
        var restarted = await MirrorTarget.AssembleAsync("md0", [a, b, c], Options());
        await restarted.SyncIdle.WaitAsync(Patience);
        Assert.All(Enumerable.Range(0, 3), i => Assert.Equal(MirrorLegState.InSync, restarted.LegState(i)));
        var again = Serve(restarted, "md0b");
        for (var r = 0; r < 8; r++)
        {
            var read = new byte[Block];
            await again.ReadAsync(r * Region, read);
            Assert.Equal(Stamp(r, 1), read);
        }

        await AssertLegsEqual(restarted);
        await restarted.StopAsync();
        restarted.Dispose();
    }

    // md_write_start holds writes back while a failure's superblock update is pending. Before, a
    // write to a region already dirty, issued after leg a failed and before the superblock
    // recording that reached b, was acknowledged from b alone while b still counted a in sync: a
    // crash then assembled a and b as sources and the resync copied a's older data over it (the
    // mirror read version 0 on both legs after acknowledging version 1). Found by reading the
    // write path during the mirror2 audit; here b fails that superblock write, so the mirror fails
    // and the write must not be acknowledged.
    [Fact]
    public async Task A_write_issued_while_a_legs_failure_is_not_on_the_legs_left_waits_for_it_and_is_not_acknowledged_if_it_never_gets_there()
    {
        var (a, _) = Leg("a");
        var (b, fb) = Leg("b");
        var mirror = await MirrorTarget.AssembleAsync("md0", [a, b], Options() with { BitmapDaemonInterval = TimeSpan.FromHours(1) });
        var md = Serve(mirror);
        await md.WriteAsync(5 * Region, Stamp(5, 0));
        var release = new TaskCompletionSource<BlockStatus>(TaskCreationOptions.RunContinuationsAsynchronously);
        var arrived = fb.HoldWrite(0, MirrorSuperblock.SuperblockBytes, release.Task);
        var failing = mirror.FailLegAsync(0);
        await arrived.WaitAsync(Patience);

        var write = md.WriteAsync(5 * Region, Stamp(5, 1)).AsTask();
        release.SetResult(BlockStatus.IoError);
        await failing.WaitAsync(Patience);
        Assert.NotNull(await Record.ExceptionAsync(() => write.WaitAsync(Patience)));
        await mirror.StopAsync();
        mirror.Dispose();

        // The legs as they are: the acknowledged version 0 everywhere.
        var restarted = await MirrorTarget.AssembleAsync("md0", [a, b], Options());
        await restarted.SyncIdle.WaitAsync(Patience);
        var again = Serve(restarted, "md0b");
        var read = new byte[Block];
        await again.ReadAsync(5 * Region, read);
        Assert.Equal(Stamp(5, 0), read);
        await AssertLegsEqual(restarted);
        await restarted.StopAsync();
        restarted.Dispose();
    }

    [Fact]
    public async Task A_write_on_a_chunk_already_copied_that_then_fails_on_the_returning_leg_leaves_its_region_owed_to_it()
    {
        // An outside audit: the recovery cleared a region's bit once it had copied the region,
        // although a write on a chunk it had already copied was still in flight. That write then
        // failed on the returning leg (faulty again), the re-add found nothing to copy, and reads
        // got the old data from that leg. A region's bit now stays while a write is in flight on it.
        var (a, _) = Leg("a");
        var (b, fb) = Leg("b");
        var clock = new ManualTimeProvider();
        var options = Options() with { RegionBytes = 4 * Region, SyncSpeedMinKiB = 64, SyncSpeedMaxKiB = 64, BitmapDaemonInterval = TimeSpan.FromHours(1) };
        var mirror = await MirrorTarget.AssembleAsync("md0", [a, b], options, clock);
        var md = Serve(mirror);
        await mirror.FailLegAsync(1);
        await md.WriteAsync(0, Stamp(0, 1));

        // b returns; the first 64 KiB chunk of the region is copied, then the copy waits for the clock.
        var release = new TaskCompletionSource<BlockStatus>(TaskCreationOptions.RunContinuationsAsynchronously);
        var arrived = fb.HoldWrite(MirrorSuperblock.DataOffset + Block, Block, release.Task);
        await mirror.ReAddAsync(1);
        await AwaitTimer(clock, mirror);
        Assert.Equal(MirrorTarget.SyncChunkBytes, mirror.SyncProgress.Done);

        // A write on that chunk, which b holds while the copy finishes the region.
        var write = md.WriteAsync(Block, Stamp(1, 2)).AsTask();
        await arrived.WaitAsync(Patience);
        await PumpUntilIdle(clock, mirror);
        Assert.Equal(MirrorLegState.InSync, mirror.LegState(1));

        // b fails it: a has it, so it is acknowledged; b is faulty and owed the region.
        release.SetResult(BlockStatus.IoError);
        await write.WaitAsync(Patience);
        Assert.Equal(MirrorLegState.Faulty, mirror.LegState(1));
        Assert.Equal(1, mirror.DirtyRegions());

        await mirror.ReAddAsync(1);
        await PumpUntilIdle(clock, mirror);
        Assert.Equal(MirrorLegState.InSync, mirror.LegState(1));
        Assert.Equal(Stamp(1, 2), await ReadRaw(b, Block, Block));
        await AssertLegsEqual(mirror);
    }

    [Fact]
    public async Task A_leg_re_added_while_another_legs_recovery_runs_gets_every_region_before_it_is_in_sync()
    {
        // An outside audit: b's recovery cleared the bits of the regions it copied once no leg was
        // faulty, though c, re-added meanwhile, was not among its targets; c's own pass then found
        // nothing to copy and c was declared in sync with the old data.
        var (a, _) = Leg("a");
        var (b, _) = Leg("b");
        var (c, _) = Leg("c");
        var clock = new ManualTimeProvider();
        var options = Options() with { SyncSpeedMinKiB = 64, SyncSpeedMaxKiB = 64, BitmapDaemonInterval = TimeSpan.FromHours(1) };
        var mirror = await MirrorTarget.AssembleAsync("md0", [a, b, c], options, clock);
        var md = Serve(mirror);
        await mirror.FailLegAsync(1);
        await mirror.FailLegAsync(2);
        for (var r = 0; r < 8; r++)
        {
            await md.WriteAsync(r * Region, Stamp(r, 2));
        }

        await mirror.ReAddAsync(1);
        await AwaitTimer(clock, mirror);
        await mirror.ReAddAsync(2);
        await PumpUntilIdle(clock, mirror);
        Assert.All(Enumerable.Range(0, 3), i => Assert.Equal(MirrorLegState.InSync, mirror.LegState(i)));
        for (var r = 0; r < 8; r++)
        {
            Assert.Equal(Stamp(r, 2), await ReadRaw(c, r * Region, Block));
        }

        await AssertLegsEqual(mirror);
    }

    [Fact]
    public async Task A_leg_failed_and_re_added_within_one_pass_is_not_declared_in_sync_by_that_pass()
    {
        // An outside audit: b failed during its recovery, a write then landed on a chunk the pass
        // had already copied (b missed it), and b was re-added while the same pass still ran; the
        // pass declared b in sync at its end and cleared the bit that recorded the write.
        var (a, _) = Leg("a");
        var (b, _) = Leg("b");
        var clock = new ManualTimeProvider();
        var options = Options() with { RegionBytes = 4 * Region, SyncSpeedMinKiB = 64, SyncSpeedMaxKiB = 64, BitmapDaemonInterval = TimeSpan.FromHours(1) };
        var mirror = await MirrorTarget.AssembleAsync("md0", [a, b], options, clock);
        var md = Serve(mirror);
        await mirror.FailLegAsync(1);
        await md.WriteAsync(0, Stamp(0, 2));
        await mirror.ReAddAsync(1);
        await AwaitTimer(clock, mirror);
        Assert.Equal(MirrorTarget.SyncChunkBytes, mirror.SyncProgress.Done);

        await mirror.FailLegAsync(1);
        await md.WriteAsync(Block, Stamp(1, 3));
        await mirror.ReAddAsync(1);
        await PumpUntilIdle(clock, mirror);
        Assert.Equal(MirrorLegState.InSync, mirror.LegState(1));
        Assert.Equal(Stamp(1, 3), await ReadRaw(b, Block, Block));
        await AssertLegsEqual(mirror);
    }

    [Fact]
    public async Task A_recovery_whose_only_rebuilding_leg_fails_stops_at_once_and_a_re_add_copies_everything_it_missed()
    {
        // An outside audit: b failing during its recovery left the pass running to its end (~8 s
        // at 1000 KiB/s on 8 MiB), reading a and holding 64 KiB ranges against writes for nobody,
        // sync_action recover and Health recovering beside dev-b faulty, and a re-add waiting for
        // it. As md (md_error sets MD_RECOVERY_INTR), the pass stops at its next chunk. The clock
        // stands still here: at 64 KiB/s over 16 regions the pass could never end by itself.
        var (a, _) = Leg("a");
        var (b, _) = Leg("b");
        var clock = new ManualTimeProvider();
        var options = Options() with { SyncSpeedMinKiB = 64, SyncSpeedMaxKiB = 64, BitmapDaemonInterval = TimeSpan.FromHours(1) };
        var mirror = await MirrorTarget.AssembleAsync("md0", [a, b], options, clock);
        var md = Serve(mirror);
        await md.Attributes.WriteAsync("block/md0/md/dev-b/state", "faulty");
        for (var r = 0; r < 16; r++)
        {
            await md.WriteAsync(r * Region, Stamp(r, 1));
        }

        await md.Attributes.WriteAsync("block/md0/md/dev-b/state", "re-add");
        await AwaitTimer(clock, mirror);
        Assert.Equal("recover\n", md.Attributes.Read("block/md0/md/sync_action"));
        Assert.Equal(MirrorTarget.SyncChunkBytes, mirror.SyncProgress.Done);

        // b fails while the pass waits for its throttle after the first chunk.
        await md.Attributes.WriteAsync("block/md0/md/dev-b/state", "faulty");
        await Condition.EventuallyAsync(
            () => md.Attributes.Read("block/md0/md/sync_action") == "idle\n",
            "the recovery stops once its only leg to copy to is faulty",
            () => $"sync_action {md.Attributes.Read("block/md0/md/sync_action").Trim()}, sync_completed {md.Attributes.Read("block/md0/md/sync_completed").Trim()}");
        await mirror.SyncIdle.WaitAsync(Patience);
        Assert.Equal("none\n", md.Attributes.Read("block/md0/md/sync_completed"));
        Assert.Equal("none\n", md.Attributes.Read("block/md0/md/sync_speed"));
        Assert.Equal("1\n", md.Attributes.Read("block/md0/md/degraded"));
        Assert.Equal("faulty\n", md.Attributes.Read("block/md0/md/dev-b/state"));

        // The first region was copied, but the pass stopped before its end: every bit stays, b
        // is owed all 16 regions. No range is held: writes (one on the region copied) go on.
        Assert.Equal(16, mirror.DirtyRegions());
        Assert.Equal(0, mirror.ResyncedRegions);
        await md.WriteAsync(0, Stamp(0, 2)).AsTask().WaitAsync(Patience);
        await md.WriteAsync(Region, Stamp(1, 2)).AsTask().WaitAsync(Patience);

        await md.Attributes.WriteAsync("block/md0/md/dev-b/state", "re-add");
        Assert.Equal("recover\n", md.Attributes.Read("block/md0/md/sync_action"));
        await PumpUntilIdle(clock, mirror);
        Assert.Equal("in_sync\n", md.Attributes.Read("block/md0/md/dev-b/state"));
        Assert.Equal("0\n", md.Attributes.Read("block/md0/md/degraded"));
        Assert.Equal(16, mirror.ResyncedRegions);
        Assert.Equal(Stamp(0, 2), await ReadRaw(b, 0, Block));
        Assert.Equal(Stamp(15, 1), await ReadRaw(b, 15 * Region, Block));
        await AssertLegsEqual(mirror);

        await md.Attributes.WriteAsync("block/md0/md/sync_action", "check\n");
        await PumpUntilIdle(clock, mirror);
        Assert.Equal("0\n", md.Attributes.Read("block/md0/md/mismatch_cnt"));
    }

    [Fact]
    public async Task A_recovery_of_two_legs_goes_on_for_the_one_left_when_the_other_fails_and_the_failed_one_is_copied_whole_on_return()
    {
        // md interrupts the recovery on any failure and starts it again for the spares left; here
        // the pass goes on for them. The failed leg was being copied whole: the checkpoints of
        // the pass give up its bitmap record (With_a_leg_faulty_a_crash_in_the_middle...), and
        // its re-add copies it whole.
        var (a, _) = Leg("a");
        var (b, _) = Leg("b");
        var (c, fc) = Leg("c");
        for (var r = 0; r < 8; r++)
        {
            await a.WriteAsync(MirrorSuperblock.DataOffset + (r * Region), Stamp(r, 1));
        }

        var clock = new ManualTimeProvider();
        var options = Options(assumeClean: false) with { SyncSpeedMinKiB = 64, SyncSpeedMaxKiB = 64, BitmapDaemonInterval = TimeSpan.FromHours(1) };
        var mirror = await MirrorTarget.AssembleAsync("md0", [a, b, c], options, clock);
        var md = Serve(mirror);
        Assert.Equal(MirrorLegState.Rebuilding, mirror.LegState(1));
        Assert.Equal(MirrorLegState.Rebuilding, mirror.LegState(2));
        await AwaitTimer(clock, mirror);
        await mirror.FailLegAsync(2);
        clock.Advance(TimeSpan.FromSeconds(1));
        await AwaitTimer(clock, mirror);
        Assert.Equal("recover", mirror.SyncAction);
        Assert.True(mirror.SyncProgress.Done > MirrorTarget.SyncChunkBytes, $"the pass went on: {mirror.SyncProgress}");

        await PumpUntilIdle(clock, mirror);
        Assert.Equal(MirrorLegState.InSync, mirror.LegState(1));
        Assert.Equal(MirrorLegState.Faulty, mirror.LegState(2));

        var copiedBefore = fc.DataBytesCopied;
        await mirror.ReAddAsync(2);
        Assert.Equal(mirror.Regions, mirror.DirtyRegions());
        await PumpUntilIdle(clock, mirror);
        Assert.Equal(mirror.DataBytes, fc.DataBytesCopied - copiedBefore);
        Assert.All(Enumerable.Range(0, 3), i => Assert.Equal(MirrorLegState.InSync, mirror.LegState(i)));
        Assert.Equal(Stamp(7, 1), await ReadRaw(c, 7 * Region, Block));
        await AssertLegsEqual(mirror);
        await md.Attributes.WriteAsync("block/md0/md/sync_action", "check\n");
        await PumpUntilIdle(clock, mirror);
        Assert.Equal("0\n", md.Attributes.Read("block/md0/md/mismatch_cnt"));
    }

    [Fact]
    public async Task A_check_is_interrupted_by_a_leg_failing_as_md_does_and_a_re_add_then_recovers_the_leg()
    {
        // md_error interrupts a check or repair too, and md does not start it again. Three legs:
        // two are still in sync and could be compared, the check stops all the same.
        var (a, _) = Leg("a");
        var (b, _) = Leg("b");
        var (c, _) = Leg("c");
        var clock = new ManualTimeProvider();
        var options = Options() with { SyncSpeedMinKiB = 64, SyncSpeedMaxKiB = 64, BitmapDaemonInterval = TimeSpan.FromHours(1) };
        var mirror = await MirrorTarget.AssembleAsync("md0", [a, b, c], options, clock);
        var md = Serve(mirror);
        var events = new MirrorEvents(mirror);
        await md.Attributes.WriteAsync("block/md0/md/sync_action", "check\n");
        await AwaitTimer(clock, mirror);
        Assert.Equal("check\n", md.Attributes.Read("block/md0/md/sync_action"));

        await md.Attributes.WriteAsync("block/md0/md/dev-c/state", "faulty");
        await Condition.EventuallyAsync(
            () => md.Attributes.Read("block/md0/md/sync_action") == "idle\n",
            "the check stops when a leg fails",
            () => $"sync_action {md.Attributes.Read("block/md0/md/sync_action").Trim()}");
        await mirror.SyncIdle.WaitAsync(Patience);
        Assert.Equal("none\n", md.Attributes.Read("block/md0/md/sync_completed"));
        
        // It compared its first chunk (one region) and waited for the throttle when c failed.
        Assert.Equal(new MirrorSyncEnded("check", MirrorSyncOutcome.Interrupted, 1, 0), Assert.Single(events.All.OfType<MirrorSyncEnded>()));
        await md.WriteAsync(Region, Stamp(1, 1)).AsTask().WaitAsync(Patience);

        await md.Attributes.WriteAsync("block/md0/md/dev-c/state", "re-add");
        await PumpUntilIdle(clock, mirror);
        Assert.Equal("in_sync\n", md.Attributes.Read("block/md0/md/dev-c/state"));
        Assert.Equal(Stamp(1, 1), await ReadRaw(c, Region, Block));
        await AssertLegsEqual(mirror);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)] // the re-add after the interrupted check has ended: the stop by hand meets the recovery
    public async Task A_re_add_during_a_check_stopped_by_hand_still_rebuilds_the_leg(bool afterTheInterrupt)
    {
        // An outside audit: stopping a check (sync_action idle) after a re-add had asked for a
        // recovery dropped the request, and the leg stayed a spare for good. Since a leg's failure
        // interrupts the check (md_error; a later audit), the re-add meets the check stopping or
        // stopped, and the stop by hand meets the recovery: the leg must still be rebuilt.
        var (a, _) = Leg("a");
        var (b, _) = Leg("b");
        var clock = new ManualTimeProvider();
        var mirror = await MirrorTarget.AssembleAsync("md0", [a, b], Options() with { SyncSpeedMinKiB = 64, SyncSpeedMaxKiB = 64 }, clock);
        var md = Serve(mirror);
        await md.Attributes.WriteAsync("block/md0/md/sync_action", "check\n");
        await AwaitTimer(clock, mirror);
        await md.Attributes.WriteAsync("block/md0/md/dev-b/state", "faulty");
        await md.WriteAsync(3 * Region, Stamp(3, 1));
        if (afterTheInterrupt)
        {
            await Condition.EventuallyAsync(() => md.Attributes.Read("block/md0/md/sync_action") == "idle\n", "the leg's failure interrupts the check");
        }

        await md.Attributes.WriteAsync("block/md0/md/dev-b/state", "re-add");
        Assert.Contains(md.Attributes.Read("block/md0/md/sync_action"), new[] { "check\n", "recover\n", "idle\n" });
        Assert.Equal("spare\n", md.Attributes.Read("block/md0/md/dev-b/state"));

        await md.Attributes.WriteAsync("block/md0/md/sync_action", "idle");
        await PumpUntilIdle(clock, mirror);
        Assert.Equal("in_sync\n", md.Attributes.Read("block/md0/md/dev-b/state"));
        Assert.Equal(0, mirror.Degraded);
        await AssertLegsEqual(mirror);
    }

    [Fact]
    public async Task A_source_read_error_is_retried_and_a_recovery_that_stopped_starts_again_on_re_add_or_recover()
    {
        // An outside audit: one failed read of the source during a recovery left the leg a spare
        // with nothing running, and re-add refused it (EBUSY: rebuilding, not faulty).
        var (a, fa) = Leg("a");
        var (b, _) = Leg("b");
        var mirror = await MirrorTarget.AssembleAsync("md0", [a, b], Options());
        var md = Serve(mirror);
        await mirror.FailLegAsync(1);
        await md.WriteAsync(2 * Region, Stamp(2, 1));

        // A transient error: the chunk is read again.
        fa.FailNextReads(1);
        await mirror.ReAddAsync(1);
        await mirror.SyncIdle.WaitAsync(Patience);
        Assert.Equal(MirrorLegState.InSync, mirror.LegState(1));
        Assert.Equal(1, fa.ReadErrors);

        // A bad sector on the only source: the recovery stops, the leg stays a spare.
        await mirror.FailLegAsync(1);
        await md.WriteAsync(4 * Region, Stamp(4, 1));
        fa.BadRange(MirrorSuperblock.DataOffset + (4 * Region), Block);
        await mirror.ReAddAsync(1);
        await mirror.SyncIdle.WaitAsync(Patience);
        Assert.Equal(MirrorLegState.Rebuilding, mirror.LegState(1));
        Assert.Equal("idle\n", md.Attributes.Read("block/md0/md/sync_action"));

        // Re-add starts it again (it stops again: the sector is still bad).
        await md.Attributes.WriteAsync("block/md0/md/dev-b/state", "re-add");
        await mirror.SyncIdle.WaitAsync(Patience);
        Assert.Equal(MirrorLegState.Rebuilding, mirror.LegState(1));

        // The block is written again (the sector heals, and b gets the write too): recover finishes.
        await md.WriteAsync(4 * Region, Stamp(4, 2));
        Assert.False(fa.HasBadRange);
        await md.Attributes.WriteAsync("block/md0/md/sync_action", "recover");
        await mirror.SyncIdle.WaitAsync(Patience);
        Assert.Equal(MirrorLegState.InSync, mirror.LegState(1));
        await AssertLegsEqual(mirror);
    }

    [Fact]
    public async Task After_a_crash_the_first_leg_failing_during_the_resync_leaves_the_mirror_on_the_others()
    {
        // An outside audit: the resync after a crash made every in-sync leg but the first a
        // spare, so the first leg failing then took the whole mirror offline, and the others could
        // not be assembled again. As md, they stay in sync during the resync.
        var (a, fa) = Leg("a");
        var (b, _) = Leg("b");
        var (c, _) = Leg("c");
        var options = Options() with { BitmapDaemonInterval = TimeSpan.FromHours(1) };
        var first = await MirrorTarget.AssembleAsync("md0", [a, b, c], options);
        var md = Serve(first);
        await md.WriteAsync(2 * Region, Stamp(2, 1));
        await md.WriteAsync(5 * Region, Stamp(5, 1));
        first.Dispose();
        await a.WriteAsync(MirrorSuperblock.DataOffset + (5 * Region), Stamp(5, 2));

        var clock = new ManualTimeProvider();
        var second = await MirrorTarget.AssembleAsync("md0", [a, b, c], options with { SyncSpeedMinKiB = 64, SyncSpeedMaxKiB = 64 }, clock);
        Assert.Equal("resync", second.SyncAction);
        Assert.All(Enumerable.Range(0, 3), i => Assert.Equal(MirrorLegState.InSync, second.LegState(i)));

        fa.Dead = true;
        var md2 = Serve(second, "md1");
        await md2.WriteAsync(7 * Region, Stamp(7, 1));
        Assert.Equal(MirrorLegState.Faulty, second.LegState(0));
        Assert.Equal(1, second.Degraded);
        var buffer = new byte[Block];
        await md2.ReadAsync(2 * Region, buffer);
        Assert.Equal(Stamp(2, 1), buffer);
        await md2.ReadAsync(5 * Region, buffer);
        Assert.Equal(Stamp(5, 1), buffer);

        await PumpUntilIdle(clock, second);
        Assert.Equal("idle", second.SyncAction);
        foreach (var block in new long[] { 2 * Region, 5 * Region, 7 * Region })
        {
            Assert.Equal(await ReadRaw(b, block, Block), await ReadRaw(c, block, Block));
        }
    }

    [Fact]
    public async Task Check_counts_mismatched_sectors_and_the_md_attributes_show_the_state()
    {
        var (a, _) = Leg("a");
        var (b, fb) = Leg("b");
        var mirror = await MirrorTarget.AssembleAsync("md0", [a, b], Options());
        var md = Serve(mirror);
        await md.WriteAsync(0, Stamp(0, 1));

        // Two blocks differ behind the mirror's back.
        await b.WriteAsync(MirrorSuperblock.DataOffset + (5 * Block), Stamp(5, 7));
        await b.WriteAsync(MirrorSuperblock.DataOffset + (300 * Block), Stamp(300, 7));
        await md.Attributes.WriteAsync("block/md0/md/sync_action", "check\n");
        await mirror.SyncIdle.WaitAsync(Patience);
        Assert.Equal($"{2 * Block >> 9}\n", md.Attributes.Read("block/md0/md/mismatch_cnt"));

        Assert.Equal("raid1\n", md.Attributes.Read("block/md0/md/level"));
        Assert.Equal("in_sync\n", md.Attributes.Read("block/md0/md/dev-b/state"));
        await md.Attributes.WriteAsync("block/md0/md/dev-b/state", "faulty");
        Assert.Equal("faulty\n", md.Attributes.Read("block/md0/md/dev-b/state"));
        Assert.Equal("1\n", md.Attributes.Read("block/md0/md/degraded"));
        var last = await Assert.ThrowsAsync<Hardware.Sysfs.AttributeException>(async () => await md.Attributes.WriteAsync("block/md0/md/dev-a/state", "faulty"));
        Assert.Equal(Hardware.Sysfs.AttributeErrno.EBUSY, last.Errno);
        await md.Attributes.WriteAsync("block/md0/md/dev-b/state", "re-add");
        await mirror.SyncIdle.WaitAsync(Patience);
        Assert.Equal("in_sync\n", md.Attributes.Read("block/md0/md/dev-b/state"));
        Assert.Equal(0, fb.ReadErrors);
    }

    [Fact]
    public async Task Repair_writes_the_first_legs_copy_over_every_differing_block_and_a_second_check_finds_none()
    {
        var (a, _) = Leg("a");
        var (b, fb) = Leg("b");
        var mirror = await MirrorTarget.AssembleAsync("md0", [a, b], Options());
        var md = Serve(mirror);
        await md.WriteAsync(0, Stamp(0, 1));
        await md.WriteAsync(7 * Block, Stamp(7, 1));

        // Three blocks differ on b, two of them adjacent (one write for the run), one on a.
        await b.WriteAsync(MirrorSuperblock.DataOffset + (7 * Block), Stamp(7, 9));
        await b.WriteAsync(MirrorSuperblock.DataOffset + (8 * Block), Stamp(8, 9));
        await b.WriteAsync(MirrorSuperblock.DataOffset + (400 * Block), Stamp(400, 9));
        await a.WriteAsync(MirrorSuperblock.DataOffset + (900 * Block), Stamp(900, 9));
        var writesBefore = fb.DataBytesCopied;
        await md.Attributes.WriteAsync("block/md0/md/sync_action", "repair\n");
        await mirror.SyncIdle.WaitAsync(Patience);

        // md counts what it found (and rewrote) in mismatch_cnt; only b was written, 4 blocks' worth.
        Assert.Equal($"{4 * Block >> 9}\n", md.Attributes.Read("block/md0/md/mismatch_cnt"));
        Assert.Equal(4 * Block, fb.DataBytesCopied - writesBefore);
        Assert.Equal(Stamp(7, 1), await ReadRaw(b, 7 * Block, Block));
        Assert.Equal(Stamp(900, 9), await ReadRaw(b, 900 * Block, Block));
        await AssertLegsEqual(mirror);

        await mirror.CheckAsync().WaitAsync(Patience);
        Assert.Equal(0, mirror.MismatchSectors);
        var bad = await Assert.ThrowsAsync<Hardware.Sysfs.AttributeException>(async () => await md.Attributes.WriteAsync("block/md0/md/sync_action", "frobnicate"));
        Assert.Equal(Hardware.Sysfs.AttributeErrno.EINVAL, bad.Errno);
    }

    [Fact]
    public async Task Sync_speed_limits_take_unsigned_decimals_up_to_uint_max_as_md_does_larger_ones_are_ERANGE_and_nothing_else_is_taken()
    {
        // md's min_sync_store / max_sync_store parse with kstrtouint: found from outside, the mirror
        // took 99999999999, " 5" and "5 " (and README promises the queue attributes' rule).
        var (a, _) = Leg("a");
        var (b, _) = Leg("b");
        var mirror = await MirrorTarget.AssembleAsync("md0", [a, b], Options());
        var md = Serve(mirror);
        foreach (var attribute in new[] { "sync_speed_min", "sync_speed_max" })
        {
            var path = $"block/md0/md/{attribute}";
            var before = md.Attributes.Read(path);
            foreach (var bad in new[] { " 5", "5 ", "-5", "+", "++8", "+-8", "+0", "0x10", "0", "abc", "5\n\n", "\n" })
            {
                var error = await Assert.ThrowsAsync<Hardware.Sysfs.AttributeException>(async () => await md.Attributes.WriteAsync(path, bad));
                Assert.Equal(Hardware.Sysfs.AttributeErrno.EINVAL, error.Errno);
                Assert.Equal(before, md.Attributes.Read(path));
            }

            // No bytes at all never reach the store (sysfs_kf_write returns 0): taken, nothing changes.
            await md.Attributes.WriteAsync(path, string.Empty);
            Assert.Equal(before, md.Attributes.Read(path));

            // md returns kstrtouint's own error: a number above UINT_MAX is ERANGE (it was EINVAL,
            // the queue attributes' rule; an outside CLI fuzzing audit), found before what follows it.
            foreach (var large in new[] { "99999999999", "4294967296", "4294967296\n", "18446744073709551616", "99999999999999999999x" })
            {
                var error = await Assert.ThrowsAsync<Hardware.Sysfs.AttributeException>(async () => await md.Attributes.WriteAsync(path, large));
                Assert.Equal(Hardware.Sysfs.AttributeErrno.ERANGE, error.Errno);
                Assert.Equal(before, md.Attributes.Read(path));
            }

            await md.Attributes.WriteAsync(path, "4294967295\n");
            Assert.Equal("4294967295 (local)\n", md.Attributes.Read(path));
            await md.Attributes.WriteAsync(path, "2048");
            Assert.Equal("2048 (local)\n", md.Attributes.Read(path));

            // kstrtouint takes one leading '+'.
            await md.Attributes.WriteAsync(path, "+1024\n");
            Assert.Equal("1024 (local)\n", md.Attributes.Read(path));
        }
    }

    [Fact]
    public async Task Sync_speed_limits_show_local_or_system_as_md_and_system_takes_back_the_default()
    {
        // md's sync_min_show / sync_max_show print "%d (local|system)"; a write starting with
        // "system" (strncmp(buf, "system", 6)) takes back the system's limit. The attributes
        // printed the bare number and refused "system" (EINVAL).
        var (a, _) = Leg("a");
        var (b, _) = Leg("b");
        var mirror = await MirrorTarget.AssembleAsync("md0", [a, b], Options() with { SyncSpeedMinKiB = 3000, SyncSpeedMaxKiB = 90_000 });
        var md = Serve(mirror);
        Assert.Equal("3000 (system)\n", md.Attributes.Read("block/md0/md/sync_speed_min"));
        Assert.Equal("90000 (system)\n", md.Attributes.Read("block/md0/md/sync_speed_max"));

        await md.Attributes.WriteAsync("block/md0/md/sync_speed_min", "5000\n");
        await md.Attributes.WriteAsync("block/md0/md/sync_speed_max", "70000");
        Assert.Equal("5000 (local)\n", md.Attributes.Read("block/md0/md/sync_speed_min"));
        Assert.Equal("70000 (local)\n", md.Attributes.Read("block/md0/md/sync_speed_max"));
        Assert.Equal(5000, mirror.SyncSpeedMinKiB);

        await md.Attributes.WriteAsync("block/md0/md/sync_speed_min", "system\n");
        await md.Attributes.WriteAsync("block/md0/md/sync_speed_max", "systemwide");
        Assert.Equal("3000 (system)\n", md.Attributes.Read("block/md0/md/sync_speed_min"));
        Assert.Equal("90000 (system)\n", md.Attributes.Read("block/md0/md/sync_speed_max"));
        Assert.Equal(3000, mirror.SyncSpeedMinKiB);
        Assert.Equal(90_000, mirror.SyncSpeedMaxKiB);

        // Only the prefix counts, case and all: "System" is no number either.
        var error = await Assert.ThrowsAsync<Hardware.Sysfs.AttributeException>(async () => await md.Attributes.WriteAsync("block/md0/md/sync_speed_min", "System"));
        Assert.Equal(Hardware.Sysfs.AttributeErrno.EINVAL, error.Errno);

        // Set from code, a limit is the mirror's own too.
        mirror.SyncSpeedMaxKiB = 123;
        Assert.Equal("123 (local)\n", md.Attributes.Read("block/md0/md/sync_speed_max"));
    }

    [Fact]
    public async Task A_re_add_with_dirty_regions_tells_the_leg_taken_back_then_the_recovery_starting_and_done_once_each_past_a_throwing_listener()
    {
        // An outside audit: a node's log said nothing when a leg came back or a recovery started
        // or ended (md logs "md: recovery of RAID array md0", "md: md0: recovery done.").
        var (a, _) = Leg("a");
        var (b, fb) = Leg("b");
        var (c, _) = Leg("c");
        var mirror = await MirrorTarget.AssembleAsync("md0", [a, b], Options());
        var md = Serve(mirror);

        // A listener that throws comes first: neither the re-add nor the sync loop notices it.
        mirror.LegTakenBack += _ => throw new InvalidOperationException("a listener's bug");
        mirror.SyncStarted += _ => throw new InvalidOperationException("a listener's bug");
        mirror.SyncEnded += _ => throw new InvalidOperationException("a listener's bug");

        // So for a leg failing in a write's completion: the write ends Ok on the other leg, and
        // the listener after the throwing one hears of it.
        mirror.LegFailed += (_, _, _) => throw new InvalidOperationException("a listener's bug");
        var failures = 0;
        mirror.LegFailed += (_, _, _) => Interlocked.Increment(ref failures);
        var events = new MirrorEvents(mirror);

        fb.Dead = true;
        long[] dirty = [1, 7, 20];
        foreach (var r in dirty)
        {
            await md.WriteAsync(r * Region, Stamp(r, 2));
        }

        Assert.Equal(MirrorLegState.Faulty, mirror.LegState(1));
        Assert.Equal(1, Volatile.Read(ref failures));
        Assert.Empty(events.All);
        fb.Dead = false;
        await mirror.ReAddAsync(1);
        await mirror.SyncIdle.WaitAsync(Patience);

        Assert.Equal(MirrorLegState.InSync, mirror.LegState(1));
        Assert.Collection(
            events.All,
            e => Assert.Equal(new MirrorLegTakenBack("b", MirrorLegReturn.ReAdd, dirty.Length), e),
            e => AssertStarted(e, "recover", ["b"], dirty.Length),
            e => Assert.Equal(new MirrorSyncEnded("recover", MirrorSyncOutcome.Done, dirty.Length, 0), e));

        // A replacement takes the slot owing every region, and its recovery copies them all.
        await mirror.FailLegAsync(1);
        events.All.Clear();
        await mirror.ReplaceLegAsync(1, c).WaitAsync(Patience);
        await mirror.SyncIdle.WaitAsync(Patience);
        Assert.Equal(MirrorLegState.InSync, mirror.LegState(1));
        Assert.Collection(
            events.All,
            e => Assert.Equal(new MirrorLegTakenBack("c", MirrorLegReturn.Replacement, mirror.Regions), e),
            e => AssertStarted(e, "recover", ["c"], mirror.Regions),
            e => Assert.Equal(new MirrorSyncEnded("recover", MirrorSyncOutcome.Done, mirror.Regions, 0), e));
    }

    [Fact]
    public async Task A_check_tells_its_start_on_every_leg_and_its_end_with_the_mismatched_sectors()
    {
        var (a, _) = Leg("a");
        var (b, _) = Leg("b");
        var mirror = await MirrorTarget.AssembleAsync("md0", [a, b], Options());
        var md = Serve(mirror);
        var events = new MirrorEvents(mirror);
        await md.WriteAsync(0, Stamp(0, 1));
        await b.WriteAsync(MirrorSuperblock.DataOffset + (5 * Block), Stamp(5, 7));
        await b.WriteAsync(MirrorSuperblock.DataOffset + (300 * Block), Stamp(300, 7));

        await md.Attributes.WriteAsync("block/md0/md/sync_action", "check\n");
        await mirror.SyncIdle.WaitAsync(Patience);

        Assert.Collection(
            events.All,
            e => AssertStarted(e, "check", ["a", "b"], mirror.Regions),
            e => Assert.Equal(new MirrorSyncEnded("check", MirrorSyncOutcome.Done, mirror.Regions, 2 * Block >> 9), e));
    }

    [Fact]
    public async Task A_sync_that_fails_on_a_bug_is_told_goes_idle_and_still_owes_its_regions()
    {
        // A sweep for loops that die unobserved: the sync caught only cancellation, so a bug
        // ended it in silence with sync_action still "recover" and nothing running.
        var (a, _) = Leg("a");
        var (b, _) = Leg("b");
        var mirror = await MirrorTarget.AssembleAsync("md0", [a, b], Options());
        var md = Serve(mirror);
        var events = new MirrorEvents(mirror);
        var faults = new System.Collections.Concurrent.ConcurrentQueue<(string Task, Exception Error)>();
        mirror.BackgroundFaulted += (task, error) => faults.Enqueue((task, error));
        await md.Attributes.WriteAsync("block/md0/md/dev-b/state", "faulty");
        await md.WriteAsync(3 * Region, Stamp(3, 1));

        var bug = new InvalidOperationException("a bug of the sync");
        mirror.BeforeSyncPass = () => throw bug;
        await md.Attributes.WriteAsync("block/md0/md/dev-b/state", "re-add");
        await mirror.SyncIdle.WaitAsync(Patience);

        Assert.Equal(("sync", (Exception)bug), Assert.Single(faults));
        Assert.Equal("idle\n", md.Attributes.Read("block/md0/md/sync_action"));
        Assert.Equal(MirrorLegState.Rebuilding, mirror.LegState(1));
        Assert.Equal(1, mirror.DirtyRegions());
        Assert.Contains(new MirrorSyncEnded("recover", MirrorSyncOutcome.Stopped, 0, 0), events.All);

        // What it owed is copied once the sync starts again.
        mirror.BeforeSyncPass = null;
        await md.Attributes.WriteAsync("block/md0/md/sync_action", "recover");
        await mirror.SyncIdle.WaitAsync(Patience);
        Assert.Equal(MirrorLegState.InSync, mirror.LegState(1));
        var raw = new byte[Block];
        await b.ReadAsync(MirrorSuperblock.DataOffset + (3 * Region), raw);
        Assert.Equal(Stamp(3, 1), raw);
    }

    [Fact]
    public async Task A_recovery_whose_leg_fails_mid_pass_ends_interrupted_with_the_regions_it_finished()
    {
        var (a, _) = Leg("a");
        var (b, _) = Leg("b");
        var clock = new ManualTimeProvider();
        var options = Options() with { SyncSpeedMinKiB = 64, SyncSpeedMaxKiB = 64, BitmapDaemonInterval = TimeSpan.FromHours(1) };
        var mirror = await MirrorTarget.AssembleAsync("md0", [a, b], options, clock);
        var md = Serve(mirror);
        var events = new MirrorEvents(mirror);
        await md.Attributes.WriteAsync("block/md0/md/dev-b/state", "faulty");
        for (var r = 0; r < 4; r++)
        {
            await md.WriteAsync(r * Region, Stamp(r, 1));
        }

        await md.Attributes.WriteAsync("block/md0/md/dev-b/state", "re-add");

        // Two regions copied (a second each at 64 KiB/s), then b fails in the throttle's wait of the third.
        while (mirror.SyncProgress.Done < (2 * Region) + MirrorTarget.SyncChunkBytes)
        {
            await AwaitTimer(clock, mirror);
            clock.Advance(TimeSpan.FromSeconds(1));
        }

        await AwaitTimer(clock, mirror);
        Assert.Same(events.All.OfType<MirrorSyncStarted>().Single(), mirror.CurrentSync);
        await md.Attributes.WriteAsync("block/md0/md/dev-b/state", "faulty");
        await mirror.SyncIdle.WaitAsync(Patience);

        Assert.Null(mirror.CurrentSync);
        Assert.Collection(
            events.All,
            e => Assert.Equal(new MirrorLegTakenBack("b", MirrorLegReturn.ReAdd, 4), e),
            e => AssertStarted(e, "recover", ["b"], 4),
            e => Assert.Equal(new MirrorSyncEnded("recover", MirrorSyncOutcome.Interrupted, 2, 0), e));
        Assert.Equal("faulty\n", md.Attributes.Read("block/md0/md/dev-b/state"));
    }

    [Fact]
    public async Task A_check_stopped_by_hand_ends_stopped_with_the_regions_it_compared()
    {
        var (a, _) = Leg("a");
        var (b, _) = Leg("b");
        var clock = new ManualTimeProvider();
        var mirror = await MirrorTarget.AssembleAsync("md0", [a, b], Options() with { SyncSpeedMinKiB = 64, SyncSpeedMaxKiB = 64, BitmapDaemonInterval = TimeSpan.FromHours(1) }, clock);
        var md = Serve(mirror);
        var events = new MirrorEvents(mirror);
        await md.Attributes.WriteAsync("block/md0/md/sync_action", "check\n");
        await AwaitTimer(clock, mirror);
        clock.Advance(TimeSpan.FromSeconds(1));
        await AwaitTimer(clock, mirror);

        await md.Attributes.WriteAsync("block/md0/md/sync_action", "idle");
        await mirror.SyncIdle.WaitAsync(Patience);

        Assert.Collection(
            events.All,
            e => AssertStarted(e, "check", ["a", "b"], mirror.Regions),
            e => Assert.Equal(new MirrorSyncEnded("check", MirrorSyncOutcome.Stopped, 2, 0), e));
    }

    // md keeps a recovery's progress (recovery_offset) at checkpoints; here the bitmap does: every
    // 1/16 of the mirror the regions copied are flushed on every leg, their bits cleared on the
    // in-sync legs and a new generation written, the rebuilding leg recorded at it. A crash then
    // costs only the regions since the last checkpoint. Before, a recovery with no write during
    // it left every bit set on the legs, and the restart copied every region again.
    [Fact]
    public async Task A_crash_in_the_middle_of_a_recovery_resumes_from_its_last_checkpoint()
    {
        var (a, _) = Leg("a");
        var (b, fb) = Leg("b");
        for (var r = 0; r < (LegBytes - MirrorSuperblock.DataOffset) / Region; r++)
        {
            await a.WriteAsync(MirrorSuperblock.DataOffset + (r * Region), Stamp(r, 1));
        }

        var clock = new ManualTimeProvider();
        var slow = Options(assumeClean: false) with { SyncSpeedMinKiB = 64, SyncSpeedMaxKiB = 64, BitmapDaemonInterval = TimeSpan.FromHours(1) };
        var first = await MirrorTarget.AssembleAsync("md0", [a, b], slow, clock);
        Assert.Equal(MirrorLegState.Rebuilding, first.LegState(1));
        while (first.SyncProgress.Done < 20 * Region)
        {
            await AwaitTimer(clock, first);
            clock.Advance(TimeSpan.FromSeconds(1));
        }

        await AwaitTimer(clock, first);
        var owed = first.DirtyRegions();
        Assert.InRange(owed, first.Regions - 20, first.Regions - 15);

        // The node dies: no clean stop.
        first.Dispose();
        await first.SyncIdle.WaitAsync(Patience);

        // The restart's recovery waits on a clock of its own, so the bitmap read is seen before it
        // checkpoints anything.
        var copiedBefore = fb.DataBytesCopied;
        var clock2 = new ManualTimeProvider();
        var second = await MirrorTarget.AssembleAsync("md0", [a, b], slow, clock2);
        Assert.Equal(MirrorLegState.Rebuilding, second.LegState(1));
        Assert.Equal(owed, second.DirtyRegions());
        await PumpUntilIdle(clock2, second);
        Assert.Equal(MirrorLegState.InSync, second.LegState(1));
        Assert.Equal(owed, second.ResyncedRegions);
        Assert.Equal(owed * Region, fb.DataBytesCopied - copiedBefore);
        await AssertLegsEqual(second);
    }

    // A new leg that drops out during its first copy keeps what was checkpointed; writes while it
    // is out set their bits, below the checkpoint too, and its re-add copies those and the regions
    // not yet copied, nothing more. Before, its failure set again every bit cleared since the last
    // flush (none, with no write during the copy), and it started over.
    [Fact]
    public async Task A_new_leg_that_drops_out_during_its_first_copy_resumes_and_gets_the_writes_made_while_it_was_out()
    {
        var (a, _) = Leg("a");
        var (b, _) = Leg("b");
        var (c, fc) = Leg("c");
        var clock = new ManualTimeProvider();
        var slow = Options() with { SyncSpeedMinKiB = 64, SyncSpeedMaxKiB = 64, BitmapDaemonInterval = TimeSpan.FromHours(1) };
        var mirror = await MirrorTarget.AssembleAsync("md0", [a, b], slow, clock);
        var md = Serve(mirror);
        for (var r = 0; r < 8; r++)
        {
            await md.WriteAsync(r * Region, Stamp(r, 1));
        }

        await mirror.FailLegAsync(1);
        await mirror.ReplaceLegAsync(1, c);
        while (mirror.SyncProgress.Done < 13 * Region)
        {
            await AwaitTimer(clock, mirror);
            clock.Advance(TimeSpan.FromSeconds(1));
        }

        // c is gone: the recovery's next copy fails on it (not its next checkpoint, after the
        // 15th region: a leg failing that is copied whole, as above).
        await AwaitTimer(clock, mirror);
        fc.Dead = true;
        await PumpUntilIdle(clock, mirror);
        Assert.Equal(MirrorLegState.Faulty, mirror.LegState(1));
        await md.WriteAsync(2 * Region, Stamp(2, 2));
        await md.WriteAsync(40 * Region, Stamp(40, 1));
        var owed = mirror.DirtyRegions();
        Assert.InRange(owed, mirror.Regions - 13, mirror.Regions - 8);

        fc.Dead = false;
        var copiedBefore = fc.DataBytesCopied;
        await mirror.ReAddAsync(1);
        await PumpUntilIdle(clock, mirror);
        Assert.Equal(MirrorLegState.InSync, mirror.LegState(1));
        Assert.Equal(owed * Region, fc.DataBytesCopied - copiedBefore);
        Assert.Equal(Stamp(2, 2), await ReadRaw(c, 2 * Region, Block));
        Assert.Equal(Stamp(40, 1), await ReadRaw(c, 40 * Region, Block));
        Assert.Equal(Stamp(7, 1), await ReadRaw(c, 7 * Region, Block));
        await AssertLegsEqual(mirror);
    }

    // With a leg faulty the bitmap is also the record of every region that leg missed, so a
    // checkpoint cleared nothing and a crash copied the rebuilding leg whole again (md checkpoints
    // degraded arrays too: its recovery_offset is per device). A recovery that copies a leg whole
    // owes the faulty leg every region anyway: its record is given up (copied whole when it
    // returns, its slot's last generation raised) and the recovery checkpoints as without it.
    [Fact]
    public async Task With_a_leg_faulty_a_crash_in_the_middle_of_a_replaced_legs_recovery_resumes_from_its_last_checkpoint()
    {
        var (a, _) = Leg("a");
        var (b, _) = Leg("b");
        var (c, fc) = Leg("c");
        var (d, fd) = Leg("d");
        var clock = new ManualTimeProvider();
        var slow = Options() with { SyncSpeedMinKiB = 64, SyncSpeedMaxKiB = 64, BitmapDaemonInterval = TimeSpan.FromHours(1) };
        var first = await MirrorTarget.AssembleAsync("md0", [a, b, c], slow, clock);
        var md = Serve(first);
        for (var r = 0; r < 8; r++)
        {
            await md.WriteAsync(r * Region, Stamp(r, 1));
        }

        // c's device is gone (unreadable at the restart too); b is replaced by a new device, d.
        fc.Dead = true;
        await first.FailLegAsync(2);
        await first.FailLegAsync(1);
        await first.ReplaceLegAsync(1, d);
        while (first.SyncProgress.Done < 20 * Region)
        {
            await AwaitTimer(clock, first);
            clock.Advance(TimeSpan.FromSeconds(1));
        }

        // A write below the checkpoints while c is out sets its bit again (d gets it at once).
        await AwaitTimer(clock, first);
        await md.WriteAsync(2 * Region, Stamp(2, 2));
        var owed = first.DirtyRegions();
        Assert.InRange(owed, first.Regions - 20, first.Regions - 14);

        // The node dies: no clean stop.
        first.Dispose();
        await first.SyncIdle.WaitAsync(Patience);

        var copiedBefore = fd.DataBytesCopied;
        var clock2 = new ManualTimeProvider();
        var second = await MirrorTarget.AssembleAsync("md0", [a, d, c], slow, clock2);
        Assert.Equal(MirrorLegState.Faulty, second.LegState(2));
        Assert.Equal(MirrorLegState.Rebuilding, second.LegState(1));
        Assert.Equal(owed, second.DirtyRegions());
        await PumpUntilIdle(clock2, second);
        Assert.Equal(MirrorLegState.InSync, second.LegState(1));
        Assert.Equal(owed, second.ResyncedRegions);
        Assert.Equal(owed * Region, fd.DataBytesCopied - copiedBefore);
        Assert.Equal(Stamp(2, 2), await ReadRaw(d, 2 * Region, Block));

        // c comes back: copied whole (its superblock is older than its slot's raised generation),
        // with the write it missed in a region the checkpoints had cleared.
        fc.Dead = false;
        var cBefore = fc.DataBytesCopied;
        await second.ReAddAsync(2);
        await PumpUntilIdle(clock2, second);
        Assert.Equal(MirrorLegState.InSync, second.LegState(2));
        Assert.Equal(second.DataBytes, fc.DataBytesCopied - cBefore);
        Assert.Equal(Stamp(2, 2), await ReadRaw(c, 2 * Region, Block));
        Assert.Equal(Stamp(7, 1), await ReadRaw(c, 7 * Region, Block));
        await AssertLegsEqual(second);
    }

    // A recovery from the bitmap with another leg faulty cannot clear bits as the returning leg
    // catches up: the bitmap is also the faulty leg's record of what it missed. Before, it took no
    // checkpoint, and a stop or a crash in its middle copied every region again. As md's per-device
    // recovery_offset, the superblocks now record the region below which the returning leg is in
    // step (after a flush of every leg); the restart starts its copy there, the bits stay set for
    // the faulty leg, and a write below the offset during the recovery reaches the returning leg.
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task With_a_leg_faulty_a_recovery_from_the_bitmap_stopped_in_its_middle_resumes_from_its_recorded_offset(bool cleanStop)
    {
        var (a, _) = Leg("a");
        var (b, fb) = Leg("b");
        var (c, fc) = Leg("c");
        var clock = new ManualTimeProvider();
        var slow = Options() with { SyncSpeedMinKiB = 64, SyncSpeedMaxKiB = 64, BitmapDaemonInterval = TimeSpan.FromHours(1) };
        var first = await MirrorTarget.AssembleAsync("md0", [a, b, c], slow, clock);
        var md = Serve(first);
        for (var r = 0; r < 8; r++)
        {
            await md.WriteAsync(r * Region, Stamp(r, 1));
        }

        // c's device is gone (unreadable at the restart too); b is out while 40 regions are written.
        fc.Dead = true;
        await first.FailLegAsync(2);
        await first.FailLegAsync(1);
        for (var r = 0; r < 40; r++)
        {
            await md.WriteAsync(r * Region, Stamp(r, 2));
        }

        Assert.Equal(40, first.DirtyRegions());
        await first.ReAddAsync(1);
        while (first.SyncProgress.Done < 20 * Region)
        {
            await AwaitTimer(clock, first);
            clock.Advance(TimeSpan.FromSeconds(1));
        }

        // A write below the offset reaches b at once (b is in step there); its bit stays for c.
        await AwaitTimer(clock, first);
        await md.WriteAsync(5 * Region, Stamp(5, 3));
        Assert.Equal(Stamp(5, 3), await ReadRaw(b, 5 * Region, Block));
        while (first.SyncProgress.Done < 26 * Region)
        {
            await AwaitTimer(clock, first);
            clock.Advance(TimeSpan.FromSeconds(1));
        }

        await AwaitTimer(clock, first);
        await md.WriteAsync(60 * Region, Stamp(60, 1));
        Assert.Equal(41, first.DirtyRegions());

        // Stopped cleanly, or the node dies.
        if (cleanStop)
        {
            await first.StopAsync();
        }

        first.Dispose();
        await first.SyncIdle.WaitAsync(Patience);

        // The in-sync leg records b rebuilding, in step below its offset (raised again after the
        // write below it).
        var onA = MirrorSuperblock.TryDecode(await ReadRaw(a, -MirrorSuperblock.DataOffset, MirrorSuperblock.SuperblockBytes))!;
        Assert.Equal(MirrorLegState.Rebuilding, onA.States[1]);
        var offset = (int)(onA.RecoveryOffset[1] / Region);
        Assert.Equal(offset * Region, onA.RecoveryOffset[1]);
        Assert.InRange(offset, 20, 27);

        var copiedBefore = fb.DataBytesCopied;
        var clock2 = new ManualTimeProvider();
        var second = await MirrorTarget.AssembleAsync("md0", [a, b, c], slow, clock2);
        Assert.Equal(MirrorLegState.Faulty, second.LegState(2));
        Assert.Equal(MirrorLegState.Rebuilding, second.LegState(1));
        Assert.Equal(41, second.DirtyRegions());
        await PumpUntilIdle(clock2, second);
        Assert.Equal(MirrorLegState.InSync, second.LegState(1));
        Assert.InRange(second.ResyncedRegions, 41 - 27, 41 - 20);
        Assert.Equal(40 - offset + 1, second.ResyncedRegions);
        Assert.Equal((40 - offset + 1) * Region, fb.DataBytesCopied - copiedBefore);
        Assert.Equal(41, second.DirtyRegions());
        Assert.Equal(Stamp(5, 3), await ReadRaw(b, 5 * Region, Block));
        Assert.Equal(Stamp(39, 2), await ReadRaw(b, 39 * Region, Block));
        Assert.Equal(Stamp(60, 1), await ReadRaw(b, 60 * Region, Block));

        // c comes back and is copied from the bitmap: every region it missed, below b's offset too.
        fc.Dead = false;
        var cBefore = fc.DataBytesCopied;
        await second.ReAddAsync(2);
        await PumpUntilIdle(clock2, second);
        Assert.Equal(MirrorLegState.InSync, second.LegState(2));
        Assert.Equal(41 * Region, fc.DataBytesCopied - cBefore);
        Assert.Equal(Stamp(5, 3), await ReadRaw(c, 5 * Region, Block));
        Assert.Equal(Stamp(2, 2), await ReadRaw(c, 2 * Region, Block));
        await AssertLegsEqual(second);
    }

    // The offset says the returning leg holds every region below it, so a write there that reached
    // the in-sync leg but not the returning one when the mirror crashed would never be copied to
    // it: a write below the offset lowers it on the superblocks before it goes to any leg, and the
    // restart copies from there.
    [Fact]
    public async Task With_a_leg_faulty_a_write_below_the_recovery_offset_in_flight_at_a_crash_is_copied_again_at_the_restart()
    {
        var (a, fa) = Leg("a");
        var (b, fb) = Leg("b");
        var (c, fc) = Leg("c");
        var clock = new ManualTimeProvider();
        var slow = Options() with { SyncSpeedMinKiB = 64, SyncSpeedMaxKiB = 64, BitmapDaemonInterval = TimeSpan.FromHours(1) };
        var first = await MirrorTarget.AssembleAsync("md0", [a, b, c], slow, clock);
        var md = Serve(first);
        fc.Dead = true;
        await first.FailLegAsync(2);
        await first.FailLegAsync(1);
        for (var r = 0; r < 40; r++)
        {
            await md.WriteAsync(r * Region, Stamp(r, 2));
        }

        await first.ReAddAsync(1);
        while (first.SyncProgress.Done < 20 * Region)
        {
            await AwaitTimer(clock, first);
            clock.Advance(TimeSpan.FromSeconds(1));
        }

        await AwaitTimer(clock, first);
        var onA = MirrorSuperblock.TryDecode(await ReadRaw(a, -MirrorSuperblock.DataOffset, MirrorSuperblock.SuperblockBytes))!;
        Assert.InRange(onA.RecoveryOffset[1], 15 * Region, 21 * Region);

        // A write below the offset, held on its way to b.
        var release = new TaskCompletionSource<BlockStatus>(TaskCreationOptions.RunContinuationsAsynchronously);
        var arrived = fb.HoldWrite(MirrorSuperblock.DataOffset + (3 * Region), Block, release.Task);
        var write = md.WriteAsync(3 * Region, Stamp(3, 3)).AsTask();
        await arrived.WaitAsync(Patience);
        onA = MirrorSuperblock.TryDecode(await ReadRaw(a, -MirrorSuperblock.DataOffset, MirrorSuperblock.SuperblockBytes))!;
        Assert.Equal(3 * Region, onA.RecoveryOffset[1]);

        // The node dies with the write on a and not on b: nothing more of this mirror reaches the legs.
        first.Dispose();
        fa.Dead = true;
        fb.Dead = true;
        release.SetResult(BlockStatus.Offline);
        Assert.NotNull(await Record.ExceptionAsync(() => write.WaitAsync(Patience)));
        await first.SyncIdle.WaitAsync(Patience);
        fa.Dead = false;
        fb.Dead = false;
        await a.WriteAsync(MirrorSuperblock.DataOffset + (3 * Region), Stamp(3, 3));

        var clock2 = new ManualTimeProvider();
        var second = await MirrorTarget.AssembleAsync("md0", [a, b, c], slow, clock2);
        Assert.Equal(MirrorLegState.Rebuilding, second.LegState(1));
        await PumpUntilIdle(clock2, second);
        Assert.Equal(MirrorLegState.InSync, second.LegState(1));
        Assert.Equal(Stamp(3, 3), await ReadRaw(b, 3 * Region, Block));
        Assert.Equal(40 - 3, second.ResyncedRegions);

        fc.Dead = false;
        await second.ReAddAsync(2);
        await PumpUntilIdle(clock2, second);
        Assert.Equal(MirrorLegState.InSync, second.LegState(2));
        await AssertLegsEqual(second);
    }

    // A leg's offset is its own: with the faulty leg back at the restart, one pass copies it every
    // region its bitmap record holds and the returning leg only the regions from its offset on.
    [Fact]
    public async Task With_a_leg_faulty_a_recovery_resumed_from_its_offset_copies_the_faulty_leg_back_at_the_restart_from_the_first_region()
    {
        var (a, _) = Leg("a");
        var (b, fb) = Leg("b");
        var (c, fc) = Leg("c");
        var clock = new ManualTimeProvider();
        var slow = Options() with { SyncSpeedMinKiB = 64, SyncSpeedMaxKiB = 64, BitmapDaemonInterval = TimeSpan.FromHours(1) };
        var first = await MirrorTarget.AssembleAsync("md0", [a, b, c], slow, clock);
        var md = Serve(first);
        fc.Dead = true;
        await first.FailLegAsync(2);
        await first.FailLegAsync(1);
        for (var r = 0; r < 40; r++)
        {
            await md.WriteAsync(r * Region, Stamp(r, 2));
        }

        await first.ReAddAsync(1);
        while (first.SyncProgress.Done < 20 * Region)
        {
            await AwaitTimer(clock, first);
            clock.Advance(TimeSpan.FromSeconds(1));
        }

        await AwaitTimer(clock, first);
        first.Dispose();
        await first.SyncIdle.WaitAsync(Patience);
        var offset = (int)(MirrorSuperblock.TryDecode(await ReadRaw(a, -MirrorSuperblock.DataOffset, MirrorSuperblock.SuperblockBytes))!.RecoveryOffset[1] / Region);
        Assert.InRange(offset, 15, 21);

        // c's device is back: both legs rebuild from the bitmap in one pass.
        fc.Dead = false;
        var bBefore = fb.DataBytesCopied;
        var cBefore = fc.DataBytesCopied;
        var clock2 = new ManualTimeProvider();
        var second = await MirrorTarget.AssembleAsync("md0", [a, b, c], slow, clock2);
        Assert.Equal(MirrorLegState.Rebuilding, second.LegState(1));
        Assert.Equal(MirrorLegState.Rebuilding, second.LegState(2));
        await PumpUntilIdle(clock2, second);
        Assert.Equal(MirrorLegState.InSync, second.LegState(1));
        Assert.Equal(MirrorLegState.InSync, second.LegState(2));
        Assert.Equal((40 - offset) * Region, fb.DataBytesCopied - bBefore);
        Assert.Equal(40 * Region, fc.DataBytesCopied - cBefore);
        Assert.Equal(40, second.ResyncedRegions);
        Assert.Equal(0, second.DirtyRegions());
        await AssertLegsEqual(second);
    }

    // Resuming trusts the bitmap only for the leg that took every checkpoint: an older copy of a
    // rebuilding leg (its device restored from a snapshot taken mid-recovery) holds a generation
    // older than the last checkpoint, misses the regions copied since, and is copied whole.
    [Fact]
    public async Task An_older_copy_of_a_rebuilding_leg_put_back_before_a_restart_is_copied_whole()
    {
        var (a, _) = Leg("a");
        var (b, _) = Leg("b");
        for (var r = 0; r < (LegBytes - MirrorSuperblock.DataOffset) / Region; r++)
        {
            await a.WriteAsync(MirrorSuperblock.DataOffset + (r * Region), Stamp(r, 1));
        }

        var clock = new ManualTimeProvider();
        var slow = Options(assumeClean: false) with { SyncSpeedMinKiB = 64, SyncSpeedMaxKiB = 64, BitmapDaemonInterval = TimeSpan.FromHours(1) };
        var first = await MirrorTarget.AssembleAsync("md0", [a, b], slow, clock);
        while (first.SyncProgress.Done < 8 * Region)
        {
            await AwaitTimer(clock, first);
            clock.Advance(TimeSpan.FromSeconds(1));
        }

        await AwaitTimer(clock, first);
        var snapshot = new byte[LegBytes];
        await b.ReadAsync(0, snapshot);
        while (first.SyncProgress.Done < 20 * Region)
        {
            await AwaitTimer(clock, first);
            clock.Advance(TimeSpan.FromSeconds(1));
        }

        await AwaitTimer(clock, first);
        first.Dispose();
        await first.SyncIdle.WaitAsync(Patience);
        await b.WriteAsync(0, snapshot);

        var second = await MirrorTarget.AssembleAsync("md0", [a, b], Options(assumeClean: false));
        await second.SyncIdle.WaitAsync(Patience);
        Assert.Equal(MirrorLegState.InSync, second.LegState(1));
        Assert.Equal(second.Regions, second.ResyncedRegions);
        await AssertLegsEqual(second);
    }

    // md's raid1_run owes no resync when one disk works (recovery_cp = MaxSector): a crash in the
    // middle of a leg's recovery, with one leg in sync, is a recovery again. Before, it read
    // "resync" with nothing to make equal.
    [Fact]
    public async Task After_a_crash_during_a_recovery_with_one_leg_in_sync_sync_action_reads_recover_as_md_does()
    {
        var (a, _) = Leg("a");
        var (b, _) = Leg("b");
        var options = Options() with { SyncSpeedMinKiB = 64, SyncSpeedMaxKiB = 64, BitmapDaemonInterval = TimeSpan.FromHours(1) };
        var clock = new ManualTimeProvider();
        var first = await MirrorTarget.AssembleAsync("md0", [a, b], options, clock);
        var md = Serve(first);
        await first.FailLegAsync(1);
        for (var r = 0; r < 4; r++)
        {
            await md.WriteAsync(r * Region, Stamp(r, 1));
        }

        await first.ReAddAsync(1);
        await AwaitTimer(clock, first);
        Assert.Equal("recover", first.SyncAction);

        // The node dies in the middle of the recovery: no clean stop, bits set.
        first.Dispose();
        await first.SyncIdle.WaitAsync(Patience);

        var clock2 = new ManualTimeProvider();
        var second = await MirrorTarget.AssembleAsync("md0", [a, b], options, clock2);
        Assert.Equal(MirrorLegState.Rebuilding, second.LegState(1));
        Assert.Equal("recover", second.SyncAction);
        await AwaitTimer(clock2, second);
        Assert.Equal("recover", second.CurrentSync?.Action);
        await PumpUntilIdle(clock2, second);
        Assert.Equal(MirrorLegState.InSync, second.LegState(1));
        await AssertLegsEqual(second);
    }

    // With two legs in sync and one rebuilding after a crash both are owed: md (since "md: ensure
    // resync is prioritized over recovery") runs the resync first, reading "resync", then the
    // recovery, reading "recover". Before, one pass did both and read "resync" to its end.
    [Fact]
    public async Task After_a_crash_with_a_leg_to_rebuild_the_resync_runs_first_as_its_own_pass_then_the_recovery()
    {
        var (a, _) = Leg("a");
        var (b, _) = Leg("b");
        var (c, _) = Leg("c");
        var options = Options() with { BitmapDaemonInterval = TimeSpan.FromHours(1) };
        var first = await MirrorTarget.AssembleAsync("md0", [a, b, c], options);
        var md = Serve(first);
        await first.FailLegAsync(2);
        await md.WriteAsync(1 * Region, Stamp(1, 1));
        await md.WriteAsync(3 * Region, Stamp(3, 1));
        first.Dispose();
        await a.WriteAsync(MirrorSuperblock.DataOffset + (3 * Region), Stamp(3, 2));

        var clock = new ManualTimeProvider();
        var second = await MirrorTarget.AssembleAsync("md0", [a, b, c], options with { SyncSpeedMinKiB = 64, SyncSpeedMaxKiB = 64 }, clock);
        var events = new MirrorEvents(second);
        Assert.Equal("resync", second.SyncAction);
        await AwaitTimer(clock, second);
        AssertStarted(second.CurrentSync!, "resync", ["b"], 2);
        await PumpUntilIdle(clock, second);

        // The resync's start may come before the subscription (it is CurrentSync then).
        Assert.Collection(
            events.All.SkipWhile(e => e is MirrorSyncStarted { Action: "resync" }),
            e => Assert.Equal(new MirrorSyncEnded("resync", MirrorSyncOutcome.Done, 2, 0), e),
            e => AssertStarted(e, "recover", ["c"], 2),
            e => Assert.Equal(new MirrorSyncEnded("recover", MirrorSyncOutcome.Done, 2, 0), e));
        Assert.Equal(0, second.Degraded);
        Assert.Equal(Stamp(3, 2), await ReadRaw(c, 3 * Region, Block));
        await AssertLegsEqual(second);
    }

    // md's action_store: "frozen" stops the sync running and starts none (a leg to rebuild waits,
    // the mirror degraded) until "idle", "recover", "resync", "check" or "repair" clears it; reading
    // shows "frozen" first; while a sync runs "recover", "resync", "check" and "repair" are EBUSY.
    // Writes still reach every leg and the bitmap still records them. Before, "frozen" was EINVAL.
    [Fact]
    public async Task Frozen_stops_a_recovery_and_holds_every_sync_until_idle_and_writes_meanwhile_are_copied_after()
    {
        var (a, _) = Leg("a");
        var (b, _) = Leg("b");
        var clock = new ManualTimeProvider();
        var options = Options() with { SyncSpeedMinKiB = 64, SyncSpeedMaxKiB = 64, BitmapDaemonInterval = TimeSpan.FromHours(1) };
        var mirror = await MirrorTarget.AssembleAsync("md0", [a, b], options, clock);
        var md = Serve(mirror);
        var events = new MirrorEvents(mirror);
        const string action = "block/md0/md/sync_action";
        await md.Attributes.WriteAsync("block/md0/md/dev-b/state", "faulty");
        for (var r = 0; r < 6; r++)
        {
            await md.WriteAsync(r * Region, Stamp(r, 1));
        }

        await md.Attributes.WriteAsync("block/md0/md/dev-b/state", "re-add");
        await AwaitTimer(clock, mirror);
        clock.Advance(TimeSpan.FromSeconds(1));
        await AwaitTimer(clock, mirror);
        Assert.Equal("recover\n", md.Attributes.Read(action));
        foreach (var busy in new[] { "recover", "resync", "check", "repair" })
        {
            var error = await Assert.ThrowsAsync<Hardware.Sysfs.AttributeException>(async () => await md.Attributes.WriteAsync(action, busy));
            Assert.Equal(Hardware.Sysfs.AttributeErrno.EBUSY, error.Errno);
        }

        // Frozen: the write returns once the recovery has stopped, with what it finished.
        await md.Attributes.WriteAsync(action, "frozen\n");
        Assert.True(mirror.SyncIdle.IsCompleted);
        Assert.Equal("frozen\n", md.Attributes.Read(action));
        Assert.Equal("none\n", md.Attributes.Read("block/md0/md/sync_completed"));
        Assert.Equal(MirrorLegState.Rebuilding, mirror.LegState(1));
        Assert.Equal(1, mirror.Degraded);
        var ended = Assert.IsType<MirrorSyncEnded>(events.All.Last());
        Assert.Equal(("recover", MirrorSyncOutcome.Stopped), (ended.Action, ended.Outcome));
        var owed = mirror.DirtyRegions();
        Assert.InRange(owed, 1, 6);

        // Held: writes reach both legs and the bitmap; time passes and nothing starts, nor does a
        // re-add of the spare, a check (degraded: EBUSY, still frozen) or "frozen" again.
        await md.WriteAsync(7 * Region, Stamp(7, 1));
        Assert.Equal(Stamp(7, 1), await ReadRaw(b, 7 * Region, Block));
        Assert.Equal(owed + 1, mirror.DirtyRegions());
        clock.Advance(TimeSpan.FromSeconds(30));
        await md.Attributes.WriteAsync("block/md0/md/dev-b/state", "re-add");
        var check = await Assert.ThrowsAsync<Hardware.Sysfs.AttributeException>(async () => await md.Attributes.WriteAsync(action, "check"));
        Assert.Equal(Hardware.Sysfs.AttributeErrno.EBUSY, check.Errno);
        await md.Attributes.WriteAsync(action, "frozen");
        Assert.True(mirror.SyncIdle.IsCompleted);
        Assert.Null(mirror.CurrentSync);
        Assert.Equal("frozen\n", md.Attributes.Read(action));
        Assert.Equal(owed + 1, mirror.DirtyRegions());

        // Idle clears it: the recovery goes on with what is owed, the write made while frozen too.
        await md.Attributes.WriteAsync(action, "idle");
        Assert.Equal("recover\n", md.Attributes.Read(action));
        await PumpUntilIdle(clock, mirror);
        Assert.Equal(MirrorLegState.InSync, mirror.LegState(1));
        Assert.Equal("idle\n", md.Attributes.Read(action));
        Assert.Equal(Stamp(5, 1), await ReadRaw(b, 5 * Region, Block));
        await AssertLegsEqual(mirror);
    }

    // md's cmd_match takes the word with at most one trailing newline: the text was trimmed, so
    // " idle", "idle\n\n" and "faulty\t" were taken (an outside CLI fuzzing audit).
    [Fact]
    public async Task Sync_action_and_leg_state_take_the_word_and_one_newline_as_md_cmd_match_does()
    {
        var (a, _) = Leg("a");
        var (b, _) = Leg("b");
        var clock = new ManualTimeProvider();
        var mirror = await MirrorTarget.AssembleAsync("md0", [a, b], Options() with { BitmapDaemonInterval = TimeSpan.FromHours(1) }, clock);
        var md = Serve(mirror);
        const string action = "block/md0/md/sync_action";
        const string state = "block/md0/md/dev-b/state";
        var actionWas = md.Attributes.Read(action);
        var stateWas = md.Attributes.Read(state);

        foreach (var word in new[] { " idle", "idle\n\n", "idle ", "\tfrozen", "frozen\r\n" })
        {
            var refused = await Assert.ThrowsAsync<Hardware.Sysfs.AttributeException>(async () => await md.Attributes.WriteAsync(action, word));
            Assert.Equal(Hardware.Sysfs.AttributeErrno.EINVAL, refused.Errno);
        }

        Assert.Equal(actionWas, md.Attributes.Read(action));
        foreach (var word in new[] { " faulty", "faulty\n\n", "faulty\t" })
        {
            var refused = await Assert.ThrowsAsync<Hardware.Sysfs.AttributeException>(async () => await md.Attributes.WriteAsync(state, word));
            Assert.Equal(Hardware.Sysfs.AttributeErrno.EINVAL, refused.Errno);
        }

        Assert.Equal(stateWas, md.Attributes.Read(state));
        await md.Attributes.WriteAsync(action, "frozen\n");
        Assert.Equal("frozen\n", md.Attributes.Read(action));
        await md.Attributes.WriteAsync(action, "idle\n");
        Assert.NotEqual("frozen\n", md.Attributes.Read(action));
        await md.Attributes.WriteAsync(state, "faulty\n");
        Assert.Equal("faulty\n", md.Attributes.Read(state));
    }

    [Fact]
    public async Task Frozen_stops_a_check_and_recover_or_check_written_after_clears_it()
    {
        var (a, _) = Leg("a");
        var (b, _) = Leg("b");
        var clock = new ManualTimeProvider();
        var options = Options() with { SyncSpeedMinKiB = 64, SyncSpeedMaxKiB = 64, BitmapDaemonInterval = TimeSpan.FromHours(1) };
        var mirror = await MirrorTarget.AssembleAsync("md0", [a, b], options, clock);
        var md = Serve(mirror);
        var events = new MirrorEvents(mirror);
        const string action = "block/md0/md/sync_action";

        // Frozen with nothing running: a leg re-added meanwhile waits, "recover" clears it.
        await md.Attributes.WriteAsync(action, "frozen");
        Assert.Equal("frozen\n", md.Attributes.Read(action));
        await md.Attributes.WriteAsync("block/md0/md/dev-b/state", "faulty");
        await md.WriteAsync(2 * Region, Stamp(2, 1));
        await md.Attributes.WriteAsync("block/md0/md/dev-b/state", "re-add");
        Assert.True(mirror.SyncIdle.IsCompleted);
        Assert.Equal(MirrorLegState.Rebuilding, mirror.LegState(1));
        Assert.Equal("frozen\n", md.Attributes.Read(action));
        await md.Attributes.WriteAsync(action, "recover");
        await PumpUntilIdle(clock, mirror);
        Assert.Equal(MirrorLegState.InSync, mirror.LegState(1));
        Assert.Equal(Stamp(2, 1), await ReadRaw(b, 2 * Region, Block));

        // A check stopped by "frozen" ends stopped; "check" clears the freeze and runs one.
        await md.Attributes.WriteAsync(action, "check");
        await AwaitTimer(clock, mirror);
        await md.Attributes.WriteAsync(action, "frozen");
        Assert.True(mirror.SyncIdle.IsCompleted);
        Assert.Equal("frozen\n", md.Attributes.Read(action));
        var stopped = Assert.IsType<MirrorSyncEnded>(events.All.Last());
        Assert.Equal(("check", MirrorSyncOutcome.Stopped), (stopped.Action, stopped.Outcome));
        await md.Attributes.WriteAsync(action, "check");
        Assert.Equal("check\n", md.Attributes.Read(action));
        await PumpUntilIdle(clock, mirror);
        Assert.Equal(new MirrorSyncEnded("check", MirrorSyncOutcome.Done, mirror.Regions, 0), events.All.Last());
        Assert.Equal("idle\n", md.Attributes.Read(action));
    }

    private static void AssertStarted(object e, string action, string[] legs, int regions)
    {
        var started = Assert.IsType<MirrorSyncStarted>(e);
        Assert.Equal(action, started.Action);
        Assert.Equal(legs, started.Legs);
        Assert.Equal(regions, started.Regions);
    }

    // Records a mirror's LegTakenBack, SyncStarted and SyncEnded in the order they came.
    private sealed class MirrorEvents
    {
        public MirrorEvents(MirrorTarget mirror)
        {
            mirror.LegTakenBack += e => All.Enqueue(e);
            mirror.SyncStarted += e => All.Enqueue(e);
            mirror.SyncEnded += e => All.Enqueue(e);
        }

        public System.Collections.Concurrent.ConcurrentQueue<object> All { get; } = new();
    }

    // Moves the manual clock a second at a time until the sync has finished.
    private static Task PumpUntilIdle(ManualTimeProvider clock, MirrorTarget mirror) => MirrorSync.PumpUntilIdleAsync(clock, mirror, Patience);

    // Waits until the sync sleeps on the manual clock beside the bitmap daemon, or has finished.
    private static Task AwaitTimer(ManualTimeProvider clock, MirrorTarget mirror) => MirrorSync.AwaitTimerAsync(clock, mirror, Patience);

    private static async Task WriteSuperblock(IBlockDevice leg, MirrorTarget mirror, int role, long generation, MirrorLegState[] states)
    {
        var block = new byte[MirrorSuperblock.SuperblockBytes];
        new MirrorSuperblock
        {
            ArrayId = mirror.ArrayId,
            Role = role,
            Legs = 2,
            Generation = generation,
            DataBytes = mirror.DataBytes,
            RegionBytes = mirror.RegionBytes,
            States = [.. states, MirrorLegState.None],
            LastInSync = new long[3],
        }.Encode(block);
        await leg.WriteAsync(0, block, RequestFlags.Fua);
    }
}
