using System.Runtime.InteropServices;

namespace ActorBlk.Hardware.Interop;

/// <summary>
/// The libc and raw-syscall surface the file driver and the io_uring binding need. Linux only;
/// nothing else is installed: every call is into the C library every Linux system has.
/// </summary>
/// <remarks>
/// Calls return the C convention (-1 and errno); wrappers in this class turn that into a negative
/// errno so callers never touch thread-local error state twice. Flag values that differ between
/// architectures (<c>O_DIRECT</c>) are chosen at run time.
/// </remarks>
internal static unsafe partial class LibC
{
    public const int ENOENT = 2;
    public const int EINTR = 4;
    public const int EIO = 5;
    public const int ENXIO = 6;
    public const int EBADF = 9;
    public const int EAGAIN = 11;
    public const int ENOMEM = 12;
    public const int EACCES = 13;
    public const int EBUSY = 16;
    public const int EEXIST = 17;
    public const int ENOTDIR = 20;
    public const int EISDIR = 21;
    public const int EINVAL = 22;
    public const int EFBIG = 27;
    public const int ENOSPC = 28;
    public const int ESPIPE = 29;
    public const int EROFS = 30;
    public const int ENOSYS = 38;
    public const int EOPNOTSUPP = 95;
    public const int EPERM = 1;
    public const int ETIME = 62;
    public const int ECANCELED = 125;

    public const int O_RDONLY = 0;
    public const int O_WRONLY = 1;
    public const int O_RDWR = 2;
    public const int O_CREAT = 0x40;
    public const int O_CLOEXEC = 0x80000;

    public const int PROT_READ = 1;
    public const int PROT_WRITE = 2;
    public const int PROT_EXEC = 4;
    public const int MAP_SHARED = 1;
    public const int MAP_PRIVATE = 2;
    public const int MAP_ANONYMOUS = 0x20;
    public const int MAP_POPULATE = 0x8000;

    public const int FALLOC_FL_KEEP_SIZE = 0x01;
    public const int FALLOC_FL_PUNCH_HOLE = 0x02;
    public const int FALLOC_FL_ZERO_RANGE = 0x10;

    public const int EFD_CLOEXEC = 0x80000;
    public const int EFD_NONBLOCK = 0x800;

    public const int AT_FDCWD = -100;
    public const int AT_SYMLINK_NOFOLLOW = 0x100;
    public const int AT_EMPTY_PATH = 0x1000;
    public const int O_EXCL = 0x80;
    public const int RWF_DSYNC = 2;
    public const uint STATX_BASIC_STATS = 0x7ff;
    public const uint STATX_DIOALIGN = 0x2000;
    public const int S_IFMT = 0xF000;
    public const int S_IFREG = 0x8000;
    public const int S_IFBLK = 0x6000;
    public const int S_IFDIR = 0x4000;
    public const int S_IFCHR = 0x2000;
    public const int S_IFIFO = 0x1000;
    public const int S_IFSOCK = 0xC000;
    public const int S_IFLNK = 0xA000;

    // <linux/fs.h> block-device ioctls.
    public const ulong BLKGETSIZE64 = 0x80081272;
    public const ulong BLKSSZGET = 0x1268;
    public const ulong BLKPBSZGET = 0x127B;
    public const ulong BLKDISCARD = 0x1277;
    public const ulong BLKZEROOUT = 0x127F;

    // The io_uring syscalls have the same numbers on x86-64 and arm64 (the generic table).
    public const long SYS_io_uring_setup = 425;
    public const long SYS_io_uring_enter = 426;
    public const long SYS_io_uring_register = 427;

    private const string Library = "libc";

    /// <summary><c>O_DIRECT</c>: 040000 on x86, 0200000 on arm and arm64.</summary>
    public static int O_DIRECT => RuntimeInformation.ProcessArchitecture is Architecture.Arm64 or Architecture.Arm ? 0x10000 : 0x4000;

    /// <summary>The errno of the last failed call on this thread, as a positive number.</summary>
    public static int LastErrno => Marshal.GetLastPInvokeError();

    /// <summary>The C library's text for an errno ("No such file or directory").</summary>
    public static string Describe(int errno) => Marshal.GetPInvokeErrorMessage(Math.Abs(errno));

    /// <summary>A file type (<c>st_mode &amp; S_IFMT</c>) in words, for messages: "a regular file".</summary>
    public static string DescribeFileType(int kind) =>
        kind switch
        {
            S_IFREG => "a regular file",
            S_IFDIR => "a directory",
            S_IFLNK => "a symbolic link",
            S_IFIFO => "a FIFO",
            S_IFCHR => "a character device",
            S_IFBLK => "a block device",
            S_IFSOCK => "a socket",
            _ => $"a file of type 0x{kind:X4} (S_IFMT)",
        };

    /// <summary>A raw system call with up to six arguments; the result, or -errno.</summary>
    /// <remarks>
    /// The import does not use <c>SetLastError</c>: that marshalling clears errno before every call
    /// and copies it into the runtime's per-thread slot after it (a thread-local lookup), on the
    /// io_uring hot path twice per I/O. errno is read here only when the call failed, the same
    /// read the generated marshalling makes, and the result carries it (nothing reads
    /// <see cref="LastErrno"/> after this call).
    /// </remarks>
    public static long Syscall(long number, long a1 = 0, long a2 = 0, long a3 = 0, long a4 = 0, long a5 = 0, long a6 = 0)
    {
        var result = SyscallRaw(number, a1, a2, a3, a4, a5, a6);
        return result == -1 ? -Marshal.GetLastSystemError() : result;
    }

    /// <summary>open(2); the descriptor, or -errno.</summary>
    public static int Open(string path, int flags, int mode)
    {
        var fd = OpenRaw(path, flags, mode);
        return fd < 0 ? -LastErrno : fd;
    }

    /// <summary>pread(2) into a pinned buffer; bytes read, or -errno.</summary>
    public static long PRead(int fd, void* buffer, long count, long offset)
    {
        var n = PReadRaw(fd, buffer, (nuint)count, offset);
        return n < 0 ? -LastErrno : n;
    }

    /// <summary>pwrite(2) from a pinned buffer; bytes written, or -errno.</summary>
    public static long PWrite(int fd, void* buffer, long count, long offset)
    {
        var n = PWriteRaw(fd, buffer, (nuint)count, offset);
        return n < 0 ? -LastErrno : n;
    }

    /// <summary>preadv2(2) over an iovec array; bytes read, or -errno.</summary>
    public static long PReadV(int fd, IoVec* iov, int count, long offset)
    {
        var n = PReadV2Raw(fd, iov, count, offset, 0);
        return n < 0 ? -LastErrno : n;
    }

    /// <summary><c>lseek</c> whence: the next offset at or after the given one that holds data.</summary>
    public const int SEEK_DATA = 3;

    /// <summary><c>lseek</c> whence: the next hole at or after the given offset (end of file counts as one).</summary>
    public const int SEEK_HOLE = 4;

    [LibraryImport(Library, EntryPoint = "lseek64", SetLastError = true)]
    private static partial long LSeekRaw(int fd, long offset, int whence);

    /// <summary>lseek(2); the resulting offset, or -errno.</summary>
    public static long LSeek(int fd, long offset, int whence)
    {
        var n = LSeekRaw(fd, offset, whence);
        return n < 0 ? -LastErrno : n;
    }

    /// <summary>pwritev2(2) over an iovec array with RWF_* flags; bytes written, or -errno.</summary>
    public static long PWriteV(int fd, IoVec* iov, int count, long offset, int rwFlags)
    {
        var n = PWriteV2Raw(fd, iov, count, offset, rwFlags);
        return n < 0 ? -LastErrno : n;
    }

    /// <summary>0, or -errno.</summary>
    public static int Check(int result) => result < 0 ? -LastErrno : result;

    public const int MSG_PEEK = 0x2;
    public const int MSG_DONTWAIT = 0x40;
    public const int MSG_NOSIGNAL = 0x4000;
    public const short POLLIN = 0x1;
    public const short POLLOUT = 0x4;
    public const short POLLERR = 0x8;
    public const short POLLHUP = 0x10;
    public const short POLLRDHUP = 0x2000;

    /// <summary>send(2) from a pinned buffer; bytes sent, or -errno.</summary>
    public static long Send(int fd, void* buffer, long count, int flags)
    {
        var n = SendRaw(fd, buffer, (nuint)count, flags);
        return n < 0 ? -LastErrno : n;
    }

    [LibraryImport(Library, EntryPoint = "send", SetLastError = true)]
    private static partial nint SendRaw(int fd, void* buffer, nuint count, int flags);

    /// <summary>recv(2) into a pinned buffer; bytes received (0 at end of stream), or -errno.</summary>
    public static long Recv(int fd, void* buffer, long count, int flags)
    {
        var n = RecvRaw(fd, buffer, (nuint)count, flags);
        return n < 0 ? -LastErrno : n;
    }

    /// <summary>poll(2) on one descriptor for <paramref name="events"/>, without a timeout; 1 (or 0), or -errno.</summary>
    public static int PollOne(int fd, short events) => PollOne(fd, events, -1);

    /// <summary>poll(2) on one descriptor for <paramref name="events"/> for at most <paramref name="timeoutMs"/> (-1: no limit); 1 when ready, 0 at the timeout, or -errno.</summary>
    public static int PollOne(int fd, short events, int timeoutMs)
    {
        var pfd = new PollFd { Fd = fd, Events = events };
        var n = PollRaw(&pfd, 1, timeoutMs);
        return n < 0 ? -LastErrno : n;
    }

    /// <summary>poll(2) on one descriptor for <paramref name="events"/> without waiting: the events it reports (0 for none), or -errno.</summary>
    public static int PollNow(int fd, short events)
    {
        var pfd = new PollFd { Fd = fd, Events = events };
        var n = PollRaw(&pfd, 1, 0);
        return n < 0 ? -LastErrno : n == 0 ? 0 : (ushort)pfd.REvents;
    }

    /// <summary>
    /// poll(2) on <paramref name="fd"/> for <paramref name="events"/> and on <paramref name="wakeFd"/>
    /// for POLLIN, for at most <paramref name="timeoutMs"/> (-1: no limit): 1 when <paramref name="fd"/>
    /// is ready, 2 when <paramref name="wakeFd"/> is readable (whatever <paramref name="fd"/> is),
    /// 0 at the timeout, or -errno.
    /// </summary>
    public static int PollOneOrWake(int fd, short events, int wakeFd, int timeoutMs)
    {
        var pfds = stackalloc PollFd[2];
        pfds[0] = new PollFd { Fd = fd, Events = events };
        pfds[1] = new PollFd { Fd = wakeFd, Events = POLLIN };
        var n = PollRaw(pfds, 2, timeoutMs);
        if (n < 0)
        {
            return -LastErrno;
        }

        return n == 0 ? 0 : pfds[1].REvents != 0 ? 2 : 1;
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct PollFd
    {
        public int Fd;
        public short Events;
        public short REvents;
    }

    [LibraryImport(Library, EntryPoint = "recv", SetLastError = true)]
    private static partial nint RecvRaw(int fd, void* buffer, nuint count, int flags);

    [LibraryImport(Library, EntryPoint = "poll", SetLastError = true)]
    private static partial int PollRaw(PollFd* fds, nuint count, int timeout);

    [StructLayout(LayoutKind.Sequential)]
    public struct IoVec
    {
        public void* Base;
        public nuint Length;
    }

    /// <summary><c>struct statx</c> (256 bytes); only the fields ActorBlk reads are named.</summary>
    [StructLayout(LayoutKind.Explicit, Size = 256)]
    public struct Statx
    {
        [FieldOffset(0)]
        public uint Mask;

        [FieldOffset(4)]
        public uint BlockSize;

        [FieldOffset(28)]
        public ushort Mode;

        /// <summary><c>stx_ino</c>: the file's inode number on its file system.</summary>
        [FieldOffset(32)]
        public ulong Ino;

        [FieldOffset(40)]
        public ulong Size;

        /// <summary><c>stx_blocks</c>: the 512-byte units allocated to the file (unwritten extents included).</summary>
        [FieldOffset(48)]
        public ulong Blocks;

        /// <summary><c>stx_rdev_major</c>: the device a block or character device file stands for.</summary>
        [FieldOffset(128)]
        public uint RdevMajor;

        [FieldOffset(132)]
        public uint RdevMinor;

        /// <summary><c>stx_dev_major</c>: the device of the file system the file lies in.</summary>
        [FieldOffset(136)]
        public uint DevMajor;

        [FieldOffset(140)]
        public uint DevMinor;

        [FieldOffset(152)]
        public uint DioMemAlign;

        [FieldOffset(156)]
        public uint DioOffsetAlign;
    }

    [LibraryImport(Library, EntryPoint = "syscall")]
    private static partial long SyscallRaw(long number, long a1, long a2, long a3, long a4, long a5, long a6);

    [LibraryImport(Library, EntryPoint = "open", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int OpenRaw(string path, int flags, int mode);

    [LibraryImport(Library, EntryPoint = "close", SetLastError = true)]
    public static partial int Close(int fd);

    [LibraryImport(Library, EntryPoint = "pread64", SetLastError = true)]
    private static partial nint PReadRaw(int fd, void* buffer, nuint count, long offset);

    [LibraryImport(Library, EntryPoint = "pwrite64", SetLastError = true)]
    private static partial nint PWriteRaw(int fd, void* buffer, nuint count, long offset);

    [LibraryImport(Library, EntryPoint = "preadv2", SetLastError = true)]
    private static partial nint PReadV2Raw(int fd, IoVec* iov, int count, long offset, int flags);

    [LibraryImport(Library, EntryPoint = "pwritev2", SetLastError = true)]
    private static partial nint PWriteV2Raw(int fd, IoVec* iov, int count, long offset, int flags);

    public const int LOCK_SH = 1;
    public const int LOCK_EX = 2;
    public const int LOCK_NB = 4;
    public const int EWOULDBLOCK = EAGAIN;

    [LibraryImport(Library, EntryPoint = "flock", SetLastError = true)]
    public static partial int Flock(int fd, int operation);

    [LibraryImport(Library, EntryPoint = "unlink", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int Unlink(string path);

    /// <summary><c>faccessat(2)</c> mode: may the file be written (for a directory: may a file be created in it).</summary>
    public const int W_OK = 2;

    /// <summary><c>faccessat(2)</c> flag: check with the effective user and group, as a create by this process would be.</summary>
    public const int AT_EACCESS = 0x200;

    /// <summary><c>faccessat(2)</c>: 0 when the access is allowed, else -1 (<see cref="LastErrno"/>: EACCES, EROFS, ...).</summary>
    [LibraryImport(Library, EntryPoint = "faccessat", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int FAccessAt(int dirfd, string path, int mode, int flags);

    /// <summary><c>link(2)</c>: a new name for a file; fails with EEXIST when the name is taken (atomic, unlike a check then a rename).</summary>
    [LibraryImport(Library, EntryPoint = "link", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int Link(string existing, string name);

    /// <summary><c>RLIMIT_NOFILE</c>: the open-file limit (the same number on x86-64 and arm64).</summary>
    public const int RLIMIT_NOFILE = 7;

    /// <summary><c>struct rlimit</c> on 64-bit Linux: the soft and the hard limit.</summary>
    [StructLayout(LayoutKind.Sequential)]
    public struct RLimit
    {
        /// <summary><c>rlim_cur</c>, the soft limit the kernel enforces (<c>RLIM_INFINITY</c> is all ones).</summary>
        public ulong Current;

        /// <summary><c>rlim_max</c>, the hard limit.</summary>
        public ulong Maximum;
    }

    [LibraryImport(Library, EntryPoint = "getrlimit", SetLastError = true)]
    public static partial int GetRLimit(int resource, RLimit* limit);

    /// <summary>
    /// The process's soft <c>RLIMIT_NOFILE</c>: a descriptor number the kernel hands out is below
    /// it. <see cref="long.MaxValue"/> when unlimited or unknown.
    /// </summary>
    public static long OpenFileLimit()
    {
        RLimit limit;
        if (GetRLimit(RLIMIT_NOFILE, &limit) < 0 || limit.Current > long.MaxValue)
        {
            return long.MaxValue;
        }

        return (long)limit.Current;
    }

    /// <summary><c>SIGXFSZ</c>: a write past <c>RLIMIT_FSIZE</c> (the same number on x86-64 and arm64).</summary>
    public const int SIGXFSZ = 25;

    /// <summary>
    /// glibc's <c>struct sigaction</c> on 64-bit Linux (x86-64 and arm64 alike): the handler, a
    /// 1024-bit mask, the flags and the restorer, 152 bytes.
    /// </summary>
    [StructLayout(LayoutKind.Explicit, Size = 152)]
    public struct SigAction
    {
        /// <summary><c>sa_handler</c>: 0 is <c>SIG_DFL</c>, 1 is <c>SIG_IGN</c>.</summary>
        [FieldOffset(0)]
        public nint Handler;

        /// <summary><c>sa_flags</c>.</summary>
        [FieldOffset(136)]
        public int Flags;
    }

    [LibraryImport(Library, EntryPoint = "sigaction", SetLastError = true)]
    public static partial int SigActionRaw(int signal, SigAction* action, SigAction* old);

    /// <summary>
    /// Ignores <c>SIGXFSZ</c> unless someone already handles or ignores it, so a write that would
    /// take a file past <c>RLIMIT_FSIZE</c> fails with <c>EFBIG</c> instead of killing the process
    /// (the signal's default action). Returns true when the disposition is now to ignore it or was
    /// left to a handler the process installed itself.
    /// </summary>
    public static bool IgnoreFileSizeSignal()
    {
        SigAction old;
        if (SigActionRaw(SIGXFSZ, null, &old) < 0)
        {
            return false;
        }

        if (old.Handler != 0)
        {
            return true;
        }

        var ignore = new SigAction { Handler = 1 };
        return SigActionRaw(SIGXFSZ, &ignore, null) == 0;
    }

    [LibraryImport(Library, EntryPoint = "fdatasync", SetLastError = true)]
    public static partial int FDataSync(int fd);

    [LibraryImport(Library, EntryPoint = "ftruncate64", SetLastError = true)]
    public static partial int FTruncate(int fd, long length);

    [LibraryImport(Library, EntryPoint = "fallocate64", SetLastError = true)]
    public static partial int FAllocate(int fd, int mode, long offset, long length);

    /// <summary><c>struct statvfs</c> on 64-bit Linux (glibc: 112 bytes, room left for more); only the fields ActorBlk reads are named.</summary>
    [StructLayout(LayoutKind.Explicit, Size = 128)]
    public struct Statvfs
    {
        /// <summary><c>f_frsize</c>: the unit of the block counts.</summary>
        [FieldOffset(8)]
        public ulong FragmentSize;

        /// <summary><c>f_bavail</c>: free blocks an unprivileged user may take.</summary>
        [FieldOffset(32)]
        public ulong BlocksAvailable;
    }

    [LibraryImport(Library, EntryPoint = "fstatvfs64", SetLastError = true)]
    public static partial int FStatVfs(int fd, Statvfs* buffer);

    [LibraryImport(Library, EntryPoint = "statx", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int StatX(int dirfd, string path, int flags, uint mask, Statx* buffer);

    [LibraryImport(Library, EntryPoint = "ioctl", SetLastError = true)]
    public static partial int IoctlPointer(int fd, ulong request, void* argument);

    [LibraryImport(Library, EntryPoint = "mmap", SetLastError = true)]
    public static partial void* MMap(void* address, nuint length, int protection, int flags, int fd, long offset);

    [LibraryImport(Library, EntryPoint = "mprotect", SetLastError = true)]
    public static partial int MProtect(void* address, nuint length, int protection);

    [LibraryImport(Library, EntryPoint = "munmap", SetLastError = true)]
    public static partial int MUnmap(void* address, nuint length);

    [LibraryImport(Library, EntryPoint = "eventfd", SetLastError = true)]
    public static partial int EventFd(uint initial, int flags);

    [LibraryImport(Library, EntryPoint = "write", SetLastError = true)]
    public static partial nint Write(int fd, void* buffer, nuint count);

    [LibraryImport(Library, EntryPoint = "read", SetLastError = true)]
    public static partial nint Read(int fd, void* buffer, nuint count);

    /// <summary>sched_setaffinity(2): <paramref name="pid"/> 0 is the calling thread; 0, or -1 and errno.</summary>
    [LibraryImport(Library, EntryPoint = "sched_setaffinity", SetLastError = true)]
    public static partial int SchedSetAffinity(int pid, nuint size, ulong* mask);

    /// <summary>sched_getaffinity(2): <paramref name="pid"/> 0 is the calling thread; 0, or -1 and errno.</summary>
    [LibraryImport(Library, EntryPoint = "sched_getaffinity", SetLastError = true)]
    public static partial int SchedGetAffinity(int pid, nuint size, ulong* mask);

    // It runs on every submission and completion of a thread that is not ours. glibc answers from
    // the vDSO in a few nanoseconds without blocking, so the GC transition is skipped; no
    // SetLastError, as the caller handles the only failure (-1) without errno.
    /// <summary>sched_getcpu(3): the CPU the calling thread runs on, or -1.</summary>
    [LibraryImport(Library, EntryPoint = "sched_getcpu")]
    [SuppressGCTransition]
    public static partial int SchedGetCpu();
}
