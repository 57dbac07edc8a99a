using Akka.Actor;
using Akka.Cluster;
using Akka.Event;
using Akka.Remote;
using AkkaCluster = Akka.Cluster.Cluster;

namespace ActorBlk.Actors.Clustering;

/// <summary>
/// Downs this node when a member of its cluster quarantined it (README, "Cluster"). Akka.Remote
/// publishes <see cref="ThisActorSystemQuarantinedEvent"/> when a remote system refuses this one
/// because it quarantined this incarnation: the other members removed the node (after a freeze, a
/// pause or a partition longer than failure detection and the split-brain resolver's stable-after)
/// and will never take it back. Without this the node, once awake, kept serving on its own side
/// until its own split-brain resolver downed it, 20 s or more later.
/// </summary>
/// <remarks>
/// Only a notice from a member that this node still counts (any status but Down and Removed) is
/// acted on: a notice from an address that is not a member (a client that left, an old incarnation
/// at the same address, a system that was never part of the cluster) says nothing about this
/// node's membership, and a member this node has downed or removed (the other side of a split this
/// node's side won) quarantines it as it goes.
/// </remarks>
internal sealed class QuarantineWatcher : ReceiveActor, IWithStash
{
    /// <summary>The actor's name under <c>/system</c>.</summary>
    public const string ActorName = "actorblk-quarantine-watcher";

    private readonly BlockLayer _layer;
    private readonly AkkaCluster _cluster;
    private readonly ILoggingAdapter _log = Context.GetLogger();
    private ThisActorSystemQuarantinedEvent? _pending;
    private bool _downed;

    public QuarantineWatcher(BlockLayer layer)
    {
        _layer = layer;
        _cluster = AkkaCluster.Get(Context.System);
        Idle();
    }

    public IStash Stash { get; set; } = null!;

    public static Props Props(BlockLayer layer) => Akka.Actor.Props.Create(() => new QuarantineWatcher(layer));

    protected override void PreStart() => Context.System.EventStream.Subscribe(Self, typeof(ThisActorSystemQuarantinedEvent));

    protected override void PostStop() => Context.System.EventStream.Unsubscribe(Self);

    private void Idle()
    {
        Receive<ThisActorSystemQuarantinedEvent>(notice =>
        {
            if (_downed || notice.RemoteAddress == _cluster.SelfAddress)
            {
                return;
            }

            // The membership as the cluster's event publisher holds it now (Cluster.State is a
            // read view that may lag behind it); further notices wait for the answer.
            _pending = notice;
            _cluster.SendCurrentClusterState(Self);
            Become(Deciding);
        });
    }

    private void Deciding()
    {
        Receive<ClusterEvent.CurrentClusterState>(state =>
        {
            var notice = _pending!;
            _pending = null;
            Decide(notice, state);
            Stash.UnstashAll();
            Become(Idle);
        });
        ReceiveAny(_ => Stash.Stash());
    }

    private void Decide(ThisActorSystemQuarantinedEvent notice, ClusterEvent.CurrentClusterState state)
    {
        var by = state.Members.FirstOrDefault(m => m.Address == notice.RemoteAddress);
        if (by is null || by.Status is MemberStatus.Down or MemberStatus.Removed)
        {
            _log.Info("{0} quarantined this node, but it is not a member of this node's cluster ({1}): ignored",
                notice.RemoteAddress, by is null ? "not a member" : "downed");
            return;
        }

        var self = state.Members.FirstOrDefault(m => m.Address == _cluster.SelfAddress);
        if (self is null || self.Status is MemberStatus.Down or MemberStatus.Removed or MemberStatus.Exiting)
        {
            // Not joined yet (a notice about an earlier incarnation), or already on its way out.
            return;
        }

        _downed = true;
        _layer.RecordQuarantine(notice.RemoteAddress);
        _log.Warning("Member {0} quarantined this node: the cluster removed it while it did not answer (a freeze, a pause or a partition) and never takes it back; the node downs itself",
            notice.RemoteAddress);
        _cluster.Down(_cluster.SelfAddress);
    }
}
