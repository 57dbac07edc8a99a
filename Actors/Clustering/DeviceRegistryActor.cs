using System.Collections.Immutable;
using ActorBlk.Hardware.Devices;
using ActorBlk.Actors.Serialization;
using ActorBlk.Hardware.Queues;
using Akka.Actor;
using Akka.Cluster;
using Akka.DistributedData;
using Akka.Event;
using AkkaCluster = Akka.Cluster.Cluster;

namespace ActorBlk.Actors.Clustering;

/// <summary>
/// This node's part of the cluster-wide device registry (<c>/user/actorblk-registry</c>). The
/// registry is one <see cref="LWWDictionary{TKey,TValue}"/> replicated by Akka.DistributedData with
/// one entry per member, keyed <c>host:port#uid</c>: the <see cref="ClusterNodeDevices"/> of that
/// member, written whole by that member alone (WriteLocal; gossip spreads it) when the block layer
/// registers or forgets a device and whenever a periodic look at its devices finds a state that
/// changed. A destroyed device is therefore a new value of its node's entry, ordered after the old
/// one by the entry's last-writer-wins clock, and never a removal racing an update. Every node
/// removes the entry of a member that is removed or downed; an entry of such a member that reaches
/// a node later (gossip from a node that had not removed it yet) is removed when it arrives, so every
/// replica converges on the same map. A node that finds its own entry missing or stale writes it
/// again. The snapshot shows only well-formed entries (bounded fields) of members this node knows.
/// Size: every write of the entry also reaches each peer as an uncompressed delta holding the whole
/// entry (Akka.NET ignores <c>delta-crdt.enabled = off</c>), which the transport drops once the entry
/// is over <c>maximum-frame-size</c> (about 1,200 devices); the replicas then converge through the
/// gzip-compressed full-state gossip of the whole map alone (README, "Cluster", Size).
/// </summary>
internal sealed class DeviceRegistryActor : ReceiveActor, IWithTimers
{
    /// <summary>The actor's name under <c>/user</c>.</summary>
    public const string ActorName = "actorblk-registry";

    /// <summary>The replicated map's key.</summary>
    public static readonly LWWDictionaryKey<string, ClusterNodeDevices> Key = new("actorblk-nodes");

    private readonly BlockLayer _layer;
    private readonly AkkaCluster _cluster;
    private readonly IActorRef _replicator;
    private readonly TimeSpan _pollInterval;
    private readonly ILoggingAdapter _log = Context.GetLogger();
    private readonly string _self;
    private readonly HashSet<UniqueAddress> _gone = [];
    private readonly HashSet<UniqueAddress> _members = [];
    private readonly HashSet<string> _warnedUnverified = new(StringComparer.Ordinal);
    private ClusterNodeDevices? _mine;
    private ImmutableDictionary<string, ClusterNodeDevices> _map = ImmutableDictionary<string, ClusterNodeDevices>.Empty;
    private bool _withdrawn;

    // The admin secret: entries are signed with it and entries without its signature are ignored.
    // A node without one (yet: an embedding application whose secret file appears later) looks
    // again whenever it publishes its entry (every poll at least), as the cluster seal does, and
    // keeps the first it finds.
    private readonly Func<byte[]?>? _keyOf;
    private byte[]? _key;
    private string? _keyFailure;

    public DeviceRegistryActor(BlockLayer layer, TimeSpan pollInterval, byte[]? key, Func<byte[]?>? lookAgain = null)
    {
        _layer = layer;
        _cluster = AkkaCluster.Get(Context.System);
        _replicator = DistributedData.Get(Context.System).Replicator;
        _pollInterval = pollInterval;
        _self = NodeName(_cluster.SelfAddress);
        _key = key;
        _keyOf = lookAgain;

        Receive<Changed>(HandleChanged);
        Receive<ClusterEvent.MemberRemoved>(m => Prune(m.Member.UniqueAddress));
        Receive<ClusterEvent.MemberDowned>(m => Prune(m.Member.UniqueAddress));
        Receive<ClusterEvent.IMemberEvent>(m =>
        {
            if (_members.Add(m.Member.UniqueAddress))
            {
                Publish();
            }
        });
        Receive<ClusterEvent.CurrentClusterState>(_ => { });
        Receive<LocalDevicesChanged>(_ => PublishMine());
        Receive<Poll>(_ => PublishMine());
        Receive<Withdraw>(_ => HandleWithdraw());
        Receive<UpdateSuccess>(_ => { });
        Receive<UpdateTimeout>(t => Reply(t.Request, false));
        Receive<ModifyFailure>(f => _log.Warning("Device registry update failed: {0}", f.Cause.Message));
        Receive<StoreFailure>(_ => { });
    }

    /// <inheritdoc />
    public ITimerScheduler Timers { get; set; } = null!;

    /// <summary>The node name entries use, <c>host:port</c>.</summary>
    public static string NodeName(Address address) => $"{address.Host}:{address.Port}";

    public static Props Props(BlockLayer layer, TimeSpan pollInterval, byte[]? key, Func<byte[]?>? lookAgain = null) =>
        Akka.Actor.Props.Create(() => new DeviceRegistryActor(layer, pollInterval, key, lookAgain));

    // Without a key, look for the secret again: once found, this node's entry is signed with it
    // (PublishMine writes it, its signature being new) and only signed entries count from then on.
    private void LookForKey()
    {
        if (_key is not null || _keyOf is null)
        {
            return;
        }

        try
        {
            _key = _keyOf();
            _keyFailure = null;
        }
        catch (Exception ex) when (ex is System.Runtime.Serialization.SerializationException or IOException or UnauthorizedAccessException)
        {
            // Unreadable: the cluster seal refuses every message meanwhile, so nothing new arrives.
            if (_keyFailure != ex.Message)
            {
                _keyFailure = ex.Message;
                _log.Warning("Device registry: {0}", ex.Message);
            }

            return;
        }

        if (_key is not null)
        {
            _log.Info("Device registry: the admin secret appeared; this node's entry is signed with it and unsigned entries are ignored from now on");
            _warnedUnverified.Clear();
            Publish();
        }
    }

    protected override void PreStart()
    {
        _replicator.Tell(Dsl.Subscribe(Key, Self));
        _cluster.Subscribe(Self, ClusterEvent.SubscriptionInitialStateMode.InitialStateAsEvents, typeof(ClusterEvent.IMemberEvent));
        if (_pollInterval > TimeSpan.Zero)
        {
            Timers.StartPeriodicTimer("poll", Poll.Instance, _pollInterval);
        }

        PublishMine();
    }

    protected override void PostStop() => _cluster.Unsubscribe(Self);

    // This node's devices as its entry, from the block layer's registered devices.
    private ClusterNodeDevices Describe()
    {
        var uid = _cluster.SelfUniqueAddress.Uid;
        if (_layer.FailureReason is not null)
        {
            // The layer failed: its devices serve nothing any more, and their loss is a failure
            // to the nodes that have them open, not the owner's choice.
            return new ClusterNodeDevices(_self, uid, [], Failed: true).Sign(_key);
        }

        var endpoint = _layer.NbdEndpoint;
        var devices = new List<ClusterDevice>();
        foreach (var device in _layer.Devices)
        {
            if (_layer.IsImported(device.Name))
            {
                // Another node's device, opened here: its owner publishes it.
                continue;
            }

            var queue = device.Queue;
            var state = queue.IsOffline ? ClusterDeviceStates.Offline
                : queue.IsDying || queue.State != QueueState.Registered ? ClusterDeviceStates.Dying
                : ClusterDeviceStates.Live;
            devices.Add(new ClusterDevice(
                device.Name,
                _self,
                uid,
                device.Capacity,
                device.LogicalBlockSize,
                queue.BioDriver is null ? queue.HardwareContexts.Count : 1,
                device.IsReadOnly,
                state,
                endpoint is null ? string.Empty : $"{endpoint.TrimEnd('/')}/{device.Name}"));
        }

        devices.Sort((x, y) => string.CompareOrdinal(x.Name, y.Name));
        return new ClusterNodeDevices(_self, uid, [.. devices]).Sign(_key);
    }

    private void PublishMine()
    {
        if (_withdrawn)
        {
            return;
        }

        LookForKey();

        var now = Describe();
        if (now.SameAs(_mine))
        {
            return;
        }

        _mine = now;
        Write(now, WriteLocal.Instance, ask: null);
    }

    // Writes this node's entry whole. The register's clock orders it after every value this node
    // wrote before, whatever order replicas receive them in.
    private void Write(ClusterNodeDevices entry, IWriteConsistency consistency, IActorRef? ask)
    {
        var self = _cluster.SelfUniqueAddress;
        _replicator.Tell(Dsl.Update(Key, LWWDictionary<string, ClusterNodeDevices>.Empty, consistency, ask, map =>
            map.TryGetValue(entry.Key, out var had) && had.SameAs(entry) ? map : map.SetItem(self, entry.Key, entry)));
    }

    // Before the node leaves (coordinated shutdown, after its devices are destroyed): write this
    // incarnation's entry with no devices and wait (bounded) for a majority to have it. The empty
    // entry itself goes when the member is removed.
    private void HandleWithdraw()
    {
        _withdrawn = true;
        var empty = new ClusterNodeDevices(_self, _cluster.SelfUniqueAddress.Uid, [], Failed: _layer.FailureReason is not null).Sign(_key);
        _mine = empty;
        var self = _cluster.SelfUniqueAddress;
        _replicator.Tell(Dsl.Update(Key, LWWDictionary<string, ClusterNodeDevices>.Empty, new WriteMajority(TimeSpan.FromSeconds(3)), Sender,
            map => map.SetItem(self, empty.Key, empty)));
        Become(Withdrawing);
    }

    private void Withdrawing()
    {
        Receive<Withdraw>(_ => HandleWithdraw());
        Receive<UpdateSuccess>(s => Reply(s.Request, true));
        Receive<UpdateTimeout>(t => Reply(t.Request, false));
        Receive<ModifyFailure>(f => Reply(f.Request, false));
        Receive<Changed>(HandleChanged);
        Receive<ClusterEvent.MemberRemoved>(m => Prune(m.Member.UniqueAddress));
        Receive<ClusterEvent.MemberDowned>(m => Prune(m.Member.UniqueAddress));
        ReceiveAny(_ => { });
    }

    private static void Reply(object? request, bool done)
    {
        if (request is IActorRef asker)
        {
            asker.Tell(done ? Withdrawn.Done : Withdrawn.TimedOut);
        }
    }

    private void Prune(UniqueAddress member)
    {
        _members.Remove(member);
        if (member.Equals(_cluster.SelfUniqueAddress) || !_gone.Add(member))
        {
            return;
        }

        RemoveEntriesOf([member]);
        Publish();
    }

    private void RemoveEntriesOf(IReadOnlyCollection<UniqueAddress> members)
    {
        var self = _cluster.SelfUniqueAddress;
        _replicator.Tell(Dsl.Update(Key, LWWDictionary<string, ClusterNodeDevices>.Empty, WriteLocal.Instance, map =>
        {
            foreach (var (key, value) in map.Entries)
            {
                if (value is null || members.Any(m => IsOwner(m, value)))
                {
                    map = map.Remove(self, key);
                }
            }

            return map;
        }));
    }

    private static bool IsOwner(UniqueAddress member, ClusterNodeDevices entry) =>
        entry.NodeUid == member.Uid && entry.Node == NodeName(member.Address);

    private void HandleChanged(Changed changed)
    {
        if (!changed.Key.Equals(Key))
        {
            return;
        }

        _map = changed.Get(Key).Entries.ToImmutableDictionary(StringComparer.Ordinal);

        // Entries of a member already removed or downed that arrived late: remove them here too.
        var late = _gone.Where(g => _map.Values.Any(v => v is not null && IsOwner(g, v))).ToArray();
        if (late.Length > 0)
        {
            RemoveEntriesOf(late);
        }

        // Own entry missing or stale (another node pruned it, or an older value arrived after a
        // newer one was read here): write it again.
        if (_mine is { } mine && (!_map.TryGetValue(mine.Key, out var seen) || !mine.SameAs(seen)))
        {
            Write(mine, WriteLocal.Instance, ask: null);
        }

        Publish();
    }

    private void Publish()
    {
        var selfUid = _cluster.SelfUniqueAddress.Uid;
        // An entry counts only under its own key: a signed entry copied under another key (the
        // signature does not cover the map key) is not believed.
        var entries = _map.Where(kv => kv.Value is not null && kv.Key == kv.Value.Key).Select(kv => kv.Value)
            .Where(v => v.IsWellFormed && v.IsSignedWith(_key) && !_gone.Any(g => IsOwner(g, v)))
            .Where(v => v.Node != _self || v.NodeUid == selfUid)
            // Only entries of members this node knows (an entry whose owner has not been seen
            // joining yet shows once its member event arrives).
            .Where(v => (v.Node == _self && v.NodeUid == selfUid) || _members.Any(m => IsOwner(m, v)))
            .ToArray();

        // Before the snapshot: a watcher that finds a device gone asks whether its owner's entry
        // still stands (RemoteDevices: withdrawn by its owner, or pruned with its node).
        _layer.ClusterDevices.SetEntries(new HashSet<string>(entries.Select(v => v.Key), StringComparer.Ordinal), entries.Where(v => v.Failed).Select(v => v.Key));
        var snapshot = entries
            .SelectMany(v => v.Devices)
            .OrderBy(v => v.Name, StringComparer.Ordinal)
            .ThenBy(v => v.Node, StringComparer.Ordinal)
            .ToArray();
        // Entries of members not signed with this node's secret: most likely a secret that differs.
        // Only entries under their own key, as for the snapshot: an entry copied under another key
        // must not make a member look misconfigured.
        var unverified = _map
            .Where(kv => kv.Value is { } v && kv.Key == v.Key && v.Node != _self && v.IsWellFormed && !v.IsSignedWith(_key) && _members.Any(m => IsOwner(m, v)))
            .Select(kv => kv.Value.Node)
            .Distinct(StringComparer.Ordinal)
            .Order(StringComparer.Ordinal)
            .ToArray();
        foreach (var node in unverified.Where(n => _warnedUnverified.Add(n)))
        {
            _log.Warning("Ignoring the devices node {0} publishes: its registry entry is not signed with this node's admin secret (actorblk.remote.admin-secret or admin-secret-file differ?)", node);
        }

        _layer.ClusterDevices.SetUnverified(unverified);
        if (!snapshot.SequenceEqual(_layer.ClusterDevices.Snapshot))
        {
            try
            {
                _layer.ClusterDevices.Publish(snapshot);
            }
            catch (Exception ex)
            {
                _log.Warning(ex, "A watcher of the cluster's devices failed");
            }
        }
    }

    /// <summary>The block layer registered or forgot a device.</summary>
    internal sealed record LocalDevicesChanged
    {
        public static readonly LocalDevicesChanged Instance = new();
    }

    /// <summary>Take this node's entries out of the registry before it leaves; reply <see cref="Withdrawn"/>.</summary>
    internal sealed record Withdraw
    {
        public static readonly Withdraw Instance = new();
    }

    /// <summary>Reply to <see cref="Withdraw"/>.</summary>
    internal sealed record Withdrawn(bool Acknowledged)
    {
        public static readonly Withdrawn Done = new(true);

        public static readonly Withdrawn TimedOut = new(false);
    }

    private sealed record Poll
    {
        public static readonly Poll Instance = new();
    }
}
