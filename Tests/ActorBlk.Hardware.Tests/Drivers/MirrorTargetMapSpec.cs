using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers;
using ActorBlk.Hardware.Drivers.Stacking;
using ActorBlk.Hardware.Requests;
using ActorBlk.Testing;
using Xunit;

namespace ActorBlk.Hardware.Tests.Drivers;

/// <summary>
/// The mirror's allocation map (what NBD block status reports): the holes of an in-sync leg, in
/// the mirror's own offsets (the legs' metadata before the data area never shows); never a leg
/// being rebuilt, whose holes are not the mirror's; after a crash, until the resync ends, only the
/// leg reads come from. Each leg is a <see cref="FaultyLeg"/> over a memory-backed device (4 KiB
/// pages) that shows its map, or hides it as a remote leg does. Before, a mirror answered one data
/// extent for any range.
/// </summary>
public sealed class MirrorTargetMapSpec : IAsyncLifetime
{
    private const int Block = 4096;
    private const long LegBytes = 4L << 20;
    private const long Region = 64 << 10;
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(60);

    private readonly MirrorDevices _devices = new(LegBytes);

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync() => await _devices.DisposeAsync();

    [Fact]
    public async Task An_in_sync_legs_holes_are_the_mirrors_in_its_own_offsets_and_follow_writes_and_discards()
    {
        var (a, _) = Leg("a", showsMap: true);
        var (b, _) = Leg("b", showsMap: true);
        var mirror = await MirrorTarget.AssembleAsync("md0", [a, b], Options());
        var md = Serve(mirror);
        var end = mirror.DataBytes;

        // Blank data: one hole, although each leg's first 64 KiB (superblock, bitmap) is written.
        Assert.Equal([(0L, end, false)], Map(mirror, 0, end));

        await md.WriteAsync(2 * Block, Filled(2 * Block));
        await md.WriteAsync(3 * Region, Filled(Block));
        Assert.Equal(
            [(0L, 2L * Block, false), (2L * Block, 2L * Block, true), (4L * Block, (3 * Region) - (4 * Block), false), (3 * Region, Block, true), ((3 * Region) + Block, end - (3 * Region) - Block, false)],
            Map(mirror, 0, end));

        // A discard reaches every leg: a hole again. A range starting inside data starts there.
        await md.DiscardAsync(2 * Block, Block);
        Assert.Equal([(3L * Block, Block, true), (4L * Block, Region - (4 * Block), false)], Map(mirror, 3 * Block, Region - (3 * Block)));
        Assert.Throws<ArgumentOutOfRangeException>(() => mirror.TryGetExtent(end, Block, out _, out _));
        Assert.Throws<ArgumentOutOfRangeException>(() => mirror.TryGetExtent(0, end + Block, out _, out _));
        Assert.Throws<ArgumentOutOfRangeException>(() => mirror.TryGetExtent(0, 0, out _, out _));
    }

    [Fact]
    public async Task The_first_in_sync_leg_that_keeps_a_map_answers_and_a_mirror_whose_legs_keep_none_cannot_tell()
    {
        var (a, fa) = Leg("a", showsMap: false);
        var (b, fb) = Leg("b", showsMap: true);
        var mirror = await MirrorTarget.AssembleAsync("md0", [a, b], Options());
        var md = Serve(mirror);
        await md.WriteAsync(Region, Filled(Block));

        // a (a remote leg) cannot tell; b (a file leg) can.
        Assert.Equal([(0L, Region, false), (Region, Block, true), (Region + Block, Region - Block, false)], Map(mirror, 0, 2 * Region));

        // b faulty: a alone is in sync and cannot tell, so the range is data.
        fb.Dead = true;
        await md.WriteAsync(Region + Block, Filled(Block));
        Assert.Equal(MirrorLegState.Faulty, mirror.LegState(1));
        Assert.False(mirror.TryGetExtent(0, 2 * Region, out _, out _));

        // a shows its map: it answers, with the write b missed.
        fa.ShowsMap = true;
        Assert.Equal([(0L, Region, false), (Region, 2L * Block, true), (Region + (2 * Block), Region - (2 * Block), false)], Map(mirror, 0, 2 * Region));

        // Every leg gone: nothing can tell.
        fa.Dead = true;
        await Assert.ThrowsAsync<BlockIoException>(async () => await md.WriteAsync(0, Filled(Block)).AsTask().WaitAsync(Patience));
        Assert.True(mirror.IsFailed);
        Assert.False(mirror.TryGetExtent(0, 2 * Region, out _, out _));
    }

    // A blank replacement holds holes where the mirror holds data until its recovery has copied
    // them: asked, it would make a client (nbdcopy, qemu-img convert) skip data and copy zeroes.
    // It takes the first slot here, so it would be asked first.
    [Fact]
    public async Task A_leg_being_rebuilt_is_never_asked_and_answers_once_its_recovery_has_ended()
    {
        var (a, fa) = Leg("a", showsMap: true);
        var (b, fb) = Leg("b", showsMap: true);
        var (c, _) = Leg("c", showsMap: true);
        var clock = new ManualTimeProvider();
        var mirror = await MirrorTarget.AssembleAsync("md0", [a, b], Options() with { SyncSpeedMinKiB = 64, SyncSpeedMaxKiB = 64 }, clock);
        var md = Serve(mirror);
        await md.WriteAsync(5 * Region, Filled(Block));
        fa.Dead = true;
        await md.WriteAsync(6 * Region, Filled(Block));
        Assert.Equal(MirrorLegState.Faulty, mirror.LegState(0));

        await mirror.ReplaceLegAsync(0, c).WaitAsync(Patience);
        Assert.Equal(MirrorLegState.Rebuilding, mirror.LegState(0));
        var expected = new List<(long, long, bool)>
        {
            (0L, 5 * Region, false), (5 * Region, Block, true), ((5 * Region) + Block, Region - Block, false), (6 * Region, Block, true), ((6 * Region) + Block, (2 * Region) - Block, false),
        };
        Assert.Equal(expected, Map(mirror, 0, 8 * Region));

        // b alone could tell, and hides its map: nothing can tell until c is in sync.
        fb.ShowsMap = false;
        Assert.False(mirror.TryGetExtent(0, 8 * Region, out _, out _));

        // The recovery zeroed the chunks b's map shows as holes and copied the two with data
        // whole, and c answers so.
        fb.ShowsMap = true;
        await PumpUntilIdle(clock, mirror);
        Assert.Equal(MirrorLegState.InSync, mirror.LegState(0));
        fb.ShowsMap = false;
        Assert.Equal([(0L, 5 * Region, false), (5 * Region, 2 * Region, true), (7 * Region, Region, false)], Map(mirror, 0, 8 * Region));
    }

    // A recovery copies a chunk that its source's map shows as one hole by zeroing the target
    // (a write-zeroes that may unmap, as qemu's mirror job uses block status), without reading it;
    // a chunk read from a source that cannot tell (a remote leg) and found all zeroes is zeroed the
    // same way (as qemu-img convert detects zeroes). Either way a rebuilt leg keeps its source's
    // holes of a chunk or more (the chunk with data is copied whole), where md (and this mirror
    // before) wrote every byte.
    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task A_recovery_zeroes_what_its_source_shows_as_holes_or_reads_as_zeroes_and_copies_the_rest(bool sourceShowsMap)
    {
        var (a, fa) = Leg("a", showsMap: sourceShowsMap);
        var (b, fb) = Leg("b", showsMap: true);
        var clock = new ManualTimeProvider();
        var mirror = await MirrorTarget.AssembleAsync("md0", [a, b], Options(assumeClean: false) with { SyncSpeedMinKiB = 1024, SyncSpeedMaxKiB = 1024 }, clock);
        var md = Serve(mirror);
        Assert.Equal(MirrorLegState.Rebuilding, mirror.LegState(1));
        var data = Filled(Block);
        await a.WriteAsync(MirrorSuperblock.DataOffset + (9 * Region) + Block, data);
        await fb.Inner.WriteAsync(MirrorSuperblock.DataOffset + (20 * Region), Filled(2 * Block)); // stale bytes the copy must clear
        var readsBefore = Interlocked.Read(ref fa.Reads);

        await PumpUntilIdle(clock, mirror);
        Assert.Equal(mirror.Regions, mirror.ResyncedRegions);
        Assert.Equal(MirrorLegState.InSync, mirror.LegState(1));
        var chunks = mirror.DataBytes / MirrorTarget.SyncChunkBytes;
        Assert.Equal(MirrorTarget.SyncChunkBytes, fb.DataBytesWritten);
        Assert.Equal(chunks - 1, fb.WriteZeroes);

        // The source was read for the chunk with data only, or (cannot tell) for every chunk not
        // copied before the clock was first moved.
        var reads = Interlocked.Read(ref fa.Reads) - readsBefore;
        if (sourceShowsMap)
        {
            Assert.Equal(1, reads);
        }
        else
        {
            Assert.InRange(reads, chunks - 2, chunks);
        }

        var read = new byte[2 * Block];
        await b.ReadAsync(MirrorSuperblock.DataOffset + (20 * Region), read);
        Assert.All(read, x => Assert.Equal(0, x));
        await b.ReadAsync(MirrorSuperblock.DataOffset + (9 * Region) + Block, read.AsMemory(0, Block));
        Assert.Equal(data, read[..Block]);

        // b, the rebuilt leg, answers once a hides its map: sparse but for the one chunk copied.
        fa.ShowsMap = false;
        Assert.Equal([(0L, 9 * Region, false), (9 * Region, Region, true), (10 * Region, mirror.DataBytes - (10 * Region), false)], Map(mirror, 0, mirror.DataBytes));
        Assert.Equal(0, md.Queue.Usage.Count);
    }

    // A target that refuses the write-zeroes (NotSupported) gets the chunk's zeroes written and
    // is rebuilt; one that fails it (an I/O error) is faulty, as for a failed copy write.
    [Theory]
    [InlineData(BlockStatus.NotSupported)]
    [InlineData(BlockStatus.IoError)]
    public async Task A_target_that_refuses_the_zeroes_gets_them_written_and_one_that_fails_them_is_faulty(BlockStatus refusal)
    {
        var (a, _) = Leg("a", showsMap: true);
        var (b, fb) = Leg("b", showsMap: true);

        // Before the assembly: the recovery starts in it, and its first chunk (a hole) goes at once.
        fb.WriteZeroesStatus = refusal;
        var clock = new ManualTimeProvider();
        var mirror = await MirrorTarget.AssembleAsync("md0", [a, b], Options(assumeClean: false) with { SyncSpeedMinKiB = 1024, SyncSpeedMaxKiB = 1024 }, clock);
        var md = Serve(mirror);
        await a.WriteAsync(MirrorSuperblock.DataOffset + (9 * Region), Filled(Block));
        await fb.Inner.WriteAsync(MirrorSuperblock.DataOffset + (20 * Region), Filled(2 * Block)); // stale bytes the copy must clear

        await PumpUntilIdle(clock, mirror);
        if (refusal == BlockStatus.NotSupported)
        {
            Assert.Equal(MirrorLegState.InSync, mirror.LegState(1));
            Assert.Equal(mirror.DataBytes, fb.DataBytesWritten);
            var read = new byte[2 * Block];
            await b.ReadAsync(MirrorSuperblock.DataOffset + (20 * Region), read);
            Assert.All(read, x => Assert.Equal(0, x));
        }
        else
        {
            Assert.Equal(MirrorLegState.Faulty, mirror.LegState(1));
            Assert.Equal(1, mirror.Degraded);
            Assert.True(mirror.DirtyRegions() > 0);
        }

        Assert.Equal(0, md.Queue.Usage.Count);
    }

    // After a crash the resync zeroes, on the other in-sync legs, the chunks the first leg's map
    // shows as holes: a leg that held a write the first missed reads zeroes there afterwards.
    [Fact]
    public async Task After_a_crash_the_resync_zeroes_the_other_legs_where_the_first_shows_a_hole()
    {
        var (a, _) = Leg("a", showsMap: true);
        var (b, fb) = Leg("b", showsMap: true);
        var options = Options() with { BitmapDaemonInterval = TimeSpan.FromHours(1) };
        var first = await MirrorTarget.AssembleAsync("md0", [a, b], options);
        var md = Serve(first);
        await md.WriteZeroesAsync(7 * Region, Region);
        first.Dispose();
        await b.WriteAsync(MirrorSuperblock.DataOffset + (7 * Region), Filled(Block)); // reached b only

        // Counted before the assembly: the resync starts in it, and its first chunk goes at once.
        var zeroes = Interlocked.Read(ref fb.WriteZeroes);
        var clock = new ManualTimeProvider();
        var second = await MirrorTarget.AssembleAsync("md0", [a, b], options with { SyncSpeedMinKiB = 64, SyncSpeedMaxKiB = 64 }, clock);
        Serve(second, "md1");
        Assert.Equal("resync", second.SyncAction);
        await PumpUntilIdle(clock, second);
        Assert.Equal(1, second.ResyncedRegions);
        Assert.Equal(zeroes + 1, fb.WriteZeroes);
        var read = new byte[Block];
        await b.ReadAsync(MirrorSuperblock.DataOffset + (7 * Region), read);
        Assert.All(read, x => Assert.Equal(0, x));
        Assert.Equal([(0L, 8 * Region, false)], Map(second, 0, 8 * Region));
    }

    // After a crash the in-sync legs may differ where writes were in flight, and reads there come
    // from the first in-sync leg until the resync has made them equal (md's choose_first): another
    // leg's hole there is not what a read returns.
    [Fact]
    public async Task After_a_crash_only_the_leg_reads_come_from_is_asked_until_the_resync_ends()
    {
        var (a, fa) = Leg("a", showsMap: false);
        var (b, _) = Leg("b", showsMap: true);
        var options = Options() with { BitmapDaemonInterval = TimeSpan.FromHours(1) };
        var first = await MirrorTarget.AssembleAsync("md0", [a, b], options);
        var md = Serve(first);
        await md.WriteZeroesAsync(7 * Region, Region);
        Assert.Equal(1, first.DirtyRegions());

        // The node dies: a write reached a but not b.
        first.Dispose();
        await a.WriteAsync(MirrorSuperblock.DataOffset + (7 * Region), Filled(Block));

        var clock = new ManualTimeProvider();
        var second = await MirrorTarget.AssembleAsync("md0", [a, b], options with { SyncSpeedMinKiB = 64, SyncSpeedMaxKiB = 64 }, clock);
        Serve(second, "md1");
        Assert.Equal("resync", second.SyncAction);
        Assert.False(second.TryGetExtent(7 * Region, Region, out _, out _));

        // a shows its map: it answers, the leg reads come from.
        fa.ShowsMap = true;
        Assert.Equal([(7 * Region, Block, true), ((7 * Region) + Block, Region - Block, false)], Map(second, 7 * Region, Region));
        fa.ShowsMap = false;

        // The resync copied the region (a cannot tell, so whole): b answers, data.
        await PumpUntilIdle(clock, second);
        Assert.Equal(1, second.ResyncedRegions);
        Assert.Equal([(7 * Region, Region, true)], Map(second, 7 * Region, Region));
    }

    // A custom driver's map that throws cannot tell: the mirror asks the next in-sync leg, and a
    // recovery reads and copies (zeroes detected) instead of faulting. Before, the exception ended
    // the sync (BackgroundFaulted "sync") and the leg stayed spare.
    [Fact]
    public async Task A_legs_map_that_throws_cannot_tell_and_the_recovery_reads_and_copies_instead()
    {
        var (a, fa) = Leg("a", showsMap: true);
        var (b, fb) = Leg("b", showsMap: true);
        fa.MapThrows = true;
        var clock = new ManualTimeProvider();
        var mirror = await MirrorTarget.AssembleAsync("md0", [a, b], Options(assumeClean: false) with { SyncSpeedMinKiB = 1024, SyncSpeedMaxKiB = 1024 }, clock);
        var faults = new List<string>();
        mirror.BackgroundFaulted += (task, _) => faults.Add(task);
        Serve(mirror);
        await a.WriteAsync(MirrorSuperblock.DataOffset + (3 * Region), Filled(Block));

        await PumpUntilIdle(clock, mirror);
        Assert.Empty(faults);
        Assert.Equal(MirrorLegState.InSync, mirror.LegState(1));
        Assert.Equal(MirrorTarget.SyncChunkBytes, fb.DataBytesWritten);

        // a throws, b (in sync now) answers.
        Assert.Equal([(0L, 3 * Region, false), (3 * Region, Region, true), (4 * Region, Region, false)], Map(mirror, 0, 5 * Region));
        fb.MapThrows = true;
        Assert.False(mirror.TryGetExtent(0, 5 * Region, out _, out _));
    }

    // A recovery asks its source whether a chunk is a hole while it holds the chunk's range, which
    // holds user I/O to the chunk. A source that takes the question and never answers (a remote
    // server silent on block status) held both for the NBD client's 30 s (for ever with a map
    // that does not time out); the question is given up after MirrorOptions.SourceMapPatience
    // (real time, as the NBD client's own timeout; 5 s, 100 ms here) and the chunk read and
    // copied instead.
    [Fact]
    public async Task A_source_whose_map_never_answers_is_read_instead_and_user_io_to_the_chunk_goes_on()
    {
        var (a, fa) = Leg("a", showsMap: true);
        var (b, fb) = Leg("b", showsMap: true);
        fa.MapHangs = true;
        var before = Filled(Block);
        await a.WriteAsync(MirrorSuperblock.DataOffset + (3 * Region), before);
        var clock = new ManualTimeProvider();
        var options = Options(assumeClean: false) with { SyncSpeedMinKiB = 1024, SyncSpeedMaxKiB = 1024, SourceMapPatience = TimeSpan.FromMilliseconds(100) };
        var mirror = await MirrorTarget.AssembleAsync("md0", [a, b], options, clock);
        var md = Serve(mirror);
        Assert.Equal(MirrorLegState.Rebuilding, mirror.LegState(1));

        // The first chunk's question is out and unanswered: a user write to the chunk waits.
        await fa.MapHanging.WaitAsync(Patience);
        var user = Filled(2 * Block);
        var write = md.WriteAsync(Block, user).AsTask();
        Assert.False(write.IsCompleted);

        // Only that question stays unanswered; the write goes on once it is given up.
        fa.MapHangs = false;
        await write.WaitAsync(Patience);
        await PumpUntilIdle(clock, mirror);
        Assert.Equal(MirrorLegState.InSync, mirror.LegState(1));
        var chunks = mirror.DataBytes / MirrorTarget.SyncChunkBytes;
        Assert.Equal(chunks, Interlocked.Read(ref fa.MapQuestions));

        // The first chunk was read from a and copied, the rest zeroed or copied by a's map: b holds both writes.
        var read = new byte[2 * Block];
        await b.ReadAsync(MirrorSuperblock.DataOffset + Block, read);
        Assert.Equal(user, read);
        await b.ReadAsync(MirrorSuperblock.DataOffset + (3 * Region), read.AsMemory(0, Block));
        Assert.Equal(before, read[..Block]);
        Assert.Equal(0, md.Queue.Usage.Count);
    }

    // The extents from offset to offset + length, as NBD block status asks them (one question each).
    private static List<(long Offset, long Length, bool Data)> Map(MirrorTarget mirror, long offset, long length)
    {
        var extents = new List<(long Offset, long Length, bool Data)>();
        var end = offset + length;
        while (offset < end)
        {
            Assert.True(mirror.TryGetExtent(offset, end - offset, out var l, out var data));
            Assert.InRange(l, 1, end - offset);
            extents.Add((offset, l, data));
            offset += l;
        }

        return extents;
    }

    private (BlockDevice Device, FaultyLeg Faults) Leg(string name, bool showsMap)
    {
        var (device, faults) = _devices.Leg(name);
        faults.ShowsMap = showsMap;
        Assert.NotNull(IAllocationMap.Of(faults.Inner));
        return (device, faults);
    }

    private BlockDevice Serve(MirrorTarget target, string name = "md0") => _devices.Serve(target, name);

    private static MirrorOptions Options(bool assumeClean = true) => new() { RegionBytes = Region, AssumeClean = assumeClean };

    private static byte[] Filled(int length)
    {
        var data = new byte[length];
        new Random(length).NextBytes(data);
        return data;
    }

    private static Task PumpUntilIdle(ManualTimeProvider clock, MirrorTarget mirror) => MirrorSync.PumpUntilIdleAsync(clock, mirror, Patience);
}
