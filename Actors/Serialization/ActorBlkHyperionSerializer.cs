using Akka.Actor;
using Akka.Event;
using Akka.Serialization;

namespace ActorBlk.Actors.Serialization;

/// <summary>
/// Hyperion with a working allow-list (<see cref="ActorBlkTypeFilter"/>), the deny-list of unsafe
/// types, and no object-reference preservation (ActorBlk messages are trees). Bind it in HOCON:
/// <code>
/// akka.actor.serializers.actorblk = "ActorBlk.Actors.Serialization.ActorBlkHyperionSerializer, ActorBlk.Actors"
/// akka.actor.serialization-bindings { "ActorBlk.Actors.Serialization.IActorBlkMessage, ActorBlk.Actors" = actorblk }
/// </code>
/// Every payload it reads comes from the network: it must match <see cref="WireSchema"/> before
/// Hyperion reads it (exact type names, declared field types, lengths within the payload), and
/// what Hyperion builds passes <see cref="RemoteSurface.Admit"/>: only request and reply types are
/// delivered, administrative requests only with the admin secret.
/// </summary>
public sealed class ActorBlkHyperionSerializer : HyperionSerializer
{
    // Looked for again at most once a second while there is none, as the cluster seal's (a
    // Lazy kept a first "no secret" for good, so a secret file that appeared later authenticated
    // nothing until a restart).
    private readonly ClusterSeal.KeySource _secret;
    private long _lastSecretWarning;

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
        _secret = new ClusterSeal.KeySource(system.Settings.Config);
    }

    /// <summary>Created by Akka's serialization extension from HOCON (with the serializer's config block).</summary>
    public ActorBlkHyperionSerializer(ExtendedActorSystem system, Akka.Configuration.Config config)
        : base(system, HyperionSettings)
    {
        _ = config;
        _secret = new ClusterSeal.KeySource(system.Settings.Config);
    }

    /// <inheritdoc />
    public override int Identifier => SerializerId;

    /// <inheritdoc />
    /// <exception cref="System.Runtime.Serialization.SerializationException">The payload is not one the network may send.</exception>
    public override object FromBinary(byte[] bytes, Type type)
    {
        WireSchema.Check(bytes);
        object message;
        t_reading++;
        try
        {
            message = base.FromBinary(bytes, type);
        }
        catch (Exception ex) when (ex is not System.Runtime.Serialization.SerializationException)
        {
            // Hyperion's refusals (an unsafe or unlisted type) and malformed input: Akka.Remote logs
            // a SerializationException and drops the message, keeping the association.
            throw new System.Runtime.Serialization.SerializationException($"ActorBlk refuses a payload it cannot read: {ex.Message}", ex);
        }
        finally
        {
            t_reading--;
        }

        // Only an envelope needs the secret.
        return message is RemoteSurface.Authenticated ? AdmitAuthenticated(message) : RemoteSurface.Admit(message, null);
    }

    // An envelope checked against the node's secret. One the node cannot read refuses it, as a
    // wrong credential (the read is tried again with the next envelope). The reason goes back to a
    // peer not yet authenticated, so it names no path: the operator finds it in the log, at most
    // one line a minute (a peer could otherwise write one per message).
    private object AdmitAuthenticated(object envelope)
    {
        byte[]? secret;
        try
        {
            secret = _secret.Key;
        }
        catch (System.Runtime.Serialization.SerializationException wrapped) when (wrapped.InnerException is AdminSecretException ex)
        {
            var now = Environment.TickCount64;
            var last = Interlocked.Read(ref _lastSecretWarning);
            if ((last == 0 || now - last >= 60_000) && Interlocked.CompareExchange(ref _lastSecretWarning, now, last) == last)
            {
                system.Log.Warning("Refused administrative requests (at most one line a minute): {0}", ex.Message);
            }

            return RemoteSurface.Admit(envelope, null) is RemoteSurface.AdminRefused refused
                ? refused with { Reason = "the node cannot read its admin secret (see its log)" }
                : throw new System.Runtime.Serialization.SerializationException("The node cannot read its admin secret.", ex);
        }

        return RemoteSurface.Admit(envelope, secret);
    }

    [ThreadStatic]
    private static bool t_inEnvelope;

    [ThreadStatic]
    private static int t_reading;

    /// <summary>True on a thread that is reading a payload (the type filter refuses surrogated types then).</summary>
    internal static bool Reading => t_reading > 0;

    /// <summary>The node's ActorBlk serializer.</summary>
    /// <exception cref="InvalidOperationException">ActorBlk messages are not bound to it (the serializer configuration is missing).</exception>
    internal static ActorBlkHyperionSerializer Of(ActorSystem system) =>
        ((ExtendedActorSystem)system).Serialization.FindSerializerForType(typeof(IActorBlkMessage)) as ActorBlkHyperionSerializer
        ?? throw new InvalidOperationException("ActorBlk messages are not bound to ActorBlkHyperionSerializer (ActorBlkRemoting.SerializerConfig).");

    /// <summary>
    /// Reads the request of an <see cref="RemoteSurface.Authenticated"/> envelope from its own bytes
    /// (the envelope's admission is decided by <see cref="RemoteSurface.Admit"/> on the whole). An
    /// envelope inside an envelope is refused here, before it is read: nesting is one level deep.
    /// </summary>
    /// <exception cref="System.Runtime.Serialization.SerializationException">Nested, malformed, or not a message.</exception>
    internal IActorBlkMessage ReadEnveloped(byte[] bytes)
    {
        if (t_inEnvelope)
        {
            throw new System.Runtime.Serialization.SerializationException("ActorBlk refuses an authenticated envelope inside another.");
        }

        WireSchema.Check(bytes);
        t_inEnvelope = true;
        try
        {
            return base.FromBinary(bytes, typeof(object)) as IActorBlkMessage
                   ?? throw new System.Runtime.Serialization.SerializationException("The authenticated envelope does not carry an ActorBlk message.");
        }
        finally
        {
            t_inEnvelope = false;
        }
    }

    /// <summary>No types are pre-registered: every manifest carries its type name, checked by the filter.</summary>
    public sealed class NoExtraKnownTypes : IKnownTypesProvider
    {
        /// <summary>Created by Hyperion's settings.</summary>
        public NoExtraKnownTypes(ExtendedActorSystem system) => _ = system;

        /// <inheritdoc />
        public IEnumerable<Type> GetKnownTypes() => [];
    }
}
