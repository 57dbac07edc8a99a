using System.Runtime.Serialization;
using System.Security.Cryptography;
using Akka.Actor;
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
    protected ManifestGuardingSerializer(ExtendedActorSystem system, Func<TInner> create, Func<TInner, IEnumerable<string>> refused, string what,
        bool boundGzip = false)
        : base(system)
    {
        ArgumentNullException.ThrowIfNull(create);
        ArgumentNullException.ThrowIfNull(refused);
        _inner = new(create);
        _refused = new(() => new HashSet<string>(refused(_inner.Value), StringComparer.Ordinal));
        _boundGzip = boundGzip;
        _what = what;
    }

    /// <summary>The manifests refused from the network.</summary>
    public IReadOnlySet<string> RefusedManifests => _refused.Value;

    /// <summary>True when every gzip payload is bounded by <see cref="MaxDecompressedBytes"/>.</summary>
    public bool BoundsGzip => _boundGzip;

    /// <summary>The stock serializer.</summary>
    protected TInner Inner => _inner.Value;

    /// <inheritdoc />
    public override byte[] ToBinary(object obj) => Inner.ToBinary(obj);

    /// <inheritdoc />
    public override string Manifest(object o) => Inner.Manifest(o);

    /// <inheritdoc />
    /// <exception cref="SerializationException">A refused manifest.</exception>
    public override object FromBinary(byte[] bytes, string manifest)
    {
        if (manifest is null || _refused.Value.Contains(manifest))
        {
            throw new SerializationException($"ActorBlk refuses this message from the network (manifest '{manifest}': {_what}).");
        }

        if (_boundGzip && bytes is [0x1F, 0x8B, ..])
        {
            CheckExpansion(bytes, manifest);
        }

        return Inner.FromBinary(bytes, manifest);
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
/// <see cref="PoisonPill"/>, <see cref="Kill"/> (which untrusted mode lets through) and
/// <see cref="Status.Failure"/> (its exception is rebuilt from a type name the sender chooses).
/// Identify, ActorIdentity, actor references and remote-watch heartbeats pass.
/// </summary>
public sealed class GuardedMiscMessageSerializer(ExtendedActorSystem system) : ManifestGuardingSerializer<MiscMessageSerializer>(
    system,
    () => new MiscMessageSerializer(system),
    inner => [inner.Manifest(PoisonPill.Instance), inner.Manifest(Kill.Instance), inner.Manifest(new Status.Failure(new InvalidOperationException()))],
    "akka-misc: PoisonPill, Kill or Status.Failure")
{
    /// <inheritdoc />
    public override int Identifier => 16;
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
/// member, without the admin secret. Joining, gossip and heartbeats pass.
/// </summary>
public sealed class GuardedClusterMessageSerializer(ExtendedActorSystem system) : ManifestGuardingSerializer<Akka.Cluster.Serialization.ClusterMessageSerializer>(
    system,
    () => new Akka.Cluster.Serialization.ClusterMessageSerializer(system),
    UserActionManifests,
    "akka-cluster: a Leave or Down is only taken from the node itself")
{
    private readonly Lazy<byte[]?> _secret = new(() => RemoteSurface.ResolveSecret(system.Settings.Config, create: false) is { Length: > 0 } secret
        ? System.Text.Encoding.UTF8.GetBytes(secret)
        : null);

    private readonly Lazy<string> _joinManifest = new(() => JoinProof.Manifest(system));

    private int _refusedJoins;

    /// <inheritdoc />
    public override int Identifier => 5;

    /// <inheritdoc />
    /// <remarks>A <c>Join</c> carries this node's proof of the admin secret (<see cref="JoinProof"/>).</remarks>
    public override byte[] ToBinary(object obj)
    {
        var bytes = base.ToBinary(obj);
        return _secret.Value is { } secret && Manifest(obj) == _joinManifest.Value ? JoinProof.Add(bytes, secret) : bytes;
    }

    /// <inheritdoc />
    /// <exception cref="SerializationException">
    /// A refused user action, or (on a node with an admin secret) a <c>Join</c> without a valid proof of it.
    /// </exception>
    public override object FromBinary(byte[] bytes, string manifest)
    {
        if (manifest is not null && manifest == _joinManifest.Value)
        {
            var (stripped, proven) = JoinProof.Check(bytes, _secret.Value);
            if (!proven)
            {
                // One warning line for the first refusals, then one in a thousand: a peer may retry for ever.
                var refused = Interlocked.Increment(ref _refusedJoins);
                if (refused <= 10 || refused % 1000 == 0)
                {
                    system.Log.Warning("Refused a cluster join without proof of this node's admin secret (actorblk.remote.admin-secret or admin-secret-file differ?); {0} refused so far", refused);
                }

                throw new SerializationException("ActorBlk refuses a cluster Join that does not prove the admin secret.");
            }

            bytes = stripped;
        }

        return base.FromBinary(bytes, manifest!);
    }

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
    boundGzip: true)
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
    boundGzip: true)
{
    /// <inheritdoc />
    public override int Identifier => 11;
}

/// <summary>
/// The proof of the admin secret a node adds to its cluster <c>Join</c>: an extra role,
/// <c>actorblk-join:</c> and the HMAC-SHA256 of the joining node's unique address (as serialized,
/// address and incarnation uid) keyed with the secret. The node it joins, when it has a secret,
/// takes the Join only with a valid proof and strips it before Akka reads the message, so the role
/// never enters the membership. Without it any process that reached the remoting port joined the
/// cluster, and a few joining and dying made the split-brain resolver down every node (an outside
/// audit). A proof names one incarnation of one address, so a copy is of no use to another
/// process. Gossip itself is still not authenticated (TLS is what admits only certificate holders).
/// </summary>
internal static class JoinProof
{
    /// <summary>The role's prefix.</summary>
    public const string Prefix = "actorblk-join:";

    // Join's fields (cluster.proto): node = 1 (UniqueAddress), roles = 2 (repeated string).
    private const int NodeField = 1;
    private const int RolesField = 2;

    /// <summary>Akka.Cluster's manifest of its internal Join, asked of its serializer.</summary>
    public static string Manifest(ExtendedActorSystem system)
    {
        var type = typeof(Akka.Cluster.Cluster).Assembly.GetType("Akka.Cluster.InternalClusterAction+Join", throwOnError: true)!;
        var ctor = type.GetConstructors().OrderByDescending(c => c.GetParameters().Length).First();
        var node = new Akka.Cluster.UniqueAddress(new Address("akka.tcp", "x", "127.0.0.1", 1), 1);
        var args = ctor.GetParameters().Select(p => p.ParameterType == typeof(Akka.Cluster.UniqueAddress) ? node
            : p.ParameterType.IsAssignableFrom(typeof(System.Collections.Immutable.ImmutableHashSet<string>)) ? System.Collections.Immutable.ImmutableHashSet<string>.Empty
            : p.ParameterType == typeof(Akka.Util.AppVersion) ? Akka.Util.AppVersion.Zero
            : p.ParameterType.IsValueType ? Activator.CreateInstance(p.ParameterType) : null).ToArray();
        return new Akka.Cluster.Serialization.ClusterMessageSerializer(system).Manifest(ctor.Invoke(args));
    }

    /// <summary>Appends the proof to a serialized Join.</summary>
    public static byte[] Add(byte[] join, byte[] secret)
    {
        var node = Fields(join).FirstOrDefault(f => f.Number == NodeField && f.Payload.Length > 0);
        if (node.Payload.Length == 0)
        {
            return join;
        }

        var role = System.Text.Encoding.UTF8.GetBytes(Prefix + Proof(secret, join.AsSpan(node.Payload.Start, node.Payload.Length)));
        using var output = new MemoryStream(join.Length + role.Length + 8);
        output.Write(join);
        output.WriteByte((RolesField << 3) | 2);
        WriteVarint(output, (ulong)role.Length);
        output.Write(role);
        return output.ToArray();
    }

    /// <summary>
    /// The Join without any proof role, and whether it proves <paramref name="secret"/> (always
    /// true when this node has none: nothing to prove).
    /// </summary>
    /// <exception cref="SerializationException">The bytes are not a well-formed protobuf message.</exception>
    public static (byte[] Stripped, bool Proven) Check(byte[] join, byte[]? secret)
    {
        var fields = Fields(join);
        var node = fields.FirstOrDefault(f => f.Number == NodeField && f.Payload.Length > 0);
        var proven = secret is null;
        using var output = new MemoryStream(join.Length);
        foreach (var field in fields)
        {
            if (field.Number == RolesField && field.Wire == 2
                && System.Text.Encoding.UTF8.GetString(join, field.Payload.Start, field.Payload.Length) is var role
                && role.StartsWith(Prefix, StringComparison.Ordinal))
            {
                proven |= secret is not null && node.Payload.Length > 0 && CryptographicOperations.FixedTimeEquals(
                    System.Text.Encoding.ASCII.GetBytes(role[Prefix.Length..]),
                    System.Text.Encoding.ASCII.GetBytes(Proof(secret, join.AsSpan(node.Payload.Start, node.Payload.Length))));
                continue;
            }

            output.Write(join, field.Entry.Start, field.Entry.Length);
        }

        return (output.ToArray(), proven);
    }

    private static string Proof(byte[] secret, ReadOnlySpan<byte> node)
    {
        Span<byte> mac = stackalloc byte[32];
        using var hmac = new HMACSHA256(secret);
        var label = "actorblk-cluster-join\0"u8;
        var data = new byte[label.Length + node.Length];
        label.CopyTo(data);
        node.CopyTo(data.AsSpan(label.Length));
        hmac.TryComputeHash(data, mac, out _);
        return Convert.ToHexString(mac).ToLowerInvariant();
    }

    private readonly record struct Slice(int Start, int Length);

    private readonly record struct Field(int Number, int Wire, Slice Entry, Slice Payload);

    // The message's top-level fields, in order, each with its whole entry (key and value).
    private static List<Field> Fields(byte[] bytes)
    {
        var fields = new List<Field>();
        var at = 0;
        while (at < bytes.Length)
        {
            var start = at;
            var key = ReadVarint(bytes, ref at);
            var wire = (int)(key & 7);
            var number = (int)Math.Min(key >> 3, int.MaxValue);
            Slice payload;
            switch (wire)
            {
                case 0:
                    ReadVarint(bytes, ref at);
                    payload = new Slice(at, 0);
                    break;
                case 1:
                    payload = Take(bytes, ref at, 8);
                    break;
                case 2:
                    var length = ReadVarint(bytes, ref at);
                    payload = Take(bytes, ref at, length);
                    break;
                case 5:
                    payload = Take(bytes, ref at, 4);
                    break;
                default:
                    throw new SerializationException($"ActorBlk refuses a cluster Join with a malformed field (wire type {wire}).");
            }

            fields.Add(new Field(number, wire, new Slice(start, at - start), payload));
        }

        return fields;
    }

    private static Slice Take(byte[] bytes, ref int at, ulong length)
    {
        if (length > (ulong)(bytes.Length - at))
        {
            throw new SerializationException("ActorBlk refuses a cluster Join whose field runs past its end.");
        }

        var slice = new Slice(at, (int)length);
        at += (int)length;
        return slice;
    }

    private static ulong ReadVarint(byte[] bytes, ref int at)
    {
        ulong value = 0;
        for (var shift = 0; shift < 64; shift += 7)
        {
            if (at >= bytes.Length)
            {
                throw new SerializationException("ActorBlk refuses a cluster Join cut in a varint.");
            }

            var b = bytes[at++];
            value |= (ulong)(b & 0x7F) << shift;
            if ((b & 0x80) == 0)
            {
                return value;
            }
        }

        throw new SerializationException("ActorBlk refuses a cluster Join with an overlong varint.");
    }

    private static void WriteVarint(Stream output, ulong value)
    {
        while (value >= 0x80)
        {
            output.WriteByte((byte)(value | 0x80));
            value >>= 7;
        }

        output.WriteByte((byte)value);
    }
}
