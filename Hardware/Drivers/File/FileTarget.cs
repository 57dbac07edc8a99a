using System.Numerics;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Interop;

namespace ActorBlk.Hardware.Drivers.File;

/// <summary>
/// The open backing store of a file device: a regular file or a block device, opened with open(2)
/// (O_DIRECT unless buffered I/O was asked for), with its geometry discovered from the kernel.
/// </summary>
/// <remarks>
/// Geometry: a block device reports its size (BLKGETSIZE64), logical and physical block sizes
/// (BLKSSZGET, BLKPBSZGET); direct-I/O alignment of memory and offsets comes from statx
/// (STATX_DIOALIGN, Linux 6.1+) and falls back to the logical block size. A block device is
/// opened with O_EXCL and a regular file is locked with flock, so a device that is mounted,
/// claimed or served by someone else is refused rather than corrupted.
/// </remarks>
internal sealed unsafe class FileTarget : IDisposable, ISparseFile
{
    /// <summary>Alignment assumed when the kernel does not report STATX_DIOALIGN: safe on every file system.</summary>
    public const int FallbackDirectAlignment = 4096;

    private static readonly Lazy<bool> FileSizeSignalIgnored = new(LibC.IgnoreFileSizeSignal);

    // Held by the allocation questions (lseek, statx) and by Dispose while it takes the
    // descriptor away: a question never reaches a number closed and reused for another file.
    private readonly Lock _closeLock = new();
    private int _fd;
    private int _refusedZeroModes;
    private long _zeroModeRefusals;

    private FileTarget(string device, string path, int fd, bool blockDevice, bool direct, bool readOnly)
    {
        Device = device;
        Path = path;
        _fd = fd;
        IsBlockDevice = blockDevice;
        Direct = direct;
        ReadOnly = readOnly;
    }

    /// <summary>The device name, for errors.</summary>
    public string Device { get; }

    /// <summary>The backing path.</summary>
    public string Path { get; }

    /// <summary>The descriptor.</summary>
    public int Fd => _fd;

    /// <summary>True for a block device, false for a regular file.</summary>
    public bool IsBlockDevice { get; }

    /// <summary>Opened with O_DIRECT.</summary>
    public bool Direct { get; }

    /// <summary>Opened read-only.</summary>
    public bool ReadOnly { get; }

    /// <summary>True when this open created the file.</summary>
    public bool Created { get; private set; }

    /// <summary>The device's capacity in bytes (a whole number of logical blocks).</summary>
    public long CapacityBytes { get; private set; }

    /// <summary>The logical block size the device advertises: the requested one, raised to the direct-I/O offset alignment.</summary>
    public int LogicalBlockSize { get; private set; }

    /// <summary>The physical block size (file system block or the device's physical sector).</summary>
    public int PhysicalBlockSize { get; private set; }

    /// <summary>Alignment of memory buffers for direct I/O (1 when buffered).</summary>
    public int MemoryAlignment { get; private set; }

    /// <summary>fallocate calls of a write-zeroes (either engine) that the file system refused with EOPNOTSUPP.</summary>
    public long ZeroModeRefusals => Interlocked.Read(ref _zeroModeRefusals);

    /// <summary>
    /// Whether the file system refused the write-zeroes fallocate <paramref name="mode"/>
    /// (<c>FALLOC_FL_ZERO_RANGE</c> or <c>FALLOC_FL_PUNCH_HOLE</c>) before: then it is not asked
    /// again, as the kernel's loop driver stops advertising a mode its backing file refused
    /// (<c>loop_clear_limits</c>). A file's file system does not gain a mode while it is open.
    /// </summary>
    public bool ZeroModeRefused(int mode) => (Volatile.Read(ref _refusedZeroModes) & mode) != 0;

    /// <summary>Records that the file system refused the write-zeroes fallocate <paramref name="mode"/> (EOPNOTSUPP).</summary>
    public void RefuseZeroMode(int mode)
    {
        Interlocked.Increment(ref _zeroModeRefusals);
        Interlocked.Or(ref _refusedZeroModes, mode);
    }

    /// <summary>Opens (and when new, creates) the backing store.</summary>
    /// <exception cref="BlockDeviceOpenException">It cannot be opened or cannot back a device.</exception>
    public static FileTarget Open(string device, FileBlockOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);

        // A write past RLIMIT_FSIZE (ulimit -f) raises SIGXFSZ, whose default action kills the
        // process with every request in flight; ignored, the write fails with EFBIG and only that
        // request fails (IoError), as a kernel loop device's would.
        _ = FileSizeSignalIgnored.Value;
        var path = options.Path;
        var statx = default(LibC.Statx);
        var exists = LibC.StatX(LibC.AT_FDCWD, path, 0, LibC.STATX_BASIC_STATS, &statx);
        var created = false;
        int flags = (options.ReadOnly ? LibC.O_RDONLY : LibC.O_RDWR) | LibC.O_CLOEXEC | (options.Direct ? LibC.O_DIRECT : 0);
        if (exists < 0)
        {
            var errno = LibC.LastErrno;
            if (errno != LibC.ENOENT)
            {
                throw OpenError(device, path, errno, "statx");
            }

            if (options.SizeBytes is not > 0)
            {
                throw new BlockDeviceOpenException(device, path, OpenFailure.NotFound, errno, "no such file, and no size was given to create it");
            }

            if (options.ReadOnly)
            {
                throw new BlockDeviceOpenException(device, path, OpenFailure.NotFound, errno, "no such file, and a read-only device cannot create it");
            }

            flags |= LibC.O_CREAT | LibC.O_EXCL;
            created = true;
        }
        else
        {
            var kind = statx.Mode & LibC.S_IFMT;
            if (kind == LibC.S_IFDIR)
            {
                throw new BlockDeviceOpenException(device, path, OpenFailure.NotABlockTarget, LibC.EISDIR, "it is a directory, not a file or a block device");
            }

            if (kind != LibC.S_IFREG && kind != LibC.S_IFBLK)
            {
                throw new BlockDeviceOpenException(device, path, OpenFailure.NotABlockTarget, 0, "it is neither a regular file nor a block device");
            }

            if (kind == LibC.S_IFBLK && !options.ReadOnly)
            {
                flags |= LibC.O_EXCL;
            }
        }

        var fd = LibC.Open(path, flags, 0b110_100_100);
        if (fd < 0)
        {
            throw OpenError(device, path, -fd, options.Direct ? "open with O_DIRECT" : "open");
        }

        var target = new FileTarget(device, path, fd, exists >= 0 && (statx.Mode & LibC.S_IFMT) == LibC.S_IFBLK, options.Direct, options.ReadOnly)
        {
            Created = created,
        };

        try
        {
            target.Lock();
            target.Discover(options);
            return target;
        }
        catch
        {
            target.Dispose();
            if (created)
            {
                LibC.Unlink(path);
            }

            throw;
        }
    }

    /// <summary>
    /// Extends the regular file at <paramref name="path"/> to <paramref name="size"/> bytes when it
    /// is smaller, as fio lays out a job's file that is smaller than its size (filesetup.c): its
    /// bytes are kept and the added range is allocated (fallocate; left sparse where the file
    /// system has none), as <see cref="Open"/> creates a missing file. A file at least that large,
    /// a block device, anything else, or a path that does not exist is left alone (null). The
    /// file is locked (flock) while it grows, so one another device holds is not touched.
    /// </summary>
    /// <returns>The size the file had, or null when it was left alone.</returns>
    /// <exception cref="BlockDeviceOpenException">
    /// It cannot be extended: not writable (permission, a read-only file system), in use, too
    /// little free space for the added range (checked first), or a failed ftruncate or fallocate
    /// (EFBIG past the file system's largest file). The file is then left at its old size.
    /// </exception>
    public static long? Extend(string device, string path, long size)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(size);
        _ = FileSizeSignalIgnored.Value;
        var statx = default(LibC.Statx);
        if (LibC.StatX(LibC.AT_FDCWD, path, 0, LibC.STATX_BASIC_STATS, &statx) < 0)
        {
            var errno = LibC.LastErrno;
            return errno == LibC.ENOENT ? null : throw ExtendError(device, path, errno, (long)statx.Size, size, "statx failed");
        }

        if ((statx.Mode & LibC.S_IFMT) != LibC.S_IFREG || (long)statx.Size >= size)
        {
            return null;
        }

        var fd = LibC.Open(path, LibC.O_WRONLY | LibC.O_CLOEXEC, 0);
        if (fd < 0)
        {
            throw ExtendError(device, path, -fd, (long)statx.Size, size, "open for writing failed");
        }

        try
        {
            if (LibC.Flock(fd, LibC.LOCK_EX | LibC.LOCK_NB) < 0)
            {
                var errno = LibC.LastErrno;
                throw errno == LibC.EWOULDBLOCK
                    ? new BlockDeviceOpenException(device, path, OpenFailure.Busy, errno, "the file is in use by another device or process (it holds a lock on it)")
                    : ExtendError(device, path, errno, (long)statx.Size, size, "flock failed");
            }

            // Its size now that it is ours.
            if (LibC.StatX(fd, string.Empty, LibC.AT_EMPTY_PATH, LibC.STATX_BASIC_STATS, &statx) < 0)
            {
                throw ExtendError(device, path, LibC.LastErrno, (long)statx.Size, size, "statx failed");
            }

            var old = (long)statx.Size;
            if (old >= size)
            {
                return null;
            }

            // Too little room is known before anything changes (fallocate would take what there
            // is first, on some file systems, and give it back only when the file is cut again).
            var vfs = default(LibC.Statvfs);
            if (LibC.FStatVfs(fd, &vfs) == 0 && vfs.FragmentSize > 0 && (ulong)(size - old) / vfs.FragmentSize > vfs.BlocksAvailable)
            {
                throw new BlockDeviceOpenException(device, path, OpenFailure.Other, LibC.ENOSPC,
                    $"cannot extend it from {old} to {size} bytes: the file system has {vfs.BlocksAvailable * vfs.FragmentSize} bytes free, {size - old} are needed");
            }

            if (LibC.FTruncate(fd, size) < 0)
            {
                var errno = LibC.LastErrno;
                throw ExtendError(device, path, errno, old, size, "ftruncate failed");
            }

            if (LibC.FAllocate(fd, 0, old, size - old) < 0)
            {
                var errno = LibC.LastErrno;
                if (errno != LibC.EOPNOTSUPP)
                {
                    // Back to the size it had: the blocks taken past it go with the cut.
                    _ = LibC.FTruncate(fd, old);
                    throw ExtendError(device, path, errno, old, size, "fallocate failed");
                }
            }

            return old;
        }
        finally
        {
            LibC.Close(fd);
        }
    }

    private static BlockDeviceOpenException ExtendError(string device, string path, int errno, long old, long size, string call)
    {
        var cause = errno switch
        {
            LibC.EACCES or LibC.EPERM or LibC.EROFS => OpenFailure.PermissionDenied,
            _ => OpenFailure.Other,
        };
        var text = errno switch
        {
            LibC.EROFS => "the file system is read-only",
            LibC.ENOSPC => "no space left on the file system",
            LibC.EFBIG => "larger than the file system's largest file (or the process's file-size limit)",
            _ => LibC.Describe(errno),
        };
        return new BlockDeviceOpenException(device, path, cause, errno, $"cannot extend it from {old} to {size} bytes: {call}: {text}");
    }

    /// <inheritdoc />
    public long Seek(long offset, int whence)
    {
        lock (_closeLock)
        {
            return _fd < 0 ? -LibC.EBADF : LibC.LSeek(_fd, offset, whence);
        }
    }

    /// <inheritdoc />
    public long CurrentSize()
    {
        var statx = default(LibC.Statx);
        lock (_closeLock)
        {
            if (_fd < 0)
            {
                return -LibC.EBADF;
            }

            if (LibC.StatX(_fd, string.Empty, LibC.AT_EMPTY_PATH, LibC.STATX_BASIC_STATS, &statx) < 0)
            {
                return -LibC.LastErrno;
            }
        }

        return (long)statx.Size;
    }

    /// <inheritdoc />
    public void Dispose()
    {
        int fd;
        lock (_closeLock)
        {
            fd = Interlocked.Exchange(ref _fd, -1);
        }

        if (fd >= 0)
        {
            LibC.Close(fd);
        }
    }

    /// <inheritdoc />
    public override string ToString() => $"{(IsBlockDevice ? "block device" : "file")} {Path}";

    private static BlockDeviceOpenException OpenError(string device, string path, int errno, string call)
    {
        var (cause, text) = errno switch
        {
            LibC.ENOENT => (OpenFailure.NotFound, "no such file or directory"),
            LibC.EACCES or LibC.EPERM => (OpenFailure.PermissionDenied, "permission denied"),
            LibC.EROFS => (OpenFailure.PermissionDenied, "the file system is read-only (use read_only)"),
            LibC.EISDIR => (OpenFailure.NotABlockTarget, "it is a directory"),
            LibC.EBUSY => (OpenFailure.Busy, "the block device is in use (mounted or opened exclusively)"),
            LibC.EINVAL when call.Contains("O_DIRECT", StringComparison.Ordinal) =>
                (OpenFailure.DirectIoNotSupported, "the file system does not support direct I/O (set direct = off for buffered I/O)"),
            _ => (OpenFailure.Other, LibC.Describe(errno)),
        };
        return new BlockDeviceOpenException(device, path, cause, errno, $"{call} failed: {text}");
    }

    // Two devices writing one file corrupt each other: a regular file is locked (flock, per open
    // file description) for as long as the device has it open, exclusively unless read-only.
    // Block devices are kept exclusive by O_EXCL instead.
    private void Lock()
    {
        if (IsBlockDevice)
        {
            return;
        }

        if (LibC.Flock(_fd, (ReadOnly ? LibC.LOCK_SH : LibC.LOCK_EX) | LibC.LOCK_NB) < 0)
        {
            var errno = LibC.LastErrno;
            throw errno == LibC.EWOULDBLOCK
                ? new BlockDeviceOpenException(Device, Path, OpenFailure.Busy, errno, "the file is in use by another device or process (it holds a lock on it)")
                : OpenError(Device, Path, errno, "flock");
        }
    }

    private void Discover(FileBlockOptions options)
    {
        var statx = default(LibC.Statx);
        if (LibC.StatX(_fd, string.Empty, LibC.AT_EMPTY_PATH, LibC.STATX_BASIC_STATS | LibC.STATX_DIOALIGN, &statx) < 0)
        {
            throw OpenError(Device, Path, LibC.LastErrno, "statx");
        }

        var dioReported = (statx.Mask & LibC.STATX_DIOALIGN) != 0;
        if (Direct && dioReported && statx.DioOffsetAlign == 0)
        {
            // The kernel says: this file does not support direct I/O.
            throw new BlockDeviceOpenException(Device, Path, OpenFailure.DirectIoNotSupported, LibC.EINVAL,
                "the file system does not support direct I/O on this file (set direct = off for buffered I/O)");
        }

        long size;
        int logical;
        int physical;
        if (IsBlockDevice)
        {
            ulong bytes = 0;
            int lbs = 0;
            int pbs = 0;
            if (LibC.IoctlPointer(_fd, LibC.BLKGETSIZE64, &bytes) < 0 || LibC.IoctlPointer(_fd, LibC.BLKSSZGET, &lbs) < 0)
            {
                throw OpenError(Device, Path, LibC.LastErrno, "ioctl BLKGETSIZE64/BLKSSZGET");
            }

            if (LibC.IoctlPointer(_fd, LibC.BLKPBSZGET, &pbs) < 0 || pbs < lbs)
            {
                pbs = lbs;
            }

            size = (long)bytes;
            logical = lbs;
            physical = pbs;
        }
        else
        {
            size = (long)statx.Size;
            logical = 512;
            physical = (int)Math.Clamp(statx.BlockSize, 512u, 65536u);
        }

        var offsetAlign = 1;
        MemoryAlignment = 1;
        if (Direct)
        {
            offsetAlign = dioReported ? (int)statx.DioOffsetAlign : Math.Max(logical, IsBlockDevice ? logical : FallbackDirectAlignment);
            MemoryAlignment = dioReported ? (int)Math.Max(statx.DioMemAlign, 1u) : offsetAlign;
        }

        LogicalBlockSize = Math.Max(options.BlockSize, Math.Max(logical, offsetAlign));
        if (!BitOperations.IsPow2(LogicalBlockSize) || LogicalBlockSize > 65536)
        {
            throw new BlockDeviceOpenException(Device, Path, OpenFailure.Other, 0, $"the direct-I/O alignment {offsetAlign} is not a usable block size");
        }

        PhysicalBlockSize = (int)BitOperations.RoundUpToPowerOf2((uint)Math.Max(physical, LogicalBlockSize));

        if (Created)
        {
            Create(options.SizeBytes!.Value);
            size = options.SizeBytes.Value;
        }

        if (options.SizeBytes is { } wanted && !Created)
        {
            if (wanted > size)
            {
                throw new BlockDeviceOpenException(Device, Path, OpenFailure.TooSmall, 0,
                    $"it holds {size} bytes, less than the size asked for ({wanted} bytes)");
            }

            size = wanted;
        }

        if (options.SizeBytes is { } exact && exact % LogicalBlockSize != 0)
        {
            throw new BlockDeviceOpenException(Device, Path, OpenFailure.Misaligned, 0,
                $"the size {exact} is not a whole number of {LogicalBlockSize}-byte blocks");
        }

        // A file whose size is not a whole number of blocks serves its whole blocks only.
        CapacityBytes = size / LogicalBlockSize * LogicalBlockSize;
        if (CapacityBytes == 0)
        {
            throw new BlockDeviceOpenException(Device, Path, OpenFailure.TooSmall, 0,
                $"it holds {size} bytes, less than one {LogicalBlockSize}-byte block");
        }
    }

    private void Create(long size)
    {
        if (LibC.FTruncate(_fd, size) < 0)
        {
            throw OpenError(Device, Path, LibC.LastErrno, $"ftruncate to {size} bytes");
        }

        // Allocate the blocks now, as fio lays out its files: direct writes into holes would
        // allocate on the I/O path. File systems without fallocate keep the sparse file.
        if (LibC.FAllocate(_fd, 0, 0, size) < 0)
        {
            var errno = LibC.LastErrno;
            if (errno != LibC.EOPNOTSUPP)
            {
                throw OpenError(Device, Path, errno, $"fallocate of {size} bytes");
            }
        }
    }
}
