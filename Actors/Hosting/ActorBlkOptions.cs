using ActorBlk.Hardware.Devices;

namespace ActorBlk.Actors.Hosting;

/// <summary>Typed options for <see cref="ActorBlkHostingExtensions.WithActorBlk"/>.</summary>
public sealed class ActorBlkOptions
{
    /// <summary>Devices to create when the actor system starts, in addition to <c>actorblk.devices</c> in HOCON.</summary>
    public IList<DeviceOptions> Devices { get; } = [];

    /// <summary>
    /// Stacked devices to create when the actor system starts, in order, after every device and
    /// after <c>actorblk.stacked-devices</c>: their tables may name any of those, typed or from
    /// HOCON, or a stacked device before them in this list.
    /// </summary>
    /// <example><c>StackedDevices = { new StackedDeviceOptions("md0", StackTable.Striped(4096, "sda", "sdb")) }</c></example>
    public IList<StackedDeviceOptions> StackedDevices { get; } = [];

    /// <summary>
    /// HOCON placed over the library defaults (the <c>actorblk { ... }</c> section), e.g. a simulated
    /// topology for tests: <c>actorblk.topology.source = simulated</c>.
    /// </summary>
    public string? Hocon { get; set; }

    /// <summary>Bind <see cref="Serialization.IActorBlkMessage"/> to ActorBlk's Hyperion serializer (on by default).</summary>
    public bool AddSerializer { get; set; } = true;
}
