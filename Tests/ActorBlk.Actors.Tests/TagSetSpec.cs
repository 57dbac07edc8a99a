using ActorBlk.Actors.Tests.Support;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Tags;
using ActorBlk.Testing;
using Akka.Actor;
using Xunit;
using Xunit.Abstractions;

namespace ActorBlk.Actors.Tests;

/// <summary>The tag-set actor: joins and leaves decide when the set is shared (blk-mq-semantics §2.5 item 21).</summary>
public sealed class TagSetSpec : Akka.TestKit.Xunit2.TestKit
{
    public TagSetSpec(ITestOutputHelper output)
        : base(Configs.Simulated, output: output)
    {
    }

    [Fact]
    public async Task The_second_queue_makes_the_set_shared_and_leaving_unshares_it()
    {
        var topology = Hardware.Topology.CpuTopology.Simulated(2);
        var set = new TagSet(new TagSetOptions { Name = "host0", QueueDepth = 32 }, topology);
        var a = new RequestQueue("a", set, new ScriptedDriver());
        var b = new RequestQueue("b", set, new ScriptedDriver());
        var actor = Sys.ActorOf(TagSetProtocol.Props(set));

        actor.Tell(new TagSetProtocol.Join(a));
        Assert.Equal(new TagSetProtocol.Joined("host0", false, 1), await ExpectMsgAsync<TagSetProtocol.Joined>());
        actor.Tell(new TagSetProtocol.Join(b));
        Assert.Equal(new TagSetProtocol.Joined("host0", true, 2), await ExpectMsgAsync<TagSetProtocol.Joined>());

        actor.Tell(TagSetProtocol.GetState.Instance);
        var state = await ExpectMsgAsync<TagSetProtocol.State>();
        Assert.Equal(["a", "b"], state.Queues);
        Assert.True(state.Shared);
        Assert.Equal(32, state.Depth);

        actor.Tell(new TagSetProtocol.Leave(b));
        Assert.Equal(new TagSetProtocol.Left("host0", false, 1), await ExpectMsgAsync<TagSetProtocol.Left>());
    }
}
