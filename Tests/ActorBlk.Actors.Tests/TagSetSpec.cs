using ActorBlk.Actors.Tests.Support;
using DataQueue = ActorBlk.Hardware.Queues.RequestQueue;
using ActorBlk.Testing;
using Akka.Actor;
using Xunit;
using Xunit.Abstractions;
using DataTagSet = ActorBlk.Hardware.Tags.TagSet;
using DataTagSetOptions = ActorBlk.Hardware.Tags.TagSetOptions;

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
        var set = new DataTagSet(new DataTagSetOptions { Name = "host0", QueueDepth = 32 }, topology);
        var a = new DataQueue("a", set, new ScriptedDriver());
        var b = new DataQueue("b", set, new ScriptedDriver());
        var actor = Sys.ActorOf(TagSet.Props(set));

        actor.Tell(new TagSet.Join(a));
        Assert.Equal(new TagSet.Joined("host0", false, 1), await ExpectMsgAsync<TagSet.Joined>());
        actor.Tell(new TagSet.Join(b));
        Assert.Equal(new TagSet.Joined("host0", true, 2), await ExpectMsgAsync<TagSet.Joined>());

        actor.Tell(TagSet.GetState.Instance);
        var state = await ExpectMsgAsync<TagSet.State>();
        Assert.Equal(["a", "b"], state.Queues);
        Assert.True(state.Shared);
        Assert.Equal(32, state.Depth);

        actor.Tell(new TagSet.Leave(b));
        Assert.Equal(new TagSet.Left("host0", false, 1), await ExpectMsgAsync<TagSet.Left>());
    }
}
