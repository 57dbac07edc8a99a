using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Interop;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;

namespace ActorBlk.Hardware.Drivers.File;

/// <summary>
/// The I/O engine of one hardware queue of a file device: takes started requests from QueueRq,
/// moves their data and completes them. Owns the per-tag <see cref="FileCommand"/>s.
/// </summary>
internal abstract class FileEngine : IDisposable
{
    private readonly FileCommand?[] _commands;

    protected FileEngine(FileTarget target, HardwareContext hctx)
    {
        Target = target;
        Hctx = hctx;
        _commands = new FileCommand?[hctx.Tags.NrTags];
    }

    /// <summary>"io_uring" or "psync", for logs.</summary>
    public abstract string Name { get; }

    /// <summary>Details worth logging at start (setup flags, registered files).</summary>
    public virtual string Details => string.Empty;

    /// <summary>The backing store.</summary>
    public FileTarget Target { get; }

    /// <summary>The hardware queue served.</summary>
    public HardwareContext Hctx { get; }

    /// <summary>
    /// Takes a started request. Returns <see cref="BlockStatus.Ok"/> when accepted (it completes
    /// later), a resource status to have it requeued, or an error status to end it now.
    /// </summary>
    public abstract BlockStatus Queue(Request rq, bool last);

    /// <summary>
    /// Requests this engine took and has not answered yet: the kernel (or the worker thread's
    /// system call) may still read or write their buffers.
    /// </summary>
    public abstract int Outstanding { get; }

    /// <summary>The batch ended (<c>commit_rqs</c>): hand over whatever is prepared.</summary>
    public virtual void Commit()
    {
    }

    /// <inheritdoc />
    public virtual void Dispose()
    {
        foreach (var command in _commands)
        {
            command?.Dispose();
        }
    }

    /// <summary>The command of <paramref name="tag"/>, created on first use.</summary>
    public FileCommand Command(int tag) => _commands[tag] ??= new FileCommand();

    /// <summary>The command of <paramref name="tag"/> if it was ever used.</summary>
    protected FileCommand? CommandOrNull(int tag) => (uint)tag < (uint)_commands.Length ? _commands[tag] : null;

    /// <summary>Ends the command and completes its request with <paramref name="status"/>.</summary>
    public static void Complete(FileCommand command, BlockStatus status)
    {
        var (rq, generation) = command.End(status);
        rq.Complete(status, generation);
    }

    /// <summary>
    /// Runs a started request to its end on the calling thread with plain system calls: the psync
    /// engine's whole job, and the io_uring engine's path for what its ring does not do
    /// (BLKDISCARD and BLKZEROOUT on block devices).
    /// </summary>
    public static unsafe BlockStatus ExecuteSync(FileTarget target, FileCommand command, Request rq)
    {
        var fd = target.Fd;
        switch (rq.Op)
        {
            case BlockOp.Read:
            case BlockOp.Write:
            {
                if ((rq.Flags & RequestFlags.PreFlush) != 0 && FDataSync(fd) is var flushed && flushed != BlockStatus.Ok)
                {
                    return flushed;
                }

                var mapped = command.MapData(rq, target.MemoryAlignment);
                if (mapped != BlockStatus.Ok)
                {
                    return mapped;
                }

                var rwFlags = (rq.Flags & RequestFlags.Fua) != 0 ? LibC.RWF_DSYNC : 0;
                return command.TransferSync(fd, rq.Op, rwFlags);
            }

            case BlockOp.Flush:
                return FDataSync(fd);

            case BlockOp.Discard:
                return target.IsBlockDevice
                    ? RangeIoctl(fd, LibC.BLKDISCARD, rq.Offset, rq.Bytes)
                    : Fallocate(fd, LibC.FALLOC_FL_PUNCH_HOLE | LibC.FALLOC_FL_KEEP_SIZE, rq.Offset, rq.Bytes);

            case BlockOp.WriteZeroes:
                return target.IsBlockDevice
                    ? RangeIoctl(fd, LibC.BLKZEROOUT, rq.Offset, rq.Bytes)
                    : ZeroFileRange(target, rq);

            default:
                return BlockStatus.NotSupported;
        }
    }

    /// <summary>
    /// Zeroes the range of a write-zeroes on a regular file as the kernel's loop driver does
    /// (<c>lo_fallocate</c>): without <see cref="RequestFlags.NoUnmap"/> by punching a hole, which
    /// frees the range's blocks, FALLOC_FL_ZERO_RANGE where the file system cannot punch; with it
    /// (<c>REQ_NOUNMAP</c>), with FALLOC_FL_ZERO_RANGE (which keeps the blocks allocated), or where
    /// the file system has no zero-range (tmpfs) by punching a hole and allocating the range again.
    /// Either way the range reads back as zeroes. Where the file system has neither (ramfs, and
    /// any without fallocate), the zeroes are written from a buffer aligned to the memory
    /// alignment, as the kernel's <c>blkdev_issue_zeroout</c> falls back to writing zero pages;
    /// <see cref="RequestFlags.NoFallback"/> fails with <see cref="BlockStatus.NotSupported"/>
    /// instead. A mode the file system refused once (<see cref="FileTarget.ZeroModeRefused"/>) is
    /// not asked for again: it used to be, one refused system call per write-zeroes (two through
    /// io_uring, whose refused entry was retried here before the other mode).
    /// </summary>
    public static BlockStatus ZeroFileRange(FileTarget target, Request rq)
    {
        var provisioned = (rq.Flags & RequestFlags.NoUnmap) != 0;
        var writeAlignment = (rq.Flags & RequestFlags.NoFallback) != 0 ? 0 : Math.Max(target.MemoryAlignment, 4096);

        // Without NoUnmap, zero range would allocate every block of the range (unwritten, but
        // allocated): a whole-disk write-zeroes (nbdcopy's, qemu-img convert's) filled a sparse file.
        var status = ZeroMode(target, provisioned ? LibC.FALLOC_FL_ZERO_RANGE : LibC.FALLOC_FL_PUNCH_HOLE, rq.Offset, rq.Bytes);
        if (status != BlockStatus.NotSupported)
        {
            return status;
        }

        status = ZeroMode(target, provisioned ? LibC.FALLOC_FL_PUNCH_HOLE : LibC.FALLOC_FL_ZERO_RANGE, rq.Offset, rq.Bytes);
        if (status == BlockStatus.NotSupported && writeAlignment > 0)
        {
            return WriteZeroes(target.Fd, rq.Offset, rq.Bytes, writeAlignment);
        }

        return status == BlockStatus.Ok && provisioned ? Fallocate(target.Fd, LibC.FALLOC_FL_KEEP_SIZE, rq.Offset, rq.Bytes) : status;
    }

    /// <summary>
    /// The fallocate <paramref name="mode"/> of a write-zeroes (with FALLOC_FL_KEEP_SIZE), or
    /// <see cref="BlockStatus.NotSupported"/> without a system call when the file system refused
    /// it before; a refusal is recorded.
    /// </summary>
    private static BlockStatus ZeroMode(FileTarget target, int mode, long offset, long length)
    {
        if (target.ZeroModeRefused(mode))
        {
            return BlockStatus.NotSupported;
        }

        var status = Fallocate(target.Fd, mode | LibC.FALLOC_FL_KEEP_SIZE, offset, length);
        if (status == BlockStatus.NotSupported)
        {
            target.RefuseZeroMode(mode);
        }

        return status;
    }

    /// <summary>The zero-writing fallback of a write-zeroes: pwrite from one zeroed buffer of at most 1 MiB.</summary>
    private static unsafe BlockStatus WriteZeroes(int fd, long offset, long length, int alignment)
    {
        const long Chunk = 1 << 20;
        AlignedBuffer buffer;
        try
        {
            // Zeroed when allocated.
            buffer = new AlignedBuffer((int)Math.Min(length, Chunk), alignment);
        }
        catch (OutOfMemoryException)
        {
            return BlockStatus.Resource;
        }

        using (buffer)
        {
            fixed (byte* zeroes = buffer.GetSpan())
            {
                while (length > 0)
                {
                    var n = LibC.PWrite(fd, zeroes, Math.Min(length, buffer.Length), offset);
                    if (n == -LibC.EINTR)
                    {
                        continue;
                    }

                    if (n < 0)
                    {
                        return BlockStatusExtensions.FromErrno((int)n);
                    }

                    if (n == 0)
                    {
                        return BlockStatus.IoError;
                    }

                    offset += n;
                    length -= n;
                }
            }
        }

        return BlockStatus.Ok;
    }

    private static BlockStatus FDataSync(int fd)
    {
        while (true)
        {
            var result = LibC.Check(LibC.FDataSync(fd));
            if (result != -LibC.EINTR)
            {
                return BlockStatusExtensions.FromErrno(result);
            }
        }
    }

    private static BlockStatus Fallocate(int fd, int mode, long offset, long length)
    {
        while (true)
        {
            var result = LibC.Check(LibC.FAllocate(fd, mode, offset, length));
            if (result != -LibC.EINTR)
            {
                return BlockStatusExtensions.FromErrno(result);
            }
        }
    }

    private static unsafe BlockStatus RangeIoctl(int fd, ulong request, long offset, long length)
    {
        var range = stackalloc ulong[2];
        range[0] = (ulong)offset;
        range[1] = (ulong)length;
        return BlockStatusExtensions.FromErrno(LibC.Check(LibC.IoctlPointer(fd, request, range)));
    }
}
