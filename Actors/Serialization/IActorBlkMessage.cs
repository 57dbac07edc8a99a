namespace ActorBlk.Actors.Serialization;

/// <summary>
/// Marks every ActorBlk message that may cross the network. The serialization binding in
/// hocon.conf binds exactly this interface to <see cref="ActorBlkHyperionSerializer"/>, so no other
/// type is ever serialized with Hyperion.
/// </summary>
public interface IActorBlkMessage
{
}

/// <summary>A message that asks for information and changes nothing (safe to retry).</summary>
public interface IActorBlkQuery : IActorBlkMessage
{
}
