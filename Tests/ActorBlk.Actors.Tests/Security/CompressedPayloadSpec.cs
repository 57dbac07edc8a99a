using System.Collections.Immutable;
using System.IO.Compression;
using System.Runtime.Serialization;
using ActorBlk.Actors.Serialization;
using ActorBlk.Actors.Tests.Support;
using Akka.Actor;
using Akka.Configuration;
using Akka.DistributedData;
using Akka.DistributedData.Serialization;
using Xunit;
using Xunit.Abstractions;

namespace ActorBlk.Actors.Tests.Security;

/// <summary>
/// Distributed Data's serializers inflate gzip payloads with no limit (gossip, id 12, and ORSet,
/// id 11, which rides inside every replicator message that carries data), and the replicator is
/// reachable by any peer. ActorBlk's guarded serializers take those ids and refuse a payload that
/// expands past 16 MiB, before the stock serializer inflates it (README, "Security").
/// </summary>
public sealed class CompressedPayloadSpec : Akka.TestKit.Xunit2.TestKit
{
    private static readonly Config NodeConfig = ActorBlkRemoting.SerializerConfig
        .WithFallback(DistributedData.DefaultConfig())
        .WithFallback(Configs.Simulated);

    public CompressedPayloadSpec(ITestOutputHelper output)
        : base(NodeConfig, output: output)
    {
    }

    // Gossip is internal to Akka.DistributedData: its manifest is the serializer's own constant.
    private static string GossipManifest =>
        typeof(ReplicatorMessageSerializer).GetField("GossipManifest", System.Reflection.BindingFlags.NonPublic | System.Reflection.BindingFlags.Static)?.GetRawConstantValue() as string
        ?? throw new InvalidOperationException("ReplicatorMessageSerializer.GossipManifest is gone.");

    [Fact]
    public void Gossip_that_expands_past_the_limit_is_refused_before_it_is_inflated()
    {
        // 64 MiB of zeros is 65 KB of gzip: one remoting frame. The stock serializer inflates all
        // of it (and more, growing its buffer) before it parses a byte.
        var bomb = Gzip(64 << 20);
        Assert.True(bomb.Length < 128_000, $"{bomb.Length} bytes");

        var stock = new ReplicatorMessageSerializer((ExtendedActorSystem)Sys);
        var stockAllocated = Allocated(() => stock.FromBinary(bomb, GossipManifest));
        Assert.True(stockAllocated > 64L << 20, $"the stock serializer allocated {stockAllocated} bytes");

        var guardedAllocated = Allocated(() =>
        {
            var ex = Assert.Throws<SerializationException>(() => Sys.Serialization.Deserialize(bomb, 12, GossipManifest));
            Assert.Contains("expands past 16777216 bytes", ex.Message);
        });
        Assert.True(guardedAllocated < 1 << 20, $"the guard allocated {guardedAllocated} bytes");
    }

    [Fact]
    public void An_orset_that_expands_past_the_limit_is_refused_and_one_that_does_not_passes()
    {
        var guarded = Assert.IsType<GuardedReplicatedDataSerializer>(Sys.Serialization.FindSerializerForType(typeof(ORSet<string>)));
        var manifest = guarded.Manifest(ORSet<string>.Empty);
        Assert.True(guarded.BoundsGzip);

        var ex = Assert.Throws<SerializationException>(() => Sys.Serialization.Deserialize(Gzip(17 << 20), 11, manifest));
        Assert.Contains("expands past", ex.Message);
        Assert.Contains("not valid gzip", Assert.Throws<SerializationException>(() => Sys.Serialization.Deserialize([0x1F, 0x8B, 3, 4], 11, manifest)).Message);

        Assert.Equal(ORSet<string>.Empty, Sys.Serialization.Deserialize(guarded.ToBinary(ORSet<string>.Empty), 11, manifest));
    }

    [Theory]
    [InlineData(11, "I")] // LWWDictionary: the registry's own type (an outside audit inflated 100 MiB with it)
    [InlineData(11, "H")] // ORDictionary
    [InlineData(11, "J")] // PNCounterDictionary
    [InlineData(11, "K")] // ORMultiValueDictionary
    [InlineData(12, "A")] // any manifest: a payload is gzip by its magic bytes, not by its name
    public void Every_gzip_payload_of_distributed_data_is_bounded_whatever_its_manifest(int serializer, string manifest)
    {
        var bomb = Gzip(17 << 20);
        var allocated = Allocated(() =>
        {
            var ex = Assert.Throws<SerializationException>(() => Sys.Serialization.Deserialize(bomb, serializer, manifest));
            Assert.Contains("expands past", ex.Message);
        });
        Assert.True(allocated < 1 << 20, $"the guard allocated {allocated} bytes");
    }

    [Fact]
    public void Honest_gossip_passes()
    {
        var gossipType = typeof(ORSet<>).Assembly.GetType("Akka.DistributedData.Internal.Gossip", throwOnError: true)!;
        var envelopeType = typeof(ORSet<>).Assembly.GetType("Akka.DistributedData.Internal.DataEnvelope", throwOnError: true)!;
        var serializer = Assert.IsType<GuardedReplicatorMessageSerializer>(Sys.Serialization.FindSerializerForType(gossipType));
        var empty = typeof(ImmutableDictionary).GetMethod(nameof(ImmutableDictionary.Create), 2, Type.EmptyTypes)!
            .MakeGenericMethod(typeof(string), envelopeType).Invoke(null, null);
        var ctor = gossipType.GetConstructors(System.Reflection.BindingFlags.Instance | System.Reflection.BindingFlags.Public | System.Reflection.BindingFlags.NonPublic)
            .First();
        var gossip = ctor.Invoke([empty, true, null, null]); // (data, send back, from, to)

        var bytes = serializer.ToBinary(gossip);
        Assert.Equal(GossipManifest, serializer.Manifest(gossip));
        Assert.IsType(gossipType, Sys.Serialization.Deserialize(bytes, 12, GossipManifest));
    }

    private static byte[] Gzip(int zeros)
    {
        using var output = new MemoryStream();
        using (var gzip = new GZipStream(output, CompressionLevel.SmallestSize, leaveOpen: true))
        {
            var block = new byte[1 << 20];
            for (var written = 0; written < zeros; written += block.Length)
            {
                gzip.Write(block, 0, Math.Min(block.Length, zeros - written));
            }
        }

        return output.ToArray();
    }

    private static long Allocated(Action action)
    {
        var before = GC.GetAllocatedBytesForCurrentThread();
        try
        {
            action();
        }
        catch (Exception ex) when (ex is not Xunit.Sdk.XunitException)
        {
        }

        return GC.GetAllocatedBytesForCurrentThread() - before;
    }
}
