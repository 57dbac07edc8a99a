using ActorBlk.Hardware.Devices;

namespace ActorBlk.Actors.Hosting;

/// <summary>Typed options for <see cref="ActorBlkHostingExtensions.WithActorBlk"/>.</summary>
public sealed class ActorBlkOptions
{
    /// <summary>Devices to create when the actor system starts, in addition to <c>actorblk.devices</c> in HOCON.</summary>
    public IList<DeviceOptions> Devices { get; } = [];

    /// <summary>
    /// HOCON placed over the library defaults (the <c>actorblk { ... }</c> section), e.g. a simulated
    /// topology for tests: <c>actorblk.topology.source = simulated</c>.
    /// </summary>
    public string? Hocon { get; set; }

    /// <summary>Bind <see cref="Serialization.IActorBlkMessage"/> to ActorBlk's Hyperion serializer (on by default).</summary>
    public bool AddSerializer { get; set; } = true;
}
