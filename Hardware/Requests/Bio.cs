using System.Runtime.CompilerServices;
using System.Threading.Tasks.Sources;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Tags;

namespace ActorBlk.Hardware.Requests;

/// <summary>Receives the completion of a <see cref="Bio"/> submitted with a call-back instead of a <c>ValueTask</c>.</summary>
public interface IBioEndIo
{
    /// <summary>
    /// Called once, on the completion context, when the bio has completed. The bio goes back to
    /// its pool when this returns; read its fields here, do not keep it. It must not block, and
    /// should not throw: an exception is caught, the I/O still counts as completed, and the queue
    /// counts it (<see cref="Queues.RequestQueue.EndIoFaults"/>) and reports it
    /// (<see cref="Queues.RequestQueue.EndIoFaulted"/>; a device of a <c>BlockLayer</c> logs it).
    /// </summary>
    void OnBioComplete(Bio bio, BlockStatus status);
}

/// <summary>
/// One contiguous I/O as a caller submitted it (<c>struct bio</c>): an operation, a start sector,
/// a length and a buffer. Requests carry one bio, or several when bios were merged.
/// </summary>
/// <remarks>
/// <para>
/// Bios are pooled per queue and are their own <see cref="IValueTaskSource"/>: the
/// <c>ValueTask</c> a caller awaits points at the bio, so submitting and awaiting an I/O allocates
/// nothing. The bio goes back to its pool when the awaiter reads the result.
/// </para>
/// <para>
/// Awaiting a bio that still sits in an unflushed plug flushes that plug first, the
/// counterpart of the kernel flushing a task's plug when the task goes to sleep.
/// </para>
/// </remarks>
public sealed class Bio : TagWaiter, IValueTaskSource, IValueTaskSource<BlockStatus>, IThreadPoolWorkItem, IFreezeWaiter
{
    /// <summary>log2 of the sector size.</summary>
    public const int SectorShift = 9;

    /// <summary>The sector size the block layer counts in (512 bytes), whatever the logical block size.</summary>
    public const int SectorSize = 1 << SectorShift;

    // _completed: Live until the first completion, then Completed; Pooled from its release until
    // it is rented again, so a completion that arrives after the bio went back to its pool is
    // refused (and counted) instead of resolving an I/O nobody submitted.
    private const int Live = 0;
    private const int Completed = 1;
    private const int Pooled = 2;

    private ManualResetValueTaskSourceCore<BlockStatus> _core;
    private int _pendingChildren;
    private int _childStatus;
    private int _completed;
    private int _awaited;

    internal Bio(BioPool? pool)
    {
        Pool = pool;
    }

    /// <summary>The operation.</summary>
    public BlockOp Op { get; internal set; }

    /// <summary>Flags of this bio.</summary>
    public RequestFlags Flags { get; internal set; }

    /// <summary>First sector (512-byte units from the start of the device).</summary>
    public long Sector { get; internal set; }

    /// <summary>Length in bytes (0 for a flush).</summary>
    public int Size { get; internal set; }

    /// <summary>Length in 512-byte sectors.</summary>
    public int Sectors => Size >> SectorShift;

    /// <summary>Byte offset on the device.</summary>
    public long Offset => Sector << SectorShift;

    /// <summary>The data buffer (empty for flush, discard and write-zeroes).</summary>
    public Memory<byte> Buffer { get; internal set; }

    /// <summary>The next bio of the same request, or null.</summary>
    public Bio? Next { get; internal set; }

    /// <summary>The CPU the bio was submitted on (the software context it uses).</summary>
    public int Cpu { get; internal set; }

    /// <summary>The status the bio completed with (valid once completed).</summary>
    public BlockStatus Status { get; private set; }

    /// <summary>A caller-chosen value carried through to the completion call-back (e.g. a request id).</summary>
    public long UserToken { get; set; }

    /// <summary>A caller-chosen object carried through to the completion call-back.</summary>
    public object? UserState { get; set; }

    /// <summary>
    /// The poll cookie of the request this bio went into (<c>(hctx &lt;&lt; 16) | tag</c>), or
    /// <see cref="PollCookie.None"/> when it was merged or has no request yet.
    /// </summary>
    public uint Cookie { get; internal set; } = PollCookie.None;

    internal BioPool? Pool { get; }

    internal RequestQueue? Queue { get; set; }

    internal BlockPlug? Plug { get; set; }

    /// <summary><see cref="BlockPlug.Sleeps"/> of <see cref="Plug"/> when the flow submitted this bio.</summary>
    internal long PlugSleeps { get; set; }

    internal Request? Request { get; set; }

    internal IBioEndIo? EndIo { get; set; }

    internal Bio? Parent { get; set; }

    /// <summary>True once the bio holds a reference on its queue's usage counter.</summary>
    internal bool Entered { get; set; }

    /// <summary>
    /// When a bio-based queue's I/O accounting of this bio started (<c>bio_start_io_acct</c>,
    /// <see cref="Queues.DiskStats.Start(BlockOp)"/>); 0 = not accounted.
    /// </summary>
    internal long StatStartNs { get; set; }

    /// <summary>True once a dying queue deferred this bio's failure to the thread pool (see RequestQueue.Enter).</summary>
    internal bool FailureDeferred { get; set; }

    /// <summary>
    /// The bio waited for a tag or for the queue to thaw: its request, built when it resumes, is
    /// issued at once instead of going into the plug. The flow may not await it for a long time,
    /// and a plugged request would hold its tag meanwhile: with every tag held that way, a bio the
    /// flow does await would wait for a tag for ever.
    /// </summary>
    internal bool Parked { get; set; }

    /// <summary>
    /// True once the flow awaits this bio, or the split parent it is a piece of. A request built
    /// for it after that moment (by a software-context actor, or after a wait for a tag or a thaw)
    /// must not stay in the plug: the flow already went to sleep and flushed it.
    /// </summary>
    internal bool IsAwaited => Volatile.Read(ref _awaited) != 0 || (Parent?.IsAwaited ?? false) || (EndIo is IStackedPiece piece && piece.Upper.IsAwaited);

    /// <summary>The token of the <c>ValueTask</c> currently backed by this bio.</summary>
    internal short Version => _core.Version;

    /// <summary>
    /// Whether the I/O of <paramref name="version"/> has ended: its result is set, or the bio has
    /// gone back to its pool since (and may be out again for another I/O). Unlike the status of
    /// the I/O's <c>ValueTask</c>, it never throws: an awaiter on another thread may consume the
    /// I/O and recycle the bio between any two reads of it (<see cref="BlockDevice.Poll(in PolledIo)"/>).
    /// </summary>
    internal bool HasEnded(short version)
    {
        if (_core.Version != version)
        {
            return true;
        }

        try
        {
            return _core.GetStatus(version) != ValueTaskSourceStatus.Pending;
        }
        catch (InvalidOperationException)
        {
            // Recycled between the version check and the status: the token is stale, so it ended.
            return true;
        }
    }

    internal bool RunContinuationsAsynchronously
    {
        set => _core.RunContinuationsAsynchronously = value;
    }

    /// <summary>A <c>ValueTask</c> that completes (or throws <see cref="BlockIoException"/>) with the bio.</summary>
    internal ValueTask AsValueTask() => new(this, _core.Version);

    /// <summary>A <c>ValueTask</c> that yields the bio's status without throwing.</summary>
    internal ValueTask<BlockStatus> AsStatusTask() => new(this, _core.Version);

    /// <summary>Makes this bio the parent of <paramref name="children"/> split pieces; it completes when they all have.</summary>
    internal void ExpectChildren(int children)
    {
        Volatile.Write(ref _childStatus, 0);
        Volatile.Write(ref _pendingChildren, children);
    }

    /// <summary>
    /// Completes the bio exactly once: resolves the awaiting <c>ValueTask</c> or calls the end-io
    /// call-back. A later call is refused, returns false and is counted in its queue's
    /// <see cref="RequestQueue.DoubleCompletions"/>: it is a block-layer bug made visible.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal bool Complete(BlockStatus status)
    {
        if (Interlocked.CompareExchange(ref _completed, Completed, Live) != Live)
        {
            RefuseSecondCompletion();
            return false;
        }

        return Finish(status);
    }

    /// <summary>
    /// Completes a bio of a request from the request's completion, which the request's own
    /// exactly-once mark (<see cref="Request.TryComplete"/>) already made the only one: nothing
    /// else completes a bio that belongs to a request, so the bio's mark is a plain write here,
    /// still checked, so a bio found already completed or back in its pool is refused and counted.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal bool CompleteFromRequest(BlockStatus status)
    {
        if (Volatile.Read(ref _completed) != Live)
        {
            RefuseSecondCompletion();
            return false;
        }

        _completed = Completed;
        return Finish(status);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private bool Finish(BlockStatus status)
    {
        Status = status;
        Request = null;
        Plug = null;
        if (Parent is { } parent)
        {
            // The pieces of a split bio may complete on different threads: each publishes its count.
            PublishStatsBeforeWaking();
            Parent = null;
            Release();
            parent.ChildCompleted(status);
            return true;
        }

        if (EndIo is { } endIo)
        {
            CallEndIo(endIo, status);
            Release();
            return true;
        }

        PublishStatsBeforeWaking();
        _core.SetResult(status);
        return true;
    }

    // A dispatch round keeps its accounting in its thread's batch until the round ends
    // (DiskStats.EnterBatch); a reader on that thread adds the batch first, a reader on another
    // does not see it. Whoever awaits a bio may read stat or inflight on any thread once it
    // resumes: the continuation itself may run here, but what it completes in turn (an async
    // method's task, AsTask, WhenAll) may wake code on the thread pool or a synchronization
    // context. So the batch goes to the slots before any awaiter is woken: an I/O is counted by
    // the time its await returns, wherever. End_io call-backs (the bench's path) keep the batch.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void PublishStatsBeforeWaking() => DiskStats.FlushThreadBatch();

    // The caller's end_io runs on the completion context: a driver's dispatch, a completion
    // worker, a timer thread, a software-context actor. An exception from it is the caller's, not
    // the device's: caught here, so it cannot pass for a device error (the null driver completes
    // inside QueueRq, whose catch took it for one and unstarted a request already freed), kill a
    // completion thread, or leave this bio out of its pool. The I/O counts as completed; the
    // queue counts and reports the exception (RequestQueue.EndIoFaults, EndIoFaulted).
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void CallEndIo(IBioEndIo endIo, BlockStatus status)
    {
        try
        {
            endIo.OnBioComplete(this, status);
        }
        catch (Exception ex)
        {
            ReportEndIoFault(ex);
        }
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private void ReportEndIoFault(Exception ex) => Queue?.ReportEndIoFault(ex);

    [MethodImpl(MethodImplOptions.NoInlining)]
    private void RefuseSecondCompletion()
    {
        if (Queue is { } queue)
        {
            queue.CountDoubleCompletion();
        }
        else
        {
            Pool?.CountRefusedCompletion();
        }
    }

    /// <summary>Makes a bio taken from its pool completable again.</summary>
    internal void Revive() => Volatile.Write(ref _completed, Live);

    private void ChildCompleted(BlockStatus status)
    {
        // The first error wins, as for a split bio whose pieces fail.
        if (status != BlockStatus.Ok)
        {
            Interlocked.CompareExchange(ref _childStatus, (int)status, 0);
        }

        if (Interlocked.Decrement(ref _pendingChildren) == 0)
        {
            Complete((BlockStatus)Volatile.Read(ref _childStatus));
        }
    }

    /// <summary>Resets the bio for its next use and returns it to its pool.</summary>
    internal void Release()
    {
        Next = null;
        Request = null;
        Plug = null;
        EndIo = null;
        Parent = null;
        Queue = null;
        UserState = null;
        UserToken = 0;
        Buffer = default;
        Entered = false;
        StatStartNs = 0;
        FailureDeferred = false;
        Parked = false;
        WokenBy = null;
        Cookie = PollCookie.None;
        Volatile.Write(ref _awaited, 0);
        Volatile.Write(ref _completed, Pooled);
        _core.Reset();
        Pool?.Return(this);
    }

    /// <inheritdoc />
    ValueTaskSourceStatus IValueTaskSource.GetStatus(short token) => _core.GetStatus(token);

    /// <inheritdoc />
    ValueTaskSourceStatus IValueTaskSource<BlockStatus>.GetStatus(short token) => _core.GetStatus(token);

    /// <inheritdoc />
    void IValueTaskSource.OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags)
    {
        FlushPlugBeforeWaiting();
        _core.OnCompleted(continuation, state, token, flags);
    }

    /// <inheritdoc />
    void IValueTaskSource<BlockStatus>.OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags)
    {
        FlushPlugBeforeWaiting();
        _core.OnCompleted(continuation, state, token, flags);
    }

    /// <inheritdoc />
    void IValueTaskSource.GetResult(short token)
    {
        var status = _core.GetResult(token);
        if (status == BlockStatus.Ok)
        {
            Release();
            return;
        }

        var error = new BlockIoException(Queue?.Name ?? "?", Op, Offset, Size, status);
        Release();
        throw error;
    }

    /// <inheritdoc />
    BlockStatus IValueTaskSource<BlockStatus>.GetResult(short token)
    {
        var status = _core.GetResult(token);
        Release();
        return status;
    }

    /// <summary>Resumes a parked submission on a thread-pool thread (tag or freeze wake-up in ring mode).</summary>
    void IThreadPoolWorkItem.Execute() => Queue?.ResumeSubmission(this);

    /// <inheritdoc />
    protected internal override void OnTagAvailable() => Queue?.Runtime.ResumeBio(this);

    /// <inheritdoc />
    void IFreezeWaiter.OnUnfrozen() => Queue?.ResumeAfterFreeze(this);

    /// <inheritdoc />
    public override string ToString() => $"bio {Op.Name()} sector {Sector} +{Sectors}";

    // The flow goes to sleep on this bio. Marking it awaited with a full fence before flushing
    // pairs with the submission path, which adds the request to the plug and then (after a full
    // fence) reads the mark: either this flush finds the request or the submitter flushes.
    private void FlushPlugBeforeWaiting()
    {
        Interlocked.Exchange(ref _awaited, 1);
        var plug = Request?.Plug ?? Plug;
        plug?.FlushBeforeWait();
    }
}

/// <summary>
/// The end_io of a bio a stacked device sent to a member: the flow awaits the stacked device's
/// bio, so the member's request counts as awaited too (in mailbox dispatch it may be built after
/// the flow went to sleep, and must then skip the plug).
/// </summary>
internal interface IStackedPiece
{
    /// <summary>The stacked device's bio this piece belongs to.</summary>
    Bio Upper { get; }
}
