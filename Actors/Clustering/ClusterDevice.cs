using System.Text;
using ActorBlk.Actors.Serialization;

namespace ActorBlk.Actors.Clustering;

/// <summary>
/// One device of the cluster as the registry publishes it: where it lives and what it is. Its id is
/// <c>name@host:port</c> (<see cref="Id"/>); a plain name addresses it when no other node has a
/// device of that name (<see cref="ClusterDevices.Resolve(string)"/>).
/// </summary>
/// <param name="Name">The device name on its node.</param>
/// <param name="Node">The owner node's remoting endpoint, <c>host:port</c>.</param>
/// <param name="NodeUid">The owner node's incarnation (a node restarted at the same address has another one).</param>
/// <param name="Capacity">Capacity in bytes.</param>
/// <param name="LogicalBlockSize">Logical block size in bytes.</param>
/// <param name="HardwareQueues">Number of hardware queues (1 for a stacked device).</param>
/// <param name="ReadOnly">True when writes are refused.</param>
/// <param name="State">One of <see cref="ClusterDeviceStates"/>.</param>
/// <param name="NbdEndpoint">The owner's NBD export of the device (<c>nbd://host:port/name</c>), empty when it exports none.</param>
/// <param name="DiskSeq">
/// The device's disk sequence number on its node (<see cref="ActorBlk.Hardware.Queues.DiskSequence"/>,
/// Linux's <c>diskseq</c>), which its NBD export also names: a device destroyed and created again
/// under its name has another one. 0 when unknown.
/// </param>
public sealed record ClusterDevice(
    string Name,
    string Node,
    long NodeUid,
    long Capacity,
    int LogicalBlockSize,
    int HardwareQueues,
    bool ReadOnly,
    string State,
    string NbdEndpoint,
    ulong DiskSeq = 0) : IActorBlkMessage
{
    /// <summary>Longest device name the registry accepts.</summary>
    public const int MaxNameLength = RemoteSurface.MaxDeviceName;

    /// <summary>Longest node endpoint (<c>host:port</c>) the registry accepts.</summary>
    public const int MaxNodeLength = 300;

    /// <summary>Longest NBD endpoint the registry accepts.</summary>
    public const int MaxEndpointLength = 512;

    /// <summary>The cluster-wide id, <c>name@host:port</c>.</summary>
    public string Id => $"{Name}@{Node}";

    /// <summary>
    /// True when every field is within its bounds: entries from other nodes that are not are left
    /// out of the registry's snapshot (the replicated map is a network surface). The name is a
    /// device name as a node accepts one (<see cref="Hardware.Devices.DeviceOptions.IsDeviceName"/>),
    /// and no text holds a control character: a peer's "d0\nforged" went whole into every node's
    /// log and the columns of <c>devices</c> (a review).
    /// </summary>
    public bool IsWellFormed =>
        Hardware.Devices.DeviceOptions.IsDeviceName(Name) && Name.Length <= MaxNameLength
        && Node is { Length: > 0 and <= MaxNodeLength } && Hardware.ControlCharacters.IndexIn(Node) < 0
        && NbdEndpoint is { Length: <= MaxEndpointLength } && Hardware.ControlCharacters.IndexIn(NbdEndpoint) < 0 && IsPublishedEndpoint(NbdEndpoint)
        && State is ClusterDeviceStates.Live or ClusterDeviceStates.Offline or ClusterDeviceStates.Dying
        && Capacity >= 0 && LogicalBlockSize > 0 && HardwareQueues >= 0;

    // An owner publishes nothing (no NBD server) or nbd[s]://host:port/ and no more: a query (a
    // local file to trust as tls-certificates, verification turned off, a Unix socket of the
    // reader's machine) is not a peer's to set, and an endpoint that is no NBD URI is no export.
    private static bool IsPublishedEndpoint(string endpoint)
    {
        if (endpoint.Length == 0)
        {
            return true;
        }

        try
        {
            var uri = Hardware.Drivers.Nbd.NbdUri.Parse(endpoint);
            return uri is { Socket: null, TlsCertificates: null, TlsVerifyPeer: null, TlsHostname: null };
        }
        catch (FormatException)
        {
            return false;
        }
    }
}

/// <summary>The states a <see cref="ClusterDevice"/> is published in.</summary>
public static class ClusterDeviceStates
{
    /// <summary>Registered and serving I/O.</summary>
    public const string Live = "live";

    /// <summary>Registered, but its driver gave up: every request fails with Offline.</summary>
    public const string Offline = "offline";

    /// <summary>Being unregistered: new requests fail with Offline while it drains.</summary>
    public const string Dying = "dying";

    /// <summary>
    /// Not published by an owner: how a node answering <see cref="ListClusterDevices"/> shows a
    /// live device whose node its failure detector holds unreachable (killed, cut off). The entry
    /// stays until the node is downed and removed, or comes back; its I/O meanwhile fails with
    /// Offline on the nodes that see it so.
    /// </summary>
    public const string Unreachable = "unreachable";
}

/// <summary>
/// Asks a node's guardian for the cluster's devices as it sees them (reply <see cref="ClusterDeviceList"/>).
/// A reply to a remote asker holds as many devices as fit in one remoting message; when
/// <see cref="ClusterDeviceList.More"/> is set, ask again with <see cref="After"/> set to the
/// <see cref="ClusterDevice.Id"/> of the last device received.
/// </summary>
/// <param name="After">Empty for the first page; else the id (<c>name@host:port</c>) of the last device of the previous page.</param>
public sealed record ListClusterDevices(string After) : IActorBlkQuery
{
    /// <summary>The first page (a local asker gets every device in it).</summary>
    public static readonly ListClusterDevices Instance = new(string.Empty);

    /// <summary>
    /// The devices of <paramref name="sorted"/> (sorted by name then node, ordinally) after the
    /// device <paramref name="after"/> names, as many as fit in <paramref name="maxBytes"/> of
    /// remoting payload (at least one); <c>more</c> when some are left.
    /// </summary>
    internal static (ClusterDevice[] Page, bool More) Page(IReadOnlyList<ClusterDevice> sorted, string after, long maxBytes)
    {
        var start = 0;
        if (after.Length > 0)
        {
            var at = after.IndexOf('@', StringComparison.Ordinal);
            var (name, node) = at < 0 ? (after, string.Empty) : (after[..at], after[(at + 1)..]);
            while (start < sorted.Count && Compare(sorted[start], name, node) <= 0)
            {
                start++;
            }
        }

        // The list's own envelope, then each device's fields as Hyperion writes them (UTF-8
        // strings with their lengths, the numbers, the type's manifest).
        var bytes = 256L;
        var end = start;
        while (end < sorted.Count)
        {
            var d = sorted[end];
            bytes += DeviceOverhead + Encoding.UTF8.GetByteCount(d.Name) + Encoding.UTF8.GetByteCount(d.Node)
                + Encoding.UTF8.GetByteCount(d.State) + Encoding.UTF8.GetByteCount(d.NbdEndpoint);
            if (bytes > maxBytes && end > start)
            {
                break;
            }

            end++;
        }

        return (sorted.Skip(start).Take(end - start).ToArray(), end < sorted.Count);
    }

    // Per device besides its strings: its type reference, four string headers, the numbers and
    // the bool (about 40 bytes measured, and 8 more for the disk sequence number; 80 for margin).
    private const int DeviceOverhead = 80;

    private static int Compare(ClusterDevice d, string name, string node)
    {
        var byName = string.CompareOrdinal(d.Name, name);
        return byName != 0 ? byName : string.CompareOrdinal(d.Node, node);
    }
}

/// <summary>The cluster's devices as one node sees them, sorted by name then node.</summary>
/// <param name="Devices">The devices.</param>
/// <param name="Enabled">False when the node is not a cluster member (it keeps no registry).</param>
/// <param name="More">True when devices follow that did not fit in this reply: ask again with <see cref="ListClusterDevices.After"/>.</param>
public sealed record ClusterDeviceList(ClusterDevice[] Devices, bool Enabled, bool More = false) : IActorBlkMessage;

/// <summary>A device name matched no device of the cluster.</summary>
public sealed class ClusterDeviceNotFoundException(string message) : Exception(message);

/// <summary>A plain device name matched devices on several nodes: use <c>name@host:port</c>.</summary>
public sealed class AmbiguousClusterDeviceException(string message, IReadOnlyList<ClusterDevice> candidates) : Exception(message)
{
    /// <summary>The devices the name matched.</summary>
    public IReadOnlyList<ClusterDevice> Candidates { get; } = candidates;
}

/// <summary>
/// One signed value of the registry's replicated maps, written by its node alone and keyed by
/// <see cref="Key"/> (<c>host:port#uid</c>) in every map. A node's devices are spread over
/// <see cref="Buckets"/> bucket maps by <see cref="BucketOf"/> (a stable hash of the device name),
/// so that one device's change rewrites one bucket's entry, whose size stays far under a remoting
/// frame; the node's header (<see cref="Bucket"/> = <see cref="Header"/>, no devices) in the header
/// map says that the incarnation publishes and whether its block layer failed. A device that goes
/// away is a new value of its bucket's entry, never a removal of a key: a last-writer-wins register
/// orders one writer's values by its own clock, and a late copy of an older value cannot bring a
/// destroyed device back. Keys are removed only for members that are gone.
/// </summary>
/// <param name="Node">The owner node's remoting endpoint, <c>host:port</c>.</param>
/// <param name="NodeUid">The owner node's incarnation.</param>
/// <param name="Devices">The node's devices of this bucket, sorted by name (none in a header).</param>
/// <param name="Signature">HMAC-SHA256 of the entry with the admin secret (<see cref="Sign"/>), or null without a secret.</param>
/// <param name="Failed">
/// True when the node's block layer failed (<see cref="BlockLayer.FailureReason"/>): its devices
/// are gone by a failure, not by its choice, though the node withdraws them as it shuts down.
/// </param>
/// <param name="Bucket">The bucket map the entry belongs in (0 to <see cref="Buckets"/> - 1), or <see cref="Header"/>.</param>
internal sealed record ClusterNodeDevices(string Node, long NodeUid, ClusterDevice[] Devices, byte[]? Signature = null, bool Failed = false, int Bucket = ClusterNodeDevices.Header) : IActorBlkMessage
{
    /// <summary>How many bucket maps a node's devices are spread over.</summary>
    public const int Buckets = 64;

    /// <summary>The <see cref="Bucket"/> of a node's header entry.</summary>
    public const int Header = -1;

    /// <summary>
    /// This entry signed with the cluster's admin secret (HMAC-SHA256 over every field, the bucket
    /// included), or unsigned when no secret is set. Members share the secret; a peer without it
    /// cannot write an entry members believe, nor move a signed one to another bucket (Distributed
    /// Data does not authenticate the node a write claims to come from: an outside audit redirected
    /// a device's I/O to its own NBD server that way).
    /// </summary>
    public ClusterNodeDevices Sign(byte[]? key) =>
        this with { Signature = key is null ? null : System.Security.Cryptography.HMACSHA256.HashData(key, Canonical()) };

    /// <summary>True when the entry carries the signature of <paramref name="key"/> (any entry, when there is no key).</summary>
    public bool IsSignedWith(byte[]? key) =>
        key is null
        || (Signature is { Length: 32 } signature
            && System.Security.Cryptography.CryptographicOperations.FixedTimeEquals(signature, System.Security.Cryptography.HMACSHA256.HashData(key, Canonical())));

    // Every field, in order, unambiguous (lengths before strings).
    private byte[] Canonical()
    {
        using var stream = new MemoryStream();
        using var writer = new BinaryWriter(stream, System.Text.Encoding.UTF8);
        writer.Write("actorblk-nodes/3");
        writer.Write(Node);
        writer.Write(NodeUid);
        writer.Write(Bucket);
        writer.Write(Failed);
        writer.Write(Devices.Length);
        foreach (var d in Devices)
        {
            writer.Write(d.Name);
            writer.Write(d.Node);
            writer.Write(d.NodeUid);
            writer.Write(d.Capacity);
            writer.Write(d.LogicalBlockSize);
            writer.Write(d.HardwareQueues);
            writer.Write(d.ReadOnly);
            writer.Write(d.State);
            writer.Write(d.NbdEndpoint);
            writer.Write(d.DiskSeq);
        }

        writer.Flush();
        return stream.ToArray();
    }

    /// <summary>Most devices one bucket entry may list (more marks the entry malformed); a node may publish <see cref="Buckets"/> times this at most.</summary>
    public const int MaxDevices = 1024;

    /// <summary>The map key of a node's entries.</summary>
    public static string KeyOf(string node, long uid) => $"{node}#{uid}";

    /// <summary>This entry's map key.</summary>
    public string Key => KeyOf(Node, NodeUid);

    /// <summary>
    /// The bucket of a device name: FNV-1a (32 bits) of its UTF-8 bytes, modulo <see cref="Buckets"/>.
    /// The same on every node and in every process (<see cref="string.GetHashCode()"/> is not).
    /// </summary>
    public static int BucketOf(string name)
    {
        ArgumentNullException.ThrowIfNull(name);
        var hash = 2166136261u;
        foreach (var b in System.Text.Encoding.UTF8.GetBytes(name))
        {
            hash = unchecked((hash ^ b) * 16777619u);
        }

        return (int)(hash % Buckets);
    }

    /// <summary>
    /// True when the entry and every device in it are within bounds, a header lists no devices,
    /// and every device belongs in this bucket and names this entry's node and incarnation (the
    /// maps are a network surface; a malformed entry is left out whole).
    /// </summary>
    public bool IsWellFormed =>
        Node is { Length: > 0 and <= ClusterDevice.MaxNodeLength } && Hardware.ControlCharacters.IndexIn(Node) < 0
        && Bucket is >= Header and < Buckets
        && Devices is { Length: <= MaxDevices }
        && (Bucket != Header || Devices.Length == 0)
        && Devices.All(d => d is not null && d.IsWellFormed && d.Node == Node && d.NodeUid == NodeUid && BucketOf(d.Name) == Bucket);

    /// <summary>
    /// Bytes the entry takes at most on the wire, as a value in a replicator message (Hyperion's
    /// strings with their lengths and each device's numbers, type reference and manifest, with a
    /// margin; the entry's own envelope and the map's metadata): what a node's writes are paced by.
    /// </summary>
    internal int WireEstimate() => EntryOverhead + Devices.Sum(DeviceEstimate);

    /// <summary>The bytes one device adds to an entry at most (<see cref="WireEstimate"/>).</summary>
    public static int DeviceEstimate(ClusterDevice d) =>
        DeviceOverhead + System.Text.Encoding.UTF8.GetByteCount(d.Name) + System.Text.Encoding.UTF8.GetByteCount(d.Node)
        + System.Text.Encoding.UTF8.GetByteCount(d.State) + System.Text.Encoding.UTF8.GetByteCount(d.NbdEndpoint);

    // Per device besides its strings: about 40 bytes measured (ListClusterDevices.Page) and 8 for
    // the disk sequence number, 80 for margin. Per entry: its node and signature, the dictionary's key, the register's clock and
    // writer, the replicator's envelope and delta (about 400 bytes measured), with margin.
    private const int DeviceOverhead = 80;
    internal const int EntryOverhead = 1024;

    /// <summary>True when <paramref name="other"/> lists the same devices for the same node, bucket and signature.</summary>
    public bool SameAs(ClusterNodeDevices? other) =>
        other is not null && SameContent(other)
        && (other.Signature ?? []).AsSpan().SequenceEqual(Signature ?? []);

    /// <summary>True when <paramref name="other"/> lists the same devices for the same node and bucket, whatever the signatures.</summary>
    public bool SameContent(ClusterNodeDevices? other) =>
        other is not null && other.Node == Node && other.NodeUid == NodeUid && other.Failed == Failed && other.Bucket == Bucket
        && other.Devices is not null && Devices.AsSpan().SequenceEqual(other.Devices);
}
