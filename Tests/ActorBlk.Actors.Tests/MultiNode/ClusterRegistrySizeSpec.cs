using System.Collections.Immutable;
using System.Reflection;
using ActorBlk.Actors.Clustering;
using ActorBlk.Actors.Serialization;
using Akka.Actor;
using Akka.Cluster;
using Akka.Configuration;
using Akka.DistributedData;
using Akka.DistributedData.Internal;
using Xunit;
using Xunit.Abstractions;

namespace ActorBlk.Actors.Tests.MultiNode;

/// <summary>
/// The registry's replicated messages stay within a remoting frame however many devices a node
/// has (README, "Cluster", Size). Measured with the real wire path: the replicator's own messages
/// (a delta propagation of one burst of bucket entries, a gossip reply of as many maps as
/// hocon.conf's max-delta-elements lets one carry) serialized by this node's guarded, sealed
/// serializers. Before, one entry held all of a node's devices and each change of it reached every
/// peer whole and uncompressed: 20,000 devices with 32-character names made it megabytes, far
/// past the 128,000-byte frame (the transport dropped it, and the gzip gossip of the whole map too
/// past about 5,500 such devices).
/// </summary>
public sealed class ClusterRegistrySizeSpec(ITestOutputHelper output)
{
    private const string Node = "127.0.0.1:4053";
    private const long Uid = 17;

    private static ClusterDevice[] Devices(int count)
    {
        // Random names compress worst in gossip; 32 characters is the longest a device name may be.
        var random = new Random(20261206);
        const string letters = "abcdefghijklmnopqrstuvwxyz0123456789";
        return [.. Enumerable.Range(0, count)
            .Select(_ => new string(Enumerable.Range(0, RemoteSurface.MaxDeviceName).Select(_ => letters[random.Next(letters.Length)]).ToArray()))
            .Distinct(StringComparer.Ordinal)
            .Order(StringComparer.Ordinal)
            .Select((name, i) => new ClusterDevice(name, Node, Uid, 1L << 30, 4096, 4, false, ClusterDeviceStates.Live, $"nbd://127.0.0.1:10809/{name}",
                (ulong)i + 1))];
    }

    [Fact]
    public async Task No_replicated_message_of_a_node_with_20000_devices_passes_the_frame()
    {
        var config = ConfigurationFactory.ParseString("actorblk.remote.admin-secret = \"cluster-secret\"").WithFallback(ClusterNode.Config());
        using var system = ActorSystem.Create("actorblk", config);
        try
        {
            var frame = config.GetByteSize("akka.remote.dot-netty.tcp.maximum-frame-size", 128000) ?? 128000;
            var budget = RemoteSurface.MaxRemoteData(config);
            var self = Cluster.Get(system).SelfUniqueAddress;
            DistributedData.Get(system);
            var key = System.Text.Encoding.UTF8.GetBytes("cluster-secret");
            var devices = Devices(20_000);

            var (buckets, full) = DeviceRegistryActor.Split(Node, Uid, devices, failed: false, budget);
            Assert.Empty(full);
            Assert.Equal(devices.Length, buckets.Sum(b => b.Devices.Length));
            var signed = buckets.Select(b => b.Sign(key)).ToArray();
            Assert.All(signed, b => Assert.True(b.IsWellFormed));

            // Every burst the node writes reaches a peer as one delta propagation at most.
            var dirty = new SortedSet<int>(Enumerable.Range(0, ClusterNodeDevices.Buckets));
            var largestDelta = 0;
            var bursts = 0;
            while (dirty.Count > 0)
            {
                var burst = DeviceRegistryActor.NextBurst(dirty, b => signed[b], budget);
                dirty.ExceptWith(burst);
                bursts++;
                var bytes = Wire(system, DeltaPropagationOf(self, burst.Select(b => (DeviceRegistryActor.BucketKeys[b].Id, signed[b]))));
                Assert.True(bytes <= budget, $"a burst of {burst.Count} buckets is {bytes} bytes on the wire, over {budget}");
                largestDelta = Math.Max(largestDelta, bytes);
            }

            // One device's change: one bucket.
            var one = signed.MaxBy(b => b.Devices.Length)!;
            var oneDelta = Wire(system, DeltaPropagationOf(self, [(DeviceRegistryActor.BucketKeys[one.Bucket].Id, one)]));

            // Gossip: a reply carries the full state of at most max-delta-elements maps, gzip-compressed.
            var perGossip = config.GetInt("akka.cluster.distributed-data.max-delta-elements", 500);
            var largestGossip = Wire(system, GossipOf(signed.OrderByDescending(b => b.Devices.Length).Take(perGossip)
                .Select(b => (DeviceRegistryActor.BucketKeys[b.Bucket].Id, b)), self));
            Assert.True(largestGossip <= budget, $"a gossip of {perGossip} buckets is {largestGossip} bytes on the wire, over {budget}");

            // The shape of before, for scale: the whole node in one entry, as delta and as gossip.
            var whole = new ClusterNodeDevices(Node, Uid, devices).Sign(key);
            var oldDelta = Wire(system, DeltaPropagationOf(self, [(DeviceRegistryActor.Key.Id, whole)]));
            var oldGossip = Wire(system, GossipOf([(DeviceRegistryActor.Key.Id, whole)], self));
            Assert.True(oldDelta > frame && oldGossip > frame, $"the single entry's delta ({oldDelta}) or gossip ({oldGossip}) fitted the frame: the spec measures nothing");

            output.WriteLine($"{devices.Length} devices, 32-character names: largest bucket {one.Devices.Length} devices, its delta {oneDelta} bytes; {bursts} bursts, largest {largestDelta} bytes (budget {budget}); gossip of {perGossip} buckets {largestGossip} bytes; the single entry of before: delta {oldDelta}, gossip {oldGossip}");
        }
        finally
        {
            await system.Terminate();
        }
    }

    // The replicator's message for deltas of these entries, each the delta of a write of the
    // entry over an older value of it, as the replicator builds it.
    private static DeltaPropagation DeltaPropagationOf(UniqueAddress self, IEnumerable<(string Key, ClusterNodeDevices Entry)> entries)
    {
        var deltas = ImmutableDictionary<string, Delta>.Empty;
        foreach (var (key, entry) in entries)
        {
            var older = (LWWDictionary<string, ClusterNodeDevices>)((IDeltaReplicatedData)LWWDictionary<string, ClusterNodeDevices>.Empty
                .SetItem(self, entry.Key, entry with { Devices = [] })).ResetDelta();
            var delta = older.SetItem(self, entry.Key, entry).Delta;
            deltas = deltas.Add(key, new Delta(Envelope(delta), 1, 2));
        }

        return new DeltaPropagation(self, shouldReply: false, deltas);
    }

    // A gossip reply with the full state of these maps (Gossip is internal to Akka.DistributedData).
    private static object GossipOf(IEnumerable<(string Key, ClusterNodeDevices Entry)> entries, UniqueAddress self)
    {
        var data = entries.ToImmutableDictionary(
            e => e.Key,
            e => Envelope(LWWDictionary<string, ClusterNodeDevices>.Empty.SetItem(self, e.Entry.Key, e.Entry)));
        var type = typeof(DeltaPropagation).Assembly.GetType("Akka.DistributedData.Internal.Gossip", throwOnError: true)!;
        return Activator.CreateInstance(type, [(IImmutableDictionary<string, DataEnvelope>)data, false, null, null])!;
    }

    private static DataEnvelope Envelope(IReplicatedData data) =>
        (DataEnvelope)Activator.CreateInstance(typeof(DataEnvelope), BindingFlags.Instance | BindingFlags.NonPublic, null, [data, null, null], null)!;

    // Bytes on the wire: the message as its serializer writes it (sealed with the admin secret),
    // plus the remoting envelope's recipient and sender paths and manifest.
    private static int Wire(ActorSystem system, object message)
    {
        var serializer = system.Serialization.FindSerializerFor(message);
        Assert.IsType<GuardedReplicatorMessageSerializer>(serializer);
        return serializer.ToBinary(message).Length + 256;
    }
}
