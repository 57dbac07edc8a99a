using ActorBlk.Actors.Tests.Support;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Tags;
using ActorBlk.Hardware.Topology;
using ActorBlk.Testing;
using Akka.Actor;
using Xunit;
using Xunit.Abstractions;

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
        var topology = CpuTopology.Simulated(8, sockets: 2).WithOnline(7, online: false);
        var actor = Sys.ActorOf(CpuTopologyProtocol.Props(topology));
        var queue = new RequestQueue("q0", new TagSet(new TagSetOptions(), topology), new ScriptedDriver());

        actor.Tell(new CpuTopologyProtocol.Register(queue));
        Assert.Equal("q0", (await ExpectMsgAsync<CpuTopologyProtocol.Registered>()).Queue);
        actor.Tell(CpuTopologyProtocol.GetTopology.Instance);

        var info = await ExpectMsgAsync<CpuTopologyProtocol.TopologyInfo>();
        Assert.Equal(8, info.PossibleCpus);
        Assert.Equal("0-6", info.Online);
        Assert.Equal(2, info.NumaNodes);
        Assert.Equal(["q0"], info.Queues);

        actor.Tell(new CpuTopologyProtocol.Unregister(queue));
        await ExpectMsgAsync<CpuTopologyProtocol.Unregistered>();
        actor.Tell(CpuTopologyProtocol.GetTopology.Instance);
        Assert.Empty((await ExpectMsgAsync<CpuTopologyProtocol.TopologyInfo>()).Queues);
    }
}
