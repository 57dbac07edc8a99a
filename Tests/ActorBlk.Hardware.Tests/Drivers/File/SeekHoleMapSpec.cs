using ActorBlk.Hardware.Drivers.File;
using ActorBlk.Hardware.Interop;
using Xunit;

namespace ActorBlk.Hardware.Tests.Drivers.File;

/// <summary>
/// The extent walk over SEEK_DATA/SEEK_HOLE (qemu's <c>find_allocation</c>) against a scripted
/// file whose data lies at byte granularity, finer than the device's block: extents end on block
/// boundaries, a block partly data is data, and what the seeks cannot answer (a file cut, a hole
/// dug between the seeks, an error) is "cannot tell", never a hole.
/// </summary>
public sealed class SeekHoleMapSpec
{
    private const int Block = 4096;

    [Fact]
    public void Data_finer_than_a_block_makes_whole_data_blocks_and_only_whole_blocks_of_hole_are_holes()
    {
        // Data at [0, 100), [5000, 6000) (the hole between shares blocks 0 and 1 with data),
        // [16394, 16404); the file is 64 KiB.
        var file = new ScriptedFile(64 << 10, (0, 100), (5000, 6000), (16394, 16404));
        Assert.Equal(
            [(0L, 8192L, true), (8192L, 8192L, false), (16384L, 4096L, true), (20480L, 45056L, false)],
            Walk(file, 0, 64 << 10));
    }

    [Fact]
    public void A_query_that_starts_inside_a_block_gets_that_blocks_state_up_to_the_next_boundary()
    {
        var file = new ScriptedFile(64 << 10, (0, 100), (16394, 16404));

        // Inside the hole [4096, 16384): a hole up to its end.
        Assert.Equal(SeekHoleAnswer.Extent, SeekHoleMap.Find(file, 8202, 64 << 10, Block, out var length, out var allocated));
        Assert.Equal((16384L - 8202, false), (length, allocated));

        // Byte 16384 is zero, but its block holds data: data up to the block's end.
        Assert.Equal(SeekHoleAnswer.Extent, SeekHoleMap.Find(file, 16385, 64 << 10, Block, out length, out allocated));
        Assert.Equal((20480L - 16385, true), (length, allocated));

        // Byte 50 is data: the extent is cut at the end of the range asked about.
        Assert.Equal(SeekHoleAnswer.Extent, SeekHoleMap.Find(file, 50, 60, Block, out length, out allocated));
        Assert.Equal((10L, true), (length, allocated));
    }

    [Fact]
    public void A_run_of_sub_block_holes_is_merged_into_data_a_bounded_number_of_times_and_the_walk_goes_on()
    {
        // 512 bytes of data every 1 KiB for 200 KiB: every block holds data.
        var runs = Enumerable.Range(0, 200).Select(k => ((long)k * 1024, ((long)k * 1024) + 512)).ToArray();
        var file = new ScriptedFile(1 << 20, runs);
        var extents = Walk(file, 0, 1 << 20);

        // The first extent stopped after MaxSteps holes, on a block boundary; the walk made progress
        // and every extent is whole blocks.
        Assert.Equal((0L, (long)SeekHoleMap.MaxSteps * 1024, true), extents[0]);
        Assert.All(extents, e => Assert.Equal(0, (e.Offset | e.Length) % Block));
        Assert.Equal((long)200 * 1024, extents.Where(e => e.Data).Sum(e => e.Length));
        Assert.Equal(((long)200 * 1024, (1L << 20) - (200 * 1024), false), extents[^1]);
    }

    [Fact]
    public void A_trailing_hole_ends_at_the_end_of_the_file_and_past_a_file_cut_short_nothing_is_a_hole()
    {
        // The device is 64 KiB; the file was cut to 10000 bytes behind its back. Reads past 10000
        // fail in the driver, so only the whole blocks before the end of the file are a hole.
        var file = new ScriptedFile(10000, (0, 4096));
        Assert.Equal(SeekHoleAnswer.Extent, SeekHoleMap.Find(file, 4096, 64 << 10, Block, out var length, out var allocated));
        Assert.Equal((4096L, false), (length, allocated));
        Assert.Equal(SeekHoleAnswer.CannotTell, SeekHoleMap.Find(file, 8192, 64 << 10, Block, out _, out _));
        Assert.Equal(SeekHoleAnswer.CannotTell, SeekHoleMap.Find(file, 32768, 64 << 10, Block, out _, out _));
    }

    [Fact]
    public void Data_up_to_a_file_end_inside_a_block_takes_the_whole_block_within_the_range()
    {
        var file = new ScriptedFile(6000, (0, 6000));
        Assert.Equal(SeekHoleAnswer.Extent, SeekHoleMap.Find(file, 0, 8192, Block, out var length, out var allocated));
        Assert.Equal((8192L, true), (length, allocated));
    }

    [Fact]
    public void A_hole_dug_between_the_two_seeks_or_an_error_is_cannot_tell_and_no_seek_support_is_unsupported()
    {
        // SEEK_DATA says data at 0, SEEK_HOLE then says a hole right there (qemu's D1 and H1).
        var dug = new ScriptedFile(64 << 10, (0, 8192)) { HoleOverride = offset => offset };
        Assert.Equal(SeekHoleAnswer.CannotTell, SeekHoleMap.Find(dug, 0, 64 << 10, Block, out _, out _));

        var failing = new ScriptedFile(64 << 10, (0, 8192)) { Error = -LibC.EIO };
        Assert.Equal(SeekHoleAnswer.CannotTell, SeekHoleMap.Find(failing, 0, 64 << 10, Block, out _, out _));

        var unsupported = new ScriptedFile(64 << 10, (0, 8192)) { Error = -LibC.EINVAL };
        Assert.Equal(SeekHoleAnswer.Unsupported, SeekHoleMap.Find(unsupported, 0, 64 << 10, Block, out _, out _));
    }

    private static List<(long Offset, long Length, bool Data)> Walk(ISparseFile file, long from, long end)
    {
        var extents = new List<(long, long, bool)>();
        for (var offset = from; offset < end;)
        {
            Assert.Equal(SeekHoleAnswer.Extent, SeekHoleMap.Find(file, offset, end, Block, out var length, out var data));
            Assert.InRange(length, 1, end - offset);
            extents.Add((offset, length, data));
            offset += length;
        }

        return extents;
    }

    // A file with data at the given byte ranges (sorted, apart) and Linux's lseek answers:
    // SEEK_DATA/SEEK_HOLE past the end fail with ENXIO, the end of the file is a hole.
    private sealed class ScriptedFile(long size, params (long Start, long End)[] data) : ISparseFile
    {
        public Func<long, long>? HoleOverride { get; init; }

        public long Error { get; init; }

        public long CurrentSize() => size;

        public long Seek(long offset, int whence)
        {
            if (Error != 0)
            {
                return Error;
            }

            if (offset >= size)
            {
                return -LibC.ENXIO;
            }

            if (whence == LibC.SEEK_DATA)
            {
                foreach (var (start, end) in data)
                {
                    if (end > offset && start < size)
                    {
                        return Math.Max(start, offset);
                    }
                }

                return -LibC.ENXIO;
            }

            if (HoleOverride is { } hole)
            {
                return hole(offset);
            }

            foreach (var (start, end) in data)
            {
                if (start <= offset && offset < end)
                {
                    return Math.Min(end, size);
                }
            }

            return offset;
        }
    }
}
