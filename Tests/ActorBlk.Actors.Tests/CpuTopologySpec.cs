using ActorBlk.Actors.Tests.Support;
using DataQueue = ActorBlk.Hardware.Queues.RequestQueue;
using DataTagSet = ActorBlk.Hardware.Tags.TagSet;
using DataTagSetOptions = ActorBlk.Hardware.Tags.TagSetOptions;
using ActorBlk.Testing;
using Akka.Actor;
using Xunit;
using Xunit.Abstractions;
using TopologySnapshot = ActorBlk.Hardware.Topology.CpuTopology;

namespace ActorBlk.Actors.Tests;

/// <summary>The CPU-topology actor's registry of queues.</summary>
public sealed class CpuTopologySpec : Akka.TestKit.Xunit2.TestKit
{
    public CpuTopologySpec(ITestOutputHelper output)
        : base(Configs.Simulated, output: output)
    {
    }

    [Fact]
    public async Task Reports_the_topology_and_the_registered_queues()
    {
        var topology = TopologySnapshot.Simulated(8, sockets: 2).WithOnline(7, online: false);
        var actor = Sys.ActorOf(CpuTopology.Props(topology));
        var queue = new DataQueue("q0", new DataTagSet(new DataTagSetOptions(), topology), new ScriptedDriver());

        actor.Tell(new CpuTopology.Register(queue));
        Assert.Equal("q0", (await ExpectMsgAsync<CpuTopology.Registered>()).Queue);
        actor.Tell(CpuTopology.GetTopology.Instance);

        var info = await ExpectMsgAsync<CpuTopology.TopologyInfo>();
        Assert.Equal(8, info.PossibleCpus);
        Assert.Equal("0-6", info.Online);
        Assert.Equal(2, info.NumaNodes);
        Assert.Equal(["q0"], info.Queues);

        actor.Tell(new CpuTopology.Unregister(queue));
        await ExpectMsgAsync<CpuTopology.Unregistered>();
        actor.Tell(CpuTopology.GetTopology.Instance);
        Assert.Empty((await ExpectMsgAsync<CpuTopology.TopologyInfo>()).Queues);
    }
}
