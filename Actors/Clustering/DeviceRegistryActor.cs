using System.Collections.Frozen;
using System.Collections.Immutable;
using System.Runtime.CompilerServices;
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
/// registry is <see cref="ClusterNodeDevices.Buckets"/> + 1 <see cref="LWWDictionary{TKey,TValue}"/>s
/// replicated by Akka.DistributedData, each with at most one entry per member, keyed
/// <c>host:port#uid</c> and written by that member alone (WriteLocal; gossip spreads it): the
/// header map (<see cref="Key"/>) holds each member's header, which says that the incarnation
/// publishes and whether its block layer failed, and bucket map <c>i</c> (<see cref="BucketKeys"/>)
/// holds the member's devices whose names hash to bucket <c>i</c> (<see cref="ClusterNodeDevices.BucketOf"/>),
/// each entry signed on its own. A node rewrites only the bucket entries whose devices changed
/// (when the block layer registers or forgets a device and when a periodic look at its devices finds
/// a state that changed), so one device's change replicates as one bucket's entry: a few KB where
/// the one entry per node of before replicated every device of the node at each change, and passed
/// <c>maximum-frame-size</c> at about 1,200 devices (README, "Cluster", Size).
/// Distributed Data sends each peer every delta written since the peer's last turn in one message,
/// so the node paces its bucket writes: a burst of at most <see cref="RemoteSurface.MaxRemoteData"/>
/// bytes (<see cref="ClusterNodeDevices.WireEstimate"/>), its writes each less than a window after
/// the one before, and the next burst only once every peer has had its turn since its last write
/// (<see cref="BucketBursts"/>, <see cref="BurstWindow"/>). A destroyed device is a new value of its bucket's
/// entry, ordered after the old one by the entry's last-writer-wins clock, and never a removal racing
/// an update. Every node removes the entries of a member that is removed or downed, from every map;
/// an entry of such a member that reaches a node later (gossip from a node that had not removed it
/// yet) is removed when it arrives, so every replica converges on the same maps. A node that finds
/// one of its own entries missing or stale writes it again, and empties a bucket entry of its own
/// incarnation that this actor did not write (a previous instance did, before a restart) when it
/// lists devices the node no longer has there. The snapshot shows the devices of the
/// well-formed, signed bucket entries of members this node knows whose header stands.
/// </summary>
internal sealed class DeviceRegistryActor : ReceiveActor, IWithTimers
{
    /// <summary>The actor's name under <c>/user</c>.</summary>
    public const string ActorName = "actorblk-registry";

    /// <summary>The header map's key: one header entry per member (<see cref="ClusterNodeDevices.Header"/>, no devices).</summary>
    public static readonly LWWDictionaryKey<string, ClusterNodeDevices> Key = new("actorblk-nodes");

    /// <summary>The bucket maps' keys, <c>actorblk-nodes-00</c> to <c>actorblk-nodes-63</c>.</summary>
    public static readonly ImmutableArray<LWWDictionaryKey<string, ClusterNodeDevices>> BucketKeys =
        [.. Enumerable.Range(0, ClusterNodeDevices.Buckets).Select(i => new LWWDictionaryKey<string, ClusterNodeDevices>($"actorblk-nodes-{i:D2}"))];

    private static readonly FrozenDictionary<string, int> BucketOfKey =
        Enumerable.Range(0, ClusterNodeDevices.Buckets).ToFrozenDictionary(i => BucketKeys[i].Id, StringComparer.Ordinal);

    private static readonly ImmutableDictionary<string, ClusterNodeDevices> NoEntries = ImmutableDictionary<string, ClusterNodeDevices>.Empty.WithComparers(StringComparer.Ordinal);

    private readonly BlockLayer _layer;
    private readonly AkkaCluster _cluster;
    private readonly IActorRef _replicator;
    private readonly TimeSpan _pollInterval;
    private readonly TimeSpan _gossipInterval;
    private readonly int _burstBytes;
    private readonly ILoggingAdapter _log = Context.GetLogger();
    private readonly string _self;
    private readonly HashSet<UniqueAddress> _gone = [];
    private readonly HashSet<UniqueAddress> _members = [];
    private readonly HashSet<string> _warnedUnverified = new(StringComparer.Ordinal);
    private readonly HashSet<int> _warnedFull = [];

    // This node's entries: its header (written at once, it is small), what each bucket should hold
    // (null: the bucket never held a device of this incarnation, and has no entry), what was last
    // written to each, and the buckets waiting for a burst.
    private ClusterNodeDevices? _header;
    private readonly ClusterNodeDevices?[] _want = new ClusterNodeDevices?[ClusterNodeDevices.Buckets];
    private readonly ClusterNodeDevices?[] _written = new ClusterNodeDevices?[ClusterNodeDevices.Buckets];
    private readonly SortedSet<int> _dirty = [];
    private readonly BucketBursts _bursts;
    private byte[]? _signedWith;

    // The maps as this node's replicator has them, and the entries already checked (well-formed and
    // signed with the current key: an entry's check is done once, not at every publish).
    private ImmutableDictionary<string, ClusterNodeDevices> _headers = NoEntries;
    private readonly ImmutableDictionary<string, ClusterNodeDevices>[] _buckets = [.. Enumerable.Repeat(NoEntries, ClusterNodeDevices.Buckets)];
    private readonly ConditionalWeakTable<ClusterNodeDevices, object> _checked = [];
    private bool _publishQueued;
    private bool _withdrawn;

    // The admin secret: entries are signed with it and entries without its signature are ignored.
    // A node without one (yet: an embedding application whose secret file appears later) looks
    // again whenever it publishes its entries (every poll at least), as the cluster seal does, and
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
        var config = Context.System.Settings.Config;
        _gossipInterval = GossipInterval(config);
        _burstBytes = RemoteSurface.MaxRemoteData(config);
        _bursts = new BucketBursts(_burstBytes);
        _self = NodeName(_cluster.SelfAddress);
        _key = key;
        _keyOf = lookAgain;

        Receive<Changed>(HandleChanged);
        Receive<PublishQueued>(_ => Publish());
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
        Receive<Burst>(_ => Flush());
        Receive<Withdraw>(_ => HandleWithdraw());
        Receive<UpdateSuccess>(_ => { });
        Receive<UpdateTimeout>(_ => { });
        Receive<ModifyFailure>(f => _log.Warning("Device registry update failed: {0}", f.Cause.Message));
        Receive<StoreFailure>(_ => { });
    }

    /// <inheritdoc />
    public ITimerScheduler Timers { get; set; } = null!;

    /// <summary>The node name entries use, <c>host:port</c>.</summary>
    public static string NodeName(Address address) => $"{address.Host}:{address.Port}";

    /// <summary>
    /// <c>akka.cluster.distributed-data.gossip-interval</c> of <paramref name="config"/> (2 s when
    /// absent), which paces the registry's writes; HOCON's null, a list or a section is refused naming the key.
    /// </summary>
    /// <exception cref="Akka.Configuration.ConfigurationException">The value is not a duration.</exception>
    internal static TimeSpan GossipInterval(Akka.Configuration.Config config) =>
        TimerQueueScheduler.AkkaDuration(config, "akka.cluster.distributed-data.gossip-interval", TimeSpan.FromSeconds(2), "2s", allowInfinite: true);

    public static Props Props(BlockLayer layer, TimeSpan pollInterval, byte[]? key, Func<byte[]?>? lookAgain = null) =>
        Akka.Actor.Props.Create(() => new DeviceRegistryActor(layer, pollInterval, key, lookAgain));

    /// <summary>
    /// The least time between two bursts of bucket writes so that no delta message carries two
    /// (<paramref name="peers"/>: the other members). The replicator sends its deltas every
    /// gossip-interval / 5 (200 ms at least) to a slice of the nodes in turn, 2 to 10 of them
    /// (Akka.NET's DeltaPropagationSelector.NodeSliceSize), each getting every delta written since
    /// its last turn in one message; bursts further apart than the longest gap between two turns
    /// of a node never meet in one message.
    /// </summary>
    internal static TimeSpan BurstWindow(TimeSpan gossipInterval, int peers)
    {
        var tick = TimeSpan.FromTicks(Math.Max(gossipInterval.Ticks / 5, TimeSpan.TicksPerMillisecond * 200));
        var n = Math.Max(peers, 1);
        var slice = Math.Min(Math.Max((n / 5) + 1, 2), Math.Min(n, 10));
        var turns = (n + slice - 1) / slice;
        return tick * (turns + 1);
    }

    /// <summary>
    /// The buckets of <paramref name="dirty"/> (in order) that go in the next burst: as many as fit
    /// in <paramref name="budget"/> bytes (<see cref="ClusterNodeDevices.WireEstimate"/>), and at
    /// least one when <paramref name="atLeastOne"/> (a new burst; a burst still open takes only what fits).
    /// </summary>
    internal static List<int> NextBurst(IEnumerable<int> dirty, Func<int, ClusterNodeDevices> entry, long budget, bool atLeastOne = true) =>
        NextBurst(dirty, entry, budget, atLeastOne, out _);

    /// <summary>As <see cref="NextBurst(IEnumerable{int}, Func{int, ClusterNodeDevices}, long, bool)"/>, with the bytes the burst takes by the estimate.</summary>
    internal static List<int> NextBurst(IEnumerable<int> dirty, Func<int, ClusterNodeDevices> entry, long budget, bool atLeastOne, out long used)
    {
        var burst = new List<int>();
        used = 0L;
        foreach (var bucket in dirty)
        {
            var bytes = entry(bucket).WireEstimate();
            if ((burst.Count > 0 || !atLeastOne) && used + bytes > budget)
            {
                break;
            }

            burst.Add(bucket);
            used += bytes;
        }

        return burst;
    }

    /// <summary>
    /// A node's devices (sorted by name) as its <see cref="ClusterNodeDevices.Buckets"/> bucket
    /// entries, unsigned. A bucket's devices past <see cref="ClusterNodeDevices.MaxDevices"/>, or past
    /// <paramref name="budget"/> bytes, are left out (<c>full</c> lists those buckets): an entry that
    /// large could not replicate.
    /// </summary>
    internal static (ClusterNodeDevices[] Buckets, List<int> Full) Split(string node, long uid, IEnumerable<ClusterDevice> devices, bool failed, int budget)
    {
        var lists = new List<ClusterDevice>[ClusterNodeDevices.Buckets];
        var bytes = new long[ClusterNodeDevices.Buckets];
        var full = new List<int>();
        foreach (var device in devices)
        {
            var bucket = ClusterNodeDevices.BucketOf(device.Name);
            var list = lists[bucket] ??= [];
            var size = ClusterNodeDevices.DeviceEstimate(device);
            if (list.Count >= ClusterNodeDevices.MaxDevices || ClusterNodeDevices.EntryOverhead + bytes[bucket] + size > budget)
            {
                if (!full.Contains(bucket))
                {
                    full.Add(bucket);
                }

                continue;
            }

            list.Add(device);
            bytes[bucket] += size;
        }

        var entries = new ClusterNodeDevices[ClusterNodeDevices.Buckets];
        for (var i = 0; i < entries.Length; i++)
        {
            entries[i] = new ClusterNodeDevices(node, uid, lists[i] is { } list ? [.. list] : [], Failed: failed, Bucket: i);
        }

        return (entries, full);
    }

    /// <summary>
    /// The devices of the registry's maps that count, and the header entries that stand:
    /// <list type="bullet">
    /// <item>an entry counts only under its own map key (node and incarnation) and in its own map
    /// (its <see cref="ClusterNodeDevices.Bucket"/>): the signature covers both, not where the entry
    /// sits, so a signed entry copied under another node's key or into another bucket is not believed;</item>
    /// <item>it must be <paramref name="believed"/> (well-formed, signed, of a known member that is not gone);</item>
    /// <item>a bucket entry counts only while its node's header stands.</item>
    /// </list>
    /// </summary>
    internal static (ClusterNodeDevices[] Headers, ClusterDevice[] Devices) Assemble(
        IReadOnlyDictionary<string, ClusterNodeDevices> headers,
        IReadOnlyList<IReadOnlyDictionary<string, ClusterNodeDevices>> buckets,
        Func<ClusterNodeDevices, bool> believed)
    {
        var standing = headers.Where(kv => InPlace(kv.Key, kv.Value, ClusterNodeDevices.Header) && believed(kv.Value))
            .ToDictionary(kv => kv.Key, kv => kv.Value, StringComparer.Ordinal);
        var devices = new List<ClusterDevice>();
        for (var i = 0; i < buckets.Count; i++)
        {
            foreach (var (key, entry) in buckets[i])
            {
                if (standing.ContainsKey(key) && InPlace(key, entry, i) && believed(entry))
                {
                    devices.AddRange(entry.Devices);
                }
            }
        }

        devices.Sort(static (x, y) => string.CompareOrdinal(x.Name, y.Name) is var byName and not 0 ? byName : string.CompareOrdinal(x.Node, y.Node));
        return ([.. standing.Values], [.. devices]);
    }

    /// <summary>
    /// The incarnations (<see cref="ClusterNodeDevices.Key"/>) whose block layer failed: those with a
    /// believed entry in its own place, header or bucket, that says <see cref="ClusterNodeDevices.Failed"/>.
    /// A failing node writes the flag into its header and into every bucket entry it empties, each
    /// signed, but the replicator reports each map's change on its own: a bucket emptied by the
    /// failure may arrive before the header that says so, and its devices must not then look
    /// withdrawn by their owner's choice.
    /// </summary>
    internal static HashSet<string> FailedNodes(
        IReadOnlyDictionary<string, ClusterNodeDevices> headers,
        IReadOnlyList<IReadOnlyDictionary<string, ClusterNodeDevices>> buckets,
        Func<ClusterNodeDevices, bool> believed) =>
        new(headers.Where(kv => InPlace(kv.Key, kv.Value, ClusterNodeDevices.Header))
                .Concat(buckets.SelectMany((map, i) => map.Where(kv => InPlace(kv.Key, kv.Value, i))))
                .Where(kv => kv.Value.Failed && believed(kv.Value))
                .Select(kv => kv.Key),
            StringComparer.Ordinal);

    private static bool InPlace(string key, ClusterNodeDevices? entry, int bucket) => entry is not null && entry.Bucket == bucket && key == entry.Key;

    // Without a key, look for the secret again: once found, this node's entries are signed with it
    // (PublishMine writes them, their signatures being new) and only signed entries count from then on.
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
            _log.Info("Device registry: the admin secret appeared; this node's entries are signed with it and unsigned entries are ignored from now on");
            // PublishMine, the caller, signs this node's entries again and publishes.
            _warnedUnverified.Clear();
            _checked.Clear();
        }
    }

    protected override void PreStart()
    {
        _replicator.Tell(Dsl.Subscribe(Key, Self));
        foreach (var key in BucketKeys)
        {
            _replicator.Tell(Dsl.Subscribe(key, Self));
        }

        _cluster.Subscribe(Self, ClusterEvent.SubscriptionInitialStateMode.InitialStateAsEvents, typeof(ClusterEvent.IMemberEvent));
        if (_pollInterval > TimeSpan.Zero)
        {
            Timers.StartPeriodicTimer("poll", Poll.Instance, _pollInterval);
        }

        PublishMine();
    }

    protected override void PostStop() => _cluster.Unsubscribe(Self);

    // This node's devices, from the block layer's registered devices.
    private List<ClusterDevice> Describe()
    {
        var uid = _cluster.SelfUniqueAddress.Uid;
        var devices = new List<ClusterDevice>();
        if (_layer.FailureReason is not null)
        {
            // The layer failed: its devices serve nothing any more, and their loss is a failure
            // to the nodes that have them open, not the owner's choice.
            return devices;
        }

        var endpoint = _layer.NbdEndpoint;
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
                endpoint is null ? string.Empty : $"{endpoint.TrimEnd('/')}/{device.Name}",
                queue.DiskSeq));
        }

        devices.Sort((x, y) => string.CompareOrdinal(x.Name, y.Name));
        return devices;
    }

    private void PublishMine()
    {
        if (_withdrawn)
        {
            return;
        }

        LookForKey();

        var uid = _cluster.SelfUniqueAddress.Uid;
        var failed = _layer.FailureReason is not null;
        var resign = !ReferenceEquals(_signedWith, _key);
        _signedWith = _key;

        var changed = false;
        var header = new ClusterNodeDevices(_self, uid, [], Failed: failed);
        if (resign || !header.SameContent(_header))
        {
            _header = header.Sign(_key);
            WriteHeader(_header, WriteLocal.Instance, ask: null);
            changed = true;
        }

        var (buckets, full) = Split(_self, uid, Describe(), failed, _burstBytes);
        foreach (var bucket in full.Where(_warnedFull.Add))
        {
            _log.Warning(
                "Device registry: this node has more devices in bucket {0} than one registry entry holds ({1} devices or {2} bytes); the other nodes do not see the rest (README, \"Cluster\", Size)",
                bucket, ClusterNodeDevices.MaxDevices, _burstBytes);
        }

        for (var i = 0; i < buckets.Length; i++)
        {
            var want = buckets[i];
            if ((want.Devices.Length == 0 && _want[i] is null) || (!resign && want.SameContent(_want[i])))
            {
                continue;
            }

            _want[i] = want.Sign(_key);
            _dirty.Add(i);
            changed = true;
        }

        if (changed)
        {
            Flush();
            Publish();
        }
    }

    // Writes what the pacing lets go now of the changed buckets, and arms the timer for the rest.
    private void Flush()
    {
        if (_dirty.Count == 0 || _withdrawn)
        {
            return;
        }

        var now = Environment.TickCount64;
        var (burst, retryAt) = _bursts.Take(now, _dirty, b => _want[b]!, BurstWindow(_gossipInterval, _members.Count - 1));
        foreach (var bucket in burst)
        {
            _dirty.Remove(bucket);
            _written[bucket] = _want[bucket];
            WriteBucket(bucket, _want[bucket]!, WriteLocal.Instance, ask: null);
        }

        // After a write the timer is set again (the burst's end moved); while the burst waits it stays.
        if (_dirty.Count > 0 && (burst.Count > 0 || !Timers.IsTimerActive("burst")))
        {
            Timers.StartSingleTimer("burst", Burst.Instance, TimeSpan.FromMilliseconds(Math.Max(retryAt - now, 0)));
        }
    }

    // Writes one entry whole. The register's clock orders it after every value this node wrote to
    // that map before, whatever order replicas receive them in.
    private void WriteHeader(ClusterNodeDevices entry, IWriteConsistency consistency, object? ask) => Write(Key, entry, consistency, ask);

    private void WriteBucket(int bucket, ClusterNodeDevices entry, IWriteConsistency consistency, object? ask) => Write(BucketKeys[bucket], entry, consistency, ask);

    private void Write(LWWDictionaryKey<string, ClusterNodeDevices> key, ClusterNodeDevices entry, IWriteConsistency consistency, object? ask)
    {
        var self = _cluster.SelfUniqueAddress;
        _replicator.Tell(Dsl.Update(key, LWWDictionary<string, ClusterNodeDevices>.Empty, consistency, ask, map =>
            map.TryGetValue(entry.Key, out var had) && had.SameAs(entry) ? map : map.SetItem(self, entry.Key, entry)));
    }

    // Before the node leaves (coordinated shutdown, after its devices are destroyed): write this
    // incarnation's header and every bucket entry it wrote, with no devices, and wait (bounded: the
    // writes run at once, each for 3 s at most) for a majority to have them all. The empty
    // entries themselves go when the member is removed.
    private void HandleWithdraw()
    {
        _withdrawn = true;
        Timers.Cancel("burst");
        _dirty.Clear();
        var failed = _layer.FailureReason is not null;
        var uid = _cluster.SelfUniqueAddress.Uid;
        var round = new WithdrawRound(Sender);
        var majority = new WriteMajority(TimeSpan.FromSeconds(3));

        _header = new ClusterNodeDevices(_self, uid, [], Failed: failed).Sign(_key);
        WriteHeader(_header, majority, round);
        round.Left++;
        for (var i = 0; i < _written.Length; i++)
        {
            // A bucket adopted from a previous instance of this actor (HandleChanged) and not yet
            // written is emptied too.
            if (_written[i] is null && _want[i] is null)
            {
                continue;
            }

            var empty = new ClusterNodeDevices(_self, uid, [], Failed: failed, Bucket: i).Sign(_key);
            _want[i] = _written[i] = empty;
            WriteBucket(i, empty, majority, round);
            round.Left++;
        }

        Publish();
        Become(Withdrawing);
    }

    private void Withdrawing()
    {
        Receive<Withdraw>(_ => HandleWithdraw());
        Receive<UpdateSuccess>(s => Answered(s.Request, true));
        Receive<UpdateTimeout>(t => Answered(t.Request, false));
        Receive<ModifyFailure>(f => Answered(f.Request, false));
        Receive<Changed>(HandleChanged);
        Receive<PublishQueued>(_ => Publish());
        Receive<ClusterEvent.MemberRemoved>(m => Prune(m.Member.UniqueAddress));
        Receive<ClusterEvent.MemberDowned>(m => Prune(m.Member.UniqueAddress));
        ReceiveAny(_ => { });
    }

    private static void Answered(object? request, bool done)
    {
        if (request is WithdrawRound round)
        {
            round.Answered(done);
        }
    }

    private void Prune(UniqueAddress member)
    {
        _members.Remove(member);
        if (member.Equals(_cluster.SelfUniqueAddress) || !_gone.Add(member))
        {
            return;
        }

        RemoveEntriesOf(Key, _headers, [member], always: true);
        for (var i = 0; i < BucketKeys.Length; i++)
        {
            RemoveEntriesOf(BucketKeys[i], _buckets[i], [member], always: false);
        }

        Publish();
    }

    // Removes the members' entries from one map: from the header map always (a header may be on
    // its way), from a bucket map when this node has an entry of theirs there (a bucket entry that
    // arrives later is removed then, HandleChanged).
    private void RemoveEntriesOf(LWWDictionaryKey<string, ClusterNodeDevices> key, ImmutableDictionary<string, ClusterNodeDevices> seen, IReadOnlyCollection<UniqueAddress> members, bool always)
    {
        if (!always && !seen.Values.Any(v => v is null || members.Any(m => IsOwner(m, v))))
        {
            return;
        }

        var self = _cluster.SelfUniqueAddress;
        _replicator.Tell(Dsl.Update(key, LWWDictionary<string, ClusterNodeDevices>.Empty, WriteLocal.Instance, map =>
        {
            foreach (var (entryKey, value) in map.Entries)
            {
                if (value is null || members.Any(m => IsOwner(m, value)))
                {
                    map = map.Remove(self, entryKey);
                }
            }

            return map;
        }));
    }

    private static bool IsOwner(UniqueAddress member, ClusterNodeDevices entry) =>
        entry.NodeUid == member.Uid && entry.Node == NodeName(member.Address);

    private void HandleChanged(Changed changed)
    {
        LWWDictionaryKey<string, ClusterNodeDevices> key;
        int bucket;
        if (changed.Key.Equals(Key))
        {
            key = Key;
            bucket = ClusterNodeDevices.Header;
        }
        else if (BucketOfKey.TryGetValue(changed.Key.Id, out bucket))
        {
            key = BucketKeys[bucket];
        }
        else
        {
            return;
        }

        var map = changed.Get(key).Entries.ToImmutableDictionary(StringComparer.Ordinal);
        if (bucket == ClusterNodeDevices.Header)
        {
            _headers = map;
        }
        else
        {
            _buckets[bucket] = map;
        }

        // Entries of a member already removed or downed that arrived late: remove them here too.
        var late = _gone.Where(g => map.Values.Any(v => v is not null && IsOwner(g, v))).ToArray();
        if (late.Length > 0)
        {
            RemoveEntriesOf(key, map, late, always: true);
        }

        // Own entry missing or stale (another node pruned it, or an older value arrived after a
        // newer one was read here): write it again (a bucket in the next burst).
        var mine = bucket == ClusterNodeDevices.Header ? _header : _written[bucket];
        if (mine is not null && (!map.TryGetValue(mine.Key, out var seen) || !mine.SameAs(seen)))
        {
            if (bucket == ClusterNodeDevices.Header)
            {
                WriteHeader(mine, WriteLocal.Instance, ask: null);
            }
            else if (_withdrawn)
            {
                WriteBucket(bucket, mine, WriteLocal.Instance, ask: null);
            }
            else if (_dirty.Add(bucket))
            {
                Flush();
            }
        }
        else if (mine is null && bucket != ClusterNodeDevices.Header && _want[bucket] is null
            && map.TryGetValue(ClusterNodeDevices.KeyOf(_self, _cluster.SelfUniqueAddress.Uid), out var left)
            && left is not null && (left.Devices is not { Length: 0 } || left.Failed != (_layer.FailureReason is not null)))
        {
            // An entry of this incarnation this actor never wrote: a previous instance of the actor
            // (restarted after an exception) wrote it, and its devices may be gone since. Adopt the
            // bucket and write what this node has there now: nothing.
            var empty = new ClusterNodeDevices(_self, _cluster.SelfUniqueAddress.Uid, [], Failed: _layer.FailureReason is not null, Bucket: bucket).Sign(_key);
            _want[bucket] = empty;
            if (_withdrawn)
            {
                _written[bucket] = empty;
                WriteBucket(bucket, empty, WriteLocal.Instance, ask: null);
            }
            else if (_dirty.Add(bucket))
            {
                Flush();
            }
        }

        // One publish for the changes of many maps that arrive together.
        if (!_publishQueued)
        {
            _publishQueued = true;
            Self.Tell(PublishQueued.Instance);
        }
    }

    // Well-formed, signed with this node's key, of a member this node knows that is not gone; not
    // an entry of another incarnation at this node's address.
    private bool Believed(ClusterNodeDevices entry, long selfUid) =>
        Checked(entry)
        && !_gone.Any(g => IsOwner(g, entry))
        && (entry.Node != _self ? _members.Any(m => IsOwner(m, entry)) : entry.NodeUid == selfUid);

    private bool Checked(ClusterNodeDevices entry)
    {
        if (_checked.TryGetValue(entry, out var ok))
        {
            return (bool)ok;
        }

        var good = entry.IsWellFormed && entry.IsSignedWith(_key);
        _checked.AddOrUpdate(entry, good);
        return good;
    }

    private void Publish()
    {
        _publishQueued = false;
        var selfUid = _cluster.SelfUniqueAddress.Uid;
        var selfKey = ClusterNodeDevices.KeyOf(_self, selfUid);

        // Others' entries from the maps; this node's own as it means them to be (its bursts reach
        // its own replica no sooner than the peers').
        var headers = _headers.Remove(selfKey);
        var buckets = _buckets.Select(b => (IReadOnlyDictionary<string, ClusterNodeDevices>)b.Remove(selfKey)).ToList();
        if (_header is { } header)
        {
            headers = headers.SetItem(selfKey, header);
            for (var i = 0; i < buckets.Count; i++)
            {
                if (_want[i] is { } want)
                {
                    buckets[i] = ((ImmutableDictionary<string, ClusterNodeDevices>)buckets[i]).SetItem(selfKey, want);
                }
            }
        }

        var (entries, snapshot) = Assemble(headers, buckets, e => Believed(e, selfUid));

        // Before the snapshot: a watcher that finds a device gone asks whether its owner's entry
        // still stands (RemoteDevices: withdrawn by its owner, or pruned with its node).
        // The failed incarnations from the bucket entries too: a bucket emptied by the failure
        // may come before the header that says so (one Changed per map).
        _layer.ClusterDevices.SetEntries(new HashSet<string>(entries.Select(v => v.Key), StringComparer.Ordinal), FailedNodes(headers, buckets, e => Believed(e, selfUid)));

        // Entries of members not signed with this node's secret: most likely a secret that differs.
        // Only entries in their own place, as for the snapshot: an entry copied under another key
        // must not make a member look misconfigured.
        var unverified = _headers.Where(kv => InPlace(kv.Key, kv.Value, ClusterNodeDevices.Header))
            .Concat(_buckets.SelectMany((map, i) => map.Where(kv => InPlace(kv.Key, kv.Value, i))))
            .Select(kv => kv.Value)
            // Checked first: it is cached per entry, and true for every believed entry, so the
            // walk over every device of IsWellFormed is left to the few entries that fail it.
            .Where(v => v.Node != _self && !Checked(v) && v.IsWellFormed && _members.Any(m => IsOwner(m, v)))
            .Select(v => v.Node)
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

    private sealed record Burst
    {
        public static readonly Burst Instance = new();
    }

    private sealed record PublishQueued
    {
        public static readonly PublishQueued Instance = new();
    }

    // One Withdraw's writes: the asker is answered once every write was acknowledged by a
    // majority (Done) or some timed out or failed (TimedOut).
    private sealed class WithdrawRound(IActorRef asker)
    {
        private bool _allDone = true;

        public int Left { get; set; }

        public void Answered(bool done)
        {
            _allDone &= done;
            if (--Left == 0)
            {
                asker.Tell(_allDone ? Withdrawn.Done : Withdrawn.TimedOut);
            }
        }
    }
}
