using System.Numerics;
using System.Runtime.CompilerServices;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Interop;
using ActorBlk.Hardware.IoUring;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;

namespace ActorBlk.Hardware.Drivers.File;

/// <summary>
/// The io_uring engine of one hardware queue: one ring, the backing file registered as fixed file
/// 0, requests turned into SQEs in QueueRq and handed to the kernel in batches (see
/// <see cref="FileBlockOptions.SubmitBatch"/>).
/// </summary>
/// <remarks>
/// <para>
/// Ring dispatch: the ring belongs to the hardware queue's dispatch thread, created there with
/// <c>SINGLE_ISSUER | DEFER_TASKRUN</c> where the kernel has them, and the engine is that
/// thread's <see cref="ICompletionReaper"/>: the loop submits and reaps through it and sleeps in
/// <c>io_uring_enter</c> waiting for completions. An eventfd read is kept armed in the ring so a
/// submitter on another thread can wake the sleeping loop by writing the eventfd.
/// </para>
/// <para>
/// Mailbox dispatch: QueueRq runs on the driver actor, whichever pool thread that is, so the
/// ring is created without SINGLE_ISSUER; the actor submits at the end of each batch and a
/// dedicated reaper thread waits for completions. Entries whose submission the kernel refused
/// (EAGAIN, EBUSY) or cut short are submitted by the reaper with its next wait (within its 1 s
/// wait timeout at the latest), as no further call of the actor's may come.
/// </para>
/// <para>
/// user_data carries the tag and the generation the request was started with, so a completion
/// finds its command without a lookup table and can never complete a later incarnation of a tag.
/// Discard and write-zeroes of block devices (BLKDISCARD, BLKZEROOUT) have no io_uring opcode on
/// every kernel and go to a lazily started psync worker. A short transfer finishes synchronously.
/// </para>
/// </remarks>
internal sealed unsafe class IoUringEngine : FileEngine, ICompletionReaper
{
    /// <summary>Setup flags asked for when the dispatch thread owns the ring.</summary>
    public const IoUringSetupFlags OwnedFlags =
        IoUringSetupFlags.SingleIssuer | IoUringSetupFlags.DeferTaskRun | IoUringSetupFlags.CoopTaskRun | IoUringSetupFlags.TaskRunFlag | IoUringSetupFlags.SubmitAll;

    /// <summary>Setup flags asked for when submissions come from actor threads and completions are reaped on another thread.</summary>
    public const IoUringSetupFlags SharedFlags = IoUringSetupFlags.SubmitAll;

    private const ulong WakeToken = ulong.MaxValue;
    private const ulong StopToken = ulong.MaxValue - 1;
    private const ulong LinkBit = 1UL << 31;
    private const ulong TagMask = 0xFFFF;
    private const int ReapBatch = 32;

    /// <summary>The most entries one adaptive submission waits for (the kernel's plug flushes at 32 requests).</summary>
    internal const uint AdaptiveBatchLimit = 16;
    private static readonly TimeSpan DrainLimit = TimeSpan.FromSeconds(30);

    /// <summary>
    /// How long a wait after a refused submission (EAGAIN, EBUSY) sleeps at most before the
    /// entries are offered again, so a refusal that lasts is retried without spinning.
    /// </summary>
    private const int RefusedRetryMs = 10;

    private readonly IoRing _ring;
    private readonly bool _owned;
    private readonly uint _submitBatch;
    private readonly bool _adaptive;
    private readonly BufferArena? _arena;
    private readonly string? _arenaFailure;
    private readonly bool _fixedFile;
    private readonly int _sqeFd;
    private readonly int _eventFd = -1;
    private readonly ulong* _eventBuffer;
    private readonly Thread? _reaperThread;
    private PsyncWorker? _slow;
    private bool _wakeArmed;
    private int _inflight;
    private volatile bool _stopping;
    private volatile bool _broken;
    private int _leftUnsubmitted; // 1: entries the kernel refused or left wait for the reaper (mailbox dispatch)
    private int _slowStopped;
    private int _disposed;

    private IoUringEngine(FileTarget target, HardwareContext hctx, IoRing ring, bool owned, int? submitBatch, BufferArena? arena)
        : base(target, hctx)
    {
        _ring = ring;
        _owned = owned;
        _adaptive = submitBatch is null;
        _submitBatch = (uint)(submitBatch ?? 0);
        if (arena is not null)
        {
            var registered = ring.RegisterBuffer((void*)arena.Address, (nuint)arena.Length);
            if (registered == 0)
            {
                _arena = arena;
            }
            else
            {
                _arenaFailure = $"fixed buffers refused: {LibC.Describe(registered)} (errno {-registered})";
            }
        }

        int fd = target.Fd;
        _fixedFile = ring.RegisterFiles(new ReadOnlySpan<int>(ref fd)) == 0;
        _sqeFd = _fixedFile ? 0 : target.Fd;
        if (owned)
        {
            ring.TryRegisterRingFd();
            _eventFd = LibC.EventFd(0, LibC.EFD_CLOEXEC);
            if (_eventFd < 0)
            {
                throw new IoUringException(-LibC.LastErrno, "eventfd");
            }

            _eventBuffer = (ulong*)NativeAllocations.AlignedAlloc(sizeof(ulong), sizeof(ulong));
        }
        else
        {
            _reaperThread = new Thread(ReaperLoop) { IsBackground = true, Name = $"actorblk/{hctx.Queue.Name}/uring{hctx.Index}" };
            _reaperThread.Start();
        }
    }

    /// <inheritdoc />
    public override string Name => "io_uring";

    /// <inheritdoc />
    public override string Details
    {
        get
        {
            var parts = new List<string>
            {
                $"{_ring.SqEntries} entries",
                _adaptive ? $"submits adaptively (batches of half the requests in the kernel, 1 to {AdaptiveBatchLimit}; a request for an idle device at once)" : _submitBatch switch
                {
                    0 => "submits once per dispatch round",
                    1 => "submits each request as it is prepared",
                    _ => $"submits every {_submitBatch} requests",
                },
            };
            if ((_ring.Flags & IoUringSetupFlags.SingleIssuer) != 0)
            {
                parts.Add("SINGLE_ISSUER");
            }

            if ((_ring.Flags & IoUringSetupFlags.DeferTaskRun) != 0)
            {
                parts.Add("DEFER_TASKRUN");
            }

            if ((_ring.Flags & IoUringSetupFlags.CoopTaskRun) != 0)
            {
                parts.Add("COOP_TASKRUN");
            }

            if ((_ring.Flags & IoUringSetupFlags.TaskRunFlag) != 0)
            {
                parts.Add("TASKRUN_FLAG");
            }

            parts.Add(_fixedFile ? "registered file" : "unregistered file");
            if (_arena is not null)
            {
                parts.Add($"{_arena.Length >> 10} KiB of fixed buffers");
            }
            else if (_arenaFailure is not null)
            {
                parts.Add(_arenaFailure);
            }

            if (_ring.RingFdRegistered)
            {
                parts.Add("registered ring fd");
            }

            parts.Add(_owned ? "reaped by the dispatch thread" : "reaped by its own thread");
            return string.Join(", ", parts);
        }
    }

    /// <summary>Reads and writes issued from registered memory (READ_FIXED/WRITE_FIXED), for tests and statistics.</summary>
    public long FixedIos { get; private set; }

    /// <summary>System calls that handed entries to the kernel (for tests and statistics).</summary>
    public long Submissions => _ring.Submissions;

    /// <summary>Entries handed to the kernel, the wake-up read included (for tests and statistics).</summary>
    public long Submitted => _ring.Submitted;

    /// <summary>
    /// Rounds whose last request went to the kernel on its own system call because the device
    /// held nothing else (adaptive batches), rather than with the loop's wait (for tests and
    /// statistics). At queue depth 1 that is every request: the doorbell rings before the loop
    /// finishes its round and goes to wait, as fio's submit-then-wait does, and the wait is a
    /// second system call, made while the device works.
    /// </summary>
    public long IdleDeviceSubmissions { get; private set; }

    /// <summary>
    /// Reaps that took their completions without entering the kernel: nothing to submit and no
    /// completion work pending (for tests and statistics).
    /// </summary>
    public long SkippedEnters { get; private set; }

    /// <summary>
    /// io_uring_enter calls made through the ring's <c>Submit</c>: every call of the dispatch
    /// thread, the reaper thread's waits excluded (for tests and statistics).
    /// </summary>
    public long Enters => _ring.Enters;

    /// <summary>
    /// Entries handed to the kernel by a wait rather than by <c>Submit</c>: in mailbox dispatch,
    /// what the reaper thread submitted because the actor's submission was refused (EAGAIN,
    /// EBUSY) or cut short (for tests and statistics).
    /// </summary>
    public long WaitSubmitted => _ring.WaitSubmitted;

    /// <summary>Test hook: the next <paramref name="count"/> submissions that carry entries fail with -<paramref name="errno"/>, leaving their entries published (see <see cref="IoRing.InjectSubmitFailures"/>).</summary>
    internal void InjectSubmitFailures(int count, int errno) => _ring.InjectSubmitFailures(count, errno);

    /// <summary>Injected submit failures not yet used (for tests).</summary>
    internal int InjectedSubmitFailures => _ring.InjectedSubmitFailures;

    /// <summary>Requests in the kernel now.</summary>
    public int InFlight => Volatile.Read(ref _inflight);

    /// <inheritdoc />
    /// <remarks>
    /// The requests in the kernel, and those the worker thread runs (block-device discard and
    /// zeroing, the zeroing fallback). Once the ring broke (an <c>io_uring_enter</c> error that is
    /// not transient, reported as a device error) and its reaper gave up, the ring's requests
    /// are no longer counted: nothing can reap their answers, so waiting for them
    /// (<see cref="FileBlockDriver.Abandon"/>) would never end; the teardown fails them.
    /// </remarks>
    public override int Outstanding => (_broken ? 0 : InFlight) + (Volatile.Read(ref _slow)?.Outstanding ?? 0);

    /// <summary>True once the ring broke and nothing reaps it any more (for tests).</summary>
    internal bool Broken => _broken;

    /// <summary>The ring's setup flags (for tests).</summary>
    internal IoUringSetupFlags RingFlags => _ring.Flags;

    /// <summary>
    /// Creates the engine of <paramref name="hctx"/> on the calling thread (which, with ring
    /// dispatch, becomes the ring's single issuer). Returns null with the reason when the kernel
    /// refuses the ring.
    /// </summary>
    public static IoUringEngine? TryCreate(FileTarget target, HardwareContext hctx, int? submitBatch, BufferArena? arena, out string? failure)
    {
        var owned = hctx.HasDispatchThread;

        // Room for every tag twice (a pre-flush is a linked pair) and the wake-up read.
        var entries = (uint)Math.Min(16384, BitOperations.RoundUpToPowerOf2((uint)Math.Max(8, (2 * hctx.Tags.NrTags) + 2)));
        var result = IoRing.TryCreate(entries, owned ? OwnedFlags : SharedFlags, out var ring);
        if (result < 0 || ring is null)
        {
            failure = $"io_uring_setup failed: {LibC.Describe(result)} (errno {-result})";
            return null;
        }

        try
        {
            failure = null;
            return new IoUringEngine(target, hctx, ring, owned, submitBatch, arena);
        }
        catch (IoUringException ex)
        {
            ring.Dispose();
            failure = ex.Message;
            return null;
        }
    }

    /// <inheritdoc />
    public override BlockStatus Queue(Request rq, bool last)
    {
        var command = Command(rq.Tag);
        command.Begin(rq);
        var status = Prepare(command, rq);
        if (status == BlockStatus.Ok)
        {
            if (_owned)
            {
                // Hand entries over once a batch is waiting. The round's last rides on the
                // system call with which the dispatch loop then waits for completions (or reaps,
                // when more work is queued), one system call instead of two, unless the device
                // has nothing else to do (adaptive batches): then it goes now, as fio submits,
                // so the device starts it without waiting for the rest of the round and the
                // loop's way to its wait (see IdleDeviceSubmissions).
                if (last ? IdleDevice() : _ring.Unsubmitted >= BatchThreshold())
                {
                    SubmitChecked(0, -1);
                }
            }
            else if (last || _ring.Unsubmitted >= BatchThreshold())
            {
                SubmitChecked(0, -1);
            }
        }
        else
        {
            command.End(status);
        }

        return status;
    }

    /// <inheritdoc />
    public override void Commit()
    {
        if (!_owned)
        {
            SubmitChecked(0, -1);
        }
    }

    /// <inheritdoc />
    /// <remarks>
    /// Enters the kernel only when it has something to do: entries to hand over, or, with
    /// DEFER_TASKRUN, completion work that only an enter runs. The kernel says when such work is
    /// pending (<c>IORING_SQ_TASKRUN</c>, with TASKRUN_FLAG); without that flag, an enter is
    /// made whenever requests are in the kernel. Completions that are already in the ring (a read
    /// from the page cache, a request that finished during its own submission) are taken without
    /// a system call; work still pending is run by the next enter, at the latest the loop's wait.
    /// </remarks>
    public int Reap()
    {
        if (_ring.Unsubmitted > 0 || CompletionWorkPending())
        {
            SubmitChecked(0, -1);
        }
        else
        {
            SkippedEnters++;
        }

        return Drain();
    }

    /// <summary>
    /// With DEFER_TASKRUN, whether an enter would post completions: the kernel's
    /// <c>IORING_SQ_TASKRUN</c> where the ring has TASKRUN_FLAG, else whenever requests are in
    /// the kernel.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private bool CompletionWorkPending()
    {
        var flags = _ring.Flags;
        if ((flags & IoUringSetupFlags.DeferTaskRun) == 0 || Volatile.Read(ref _inflight) == 0)
        {
            return false;
        }

        // Without the flag (a kernel that refused it also refused DEFER_TASKRUN, so this is only
        // a guard) nothing says whether work is pending: enter, as before.
        return (flags & IoUringSetupFlags.TaskRunFlag) == 0 || _ring.TaskWorkPending;
    }

    /// <inheritdoc />
    public int Wait(int timeoutMs)
    {
        if (!_wakeArmed)
        {
            ArmWake();
        }

        if (_ring.HasCompletions)
        {
            // Completions were posted by an earlier enter: take them without sleeping.
            return Reap();
        }

        if (!SubmitChecked(1, timeoutMs))
        {
            // The kernel refused the entries (EAGAIN, EBUSY) and so did not wait either: it wants
            // completions reaped first, or memory. Wait for a completion without submitting (with
            // DEFER_TASKRUN that is also what runs the completion work), at most a short while;
            // the loop comes round and submits again. Before, the loop came straight back into a
            // refused enter, spinning for as long as the refusal lasted. Always, not only when the
            // kernel holds a request: a count of requests against one of entries (the wake read
            // and a pre-flush's fsync are entries, not requests) missed the usual case (a review),
            // and with nothing held the wait is a 10 ms back-off.
            _ring.WaitCompletions(1, timeoutMs < 0 ? RefusedRetryMs : Math.Min(timeoutMs, RefusedRetryMs));
        }

        return Drain();
    }

    /// <inheritdoc />
    public void Wake()
    {
        ulong one = 1;
        LibC.Write(_eventFd, &one, sizeof(ulong));
    }

    /// <inheritdoc />
    public override void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        var drained = _owned ? DrainOwned() : StopReaper();

        // A zeroing fallback the reaper posts after this (it outlived the drain limit) fails at
        // once with Offline (PsyncWorker.Post after stop), so Abandon does not wait for it;
        // before, it waited in the stopped worker's ring for ever. One posted while the reaper
        // still drained, above, ran as ever.
        Interlocked.Exchange(ref _slowStopped, 1);
        Volatile.Read(ref _slow)?.Dispose();
        if (!_owned && _reaperThread!.IsAlive)
        {
            // The reaper still runs (the kernel held requests past the drain limit): it reads the
            // ring's mapped queues, so the ring is left to the process with the commands' buffers
            // rather than unmapped under it.
            return;
        }

        _ring.Dispose();
        if (_eventFd >= 0)
        {
            LibC.Close(_eventFd);
            NativeAllocations.AlignedFree(_eventBuffer, sizeof(ulong));
        }

        // Memory the kernel may still write into is never freed: with requests stuck in the
        // device after the drain limit, the commands' buffers are left to the process.
        if (drained)
        {
            base.Dispose();
        }
    }

    /// <summary>
    /// How many prepared entries make a submission. Fixed with <c>submit_batch = N</c>; never
    /// within a round with 0. Adaptive (the default): half of the requests the kernel already
    /// holds, at least 1 and at most <see cref="AdaptiveBatchLimit"/>. A device with little to do
    /// gets each request at once; a busy one gets them a few at a time, one system call, one plug
    /// and one doorbell for the lot, while it still has the other half to work on.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private uint BatchThreshold()
    {
        if (!_adaptive)
        {
            return _submitBatch == 0 ? uint.MaxValue : _submitBatch;
        }

        // _inflight counts prepared entries too; the ring's unsubmitted ones are not the kernel's.
        return AdaptiveBatch(Volatile.Read(ref _inflight) - (int)_ring.Unsubmitted);
    }

    /// <summary>
    /// With adaptive batches, whether the kernel holds none of this engine's requests: everything
    /// in flight is still in the ring, unsubmitted (the round's last request then goes at once;
    /// counted in <see cref="IdleDeviceSubmissions"/>).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private bool IdleDevice()
    {
        if (!_adaptive || Volatile.Read(ref _inflight) != (int)_ring.Unsubmitted)
        {
            return false;
        }

        IdleDeviceSubmissions++;
        return true;
    }

    /// <summary>The adaptive batch when the kernel holds <paramref name="held"/> requests: half of them, 1 to <see cref="AdaptiveBatchLimit"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static uint AdaptiveBatch(int held) => Math.Clamp((uint)Math.Max(0, held) / 2, 1u, AdaptiveBatchLimit);

    private BlockStatus Prepare(FileCommand command, Request rq)
    {
        switch (rq.Op)
        {
            case BlockOp.Read:
            case BlockOp.Write:
            {
                var mapped = command.MapData(rq, Target.MemoryAlignment);
                if (mapped != BlockStatus.Ok)
                {
                    return mapped;
                }

                var preflush = (rq.Flags & RequestFlags.PreFlush) != 0;
                if (!Reserve(preflush ? 2 : 1))
                {
                    return BlockStatus.DeviceResource;
                }

                if (preflush)
                {
                    var flush = _ring.TryGetSqe();
                    SetFile(flush, IoUringOp.Fsync);
                    flush->OpFlags = IoUringNative.FsyncDataSync;
                    flush->Flags |= IoSqeFlags.IoLink;
                    flush->UserData = Token(rq.Tag, command.Generation) | LinkBit;
                }

                var sqe = _ring.TryGetSqe();
                var read = rq.Op == BlockOp.Read;
                if (command.IovCount == 1)
                {
                    // Registered memory: the kernel pinned its pages once, at registration.
                    var fixedBuffer = _arena is not null && _arena.Contains(command.Iov->Base, command.Iov->Length);
                    SetFile(sqe, fixedBuffer
                        ? read ? IoUringOp.ReadFixed : IoUringOp.WriteFixed
                        : read ? IoUringOp.Read : IoUringOp.Write);
                    sqe->Address = (ulong)command.Iov->Base;
                    sqe->Length = (uint)command.Iov->Length;
                    if (fixedBuffer)
                    {
                        FixedIos++;
                    }
                }
                else
                {
                    SetFile(sqe, read ? IoUringOp.ReadV : IoUringOp.WriteV);
                    sqe->Address = (ulong)command.Iov;
                    sqe->Length = (uint)command.IovCount;
                }

                sqe->Offset = (ulong)command.Position;
                sqe->OpFlags = !read && (rq.Flags & RequestFlags.Fua) != 0 ? (uint)IoUringNative.RwfDsync : 0;
                sqe->UserData = Token(rq.Tag, command.Generation);
                break;
            }

            case BlockOp.Flush:
            {
                if (!Reserve(1))
                {
                    return BlockStatus.DeviceResource;
                }

                var sqe = _ring.TryGetSqe();
                SetFile(sqe, IoUringOp.Fsync);
                sqe->OpFlags = IoUringNative.FsyncDataSync;
                sqe->UserData = Token(rq.Tag, command.Generation);
                break;
            }

            case BlockOp.Discard:
            case BlockOp.WriteZeroes:
            {
                // A write-zeroes punches a hole unless REQ_NOUNMAP keeps the range provisioned,
                // as the loop driver does (FileEngine.ZeroFileRange has the fallbacks).
                var mode = rq.Op == BlockOp.Discard || (rq.Flags & RequestFlags.NoUnmap) == 0 ? LibC.FALLOC_FL_PUNCH_HOLE : LibC.FALLOC_FL_ZERO_RANGE;
                if (Target.IsBlockDevice || (rq.Op == BlockOp.WriteZeroes && Target.ZeroModeRefused(mode)))
                {
                    // BLKDISCARD / BLKZEROOUT block the caller: off the dispatch thread they go.
                    // So does a write-zeroes whose mode the file system refused before: its
                    // fallback, without asking for that mode again.
                    Slow().Post(rq);
                    return BlockStatus.Ok;
                }

                if (!Reserve(1))
                {
                    return BlockStatus.DeviceResource;
                }

                var sqe = _ring.TryGetSqe();
                SetFile(sqe, IoUringOp.Fallocate);
                sqe->Offset = (ulong)rq.Offset;
                sqe->Address = (ulong)rq.Bytes;
                sqe->Length = (uint)(LibC.FALLOC_FL_KEEP_SIZE | mode);
                sqe->UserData = Token(rq.Tag, command.Generation);
                break;
            }

            default:
                return BlockStatus.NotSupported;
        }

        Interlocked.Increment(ref _inflight);
        return BlockStatus.Ok;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static ulong Token(int tag, uint generation) => ((ulong)generation << 32) | (uint)tag;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void SetFile(IoUringSqe* sqe, IoUringOp op)
    {
        sqe->Opcode = op;
        sqe->Fd = _sqeFd;
        sqe->Flags = _fixedFile ? IoSqeFlags.FixedFile : IoSqeFlags.None;
    }

    // Makes room for n entries, submitting what is prepared if the ring is full.
    private bool Reserve(int n)
    {
        var free = _ring.SqEntries - _ring.Unsubmitted;
        if (free >= n)
        {
            return true;
        }

        SubmitChecked(0, -1);
        return _ring.SqEntries - _ring.Unsubmitted >= n;
    }

    private void ArmWake()
    {
        var sqe = _ring.TryGetSqe();
        if (sqe is null)
        {
            SubmitChecked(0, -1);
            sqe = _ring.TryGetSqe();
            if (sqe is null)
            {
                return;
            }
        }

        sqe->Opcode = IoUringOp.Read;
        sqe->Fd = _eventFd;
        sqe->Address = (ulong)_eventBuffer;
        sqe->Length = sizeof(ulong);
        sqe->UserData = WakeToken;
        _wakeArmed = true;
    }

    // Submits what is prepared (and waits, with minComplete). False when the kernel refused the
    // entries (EAGAIN: short of memory; EBUSY: it wants completions reaped first): they stay in
    // the ring, published. Ring dispatch submits them again on its next reap or wait, which the
    // loop always comes to. Mailbox dispatch has no such next call without further I/O (the
    // actor submits only in Queue and Commit), so the reaper thread is told to submit them
    // (SubmitLeft); once, nothing did, and a lone request waited in the ring for ever.
    private bool SubmitChecked(uint minComplete, int timeoutMs)
    {
        var result = _ring.Submit(minComplete, timeoutMs);
        if (result >= 0 || result == -LibC.ETIME)
        {
            if (!_owned && _ring.Unsubmitted != 0)
            {
                // A submission the kernel cut short (it ran out of memory part way).
                Volatile.Write(ref _leftUnsubmitted, 1);
            }

            return true;
        }

        if (result is -LibC.EBUSY or -LibC.EAGAIN)
        {
            if (!_owned)
            {
                Volatile.Write(ref _leftUnsubmitted, 1);
            }

            return false;
        }

        // Anything else is a broken ring (EBADF, EFAULT): a device error the control plane handles.
        Hctx.Queue.Events?.OnDeviceError(Hctx, new IoUringException(result, "io_uring_enter"));
        return true;
    }

    private int Drain()
    {
        Span<IoUringCqe> cqes = stackalloc IoUringCqe[ReapBatch];
        var completed = 0;
        int n;
        do
        {
            n = _ring.Reap(cqes);

            // One reap is one completion batch: its accounting reads the clock once (BlockTime),
            // after the entries were taken, so never before a request it completes was submitted.
            var outer = BlockTime.EnterBatch();
            try
            {
                for (var i = 0; i < n; i++)
                {
                    completed += Handle(cqes[i]);
                }
            }
            finally
            {
                BlockTime.ExitBatch(outer);
            }
        }
        while (n == ReapBatch);

        return completed;
    }

    private int Handle(in IoUringCqe cqe)
    {
        var data = cqe.UserData;
        if (data == WakeToken)
        {
            _wakeArmed = false;
            return 0;
        }

        if (data == StopToken)
        {
            _stopping = true;
            return 0;
        }

        var tag = (int)(data & TagMask);
        var generation = (uint)(data >> 32);
        var command = CommandOrNull(tag);
        var current = command?.Request is not null && command.Generation == generation;
        if ((data & LinkBit) != 0)
        {
            // The pre-flush of a linked pair: only its failure matters (the write then fails with
            // ECANCELED). It was not counted in flight.
            if (current && cqe.Result < 0)
            {
                command!.LinkStatus = BlockStatusExtensions.FromErrno(cqe.Result);
            }

            return 0;
        }

        // Every request entry was counted in flight when prepared, and leaves the kernel once, here,
        // even when its command no longer holds that request: uncounted, the reaper would wait for
        // it for ever and a stop would time out. No reset or reopen takes back a request the
        // kernel still holds (this driver is not resettable, and fault injection over it waits for
        // its requests before a reopen); once one did, and the retry began on the same command
        // while the kernel still wrote through the old entry's buffers.
        Interlocked.Decrement(ref _inflight);
        if (!current)
        {
            return 0;
        }

        if (cqe.Result == -LibC.EOPNOTSUPP && command!.LinkStatus == BlockStatus.Ok && command.Request is { Op: BlockOp.WriteZeroes } zeroes)
        {
            // The file system cannot do the mode asked (zero range, or the punch of a write-zeroes
            // that may unmap): the fallback (the other mode, or, unless REQ_NOFALLBACK, writing
            // the zeroes: ZeroFileRange) blocks for as long as the range takes, so it goes to the
            // worker thread, as BLKZEROOUT does, and the completions behind it on this ring do
            // not wait for it. The refusal is recorded: neither the ring nor the fallback asks
            // for that mode again (the fallback used to, once per request).
            Target.RefuseZeroMode((zeroes.Flags & RequestFlags.NoUnmap) != 0 ? LibC.FALLOC_FL_ZERO_RANGE : LibC.FALLOC_FL_PUNCH_HOLE);
            Slow().Post(zeroes);
            return 1;
        }

        Complete(command!, Finish(command!, cqe.Result));
        return 1;
    }

    // The worker that runs what blocks (the block devices' ioctls, the zeroing fallback), made on
    // first use by whichever thread needs it first (the dispatch thread or the reaper).
    private PsyncWorker Slow()
    {
        if (Volatile.Read(ref _slow) is { } slow)
        {
            return slow;
        }

        var made = new PsyncWorker(this, $"actorblk/{Hctx.Queue.Name}/uring{Hctx.Index}-slow");
        if (Interlocked.CompareExchange(ref _slow, made, null) is { } other)
        {
            made.Dispose();
            return other;
        }

        if (Volatile.Read(ref _slowStopped) != 0)
        {
            // Made by the reaper after Dispose stopped the worker it knew of (none then): stopped
            // too, so what is posted to it fails at once instead of running on a thread that
            // nothing stops. Dispose sets _slowStopped before it reads _slow, this reads
            // _slowStopped after publishing _slow (both full fences): one of the two sees the
            // other, perhaps both (the worker's Dispose is idempotent).
            made.Dispose();
        }

        return made;
    }

    private BlockStatus Finish(FileCommand command, int result)
    {
        if (command.LinkStatus != BlockStatus.Ok)
        {
            return command.LinkStatus;
        }

        var rq = command.Request!;
        if (result < 0)
        {
            return BlockStatusExtensions.FromErrno(result);
        }

        if (rq.Op is BlockOp.Read or BlockOp.Write && result < command.Remaining)
        {
            if (result == 0)
            {
                return BlockStatus.IoError;
            }

            // A short transfer (buffered I/O near the end of a file, say): finish it here. It
            // blocks, so the reap's cached time is stale afterwards.
            command.Advance(result);
            var status = command.TransferSync(Target.Fd, rq.Op, (rq.Flags & RequestFlags.Fua) != 0 ? LibC.RWF_DSYNC : 0);
            BlockTime.Invalidate();
            return status;
        }

        return BlockStatus.Ok;
    }

    // Ring dispatch, on the dispatch thread at exit: wait for what the kernel still holds, for as
    // long as it holds it, as blk_mq_destroy_queue waits for every request. Once, the wait ended
    // after 30 s and the ring was closed with requests still in the kernel: they never completed
    // here, the teardown failed them with Offline, and their buffers went back to their callers
    // while the kernel still read or wrote them (an outside slow-disk audit: reads landed in
    // buffers the caller had reused). Only a broken ring, which can reap nothing more, ends it.
    private bool DrainOwned()
    {
        while (Volatile.Read(ref _inflight) > 0)
        {
            var result = _ring.Submit(1, 1000);
            if (result < 0 && result is not (-LibC.ETIME or -LibC.EBUSY or -LibC.EAGAIN or -LibC.EINTR))
            {
                _broken = true;
                Hctx.Queue.Events?.OnDeviceError(Hctx, new IoUringException(result, "io_uring_enter"));
                break;
            }

            if (result is -LibC.EBUSY or -LibC.EAGAIN)
            {
                // Refused: reap (and run completion work) without submitting, rather than spin.
                _ring.WaitCompletions(1, RefusedRetryMs);
            }

            Drain();
        }

        return _inflight == 0;
    }

    // Mailbox dispatch, on the driver actor: tell the reaper to finish once nothing is in flight.
    private bool StopReaper()
    {
        var sqe = _ring.TryGetSqe();
        if (sqe is null)
        {
            SubmitChecked(0, -1);
            sqe = _ring.TryGetSqe();
        }

        if (sqe is not null)
        {
            sqe->Opcode = IoUringOp.Nop;
            sqe->UserData = StopToken;
            SubmitChecked(0, -1);
        }
        else
        {
            _stopping = true;
        }

        return _reaperThread!.Join(DrainLimit) && _inflight == 0;
    }

    private void ReaperLoop()
    {
        while (!_stopping || Volatile.Read(ref _inflight) > 0)
        {
            var result = Volatile.Read(ref _leftUnsubmitted) != 0 ? SubmitLeft() : _ring.WaitCompletions(1, 1000);
            if (result < 0 && result is not (-LibC.ETIME or -LibC.EBUSY or -LibC.EAGAIN or -LibC.EINTR))
            {
                // Nothing reaps this ring any more: Outstanding stops counting its requests.
                _broken = true;
                Hctx.Queue.Events?.OnDeviceError(Hctx, new IoUringException(result, "io_uring_enter"));
                return;
            }

            Drain();
        }
    }

    // Mailbox dispatch, on the reaper thread: hands the kernel the entries the actor's submission
    // left in the ring (refused with EAGAIN or EBUSY, or cut short), with the wait for a
    // completion on the same enter, as io_uring_submit_and_wait does. Only entries the actor
    // already published are taken (the kernel reads the published tail; the ring has no
    // SINGLE_ISSUER in this mode, and the kernel serialises this enter with the actor's). It
    // runs after the reap of the previous round, which is what EBUSY asks for. Refused again,
    // it waits a short while for completions without submitting and tries again next round.
    // The flag is cleared before the enter: a refusal of the actor's after that sets it again.
    private int SubmitLeft()
    {
        Interlocked.Exchange(ref _leftUnsubmitted, 0); // a full fence: the tail is read after the clear
        var left = _ring.PublishedUnsubmitted;
        if (left == 0)
        {
            // A later submission of the actor's took them.
            return _ring.WaitCompletions(1, 1000);
        }

        var result = _ring.WaitCompletions(1, 1000, left);
        if (result is -LibC.EAGAIN or -LibC.EBUSY || (result >= 0 && (uint)result < left))
        {
            Volatile.Write(ref _leftUnsubmitted, 1);
            if (result < 0)
            {
                result = _ring.WaitCompletions(1, RefusedRetryMs);
            }
        }

        return result;
    }
}
