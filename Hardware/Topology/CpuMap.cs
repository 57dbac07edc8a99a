namespace ActorBlk.Hardware.Topology;

/// <summary>The kind of hardware queue a request is mapped to (<c>enum hctx_type</c>).</summary>
public enum HctxType
{
    /// <summary>All I/O not otherwise accounted for.</summary>
    Default = 0,

    /// <summary>Reads, when the driver provides separate read queues.</summary>
    Read = 1,

    /// <summary>Polled I/O (<c>REQ_POLLED</c>): queues without completion interrupts.</summary>
    Poll = 2,
}

/// <summary>How CPUs are spread over hardware queues. Each value reproduces one era of <c>blk_mq_map_queues</c>.</summary>
public enum CpuMapAlgorithm
{
    /// <summary>
    /// [6.2+] <c>group_cpus_evenly</c>: NUMA- and SMT-aware even groups, built in two stages.
    /// The first stage here is the <em>online</em> CPUs (the kernel uses present CPUs; this project
    /// rebuilds the map on every hotplug event, so online is the set that must be balanced), the
    /// second stage the remaining possible CPUs. The default.
    /// </summary>
    GroupEvenly,

    /// <summary>[5.4 .. 6.1] present CPUs first, round-robin, SMT siblings share a queue.</summary>
    PresentFirst,

    /// <summary>[3.13 .. ~4.16] online CPUs in contiguous blocks, offline CPUs on queue 0.</summary>
    Contiguous,
}

/// <summary>
/// One queue map (<c>struct blk_mq_queue_map</c>): for every possible CPU, the hardware queue
/// that serves it, with every entry in <c>[QueueOffset, QueueOffset + QueueCount)</c>.
/// </summary>
public sealed class QueueMap
{
    private readonly int[] _map;

    internal QueueMap(int[] map, int queueCount, int queueOffset)
    {
        _map = map;
        QueueCount = queueCount;
        QueueOffset = queueOffset;
    }

    /// <summary>Number of hardware queues in this map (may be 0: the map is then unused).</summary>
    public int QueueCount { get; }

    /// <summary>Index of this map's first hardware queue within the queue's hardware queues.</summary>
    public int QueueOffset { get; }

    /// <summary>The hardware queue index serving <paramref name="cpu"/> (<c>mq_map[cpu]</c>).</summary>
    public int this[int cpu] => _map[cpu];

    /// <summary>The per-CPU entries.</summary>
    public IReadOnlyList<int> Entries => _map;
}

/// <summary>
/// The CPU -> hardware-queue mapping of one tag set: up to three queue maps (default, read,
/// poll) over all possible CPUs, plus what follows from them: each hardware queue's CPU mask and
/// whether it is mapped at all. Immutable; a hotplug event builds a new one.
/// </summary>
/// <remarks>
/// A hardware queue no CPU maps to is <em>unmapped</em> (blk-mq-semantics §1 item 6-7): it gets no
/// <c>mq/&lt;N&gt;</c> attribute directory, no dispatch, and allocation on it fails with EXDEV.
/// </remarks>
public sealed class CpuMap
{
    private readonly QueueMap[] _maps;
    private readonly CpuSet[] _hctxCpus;

    private CpuMap(CpuTopology topology, QueueMap[] maps, int hardwareQueueCount, CpuMapAlgorithm algorithm)
    {
        Topology = topology;
        _maps = maps;
        HardwareQueueCount = hardwareQueueCount;
        Algorithm = algorithm;

        // blk_mq_map_swqueue: every possible CPU, every map -> the CPU joins that hctx's mask.
        var masks = new HashSet<int>[hardwareQueueCount];
        for (var q = 0; q < hardwareQueueCount; q++)
        {
            masks[q] = [];
        }

        foreach (var map in maps)
        {
            if (map.QueueCount == 0)
            {
                continue;
            }

            for (var cpu = 0; cpu < topology.PossibleCount; cpu++)
            {
                masks[map[cpu]].Add(cpu);
            }
        }

        _hctxCpus = masks.Select(CpuSet.Of).ToArray();
    }

    /// <summary>The topology snapshot the map was built from.</summary>
    public CpuTopology Topology { get; }

    /// <summary>Total number of hardware queues over all maps (<c>nr_hw_queues</c>).</summary>
    public int HardwareQueueCount { get; }

    /// <summary>The algorithm the map was built with.</summary>
    public CpuMapAlgorithm Algorithm { get; }

    /// <summary>The queue map of one type.</summary>
    public QueueMap this[HctxType type] => _maps[(int)type];

    /// <summary>
    /// Builds the maps for a tag set. <paramref name="defaultQueues"/> hardware queues serve the
    /// default map from offset 0; <paramref name="readQueues"/> and <paramref name="pollQueues"/>
    /// follow (null_blk's <c>null_map_queues</c> layout). A map with no queues makes requests of that
    /// type use the default map.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">No default queue, or a negative count.</exception>
    public static CpuMap Build(CpuTopology topology, int defaultQueues, int readQueues = 0, int pollQueues = 0, CpuMapAlgorithm algorithm = CpuMapAlgorithm.GroupEvenly)
    {
        ArgumentNullException.ThrowIfNull(topology);
        ArgumentOutOfRangeException.ThrowIfLessThan(defaultQueues, 1);
        ArgumentOutOfRangeException.ThrowIfNegative(readQueues);
        ArgumentOutOfRangeException.ThrowIfNegative(pollQueues);

        var counts = new[] { defaultQueues, readQueues, pollQueues };
        var maps = new QueueMap[3];
        var offset = 0;
        for (var type = 0; type < 3; type++)
        {
            var entries = counts[type] == 0
                ? new int[topology.PossibleCount]
                : MapQueues(topology, counts[type], offset, algorithm);
            maps[type] = new QueueMap(entries, counts[type], offset);
            offset += counts[type];
        }

        return new CpuMap(topology, maps, offset, algorithm);
    }

    /// <summary>
    /// The hardware queue serving a request of <paramref name="type"/> submitted on
    /// <paramref name="cpu"/>; a type whose map has no queues falls back to the default map
    /// (blk-mq-semantics §1 item 4).
    /// </summary>
    public int HardwareQueueFor(int cpu, HctxType type)
    {
        var map = _maps[(int)type];
        return map.QueueCount == 0 ? _maps[(int)HctxType.Default][cpu] : map[cpu];
    }

    /// <summary>The CPUs mapped to hardware queue <paramref name="hctx"/> (<c>hctx->cpumask</c>).</summary>
    public CpuSet CpusOf(int hctx) => _hctxCpus[hctx];

    /// <summary>True when at least one CPU maps to hardware queue <paramref name="hctx"/>.</summary>
    public bool IsMapped(int hctx) => (uint)hctx < (uint)_hctxCpus.Length && !_hctxCpus[hctx].IsEmpty;

    /// <summary>The type of hardware queue <paramref name="hctx"/> (the map it belongs to).</summary>
    public HctxType TypeOf(int hctx)
    {
        for (var t = 2; t >= 0; t--)
        {
            var m = _maps[t];
            if (m.QueueCount > 0 && hctx >= m.QueueOffset && hctx < m.QueueOffset + m.QueueCount)
            {
                return (HctxType)t;
            }
        }

        return HctxType.Default;
    }

    /// <summary>Spreads <paramref name="queues"/> queues over the possible CPUs with the chosen era's algorithm.</summary>
    internal static int[] MapQueues(CpuTopology topology, int queues, int offset, CpuMapAlgorithm algorithm) => algorithm switch
    {
        CpuMapAlgorithm.GroupEvenly => MapGroupEvenly(topology, queues, offset),
        CpuMapAlgorithm.PresentFirst => MapPresentFirst(topology, queues, offset),
        CpuMapAlgorithm.Contiguous => MapContiguous(topology, queues, offset),
        _ => throw new ArgumentOutOfRangeException(nameof(algorithm), algorithm, "Unknown CPU map algorithm."),
    };

    // [6.2+] blk_mq_map_queues: queue q gets group q of group_cpus_evenly(queues).
    private static int[] MapGroupEvenly(CpuTopology topology, int queues, int offset)
    {
        var map = new int[topology.PossibleCount];
        var groups = CpuGrouping.GroupEvenly(topology, queues, topology.Online);
        for (var q = 0; q < queues; q++)
        {
            foreach (var cpu in groups[q])
            {
                map[cpu] = offset + q;
            }
        }

        return map;
    }

    // [5.4 .. 6.1] present CPUs take one queue each until every queue has one; then the
    // remaining possible CPUs are dealt round-robin, SMT siblings joining their first sibling.
    private static int[] MapPresentFirst(CpuTopology topology, int queues, int offset)
    {
        var map = new int[topology.PossibleCount];
        Array.Fill(map, -1);
        var q = 0;
        foreach (var cpu in topology.Present)
        {
            if (q >= queues)
            {
                break;
            }

            map[cpu] = offset + (q++ % queues);
        }

        for (var cpu = 0; cpu < map.Length; cpu++)
        {
            if (map[cpu] != -1)
            {
                continue;
            }

            if (q < queues)
            {
                map[cpu] = offset + (q++ % queues);
                continue;
            }

            var first = topology.FirstSiblingOf(cpu);
            map[cpu] = first == cpu ? offset + (q++ % queues) : map[first];
        }

        return map;
    }

    // [3.13] only online CPUs are spread, in contiguous blocks of ceil(N / Q); with SMT and fewer
    // queues than CPUs only first siblings count and the other siblings follow them. Offline
    // CPUs map to the first queue.
    private static int[] MapContiguous(CpuTopology topology, int queues, int offset)
    {
        var map = new int[topology.PossibleCount];
        var nrCpus = 0;
        var nrUnique = 0;
        var seen = new HashSet<int>();
        foreach (var cpu in topology.Online)
        {
            nrCpus++;
            if (!seen.Contains(topology.FirstSiblingOf(cpu)))
            {
                nrUnique++;
            }

            seen.Add(cpu);
        }

        var k = 0;
        for (var cpu = 0; cpu < map.Length; cpu++)
        {
            if (!topology.IsOnline(cpu))
            {
                map[cpu] = offset;
                continue;
            }

            if (queues >= nrCpus || nrCpus == nrUnique)
            {
                map[cpu] = offset + BlockIndex(nrCpus, queues, k++);
                continue;
            }

            var first = topology.FirstSiblingOf(cpu);
            map[cpu] = first == cpu ? offset + BlockIndex(nrUnique, queues, k++) : map[first];
        }

        return map;

        static int BlockIndex(int cpus, int queues, int index) => index / ((cpus + queues - 1) / queues);
    }
}
