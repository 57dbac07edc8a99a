using ActorBlk.Hardware.Interop;

namespace ActorBlk.Hardware.Drivers.File;

/// <summary>A file whose holes <see cref="SeekHoleMap"/> can find: lseek and its current size.</summary>
internal interface ISparseFile
{
    /// <summary><c>lseek(fd, offset, whence)</c>: the offset it lands on, or -errno.</summary>
    long Seek(long offset, int whence);

    /// <summary>The file's size now (it may have been cut since it was opened), or -errno.</summary>
    long CurrentSize();
}

/// <summary>What <see cref="SeekHoleMap.Find"/> learned.</summary>
internal enum SeekHoleAnswer
{
    /// <summary>An extent: its length and whether it holds data.</summary>
    Extent,

    /// <summary>Nothing this time (an error, a file cut or a hole dug while it looked): every byte counts as data.</summary>
    CannotTell,

    /// <summary>The file system has no SEEK_DATA/SEEK_HOLE (EINVAL, EOPNOTSUPP): it never will.</summary>
    Unsupported,
}

/// <summary>
/// The allocation of a regular file from <c>lseek(SEEK_DATA)</c> and <c>lseek(SEEK_HOLE)</c>, as
/// qemu's file-posix (<c>find_allocation</c>, <c>raw_co_block_status</c>) and nbdkit's file plugin
/// find it, in whole blocks: an extent ends on a multiple of the block size (or at the end of the
/// range asked about), and a block that is only partly a hole counts as data, as the NBD protocol
/// asks of <c>base:allocation</c> (descriptor lengths are multiples of the minimum block size).
/// </summary>
/// <remarks>
/// <para>
/// The answer is racy by nature, as qemu's is: a write in flight may fill a hole that was just
/// reported, a discard may dig one. What it reports about a write that completed before the
/// question is exact: Linux counts a range as data once a write to it completed (a direct write
/// into a hole allocates before it completes; a buffered one is dirty in the page cache, which
/// SEEK_DATA sees). A hole dug between the two seeks (SEEK_HOLE lands where SEEK_DATA did) and
/// any error count as "cannot tell", which is data.
/// </para>
/// <para>
/// Past the end of the file: the file device opens a file at least as large as the device, so
/// the whole device lies inside it; a file cut behind the device's back (the lock is advisory)
/// fails reads past its new end (<see cref="Requests.BlockStatus.IoError"/>), so that range is
/// "cannot tell" (data), not a hole that reads as zeroes. A trailing hole inside the file (no
/// data after the offset: ENXIO from SEEK_DATA) is a hole up to the end of the file.
/// </para>
/// </remarks>
internal static class SeekHoleMap
{
    /// <summary>
    /// How many holes shorter than a block (between data in the same or adjacent blocks) one data
    /// extent swallows before it ends where it got to; the next question goes on from there.
    /// </summary>
    internal const int MaxSteps = 64;

    /// <summary>
    /// Describes the extent that starts at <paramref name="offset"/> and ends by
    /// <paramref name="end"/>, looked at in blocks of <paramref name="blockSize"/> bytes: the
    /// block that holds <paramref name="offset"/> decides its state (an unaligned query gets
    /// that block's state for its first, shorter, extent).
    /// </summary>
    /// <param name="file">The file.</param>
    /// <param name="offset">Where the extent starts; below <paramref name="end"/>.</param>
    /// <param name="end">Where the range asked about ends; inside the device.</param>
    /// <param name="blockSize">The device's logical block size, a power of two.</param>
    /// <param name="length">The extent's length, 1 to <paramref name="end"/> - <paramref name="offset"/>, with <see cref="SeekHoleAnswer.Extent"/>.</param>
    /// <param name="allocated">Data (true) or a hole that reads as zeroes (false).</param>
    public static SeekHoleAnswer Find(ISparseFile file, long offset, long end, int blockSize, out long length, out bool allocated)
    {
        ArgumentNullException.ThrowIfNull(file);
        (length, allocated) = (0, true);
        var mask = (long)blockSize - 1;
        var start = offset & ~mask;

        // SEEK_DATA from the block's start: D1 (there: data), D2 (further on: a hole first), D3
        // (ENXIO: a trailing hole, or past the end of a file cut since it was opened), D4 (an
        // error: nothing learned), as qemu's find_allocation names them.
        var data = file.Seek(start, LibC.SEEK_DATA);
        if (data < 0)
        {
            return data == -LibC.ENXIO ? TrailingHole(file, offset, start, end, mask, out length, out allocated) : Failed(data);
        }

        if (data < start)
        {
            return SeekHoleAnswer.CannotTell; // not a valid answer from lseek
        }

        if (data > start)
        {
            var holeEnd = data & ~mask;
            if (holeEnd > start)
            {
                (length, allocated) = (Math.Min(holeEnd, end) - offset, false);
                return SeekHoleAnswer.Extent;
            }

            // The hole ends inside the block: the block holds data.
        }

        var dataEnd = DataEnd(file, data, end, mask);
        if (dataEnd < 0)
        {
            return Failed(dataEnd);
        }

        (length, allocated) = (Math.Min(dataEnd, end) - offset, true);
        return SeekHoleAnswer.Extent;
    }

    // The end of the data that holds `position`, rounded up to a block: through holes shorter than
    // a whole block (they share a block with data), up to MaxSteps of them. Or -errno.
    private static long DataEnd(ISparseFile file, long position, long end, long mask)
    {
        var dataEnd = -1L;
        for (var step = 0; step < MaxSteps; step++)
        {
            // SEEK_HOLE from data: H2 (further on: the hole, or the end of the file, where data
            // ends), H1 (right there: a hole dug since SEEK_DATA), H3/H4 (ENXIO: the file cut
            // since; another error). After the first step, what is known so far stands.
            var hole = file.Seek(position, LibC.SEEK_HOLE);
            if (hole <= position)
            {
                return dataEnd >= 0 ? dataEnd : hole < 0 ? hole : -LibC.EBUSY;
            }

            dataEnd = (hole + mask) & ~mask;
            if (dataEnd >= end)
            {
                return dataEnd;
            }

            // Where the data after this hole starts: a whole block of hole before it ends the
            // extent at dataEnd; data within the block dataEnd starts (or before it) continues it.
            // No data after it (ENXIO), an error or a nonsense answer end it too: the next
            // question starts at dataEnd.
            var next = file.Seek(hole, LibC.SEEK_DATA);
            if (next < hole || (next & ~mask) > dataEnd)
            {
                return dataEnd;
            }

            position = next;
        }

        return dataEnd;
    }

    private static SeekHoleAnswer TrailingHole(ISparseFile file, long offset, long start, long end, long mask, out long length, out bool allocated)
    {
        (length, allocated) = (0, true);

        // No data at or after start: a hole up to the end of the file, which the device normally
        // lies inside. A file cut behind the device's back fails reads past its end: a block that
        // reaches past it is not a hole that reads as zeroes.
        var size = file.CurrentSize();
        if (size < 0)
        {
            return Failed(size);
        }

        var holeEnd = size & ~mask;
        if (holeEnd <= start)
        {
            return SeekHoleAnswer.CannotTell;
        }

        (length, allocated) = (Math.Min(holeEnd, end) - offset, false);
        return SeekHoleAnswer.Extent;
    }

    private static SeekHoleAnswer Failed(long errno) =>
        errno is -LibC.EINVAL or -LibC.EOPNOTSUPP or -LibC.ESPIPE ? SeekHoleAnswer.Unsupported : SeekHoleAnswer.CannotTell;
}
