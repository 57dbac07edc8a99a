using System.Runtime.CompilerServices;
using ActorBlk.Hardware.Interop;

namespace ActorBlk.Hardware.IoUring;

/// <summary>
/// One io_uring instance: the submission and completion rings and the SQE array, mapped into this
/// process and accessed as blittable structs. No native library: three system calls and mmap.
/// </summary>
/// <remarks>
/// <para>
/// Memory ordering follows the kernel's contract (<c>io_uring.h</c>, liburing's barriers): the SQ
/// tail is published with a release store after the entries are written, the SQ head (advanced by
/// the kernel) is read with an acquire load; the CQ tail is read with an acquire load before the
/// entries are read, and the CQ head is stored with release after they were copied out.
/// </para>
/// <para>
/// Threading: preparing and submitting entries belongs to one thread at a time (the ring's issuer),
/// and so does reaping; the two may be different threads unless the ring was created with
/// <see cref="IoUringSetupFlags.DeferTaskRun"/>, where both belong to the issuer. The one
/// exception: on a ring without SINGLE_ISSUER, a reaper thread may hand the kernel entries the
/// issuer already published (<see cref="WaitCompletions"/> with <c>toSubmit</c>), since the kernel
/// reads only the published tail and serialises the two enters.
/// </para>
/// </remarks>
internal sealed unsafe class IoRing : IDisposable
{
    private readonly int _fd;
    private readonly byte* _sqRing;
    private readonly nuint _sqRingSize;
    private readonly byte* _cqRing;
    private readonly nuint _cqRingSize;
    private readonly IoUringSqe* _sqes;
    private readonly nuint _sqesSize;
    private readonly uint* _sqHead;
    private readonly uint* _sqTail;
    private readonly uint* _sqFlags;
    private readonly uint _sqMask;
    private readonly uint* _cqHead;
    private readonly uint* _cqTail;
    private readonly uint _cqMask;
    private readonly IoUringCqe* _cqes;
    private int _enterFd;
    private IoUringEnterFlags _enterFlags;
    private uint _sqeTail;
    private bool _filesRegistered;
    private int _disposed;
    private int _injectedFailures;
    private int _injectedErrno;
    private long _waitSubmitted;

    private static long _live;

    /// <summary>io_uring instances open in this process (rings set up and not yet disposed).</summary>
    public static long LiveRings => Interlocked.Read(ref _live);

    private IoRing(int fd, in IoUringParams p)
    {
        _fd = fd;
        _enterFd = fd;
        Flags = p.Flags;
        Features = p.Features;
        SqEntries = p.SqEntries;
        CqEntries = p.CqEntries;

        _sqRingSize = p.SqOff.Array + (p.SqEntries * sizeof(uint));
        _cqRingSize = p.CqOff.Cqes + (p.CqEntries * (uint)sizeof(IoUringCqe));
        if ((p.Features & IoUringFeatures.SingleMmap) != 0)
        {
            _sqRingSize = _cqRingSize = Math.Max(_sqRingSize, _cqRingSize);
        }

        try
        {
            _sqRing = Map(fd, _sqRingSize, IoUringNative.OffSqRing);
            _cqRing = (p.Features & IoUringFeatures.SingleMmap) != 0 ? _sqRing : Map(fd, _cqRingSize, IoUringNative.OffCqRing);
            _sqesSize = p.SqEntries * (nuint)sizeof(IoUringSqe);
            _sqes = (IoUringSqe*)Map(fd, _sqesSize, IoUringNative.OffSqes);
        }
        catch
        {
            Unmap();
            throw;
        }

        Interlocked.Increment(ref _live);
        _sqHead = (uint*)(_sqRing + p.SqOff.Head);
        _sqTail = (uint*)(_sqRing + p.SqOff.Tail);
        _sqFlags = (uint*)(_sqRing + p.SqOff.Flags);
        _sqMask = *(uint*)(_sqRing + p.SqOff.RingMask);
        _cqHead = (uint*)(_cqRing + p.CqOff.Head);
        _cqTail = (uint*)(_cqRing + p.CqOff.Tail);
        _cqMask = *(uint*)(_cqRing + p.CqOff.RingMask);
        _cqes = (IoUringCqe*)(_cqRing + p.CqOff.Cqes);

        // The SQ array is an indirection the kernel keeps for compatibility: fill it with the
        // identity once, and entry i of the SQE array is always slot i of the ring.
        var array = (uint*)(_sqRing + p.SqOff.Array);
        for (uint i = 0; i < p.SqEntries; i++)
        {
            array[i] = i;
        }

        _sqeTail = Volatile.Read(ref *_sqTail);
    }

    /// <summary>The setup flags the kernel accepted.</summary>
    public IoUringSetupFlags Flags { get; }

    /// <summary>The features the kernel reported.</summary>
    public IoUringFeatures Features { get; }

    /// <summary>Submission ring size.</summary>
    public uint SqEntries { get; }

    /// <summary>Completion ring size.</summary>
    public uint CqEntries { get; }

    /// <summary>Calls of <see cref="Submit"/> that handed entries to the kernel (one io_uring_enter each, bar EINTR retries).</summary>
    public long Submissions { get; private set; }

    /// <summary>System calls made by <see cref="Submit"/>, whether or not they carried entries (for tests and statistics).</summary>
    public long Enters { get; private set; }

    /// <summary>Entries handed to the kernel by <see cref="Submit"/>.</summary>
    public long Submitted { get; private set; }

    /// <summary>Entries prepared and not yet handed to the kernel.</summary>
    public uint Unsubmitted => _sqeTail - Volatile.Read(ref *_sqHead);

    /// <summary>
    /// Entries the issuer published (with <see cref="Submit"/>) that the kernel has not taken: what
    /// a submission the kernel refused or cut short left behind. Readable from any thread.
    /// </summary>
    public uint PublishedUnsubmitted => Volatile.Read(ref *_sqTail) - Volatile.Read(ref *_sqHead);

    /// <summary>Entries handed to the kernel by <see cref="WaitCompletions"/> (for tests and statistics).</summary>
    public long WaitSubmitted => Interlocked.Read(ref _waitSubmitted);

    /// <summary>True when the ring's own descriptor is registered, saving a file lookup per enter.</summary>
    public bool RingFdRegistered => (_enterFlags & IoUringEnterFlags.RegisteredRing) != 0;

    /// <summary>
    /// Creates a ring with <paramref name="entries"/> submission entries and twice as many
    /// completion entries. Setup flags the kernel refuses (EINVAL) are dropped one group at a time:
    /// first <c>SINGLE_ISSUER | DEFER_TASKRUN</c>, then all of them.
    /// </summary>
    /// <returns>0, or the -errno of <c>io_uring_setup</c> when no combination works.</returns>
    public static int TryCreate(uint entries, IoUringSetupFlags preferred, out IoRing? ring)
    {
        ring = null;
        IoUringSetupFlags[] attempts =
        [
            preferred,
            preferred & ~(IoUringSetupFlags.SingleIssuer | IoUringSetupFlags.DeferTaskRun),
            IoUringSetupFlags.None,
        ];

        var result = -LibC.EINVAL;
        foreach (var flags in attempts)
        {
            var p = default(IoUringParams);
            p.Flags = flags | IoUringSetupFlags.CqSize;
            p.CqEntries = entries * 2;
            var fd = IoUringNative.Setup(entries, &p);
            if (fd >= 0)
            {
                try
                {
                    ring = new IoRing(fd, p);
                    return 0;
                }
                catch (IoUringException ex)
                {
                    LibC.Close(fd);
                    return ex.Errno;
                }
            }

            result = fd;
            if (fd != -LibC.EINVAL)
            {
                break;
            }
        }

        return result;
    }

    /// <summary>
    /// The next free submission entry, zeroed; null when the ring is full (submit first). The
    /// entry reaches the kernel at the next <see cref="Submit"/>.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public IoUringSqe* TryGetSqe()
    {
        var head = Volatile.Read(ref *_sqHead);
        if (_sqeTail - head >= SqEntries)
        {
            return null;
        }

        var sqe = &_sqes[_sqeTail & _sqMask];
        *sqe = default;
        _sqeTail++;
        return sqe;
    }

    /// <summary>
    /// Publishes prepared entries and enters the kernel: submits them and, when
    /// <paramref name="minComplete"/> is positive, waits for that many completions or
    /// <paramref name="timeoutMs"/> (negative: no limit). Interrupted calls are retried.
    /// </summary>
    /// <returns>Entries consumed; -ETIME when the wait timed out; another -errno on failure.</returns>
    public int Submit(uint minComplete = 0, int timeoutMs = -1)
    {
        // Release: the entries are written before the kernel can see the new tail.
        Volatile.Write(ref *_sqTail, _sqeTail);
        var flags = _enterFlags;
        if (minComplete > 0 || (Flags & IoUringSetupFlags.DeferTaskRun) != 0)
        {
            // With DEFER_TASKRUN completions are posted only when the issuer asks for events.
            flags |= IoUringEnterFlags.GetEvents;
        }

        while (true)
        {
            var toSubmit = _sqeTail - Volatile.Read(ref *_sqHead);
            if (_injectedFailures != 0 && toSubmit > 0 && TakeInjectedFailure() is var injected and not 0)
            {
                return -injected;
            }

            Enters++;
            int result;
            if (minComplete > 0 && timeoutMs >= 0)
            {
                var ts = new KernelTimespec { Seconds = timeoutMs / 1000, Nanoseconds = (timeoutMs % 1000) * 1_000_000L };
                var arg = new IoUringGetEventsArg { Timespec = (ulong)&ts };
                result = IoUringNative.Enter(_enterFd, toSubmit, minComplete, flags | IoUringEnterFlags.ExtArg, &arg, (nuint)sizeof(IoUringGetEventsArg));
            }
            else
            {
                result = IoUringNative.Enter(_enterFd, toSubmit, minComplete, flags);
            }

            if (result != -LibC.EINTR)
            {
                if (toSubmit > 0 && result > 0)
                {
                    Submissions++;
                    Submitted += result;
                }

                return result;
            }
        }
    }

    /// <summary>
    /// Waits for <paramref name="minComplete"/> completions or <paramref name="timeoutMs"/>
    /// (negative: no limit): for a reaper thread beside the issuer, on rings without
    /// DEFER_TASKRUN, or for the issuer itself. With <paramref name="toSubmit"/>, first hands the
    /// kernel up to that many entries the issuer already published and the kernel has not taken
    /// (<see cref="PublishedUnsubmitted"/>), as liburing's <c>io_uring_submit_and_wait</c> does: the
    /// kernel reads only the published tail, so entries the issuer is still preparing are not
    /// touched, and it serialises this enter with the issuer's. Not on a SINGLE_ISSUER ring from
    /// another thread (the kernel refuses it).
    /// </summary>
    /// <returns>
    /// Entries submitted, if any (the kernel then does not wait when it took fewer than asked);
    /// else 0, -ETIME when the wait timed out, another -errno on failure.
    /// </returns>
    public int WaitCompletions(uint minComplete, int timeoutMs, uint toSubmit = 0)
    {
        var flags = IoUringEnterFlags.GetEvents;
        int result;
        if (timeoutMs < 0)
        {
            result = IoUringNative.Enter(_fd, toSubmit, minComplete, flags);
        }
        else
        {
            var ts = new KernelTimespec { Seconds = timeoutMs / 1000, Nanoseconds = (timeoutMs % 1000) * 1_000_000L };
            var arg = new IoUringGetEventsArg { Timespec = (ulong)&ts };
            result = IoUringNative.Enter(_fd, toSubmit, minComplete, flags | IoUringEnterFlags.ExtArg, &arg, (nuint)sizeof(IoUringGetEventsArg));
        }

        if (toSubmit > 0 && result > 0)
        {
            Interlocked.Add(ref _waitSubmitted, result);
        }

        return result;
    }

    /// <summary>
    /// Test hook: the next <paramref name="count"/> calls of <see cref="Submit"/> that carry
    /// entries fail with -<paramref name="errno"/> without entering the kernel, after publishing
    /// the entries, as a submission the kernel refused (EAGAIN, EBUSY) leaves them. Costs
    /// <see cref="Submit"/> one branch on a field that is zero outside tests.
    /// </summary>
    internal void InjectSubmitFailures(int count, int errno)
    {
        Volatile.Write(ref _injectedErrno, errno);
        Volatile.Write(ref _injectedFailures, count);
    }

    /// <summary>Injected submit failures not yet used (for tests).</summary>
    internal int InjectedSubmitFailures => Volatile.Read(ref _injectedFailures);

    /// <summary>Copies up to <paramref name="into"/>.Length completions out of the ring and frees their slots.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public int Reap(Span<IoUringCqe> into)
    {
        var head = *_cqHead;

        // Acquire: the entries are read only after the tail that covers them.
        var tail = Volatile.Read(ref *_cqTail);
        var n = (int)Math.Min(tail - head, (uint)into.Length);
        for (var i = 0; i < n; i++)
        {
            into[i] = _cqes[(head + (uint)i) & _cqMask];
        }

        if (n > 0)
        {
            // Release: the slots are free only after they were copied.
            Volatile.Write(ref *_cqHead, head + (uint)n);
        }

        return n;
    }

    /// <summary>True when completions are waiting in the ring.</summary>
    public bool HasCompletions => Volatile.Read(ref *_cqTail) != *_cqHead;

    /// <summary>
    /// True when the kernel holds completion work that only an enter with GETEVENTS runs
    /// (<c>IORING_SQ_TASKRUN</c>); meaningful only on a ring set up with
    /// <see cref="IoUringSetupFlags.TaskRunFlag"/>, always false otherwise.
    /// </summary>
    public bool TaskWorkPending => (Volatile.Read(ref *_sqFlags) & (uint)IoUringSqFlags.TaskRun) != 0;

    /// <summary>Registers descriptors as fixed files (index = position); 0 or -errno.</summary>
    public int RegisterFiles(ReadOnlySpan<int> fds)
    {
        int result;
        fixed (int* p = fds)
        {
            result = IoUringNative.Register(_fd, IoUringNative.RegisterFiles, p, (uint)fds.Length);
        }

        _filesRegistered |= result == 0;
        return result;
    }

    /// <summary>
    /// Registers one block of memory as fixed buffer 0 (IORING_REGISTER_BUFFERS): the kernel pins
    /// its pages once, and READ_FIXED/WRITE_FIXED inside it skip pinning per I/O. 0 or -errno
    /// (ENOMEM when it exceeds RLIMIT_MEMLOCK).
    /// </summary>
    public int RegisterBuffer(void* address, nuint length)
    {
        var iov = new LibC.IoVec { Base = address, Length = length };
        return IoUringNative.Register(_fd, IoUringNative.RegisterBuffers, &iov, 1);
    }

    /// <summary>
    /// Registers the ring's own descriptor with the calling thread (IORING_REGISTER_RING_FDS), so
    /// every later enter skips the file-table lookup. Only for rings entered from one thread.
    /// </summary>
    public bool TryRegisterRingFd()
    {
        var update = new IoUringRsrcUpdate { Offset = uint.MaxValue, Data = (ulong)_fd };
        if (IoUringNative.Register(_fd, IoUringNative.RegisterRingFds, &update, 1) != 1)
        {
            return false;
        }

        _enterFd = (int)update.Offset;
        _enterFlags |= IoUringEnterFlags.RegisteredRing;
        return true;
    }

    /// <summary>The opcodes the kernel supports, from IORING_REGISTER_PROBE; empty when probing is not supported.</summary>
    public HashSet<IoUringOp> ProbeOps()
    {
        const int MaxOps = 256;
        var size = sizeof(IoUringProbeHeader) + (MaxOps * sizeof(IoUringProbeOp));
        var buffer = stackalloc byte[size];
        new Span<byte>(buffer, size).Clear();
        var supported = new HashSet<IoUringOp>();
        if (IoUringNative.Register(_fd, IoUringNative.RegisterProbe, buffer, MaxOps) < 0)
        {
            return supported;
        }

        var header = (IoUringProbeHeader*)buffer;
        var ops = (IoUringProbeOp*)(buffer + sizeof(IoUringProbeHeader));
        for (var i = 0; i < header->OpsLength; i++)
        {
            if ((ops[i].Flags & IoUringNative.ProbeOpSupported) != 0)
            {
                supported.Add((IoUringOp)ops[i].Op);
            }
        }

        return supported;
    }

    /// <inheritdoc />
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        // The kernel tears a closed ring down asynchronously, and registered files stay open
        // until it has: unregistering first drops them now, so the file (and any lock on it) is
        // released when its owner closes it.
        if (_filesRegistered)
        {
            IoUringNative.Register(_fd, IoUringNative.UnregisterFiles, null, 0);
        }

        Unmap();
        LibC.Close(_fd);
        Interlocked.Decrement(ref _live);
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private int TakeInjectedFailure()
    {
        var left = Volatile.Read(ref _injectedFailures);
        while (left > 0)
        {
            var seen = Interlocked.CompareExchange(ref _injectedFailures, left - 1, left);
            if (seen == left)
            {
                return Volatile.Read(ref _injectedErrno);
            }

            left = seen;
        }

        return 0;
    }

    private static byte* Map(int fd, nuint size, long offset)
    {
        var p = LibC.MMap(null, size, LibC.PROT_READ | LibC.PROT_WRITE, LibC.MAP_SHARED | LibC.MAP_POPULATE, fd, offset);
        return p == (void*)-1 ? throw new IoUringException(-LibC.LastErrno, "mmap of the ring") : (byte*)p;
    }

    private void Unmap()
    {
        if (_sqes is not null)
        {
            LibC.MUnmap(_sqes, _sqesSize);
        }

        if (_cqRing is not null && _cqRing != _sqRing)
        {
            LibC.MUnmap(_cqRing, _cqRingSize);
        }

        if (_sqRing is not null)
        {
            LibC.MUnmap(_sqRing, _sqRingSize);
        }
    }
}

/// <summary>An io_uring system call failed.</summary>
internal sealed class IoUringException(int errno, string operation)
    : Exception($"io_uring: {operation} failed: {LibC.Describe(errno)} (errno {-errno}).")
{
    /// <summary>The failure as -errno.</summary>
    public int Errno { get; } = errno;
}
