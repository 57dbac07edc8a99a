using System.Numerics;
using System.Runtime.CompilerServices;
using ActorBlk.Hardware.Drivers;
using ActorBlk.Hardware.Requests;
using ActorBlk.Hardware.Rings;
using ActorBlk.Hardware.Tags;
using ActorBlk.Hardware.Topology;

namespace ActorBlk.Hardware.Queues;

/// <summary>What a hardware queue's dispatcher should do after a dispatch round.</summary>
public enum DispatchDecision
{
    /// <summary>Nothing is waiting: sleep until kicked.</summary>
    Idle,

    /// <summary>Run another round now.</summary>
    RerunNow,

    /// <summary>Requests were put back after <see cref="BlockStatus.Resource"/>: rerun after <see cref="HardwareContext.ResourceDelay"/>.</summary>
    RerunAfterDelay,

    /// <summary>Requests were put back after <see cref="BlockStatus.DeviceResource"/>: the next completion reruns the queue.</summary>
    WaitForCompletion,

    /// <summary>The driver reported a device error; dispatch stops until the device is reset.</summary>
    Faulted,
}

/// <summary>The result of handing one batch to the driver (<c>blk_mq_dispatch_rq_list</c>).</summary>
/// <param name="Queued">Requests the driver accepted.</param>
/// <param name="Processed">Requests consumed: accepted or ended with an error status.</param>
/// <param name="LastStatus">Status of the last QueueRq call.</param>
/// <param name="Fault">The exception a driver threw, if any.</param>
public readonly record struct DispatchOutcome(int Queued, int Processed, BlockStatus LastStatus, Exception? Fault);

/// <summary>Result of a timeout scan of one hardware queue.</summary>
/// <param name="Expired">Requests whose deadline had passed and whose driver handler was called.</param>
/// <param name="InFlight">Requests of this hardware queue that were in flight.</param>
public readonly record struct TimeoutScanResult(int Expired, int InFlight);

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
public sealed class HardwareContext
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

    private readonly long[] _dispatched = new long[DispatchOrder];
    private readonly TagShareAccount _ownAccount = new();
    private Request? _dispatchHead;
    private Request? _dispatchTail;
    private int _dispatchCount;
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
    public int PendingCount => Volatile.Read(ref _dispatchCount) + Ring.Count + Requeued.Count;

    /// <summary>The exception a driver threw in the last faulted round, if any.</summary>
    public Exception? LastFault { get; private set; }

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

    // ------------------------------------------------------------------ tags

    /// <summary>Result codes of <see cref="AllocateTag"/> besides a tag number.</summary>
    internal const int NoTag = -1;

    /// <summary>The bio was queued as a tag waiter and will be called back.</summary>
    internal const int TagWaiting = -2;

    /// <summary>
    /// Gets a tag for <paramref name="bio"/> (<c>blk_mq_get_tag</c>): from the reserved or normal
    /// tags, within the fair share when the tag set is shared; a bio that may wait is queued as a
    /// waiter instead of failing.
    /// </summary>
    internal int AllocateTag(Bio bio, int cpu)
    {
        var reserved = (bio.Flags & RequestFlags.Reserved) != 0;
        var tag = TryAllocateTag(cpu, reserved);
        if (tag >= 0 || (bio.Flags & RequestFlags.NoWait) != 0)
        {
            return tag;
        }

        if (reserved && Tags.NrReserved == 0)
        {
            return NoTag;
        }

        // Waiting: push what is pending so completions can free tags, queue, and retry once.
        Queue.Runtime.Kick(this);
        var bt = reserved ? Tags.ReservedTags : Tags.BitmapTags;
        var waitIndex = reserved ? 0 : Interlocked.Increment(ref _waitIndex);
        bt.AddWaiter(bio, waitIndex);
        tag = TryAllocateTag(cpu, reserved);
        if (tag < 0)
        {
            return TagWaiting;
        }

        if (bt.CancelWaiter(bio))
        {
            return tag;
        }

        // A waker already claimed the bio: its call-back will retry, so hand the tag back.
        ReleaseTag(Tags[tag], tag, cpu);
        return TagWaiting;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private int TryAllocateTag(int cpu, bool reserved)
    {
        var set = Queue.TagSet;
        if (!set.IsShared)
        {
            return reserved ? Tags.TryGetReserved(cpu) : Tags.TryGetNormal(cpu);
        }

        int active;
        int tag;
        if (reserved)
        {
            tag = Tags.TryGetReserved(cpu);
            if (tag < 0)
            {
                return tag;
            }

            active = Interlocked.Increment(ref Account.NrActive);
        }
        else
        {
            // [cur] marks the queue active before trying, so a failed first allocation still counts.
            MarkBusy();

            // The fair-share check and nr_active's increment are one atomic step, so concurrent
            // submitters on this queue cannot both pass at limit - 1 and overshoot the share.
            active = TryTakeShare(set.FairSharing ? ShareLimit() : int.MaxValue);
            if (active == 0)
            {
                return NoTag;
            }

            tag = Tags.TryGetNormal(cpu);
            if (tag < 0)
            {
                Interlocked.Decrement(ref Account.NrActive);
                return tag;
            }
        }

        Tags[tag].CountsActive = true;
        int peak;
        while (active > (peak = Volatile.Read(ref Account.PeakActive)) &&
               Interlocked.CompareExchange(ref Account.PeakActive, active, peak) != peak)
        {
        }

        return tag;
    }

    // nr_active + 1 if that stays within the limit (and is then counted), else 0.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private int TryTakeShare(int limit)
    {
        var n = Volatile.Read(ref Account.NrActive);
        while (true)
        {
            if (n >= limit)
            {
                return 0;
            }

            var seen = Interlocked.CompareExchange(ref Account.NrActive, n + 1, n);
            if (seen == n)
            {
                return n + 1;
            }

            n = seen;
        }
    }

    // hctx_may_queue (blk-mq-semantics §2.5 item 26) as a limit: an active queue on a shared set
    // may hold at most max(ceil(depth / active_queues), 4) tags; otherwise it is unlimited
    // (hctx_may_queue's early returns).
    private int ShareLimit()
    {
        var depth = Tags.BitmapTags.Depth;
        if (depth == 1 || Volatile.Read(ref Account.Active) == 0)
        {
            return int.MaxValue;
        }

        var users = Tags.ActiveQueues;
        return users == 0 ? int.MaxValue : FairShare(depth, users);
    }

    /// <summary>The fair share: <c>max(ceil(depth / users), 4)</c>. 128 / 3 -> 43; 64 / 32 -> 4; 62 / 5 -> 13.</summary>
    public static int FairShare(int depth, int users) => Math.Max((depth + users - 1) / users, 4);

    /// <summary>Marks the queue active on its shared tags (<c>blk_mq_tag_busy</c>).</summary>
    internal void MarkBusy()
    {
        var account = Account;
        if (Volatile.Read(ref account.Active) == 0 && Interlocked.CompareExchange(ref account.Active, 1, 0) == 0)
        {
            Tags.AddActiveQueue();
        }
    }

    /// <summary>Marks the queue idle (<c>blk_mq_tag_idle</c>): gives up its share and wakes every waiter.</summary>
    /// <returns>True when the queue was active.</returns>
    public bool MarkIdle()
    {
        var account = Account;
        if (Interlocked.CompareExchange(ref account.Active, 0, 1) != 1)
        {
            return false;
        }

        Tags.RemoveActiveQueue();
        Interlocked.Increment(ref account.IdleTransitions);
        return true;
    }

    /// <summary>How many times the queue went idle on its shared tags (<see cref="MarkIdle"/>).</summary>
    public long IdleTransitions => Volatile.Read(ref Account.IdleTransitions);

    /// <summary>Frees a request's tag (<c>__blk_mq_free_request</c>) and reruns the queue when SCHED_RESTART is set.</summary>
    internal void ReleaseTag(Request rq, int tag, int cpu)
    {
        if (rq.CountsActive)
        {
            rq.CountsActive = false;
            Interlocked.Decrement(ref Account.NrActive);
        }

        rq.MarkIdle();
        Tags.Free(tag, cpu);
    }

    /// <summary>A completion on this queue clears SCHED_RESTART and reruns it (<c>blk_mq_sched_restart</c>).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal void RestartIfNeeded()
    {
        if ((Volatile.Read(ref _state) & StateSchedRestart) != 0 &&
            (Interlocked.And(ref _state, ~StateSchedRestart) & StateSchedRestart) != 0)
        {
            Queue.Runtime.Kick(this);
        }
    }

    // ------------------------------------------------------------------ dispatch

    /// <summary>Stops the queue (<c>blk_mq_stop_hw_queue</c>): nothing is dispatched until <see cref="StartQueue"/>.</summary>
    public void StopQueue() => Interlocked.Or(ref _state, StateStopped);

    /// <summary>Starts a stopped queue and runs it (<c>blk_mq_start_hw_queue</c>).</summary>
    public void StartQueue()
    {
        Interlocked.And(ref _state, ~StateStopped);
        Queue.Runtime.Kick(this);
    }

    /// <summary>Hands a request back for dispatch ahead of new work, from any thread (<c>blk_mq_requeue_request</c>).</summary>
    public void Requeue(Request rq)
    {
        ArgumentNullException.ThrowIfNull(rq);
        rq.Unstart();
        PutBack(rq);
    }

    // An idle (unstarted) request goes back ahead of new work and the queue is run.
    internal void PutBack(Request rq)
    {
        if (!Requeued.TryPublish(rq))
        {
            throw new InvalidOperationException("The requeue ring overflowed; it is sized to the tag depth and cannot fill.");
        }

        Queue.Runtime.Kick(this);
    }

    /// <summary>
    /// Stages a request for the next round (the dispatcher's side of staging, used by the mailbox
    /// dispatcher when a request arrives as a message; ring dispatch publishes from submitters).
    /// </summary>
    /// <exception cref="InvalidOperationException">The ring is full; it is sized to the tag depth, so this is a bug.</exception>
    internal void Stage(Request rq)
    {
        ArgumentNullException.ThrowIfNull(rq);
        if (!Ring.TryPublish(rq))
        {
            throw new InvalidOperationException($"{this}: the staging ring overflowed; it is sized to the tag depth.");
        }
    }

    /// <summary>True when a round would find something to dispatch.</summary>
    public bool HasWork => Volatile.Read(ref _dispatchCount) > 0 || !Ring.IsEmpty || !Requeued.IsEmpty;

    /// <summary>
    /// First step of a round (dispatcher): fills <paramref name="batch"/> with requests to dispatch,
    /// the dispatch list first (setting SCHED_RESTART, as the kernel does when it finds earlier
    /// leftovers), then new requests from the ring. Returns 0 while stopped or quiesced.
    /// </summary>
    internal int TakeBatch(Span<Request> batch)
    {
        if (IsStopped || Queue.IsQuiesced || batch.Length == 0)
        {
            return 0;
        }

        // Counters written by the dispatcher only: plain writes, read racily by statistics.
        Volatile.Write(ref _run, _run + 1);
        SpliceRequeued();

        var n = 0;
        if (_dispatchHead is not null)
        {
            Interlocked.Or(ref _state, StateSchedRestart);
            while (n < batch.Length && _dispatchHead is { } rq)
            {
                _dispatchHead = rq.NextInList;
                rq.NextInList = null;
                batch[n++] = rq;
            }

            if (_dispatchHead is null)
            {
                _dispatchTail = null;
            }

            Volatile.Write(ref _dispatchCount, _dispatchCount - n);
            return n;
        }

        n = Ring.TakeBatch(batch);
        for (var i = 0; i < n; i++)
        {
            batch[i].ClaimForDispatch();
        }

        Volatile.Write(ref _queued, _queued + n);
        return n;
    }

    /// <summary>
    /// Second step (driver context): calls the driver for each request (<c>blk_mq_dispatch_rq_list</c>).
    /// Stops at the first Resource/DeviceResource refusal or driver exception; ends requests the
    /// driver rejected with another status; calls CommitRqs when the batch stopped early after
    /// something was queued.
    /// </summary>
    internal DispatchOutcome Issue(IBlockDriver driver, ReadOnlySpan<Request> batch)
    {
        ArgumentNullException.ThrowIfNull(driver);
        if (Queue.IsOffline)
        {
            // The device is gone or the queue torn down: nothing reaches the driver any more.
            foreach (var rq in batch)
            {
                Queue.EndRequestWithStatus(rq, BlockStatus.Offline, rq.Generation);
            }

            return new DispatchOutcome(0, batch.Length, BlockStatus.Ok, null);
        }

        var queued = 0;
        var status = BlockStatus.Ok;
        var i = 0;
        Exception? fault = null;
        for (; i < batch.Length; i++)
        {
            var rq = batch[i];
            var generation = rq.Generation;
            try
            {
                status = driver.QueueRq(this, rq, last: i == batch.Length - 1);
            }
            catch (Exception ex)
            {
                fault = ex;
                status = BlockStatus.IoError;
                rq.Unstart();
                break;
            }

            if (status == BlockStatus.Ok)
            {
                queued++;
                continue;
            }

            if (status is BlockStatus.Resource or BlockStatus.DeviceResource)
            {
                rq.Unstart();
                break;
            }

            Queue.EndRequestWithStatus(rq, status, generation);
        }

        var processed = i;
        if ((processed < batch.Length || status != BlockStatus.Ok) && queued > 0)
        {
            driver.CommitRqs(this);
        }

        return new DispatchOutcome(queued, processed, status, fault);
    }

    /// <summary>
    /// Third step (dispatcher): puts leftovers back at the head of the dispatch list in order,
    /// updates the busy average and histogram, and says when to run next.
    /// </summary>
    internal DispatchDecision FinishRound(ReadOnlySpan<Request> batch, DispatchOutcome outcome)
    {
        _dispatched[DispatchBucket(outcome.Queued)]++;
        var leftovers = batch[outcome.Processed..];
        if (leftovers.IsEmpty)
        {
            UpdateDispatchBusy(false);
            return HasWork ? DispatchDecision.RerunNow : DispatchDecision.Idle;
        }

        for (var i = leftovers.Length - 1; i >= 0; i--)
        {
            PushFront(leftovers[i]);
        }

        UpdateDispatchBusy(true);
        if (outcome.Fault is not null)
        {
            LastFault = outcome.Fault;
            StopQueue();
            return DispatchDecision.Faulted;
        }

        if (!NeedsRestart)
        {
            return DispatchDecision.RerunNow;
        }

        return outcome.LastStatus == BlockStatus.Resource ? DispatchDecision.RerunAfterDelay : DispatchDecision.WaitForCompletion;
    }

    /// <summary>One whole round on the calling thread: take, issue, finish (ring mode's dispatch loop).</summary>
    internal DispatchDecision RunOnce(IBlockDriver driver, Request[] scratch)
    {
        ArgumentNullException.ThrowIfNull(scratch);
        var n = TakeBatch(scratch);
        if (n == 0)
        {
            return IsStopped || Queue.IsQuiesced || !HasWork ? DispatchDecision.Idle : DispatchDecision.RerunNow;
        }

        var outcome = Issue(driver, scratch.AsSpan(0, n));
        var decision = FinishRound(scratch.AsSpan(0, n), outcome);
        Array.Clear(scratch, 0, n);
        return decision;
    }

    /// <summary>The histogram bucket of a round that queued <paramref name="queued"/> requests: 0, or min(6, ilog2(n) + 1).</summary>
    public static int DispatchBucket(int queued) => queued == 0 ? 0 : Math.Min(DispatchOrder - 1, BitOperations.Log2((uint)queued) + 1);

    /// <summary>Takes every request off the dispatch list and the rings (teardown, device reset).</summary>
    internal List<Request> DrainPending()
    {
        var all = new List<Request>();
        SpliceRequeued();
        while (_dispatchHead is { } rq)
        {
            _dispatchHead = rq.NextInList;
            rq.NextInList = null;
            all.Add(rq);
        }

        _dispatchTail = null;
        Volatile.Write(ref _dispatchCount, 0);
        while (Ring.TryTake(out var staged))
        {
            staged.ClaimForDispatch();
            all.Add(staged);
        }

        return all;
    }

    // blk_mq_update_dispatch_busy: ewma = (7 * ewma + (busy ? 16 : 0)) / 8, untouched at 0 when idle.
    internal void UpdateDispatchBusy(bool busy)
    {
        var ewma = _dispatchBusy;
        if (ewma == 0 && !busy)
        {
            return;
        }

        ewma = ((ewma * 7) + (busy ? 16 : 0)) / 8;
        Volatile.Write(ref _dispatchBusy, ewma);
    }

    private void PushFront(Request rq)
    {
        rq.NextInList = _dispatchHead;
        _dispatchHead = rq;
        _dispatchTail ??= rq;
        Volatile.Write(ref _dispatchCount, _dispatchCount + 1);
    }

    private void PushBack(Request rq)
    {
        rq.NextInList = null;
        if (_dispatchTail is null)
        {
            _dispatchHead = rq;
        }
        else
        {
            _dispatchTail.NextInList = rq;
        }

        _dispatchTail = rq;
        Volatile.Write(ref _dispatchCount, _dispatchCount + 1);
    }

    private void SpliceRequeued()
    {
        while (Requeued.TryTake(out var rq))
        {
            PushBack(rq);
        }
    }

    // ------------------------------------------------------------------ timeouts

    /// <summary>
    /// The timeout scan of this hardware queue (<c>blk_mq_timeout_work</c>, blk-mq-semantics §5):
    /// every in-flight request whose deadline has passed gets TIMED_OUT and the driver's handler,
    /// which either completed it (Done) or asks for another full timeout (ResetTimer). A shared
    /// queue with nothing in flight is marked idle.
    /// </summary>
    public TimeoutScanResult ScanTimeouts(long now, IBlockDriver driver)
    {
        ArgumentNullException.ThrowIfNull(driver);
        var expired = 0;
        var inFlight = 0;
        var requests = Tags.Requests;
        for (var t = 0; t < requests.Count; t++)
        {
            var rq = requests[t];
            if (rq.Hctx != this || rq.Queue != Queue || rq.State != RequestState.InFlight)
            {
                continue;
            }

            inFlight++;
            var generation = rq.Generation;
            if (rq.TimedOut || now < rq.Deadline || !rq.TryMarkTimedOut())
            {
                continue;
            }

            expired++;
            var action = driver.Timeout(rq);
            if (action == TimeoutAction.ResetTimer && rq.Generation == generation && rq.State == RequestState.InFlight)
            {
                rq.ResetTimer(now);
            }
        }

        // Idle only when nothing is started and no tag is held either: a request that holds a tag
        // but waits in a mailbox or on the dispatch list (mailbox dispatch keeps many there) is
        // work in progress, and marking its queue idle would hand its share to the others. The
        // kernel looks at started requests only; the difference is when a scan catches every
        // request of a busy queue between allocation and start.
        if (inFlight == 0 && Volatile.Read(ref Account.NrActive) == 0)
        {
            MarkIdle();
        }

        return new TimeoutScanResult(expired, inFlight);
    }

    /// <inheritdoc />
    public override string ToString() => $"hctx{Index} of {Queue.Name}";
}

/// <summary>Fair-share accounting of one hardware queue, or of a whole request queue with host-wide tags.</summary>
internal sealed class TagShareAccount
{
    /// <summary>1 while marked active (<c>BLK_MQ_S_TAG_ACTIVE</c> / <c>QUEUE_FLAG_HCTX_ACTIVE</c>).</summary>
    public int Active;

    /// <summary>Requests holding a tag while the set is shared (<c>nr_active</c>).</summary>
    public int NrActive;

    /// <summary>The highest <see cref="NrActive"/> since the last reset (a statistic for benchmarks).</summary>
    public int PeakActive;

    /// <summary>Active -> idle transitions (a statistic).</summary>
    public long IdleTransitions;
}
