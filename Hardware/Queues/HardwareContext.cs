using System.Numerics;
using ActorBlk.Hardware.Drivers;
using ActorBlk.Hardware.Requests;
using ActorBlk.Hardware.Rings;
using ActorBlk.Hardware.Tags;
using ActorBlk.Hardware.Topology;

namespace ActorBlk.Hardware.Queues;

/// <summary>
/// A hardware queue (<c>struct blk_mq_hw_ctx</c>): a submission ring that software contexts stage
/// requests into, a dispatch list of requests that must go first, the driver tags, and the state
/// that decides when it runs.
/// </summary>
/// <remarks>
/// <para>
/// Dispatch is split into three steps so that both dispatch modes run the same code:
/// <see cref="TakeBatch"/> and <see cref="FinishRound"/> on the queue's dispatcher, and
/// <see cref="Issue"/> (the driver calls) on the dispatch loop thread in ring mode or on the driver
/// actor in mailbox mode. The dispatch list is owned by the dispatcher; other threads hand
/// requests back through <see cref="Requeue"/>.
/// </para>
/// <para>
/// Rules reproduced (blk-mq-semantics §3.5): requests the driver refuses with Resource or
/// DeviceResource go back to the head in order; a round that starts with a non-empty dispatch list
/// sets SCHED_RESTART; after a refusal the queue reruns at once if SCHED_RESTART was clear, after
/// 3 ms for Resource, and on the next completion for DeviceResource.
/// </para>
/// </remarks>
public sealed partial class HardwareContext
{
    /// <summary>Delay before rerunning after <see cref="BlockStatus.Resource"/> (<c>BLK_MQ_RESOURCE_DELAY</c>).</summary>
    public static readonly TimeSpan ResourceDelay = TimeSpan.FromMilliseconds(3);

    /// <summary>Buckets of the dispatched histogram (<c>BLK_MQ_MAX_DISPATCH_ORDER</c>).</summary>
    public const int DispatchOrder = 7;

    /// <summary>Runs a ctx's CPU keeps before work moves to the next CPU (<c>BLK_MQ_CPU_WORK_BATCH</c>).</summary>
    public const int CpuWorkBatch = 8;

    private const int StateStopped = 1 << 0;
    private const int StateSchedRestart = 1 << 2;
    private const int StateInactive = 1 << 3;

    // The driver's Poll threw and the fault was reported; cleared when the reset or reopen ends.
    private const int StatePollFaulted = 1 << 4;

    private readonly long[] _dispatched = new long[DispatchOrder];
    private long _unstartedAccepted;
    private readonly TagShareAccount _ownAccount = new();
    private Request? _dispatchHead;
    private Request? _dispatchTail;
    private int _dispatchCount;

    // Requests the dispatcher staged from inside its own round (TryStageOwned): touched only by
    // the thread that owns the dispatcher, and read by others only once it has handed ownership
    // over (the owner flag, a quiesce's idle wait, or the loop's exit).
    private readonly Request[] _ownerStaged = new Request[OwnerStagedCapacity];
    private int _ownerStagedCount;
    private long _ownerStagedTotal;
    private int _state;
    private int _dispatchBusy;
    private int _waitIndex;
    private long _run;
    private long _queued;
    private SoftwareContext[] _contexts = [];

    internal HardwareContext(RequestQueue queue, int index, TagMap tags, HctxType type)
    {
        Queue = queue;
        Index = index;
        Tags = tags;
        Type = type;
        var ringSize = (int)BitOperations.RoundUpToPowerOf2((uint)Math.Max(2, tags.NrTags));
        Ring = new MpscRing<Request>(ringSize);
        Requeued = new MpscRing<Request>(ringSize);
        CpuMask = CpuSet.Empty;
        Account = _ownAccount;
    }

    /// <summary>The request queue (disk).</summary>
    public RequestQueue Queue { get; }

    /// <summary>Index among the queue's hardware queues (<c>queue_num</c>).</summary>
    public int Index { get; }

    /// <summary>The map this queue belongs to.</summary>
    public HctxType Type { get; internal set; }

    /// <summary>The driver tags serving this hardware queue.</summary>
    public TagMap Tags { get; }

    /// <summary>Per-hardware-queue driver state (<c>driver_data</c>), set by <c>InitHardwareContext</c>.</summary>
    public object? DriverData { get; set; }

    /// <summary>
    /// True when this hardware queue has a dispatch thread of its own (ring dispatch), on which
    /// <see cref="IBlockDriver.InitHardwareContext"/> runs and to which a driver may attach a
    /// <see cref="Reaper"/>. In mailbox dispatch the driver actor runs on shared threads.
    /// </summary>
    public bool HasDispatchThread => Queue.Runtime.Mode == DispatchMode.Ring;

    /// <summary>
    /// The driver's completion source served by the dispatch thread, set in
    /// <see cref="IBlockDriver.InitHardwareContext"/>; honoured only when <see cref="HasDispatchThread"/>.
    /// </summary>
    public ICompletionReaper? Reaper { get; set; }

    /// <summary>The CPUs mapped here (<c>cpumask</c>).</summary>
    public CpuSet CpuMask { get; private set; }

    /// <summary>The software contexts mapped here, in CPU order (<c>ctxs[]</c>).</summary>
    public IReadOnlyList<SoftwareContext> Contexts => Volatile.Read(ref _contexts);

    /// <summary>True when at least one context maps here (blk-mq-semantics §1 item 7).</summary>
    public bool IsMapped => Volatile.Read(ref _contexts).Length > 0;

    /// <summary>
    /// The CPU this queue's work runs on: the first online CPU of its mask, else its first CPU
    /// (<c>next_cpu</c> after mapping).
    /// </summary>
    public int HomeCpu { get; private set; }

    /// <summary>True while stopped (<c>BLK_MQ_S_STOPPED</c>): no dispatch at all.</summary>
    public bool IsStopped => (Volatile.Read(ref _state) & StateStopped) != 0;

    /// <summary>True while SCHED_RESTART is set: a completion reruns the queue.</summary>
    public bool NeedsRestart => (Volatile.Read(ref _state) & StateSchedRestart) != 0;

    /// <summary>True while every CPU of this queue is offline (<c>BLK_MQ_S_INACTIVE</c>).</summary>
    public bool IsInactive => (Volatile.Read(ref _state) & StateInactive) != 0;

    /// <summary>True while marked active on a shared tag set (<c>BLK_MQ_S_TAG_ACTIVE</c>).</summary>
    public bool IsTagActive => Volatile.Read(ref Account.Active) != 0;

    /// <summary>Requests holding a tag on this queue while the tag set is shared (<c>nr_active</c>).</summary>
    public int ActiveRequests => Volatile.Read(ref Account.NrActive);

    /// <summary>The most requests this queue held at once on its shared tags since <see cref="ResetPeakActive"/>.</summary>
    public int PeakActiveRequests => Volatile.Read(ref Account.PeakActive);

    /// <summary>Restarts <see cref="PeakActiveRequests"/> from the requests held now.</summary>
    public void ResetPeakActive() => Volatile.Write(ref Account.PeakActive, Volatile.Read(ref Account.NrActive));

    /// <summary>The <c>dispatch_busy</c> moving average.</summary>
    public int DispatchBusy => Volatile.Read(ref _dispatchBusy);

    /// <summary>Dispatch rounds run.</summary>
    public long RunCount => Volatile.Read(ref _run);

    /// <summary>Requests taken from the submission ring for dispatch (<c>queued</c>; requeues are not counted twice).</summary>
    public long QueuedCount => Volatile.Read(ref _queued);

    /// <summary>Requests waiting to be dispatched: the dispatch list and the submission ring.</summary>
    public int PendingCount => Volatile.Read(ref _dispatchCount) + Volatile.Read(ref _ownerStagedCount) + Ring.Count + Requeued.Count;

    /// <summary>True from a throw of the driver's <c>Poll</c> on this queue until the reset or reopen it caused has ended.</summary>
    public bool PollFaulted => (Volatile.Read(ref _state) & StatePollFaulted) != 0;

    /// <summary>Marks a throw of the driver's Poll; true for the first since the last <see cref="ClearPollFault"/>, which the caller reports.</summary>
    internal bool TryMarkPollFault() => (Interlocked.Or(ref _state, StatePollFaulted) & StatePollFaulted) == 0;

    /// <summary>A reset or reopen ended: the next throw of the driver's Poll is reported again.</summary>
    internal void ClearPollFault() => Interlocked.And(ref _state, ~StatePollFaulted);

    /// <summary>The exception a driver threw in the last faulted round, if any.</summary>
    public Exception? LastFault { get; private set; }

    /// <summary>
    /// Requests the driver accepted from <c>QueueRq</c> without calling <see cref="Request.Start"/>
    /// (a contract violation), which the queue then started for it. A driver that keeps to the
    /// contract leaves this at 0.
    /// </summary>
    public long UnstartedAccepted => Interlocked.Read(ref _unstartedAccepted);

    /// <summary>Histogram of requests queued per round: buckets 0, 1, 2, 4, 8, 16, 32+.</summary>
    public IReadOnlyList<long> DispatchedHistogram => _dispatched;

    /// <summary>The submission ring software contexts stage into.</summary>
    internal MpscRing<Request> Ring { get; }

    /// <summary>Requests handed back from other threads (requeues), spliced into the dispatch list by the dispatcher.</summary>
    internal MpscRing<Request> Requeued { get; }

    /// <summary>Fair-share accounting: this queue's own, or the request queue's with host-wide tags.</summary>
    internal TagShareAccount Account { get; set; }

    internal HardwareContext InitAccount(TagShareAccount? shared)
    {
        Account = shared ?? _ownAccount;
        return this;
    }

    /// <summary>Wires this queue to its CPUs (<c>blk_mq_map_swqueue</c>); called while the queue is frozen.</summary>
    internal void Map(CpuSet cpus, SoftwareContext[] contexts, CpuSet online, HctxType type)
    {
        CpuMask = cpus;
        Type = type;
        Volatile.Write(ref _contexts, contexts);
        var home = cpus.Intersect(online).First;
        HomeCpu = home >= 0 ? home : Math.Max(0, cpus.First);
        if (cpus.IsEmpty || cpus.Intersects(online))
        {
            Interlocked.And(ref _state, ~StateInactive);
        }
        else
        {
            Interlocked.Or(ref _state, StateInactive);
        }
    }

    /// <inheritdoc />
    public override string ToString() => $"hctx{Index} of {Queue.Name}";
}
