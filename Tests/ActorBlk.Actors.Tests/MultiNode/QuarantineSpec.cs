using Akka.Actor;
using Akka.Cluster;
using Akka.Remote;
using Xunit;

namespace ActorBlk.Actors.Tests.MultiNode;

/// <summary>
/// README "Cluster": a node that a member of its cluster quarantined downs itself at once. A node
/// frozen past failure detection and stable-after (kill -STOP) was removed by the others; woken, it
/// kept serving on its own side, as its own leader with every other node unreachable, until its own
/// split-brain resolver downed it 20 s or more later, though Akka.Remote had told it within seconds
/// that the others quarantined it (an outside freeze audit). Notices from addresses that are not
/// members of the node's cluster, or from a member it removed, are ignored.
/// </summary>
[Collection(ClusterCollection.Name)]
public sealed class QuarantineSpec
{
    private static readonly TimeSpan Setup = TimeSpan.FromSeconds(90);

    [Fact]
    public async Task A_node_quarantined_by_a_member_downs_itself_but_not_for_a_stranger_or_a_removed_member()
    {
        var a = ClusterNode.Start("a");
        await using var _a = a;
        var b = ClusterNode.Start("b");
        await using var _b = b;
        var c = ClusterNode.Start("c");
        await using var _c = c;
        await a.JoinAsync(a, Setup);
        await b.JoinAsync(a, Setup);
        await c.JoinAsync(a, Setup);

        // c leaves and is removed: in b's view it is no longer a member (a leave, because removing
        // a downed member that is still running took 10 s of the spec).
        await c.Cluster.LeaveAsync().WaitAsync(Setup);
        await b.WaitForEventAsync(e => e is ClusterEvent.MemberRemoved r && r.Member.Address == c.Cluster.SelfAddress, Setup);
        await c.System.WhenTerminated.WaitAsync(Setup);

        // Handled in order: a stranger's notice and the removed member's are ignored (the first
        // acted on would be the one recorded), the member's downs b.
        var stranger = new Address(b.Cluster.SelfAddress.Protocol, b.Cluster.SelfAddress.System, "127.0.0.1", 1);
        b.System.EventStream.Publish(new ThisActorSystemQuarantinedEvent(b.Cluster.SelfAddress, stranger));
        b.System.EventStream.Publish(new ThisActorSystemQuarantinedEvent(b.Cluster.SelfAddress, c.Cluster.SelfAddress));
        b.System.EventStream.Publish(new ThisActorSystemQuarantinedEvent(b.Cluster.SelfAddress, a.Cluster.SelfAddress));

        await b.System.WhenTerminated.WaitAsync(Setup);
        Assert.Equal(a.Cluster.SelfAddress, b.Layer.QuarantinedBy);
        Assert.IsType<CoordinatedShutdown.ClusterDowningReason>(CoordinatedShutdown.Get(b.System).ShutdownReason);

        // The member that sent the notice keeps running; b leaves its cluster.
        await a.WaitForEventAsync(e => e is ClusterEvent.MemberRemoved r && r.Member.Address == b.Cluster.SelfAddress, Setup);
        var state = await a.CurrentStateAsync(Setup);
        Assert.Equal(MemberStatus.Up, Assert.Single(state.Members).Status);
        Assert.Null(a.Layer.QuarantinedBy);
    }
}
