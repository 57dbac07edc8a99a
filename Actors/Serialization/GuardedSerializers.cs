using System.Runtime.Serialization;
using System.Security.Cryptography;
using Akka.Actor;
using Akka.Configuration;
using Akka.Dispatch.SysMsg;
using Akka.Event;
using Akka.Remote.Serialization;
using Akka.Serialization;

namespace ActorBlk.Actors.Serialization;

// Akka.Remote picks the deserializer by the id the sender wrote, not by the binding, so every
// serializer a node has registered is reachable from the network. These replace the stock ones
// under the same ids (hocon.conf, "serializers") and refuse what no peer may send: arbitrary types
// by name (JSON, protobuf by name, exceptions by name), PoisonPill and Kill, remote deployment, and
// system messages that would stop, suspend or confuse a local actor (README, "Security").

/// <summary>
/// Serializer id 1 (<c>json</c>): writes as Akka's Newtonsoft serializer does, but never reads a
/// payload: JSON with type names can instantiate any type the node can load, and nothing ActorBlk
/// or Akka.Remote sends uses it.
/// </summary>
public sealed class ActorBlkJsonSerializer : NewtonSoftJsonSerializer
{
    /// <summary>Created by Akka's serialization extension.</summary>
    public ActorBlkJsonSerializer(ExtendedActorSystem system)
        : base(system)
    {
    }

    /// <summary>Created by Akka's serialization extension (with the serializer's config block).</summary>
    public ActorBlkJsonSerializer(ExtendedActorSystem system, Akka.Configuration.Config config)
        : base(system, config)
    {
    }

    /// <inheritdoc />
    public override int Identifier => 1;

    /// <inheritdoc />
    /// <exception cref="SerializationException">Always: JSON payloads are refused.</exception>
    public override object FromBinary(byte[] bytes, Type type) =>
        throw new SerializationException($"ActorBlk refuses JSON payloads ({type?.FullName ?? "no type"}): only allow-listed ActorBlk messages are read from the network.");
}

/// <summary>
/// A stock string-manifest serializer under its own id, with some of its manifests refused from
/// the network. The stock serializer is created on first use: a system without the module it
/// belongs to (no Akka.Remote or Akka.Cluster config) still lists this one and must start.
/// </summary>
public abstract class ManifestGuardingSerializer<TInner> : SerializerWithStringManifest
    where TInner : SerializerWithStringManifest
{
    private readonly Lazy<TInner> _inner;
    private readonly Lazy<HashSet<string>> _refused;
    private readonly bool _boundGzip;
    private readonly string _what;
    private readonly ExtendedActorSystem _system;
    private readonly ClusterSeal.KeySource? _secret;
    private int _unsealed;

    /// <summary>
    /// Most bytes a compressed payload may expand to (16 MiB). An honest one must fit in a remoting
    /// frame compressed (128,000 bytes by default) and expands a few times; gzip can expand a
    /// thousand times, so a peer could make the stock serializer allocate about 400 MB for one
    /// frame.
    /// </summary>
    public const long MaxDecompressedBytes = 16 << 20;

    /// <param name="system">The actor system.</param>
    /// <param name="create">Creates the stock serializer.</param>
    /// <param name="refused">The manifests refused, asked of the stock serializer.</param>
    /// <param name="what">What is refused, for the exception's message ("akka-misc manifest ...: what").</param>
    /// <param name="boundGzip">
    /// Every gzip payload (whatever its manifest: the stock serializer compresses several types)
    /// is accepted only if it expands to at most <see cref="MaxDecompressedBytes"/>. A payload is
    /// gzip when it starts with gzip's magic bytes, which no protobuf message can (0x1F would be
    /// field 3 with wire type 7, which does not exist).
    /// </param>
    /// <param name="sealWithSecret">
    /// On a node with an admin secret, every message is sealed with it (<see cref="ClusterSeal"/>)
    /// and one without a valid seal is refused: the cluster's own protocol (joining, gossip,
    /// heartbeats, Distributed Data) is then spoken only by holders of the secret.
    /// </param>
    protected ManifestGuardingSerializer(ExtendedActorSystem system, Func<TInner> create, Func<TInner, IEnumerable<string>> refused, string what,
        bool boundGzip = false, bool sealWithSecret = false)
        : base(system)
    {
        ArgumentNullException.ThrowIfNull(system);
        ArgumentNullException.ThrowIfNull(create);
        ArgumentNullException.ThrowIfNull(refused);
        _inner = new(create);
        _refused = new(() => new HashSet<string>(refused(_inner.Value), StringComparer.Ordinal));
        _boundGzip = boundGzip;
        _what = what;
        _system = system;
        _secret = sealWithSecret ? new ClusterSeal.KeySource(system.Settings.Config) : null;
    }

    /// <summary>True when this node seals what it sends and refuses what is not sealed with its admin secret.</summary>
    public bool Seals => _secret?.Key is not null;

    /// <summary>The manifests refused from the network.</summary>
    public IReadOnlySet<string> RefusedManifests => _refused.Value;

    /// <summary>True when every gzip payload is bounded by <see cref="MaxDecompressedBytes"/>.</summary>
    public bool BoundsGzip => _boundGzip;

    /// <summary>The stock serializer.</summary>
    protected TInner Inner => _inner.Value;

    /// <inheritdoc />
    public override byte[] ToBinary(object obj)
    {
        var bytes = Inner.ToBinary(obj);
        return _secret?.Key is { } key ? ClusterSeal.Seal(bytes, Identifier, Inner.Manifest(obj), key) : bytes;
    }

    /// <inheritdoc />
    public override string Manifest(object o) => Inner.Manifest(o);

    /// <inheritdoc />
    /// <exception cref="SerializationException">A refused manifest, or (sealing) a message not sealed with this node's admin secret.</exception>
    public override object FromBinary(byte[] bytes, string manifest)
    {
        if (manifest is null || _refused.Value.Contains(manifest))
        {
            throw new SerializationException($"ActorBlk refuses this message from the network (manifest '{manifest}': {_what}).");
        }

        if (_secret is not null)
        {
            bytes = Unseal(bytes, manifest);
        }

        if (_boundGzip && bytes is [0x1F, 0x8B, ..])
        {
            CheckExpansion(bytes, manifest);
        }

        return PayloadNesting.Read(this, bytes, manifest, static (self, b, m) => self.Inner.FromBinary(b, m));
    }

    private byte[] Unseal(byte[] bytes, string manifest)
    {
        var (inner, sealedOk) = ClusterSeal.Open(bytes, Identifier, manifest, _secret!.Key);
        if (sealedOk)
        {
            return inner;
        }

        // One warning line for the first refusals, then one in a thousand: a peer may retry for ever.
        var refused = Interlocked.Increment(ref _unsealed);
        if (refused <= 10 || refused % 1000 == 0)
        {
            _system.Log.Warning("Refused a cluster message ({0}, manifest '{1}') without proof of this node's admin secret: a peer outside the cluster, or its actorblk.remote.admin-secret (admin-secret-file) differs; {2} refused so far",
                _what.Split(':')[0], manifest, refused);
        }

        throw new SerializationException($"ActorBlk refuses a cluster message (manifest '{manifest}') that is not sealed with this node's admin secret.");
    }

    // Inflates the payload into a small buffer, counting, and refuses it past the limit or when it
    // is not gzip. Nothing it expands to is kept: the stock serializer inflates it again.
    private static void CheckExpansion(byte[] bytes, string manifest)
    {
        using var gzip = new System.IO.Compression.GZipStream(new MemoryStream(bytes, writable: false), System.IO.Compression.CompressionMode.Decompress);
        Span<byte> buffer = stackalloc byte[4096];
        long total = 0;
        try
        {
            for (int read; (read = gzip.Read(buffer)) > 0;)
            {
                total += read;
                if (total > MaxDecompressedBytes)
                {
                    throw new SerializationException(
                        $"ActorBlk refuses a compressed message (manifest '{manifest}') that expands past {MaxDecompressedBytes} bytes from {bytes.Length}.");
                }
            }
        }
        catch (InvalidDataException ex)
        {
            throw new SerializationException($"ActorBlk refuses a compressed message (manifest '{manifest}') that is not valid gzip: {ex.Message}", ex);
        }
    }
}

/// <summary>
/// Serializer id 16 (<c>akka-misc</c>): Akka.Remote's <see cref="MiscMessageSerializer"/> without
/// <see cref="PoisonPill"/>, <see cref="Kill"/> (which untrusted mode lets through),
/// <see cref="Status.Failure"/> (its exception is rebuilt from a type name the sender chooses) and
/// <see cref="Config"/> (its text goes to Akka's recursive HOCON parser: 50,000 nested brackets,
/// 100 KB, overflowed the reader's stack and killed the node; only remote deployment, refused
/// anyway, carries a configuration). Identify, ActorIdentity, actor references and remote-watch
/// heartbeats pass.
/// </summary>
public sealed class GuardedMiscMessageSerializer(ExtendedActorSystem system) : ManifestGuardingSerializer<MiscMessageSerializer>(
    system,
    () => new MiscMessageSerializer(system),
    inner => [inner.Manifest(PoisonPill.Instance), inner.Manifest(Kill.Instance), inner.Manifest(new Status.Failure(new InvalidOperationException())),
        inner.Manifest(ConfigurationFactory.Empty)],
    "akka-misc: PoisonPill, Kill, Status.Failure or Config")
{
    /// <inheritdoc />
    public override int Identifier => 16;
}

/// <summary>
/// How deep serialized payloads may nest inside one another as a message from the network is read.
/// Akka's container formats carry their payload as bytes with the serializer id to read them with
/// (an actor selection's message, reliable delivery's, a router's pool, Distributed Data's
/// elements), and read it at once, on the same thread, copying the bytes each time: a payload
/// whose payload is the same container again, 19,000 times in one 110 KB frame, made a node
/// allocate about 1 GB and stop answering its peer for 5 s per message (an outside audit). No
/// honest message nests more than a few levels.
/// </summary>
public static class PayloadNesting
{
    /// <summary>Most payloads one message from the network may hold inside one another.</summary>
    public const int MaxDepth = 16;

    [ThreadStatic]
    private static int t_depth;

    /// <summary>Runs <paramref name="read"/> one level deeper; refuses past <see cref="MaxDepth"/>.</summary>
    /// <exception cref="SerializationException">The message nests payloads more than <see cref="MaxDepth"/> deep.</exception>
    internal static TResult Read<TSelf, TResult>(TSelf self, byte[] bytes, string manifest, Func<TSelf, byte[], string, TResult> read)
    {
        if (t_depth >= MaxDepth)
        {
            throw new SerializationException($"ActorBlk refuses a message that nests payloads more than {MaxDepth} deep.");
        }

        t_depth++;
        try
        {
            return read(self, bytes, manifest);
        }
        finally
        {
            t_depth--;
        }
    }
}

/// <summary>
/// Serializer id 6 (<c>akka-containers</c>): Akka.Remote's <see cref="MessageContainerSerializer"/>
/// (actor selections from the network) under <see cref="PayloadNesting"/>'s limit: a selection whose
/// message is a selection again, nested thousands deep, was read whole level by level.
/// </summary>
public sealed class GuardedMessageContainerSerializer : Serializer
{
    private readonly Lazy<MessageContainerSerializer> _lazyInner;

    /// <summary>Created by Akka's serialization extension.</summary>
    public GuardedMessageContainerSerializer(ExtendedActorSystem system)
        : base(system)
    {
        _lazyInner = new(() => new MessageContainerSerializer(system));
    }

    /// <inheritdoc />
    public override int Identifier => 6;

    /// <inheritdoc />
    public override bool IncludeManifest => false;

    /// <inheritdoc />
    public override byte[] ToBinary(object obj) => _lazyInner.Value.ToBinary(obj);

    /// <inheritdoc />
    /// <exception cref="SerializationException">The selection nests payloads more than <see cref="PayloadNesting.MaxDepth"/> deep.</exception>
    public override object FromBinary(byte[] bytes, Type type) =>
        PayloadNesting.Read(_lazyInner.Value, bytes, string.Empty, (inner, b, _) => inner.FromBinary(b, type));
}

/// <summary>
/// Serializer id 36 (<c>reliable-delivery</c>): Akka.Cluster's <c>ReliableDeliverySerializer</c> (internal
/// to Akka.Cluster, so created by name) under <see cref="PayloadNesting"/>'s limit (its messages carry
/// a payload of any serializer, itself included).
/// </summary>
public sealed class GuardedReliableDeliverySerializer(ExtendedActorSystem system) : ManifestGuardingSerializer<SerializerWithStringManifest>(
    system,
    () => (SerializerWithStringManifest)Activator.CreateInstance(
        Type.GetType("Akka.Cluster.Serialization.ReliableDeliverySerializer, Akka.Cluster", throwOnError: true)!, system)!,
    _ => [],
    "reliable-delivery")
{
    /// <inheritdoc />
    public override int Identifier => 36;
}

/// <summary>
/// Serializer id 22 (<c>akka-system-msg</c>): only the remote death-watch messages, and only as a
/// peer may legitimately send them: <see cref="Watch"/> and <see cref="Unwatch"/> of a local actor by
/// a remote watcher, <see cref="DeathWatchNotification"/> about a remote actor. Create, Recreate,
/// Suspend, Resume, Terminate, Supervise and Failed are refused, as is a notification that claims a
/// local actor died (it would make the guardian forget a live device).
/// </summary>
public sealed class GuardedSystemMessageSerializer : Serializer
{
    private readonly Lazy<SystemMessageSerializer> _lazyInner;

    /// <summary>Created by Akka's serialization extension.</summary>
    public GuardedSystemMessageSerializer(ExtendedActorSystem system)
        : base(system)
    {
        _lazyInner = new(() => new SystemMessageSerializer(system));
    }

    /// <inheritdoc />
    public override int Identifier => 22;

    /// <inheritdoc />
    public override bool IncludeManifest => true;

    private SystemMessageSerializer Inner => _lazyInner.Value;

    /// <inheritdoc />
    public override byte[] ToBinary(object obj) => Inner.ToBinary(obj);

    /// <inheritdoc />
    /// <remarks>
    /// A refused system message is not deserialized (or, for a forged death-watch message, not
    /// returned): <see cref="RefusedSystemMessage"/> comes back instead, which the recipient
    /// ignores. Throwing would fail the peer's whole association (system messages are acknowledged).
    /// </remarks>
    public override object FromBinary(byte[] bytes, Type type)
    {
        if (type != typeof(Watch) && type != typeof(Unwatch) && type != typeof(DeathWatchNotification))
        {
            return new RefusedSystemMessage(type?.Name ?? "(none)");
        }

        var message = Inner.FromBinary(bytes, type);
        var forged = message switch
        {
            Watch w => IsLocal(w.Watcher),
            Unwatch u => IsLocal(u.Watcher),
            DeathWatchNotification d => IsLocal(d.Actor),
            _ => true,
        };
        return forged ? new RefusedSystemMessage(type.Name + " naming a local actor") : message;
    }

    private static bool IsLocal(IActorRef? actor) => actor is null || actor is IActorRefScope { IsLocal: true };
}

/// <summary>A system message refused by <see cref="GuardedSystemMessageSerializer"/>: an ordinary message its recipient leaves unhandled.</summary>
/// <param name="What">The refused message's type.</param>
public sealed record RefusedSystemMessage(string What) : INoSerializationVerificationNeeded, IDeadLetterSuppression;

/// <summary>
/// Serializer id 3 (<c>daemon-create</c>): remote deployment is refused both ways (a peer's
/// DaemonMsgCreate names actor types and arguments to instantiate here).
/// </summary>
public sealed class RefusingDaemonMsgCreateSerializer : Serializer
{
    /// <summary>Created by Akka's serialization extension.</summary>
    public RefusingDaemonMsgCreateSerializer(ExtendedActorSystem system)
        : base(system)
    {
    }

    /// <inheritdoc />
    public override int Identifier => 3;

    /// <inheritdoc />
    public override bool IncludeManifest => false;

    /// <inheritdoc />
    /// <exception cref="NotSupportedException">Always.</exception>
    public override byte[] ToBinary(object obj) => throw new NotSupportedException("ActorBlk nodes do not deploy actors remotely.");

    /// <inheritdoc />
    /// <exception cref="SerializationException">Always.</exception>
    public override object FromBinary(byte[] bytes, Type type) => throw new SerializationException("ActorBlk refuses remote deployment (DaemonMsgCreate).");
}

/// <summary>
/// Serializer id 2 (<c>proto</c>): Akka.Remote's <see cref="ProtobufSerializer"/> for Google.Protobuf
/// messages only; any other type named by the manifest is refused before the serializer looks
/// at it (it reads a static member of the type it is given).
/// </summary>
public sealed class GuardedProtobufSerializer : Serializer
{
    private readonly Lazy<ProtobufSerializer> _lazyInner;

    /// <summary>Created by Akka's serialization extension.</summary>
    public GuardedProtobufSerializer(ExtendedActorSystem system)
        : base(system)
    {
        _lazyInner = new(() => new ProtobufSerializer(system));
    }

    /// <inheritdoc />
    public override int Identifier => 2;

    /// <inheritdoc />
    public override bool IncludeManifest => true;

    private ProtobufSerializer Inner => _lazyInner.Value;

    /// <inheritdoc />
    public override byte[] ToBinary(object obj) => Inner.ToBinary(obj);

    /// <inheritdoc />
    /// <exception cref="SerializationException">The type is not a Google.Protobuf message.</exception>
    public override object FromBinary(byte[] bytes, Type type) =>
        type?.GetInterface("Google.Protobuf.IMessage") is { } iface && iface.Assembly.GetName().Name == "Google.Protobuf"
            ? Inner.FromBinary(bytes, type)
            : throw new SerializationException($"ActorBlk refuses {type?.FullName ?? "(none)"} through the protobuf serializer.");
}

/// <summary>
/// Serializer id 5 (<c>akka-cluster</c>): Akka.Cluster's <see cref="Akka.Cluster.Serialization.ClusterMessageSerializer"/>
/// without the user actions <c>Leave</c> and <c>Down</c>. A member acts on those only when they
/// are its own (<c>Cluster.Leave</c>, <c>Cluster.Down</c> and the downing provider tell the local
/// cluster daemon, in the process), so none comes over the network; but the daemon's path is
/// trusted for joining and gossip, and through it any peer could make a node leave, or down any
/// member, without the admin secret. Joining, gossip and heartbeats pass, sealed with the admin
/// secret on a node that has one (<see cref="ClusterSeal"/>).
/// </summary>
public sealed class GuardedClusterMessageSerializer(ExtendedActorSystem system) : ManifestGuardingSerializer<Akka.Cluster.Serialization.ClusterMessageSerializer>(
    system,
    () => new Akka.Cluster.Serialization.ClusterMessageSerializer(system),
    UserActionManifests,
    "akka-cluster: a Leave or Down is only taken from the node itself",
    sealWithSecret: true)
{
    /// <inheritdoc />
    public override int Identifier => 5;

    // The user actions are internal to Akka.Cluster: their manifests are asked of the serializer
    // itself, so a change of Akka's wire names cannot open the hole again.
    private static IEnumerable<string> UserActionManifests(Akka.Cluster.Serialization.ClusterMessageSerializer inner)
    {
        var address = new Address("akka.tcp", "x", "127.0.0.1", 1);
        foreach (var name in new[] { "Leave", "Down" })
        {
            var type = typeof(Akka.Cluster.Cluster).Assembly.GetType($"Akka.Cluster.ClusterUserAction+{name}", throwOnError: true)!;
            yield return inner.Manifest(Activator.CreateInstance(type, address)!);
        }
    }
}

/// <summary>
/// Serializer id 12 (<c>akka-data-replication</c>): Akka.DistributedData's
/// <see cref="Akka.DistributedData.Serialization.ReplicatorMessageSerializer"/>, with its gzip-compressed
/// gossip bounded by <see cref="ManifestGuardingSerializer{TInner}.MaxDecompressedBytes"/>. The
/// stock serializer inflates gossip with no limit, and the replicator is reachable by any peer.
/// </summary>
public sealed class GuardedReplicatorMessageSerializer(ExtendedActorSystem system) : ManifestGuardingSerializer<Akka.DistributedData.Serialization.ReplicatorMessageSerializer>(
    system,
    () => new Akka.DistributedData.Serialization.ReplicatorMessageSerializer(system),
    _ => [],
    "akka-data-replication",
    boundGzip: true,
    sealWithSecret: true)
{
    /// <inheritdoc />
    public override int Identifier => 12;
}

/// <summary>
/// Serializer id 11 (<c>akka-replicated-data</c>): Akka.DistributedData's
/// <see cref="Akka.DistributedData.Serialization.ReplicatedDataSerializer"/>, with its gzip-compressed
/// payloads (<c>ORSet</c>, which travels inside every replicator message that carries data, and the
/// dictionaries, the registry's <c>LWWDictionary</c> among them) bounded by
/// <see cref="ManifestGuardingSerializer{TInner}.MaxDecompressedBytes"/>.
/// </summary>
public sealed class GuardedReplicatedDataSerializer(ExtendedActorSystem system) : ManifestGuardingSerializer<Akka.DistributedData.Serialization.ReplicatedDataSerializer>(
    system,
    () => new Akka.DistributedData.Serialization.ReplicatedDataSerializer(system),
    _ => [],
    "akka-replicated-data",
    boundGzip: true,
    sealWithSecret: true)
{
    /// <inheritdoc />
    public override int Identifier => 11;
}

/// <summary>
/// The seal of the cluster's own messages (<c>akka-cluster</c>, Distributed Data's two
/// serializers) on a node with an admin secret: 4 bytes of magic, then the HMAC-SHA256 of a
/// label, the manifest and the message keyed with the secret, then the message. A node with a
/// secret refuses a message without a valid seal before anything reads it, so only holders of the
/// secret join, gossip, heartbeat or replicate: before, any process that reached the remoting port
/// joined the cluster (an outside audit joined with a stock `actorblk bench --join` of another
/// secret, killed it and joined again, and the split-brain resolver downed every node within a
/// minute). A node without a secret strips a seal it gets and seals nothing. The seal does not
/// stop a replay of captured traffic: TLS does, off loopback.
/// </summary>
internal static class ClusterSeal
{
    /// <summary>The seal's magic: 0xAB (wire type 3, a group, which proto3 never writes) starts no protobuf message and no gzip stream.</summary>
    private static ReadOnlySpan<byte> Magic => [0xAB, (byte)'A', (byte)'B', (byte)'1'];

    private const int MacBytes = 32;

    /// <summary>The message sealed with <paramref name="key"/> by the serializer <paramref name="serializer"/> under <paramref name="manifest"/>.</summary>
    public static byte[] Seal(byte[] message, int serializer, string manifest, byte[] key)
    {
        var sealedBytes = new byte[Magic.Length + MacBytes + message.Length];
        Magic.CopyTo(sealedBytes);
        Mac(key, serializer, manifest, message, sealedBytes.AsSpan(Magic.Length, MacBytes));
        message.CopyTo(sealedBytes.AsSpan(Magic.Length + MacBytes));
        return sealedBytes;
    }

    /// <summary>
    /// The message inside a seal, and whether the seal is valid for <paramref name="key"/>; with no
    /// key (a node without a secret) any seal is stripped and every message taken.
    /// </summary>
    public static (byte[] Message, bool Valid) Open(byte[] bytes, int serializer, string manifest, byte[]? key)
    {
        ArgumentNullException.ThrowIfNull(bytes);
        if (bytes.Length < Magic.Length + MacBytes || !bytes.AsSpan(0, Magic.Length).SequenceEqual(Magic))
        {
            return (bytes, key is null);
        }

        var message = bytes[(Magic.Length + MacBytes)..];
        if (key is null)
        {
            return (message, true);
        }

        Span<byte> expected = stackalloc byte[MacBytes];
        Mac(key, serializer, manifest, message, expected);
        return (message, CryptographicOperations.FixedTimeEquals(expected, bytes.AsSpan(Magic.Length, MacBytes)));
    }

    // The serializer's id is in the tag: a message sealed by one serializer is not taken by another
    // under the same manifest (Distributed Data's two share single-letter manifests).
    private static void Mac(byte[] key, int serializer, string manifest, byte[] message, Span<byte> mac)
    {
        using var hmac = IncrementalHash.CreateHMAC(HashAlgorithmName.SHA256, key);
        hmac.AppendData("actorblk-cluster-seal\0"u8);
        Span<byte> id = stackalloc byte[4];
        System.Buffers.Binary.BinaryPrimitives.WriteInt32BigEndian(id, serializer);
        hmac.AppendData(id);
        hmac.AppendData(System.Text.Encoding.UTF8.GetBytes(manifest));
        hmac.AppendData("\0"u8);
        hmac.AppendData(message);
        hmac.GetHashAndReset(mac);
    }

    /// <summary>
    /// The node's admin secret as a key, read from its configuration when first needed. A node
    /// without one (yet: an embedding application whose secret file appears later) looks again at
    /// most once a second, so it seals and checks from then on. A secret that cannot be read is a
    /// <see cref="SerializationException"/> (a message refused or not sent), never another exception
    /// out of a serializer.
    /// </summary>
    internal sealed class KeySource(Akka.Configuration.Config config)
    {
        private readonly Lock _look = new();
        private byte[]? _key;
        private long _lastLook = long.MinValue;

        private bool RecentlyLooked(long now)
        {
            var last = Interlocked.Read(ref _lastLook);
            return last != long.MinValue && now - last < 1000;
        }

        /// <summary>The key, or null when the node has no secret.</summary>
        /// <remarks>
        /// Callers that come while the secret is being read wait for that read (a cluster audit: a
        /// caller that came during the first read got no key and sent its message unsealed, which
        /// the other members refused).
        /// </remarks>
        /// <exception cref="SerializationException">The secret file exists but cannot be read.</exception>
        public byte[]? Key
        {
            get
            {
                if (Volatile.Read(ref _key) is { } key)
                {
                    return key;
                }

                // A look that found no secret less than a second ago stands (a node without one
                // takes this path for every message, so it takes no lock).
                if (RecentlyLooked(Environment.TickCount64))
                {
                    return null;
                }

                lock (_look)
                {
                    if (_key is { } found)
                    {
                        return found;
                    }

                    var now = Environment.TickCount64;
                    if (RecentlyLooked(now))
                    {
                        return null;
                    }

                    try
                    {
                        key = RemoteSurface.ResolveSecret(config, create: false) is { Length: > 0 } secret ? System.Text.Encoding.UTF8.GetBytes(secret) : null;
                    }
                    catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
                    {
                        // Not recorded as a look: the next caller reads again and is refused too,
                        // rather than taken for a node without a secret (which seals nothing and
                        // takes everything) for a second (a review).
                        throw new SerializationException($"ActorBlk cannot read its admin secret to seal or check a cluster message: {ex.Message}", ex);
                    }

                    if (key is not null)
                    {
                        Volatile.Write(ref _key, key);
                    }
                    else
                    {
                        // Recorded once the look is over, so that no caller takes a look still
                        // in progress for one that found nothing.
                        Interlocked.Exchange(ref _lastLook, now);
                    }

                    return key;
                }
            }
        }
    }
}
