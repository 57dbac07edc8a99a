using ActorBlk.Hardware.Topology;
using Xunit;

namespace ActorBlk.Hardware.Tests.Topology;

public sealed class CpuTopologySpec
{
    [Fact]
    public void Simulated_smt_machine_numbers_siblings_like_x86()
    {
        var topology = CpuTopology.Simulated(8, sockets: 1, threadsPerCore: 2);

        Assert.Equal(CpuSet.Of(0, 4), topology.SiblingsOf(0));
        Assert.Equal(CpuSet.Of(3, 7), topology.SiblingsOf(7));
        Assert.Equal(3, topology.FirstSiblingOf(7));
        Assert.True(topology.SharesCache(0, 7));
    }

    [Fact]
    public void Two_sockets_are_two_llc_groups_and_two_nodes()
    {
        var topology = CpuTopology.Simulated(8, sockets: 2, threadsPerCore: 2);

        Assert.Equal(2, topology.NumaNodeCount);
        Assert.Equal(CpuSet.Of(0, 1, 4, 5), topology.CpusOfNode(0));
        Assert.Equal(CpuSet.Of(2, 3, 6, 7), topology.CpusOfNode(1));
        Assert.True(topology.SharesCache(0, 5));
        Assert.False(topology.SharesCache(0, 2));
    }

    [Fact]
    public void Hotplug_produces_a_new_snapshot_and_keeps_the_old_one()
    {
        var before = CpuTopology.Simulated(4);
        var after = before.WithOnline(2, online: false);

        Assert.Equal(CpuSet.Of(0, 1, 3), after.Online);
        Assert.Equal(CpuSet.Range(4), before.Online);
        Assert.Equal(4, after.PossibleCount);
        Assert.Equal(CpuSet.Range(4), after.WithOnline(2, online: true).Online);
    }

    [Fact]
    public void The_last_online_cpu_cannot_go_offline()
    {
        var one = CpuTopology.Simulated(2).WithOnline(1, online: false);

        Assert.Throws<InvalidOperationException>(() => one.WithOnline(0, online: false));
    }

    [Fact]
    public void A_cpu_that_is_not_present_cannot_come_online()
    {
        var topology = CpuTopology.Simulated(4, present: CpuSet.Of(0, 1));

        Assert.Throws<ArgumentOutOfRangeException>(() => topology.WithOnline(3, online: true));
    }

    [Fact]
    public void Reads_a_sysfs_tree()
    {
        var root = Directory.CreateTempSubdirectory("actorblk-sysfs-");
        try
        {
            var cpu = Path.Combine(root.FullName, "cpu");
            Directory.CreateDirectory(cpu);
            File.WriteAllText(Path.Combine(cpu, "possible"), "0-3\n");
            File.WriteAllText(Path.Combine(cpu, "present"), "0-3\n");
            File.WriteAllText(Path.Combine(cpu, "online"), "0-2\n");
            for (var i = 0; i < 4; i++)
            {
                var topo = Path.Combine(cpu, $"cpu{i}", "topology");
                Directory.CreateDirectory(topo);
                File.WriteAllText(Path.Combine(topo, "thread_siblings_list"), i % 2 == 0 ? $"{i}-{i + 1}" : $"{i - 1}-{i}");
                File.WriteAllText(Path.Combine(topo, "physical_package_id"), (i / 2).ToString());
                var cache = Path.Combine(cpu, $"cpu{i}", "cache", "index3");
                Directory.CreateDirectory(cache);
                File.WriteAllText(Path.Combine(cache, "level"), "3");
                File.WriteAllText(Path.Combine(cache, "shared_cpu_list"), i < 2 ? "0-1" : "2-3");
            }

            var node0 = Path.Combine(root.FullName, "node", "node0");
            var node1 = Path.Combine(root.FullName, "node", "node1");
            Directory.CreateDirectory(node0);
            Directory.CreateDirectory(node1);
            File.WriteAllText(Path.Combine(node0, "cpulist"), "0-1");
            File.WriteAllText(Path.Combine(node1, "cpulist"), "2-3");

            var topology = CpuTopology.FromSysfs(cpu);

            Assert.Equal(4, topology.PossibleCount);
            Assert.Equal(CpuSet.Of(0, 1, 2), topology.Online);
            Assert.Equal(CpuSet.Of(2, 3), topology.SiblingsOf(3));
            Assert.False(topology.SharesCache(1, 2));
            Assert.Equal(1, topology.NodeOf(3));
            Assert.False(topology.IsSimulated);
        }
        finally
        {
            root.Delete(recursive: true);
        }
    }

    [Fact]
    public void Reads_this_machine()
    {
        var topology = CpuTopology.FromSysfs();

        Assert.True(topology.PossibleCount >= Environment.ProcessorCount);
        Assert.True(topology.Online.Count >= 1);
        Assert.Contains(topology.Online.First, topology.Possible);
    }
}
