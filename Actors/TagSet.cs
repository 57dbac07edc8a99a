using ActorBlk.Actors.Serialization;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Tags;
using Akka.Actor;
using Akka.Event;

namespace ActorBlk.Actors;

/// <summary>
/// Protocol of the tag-set actor: request queues join and leave the set through it, so the
/// moments a set becomes shared or unshared are serialised and logged in one place.
/// </summary>
public static class TagSetProtocol
{
    /// <summary>A queue joins the set; the reply is <see cref="Joined"/>. Local only.</summary>
    public sealed record Join(RequestQueue Queue) : INoSerializationVerificationNeeded;

    /// <summary>The queue joined; <paramref name="Shared"/> tells whether the set is now shared.</summary>
    public sealed record Joined(string TagSet, bool Shared, int Queues) : IActorBlkMessage;

    /// <summary>A queue leaves the set; the reply is <see cref="Left"/>. Local only.</summary>
    public sealed record Leave(RequestQueue Queue) : INoSerializationVerificationNeeded;

    /// <summary>The queue left; <paramref name="Queues"/> remain.</summary>
    public sealed record Left(string TagSet, bool Shared, int Queues) : IActorBlkMessage;

    /// <summary>Asks for the set's state.</summary>
    public sealed record GetState : IActorBlkQuery
    {
        /// <summary>The instance.</summary>
        public static readonly GetState Instance = new();
    }

    /// <summary>The set's state.</summary>
    /// <param name="Name">Tag set name.</param>
    /// <param name="Queues">Names of the queues using it.</param>
    /// <param name="Shared">True with two or more queues.</param>
    /// <param name="Depth">Tags per hardware queue.</param>
    /// <param name="Reserved">Reserved tags per hardware queue.</param>
    /// <param name="HardwareQueues">Hardware queues.</param>
    /// <param name="HostWide">One tag map for all hardware queues.</param>
    /// <param name="ActiveQueues">Active users of each tag map.</param>
    /// <param name="InUse">Tags in use in each tag map.</param>
    public sealed record State(string Name, string[] Queues, bool Shared, int Depth, int Reserved, int HardwareQueues, bool HostWide, int[] ActiveQueues, int[] InUse) : IActorBlkMessage;

    /// <summary>Props of the actor for <paramref name="set"/>.</summary>
    public static Props Props(TagSet set) => Akka.Actor.Props.Create(() => new TagSetActor(set));
}

/// <summary>The tag-set actor.</summary>
internal sealed class TagSetActor : ReceiveActor
{
    private readonly TagSet _set;
    private readonly ILoggingAdapter _log = Context.GetLogger();

    public TagSetActor(TagSet set)
    {
        _set = set;
        Receive<TagSetProtocol.Join>(HandleJoin);
        Receive<TagSetProtocol.Leave>(HandleLeave);
        Receive<TagSetProtocol.GetState>(_ => Sender.Tell(Snapshot()));
    }

    private void HandleJoin(TagSetProtocol.Join join)
    {
        if (_set.AddQueue(join.Queue))
        {
            _log.Info("Tag set {TagSet} is now shared by {Queues}: fair share {Share} of {Depth} tags per active queue",
                _set.Name, string.Join(", ", _set.Queues.Select(q => q.Name)),
                Hardware.Queues.HardwareContext.FairShare(_set.QueueDepth - _set.ReservedTags, 2), _set.QueueDepth);
        }

        Sender.Tell(new TagSetProtocol.Joined(_set.Name, _set.IsShared, _set.Queues.Count));
    }

    private void HandleLeave(TagSetProtocol.Leave leave)
    {
        if (_set.RemoveQueue(leave.Queue))
        {
            _log.Info("Tag set {TagSet} is no longer shared: {Queue} keeps every tag", _set.Name, _set.Queues.Single().Name);
        }

        Sender.Tell(new TagSetProtocol.Left(_set.Name, _set.IsShared, _set.Queues.Count));
    }

    private TagSetProtocol.State Snapshot()
    {
        var maps = _set.AllTags.ToArray();
        return new TagSetProtocol.State(_set.Name, _set.Queues.Select(q => q.Name).ToArray(), _set.IsShared, _set.QueueDepth, _set.ReservedTags,
            _set.HardwareQueueCount, _set.IsHostWide, maps.Select(t => t.ActiveQueues).ToArray(), maps.Select(t => t.InUse).ToArray());
    }
}
