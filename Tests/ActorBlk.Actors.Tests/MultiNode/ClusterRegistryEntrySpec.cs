using ActorBlk.Actors.Clustering;
using ActorBlk.Actors.Serialization;
using Akka.Actor;
using Akka.Cluster;
using Akka.DistributedData;
using Xunit;

namespace ActorBlk.Actors.Tests.MultiNode;

/// <summary>
/// The registry's replicated values (README, "Cluster"): one header entry per member and one entry
/// per member in each bucket map holding its devices of that bucket, so that a destroyed device is
/// a newer value of its bucket's entry rather than a key removal racing an update (a removal lost
/// on one replica once left a destroyed device listed there), and entries that do not hold
/// together, or sit where they were not written, are left out.
/// </summary>
public sealed class ClusterRegistryEntrySpec
{
    private static readonly UniqueAddress Owner = new(new Address("akka.tcp", "actorblk", "127.0.0.1", 4053), 17);

    private static ClusterDevice Device(string name, string state = ClusterDeviceStates.Live, string node = "127.0.0.1:4053", long uid = 17) =>
        new(name, node, uid, 1 << 20, 512, 1, false, state, string.Empty);

    // Devices of one entry share its bucket (a device's name decides it).
    private static ClusterNodeDevices Entry(params ClusterDevice[] devices) =>
        new("127.0.0.1:4053", 17, devices, Bucket: devices is { Length: > 0 } && devices[0] is { } first ? ClusterNodeDevices.BucketOf(first.Name) : 0);

    // Names that all fall in one bucket, the first's.
    private static string[] SameBucket(int count)
    {
        var bucket = ClusterNodeDevices.BucketOf("sd0");
        return [.. Enumerable.Range(0, int.MaxValue).Select(i => $"sd{i}").Where(n => ClusterNodeDevices.BucketOf(n) == bucket).Take(count)];
    }

    [Fact]
    public void An_older_value_of_a_nodes_entry_that_arrives_late_does_not_bring_a_destroyed_device_back()
    {
        var key = Entry().Key;
        var (sdb, sdc) = (SameBucket(2)[0], SameBucket(2)[1]);
        var empty = LWWDictionary<string, ClusterNodeDevices>.Empty;
        var live = empty.SetItem(Owner, key, Entry(Device(sdb), Device(sdc)));
        var offline = live.SetItem(Owner, key, Entry(Device(sdb), Device(sdc, ClusterDeviceStates.Offline)));
        var destroyed = offline.SetItem(Owner, key, Entry(Device(sdb)));

        // A replica that has the newest value and then merges older ones (delta or full state, in
        // any order) keeps the newest; one that has an older value takes the newest when it comes.
        foreach (var merged in new[] { destroyed.Merge(offline), destroyed.Merge(live).Merge(offline), live.Merge(destroyed).Merge(offline), offline.Merge(destroyed) })
        {
            Assert.Equal([sdb], merged.Entries[key].Devices.Select(d => d.Name));
        }
    }

    [Fact]
    public void An_entry_holds_together_only_with_bounded_fields_and_devices_of_its_own_node()
    {
        var names = SameBucket(2);
        Assert.True(Entry().IsWellFormed);
        Assert.True(Entry(Device(names[0]), Device(names[1])).IsWellFormed);
        Assert.Equal("127.0.0.1:4053#17", Entry().Key);
        Assert.True((Entry() with { Bucket = ClusterNodeDevices.Header }).IsWellFormed);

        // A device in another bucket than its name's, a header that lists devices, a bucket out of range.
        var elsewhere = Enumerable.Range(0, 1000).Select(i => $"sd{i}").First(n => ClusterNodeDevices.BucketOf(n) != ClusterNodeDevices.BucketOf(names[0]));
        Assert.False(Entry(Device(names[0]), Device(elsewhere)).IsWellFormed);
        Assert.False((Entry(Device(names[0])) with { Bucket = ClusterNodeDevices.Header }).IsWellFormed);
        Assert.False((Entry() with { Bucket = ClusterNodeDevices.Buckets }).IsWellFormed);
        Assert.False((Entry() with { Bucket = -2 }).IsWellFormed);

        // A device of another node or incarnation, a malformed device, or too many devices.
        Assert.False(Entry(Device("sdb", node: "127.0.0.1:4054")).IsWellFormed);
        Assert.False(Entry(Device("sdb", uid: 18)).IsWellFormed);
        Assert.False(Entry(Device(new string('x', RemoteSurface.MaxDeviceName + 1))).IsWellFormed);
        Assert.False(Entry(Device("sdb", state: "gone")).IsWellFormed);
        Assert.False(Entry(null!).IsWellFormed);
        Assert.False(new ClusterNodeDevices("127.0.0.1:4053", 17, null!).IsWellFormed);
        Assert.False(new ClusterNodeDevices(new string('h', ClusterDevice.MaxNodeLength + 1), 17, []).IsWellFormed);
        var many = SameBucket(ClusterNodeDevices.MaxDevices + 1);
        Assert.True(Entry(many[..^1].Select(n => Device(n)).ToArray()).IsWellFormed);
        Assert.False(Entry(many.Select(n => Device(n)).ToArray()).IsWellFormed);
    }

    // A peer's entry is what a remote "create" looks like to the other nodes: a name with a newline
    // (or a node or NBD endpoint with one) went whole into every node's log ("Cluster device ...")
    // and the columns of `devices`. A name a node itself would refuse is left out too (a review).
    [Theory]
    [InlineData("sd\nb")]
    [InlineData("sd\tb")]
    [InlineData("sdb\n")]
    [InlineData("sd b")]
    [InlineData("sd/b")]
    [InlineData("..")]
    public void An_entry_whose_device_name_a_node_would_refuse_is_left_out(string name)
    {
        Assert.False(Device(name).IsWellFormed);
        Assert.False(Entry(Device(name)).IsWellFormed);
    }

    [Fact]
    public void An_entry_whose_node_or_nbd_endpoint_holds_a_control_character_is_left_out()
    {
        Assert.False(Device("sdb", node: "127.0.0.1:4053\nforged").IsWellFormed);
        Assert.False((Device("sdb") with { NbdEndpoint = "nbd://127.0.0.1:10809\r" }).IsWellFormed);
        Assert.False(new ClusterNodeDevices("127.0.0.1:4053\u0007", 17, []).IsWellFormed);
        Assert.True((Device("sdb") with { NbdEndpoint = "nbd://127.0.0.1:10809" }).IsWellFormed);
    }

    // An owner publishes nbd[s]://host:port/ and no more. A peer's endpoint with a query would have
    // every node that opens the device trust a local file (tls-certificates), turn verification off,
    // or connect to a Unix socket of its own machine; one that is no NBD URI is no export.
    [Theory]
    [InlineData("nbds://127.0.0.1:10809/?tls-certificates=/etc")]
    [InlineData("nbds://127.0.0.1:10809/?tls-verify-peer=0")]
    [InlineData("nbds://127.0.0.1:10809/?tls-hostname=x")]
    [InlineData("nbd+unix:///?socket=/run/s")]
    [InlineData("http://127.0.0.1/")]
    [InlineData("nbd://127.0.0.1/?x-anything=1")]
    public void An_entry_whose_nbd_endpoint_is_not_a_plain_nbd_uri_is_left_out(string endpoint)
    {
        Assert.False((Device("sdb") with { NbdEndpoint = endpoint }).IsWellFormed);
        Assert.True((Device("sdb") with { NbdEndpoint = "nbds://127.0.0.1:10809/" }).IsWellFormed);
        Assert.True((Device("sdb") with { NbdEndpoint = string.Empty }).IsWellFormed);
    }

    [Fact]
    public void Two_entries_are_the_same_when_they_list_the_same_devices_for_the_same_incarnation()
    {
        Assert.True(Entry(Device("sdb")).SameAs(Entry(Device("sdb"))));
        Assert.False(Entry(Device("sdb")).SameAs(Entry(Device("sdb", ClusterDeviceStates.Offline))));
        Assert.False(Entry(Device("sdb")).SameAs(Entry()));
        Assert.False(Entry().SameAs(new ClusterNodeDevices("127.0.0.1:4053", 18, [])));
        Assert.False(Entry().SameAs(null));
        Assert.False(Entry().SameAs(Entry() with { Failed = true }));   // the node's block layer failed
        Assert.False(Entry().SameAs(Entry() with { Bucket = 1 }));
    }

    [Fact]
    public void Entries_signed_with_the_admin_secret_are_believed_and_forged_or_altered_ones_are_not()
    {
        // An outside audit wrote an entry for another node through Distributed Data (which takes
        // the writer's claimed address on trust) and moved its devices to its own NBD server.
        var key = System.Text.Encoding.UTF8.GetBytes("the cluster's secret");
        var signed = Entry(Device("sdb")).Sign(key);
        Assert.True(signed.IsSignedWith(key));
        Assert.True(signed.SameAs(Entry(Device("sdb")).Sign(key)));

        Assert.False(Entry(Device("sdb")).IsSignedWith(key));                                    // unsigned
        Assert.False(Entry(Device("sdb")).Sign(System.Text.Encoding.UTF8.GetBytes("guess")).IsSignedWith(key));   // another key
        var moved = signed with { Devices = [Device("sdb") with { NbdEndpoint = "nbd://127.0.0.1:11499/sdb" }] };
        Assert.False(moved.IsSignedWith(key));                                                   // altered after signing
        Assert.False((signed with { Signature = new byte[32] }).IsSignedWith(key));
        Assert.False((signed with { Failed = true }).IsSignedWith(key));                        // a failure claimed by a forger
        Assert.True((Entry(Device("sdb")) with { Failed = true }).Sign(key).IsSignedWith(key));
        Assert.False((signed with { Bucket = (signed.Bucket + 1) % ClusterNodeDevices.Buckets }).IsSignedWith(key));   // moved to another bucket

        // Without a secret (a cluster that set none) entries carry no signature and all are taken.
        Assert.Null(Entry().Sign(null).Signature);
        Assert.True(Entry().IsSignedWith(null));
    }

    [Fact]
    public void A_signed_entry_counts_only_in_its_own_bucket_under_its_own_node_and_while_its_nodes_header_stands()
    {
        // Distributed Data takes any member's write of any key: a peer could copy a signed bucket
        // entry into another bucket's map, or under another node's key, where its signature still
        // checks (it covers the entry, not where it sits). Neither copy is believed.
        var key = System.Text.Encoding.UTF8.GetBytes("the cluster's secret");
        var sdb = Entry(Device("sdb")).Sign(key);
        var header = (Entry() with { Bucket = ClusterNodeDevices.Header }).Sign(key);
        var other = new ClusterNodeDevices("127.0.0.1:4054", 18, [], Bucket: ClusterNodeDevices.Header).Sign(key);
        var elsewhere = (sdb.Bucket + 1) % ClusterNodeDevices.Buckets;
        bool Believed(ClusterNodeDevices e) => e.IsWellFormed && e.IsSignedWith(key);

        IReadOnlyDictionary<string, ClusterNodeDevices>[] Buckets(params (int Bucket, string Key, ClusterNodeDevices Entry)[] entries) =>
            [.. Enumerable.Range(0, ClusterNodeDevices.Buckets).Select(i => (IReadOnlyDictionary<string, ClusterNodeDevices>)entries.Where(e => e.Bucket == i).ToDictionary(e => e.Key, e => e.Entry))];

        var headers = new Dictionary<string, ClusterNodeDevices> { [header.Key] = header, [other.Key] = other };
        var (standing, devices) = DeviceRegistryActor.Assemble(headers, Buckets((sdb.Bucket, sdb.Key, sdb)), Believed);
        Assert.Equal(["sdb"], devices.Select(d => d.Name));
        Assert.Equal([header.Key, other.Key], standing.Select(h => h.Key).Order(StringComparer.Ordinal));

        // Copied into another bucket's map (its own place emptied), under another node's key, or
        // with the bucket index changed to match (the signature then fails).
        Assert.Empty(DeviceRegistryActor.Assemble(headers, Buckets((elsewhere, sdb.Key, sdb)), Believed).Devices);
        Assert.Empty(DeviceRegistryActor.Assemble(headers, Buckets((sdb.Bucket, other.Key, sdb)), Believed).Devices);
        Assert.Empty(DeviceRegistryActor.Assemble(headers, Buckets((elsewhere, sdb.Key, sdb with { Bucket = elsewhere })), Believed).Devices);

        // A header copied under another key does not stand, a bucket entry without its header
        // counts for nothing, and a bucket entry in the header map is no header.
        Assert.Empty(DeviceRegistryActor.Assemble(new Dictionary<string, ClusterNodeDevices> { [other.Key] = header }, [], Believed).Headers);
        Assert.Empty(DeviceRegistryActor.Assemble(new Dictionary<string, ClusterNodeDevices> { [other.Key] = other }, Buckets((sdb.Bucket, sdb.Key, sdb)), Believed).Devices);
        Assert.Empty(DeviceRegistryActor.Assemble(new Dictionary<string, ClusterNodeDevices> { [sdb.Key] = sdb }, Buckets((sdb.Bucket, sdb.Key, sdb)), Believed).Devices);
    }

    [Fact]
    public void A_node_whose_bucket_entry_says_its_block_layer_failed_counts_as_failed_before_its_header_says_so()
    {
        // Review of the bucket split: the replicator reports each map's change on its own, so a
        // bucket that a failed node emptied (its entry signed with Failed) may arrive before the
        // header that says Failed. Its devices, gone while the header still stood without the
        // flag, looked withdrawn by their owner (planned) instead of lost with its block layer.
        var key = System.Text.Encoding.UTF8.GetBytes("the cluster's secret");
        var header = (Entry() with { Bucket = ClusterNodeDevices.Header }).Sign(key);
        var bucket = ClusterNodeDevices.BucketOf("sdb");
        var emptied = (Entry() with { Bucket = bucket, Failed = true }).Sign(key);
        bool Believed(ClusterNodeDevices e) => e.IsWellFormed && e.IsSignedWith(key);

        IReadOnlyDictionary<string, ClusterNodeDevices>[] Buckets(params (int Bucket, string Key, ClusterNodeDevices Entry)[] entries) =>
            [.. Enumerable.Range(0, ClusterNodeDevices.Buckets).Select(i => (IReadOnlyDictionary<string, ClusterNodeDevices>)entries.Where(e => e.Bucket == i).ToDictionary(e => e.Key, e => e.Entry))];

        var headers = new Dictionary<string, ClusterNodeDevices> { [header.Key] = header };
        var (standing, devices) = DeviceRegistryActor.Assemble(headers, Buckets((bucket, emptied.Key, emptied)), Believed);
        Assert.Equal([header.Key], standing.Select(h => h.Key));   // the header stands: not pruned
        Assert.Empty(devices);
        Assert.Equal([header.Key], DeviceRegistryActor.FailedNodes(headers, Buckets((bucket, emptied.Key, emptied)), Believed));

        // The header alone says so too; an entry not failed, forged (its flag set after signing),
        // or out of its place says nothing.
        var failedHeader = (header with { Failed = true }).Sign(key);
        Assert.Equal([header.Key], DeviceRegistryActor.FailedNodes(new Dictionary<string, ClusterNodeDevices> { [header.Key] = failedHeader }, Buckets(), Believed));
        Assert.Empty(DeviceRegistryActor.FailedNodes(headers, Buckets((bucket, emptied.Key, (emptied with { Failed = false }).Sign(key))), Believed));
        var forged = (Entry() with { Bucket = bucket }).Sign(key) with { Failed = true };
        Assert.Empty(DeviceRegistryActor.FailedNodes(headers, Buckets((bucket, forged.Key, forged)), Believed));
        Assert.Empty(DeviceRegistryActor.FailedNodes(headers, Buckets(((bucket + 1) % ClusterNodeDevices.Buckets, emptied.Key, emptied)), Believed));
        Assert.Empty(DeviceRegistryActor.FailedNodes(headers, Buckets((bucket, "127.0.0.1:4054#18", emptied)), Believed));
    }

    [Fact]
    public void A_device_falls_in_the_same_bucket_in_every_process()
    {
        // FNV-1a of the UTF-8 name: string.GetHashCode differs per process, and two nodes that
        // put a device in different buckets would each see the other's copy in a wrong place.
        Assert.Equal(ClusterNodeDevices.BucketOf("nullb0"), ClusterNodeDevices.BucketOf(new string("nullb0".ToCharArray())));
        Assert.Equal((int)(0xe40c292cu % ClusterNodeDevices.Buckets), ClusterNodeDevices.BucketOf("a"));   // FNV-1a("a") = 0xe40c292c
        var spread = Enumerable.Range(0, 6400).Select(i => ClusterNodeDevices.BucketOf($"volume-{i:D5}")).GroupBy(b => b).ToArray();
        Assert.Equal(ClusterNodeDevices.Buckets, spread.Length);
        Assert.All(spread, g => Assert.InRange(g.Count(), 50, 150));
    }

    [Fact]
    public void The_entry_type_may_arrive_from_the_network_inside_gossip()
    {
        Assert.Contains(typeof(ClusterNodeDevices), RemoteSurface.InboundTypes);
        Assert.DoesNotContain(typeof(ClusterNodeDevices), RemoteSurface.AdminTypes);
    }

    [Fact]
    public void A_live_device_of_an_unreachable_node_is_listed_as_unreachable_and_is_never_accepted_from_the_registry()
    {
        // Found from outside: while a killed node waited to be downed, `actorblk devices` showed
        // its devices `live` although every I/O to them already failed with Offline.
        var devices = new[]
        {
            Device("sda", node: "127.0.0.1:4053"),
            Device("sdb", node: "127.0.0.1:4054"),
            Device("sdc", ClusterDeviceStates.Offline, node: "127.0.0.1:4054"),
            Device("sdd", ClusterDeviceStates.Dying, node: "127.0.0.1:4054"),
        };

        Assert.Equal(devices, ClusterDevices.AsSeenFrom(devices, []));
        var seen = ClusterDevices.AsSeenFrom(devices, ["127.0.0.1:4054"]);
        Assert.Equal(
            [ClusterDeviceStates.Live, ClusterDeviceStates.Unreachable, ClusterDeviceStates.Offline, ClusterDeviceStates.Dying],
            seen.Select(d => d.State));
        Assert.Equal(devices.Select(d => d.Id), seen.Select(d => d.Id));

        // A view state only: an owner that published it would be left out of the registry.
        Assert.False(Device("sde", ClusterDeviceStates.Unreachable).IsWellFormed);
    }
}
