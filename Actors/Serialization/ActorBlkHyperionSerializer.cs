using Akka.Actor;
using Akka.Serialization;

namespace ActorBlk.Actors.Serialization;

/// <summary>
/// Hyperion with a working allow-list (<see cref="ActorBlkTypeFilter"/>), the deny-list of unsafe
/// types, and no object-reference preservation (ActorBlk messages are trees). Bind it in HOCON:
/// <code>
/// akka.actor.serializers.actorblk = "ActorBlk.Actors.Serialization.ActorBlkHyperionSerializer, ActorBlk.Actors"
/// akka.actor.serialization-bindings { "ActorBlk.Actors.Serialization.IActorBlkMessage, ActorBlk.Actors" = actorblk }
/// </code>
/// </summary>
public sealed class ActorBlkHyperionSerializer : HyperionSerializer
{
    /// <summary>The serializer id on the wire (distinct from stock Hyperion's -5).</summary>
    public const int SerializerId = 7351;

    /// <summary>The settings: allow-list filter, unsafe types refused, version tolerance on.</summary>
    public static readonly HyperionSerializerSettings HyperionSettings = new(
        preserveObjectReferences: false,
        versionTolerance: true,
        knownTypesProvider: typeof(NoExtraKnownTypes),
        packageNameOverrides: [],
        surrogates: [],
        disallowUnsafeType: true,
        typeFilter: ActorBlkTypeFilter.Instance);

    /// <summary>Created by Akka's serialization extension from HOCON.</summary>
    public ActorBlkHyperionSerializer(ExtendedActorSystem system)
        : base(system, HyperionSettings)
    {
    }

    /// <summary>Created by Akka's serialization extension from HOCON (with the serializer's config block).</summary>
    public ActorBlkHyperionSerializer(ExtendedActorSystem system, Akka.Configuration.Config config)
        : base(system, HyperionSettings)
    {
        _ = config;
    }

    /// <inheritdoc />
    public override int Identifier => SerializerId;

    /// <summary>No types are pre-registered: every manifest carries its type name, checked by the filter.</summary>
    public sealed class NoExtraKnownTypes : IKnownTypesProvider
    {
        /// <summary>Created by Hyperion's settings.</summary>
        public NoExtraKnownTypes(ExtendedActorSystem system) => _ = system;

        /// <inheritdoc />
        public IEnumerable<Type> GetKnownTypes() => [];
    }
}
