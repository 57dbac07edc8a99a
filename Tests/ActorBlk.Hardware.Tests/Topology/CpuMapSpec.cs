using ActorBlk.Hardware.Topology;
using Xunit;

namespace ActorBlk.Hardware.Tests.Topology;

/// <summary>The worked examples of blk-mq-semantics §1.1 and the table of §15.</summary>
public sealed class CpuMapSpec
{
    private static CpuSet[] Groups(CpuMap map, HctxType type = HctxType.Default)
    {
        var q = map[type];
        return Enumerable.Range(q.QueueOffset, q.QueueCount).Select(map.CpusOf).ToArray();
    }

    [Fact]
    public void Group_evenly_one_node_8_cpus_3_queues_gives_contiguous_groups()
    {
        // §1.1 [6.2+]: 1 node, 8 CPUs, no SMT, Q = 3 -> {0,1,2}, {3,4,5}, {6,7}.
        var map = CpuMap.Build(CpuTopology.Simulated(8), 3);

        Assert.Equal([CpuSet.Of(0, 1, 2), CpuSet.Of(3, 4, 5), CpuSet.Of(6, 7)], Groups(map));
    }

    [Fact]
    public void Group_evenly_keeps_smt_siblings_together()
    {
        var map = CpuMap.Build(CpuTopology.Simulated(8, threadsPerCore: 2), 2);

        Assert.Equal([CpuSet.Of(0, 1, 4, 5), CpuSet.Of(2, 3, 6, 7)], Groups(map));
    }

    [Fact]
    public void Group_evenly_deals_whole_nodes_when_queues_do_not_exceed_nodes()
    {
        var map = CpuMap.Build(CpuTopology.Simulated(8, sockets: 2, threadsPerCore: 2), 2);

        Assert.Equal([CpuSet.Of(0, 1, 4, 5), CpuSet.Of(2, 3, 6, 7)], Groups(map));
    }

    [Fact]
    public void Group_evenly_splits_nodes_proportionally_and_keeps_siblings()
    {
        var topology = CpuTopology.Simulated(8, sockets: 2, threadsPerCore: 2);

        Assert.Equal([CpuSet.Of(0, 4), CpuSet.Of(1, 5), CpuSet.Of(2, 6), CpuSet.Of(3, 7)], Groups(CpuMap.Build(topology, 4)));
        Assert.Equal([CpuSet.Of(0, 1, 4, 5), CpuSet.Of(2, 6), CpuSet.Of(3, 7)], Groups(CpuMap.Build(topology, 3)));
    }

    [Fact]
    public void Group_evenly_balances_online_cpus_first_and_parks_offline_ones()
    {
        var topology = CpuTopology.Simulated(4).WithOnline(1, online: false);

        var groups = Groups(CpuMap.Build(topology, 2));

        Assert.Equal([CpuSet.Of(0, 1, 2), CpuSet.Of(3)], groups);
        Assert.All(groups, g => Assert.True(g.Intersects(topology.Online)));
    }

    [Fact]
    public void Present_first_8_cpus_smt_3_queues()
    {
        // §1.1 [5.4 .. 6.1]: siblings (0,4)(1,5)(2,6)(3,7), Q = 3 -> q0 = {0,3,4,7}, q1 = {1,5}, q2 = {2,6}.
        var map = CpuMap.Build(CpuTopology.Simulated(8, threadsPerCore: 2), 3, algorithm: CpuMapAlgorithm.PresentFirst);

        Assert.Equal([CpuSet.Of(0, 3, 4, 7), CpuSet.Of(1, 5), CpuSet.Of(2, 6)], Groups(map));
    }

    [Fact]
    public void Present_first_8_cpus_no_smt_3_queues_is_cpu_modulo_3()
    {
        var map = CpuMap.Build(CpuTopology.Simulated(8), 3, algorithm: CpuMapAlgorithm.PresentFirst);

        Assert.Equal([CpuSet.Of(0, 3, 6), CpuSet.Of(1, 4, 7), CpuSet.Of(2, 5)], Groups(map));
    }

    [Fact]
    public void Contiguous_8_cpus_4_queues()
    {
        // §1.1 [3.13]: 8 online CPUs, no SMT, Q = 4 -> {0,1}, {2,3}, {4,5}, {6,7}.
        var map = CpuMap.Build(CpuTopology.Simulated(8), 4, algorithm: CpuMapAlgorithm.Contiguous);

        Assert.Equal([CpuSet.Of(0, 1), CpuSet.Of(2, 3), CpuSet.Of(4, 5), CpuSet.Of(6, 7)], Groups(map));
    }

    [Fact]
    public void Contiguous_smt_2_queues_keeps_siblings_together()
    {
        // §1.1 [3.13]: siblings (0,4)(1,5)(2,6)(3,7), Q = 2 -> 0,1,4,5 -> 0; 2,3,6,7 -> 1.
        var map = CpuMap.Build(CpuTopology.Simulated(8, threadsPerCore: 2), 2, algorithm: CpuMapAlgorithm.Contiguous);

        Assert.Equal([CpuSet.Of(0, 1, 4, 5), CpuSet.Of(2, 3, 6, 7)], Groups(map));
    }

    [Fact]
    public void Contiguous_maps_offline_cpus_to_the_first_queue()
    {
        var topology = CpuTopology.Simulated(8).WithOnline(6, false).WithOnline(7, false);
        var map = CpuMap.Build(topology, 2, algorithm: CpuMapAlgorithm.Contiguous);

        Assert.Equal(0, map.HardwareQueueFor(6, HctxType.Default));
        Assert.Equal(0, map.HardwareQueueFor(7, HctxType.Default));
        Assert.Equal([CpuSet.Of(0, 1, 2, 6, 7), CpuSet.Of(3, 4, 5)], Groups(map));
    }

    [Fact]
    public void More_queues_than_cpus_leaves_queues_unmapped()
    {
        // §15 "unmapped hctx": 4 CPUs, 6 hardware queues -> only the mapped indices have CPUs.
        var map = CpuMap.Build(CpuTopology.Simulated(4), 6);

        Assert.Equal([0, 1, 2, 3], Enumerable.Range(0, 6).Where(map.IsMapped));
        Assert.False(map.IsMapped(4));
        Assert.False(map.IsMapped(5));
    }

    [Fact]
    public void Every_possible_cpu_maps_to_exactly_one_queue()
    {
        foreach (var algorithm in Enum.GetValues<CpuMapAlgorithm>())
        {
            var map = CpuMap.Build(CpuTopology.Simulated(16, sockets: 2, threadsPerCore: 2).WithOnline(5, false), 5, algorithm: algorithm);
            var all = Enumerable.Range(0, 5).SelectMany(q => map.CpusOf(q)).ToList();

            Assert.Equal(16, all.Count);
            Assert.Equal(16, all.Distinct().Count());
        }
    }

    [Fact]
    public void A_type_without_queues_falls_back_to_the_default_map()
    {
        // §1 item 4: a read with a READ map of 0 queues lands on the DEFAULT hctx.
        var map = CpuMap.Build(CpuTopology.Simulated(4), defaultQueues: 2, readQueues: 0, pollQueues: 1);

        Assert.Equal(map.HardwareQueueFor(3, HctxType.Default), map.HardwareQueueFor(3, HctxType.Read));
        Assert.Equal(2, map.HardwareQueueFor(3, HctxType.Poll));
        Assert.Equal(HctxType.Poll, map.TypeOf(2));
        Assert.Equal(3, map.HardwareQueueCount);
    }
}
