using System.Collections.Concurrent;
using System.Runtime.CompilerServices;
using ActorBlk.Hardware.Drivers;
using ActorBlk.Hardware.Requests;
using ActorBlk.Hardware.Sysfs;
using ActorBlk.Hardware.Tags;
using ActorBlk.Hardware.Topology;

namespace ActorBlk.Hardware.Queues;

/// <summary>
/// A request queue (<c>struct request_queue</c>): one disk's software contexts, hardware queues,
/// usage counter and settings, and the path every bio takes from submission to completion.
/// </summary>
/// <remarks>
/// <para>
/// A bio's life (blk-mq-semantics §3): enter the usage counter (wait while frozen, fail when
/// dying); pick the software context of the submitting CPU and the hardware queue the CPU map
/// names; merge into a plugged or staged request if one is adjacent; otherwise take a tag (wait
/// for one, or fail with Again for no-wait bios) and fill that tag's preallocated request; hold it
/// in the plug or stage it on the hardware queue. The driver completes it; completion runs where
/// rq_affinity says, frees the tag, drops the usage reference and completes the bios.
/// </para>
/// <para>
/// Thread safety: submission and completion may run on any thread. Settings are single words and
/// may be changed at any time; structural changes (remapping) happen only while frozen.
/// </para>
/// </remarks>
public sealed class RequestQueue
{
    /// <summary><c>BLKDEV_DEFAULT_RQ</c>: the <c>nr_requests</c> of a queue that is not (yet) multi-queue.</summary>
    public const int DefaultNrRequests = 128;

    /// <summary>The timeout of a queue whose tag set names none: 30 s (blk-mq-semantics §5 item 1).</summary>
    public const int DefaultTimeoutMs = 30_000;

    private readonly CpuTopology _allocatedOn;
    private SoftwareContext[] _contexts = [];
    private HardwareContext[] _hctxs = [];
    private TagSet? _tagSet;
    private IBlockDriver? _driver;
    private IBioDriver? _bioDriver;
    private IQueueRuntime? _runtime;
    private volatile QueueLimits _limits;
    private int _quiesceDepth;
    private volatile int _mergePolicy;
    private volatile int _rqAffinity;
    private volatile int _ioTimeoutMs;
    private volatile bool _readOnly;
    private volatile bool _rotational;
    private volatile bool _ioPoll;
    private volatile int _nrRequests;
    private int _registered;
    private volatile bool _detached;
    private volatile int _kind;
    private volatile int _dead;
    private volatile bool _acceptsIo;
    private long _doubleCompletions;

    // Plugs holding (or that held) requests of this queue, until they are disposed: a freeze or
    // teardown flushes them so it never waits on a plugged request (see BlockPlug).
    private readonly ConcurrentDictionary<BlockPlug, byte> _plugs = new();

    /// <summary>
    /// Creates (allocates and initialises) a multi-queue request queue on <paramref name="tagSet"/>:
    /// <c>blk_mq_alloc_queue</c>, phase 1 (<see cref="Allocate"/>) and phase 2
    /// (<see cref="InitializeMq"/>) in one. The queue joins the set with <see cref="Tags.TagSet.AddQueue"/>
    /// (which may make it shared).
    /// </summary>
    /// <param name="name">The disk name ("nullb0").</param>
    /// <param name="tagSet">The tag set.</param>
    /// <param name="driver">The driver.</param>
    /// <param name="options">Run-time settings.</param>
    /// <param name="clock">Clock for request deadlines; the system clock by default.</param>
    public RequestQueue(string name, TagSet tagSet, IBlockDriver driver, QueueOptions? options = null, BlockClock? clock = null)
        : this(name, (tagSet ?? throw new ArgumentNullException(nameof(tagSet))).Map.Topology, (driver ?? throw new ArgumentNullException(nameof(driver))).Limits, clock)
    {
        InitializeMq(tagSet, driver, options);
    }

    // Phase 1 (blk_alloc_queue): a generic queue with limits, a usage counter in atomic mode, the
    // default settings and no dispatch machinery; it can become bio-based or multi-queue later.
    private RequestQueue(string name, CpuTopology topology, QueueLimits limits, BlockClock? clock)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(name);
        ArgumentNullException.ThrowIfNull(topology);
        ArgumentNullException.ThrowIfNull(limits);
        limits.Validate();

        Name = name;
        Clock = clock ?? BlockClock.System;
        _allocatedOn = topology;
        _limits = limits;
        _rqAffinity = (int)CompletionAffinity.CacheGroup;
        _ioTimeoutMs = DefaultTimeoutMs;
        _nrRequests = DefaultNrRequests;
        MaxRetries = DefaultMaxRetries;
        Attributes = new QueueAttributes(this);
        Stats = new DiskStats(Clock, name);
        Bios = new BioPool(64);
    }

    /// <summary>
    /// Allocates a placeholder queue (phase 1 of two-phase initialisation, <c>blk_alloc_queue</c>,
    /// blk-mq-semantics §10): a name, limits and a usage counter, nothing per CPU or per hardware
    /// queue. Make it bio-based with <see cref="InitializeBioBased"/> or multi-queue with
    /// <see cref="InitializeMq"/>; the choice is then fixed.
    /// </summary>
    public static RequestQueue Allocate(string name, CpuTopology topology, QueueLimits? limits = null, BlockClock? clock = null) =>
        new(name, topology, limits ?? new QueueLimits(), clock);

    /// <summary>
    /// Phase 2 for a multi-queue queue (<c>blk_mq_init_allocated_queue</c>): software contexts for
    /// every possible CPU, the hardware queues of <paramref name="tagSet"/>, the map, nr_requests =
    /// the tag depth, the set's timeout. The driver's limits replace the placeholder's.
    /// </summary>
    /// <exception cref="InvalidOperationException">The queue was already initialised (its type is fixed).</exception>
    public void InitializeMq(TagSet tagSet, IBlockDriver driver, QueueOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(tagSet);
        ArgumentNullException.ThrowIfNull(driver);
        driver.Limits.Validate();
        options ??= new QueueOptions();
        SetKind(QueueKind.MultiQueue);

        _tagSet = tagSet;
        _driver = driver;
        _limits = driver.Limits;
        ApplyOptions(options, tagSet.TimeoutMs);
        _ioPoll = options.IoPoll && tagSet.PollQueues > 0 && (driver.Features & DriverFeatures.Poll) != 0;
        _nrRequests = tagSet.QueueDepth;

        var map = tagSet.Map;
        var contexts = new SoftwareContext[map.Topology.PossibleCount];
        for (var cpu = 0; cpu < contexts.Length; cpu++)
        {
            contexts[cpu] = new SoftwareContext(this, cpu);
        }

        // With host-wide tags activity is accounted per request queue rather than per hardware queue.
        var queueAccount = tagSet.IsHostWide ? new TagShareAccount() : null;
        var hctxs = new HardwareContext[tagSet.HardwareQueueCount];
        for (var i = 0; i < hctxs.Length; i++)
        {
            hctxs[i] = new HardwareContext(this, i, tagSet.TagsOf(i), map.TypeOf(i)).InitAccount(queueAccount);
        }

        _contexts = contexts;
        _hctxs = hctxs;
        Remap(map);
        Bios = new BioPool(Math.Max(64, tagSet.QueueDepth * _hctxs.Length * 2));
    }

    /// <summary>
    /// Phase 2 for a bio-based queue: every bio goes to <paramref name="driver"/> whole (split only
    /// to the queue's limits), holding a usage reference until the driver ends it with
    /// <see cref="EndBio"/>. There are no tags, contexts or hardware queues.
    /// </summary>
    /// <exception cref="InvalidOperationException">The queue was already initialised (its type is fixed).</exception>
    public void InitializeBioBased(IBioDriver driver, QueueOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(driver);
        driver.Limits.Validate();
        SetKind(QueueKind.BioBased);
        _bioDriver = driver;
        _limits = driver.Limits;
        ApplyOptions(options ?? new QueueOptions(), DefaultTimeoutMs);
    }

    /// <summary>
    /// Replaces the bio driver of a bio-based queue (a new device-mapper table of the same type).
    /// Only while frozen and drained: no bio may be in the old driver.
    /// </summary>
    /// <returns>The driver replaced.</returns>
    /// <exception cref="InvalidOperationException">The queue is not bio-based, or bios are still in flight.</exception>
    public IBioDriver ReplaceBioDriver(IBioDriver driver)
    {
        ArgumentNullException.ThrowIfNull(driver);
        driver.Limits.Validate();
        if (_bioDriver is not { } old)
        {
            throw new InvalidOperationException($"Queue {Name} is not bio-based.");
        }

        if (Usage.Count != 0)
        {
            throw new InvalidOperationException($"Queue {Name} has {Usage.Count} bio(s) in flight; freeze it first.");
        }

        _bioDriver = driver;
        _limits = driver.Limits;
        return old;
    }

    private void SetKind(QueueKind kind)
    {
        if (_dead != 0)
        {
            throw new InvalidOperationException($"Queue {Name} is dead.");
        }

        if (Interlocked.CompareExchange(ref _kind, (int)kind, (int)QueueKind.Placeholder) != (int)QueueKind.Placeholder)
        {
            throw new InvalidOperationException($"Queue {Name} is already {Kind}; a queue's type is fixed once initialised.");
        }
    }

    private void ApplyOptions(QueueOptions options, int setTimeoutMs)
    {
        _mergePolicy = (int)options.MergePolicy;
        _rqAffinity = (int)options.RqAffinity;
        _ioTimeoutMs = options.IoTimeoutMs > 0 ? options.IoTimeoutMs : setTimeoutMs > 0 ? setTimeoutMs : DefaultTimeoutMs;
        _readOnly = options.ReadOnly;
        _rotational = options.Rotational;
        MaxRetries = options.MaxRetries;
        Continuation = options.Continuation;
    }

    /// <summary>What the queue is: a placeholder, bio-based or multi-queue.</summary>
    public QueueKind Kind => (QueueKind)_kind;

    /// <summary>Where the queue is in its life (blk-mq-semantics §9-§10).</summary>
    public QueueState State =>
        _dead != 0 ? QueueState.Dead
        : Usage.IsDying ? QueueState.Dying
        : IsRegistered ? QueueState.Registered
        : Kind != QueueKind.Placeholder ? QueueState.Initialized
        : QueueState.Allocated;

    /// <summary>The bio driver of a bio-based queue, else null.</summary>
    public IBioDriver? BioDriver => _bioDriver;

    /// <summary>The disk name.</summary>
    public string Name { get; }

    /// <summary>The tag set.</summary>
    /// <exception cref="InvalidOperationException">The queue is not multi-queue.</exception>
    public TagSet TagSet => _tagSet ?? throw NotMultiQueue();

    /// <summary>The driver.</summary>
    /// <exception cref="InvalidOperationException">The queue is not multi-queue.</exception>
    public IBlockDriver Driver => _driver ?? throw NotMultiQueue();

    /// <summary>The clock request deadlines are measured on.</summary>
    public BlockClock Clock { get; }

    /// <summary>The usage counter.</summary>
    public QueueUsageCounter Usage { get; } = new();

    /// <summary>The queue's attribute tree (sysfs): published at registration, rebuilt after each re-map.</summary>
    public QueueAttributes Attributes { get; }

    /// <summary>The disk's I/O accounting (<c>block/&lt;dev&gt;/stat</c> and <c>inflight</c>).</summary>
    public DiskStats Stats { get; }

    /// <summary>Pool of bios for this queue.</summary>
    public BioPool Bios { get; private set; }

    /// <summary>Where awaited I/O continues.</summary>
    public CompletionContinuation Continuation { get; private set; }

    /// <summary>The queue's limits (capacity, block sizes, request size).</summary>
    public QueueLimits Limits => _limits;

    /// <summary>The topology of the current CPU map (the one the queue was allocated on, until it is multi-queue).</summary>
    public CpuTopology Topology => _tagSet?.Map.Topology ?? _allocatedOn;

    /// <summary>One software context per possible CPU.</summary>
    public IReadOnlyList<SoftwareContext> SoftwareContexts => _contexts;

    /// <summary>The hardware queues.</summary>
    public IReadOnlyList<HardwareContext> HardwareContexts => _hctxs;

    /// <summary>The dispatch runtime; set by <see cref="Start"/>.</summary>
    public IQueueRuntime Runtime => _runtime ?? throw new InvalidOperationException($"Queue {Name} has no dispatch runtime: it was never started.");

    /// <summary>
    /// True once the queue takes I/O: a multi-queue queue once a runtime serves it, a bio-based one
    /// once registered. A dying queue still accepts submissions, which then fail with Offline.
    /// </summary>
    public bool AcceptsIo => _acceptsIo;

    /// <summary>True once a runtime serves the queue.</summary>
    public bool IsStarted => Volatile.Read(ref _runtime) is not null;

    /// <summary>Receives device errors and other data-plane facts for the control plane.</summary>
    public IQueueEvents? Events { get; set; }

    /// <summary>True once registered (<see cref="Register"/>).</summary>
    public bool IsRegistered => Volatile.Read(ref _registered) != 0;

    /// <summary>True while quiesced: requests can be built and staged but none is dispatched.</summary>
    public bool IsQuiesced => Volatile.Read(ref _quiesceDepth) > 0;

    /// <summary>True once the queue started dying.</summary>
    public bool IsDying => Usage.IsDying;

    /// <summary>The <c>nomerges</c> setting.</summary>
    public MergePolicy MergePolicy
    {
        get => (MergePolicy)_mergePolicy;
        set => _mergePolicy = (int)value;
    }

    /// <summary>The <c>rq_affinity</c> setting.</summary>
    public CompletionAffinity RqAffinity
    {
        get => (CompletionAffinity)_rqAffinity;
        set => _rqAffinity = (int)value;
    }

    /// <summary>The <c>io_timeout</c> setting, milliseconds (never 0).</summary>
    public int IoTimeoutMs
    {
        get => _ioTimeoutMs;
        set
        {
            ArgumentOutOfRangeException.ThrowIfLessThan(value, 1);
            _ioTimeoutMs = value;
        }
    }

    /// <summary>The device refuses writes.</summary>
    public bool ReadOnly
    {
        get => _readOnly;
        set => _readOnly = value;
    }

    /// <summary>The device is rotational.</summary>
    public bool Rotational
    {
        get => _rotational;
        set => _rotational = value;
    }

    /// <summary>True when polled I/O is possible: poll queues exist, the driver polls and io_poll is on.</summary>
    public bool CanPoll => _ioPoll;

    /// <summary>The <c>nr_requests</c> value: usable tags per hardware queue.</summary>
    public int NrRequests => _nrRequests;

    /// <summary>Starts the queue on a dispatch runtime (ring loops or actors).</summary>
    public void Start(IQueueRuntime runtime)
    {
        ArgumentNullException.ThrowIfNull(runtime);
        if (Kind != QueueKind.MultiQueue)
        {
            throw new InvalidOperationException($"Queue {Name} is {Kind.ToString().ToLowerInvariant()}; only a multi-queue queue has a dispatch runtime.");
        }

        if (Interlocked.CompareExchange(ref _runtime, runtime, null) is not null)
        {
            throw new InvalidOperationException($"Queue {Name} is already started.");
        }

        runtime.Attach(this);
        _acceptsIo = true;
    }

    /// <summary>
    /// Registers the queue (<c>blk_register_queue</c>): the usage counter switches from atomic to
    /// per-CPU mode now that the queue is known to be a real device.
    /// </summary>
    public void Register()
    {
        if (Kind == QueueKind.Placeholder)
        {
            throw new InvalidOperationException($"Queue {Name} is a placeholder: initialise it as bio-based or multi-queue before registering it.");
        }

        if (Interlocked.Exchange(ref _registered, 1) == 0)
        {
            Usage.SwitchToPerCpu(Topology.PossibleCount);
            Attributes.Publish();
            BlockMetrics.Add(this);
            if (Kind == QueueKind.BioBased)
            {
                _acceptsIo = true;
            }
        }
    }

    // ------------------------------------------------------------------ submission

    /// <summary>
    /// Submits a prepared bio (<c>submit_bio</c>): strips flush semantics the device does not need,
    /// splits it to the request size limit, and runs the rest of the path in the bio's software context.
    /// </summary>
    public void Submit(Bio bio)
    {
        ArgumentNullException.ThrowIfNull(bio);
        bio.Queue = this;
        if (bio.Cpu < 0 || bio.Cpu >= _contexts.Length)
        {
            bio.Cpu = CurrentCpu.Resolve(Topology);
        }

        var limits = _limits;
        if (!limits.VolatileWriteCache)
        {
            // Without a volatile write cache there is nothing to flush: an empty flush completes at once.
            if (bio.Op == BlockOp.Flush)
            {
                bio.Complete(BlockStatus.Ok);
                return;
            }

            bio.Flags &= ~(RequestFlags.PreFlush | RequestFlags.Fua);
        }

        // A bio-based queue hands the whole bio to its driver, holding a usage reference until the
        // driver ends it, so freezes and teardown drain bio-based I/O as they drain requests.
        if (_bioDriver is { } bioDriver)
        {
            bio.Plug = null;
            if (Enter(bio))
            {
                bioDriver.SubmitBio(this, bio);
            }

            return;
        }

        var max = MaxSectorsFor(bio.Op, limits);
        if (bio.Sectors > max && max > 0)
        {
            Split(bio, max);
            return;
        }

        // The submitter takes the queue reference (bio_queue_enter in submit_bio_noacct), so a bio
        // still travelling to its software context is drained by a freeze or a teardown like one
        // already staged, in either dispatch mode.
        if (Enter(bio))
        {
            Runtime.Submit(_contexts[bio.Cpu], bio);
        }
    }

    /// <summary>
    /// Ends a bio of a bio-based queue (<c>bio_endio</c> from its driver): drops the usage reference
    /// it held and completes it. Later calls for the same bio are ignored.
    /// </summary>
    public void EndBio(Bio bio, BlockStatus status)
    {
        ArgumentNullException.ThrowIfNull(bio);
        if (bio.Entered)
        {
            bio.Entered = false;
            Usage.Exit(bio.Cpu);
        }

        bio.Complete(status);
    }

    private InvalidOperationException NotMultiQueue() =>
        new($"Queue {Name} is {Kind.ToString().ToLowerInvariant()}, not multi-queue: it has no tag set, driver or hardware queues.");

    // Takes the bio's usage reference, or completes it (Again, Offline), or parks it until the
    // queue thaws. Returns true when the bio may proceed.
    private bool Enter(Bio bio)
    {
        // Read before the bio may be parked: once it waits, a thaw on another thread may resume and
        // complete it, and a completed bio belongs to its pool again.
        var plug = bio.Plug;
        var result = (bio.Flags & RequestFlags.NoWait) != 0 ? Usage.TryEnter(bio.Cpu) : Usage.EnterOrWait(bio.Cpu, bio);
        switch (result)
        {
            case EnterResult.Entered:
                bio.Entered = true;
                return true;
            case EnterResult.Waiting:
                // Like a task that sleeps: flush its plug so plugged requests can drain the freeze.
                plug?.FlushBeforeWait();
                return false;
            case EnterResult.Frozen:
                bio.Complete(BlockStatus.Again);
                return false;
            default:
                // A dying queue fails the bio on the thread pool, not inline: a caller that
                // resubmits at once after every error would otherwise spin on its thread (the
                // failure completes synchronously, so its await never yields) and a storm of them
                // starves the threads teardown itself needs. Deferred, each retry is one queued
                // work item (the bio itself: nothing is allocated) and teardown keeps its turn.
                if (!bio.FailureDeferred)
                {
                    bio.FailureDeferred = true;
                    ThreadPool.UnsafeQueueUserWorkItem(bio, preferLocal: false);
                    return false;
                }

                bio.Complete(BlockStatus.Offline);
                return false;
        }
    }

    /// <summary>
    /// The body of <c>blk_mq_submit_bio</c>, run in the bio's software context (the submitting
    /// thread in ring mode, the software-context actor in mailbox mode). Also the re-entry point of
    /// a bio that waited for a tag or for the queue to unfreeze.
    /// </summary>
    internal void SubmitBio(Bio bio)
    {
        ArgumentNullException.ThrowIfNull(bio);
        if (!bio.Entered)
        {
            // A bio resumed after waiting for the queue to thaw.
            if (!Enter(bio))
            {
                return;
            }
        }
        else if (_detached)
        {
            // Entered before the queue died, but dispatch has been torn down since (a tag waiter
            // woken at teardown, or a bio still on its way to its context).
            FailEntered(bio, BlockStatus.Offline);
            return;
        }

        var type = HctxType.Default;
        if ((bio.Flags & RequestFlags.Polled) != 0)
        {
            if (!_ioPoll)
            {
                FailEntered(bio, BlockStatus.NotSupported);
                return;
            }

            type = HctxType.Poll;
        }
        else if (bio.Op == BlockOp.Read && TagSet.ReadQueues > 0)
        {
            type = HctxType.Read;
        }

        var ctx = _contexts[bio.Cpu];
        var hctx = _hctxs[TagSet.Map.HardwareQueueFor(bio.Cpu, type)];

        if (_mergePolicy != (int)MergePolicy.Off && MergeRules.IsMergeable(bio) && TryMergeBio(bio, ctx, hctx))
        {
            return;
        }

        var plug = bio.Plug; // read before the bio may be parked as a tag waiter (see Enter)
        var tag = hctx.AllocateTag(bio, ctx.Cpu);
        if (tag < 0)
        {
            if (tag == HardwareContext.TagWaiting)
            {
                plug?.FlushBeforeWait();
            }
            else
            {
                FailEntered(bio, BlockStatus.Again);
            }

            return;
        }

        var rq = hctx.Tags[tag];
        rq.InitFromBio(bio, this, ctx, hctx);
        rq.StatStartNs = Stats.Start(bio.Op);
        ctx.CountDispatched(IsSync(bio.Op, bio.Flags));
        if (type == HctxType.Poll)
        {
            bio.Cookie = rq.UniqueTag;
        }

        if (plug is not null && plug.Add(rq))
        {
            FlushIfSleepingOrFrozen(plug, bio);
            return;
        }

        Issue(rq);
    }

    /// <summary>
    /// After a request went into <paramref name="plug"/>: flush it at once when the flow already
    /// awaits the bio (the request was built after the flow went to sleep: by a software-context
    /// actor, or after a wait for a tag or a thaw) or when the queue is freezing or dying (the
    /// freeze flushed the queue's plugs already and must not wait for this one). The bio may
    /// belong to its pool again by now; reading its mark then only costs a needless flush.
    /// </summary>
    private void FlushIfSleepingOrFrozen(BlockPlug plug, Bio bio)
    {
        // Full fence after the add, pairing with Bio's await mark and with Freeze's gate change.
        Interlocked.MemoryBarrier();
        if (bio.IsAwaited || Usage.IsFrozen)
        {
            plug.Flush();
        }
    }

    /// <summary>Registers a plug that holds a request of this queue (until <see cref="UntrackPlug"/>).</summary>
    internal void TrackPlug(BlockPlug plug) => _plugs.TryAdd(plug, 0);

    /// <summary>Forgets a plug that was disposed.</summary>
    internal void UntrackPlug(BlockPlug plug) => _plugs.TryRemove(plug, out _);

    // A freeze or teardown hands every plugged request to its hardware queue, so the drain it
    // waits for never depends on a flow that has not awaited yet (blk_flush_plug from schedule).
    private void FlushPlugs()
    {
        if (_plugs.IsEmpty)
        {
            return;
        }

        foreach (var plug in _plugs.Keys)
        {
            plug.Flush();
        }
    }

    /// <summary>Continues a parked submission (tag or freeze wait ended).</summary>
    internal void ResumeSubmission(Bio bio)
    {
        if (_bioDriver is { } bioDriver)
        {
            if (bio.Entered || Enter(bio))
            {
                bioDriver.SubmitBio(this, bio);
            }

            return;
        }

        SubmitBio(bio);
    }

    /// <summary>A bio that waited for the queue to thaw tries again: through the runtime, or on the thread pool for a bio-based queue (it has none).</summary>
    internal void ResumeAfterFreeze(Bio bio)
    {
        if (_bioDriver is not null)
        {
            ThreadPool.UnsafeQueueUserWorkItem(bio, preferLocal: false);
            return;
        }

        Runtime.ResumeBio(bio);
    }

    /// <summary>Stages a request on its hardware queue, registering it in its context's merge window.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal void Issue(Request rq)
    {
        if (_detached)
        {
            EndRequestWithStatus(rq, BlockStatus.Offline, rq.Generation);
            return;
        }

        PrepareStaging(rq);
        Runtime.Stage(rq.Hctx!, rq);
    }

    /// <summary>Stages a batch of requests of one hardware queue (a plug flush).</summary>
    internal void IssueBatch(HardwareContext hctx, ReadOnlySpan<Request> requests)
    {
        if (_detached)
        {
            // A plug flushed after teardown: nothing will dispatch these any more.
            foreach (var rq in requests)
            {
                EndRequestWithStatus(rq, BlockStatus.Offline, rq.Generation);
            }

            return;
        }

        foreach (var rq in requests)
        {
            PrepareStaging(rq);
        }

        Runtime.StageBatch(hctx, requests);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void PrepareStaging(Request rq)
    {
        if (_mergePolicy != (int)MergePolicy.Off && MergeRules.IsMergeable(rq))
        {
            rq.MarkStaged();
            rq.Ctx!.Window(rq.Hctx!.Type).Add(rq);
        }
    }

    private bool TryMergeBio(Bio bio, SoftwareContext ctx, HardwareContext hctx)
    {
        // Once merged, the bio belongs to its request: the request may be dispatched and completed
        // on another thread at once, and the bio returned to its pool and reused. Nothing below a
        // successful merge may touch it, so everything needed afterwards is read first.
        var cpu = bio.Cpu;
        var op = bio.Op;
        var plug = bio.Plug;
        var merged = plug is not null && plug.TryMerge(bio, this);
        if (merged)
        {
            // Merged into a plugged request: the same rule as a request added to the plug.
            FlushIfSleepingOrFrozen(plug!, bio);
        }

        // A staged request can only be waiting if the hardware queue's ring is not empty; checking
        // that first keeps the common case free of the window scan (list_empty_careful).
        if (!merged && !hctx.Ring.IsEmpty)
        {
            merged = ctx.Window(hctx.Type).TryMerge(bio, ctx, hctx, _limits) == MergeResult.Merged;
        }

        if (!merged)
        {
            return false;
        }

        // The request already holds a queue reference; the merged bio gives its own back.
        ctx.CountMerged();
        Stats.Merge(op);
        Usage.Exit(cpu);
        return true;
    }

    private void FailEntered(Bio bio, BlockStatus status)
    {
        bio.Entered = false;
        Usage.Exit(bio.Cpu);
        bio.Complete(status);
    }

    // bio_split_to_limits: pieces of at most max sectors, completing the parent when all are done.
    private void Split(Bio parent, int maxSectors)
    {
        var pieceBytes = maxSectors << Bio.SectorShift;
        var pieces = (parent.Size + pieceBytes - 1) / pieceBytes;
        parent.ExpectChildren(pieces);
        for (var offset = 0; offset < parent.Size; offset += pieceBytes)
        {
            var length = Math.Min(pieceBytes, parent.Size - offset);
            var child = Bios.Rent();
            child.Op = parent.Op;
            child.Flags = parent.Flags;
            child.Sector = parent.Sector + (offset >> Bio.SectorShift);
            child.Size = length;
            child.Buffer = parent.Op.HasData() ? parent.Buffer.Slice(offset, length) : default;
            child.Cpu = parent.Cpu;
            child.Plug = parent.Plug;
            child.Queue = this;
            child.Parent = parent;
            Runtime.Submit(_contexts[child.Cpu], child);
        }
    }

    private static int MaxSectorsFor(BlockOp op, QueueLimits limits)
    {
        var lbsSectors = limits.LogicalBlockSize >> Bio.SectorShift;
        var max = op switch
        {
            BlockOp.Discard => limits.MaxDiscardSectors,
            BlockOp.WriteZeroes => limits.MaxWriteZeroesSectors,
            BlockOp.Flush => 0,
            _ => limits.MaxSectors,
        };
        return max / lbsSectors * lbsSectors;
    }

    /// <summary><c>op_is_sync</c>: reads, and writes marked sync, FUA or preflush.</summary>
    internal static bool IsSync(BlockOp op, RequestFlags flags) =>
        op == BlockOp.Read || (flags & (RequestFlags.Sync | RequestFlags.Fua | RequestFlags.PreFlush)) != 0;

    // ------------------------------------------------------------------ completion

    /// <summary>
    /// <c>blk_mq_complete_request</c>: marks the request complete (once) and runs the completion
    /// here or on the submitting CPU as rq_affinity decides (blk-mq-semantics §6 item 4).
    /// </summary>
    internal bool CompleteRequest(Request rq, BlockStatus status, uint generation)
    {
        if (!rq.TryComplete(generation))
        {
            return false;
        }

        rq.Status = status;
        var affinity = (CompletionAffinity)_rqAffinity;
        if (affinity == CompletionAffinity.Anywhere || (rq.Flags & RequestFlags.Polled) != 0)
        {
            EndRequest(rq);
            return true;
        }

        var topology = Topology;
        var target = rq.Ctx!;
        var cpu = CurrentCpu.Resolve(topology);
        var submit = target.Cpu;
        if (cpu != submit &&
            (affinity == CompletionAffinity.SubmittingCpu || !topology.SharesCache(cpu, submit)) &&
            topology.IsOnline(submit))
        {
            Runtime.DeliverCompletion(target, rq);
        }
        else
        {
            EndRequest(rq);
        }

        return true;
    }

    /// <summary><c>blk_mq_end_request</c> from the driver: complete here, no redirection.</summary>
    internal bool EndRequestDirect(Request rq, BlockStatus status, uint generation)
    {
        if (!rq.TryComplete(generation))
        {
            return false;
        }

        rq.Status = status;
        EndRequest(rq);
        return true;
    }

    /// <summary>Ends a request with an error status whether or not the driver started it (QueueRq rejected it, or teardown).</summary>
    public bool EndRequestWithStatus(Request rq, BlockStatus status, uint generation)
    {
        ArgumentNullException.ThrowIfNull(rq);
        var won = rq.State == RequestState.InFlight ? rq.TryComplete(generation) : rq.TryCompleteUnstarted();
        if (!won)
        {
            return false;
        }

        rq.Status = status;
        EndRequest(rq);
        return true;
    }

    /// <summary>
    /// The completion proper, on the completion context (<c>__blk_mq_end_request</c>): frees the
    /// tag and the usage reference first, then completes every bio with the request's status,
    /// so a continuation that submits again finds the tag free.
    /// </summary>
    internal void EndRequest(Request rq)
    {
        ArgumentNullException.ThrowIfNull(rq);
        var status = rq.Status;
        var hctx = rq.Hctx!;
        var ctx = rq.Ctx!;
        var sync = IsSync(rq.Op, rq.Flags);
        var bios = rq.DetachBios();

        ctx.CountCompleted(sync);
        if (rq.StatStartNs != 0)
        {
            Stats.Done(rq.Op, rq.Sectors, rq.StatStartNs, status);
            rq.StatStartNs = 0;
        }

        hctx.ReleaseTag(rq, rq.Tag, ctx.Cpu);
        Usage.Exit(ctx.Cpu);
        hctx.RestartIfNeeded();

        while (bios is not null)
        {
            var next = bios.Next;
            bios.Next = null;
            bios.Complete(status);
            bios = next;
        }
    }

    // ------------------------------------------------------------------ polling

    /// <summary>
    /// Polls for the completion of the request behind <paramref name="cookie"/> (<c>blk_poll</c>):
    /// spins the hardware queue's completion processing in the caller until that request completed.
    /// A non-pollable queue, <see cref="PollCookie.None"/> or a stale cookie returns 0 at once.
    /// </summary>
    /// <returns>The number of completions found by polling.</returns>
    public int Poll(uint cookie)
    {
        if (cookie == PollCookie.None || !_ioPoll)
        {
            return 0;
        }

        var index = UniqueTags.HardwareQueueOf(cookie);
        var tag = UniqueTags.TagOf(cookie);
        if ((uint)index >= (uint)_hctxs.Length)
        {
            return 0;
        }

        var hctx = _hctxs[index];
        if (hctx.Type != HctxType.Poll || (uint)tag >= (uint)hctx.Tags.NrTags)
        {
            return 0;
        }

        var rq = hctx.Tags[tag];
        var allocation = rq.Allocation;
        if (!hctx.Tags.IsAllocated(tag) || rq.Queue != this || (rq.Flags & RequestFlags.Polled) == 0)
        {
            return 0;
        }

        var found = 0;
        var spin = default(SpinWait);
        while (rq.Allocation == allocation && hctx.Tags.IsAllocated(tag) && rq.Queue == this)
        {
            var n = Driver.Poll(hctx);
            if (n < 0)
            {
                break;
            }

            found += n;
            if (n == 0)
            {
                spin.SpinOnce(sleep1Threshold: -1);
            }
        }

        return found;
    }

    // ------------------------------------------------------------------ control

    /// <summary>Starts a freeze (<c>blk_freeze_queue_start</c>) and runs every hardware queue so staged work drains.</summary>
    public void Freeze()
    {
        var first = Usage.Freeze();
        FlushPlugs();
        if (first && IsStarted)
        {
            foreach (var hctx in _hctxs)
            {
                Runtime.Kick(hctx);
            }
        }
    }

    /// <summary>Completes when a frozen queue has drained (<c>blk_mq_freeze_queue_wait</c>).</summary>
    public Task WaitFrozenAsync() => Usage.WaitDrainedAsync();

    /// <summary>Freezes and waits for the drain (<c>blk_mq_freeze_queue</c>).</summary>
    public Task FreezeAsync()
    {
        Freeze();
        return WaitFrozenAsync();
    }

    /// <summary>Ends one freeze (<c>blk_mq_unfreeze_queue</c>).</summary>
    public void Unfreeze() => Usage.Unfreeze();

    /// <summary>
    /// Quiesces the queue (<c>blk_mq_quiesce_queue</c>): requests are still built and staged, but none
    /// is dispatched; completes when no dispatch round is running any more.
    /// </summary>
    public async Task QuiesceAsync()
    {
        Interlocked.Increment(ref _quiesceDepth);
        if (!IsStarted)
        {
            return;
        }

        foreach (var hctx in _hctxs)
        {
            await Runtime.WaitDispatchIdleAsync(hctx).ConfigureAwait(false);
        }
    }

    /// <summary>Ends one quiesce; at zero every hardware queue runs again.</summary>
    public void Unquiesce()
    {
        var depth = Interlocked.Decrement(ref _quiesceDepth);
        if (depth < 0)
        {
            Interlocked.Increment(ref _quiesceDepth);
            throw new InvalidOperationException($"Queue {Name}: unquiesce without a matching quiesce.");
        }

        if (depth == 0 && IsStarted)
        {
            foreach (var hctx in _hctxs)
            {
                Runtime.Kick(hctx);
            }
        }
    }

    /// <summary>
    /// Wires the hardware queues to a CPU map (<c>blk_mq_map_swqueue</c>). Only while frozen (or
    /// before the first I/O): no request may straddle two mappings.
    /// </summary>
    public void Remap(CpuMap map)
    {
        ArgumentNullException.ThrowIfNull(map);
        var online = map.Topology.Online;
        for (var i = 0; i < _hctxs.Length; i++)
        {
            var cpus = map.CpusOf(i);
            var contexts = new SoftwareContext[cpus.Count];
            var k = 0;
            foreach (var cpu in cpus)
            {
                contexts[k++] = _contexts[cpu];
            }

            _hctxs[i].Map(cpus, contexts, online, map.TypeOf(i));
        }

        // The tree follows the new mapping (mq/<N> for mapped queues, their cpu_list), published whole.
        if (IsRegistered && !IsDying)
        {
            Attributes.Publish();
        }

        Stats.CountRemap();
    }

    /// <summary>Marks every hardware queue idle on the tag set (tag set unshared, or the queue leaving it).</summary>
    public void MarkAllIdle()
    {
        foreach (var hctx in _hctxs)
        {
            hctx.MarkIdle();
        }
    }

    /// <summary>
    /// Starts dying (<c>blk_queue_start_drain</c>): new entries fail with Offline and bios waiting
    /// to enter are woken so they fail too. Bios that already entered, including those waiting for
    /// a tag, still run: the drain waits for them.
    /// </summary>
    public void MarkDying()
    {
        Usage.MarkDying();
        FlushPlugs();
    }

    /// <summary>
    /// Tears the queue down (<c>blk_mq_destroy_queue</c>): marks it dying, waits up to
    /// <paramref name="drainTimeout"/> for every request to complete, then stops dispatch and fails
    /// whatever is left with <see cref="BlockStatus.Offline"/>, and leaves the tag set. Every request
    /// submitted before completes exactly once, whatever the driver does afterwards.
    /// </summary>
    /// <returns>The number of requests that had to be failed.</returns>
    public async Task<int> ShutdownAsync(TimeSpan drainTimeout)
    {
        // The attributes go first, as del_gendisk removes the disk's sysfs before the queue drains.
        Attributes.Withdraw();
        BlockMetrics.Remove(this);
        MarkDying();
        var drained = Usage.WaitDrainedAsync();
        var failed = 0;
        if (await Task.WhenAny(drained, Task.Delay(drainTimeout)).ConfigureAwait(false) != drained)
        {
            _detached = true;
            if (IsStarted)
            {
                await Runtime.DetachAsync().ConfigureAwait(false);
            }

            failed = FailOutstanding(BlockStatus.Offline);
            WakeTagWaiters();

            // What still holds a reference now is on its way to fail (a woken tag waiter, a bio
            // travelling to its context): each finds the queue detached and fails with Offline
            // wherever it arrives. Teardown waits for them, but only so long, so that it finishes
            // in bounded time whatever the submitters or the thread pool do.
            await Task.WhenAny(drained, Task.Delay(drainTimeout)).ConfigureAwait(false);
        }
        else
        {
            _detached = true;
            if (IsStarted)
            {
                await Runtime.DetachAsync().ConfigureAwait(false);
            }
        }

        _tagSet?.RemoveQueue(this);
        if (_bioDriver is { } bioDriver)
        {
            bioDriver.Detach(this);
        }

        _dead = 1;
        return failed;
    }

    /// <summary>
    /// Destroys a queue that was never registered (<c>blk_put_queue</c> on a probe that found no
    /// device): it only marks the queue dead, because nothing per CPU or per hardware queue was
    /// started for it; the caller still owns the driver.
    /// </summary>
    /// <exception cref="InvalidOperationException">The queue is registered; unregister it with <see cref="ShutdownAsync"/>.</exception>
    public void Destroy()
    {
        if (IsRegistered || IsStarted)
        {
            throw new InvalidOperationException($"Queue {Name} is registered; shut it down instead.");
        }

        Usage.MarkDying();
        _dead = 1;
    }

    /// <summary>
    /// Ends every request of this queue that holds a tag, staged or in flight, with
    /// <paramref name="status"/>. Dispatch must be stopped (runtime detached or every hardware queue
    /// stopped and idle). Completions racing with this are resolved exactly once.
    /// </summary>
    public int FailOutstanding(BlockStatus status)
    {
        var failed = 0;
        foreach (var hctx in _hctxs)
        {
            foreach (var rq in hctx.DrainPending())
            {
                if (EndRequestWithStatus(rq, status, rq.Generation))
                {
                    failed++;
                }
            }
        }

        return failed + FailInFlight(status);
    }

    // The requests of this queue the driver holds (started, not completed), over the tag maps of
    // its hardware queues (one map when tags are host-wide): blk_mq_tagset_busy_iter.
    private IEnumerable<Request> InFlightRequests()
    {
        foreach (var tags in _hctxs.Select(h => h.Tags).Distinct())
        {
            foreach (var rq in tags.Requests)
            {
                if (rq.Queue == this && rq.State == RequestState.InFlight)
                {
                    yield return rq;
                }
            }
        }
    }

    // Ends every request the driver holds with status; returns how many this call ended.
    private int FailInFlight(BlockStatus status) => InFlightRequests().Count(rq => EndRequestWithStatus(rq, status, rq.Generation));

    // Bios waiting for a tag hold a queue reference but no request: after teardown they are woken
    // to find the queue detached and fail, so the drain can finish.
    private void WakeTagWaiters()
    {
        foreach (var tags in _hctxs.Select(h => h.Tags).Distinct())
        {
            tags.BitmapTags.WakeAll();
            tags.ReservedTags.WakeAll();
        }
    }

    /// <summary>Changes <c>nr_requests</c>: the usable tags per hardware queue (queue frozen by the caller).</summary>
    internal void ResizeTags(int nrRequests)
    {
        foreach (var tags in _hctxs.Select(h => h.Tags).Distinct())
        {
            tags.BitmapTags.Resize(nrRequests - tags.NrReserved);
            tags.BitmapTags.WakeAll();
        }

        _nrRequests = nrRequests;
    }

    /// <summary>The smallest <c>nr_requests</c> (<c>BLKDEV_MIN_RQ</c>).</summary>
    public const int MinNrRequests = 4;

    /// <summary>
    /// Checks a write of <c>queue/nr_requests</c> (blk-mq-semantics §2.6 item 29) and returns the
    /// value that takes effect: values below 4 become 4; the value may not exceed the tag depth
    /// (there is no I/O scheduler) and must stay above the reserved tags.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">The value is refused (the kernel's -EINVAL).</exception>
    public int ValidateNrRequests(long value)
    {
        if (value is < 0 or > uint.MaxValue)
        {
            throw new ArgumentOutOfRangeException(nameof(value), value, "nr_requests: not an unsigned 32-bit number (EINVAL).");
        }

        var nr = (int)Math.Min(Math.Max(value, MinNrRequests), int.MaxValue);
        if (nr <= TagSet.ReservedTags)
        {
            throw new ArgumentOutOfRangeException(nameof(value), value, $"nr_requests: {nr} is not above the {TagSet.ReservedTags} reserved tags (EINVAL).");
        }

        if (nr > TagSet.QueueDepth)
        {
            throw new ArgumentOutOfRangeException(nameof(value), value, $"nr_requests: {nr} exceeds the tag depth {TagSet.QueueDepth}; without an I/O scheduler tags cannot grow (EINVAL).");
        }

        return nr;
    }

    /// <summary>
    /// Writes <c>queue/nr_requests</c>: validates it (<see cref="ValidateNrRequests"/>), then with
    /// the queue frozen and quiesced shrinks or restores every hardware queue's normal tags to
    /// <c>nr - reserved</c> and wakes all tag waiters. Writing the current value does nothing.
    /// </summary>
    /// <returns>The value in effect.</returns>
    /// <exception cref="ArgumentOutOfRangeException">The value is refused; nothing changed.</exception>
    public async Task<int> SetNrRequestsAsync(long value)
    {
        var nr = ValidateNrRequests(value);
        if (nr == _nrRequests)
        {
            return nr;
        }

        await FreezeAsync().ConfigureAwait(false);
        try
        {
            await QuiesceAsync().ConfigureAwait(false);
            try
            {
                ResizeTags(nr);
            }
            finally
            {
                Unquiesce();
            }
        }
        finally
        {
            Unfreeze();
        }

        return nr;
    }

    // ------------------------------------------------------------------ retries and resets

    /// <summary>The default of <see cref="MaxRetries"/>.</summary>
    public const int DefaultMaxRetries = 5;

    /// <summary>How many times a request taken back from the device is retried before it fails.</summary>
    public int MaxRetries { get; set; }

    /// <summary>
    /// The retry rule, for a request the driver gives up on (a timeout) or the block layer takes
    /// back (a device reset): while it has retries left, is not fail-fast and the queue is not
    /// dying, it goes back to the head of its hardware queue with one retry more; otherwise it
    /// completes with <paramref name="failStatus"/>. Exactly once either way: a request that
    /// completed meanwhile is left alone.
    /// </summary>
    public RetryOutcome RetryOrFail(Request rq, BlockStatus failStatus)
    {
        ArgumentNullException.ThrowIfNull(rq);
        var generation = rq.Generation;
        if (rq.Queue != this || rq.State != RequestState.InFlight)
        {
            return RetryOutcome.AlreadyCompleted;
        }

        if ((rq.Flags & RequestFlags.FailFast) == 0 && rq.Retries < MaxRetries && !IsDying && !_detached)
        {
            if (!rq.TryUnstart(generation))
            {
                return RetryOutcome.AlreadyCompleted;
            }

            rq.Retries++;
            rq.Hctx!.PutBack(rq);
            return RetryOutcome.Requeued;
        }

        return EndRequestWithStatus(rq, failStatus, generation) ? RetryOutcome.Failed : RetryOutcome.AlreadyCompleted;
    }

    /// <summary>
    /// <c>blk_abort_request</c> (semantics §5 item 8): the request's deadline becomes now and its
    /// hardware queue's timeout scan runs at once, so the driver's <c>Timeout</c> handler sees it
    /// as expired. A request that is not in flight on this queue is left alone.
    /// </summary>
    /// <returns>True when the request was in flight and is now due.</returns>
    public bool AbortRequest(Request rq)
    {
        ArgumentNullException.ThrowIfNull(rq);
        if (rq.Queue != this || rq.State != RequestState.InFlight || rq.Hctx is not { } hctx)
        {
            return false;
        }

        rq.Deadline = Clock.NowMilliseconds;
        Events?.OnAbort(hctx);
        return true;
    }

    /// <summary>
    /// Takes back every request the driver holds (<c>blk_mq_tagset_busy_iter</c> after a
    /// controller reset) and applies <see cref="RetryOrFail"/> to each. Call it with dispatch
    /// quiesced and after the driver's <see cref="IBlockDriver.Reset"/>, so the driver has
    /// abandoned them.
    /// </summary>
    /// <returns>How many were requeued and how many failed.</returns>
    public (int Requeued, int Failed) ReclaimInFlight(BlockStatus failStatus)
    {
        var requeued = 0;
        var failed = 0;
        foreach (var rq in InFlightRequests())
        {
            switch (RetryOrFail(rq, failStatus))
            {
                case RetryOutcome.Requeued:
                    requeued++;
                    break;
                case RetryOutcome.Failed:
                    failed++;
                    break;
            }
        }

        return (requeued, failed);
    }

    /// <summary>True once the device went offline (<see cref="SetOffline"/>) or the queue was torn down.</summary>
    public bool IsOffline => _detached;

    /// <summary>
    /// The device is gone for good: the queue is marked dying, and every request that has not
    /// reached the driver fails with <see cref="BlockStatus.Offline"/> when dispatch takes it, as
    /// does every later submission and every bio waiting for a tag. With
    /// <paramref name="failInFlight"/> (a driver that abandoned its requests) the requests the
    /// driver holds fail too; otherwise they complete when the driver answers.
    /// </summary>
    /// <returns>How many in-flight requests were failed.</returns>
    public int SetOffline(bool failInFlight)
    {
        MarkDying();
        _detached = true;
        var failed = failInFlight ? FailInFlight(BlockStatus.Offline) : 0;

        // Whatever waits in rings, dispatch lists or for a tag runs once more, to fail.
        if (IsStarted)
        {
            foreach (var hctx in _hctxs)
            {
                hctx.StartQueue();
            }
        }

        WakeTagWaiters();
        return failed;
    }

    /// <summary>Requests of this queue the driver holds now (started, not completed).</summary>
    public int InFlightCount => InFlightRequests().Count();

    /// <summary>
    /// Completions of a bio of this queue that were refused because the bio had already completed
    /// (or was back in its pool). Every bio completes exactly once, so this stays 0; anything else
    /// is a block-layer bug that would otherwise go unseen (<c>kernel/debug/block/&lt;dev&gt;/double_completions</c>).
    /// </summary>
    public long DoubleCompletions => Interlocked.Read(ref _doubleCompletions) + Bios.RefusedCompletions;

    internal void CountDoubleCompletion() => Interlocked.Increment(ref _doubleCompletions);

    /// <summary>Changes <c>max_sectors</c> (bounded by the hardware limit by the caller).</summary>
    internal void SetMaxSectors(int sectors) => _limits = _limits with { MaxSectors = sectors };

    /// <inheritdoc />
    public override string ToString() => $"queue {Name}";
}
