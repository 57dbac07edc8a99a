using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;
using ActorBlk.Hardware.Topology;

namespace ActorBlk.Hardware.Tags;

/// <summary>Tag-set flags (a subset of <c>BLK_MQ_F_*</c>).</summary>
[Flags]
public enum TagSetFlags
{
    /// <summary>No flag.</summary>
    None = 0,

    /// <summary>A stacking driver (device-mapper): no CPU hotplug drain of its own (<c>BLK_MQ_F_STACKING</c>).</summary>
    Stacking = 1 << 2,

    /// <summary>Host-wide tags: one tag map shared by all hardware queues (<c>BLK_MQ_F_TAG_HCTX_SHARED</c>).</summary>
    HostWide = 1 << 3,

    /// <summary>The driver's QueueRq may block (<c>BLK_MQ_F_BLOCKING</c>).</summary>
    Blocking = 1 << 4,

    /// <summary>Round-robin tag allocation (<c>BLK_MQ_F_TAG_RR</c>).</summary>
    RoundRobin = 1 << 5,
}

/// <summary>How to build a <see cref="TagSet"/> (<c>struct blk_mq_tag_set</c> fields).</summary>
public sealed record TagSetOptions
{
    /// <summary>A name for logs and the attribute tree.</summary>
    public string Name { get; init; } = "tagset";

    /// <summary>Hardware queues of the default map (<c>submit_queues</c>); clamped to the possible CPUs.</summary>
    public int HardwareQueues { get; init; } = 1;

    /// <summary>Hardware queues of the read map (0: reads use the default map).</summary>
    public int ReadQueues { get; init; }

    /// <summary>Hardware queues of the poll map (0: polling is impossible).</summary>
    public int PollQueues { get; init; }

    /// <summary>Tags per hardware queue, reserved included (<c>queue_depth</c>, null_blk's <c>hw_queue_depth</c>).</summary>
    public int QueueDepth { get; init; } = 64;

    /// <summary>Reserved tags per hardware queue.</summary>
    public int ReservedTags { get; init; }

    /// <summary>Driver payload bytes per request (<c>cmd_size</c>).</summary>
    public int PayloadSize { get; init; }

    /// <summary>Flags.</summary>
    public TagSetFlags Flags { get; init; }

    /// <summary>Default request timeout in milliseconds; 0 means 30 s.</summary>
    public int TimeoutMs { get; init; }

    /// <summary>
    /// Apply the shared-tag fair share (<c>hctx_may_queue</c>). On by default; a 2024 proposal
    /// removes the check from the kernel, so it is switchable (blk-mq-semantics §2.5 item 27).
    /// </summary>
    public bool FairSharing { get; init; } = true;

    /// <summary>How CPUs are spread over hardware queues.</summary>
    public CpuMapAlgorithm MapAlgorithm { get; init; } = CpuMapAlgorithm.GroupEvenly;

    /// <summary>Seed for tag allocation hints; fixed in tests for reproducibility.</summary>
    public int? Seed { get; init; }
}

/// <summary>
/// A tag set (<c>struct blk_mq_tag_set</c>): the tags and preallocated requests of every hardware
/// queue, the CPU map, and the list of request queues using it. Several request queues may share
/// one set; the set becomes <em>shared</em> when the second queue joins, and shared hardware queues
/// then get a fair share of the tags (blk-mq-semantics §2).
/// </summary>
public sealed class TagSet
{
    /// <summary>Largest queue depth (<c>BLK_MQ_MAX_DEPTH</c>); larger requests are clamped.</summary>
    public const int MaxDepth = 10240;

    /// <summary>Smallest number of normal tags (<c>BLK_MQ_TAG_MIN</c>).</summary>
    public const int MinTags = 1;

    /// <summary>Default request timeout: 30 s.</summary>
    public const int DefaultTimeoutMs = 30_000;

    private readonly TagMap[] _tags;
    private readonly List<RequestQueue> _queues = [];
    private readonly object _queuesLock = new();
    private volatile CpuMap _map;
    private volatile bool _shared;

    /// <summary>Validates the options and allocates every tag map and request.</summary>
    /// <param name="options">The set's shape.</param>
    /// <param name="topology">The CPUs to map.</param>
    /// <param name="initRequest">The driver's <c>init_request</c>, called once per request with its hardware queue index.</param>
    /// <exception cref="ArgumentException">The options are invalid (the kernel's -EINVAL cases).</exception>
    public TagSet(TagSetOptions options, CpuTopology topology, Action<Request, int>? initRequest = null)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(topology);
        Validate(options);

        Options = options;
        Name = options.Name;
        var possible = topology.PossibleCount;

        // A single-map set never has more hardware queues than CPUs to feed them.
        DefaultQueues = Math.Min(options.HardwareQueues, possible);
        ReadQueues = Math.Min(options.ReadQueues, possible);
        PollQueues = Math.Min(options.PollQueues, possible);
        HardwareQueueCount = DefaultQueues + ReadQueues + PollQueues;

        RequestedDepth = options.QueueDepth;
        QueueDepth = Math.Min(options.QueueDepth, MaxDepth);
        ReservedTags = options.ReservedTags;
        PayloadSize = options.PayloadSize;
        Flags = options.Flags;
        TimeoutMs = options.TimeoutMs > 0 ? options.TimeoutMs : DefaultTimeoutMs;
        FairSharing = options.FairSharing;

        _map = CpuMap.Build(topology, DefaultQueues, ReadQueues, PollQueues, options.MapAlgorithm);

        var roundRobin = (options.Flags & TagSetFlags.RoundRobin) != 0;
        _tags = new TagMap[HardwareQueueCount];
        if (IsHostWide)
        {
            var shared = new TagMap(QueueDepth, ReservedTags, possible, PayloadSize, roundRobin, options.Seed);
            Array.Fill(_tags, shared);
        }
        else
        {
            for (var q = 0; q < HardwareQueueCount; q++)
            {
                _tags[q] = new TagMap(QueueDepth, ReservedTags, possible, PayloadSize, roundRobin, options.Seed is { } s ? s + q : null);
            }
        }

        if (initRequest is not null)
        {
            var seen = new HashSet<TagMap>();
            for (var q = 0; q < HardwareQueueCount; q++)
            {
                if (!seen.Add(_tags[q]))
                {
                    continue;
                }

                foreach (var rq in _tags[q].Requests)
                {
                    initRequest(rq, q);
                }
            }
        }
    }

    /// <summary>The options the set was built from.</summary>
    public TagSetOptions Options { get; }

    /// <summary>The set's name.</summary>
    public string Name { get; }

    /// <summary>Hardware queues of the default map after clamping.</summary>
    public int DefaultQueues { get; }

    /// <summary>Hardware queues of the read map.</summary>
    public int ReadQueues { get; }

    /// <summary>Hardware queues of the poll map.</summary>
    public int PollQueues { get; }

    /// <summary>Total hardware queues (<c>nr_hw_queues</c>).</summary>
    public int HardwareQueueCount { get; }

    /// <summary>The depth asked for, before the <see cref="MaxDepth"/> clamp.</summary>
    public int RequestedDepth { get; }

    /// <summary>Tags per hardware queue, reserved included, after clamping.</summary>
    public int QueueDepth { get; }

    /// <summary>True when the requested depth was reduced to <see cref="MaxDepth"/>.</summary>
    public bool DepthWasClamped => RequestedDepth != QueueDepth;

    /// <summary>Reserved tags per hardware queue.</summary>
    public int ReservedTags { get; }

    /// <summary>Driver payload bytes per request.</summary>
    public int PayloadSize { get; }

    /// <summary>Flags.</summary>
    public TagSetFlags Flags { get; }

    /// <summary>Default request timeout (ms).</summary>
    public int TimeoutMs { get; }

    /// <summary>Whether the fair share is enforced on shared sets.</summary>
    public bool FairSharing { get; }

    /// <summary>True when one tag map serves every hardware queue.</summary>
    public bool IsHostWide => (Flags & TagSetFlags.HostWide) != 0;

    /// <summary>True while two or more request queues use the set (<c>BLK_MQ_F_TAG_QUEUE_SHARED</c>).</summary>
    public bool IsShared => _shared;

    /// <summary>The current CPU map; replaced on CPU hotplug while every queue of the set is frozen.</summary>
    public CpuMap Map => _map;

    /// <summary>The request queues using this set (<c>tag_list</c>), a snapshot.</summary>
    public IReadOnlyList<RequestQueue> Queues
    {
        get
        {
            lock (_queuesLock)
            {
                return _queues.ToArray();
            }
        }
    }

    /// <summary>The tag map of hardware queue <paramref name="hctx"/>.</summary>
    public TagMap TagsOf(int hctx) => _tags[hctx];

    /// <summary>Every distinct tag map of the set.</summary>
    public IEnumerable<TagMap> AllTags => _tags.Distinct();

    /// <summary>Total memory the set holds in tags and payload slabs, in bytes (for leak checks).</summary>
    public long FootprintBytes => AllTags.Sum(t => (long)t.NrTags * (t.PayloadStride + 64));

    /// <summary>Replaces the CPU map for a new topology. The caller has frozen every queue of the set.</summary>
    public CpuMap Remap(CpuTopology topology)
    {
        ArgumentNullException.ThrowIfNull(topology);
        var map = CpuMap.Build(topology, DefaultQueues, ReadQueues, PollQueues, Options.MapAlgorithm);
        _map = map;
        return map;
    }

    /// <summary>
    /// Adds a request queue (<c>blk_mq_add_queue_tag_set</c>). When it is the second queue the set
    /// becomes shared and every hardware queue of every queue starts fair-share accounting.
    /// </summary>
    /// <returns>True when this addition made the set shared.</returns>
    public bool AddQueue(RequestQueue queue)
    {
        ArgumentNullException.ThrowIfNull(queue);
        lock (_queuesLock)
        {
            if (_queues.Contains(queue))
            {
                return false;
            }

            _queues.Add(queue);
            if (_queues.Count == 2 && !_shared)
            {
                _shared = true;
                return true;
            }
        }

        return false;
    }

    /// <summary>
    /// Removes a request queue (<c>blk_mq_del_queue_tag_set</c>). When one queue remains the set
    /// becomes unshared and every hardware queue is marked idle.
    /// </summary>
    /// <returns>True when this removal made the set unshared.</returns>
    public bool RemoveQueue(RequestQueue queue)
    {
        ArgumentNullException.ThrowIfNull(queue);
        RequestQueue[] remaining;
        lock (_queuesLock)
        {
            if (!_queues.Remove(queue))
            {
                return false;
            }

            if (!_shared || _queues.Count != 1)
            {
                queue.MarkAllIdle();
                return false;
            }

            _shared = false;
            remaining = _queues.ToArray();
        }

        queue.MarkAllIdle();
        foreach (var q in remaining)
        {
            q.MarkAllIdle();
        }

        return true;
    }

    private static void Validate(TagSetOptions o)
    {
        if (o.HardwareQueues < 1)
        {
            throw new ArgumentOutOfRangeException(nameof(o.HardwareQueues), o.HardwareQueues, "EINVAL: a tag set needs at least one hardware queue.");
        }

        if (o.ReadQueues < 0 || o.PollQueues < 0)
        {
            throw new ArgumentOutOfRangeException(nameof(o.PollQueues), "EINVAL: read and poll queue counts cannot be negative.");
        }

        if (o.QueueDepth < 1)
        {
            throw new ArgumentOutOfRangeException(nameof(o.QueueDepth), o.QueueDepth, "EINVAL: the queue depth must be at least 1.");
        }

        if (o.ReservedTags < 0)
        {
            throw new ArgumentOutOfRangeException(nameof(o.ReservedTags), o.ReservedTags, "EINVAL: reserved tags cannot be negative.");
        }

        if (o.QueueDepth < o.ReservedTags + MinTags)
        {
            throw new ArgumentOutOfRangeException(nameof(o.ReservedTags), o.ReservedTags,
                $"EINVAL: queue depth {o.QueueDepth} leaves no normal tag after {o.ReservedTags} reserved tags.");
        }

        if (Math.Min(o.QueueDepth, MaxDepth) < o.ReservedTags + MinTags)
        {
            throw new ArgumentOutOfRangeException(nameof(o.ReservedTags), o.ReservedTags,
                $"EINVAL: {o.ReservedTags} reserved tags exceed the maximum depth {MaxDepth}.");
        }

        if (o.PayloadSize < 0)
        {
            throw new ArgumentOutOfRangeException(nameof(o.PayloadSize), o.PayloadSize, "EINVAL: the payload size cannot be negative.");
        }

        if (o.TimeoutMs < 0)
        {
            throw new ArgumentOutOfRangeException(nameof(o.TimeoutMs), o.TimeoutMs, "EINVAL: the timeout cannot be negative.");
        }
    }
}
