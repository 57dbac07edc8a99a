using ActorBlk.Actors.Clustering;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers;
using ActorBlk.Testing;
using Akka.Actor;
using Akka.Cluster;
using Xunit;

namespace ActorBlk.Actors.Tests.MultiNode;

/// <summary>
/// Multi-node specs of the registry and remote devices start several actor systems with remoting
/// each: one spec at a time within the collection, beside the specs of other collections (the
/// mirror's multi-node specs, <see cref="MirrorClusterCollection"/>, and ClusterOpenSpec, the
/// longest, a collection of its own). Their clusters
/// are their own (port 0 on 127.0.0.1), and a test cluster waits on heartbeats and gossip far more
/// than it computes: run alone, this chain was most of the suite's time with the CPUs half idle.
/// The mirror's leg replacement specs run here too, to keep the three lanes about even (the
/// mirror lane was the longest, about 150 s of the suite's 225 s, with them).
/// </summary>
[CollectionDefinition(Name)]
[RunsLong(125)]
public sealed class ClusterCollection
{
    /// <summary>The collection's name.</summary>
    public const string Name = "Cluster";
}

/// <summary>The mirror's multi-node specs: one at a time, beside <see cref="ClusterCollection"/>'s.</summary>
[CollectionDefinition(Name)]
[RunsLong(125)]
public sealed class MirrorClusterCollection
{
    /// <summary>The collection's name.</summary>
    public const string Name = "MirrorCluster";
}

/// <summary>
/// Issue 14 items 1 and 2: three actor systems on 127.0.0.1 join one cluster; every node publishes
/// its devices in the replicated registry and every node sees each device appear, change state and
/// disappear (destroyed, or its node crashed and downed by the split-brain resolver of hocon.conf:
/// keep-oldest with down-if-alone, so a 3-node cluster survives the loss of its oldest node and a
/// 2-node cluster the loss of its younger one). Plain names resolve when unique, name@node always.
/// </summary>
[Collection(ClusterCollection.Name)]
public sealed class ClusterDevicesSpec(Xunit.Abstractions.ITestOutputHelper output)
{
    // Liveness bounds for a loaded 2-core machine: failure detection (~3-5 s), stable-after (2 s),
    // removal and gossip; generous on purpose.
    private static readonly TimeSpan Within = TimeSpan.FromSeconds(90);

    [Fact]
    public async Task A_remote_asker_gets_every_device_of_a_list_larger_than_a_remoting_frame_in_pages()
    {
        // `actorblk devices` asks a node's guardian over remoting. A list larger than one frame
        // (1,650 devices in an outside scale audit: 148 KB against hocon.conf's 128000 bytes) was
        // dropped by the transport, and the command waited 60 s and said the node did not answer.
        // With Akka's smallest frame (32000 bytes) 400 devices are too many for one reply; a
        // remote asker gets them in pages, each within the frame, and the pages chain by the last
        // device's id without a gap or a repeat. A local asker still gets the whole list at once.
        const string frame = "akka.remote.dot-netty.tcp.maximum-frame-size = 32000b";
        await using var a = ClusterNode.Start("a", hocon: frame);
        await using var client = ClusterNode.Start("client", hocon: frame);
        await a.JoinAsync(a, Within);
        const int count = 400;
        for (var i = 0; i < count; i++)
        {
            await a.Layer.CreateDeviceAsync(new DeviceOptions { Name = $"volume-with-a-long-name-{i:D5}", Size = 1 << 20, PollQueues = 0 });
        }

        var published = await a.WaitForDevicesAsync(d => d.Count == count, Within);
        var guardian = client.System.ActorSelection($"{a.Cluster.SelfAddress}/user/{BlockLayer.GuardianName}");

        // Liveness bound for one answer; a reply the transport drops never comes.
        var answer = TimeSpan.FromSeconds(20);
        var page = await guardian.Ask<ClusterDeviceList>(ListClusterDevices.Instance, answer);
        var all = new List<ClusterDevice>(page.Devices);
        var pages = 1;
        while (page.More)
        {
            Assert.NotEmpty(page.Devices);
            page = await guardian.Ask<ClusterDeviceList>(new ListClusterDevices(page.Devices[^1].Id), answer);
            all.AddRange(page.Devices);
            pages++;
        }

        Assert.True(pages > 1, "400 devices fitted in one 32000-byte frame: the spec no longer shows paging");
        Assert.Equal(published.Select(d => d.Id), all.Select(d => d.Id));
        Assert.True(page.Enabled);

        var local = await a.Layer.Guardian.Ask<ClusterDeviceList>(ListClusterDevices.Instance, answer);
        Assert.False(local.More);
        Assert.Equal(count, local.Devices.Length);
    }

    [Fact]
    public async Task A_node_with_more_devices_than_one_frame_holds_replicates_one_devices_change_without_an_oversized_message()
    {
        // An outside scale audit: the registry held all of a node's devices in one entry, and
        // every change of it reached each peer as one uncompressed delta of the whole entry; past
        // about 900 devices with 32-character names that delta was over maximum-frame-size
        // (128,000 bytes), and the transport dropped it with an OversizedPayloadException at each
        // change. 1,500 such devices made about 170 KB. Spread over bucket entries, a change
        // rewrites one bucket, and the node's first publication goes out in bursts that fit.
        await using var a = ClusterNode.Start("a");
        await using var b = ClusterNode.Start("b");
        var oversized = new System.Collections.Concurrent.ConcurrentQueue<string>();
        foreach (var node in new[] { a, b })
        {
            node.System.EventStream.Subscribe(node.System.ActorOf(Props.Create(() => new OversizedWatch(oversized))), typeof(Akka.Event.Error));
        }

        await a.JoinAsync(a, Within);
        await b.JoinAsync(a, Within);

        const int count = 1500;
        string Name(int i) => $"volume-with-a-32-char-name-{i:D5}";
        Assert.Equal(ActorBlk.Actors.Serialization.RemoteSurface.MaxDeviceName, Name(0).Length);
        var clock = System.Diagnostics.Stopwatch.StartNew();
        for (var i = 0; i < count; i++)
        {
            await a.Layer.CreateDeviceAsync(new DeviceOptions { Name = Name(i), Size = 1 << 20, PollQueues = 0 });
        }

        var created = clock.Elapsed;
        await b.WaitForDevicesAsync(d => d.Count(e => e.Node == a.Name) == count, Within);
        output.WriteLine($"{count} devices created in {created.TotalSeconds:F1} s, all seen on b {clock.Elapsed.TotalSeconds:F1} s after the first");

        // One device goes offline, another is destroyed: b sees each.
        a.System.ActorSelection($"/user/actorblk/dev-{Name(7)}-*/driver-0").Tell(new DeviceDriver.Fail(-1, new BlockDeviceErrorException("gone", deviceGone: true)));
        await b.WaitForDevicesAsync(d => d.Any(e => e.Name == Name(7) && e.State == ClusterDeviceStates.Offline), Within);
        await a.Layer.DestroyDeviceAsync(Name(1234));
        await b.WaitForDevicesAsync(d => d.Count(e => e.Node == a.Name) == count - 1 && d.All(e => e.Name != Name(1234)), Within);

        Assert.Empty(oversized);
    }

    private sealed class OversizedWatch : ReceiveActor
    {
        public OversizedWatch(System.Collections.Concurrent.ConcurrentQueue<string> seen) =>
            Receive<Akka.Event.Error>(e =>
            {
                // Akka.Remote's OversizedPayloadException is internal: matched by name.
                for (var cause = e.Cause; cause is not null; cause = cause.InnerException)
                {
                    if (cause.GetType().Name == "OversizedPayloadException")
                    {
                        seen.Enqueue(cause.Message);
                    }
                }
            });
    }

    [Fact]
    public async Task Every_node_sees_every_device_its_state_and_its_removal_and_survives_the_loss_of_a_node()
    {
        await using var a = ClusterNode.Start("a");
        await using var b = ClusterNode.Start("b");
        await using var c = ClusterNode.Start("c");
        await a.JoinAsync(a, Within);
        await b.JoinAsync(a, Within);
        await c.JoinAsync(a, Within);
        ClusterNode[] all = [a, b, c];

        // Devices with distinct shapes; nullb0 exists on two nodes.
        await a.Layer.CreateDeviceAsync(new DeviceOptions { Name = "nullb0", Size = 1 << 20, PollQueues = 0 });
        await b.Layer.CreateDeviceAsync(new DeviceOptions { Name = "nullb0", Size = 2 << 20, PollQueues = 0 });
        await c.Layer.CreateDeviceAsync(new DeviceOptions { Name = "sdb", Size = 4 << 20, BlockSize = 4096, SubmitQueues = 2, ReadOnly = true, PollQueues = 0 });
        await c.Layer.CreateDeviceAsync(new DeviceOptions { Name = "sdc", Size = 1 << 20, PollQueues = 0 });

        foreach (var node in all)
        {
            await node.WaitForDevicesAsync(d => d.Count == 4, Within);
        }

        var seen = b.Devices.Snapshot;
        string[] ids = [$"nullb0@{a.Name}", $"nullb0@{b.Name}", $"sdb@{c.Name}", $"sdc@{c.Name}"];
        Assert.Equal(ids.Order(StringComparer.Ordinal), seen.Select(d => d.Id));
        var sdb = seen.Single(d => d.Name == "sdb");
        Assert.Equal((c.Name, c.Cluster.SelfUniqueAddress.Uid, 4L << 20, 4096, 2, true, ClusterDeviceStates.Live, string.Empty),
            (sdb.Node, sdb.NodeUid, sdb.Capacity, sdb.LogicalBlockSize, sdb.HardwareQueues, sdb.ReadOnly, sdb.State, sdb.NbdEndpoint));
        Assert.Equal(2L << 20, seen.Single(d => d.Id == $"nullb0@{b.Name}").Capacity);
        foreach (var node in all)
        {
            Assert.Equal(seen, node.Devices.Snapshot);
        }

        // Names: unique plain names resolve, an ambiguous one is refused naming both, name@node always works.
        Assert.Same(a.Devices.Snapshot.Single(d => d.Name == "sdb"), a.Devices.Resolve("sdb"));
        var ambiguous = Assert.Throws<AmbiguousClusterDeviceException>(() => a.Devices.Resolve("nullb0"));
        Assert.Equal(2, ambiguous.Candidates.Count);
        Assert.Contains("2 nodes have a device named nullb0: address one as nullb0@127.0.0.1:", ambiguous.Message);
        Assert.Contains($"nullb0@{a.Name}", ambiguous.Message);
        Assert.Contains($"nullb0@{b.Name}", ambiguous.Message);
        Assert.Equal(2L << 20, a.Devices.Resolve($"nullb0@{b.Name}").Capacity);
        Assert.Throws<ClusterDeviceNotFoundException>(() => a.Devices.Resolve("sdz"));
        Assert.Throws<ClusterDeviceNotFoundException>(() => a.Devices.Resolve($"sdb@{a.Name}"));

        // The guardian answers the same table to a query (what `actorblk devices` asks).
        var list = await c.Layer.Guardian.Ask<ClusterDeviceList>(ListClusterDevices.Instance, Within);
        Assert.True(list.Enabled);
        Assert.Equal(seen, list.Devices);

        // A state change: sdc's driver reports the device gone (a null device cannot be reopened),
        // so it goes offline; every node sees it.
        c.System.ActorSelection("/user/actorblk/dev-sdc-*/driver-0").Tell(new DeviceDriver.Fail(-1, new BlockDeviceErrorException("gone", deviceGone: true)));
        foreach (var node in all)
        {
            await node.WaitForDevicesAsync(d => d.Any(e => e.Name == "sdc" && e.State == ClusterDeviceStates.Offline), Within);
        }

        // Removal: destroying a device takes it out of every registry.
        await c.Layer.DestroyDeviceAsync("sdc");
        foreach (var node in all)
        {
            await node.WaitForDevicesAsync(d => d.Count == 3 && d.All(e => e.Name != "sdc"), Within);
        }

        // The oldest node (a) crashes: alone on its side against two, it is downed (down-if-alone);
        // b and c stay up and drop its device.
        var aAddress = a.Cluster.SelfUniqueAddress;
        await a.CrashAsync();
        foreach (var node in new[] { b, c })
        {
            await node.WaitForEventAsync(e => e is ClusterEvent.MemberRemoved r && r.Member.UniqueAddress.Equals(aAddress), Within);
            await node.WaitForDevicesAsync(d => d.Count == 2 && d.All(e => e.Node != ClusterNodeName(aAddress)), Within);
            Assert.Equal(MemberStatus.Up, node.Cluster.SelfMember.Status);
        }

        // Now b is the oldest of two; the younger (c) crashes and b keeps running (keep-oldest).
        var cAddress = c.Cluster.SelfUniqueAddress;
        await c.CrashAsync();
        await b.WaitForEventAsync(e => e is ClusterEvent.MemberRemoved r && r.Member.UniqueAddress.Equals(cAddress), Within);
        var left = await b.WaitForDevicesAsync(d => d.Count == 1, Within);
        Assert.Equal($"nullb0@{b.Name}", Assert.Single(left).Id);
        Assert.Equal(MemberStatus.Up, b.Cluster.SelfMember.Status);
        Assert.False(b.System.WhenTerminated.IsCompleted);
        Assert.Equal([b.Cluster.SelfAddress], (await b.CurrentStateAsync(Within)).Members.Select(m => m.Address));
    }

    [Fact]
    public async Task A_node_that_leaves_drains_its_devices_and_withdraws_them_before_it_goes()
    {
        await using var a = ClusterNode.Start("a");
        await using var b = ClusterNode.Start("b");
        await a.JoinAsync(a, Within);
        await b.JoinAsync(a, Within);
        await b.Layer.CreateDeviceAsync(new DeviceOptions { Name = "nullb1", Size = 1 << 20, PollQueues = 0 });
        await a.WaitForDevicesAsync(d => d.Any(e => e.Name == "nullb1"), Within);

        // Coordinated shutdown destroys (drains) b's devices in service-stop, then withdraws b's
        // entries from the registry waiting for a majority (here both nodes) to have the removal,
        // then leaves. A task of b's own between the withdrawal and the leave looks at a's replica:
        // the entry is gone there while b is still an Up member, so a learnt it from b, not from
        // pruning after b's removal.
        var bAddress = b.Cluster.SelfUniqueAddress;
        var beforeLeave = new TaskCompletionSource<(bool EntryOnA, MemberStatus? BOnA)>(TaskCreationOptions.RunContinuationsAsynchronously);
        CoordinatedShutdown.Get(b.System).AddTask(CoordinatedShutdown.PhaseClusterShardingShutdownRegion, "test-look-at-a", async () =>
        {
            var entries = new List<ClusterNodeDevices>();
            foreach (var key in DeviceRegistryActor.BucketKeys)
            {
                var onA = await DistributedDataOf(a).Ask<Akka.DistributedData.IGetResponse>(Akka.DistributedData.Dsl.Get(key, Akka.DistributedData.ReadLocal.Instance), Within);
                entries.AddRange(onA is Akka.DistributedData.GetSuccess success ? success.Get(key).Entries.Values : []);
            }

            beforeLeave.TrySetResult((entries.Any(e => e.Devices.Any(d => d.Name == "nullb1")),
                a.Cluster.State.Members.FirstOrDefault(m => m.UniqueAddress.Equals(bAddress))?.Status));
            return Akka.Done.Instance;
        });

        await CoordinatedShutdown.Get(b.System).Run(CoordinatedShutdown.ClusterLeavingReason.Instance).WaitAsync(Within);
        Assert.Empty(b.Layer.Devices);
        Assert.Equal((false, MemberStatus.Up), await beforeLeave.Task.WaitAsync(Within));
        await a.WaitForEventAsync(e => e is ClusterEvent.MemberRemoved r && r.Member.UniqueAddress.Equals(bAddress), Within);
        await a.WaitForDevicesAsync(d => d.Count == 0, Within);
        Assert.Equal(MemberStatus.Up, a.Cluster.SelfMember.Status);
    }

    [Fact]
    public async Task An_entry_of_this_node_that_the_registry_did_not_write_is_rewritten_with_what_the_node_has()
    {
        // Review of the bucket split: the registry actor restarted (an exception; the default
        // supervision) knows nothing of the entries its previous instance wrote, and a bucket
        // entry that still listed a device destroyed meanwhile stayed in the registry for good
        // (nothing rewrote a bucket this instance had no device in, nor withdrew it). Here such an
        // entry is put under the node's own key, in a bucket it has no device in, as that previous
        // instance would have left it.
        await using var a = ClusterNode.Start("a");
        await a.JoinAsync(a, Within);
        await a.Layer.CreateDeviceAsync(new DeviceOptions { Name = "nullb0", Size = 1 << 20, PollQueues = 0 });
        await a.WaitForDevicesAsync(d => d.Any(e => e.Name == "nullb0"), Within);

        var self = a.Cluster.SelfUniqueAddress;
        var ghost = Enumerable.Range(0, 1000).Select(i => $"ghost{i}").First(n => ClusterNodeDevices.BucketOf(n) != ClusterNodeDevices.BucketOf("nullb0"));
        var bucket = ClusterNodeDevices.BucketOf(ghost);
        var key = DeviceRegistryActor.BucketKeys[bucket];
        var left = new ClusterNodeDevices(a.Name, self.Uid, [new ClusterDevice(ghost, a.Name, self.Uid, 1 << 20, 512, 1, false, ClusterDeviceStates.Live, string.Empty)], Bucket: bucket);
        Assert.True(left.IsWellFormed);
        var written = await DistributedDataOf(a).Ask<Akka.DistributedData.IUpdateResponse>(
            Akka.DistributedData.Dsl.Update(key, Akka.DistributedData.LWWDictionary<string, ClusterNodeDevices>.Empty, Akka.DistributedData.WriteLocal.Instance, map => map.SetItem(self, left.Key, left)), Within);
        Assert.IsType<Akka.DistributedData.UpdateSuccess>(written);

        // The registry writes the entry again, with no device.
        var emptied = new TaskCompletionSource<ClusterNodeDevices>(TaskCreationOptions.RunContinuationsAsynchronously);
        var watch = a.System.ActorOf(Props.Create(() => new BucketWatch(key, left.Key, e => e.Devices.Length == 0, emptied)));
        try
        {
            var entry = await emptied.Task.WaitAsync(Within);
            Assert.Equal(bucket, entry.Bucket);
            Assert.False(entry.Failed);
            Assert.Equal(["nullb0"], a.Devices.Snapshot.Select(d => d.Name));
        }
        finally
        {
            a.System.Stop(watch);
        }
    }

    // Completes `done` with the entry under `entryKey` of map `key` once it satisfies `condition`.
    private sealed class BucketWatch : ReceiveActor
    {
        public BucketWatch(Akka.DistributedData.LWWDictionaryKey<string, ClusterNodeDevices> key, string entryKey, Func<ClusterNodeDevices, bool> condition, TaskCompletionSource<ClusterNodeDevices> done)
        {
            Akka.DistributedData.DistributedData.Get(Context.System).Replicator.Tell(Akka.DistributedData.Dsl.Subscribe(key, Self));
            Receive<Akka.DistributedData.Changed>(c =>
            {
                if (c.Get(key).TryGetValue(entryKey, out var entry) && entry is not null && condition(entry))
                {
                    done.TrySetResult(entry);
                }
            });
        }
    }

    private static IActorRef DistributedDataOf(ClusterNode node) => Akka.DistributedData.DistributedData.Get(node.System).Replicator;

    [Fact]
    public void A_node_that_is_not_a_cluster_member_keeps_no_registry()
    {
        using var system = ActorSystem.Create("local", Support.Configs.Simulated);
        var layer = BlockLayer.Get(system);

        Assert.False(layer.ClusterDevices.IsEnabled);
        Assert.Empty(layer.ClusterDevices.Snapshot);
        Assert.Throws<ClusterDeviceNotFoundException>(() => layer.ClusterDevices.Resolve("nullb0"));
    }

    private static string ClusterNodeName(UniqueAddress address) => DeviceRegistryActor.NodeName(address.Address);
}
