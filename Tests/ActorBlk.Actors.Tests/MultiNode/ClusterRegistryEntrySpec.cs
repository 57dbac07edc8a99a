using ActorBlk.Actors.Clustering;
using ActorBlk.Actors.Serialization;
using Akka.Actor;
using Akka.Cluster;
using Akka.DistributedData;
using Xunit;

namespace ActorBlk.Actors.Tests.MultiNode;

/// <summary>
/// The registry's replicated value (README, "Cluster"): one entry per member holding all its
/// devices, so that a destroyed device is a newer value of its node's entry rather than a key
/// removal racing an update (a removal lost on one replica once left a destroyed device listed
/// there), and entries that do not hold together are left out.
/// </summary>
public sealed class ClusterRegistryEntrySpec
{
    private static readonly UniqueAddress Owner = new(new Address("akka.tcp", "actorblk", "127.0.0.1", 4053), 17);

    private static ClusterDevice Device(string name, string state = ClusterDeviceStates.Live, string node = "127.0.0.1:4053", long uid = 17) =>
        new(name, node, uid, 1 << 20, 512, 1, false, state, string.Empty);

    private static ClusterNodeDevices Entry(params ClusterDevice[] devices) => new("127.0.0.1:4053", 17, devices);

    [Fact]
    public void An_older_value_of_a_nodes_entry_that_arrives_late_does_not_bring_a_destroyed_device_back()
    {
        var key = Entry().Key;
        var empty = LWWDictionary<string, ClusterNodeDevices>.Empty;
        var live = empty.SetItem(Owner, key, Entry(Device("sdb"), Device("sdc")));
        var offline = live.SetItem(Owner, key, Entry(Device("sdb"), Device("sdc", ClusterDeviceStates.Offline)));
        var destroyed = offline.SetItem(Owner, key, Entry(Device("sdb")));

        // A replica that has the newest value and then merges older ones (delta or full state, in
        // any order) keeps the newest; one that has an older value takes the newest when it comes.
        foreach (var merged in new[] { destroyed.Merge(offline), destroyed.Merge(live).Merge(offline), live.Merge(destroyed).Merge(offline), offline.Merge(destroyed) })
        {
            Assert.Equal(["sdb"], merged.Entries[key].Devices.Select(d => d.Name));
        }
    }

    [Fact]
    public void An_entry_holds_together_only_with_bounded_fields_and_devices_of_its_own_node()
    {
        Assert.True(Entry().IsWellFormed);
        Assert.True(Entry(Device("sdb"), Device("sdc")).IsWellFormed);
        Assert.Equal("127.0.0.1:4053#17", Entry().Key);

        // A device of another node or incarnation, a malformed device, or too many devices.
        Assert.False(Entry(Device("sdb", node: "127.0.0.1:4054")).IsWellFormed);
        Assert.False(Entry(Device("sdb", uid: 18)).IsWellFormed);
        Assert.False(Entry(Device(new string('x', RemoteSurface.MaxDeviceName + 1))).IsWellFormed);
        Assert.False(Entry(Device("sdb", state: "gone")).IsWellFormed);
        Assert.False(Entry(null!).IsWellFormed);
        Assert.False(new ClusterNodeDevices("127.0.0.1:4053", 17, null!).IsWellFormed);
        Assert.False(new ClusterNodeDevices(new string('h', ClusterDevice.MaxNodeLength + 1), 17, []).IsWellFormed);
        Assert.False(Entry(Enumerable.Range(0, ClusterNodeDevices.MaxDevices + 1).Select(i => Device($"d{i}")).ToArray()).IsWellFormed);
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

        // Without a secret (a cluster that set none) entries carry no signature and all are taken.
        Assert.Null(Entry().Sign(null).Signature);
        Assert.True(Entry().IsSignedWith(null));
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
