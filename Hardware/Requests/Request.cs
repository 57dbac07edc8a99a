using System.Diagnostics.CodeAnalysis;
using System.Runtime.CompilerServices;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Tags;

namespace ActorBlk.Hardware.Requests;

/// <summary>The life-cycle state of a request (<c>enum mq_rq_state</c>).</summary>
public enum RequestState
{
    /// <summary>Not started: free, being built, staged for dispatch, or requeued.</summary>
    Idle = 0,

    /// <summary>Started by the driver (<see cref="Request.Start"/>); its deadline runs.</summary>
    InFlight = 1,

    /// <summary>Completed; about to be freed.</summary>
    Complete = 2,
}

/// <summary>
/// A block request: what a driver receives from <c>QueueRq</c>. One request is preallocated for
/// every tag and reused; a request carries one bio, or several after merges, all of one operation
/// over one contiguous sector range.
/// </summary>
/// <remarks>
/// <para>
/// The driver's per-request payload (the PDU, <c>cmd_size</c> bytes) is <see cref="Payload"/>: a
/// slice of one pinned slab per tag map, each element starting on a cache line. It is initialised
/// once by the driver's <c>InitRequest</c> and never reset per I/O (blk-mq-semantics §4).
/// </para>
/// <para>
/// Exactly once: whichever of a driver completion, a timeout handler or a teardown path moves the
/// request from in-flight to complete first wins; every later attempt is ignored. Drivers that
/// complete asynchronously pass the <see cref="Generation"/> they saw at start so a completion that
/// arrives after the tag was reused cannot complete someone else's I/O.
/// </para>
/// </remarks>
public sealed class Request
{
    internal const int StagedIdle = 0;
    internal const int Staged = 1;
    internal const int Merging = 2;

    // The generation (upper 32 bits) and the state (lower bits) share one word, so "complete the
    // incarnation I started" is a single compare-and-swap: a stale completion can never complete
    // a later incarnation of the tag, however it interleaves with the tag being reused.
    private long _word;
    private int _timedOut;
    private long _deadline;
    private int _stage;

    internal Request(TagMap owner, int tag, Memory<byte> payload)
    {
        Owner = owner;
        Tag = tag;
        Payload = payload;
    }

    /// <summary>The tag: this request's index in its tag map (reserved tags first).</summary>
    public int Tag { get; }

    /// <summary>The driver's per-request payload (<c>cmd_size</c> bytes, cache-line aligned).</summary>
    public Memory<byte> Payload { get; }

    /// <summary>A driver-owned object attached at <c>InitRequest</c> time (never reset per I/O).</summary>
    public object? DriverData { get; set; }

    /// <summary>The queue (disk) this request was last allocated for; null until its first allocation.</summary>
    public RequestQueue? Queue { get; internal set; }

    /// <summary>The hardware queue the request is dispatched on.</summary>
    public HardwareContext? Hctx { get; internal set; }

    /// <summary>The software context (submitting CPU) the request was allocated on.</summary>
    public SoftwareContext? Ctx { get; internal set; }

    /// <summary>The operation.</summary>
    public BlockOp Op { get; internal set; }

    /// <summary>Flags.</summary>
    public RequestFlags Flags { get; internal set; }

    /// <summary>First sector (512-byte units).</summary>
    public long Sector { get; internal set; }

    /// <summary>Total data length in bytes.</summary>
    public int Bytes { get; internal set; }

    /// <summary>Length in 512-byte sectors.</summary>
    public int Sectors => Bytes >> Bio.SectorShift;

    /// <summary>Byte offset on the device.</summary>
    public long Offset => Sector << Bio.SectorShift;

    /// <summary>Number of physical segments (one per bio: each bio is one contiguous buffer).</summary>
    public int Segments { get; internal set; }

    /// <summary>The first bio; follow <see cref="Bio.Next"/> for the rest, in sector order.</summary>
    public Bio? Bio { get; internal set; }

    /// <summary>The bios of the request, in sector order (allocation-free enumeration).</summary>
    public BioList Bios => new(Bio);

    /// <summary>The request's state.</summary>
    public RequestState State => (RequestState)(Volatile.Read(ref _word) & StateMask);

    /// <summary>Incremented every time the request is started; identifies one incarnation of the tag.</summary>
    public uint Generation => (uint)(Volatile.Read(ref _word) >> 32);

    /// <summary>
    /// True when the request is in flight, with the generation it is in flight under, read in one
    /// load (a scan that claims requests must not pair one use's state with another's generation).
    /// </summary>
    internal bool IsInFlight(out uint generation)
    {
        var word = Volatile.Read(ref _word);
        generation = (uint)(word >> 32);
        return (RequestState)(word & StateMask) == RequestState.InFlight;
    }

    /// <summary>The tag with the hardware queue index: <c>(hctx &lt;&lt; 16) | tag</c> (<c>blk_mq_unique_tag</c>).</summary>
    public uint UniqueTag => UniqueTags.Make(Hctx?.Index ?? 0, Tag);

    /// <summary>Timeout of this request in milliseconds; 0 until started means "the queue's io_timeout".</summary>
    public int TimeoutMs { get; set; }

    /// <summary>When the request expires, on the queue's clock (milliseconds).</summary>
    public long Deadline
    {
        get => Volatile.Read(ref _deadline);
        internal set => Volatile.Write(ref _deadline, value);
    }

    /// <summary>True once the timeout handler has been called for the current deadline.</summary>
    public bool TimedOut => Volatile.Read(ref _timedOut) != 0;

    /// <summary>How many times the request was retried after a device reset.</summary>
    public int Retries { get; internal set; }

    /// <summary>
    /// The device refused the request without running it and asked for it again later (an NBD
    /// server's <c>NBD_ESHUTDOWN</c>): the next time the block layer takes it back, the retry does
    /// not count against <see cref="Queues.RequestQueue.MaxRetries"/>.
    /// </summary>
    internal bool RetryNotCounted { get; set; }

    /// <summary>The status the request completed with.</summary>
    public BlockStatus Status { get; internal set; }

    /// <summary>The tag map that owns this request.</summary>
    internal TagMap Owner { get; }

    /// <summary>True when this request counts in its hardware queue's <c>nr_active</c> (allocated while the set was shared).</summary>
    internal bool CountsActive { get; set; }

    /// <summary>Incremented at every allocation; tells a poller whether the tag still holds the request it polls for.</summary>
    internal uint Allocation { get; private set; }

    /// <summary>The plug holding this request before dispatch, if any.</summary>
    internal BlockPlug? Plug { get; set; }

    /// <summary>When I/O accounting started (<c>start_time_ns</c>, <see cref="Queues.DiskStats.Start(BlockOp)"/>); 0 = not accounted.</summary>
    internal long StatStartNs { get; set; }

    /// <summary>Intrusive link: plug list, dispatch list or completion list (only one at a time).</summary>
    internal Request? NextInList { get; set; }

    internal Bio? BioTail { get; set; }

    /// <summary>
    /// Marks the request started (<c>blk_mq_start_request</c>): state in-flight, a fresh deadline,
    /// a new generation. Drivers call it in <c>QueueRq</c> before handing the request to hardware.
    /// </summary>
    /// <exception cref="InvalidOperationException">The request is not idle (started twice).</exception>
    public void Start()
    {
        var queue = Queue;
        var word = Volatile.Read(ref _word);
        if (queue is null || (word & StateMask) != (int)RequestState.Idle)
        {
            ThrowNotStartable();
        }

        ArmDeadline(queue);

        // Release: the deadline is written before the request is seen in flight. Only the owner of
        // an idle request starts it, so a plain increment of the generation is enough.
        Volatile.Write(ref _word, Word((uint)(word >> 32) + 1, RequestState.InFlight));
    }

    // The deadline of a request about to be started, from its own timeout or the queue's.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void ArmDeadline(RequestQueue queue)
    {
        if (TimeoutMs <= 0)
        {
            TimeoutMs = queue.IoTimeoutMs;
        }

        Deadline = queue.Clock.NowMilliseconds + TimeoutMs;
        Volatile.Write(ref _timedOut, 0);
    }

    /// <summary>
    /// Starts the idle incarnation <paramref name="generation"/> for a driver that accepted it
    /// without <see cref="Start"/> (a contract violation): false when it is no longer that idle
    /// incarnation.
    /// </summary>
    internal bool TryStartForDriver(uint generation)
    {
        var queue = Queue;
        var idle = Word(generation, RequestState.Idle);
        if (queue is null || Volatile.Read(ref _word) != idle)
        {
            return false;
        }

        ArmDeadline(queue);
        return Interlocked.CompareExchange(ref _word, Word(generation + 1, RequestState.InFlight), idle) == idle;
    }

    // Out of line: the message's formatting would otherwise cost the hot path a stack frame to clear.
    [DoesNotReturn]
    [MethodImpl(MethodImplOptions.NoInlining)]
    private void ThrowNotStartable() => throw new InvalidOperationException(
        Queue is null ? "The request is not allocated." : $"Request tag {Tag} started while {State}.");

    /// <summary>
    /// Completes a started request (<c>blk_mq_complete_request</c>): the completion runs here or
    /// is redirected to the submitting context as rq_affinity says. Returns false when the request
    /// was already completed (by a timeout handler, for instance) and its tag not yet reused.
    /// </summary>
    /// <remarks>
    /// This form completes whatever incarnation of the tag is in flight when it is called. Once the
    /// request may have ended by another way (a timeout, a reset or teardown taking it back, a
    /// completion of its own on another thread), the tag may already carry the next I/O, which
    /// this call would then complete with the wrong status and without its data (an outside
    /// driver audit: a second completion, 26 in 8,000, ended other I/Os with its status). A
    /// completion that can come late names its incarnation: read <see cref="Generation"/> right
    /// after <see cref="Start"/> and call <see cref="Complete(BlockStatus, uint)"/>.
    /// </remarks>
    public bool Complete(BlockStatus status) => Queue is { } q && q.CompleteRequest(this, status, Generation);

    /// <summary>
    /// Completes the incarnation started with <paramref name="generation"/>; a late completion
    /// for an earlier incarnation of the tag is ignored and returns false.
    /// </summary>
    public bool Complete(BlockStatus status, uint generation) => Queue is { } q && q.CompleteRequest(this, status, generation);

    /// <summary>
    /// Ends a started request in the caller's context without completion redirection
    /// (<c>blk_mq_end_request</c>, as null_blk does with irqmode 0). Returns false when the request
    /// was already completed.
    /// </summary>
    public bool End(BlockStatus status) => Queue is { } q && q.EndRequestDirect(this, status, Generation);

    /// <inheritdoc />
    public override string ToString() => $"rq tag {Tag} hctx {Hctx?.Index ?? -1} {Op.Name()} sector {Sector} +{Sectors} {State}";

    // ---- state transitions used by the block layer ----

    private const long StateMask = 0xFF;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static long Word(uint generation, RequestState state) => ((long)generation << 32) | (long)state;

    /// <summary>In flight -> complete, for the incarnation <paramref name="generation"/> only.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal bool TryComplete(uint generation)
    {
        var inFlight = Word(generation, RequestState.InFlight);
        return Interlocked.CompareExchange(ref _word, Word(generation, RequestState.Complete), inFlight) == inFlight;
    }

    /// <summary>Completes a request the driver never started (queue_rq returned an error, or teardown).</summary>
    internal bool TryCompleteUnstarted()
    {
        var word = Volatile.Read(ref _word);
        var idle = Word((uint)(word >> 32), RequestState.Idle);
        return Interlocked.CompareExchange(ref _word, Word((uint)(word >> 32), RequestState.Complete), idle) == idle;
    }

    internal void MarkIdle() => Volatile.Write(ref _word, Word(Generation, RequestState.Idle));

    /// <summary>Back to idle after QueueRq refused it or for a requeue (<c>__blk_mq_requeue_request</c>).</summary>
    internal void Unstart()
    {
        Volatile.Write(ref _timedOut, 0);
        var word = Volatile.Read(ref _word);
        var inFlight = Word((uint)(word >> 32), RequestState.InFlight);
        Interlocked.CompareExchange(ref _word, Word((uint)(word >> 32), RequestState.Idle), inFlight);
    }

    /// <summary>
    /// In flight -> idle for the incarnation <paramref name="generation"/> only, so a request is
    /// taken back from the driver (requeue after a reset or timeout) at most once and never after
    /// it completed.
    /// </summary>
    internal bool TryUnstart(uint generation)
    {
        var inFlight = Word(generation, RequestState.InFlight);
        if (Interlocked.CompareExchange(ref _word, Word(generation, RequestState.Idle), inFlight) != inFlight)
        {
            return false;
        }

        Volatile.Write(ref _timedOut, 0);
        return true;
    }

    internal bool TryMarkTimedOut() => Interlocked.CompareExchange(ref _timedOut, 1, 0) == 0;

    /// <summary>Takes back a mark <see cref="TryMarkTimedOut"/> set on an incarnation it was not meant for.</summary>
    internal void UnmarkTimedOut() => Interlocked.CompareExchange(ref _timedOut, 0, 1);

    /// <summary>
    /// Makes the incarnation <paramref name="generation"/> due at <paramref name="now"/>
    /// (<c>blk_abort_request</c>); false when it is no longer in flight. A deadline written after
    /// the tag was reused would expire the next request, which is healthy.
    /// </summary>
    internal bool TryExpire(uint generation, long now)
    {
        while (true)
        {
            // The deadline read before the state: if the state is still this incarnation's after
            // it, so was the deadline (a start writes its deadline before it publishes its state).
            var deadline = Deadline;
            if (!IsInFlight(out var current) || current != generation)
            {
                return false;
            }

            if (Interlocked.CompareExchange(ref _deadline, now, deadline) != deadline)
            {
                // The scan re-armed the timer meanwhile, or the tag was reused: look again.
                continue;
            }

            if (IsInFlight(out current) && current == generation)
            {
                return true;
            }

            // The tag was reused and started within the same millisecond, so with the same
            // deadline: the compare-and-swap wrote the new request's; it gets it back.
            Interlocked.CompareExchange(ref _deadline, deadline, now);
            return false;
        }
    }

    internal void ResetTimer(long now)
    {
        Deadline = now + TimeoutMs;
        Volatile.Write(ref _timedOut, 0);
    }

    // The staging lock lets a submitter merge a bio into a request that waits in a ring or
    // mailbox while the dispatcher may take it at any moment: both sides compare-and-swap the
    // stage word, and the dispatcher waits out a merge in progress.

    internal void MarkStaged() => Volatile.Write(ref _stage, Staged);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal bool TryBeginMerge() => Interlocked.CompareExchange(ref _stage, Merging, Staged) == Staged;

    internal void EndMerge() => Volatile.Write(ref _stage, Staged);

    /// <summary>Claims the request for dispatch; no merge can touch it afterwards.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal void ClaimForDispatch()
    {
        // Never staged for merging (merges off, or not mergeable): no merger can reach it, and it
        // needs no compare-and-swap. Only the submitter marks it staged, before it is published.
        var stage = Volatile.Read(ref _stage);
        if (stage == StagedIdle || (stage == Staged && Interlocked.CompareExchange(ref _stage, StagedIdle, Staged) == Staged))
        {
            return;
        }

        ClaimSlow();
    }

    internal bool IsStaged => Volatile.Read(ref _stage) != StagedIdle;

    [MethodImpl(MethodImplOptions.NoInlining)]
    private void ClaimSlow()
    {
        var spin = default(SpinWait);
        while (true)
        {
            var s = Volatile.Read(ref _stage);
            if (s == StagedIdle || Interlocked.CompareExchange(ref _stage, StagedIdle, Staged) == Staged)
            {
                return;
            }

            spin.SpinOnce(sleep1Threshold: -1);
        }
    }

    /// <summary>Fills the request from its first bio (<c>blk_mq_bio_to_request</c>).</summary>
    internal void InitFromBio(Bio bio, RequestQueue queue, SoftwareContext ctx, HardwareContext hctx)
    {
        Allocation++;

        // A tag is mostly reused by the same queue, context and hardware queue: comparing first
        // saves the write barriers of storing the same references again.
        if (Queue != queue)
        {
            Queue = queue;
        }

        if (Ctx != ctx)
        {
            Ctx = ctx;
        }

        if (Hctx != hctx)
        {
            Hctx = hctx;
        }

        Op = bio.Op;
        Flags = bio.Flags & ~RequestFlags.Reserved;
        Sector = bio.Sector;
        Bytes = bio.Size;
        Segments = bio.Op.HasData() ? 1 : 0;
        Bio = bio;
        BioTail = bio;
        bio.Next = null;
        bio.Request = this;
        TimeoutMs = 0;
        Retries = 0;
        RetryNotCounted = false;
        Status = BlockStatus.Ok;
        NextInList = null;
        Plug = null;
    }

    /// <summary>Detaches the bio chain and clears the per-I/O fields before the tag is freed.</summary>
    internal Bio? DetachBios()
    {
        var head = Bio;
        Bio = null;
        BioTail = null;
        Plug = null;
        NextInList = null;
        return head;
    }
}

/// <summary>The bios of a request, enumerated without allocating.</summary>
public readonly struct BioList
{
    private readonly Bio? _head;

    internal BioList(Bio? head) => _head = head;

    /// <summary>Gets the enumerator.</summary>
    public Enumerator GetEnumerator() => new(_head);

    /// <summary>Walks a bio chain.</summary>
    public struct Enumerator
    {
        private Bio? _next;

        internal Enumerator(Bio? head)
        {
            _next = head;
            Current = null!;
        }

        /// <summary>The current bio.</summary>
        public Bio Current { get; private set; }

        /// <summary>Advances to the next bio.</summary>
        public bool MoveNext()
        {
            if (_next is null)
            {
                return false;
            }

            Current = _next;
            _next = _next.Next;
            return true;
        }
    }
}

/// <summary><c>blk_mq_unique_tag</c> encoding: the hardware queue index in the upper 16 bits, the tag in the lower 16.</summary>
public static class UniqueTags
{
    /// <summary>Number of bits the tag occupies (<c>BLK_MQ_UNIQUE_TAG_BITS</c>).</summary>
    public const int TagBits = 16;

    /// <summary>Mask of the tag part.</summary>
    public const uint TagMask = (1u << TagBits) - 1;

    /// <summary><c>(hctx &lt;&lt; 16) | tag</c>: hctx 3 tag 5 -> 0x30005.</summary>
    public static uint Make(int hctx, int tag) => ((uint)hctx << TagBits) | ((uint)tag & TagMask);

    /// <summary>The hardware queue index of a unique tag.</summary>
    public static int HardwareQueueOf(uint unique) => (int)(unique >> TagBits);

    /// <summary>The tag of a unique tag.</summary>
    public static int TagOf(uint unique) => (int)(unique & TagMask);
}

/// <summary>Poll cookies: the unique tag of a polled request, or <see cref="None"/> (<c>BLK_QC_T_NONE</c>).</summary>
public static class PollCookie
{
    /// <summary>"Not pollable": submission did not produce a pollable request.</summary>
    public const uint None = 0xFFFFFFFF;
}
