using System.Globalization;
using System.Text;

namespace ActorBlk.Hardware.Topology;

/// <summary>Where one CPU sits: its SMT core, last-level-cache group, package and NUMA node.</summary>
/// <param name="Id">The CPU id.</param>
/// <param name="CoreId">Id of the first SMT sibling of this CPU (<c>cpumask_first(topology_sibling_cpumask)</c>).</param>
/// <param name="LlcId">Id of the first CPU that shares this CPU's last-level cache.</param>
/// <param name="PackageId">Physical package (socket).</param>
/// <param name="NumaNode">NUMA node.</param>
public sealed record CpuInfo(int Id, int CoreId, int LlcId, int PackageId, int NumaNode);

/// <summary>
/// An immutable snapshot of the machine's CPUs: which are possible, present and online, and how
/// they group into SMT cores, last-level-cache (LLC) groups, packages and NUMA nodes.
/// </summary>
/// <remarks>
/// <para>
/// "Possible" CPUs are every CPU the machine could ever bring online (<c>nr_cpu_ids</c>); the
/// block layer allocates one software context per possible CPU so that a CPU coming online
/// needs no allocation (blk-mq-semantics §1 item 1, §8 item 7).
/// </para>
/// <para>
/// A snapshot is built either from <c>/sys/devices/system/cpu</c> (<see cref="FromSysfs"/>) or
/// for a simulated machine (<see cref="Simulated"/>), so tests do not depend on the box they run
/// on. Hotplug produces a new snapshot (<see cref="WithOnline"/>); snapshots are never mutated.
/// </para>
/// </remarks>
public sealed class CpuTopology
{
    /// <summary>The sysfs directory CPU topology is read from on Linux.</summary>
    public const string DefaultSysfsRoot = "/sys/devices/system/cpu";

    private readonly CpuInfo[] _cpus;
    private readonly CpuSet[] _siblings;
    private readonly CpuSet[] _nodeCpus;

    private CpuTopology(CpuInfo[] cpus, CpuSet present, CpuSet online, bool simulated, string source)
    {
        _cpus = cpus;
        Possible = CpuSet.Range(cpus.Length);
        Present = present.Intersect(Possible);
        Online = online.Intersect(Present);
        IsSimulated = simulated;
        Source = source;

        _siblings = new CpuSet[cpus.Length];
        var byCore = cpus.GroupBy(c => c.CoreId).ToDictionary(g => g.Key, g => CpuSet.Of(g.Select(c => c.Id)));
        foreach (var cpu in cpus)
        {
            _siblings[cpu.Id] = byCore[cpu.CoreId];
        }

        NumaNodeCount = cpus.Length == 0 ? 0 : cpus.Max(c => c.NumaNode) + 1;
        _nodeCpus = new CpuSet[NumaNodeCount];
        for (var node = 0; node < NumaNodeCount; node++)
        {
            _nodeCpus[node] = CpuSet.Of(cpus.Where(c => c.NumaNode == node).Select(c => c.Id));
        }
    }

    /// <summary>Number of possible CPUs (<c>nr_cpu_ids</c>); CPU ids run from 0 to this minus one.</summary>
    public int PossibleCount => _cpus.Length;

    /// <summary>Every CPU that could ever be online.</summary>
    public CpuSet Possible { get; }

    /// <summary>CPUs physically present.</summary>
    public CpuSet Present { get; }

    /// <summary>CPUs currently online.</summary>
    public CpuSet Online { get; }

    /// <summary>Number of NUMA nodes (highest node id + 1).</summary>
    public int NumaNodeCount { get; }

    /// <summary>True for a simulated machine; false when read from sysfs.</summary>
    public bool IsSimulated { get; }

    /// <summary>Where the snapshot came from, for logs ("sysfs:/sys/devices/system/cpu", "simulated").</summary>
    public string Source { get; }

    /// <summary>Per-CPU placement, indexed by CPU id.</summary>
    public IReadOnlyList<CpuInfo> Cpus => _cpus;

    /// <summary>
    /// Builds a simulated machine. SMT siblings are numbered the way x86 enumerates them: with
    /// <c>c</c> cores, CPU <c>i</c> and CPU <c>i + c</c> are threads of one core, so 8 CPUs with 2
    /// threads per core have siblings (0,4)(1,5)(2,6)(3,7). Cores are spread over sockets in
    /// contiguous blocks; each socket is its own LLC group and NUMA node.
    /// </summary>
    /// <param name="possibleCpus">Number of possible CPUs.</param>
    /// <param name="sockets">Packages; must divide the number of cores.</param>
    /// <param name="threadsPerCore">SMT threads per core; must divide <paramref name="possibleCpus"/>.</param>
    /// <param name="online">CPUs online at start; all by default.</param>
    /// <param name="present">CPUs present; all by default.</param>
    /// <exception cref="ArgumentException">The shape is inconsistent.</exception>
    public static CpuTopology Simulated(int possibleCpus, int sockets = 1, int threadsPerCore = 1, CpuSet? online = null, CpuSet? present = null)
    {
        if (possibleCpus is < 1 or > 4096)
        {
            throw new ArgumentOutOfRangeException(nameof(possibleCpus), possibleCpus, "A simulated machine has between 1 and 4096 CPUs.");
        }

        if (threadsPerCore < 1 || possibleCpus % threadsPerCore != 0)
        {
            throw new ArgumentException($"threadsPerCore ({threadsPerCore}) must divide the CPU count ({possibleCpus}).", nameof(threadsPerCore));
        }

        var cores = possibleCpus / threadsPerCore;
        if (sockets < 1 || cores % sockets != 0)
        {
            throw new ArgumentException($"sockets ({sockets}) must divide the core count ({cores}).", nameof(sockets));
        }

        var coresPerSocket = cores / sockets;
        var cpus = new CpuInfo[possibleCpus];
        for (var id = 0; id < possibleCpus; id++)
        {
            var core = id % cores;
            var socket = core / coresPerSocket;
            var firstCpuOfSocket = socket * coresPerSocket;
            cpus[id] = new CpuInfo(id, CoreId: core, LlcId: firstCpuOfSocket, PackageId: socket, NumaNode: socket);
        }

        var all = CpuSet.Range(possibleCpus);
        var pres = present ?? all;
        return new CpuTopology(cpus, pres, online ?? pres, simulated: true, source: $"simulated({possibleCpus} cpus, {sockets} sockets, {threadsPerCore} threads/core)");
    }

    /// <summary>Builds a topology from explicit per-CPU records (ids must be 0..n-1).</summary>
    /// <exception cref="ArgumentException">The records do not describe CPUs 0..n-1, or reference unknown CPUs.</exception>
    public static CpuTopology Create(IEnumerable<CpuInfo> cpus, CpuSet? present = null, CpuSet? online = null)
    {
        ArgumentNullException.ThrowIfNull(cpus);
        var list = cpus.OrderBy(c => c.Id).ToArray();
        for (var i = 0; i < list.Length; i++)
        {
            if (list[i].Id != i)
            {
                throw new ArgumentException($"CPU ids must be 0..{list.Length - 1} without gaps; found {list[i].Id} at position {i}.", nameof(cpus));
            }

            if (list[i].CoreId < 0 || list[i].CoreId >= list.Length || list[i].LlcId < 0 || list[i].LlcId >= list.Length || list[i].NumaNode < 0)
            {
                throw new ArgumentException($"CPU {i} names a core, LLC group or node that does not exist.", nameof(cpus));
            }
        }

        var all = CpuSet.Range(list.Length);
        var pres = present ?? all;
        return new CpuTopology(list, pres, online ?? pres, simulated: true, source: "explicit");
    }

    /// <summary>
    /// Reads the topology of this machine from sysfs. Information missing for a CPU (offline
    /// CPUs often have no <c>topology/</c> directory) defaults to "own core, LLC group of its
    /// package, node 0".
    /// </summary>
    /// <param name="root">The sysfs CPU directory, <see cref="DefaultSysfsRoot"/> by default.</param>
    /// <exception cref="DirectoryNotFoundException">The directory does not exist.</exception>
    public static CpuTopology FromSysfs(string root = DefaultSysfsRoot)
    {
        ArgumentNullException.ThrowIfNull(root);
        if (!Directory.Exists(root))
        {
            throw new DirectoryNotFoundException($"CPU topology directory '{root}' does not exist.");
        }

        var possible = ReadCpuList(Path.Combine(root, "possible")) ?? CpuSet.Range(Environment.ProcessorCount);
        var present = ReadCpuList(Path.Combine(root, "present")) ?? possible;
        var online = ReadCpuList(Path.Combine(root, "online")) ?? present;
        var count = possible.Last + 1;
        var nodes = ReadNodeMap(root, count);

        var cpus = new CpuInfo[count];
        for (var id = 0; id < count; id++)
        {
            var dir = Path.Combine(root, "cpu" + id.ToString(CultureInfo.InvariantCulture));
            var siblings = ReadCpuList(Path.Combine(dir, "topology", "thread_siblings_list"))
                           ?? ReadCpuList(Path.Combine(dir, "topology", "core_cpus_list"));
            var package = ReadInt(Path.Combine(dir, "topology", "physical_package_id")) ?? 0;
            var core = siblings is { IsEmpty: false } ? siblings.First : id;
            var llc = ReadLastLevelCacheGroup(dir)?.First ?? -1;
            cpus[id] = new CpuInfo(id, core, llc, package < 0 ? 0 : package, nodes[id]);
        }

        // A CPU whose cache information is unreadable joins the LLC group of the lowest CPU of its package.
        for (var id = 0; id < count; id++)
        {
            if (cpus[id].LlcId < 0)
            {
                var pkg = cpus[id].PackageId;
                var first = cpus.First(c => c.PackageId == pkg).Id;
                cpus[id] = cpus[id] with { LlcId = first };
            }
        }

        return new CpuTopology(cpus, present, online, simulated: false, source: "sysfs:" + root);
    }

    /// <summary>The SMT siblings of <paramref name="cpu"/>, itself included (<c>topology_sibling_cpumask</c>).</summary>
    public CpuSet SiblingsOf(int cpu) => _siblings[CheckCpu(cpu)];

    /// <summary>The first SMT sibling of <paramref name="cpu"/> (the kernel's <c>get_first_sibling</c>).</summary>
    public int FirstSiblingOf(int cpu) => _cpus[CheckCpu(cpu)].CoreId;

    /// <summary>True when the two CPUs share a last-level cache (<c>cpus_share_cache</c>).</summary>
    public bool SharesCache(int a, int b) => _cpus[CheckCpu(a)].LlcId == _cpus[CheckCpu(b)].LlcId;

    /// <summary>The NUMA node of <paramref name="cpu"/> (<c>cpu_to_node</c>).</summary>
    public int NodeOf(int cpu) => _cpus[CheckCpu(cpu)].NumaNode;

    /// <summary>All possible CPUs of NUMA node <paramref name="node"/>.</summary>
    public CpuSet CpusOfNode(int node) => node >= 0 && node < _nodeCpus.Length ? _nodeCpus[node] : CpuSet.Empty;

    /// <summary>True when <paramref name="cpu"/> is online.</summary>
    public bool IsOnline(int cpu) => Online.Contains(cpu);

    /// <summary>
    /// The snapshot with <paramref name="cpu"/> brought online or taken offline.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">The CPU is not present.</exception>
    /// <exception cref="InvalidOperationException">Taking the last online CPU offline (the kernel refuses with EBUSY).</exception>
    public CpuTopology WithOnline(int cpu, bool online)
    {
        if (!Present.Contains(cpu))
        {
            throw new ArgumentOutOfRangeException(nameof(cpu), cpu, $"CPU {cpu} is not present (present: {Present.ToCpuListString()}).");
        }

        if (online == Online.Contains(cpu))
        {
            return this;
        }

        if (!online && Online.Count == 1)
        {
            throw new InvalidOperationException($"CPU {cpu} is the last online CPU and cannot go offline.");
        }

        return new CpuTopology(_cpus, Present, online ? Online.With(cpu) : Online.Without(cpu), IsSimulated, Source);
    }

    /// <summary>A one-line description for logs.</summary>
    public string Describe()
    {
        var sb = new StringBuilder();
        sb.Append(Source).Append(": possible ").Append(Possible.ToCpuListString())
          .Append(", present ").Append(Present.ToCpuListString())
          .Append(", online ").Append(Online.ToCpuListString())
          .Append(", ").Append(NumaNodeCount).Append(NumaNodeCount == 1 ? " node" : " nodes")
          .Append(", ").Append(_cpus.Select(c => c.LlcId).Distinct().Count()).Append(" LLC groups");
        return sb.ToString();
    }

    /// <inheritdoc />
    public override string ToString() => Describe();

    private int CheckCpu(int cpu)
    {
        if ((uint)cpu >= (uint)_cpus.Length)
        {
            throw new ArgumentOutOfRangeException(nameof(cpu), cpu, $"CPU {cpu} is not a possible CPU (0..{_cpus.Length - 1}).");
        }

        return cpu;
    }

    private static CpuSet? ReadCpuList(string path)
    {
        try
        {
            return File.Exists(path) && CpuSet.TryParse(File.ReadAllText(path), out var set) ? set : null;
        }
        catch (IOException)
        {
            return null;
        }
        catch (UnauthorizedAccessException)
        {
            return null;
        }
    }

    private static int? ReadInt(string path)
    {
        try
        {
            return File.Exists(path) && int.TryParse(File.ReadAllText(path).Trim(), NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out var v) ? v : null;
        }
        catch (IOException)
        {
            return null;
        }
        catch (UnauthorizedAccessException)
        {
            return null;
        }
    }

    private static CpuSet? ReadLastLevelCacheGroup(string cpuDir)
    {
        var cacheDir = Path.Combine(cpuDir, "cache");
        if (!Directory.Exists(cacheDir))
        {
            return null;
        }

        CpuSet? best = null;
        var bestLevel = -1;
        foreach (var index in Directory.EnumerateDirectories(cacheDir, "index*"))
        {
            var level = ReadInt(Path.Combine(index, "level")) ?? -1;
            var shared = ReadCpuList(Path.Combine(index, "shared_cpu_list"));
            if (level > bestLevel && shared is { IsEmpty: false })
            {
                bestLevel = level;
                best = shared;
            }
        }

        return best;
    }

    private static int[] ReadNodeMap(string cpuRoot, int count)
    {
        var nodes = new int[count];
        var nodeRoot = Path.Combine(Path.GetDirectoryName(cpuRoot) ?? cpuRoot, "node");
        if (!Directory.Exists(nodeRoot))
        {
            return nodes;
        }

        foreach (var dir in Directory.EnumerateDirectories(nodeRoot, "node*"))
        {
            if (!int.TryParse(Path.GetFileName(dir).AsSpan(4), NumberStyles.None, CultureInfo.InvariantCulture, out var node))
            {
                continue;
            }

            var cpus = ReadCpuList(Path.Combine(dir, "cpulist"));
            if (cpus is null)
            {
                continue;
            }

            foreach (var cpu in cpus)
            {
                if (cpu < count)
                {
                    nodes[cpu] = node;
                }
            }
        }

        return nodes;
    }
}
