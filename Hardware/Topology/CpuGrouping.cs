namespace ActorBlk.Hardware.Topology;

/// <summary>
/// Splits CPUs into groups that are even in size and respect NUMA and SMT locality: the
/// behaviour of the kernel's <c>group_cpus_evenly</c> (lib/group_cpus.c, blk-mq-semantics §1.1).
/// </summary>
/// <remarks>
/// Two stages: the CPUs of <c>firstStage</c> are grouped first, then the remaining possible CPUs,
/// starting from the group after the last one the first stage filled, so that every CPU lands in
/// exactly one group. Within a stage, when there are at least as many NUMA nodes as groups whole
/// nodes are dealt to groups round-robin; otherwise each node gets groups in proportion to its
/// CPU count (smallest node first, at least one each), and inside a node CPUs are split into
/// groups of <c>floor(n/g)</c>, the first <c>n mod g</c> groups taking one extra, SMT siblings
/// taken together.
/// </remarks>
internal static class CpuGrouping
{
    /// <summary>Returns <paramref name="groups"/> CPU sets covering every possible CPU once (some may be empty).</summary>
    public static CpuSet[] GroupEvenly(CpuTopology topology, int groups, CpuSet firstStage)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(groups, 1);
        var masks = new List<int>[groups];
        for (var i = 0; i < groups; i++)
        {
            masks[i] = [];
        }

        var stageOne = firstStage.Intersect(topology.Possible);
        var done = SpreadStage(topology, 0, groups, stageOne, masks);
        var next = done >= groups ? 0 : done;
        SpreadStage(topology, next, groups, topology.Possible.Except(stageOne), masks);
        return masks.Select(CpuSet.Of).ToArray();
    }

    // __group_cpus_evenly: returns the number of groups this stage filled.
    private static int SpreadStage(CpuTopology topology, int startGroup, int groups, CpuSet cpus, List<int>[] masks)
    {
        if (cpus.IsEmpty)
        {
            return 0;
        }

        var nodes = Enumerable.Range(0, topology.NumaNodeCount)
            .Where(n => topology.CpusOfNode(n).Intersects(cpus))
            .ToArray();

        var current = startGroup;
        if (groups <= nodes.Length)
        {
            foreach (var node in nodes)
            {
                masks[current].AddRange(topology.CpusOfNode(node).Intersect(cpus));
                if (++current == groups)
                {
                    current = 0;
                }
            }

            return groups;
        }

        var done = 0;
        foreach (var (node, nodeGroups) in AllocateNodeGroups(topology, groups, cpus, nodes))
        {
            var remaining = new SortedSet<int>(topology.CpusOfNode(node).Intersect(cpus));
            var ncpus = remaining.Count;
            var extra = ncpus - (nodeGroups * (ncpus / nodeGroups));
            for (var g = 0; g < nodeGroups; g++, current++)
            {
                var perGroup = ncpus / nodeGroups;
                if (extra > 0)
                {
                    perGroup++;
                    extra--;
                }

                if (current >= groups)
                {
                    current = 0;
                }

                SpreadOne(topology, masks[current], remaining, perGroup);
            }

            done += nodeGroups;
        }

        return done;
    }

    // alloc_nodes_groups: groups per node, proportional to CPU count, smallest node first, >= 1 each.
    private static List<(int Node, int Groups)> AllocateNodeGroups(CpuTopology topology, int groups, CpuSet cpus, int[] nodes)
    {
        var perNode = nodes
            .Select(n => (Node: n, Cpus: topology.CpusOfNode(n).Intersect(cpus).Count))
            .Where(x => x.Cpus > 0)
            .OrderBy(x => x.Cpus).ThenBy(x => x.Node) // the kernel's sort is not stable; ties go by node id here
            .ToList();

        var remainingCpus = perNode.Sum(x => x.Cpus);
        var remainingGroups = Math.Min(groups, remainingCpus);
        var result = new List<(int, int)>(perNode.Count);
        foreach (var (node, ncpus) in perNode)
        {
            var ngroups = Math.Max(1, remainingGroups * ncpus / remainingCpus);
            result.Add((node, ngroups));
            remainingCpus -= ncpus;
            remainingGroups -= ngroups;
        }

        return result;
    }

    // grp_spread_init_one: take the lowest remaining CPU, then its remaining SMT siblings, until
    // the group has its share.
    private static void SpreadOne(CpuTopology topology, List<int> group, SortedSet<int> remaining, int perGroup)
    {
        while (perGroup > 0 && remaining.Count > 0)
        {
            var cpu = remaining.Min;
            remaining.Remove(cpu);
            group.Add(cpu);
            perGroup--;

            foreach (var sibling in topology.SiblingsOf(cpu))
            {
                if (perGroup == 0)
                {
                    break;
                }

                if (remaining.Remove(sibling))
                {
                    group.Add(sibling);
                    perGroup--;
                }
            }
        }
    }
}
