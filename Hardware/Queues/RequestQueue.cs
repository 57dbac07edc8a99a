using System.Collections.Concurrent;
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
public sealed partial class RequestQueue
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
    private volatile bool _writeCacheDisabled;
    private volatile bool _ioPoll;
    private volatile int _nrRequests;
    private int _registered;
    private volatile bool _detached;
    private volatile int _kind;
    private volatile int _dead;
    private volatile bool _acceptsIo;
    private long _doubleCompletions;
    private long _endIoFaults;

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
        _readOnly |= driver.ReadOnly;
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

    /// <summary>
    /// The disk sequence number (<c>block/&lt;dev&gt;/diskseq</c>): unique among the queues of this
    /// process, so a device created again under the same name has another one
    /// (<see cref="DiskSequence"/>).
    /// </summary>
    public ulong DiskSeq { get; } = DiskSequence.Next();

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
    /// <exception cref="InvalidOperationException">Set to false on a queue whose driver is read-only (<see cref="IBlockDriver.ReadOnly"/>).</exception>
    public bool ReadOnly
    {
        get => _readOnly || _bioDriver is { ReadOnly: true };
        set
        {
            if (!value && DriverReadOnly is { } why)
            {
                throw new InvalidOperationException($"{Name}: the driver's device is read-only ({why}); the queue cannot be made writable");
            }

            _readOnly = value;
        }
    }

    /// <summary>
    /// Why the device underneath is read-only (the driver's description: a read-only file or NBD
    /// export, a stacked table over a read-only member), or null when it can be written.
    /// </summary>
    public string? DriverReadOnly =>
        _driver is { ReadOnly: true } ? _driver.Description : _bioDriver is { ReadOnly: true } ? _bioDriver.Description : null;

    /// <summary>
    /// The queue treats the device's volatile write cache as there (<c>write_cache</c> = <c>write
    /// back</c>): flushes and FUA reach the driver. False when the device has none, or when it was
    /// turned off (<c>write through</c>, <c>BLK_FLAG_WRITE_CACHE_DISABLED</c>): flushes then
    /// complete at once and FUA is dropped, as the kernel does, so data in a real volatile cache is
    /// no longer made durable. Only for a cache that does not lose data (battery-backed).
    /// </summary>
    public bool WriteCache => _limits.VolatileWriteCache && !_writeCacheDisabled;

    /// <summary>Turns the write cache off (<c>write through</c>) or back on (<c>write back</c>, which a device without one ignores).</summary>
    public bool WriteCacheDisabled
    {
        get => _writeCacheDisabled;
        set => _writeCacheDisabled = value;
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

    /// <summary>Changes <c>max_sectors</c> (bounded by the hardware limit by the caller).</summary>
    internal void SetMaxSectors(int sectors) => _limits = _limits with { MaxSectors = sectors };

    /// <summary>The driver's own discard limit in sectors (<c>discard_max_hw_bytes</c>); 0 when it cannot discard.</summary>
    internal int MaxHardwareDiscardSectors => (_bioDriver?.Limits ?? _driver?.Limits)?.MaxDiscardSectors ?? _limits.MaxDiscardSectors;

    /// <summary>Changes the discard limit (<c>discard_max_bytes</c>), at most the driver's own; 0 turns discard off.</summary>
    internal void SetMaxDiscardSectors(int sectors) =>
        _limits = _limits with { MaxDiscardSectors = Math.Min(sectors, MaxHardwareDiscardSectors) };

    /// <inheritdoc />
    public override string ToString() => $"queue {Name}";
}
