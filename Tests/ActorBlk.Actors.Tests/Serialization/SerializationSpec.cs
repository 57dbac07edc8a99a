using ActorBlk.Actors.Serialization;
using ActorBlk.Actors.Tests.Support;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Requests;
using Akka.Configuration;
using Akka.Actor;
using Akka.Serialization;
using Xunit;
using Xunit.Abstractions;

namespace ActorBlk.Actors.Tests.Serialization;

/// <summary>A type that is not on the allow-list, standing in for a deserialization gadget.</summary>
public sealed class Gadget
{
    public string Command { get; set; } = "rm -rf /";
}

/// <summary>The wire protocol: every message round-trips through the bound serializer; nothing else is accepted.</summary>
public sealed class SerializationSpec : Akka.TestKit.Xunit2.TestKit
{
    private static readonly Config Bound = ConfigurationFactory.ParseString("""
        akka.actor {
          serializers.actorblk = "ActorBlk.Actors.Serialization.ActorBlkHyperionSerializer, ActorBlk.Actors"
          serialization-bindings { "ActorBlk.Actors.Serialization.IActorBlkMessage, ActorBlk.Actors" = actorblk }
        }
        """).WithFallback(Configs.Simulated);

    public SerializationSpec(ITestOutputHelper output)
        : base(Bound, output: output)
    {
    }

    public static IEnumerable<object[]> Messages() =>
    [
        [new SoftwareContextProtocol.Submit(1, BlockOp.Write, 4096, 3, [1, 2, 3], RequestFlags.Fua)],
        [new SoftwareContextProtocol.Completed(2, BlockStatus.Medium, null)],
        [new SoftwareContextProtocol.Completed(3, BlockStatus.Ok, [9, 8])],
        [new SoftwareContextProtocol.Rejected(4, InvalidRequestReason.Misaligned, "offset 7")],
        [SoftwareContextProtocol.GetStats.Instance],
        [new SoftwareContextProtocol.Stats(3, 1, 2, 3, 4, 5)],
        [new HardwareQueue.Stats(1, true, false, 10, 20, 3, 4, 2, [1, 2, 3, 4, 5, 6, 7])],
        [TagSetProtocol.GetState.Instance],
        [new TagSetProtocol.State("t", ["a", "b"], true, 128, 0, 1, false, [2], [5])],
        [CpuTopologyProtocol.GetTopology.Instance],
        [new CpuTopologyProtocol.TopologyInfo(2, "simulated", 8, "0-7", "0-6", 2, ["nullb0"])],
        [new RequestQueueProtocol.Io(5, BlockOp.Read, 0, 512, null, RequestFlags.NoWait, 2)],
        [RequestQueueProtocol.GetInfo.Instance],
        [new RequestQueueProtocol.Info("n", "null", 1 << 30, 512, 2, 8, "ring", "n", true, false, 0, 1, 2, 3, "online")],
        [new BlockLayer.Destroyed("nullb0", 3)],
        [new BlockLayer.NoSuchDevice("x")],
        [new BlockLayer.NoSuchDevice("x", 12)],
        [new Sysfs.Read("block/nullb0/queue/nr_requests")],
        [new Sysfs.Failed("p", "EPERM", "no")],
        [new RemoteSurface.NotAuthorized("Destroy", "no")],
        [BlockLayer.ListDevices.Instance],
        [new BlockLayer.DeviceList([new BlockLayer.DeviceSummary("n", "null", 1024, 512, 1, "mailbox", "n")])],
        [new BlockLayer.Io("nullb0", 6, BlockOp.Discard, 0, 4096)],
    ];

    [Theory]
    [MemberData(nameof(Messages))]
    public void Every_wire_message_round_trips_through_the_actorblk_serializer(object message)
    {
        var serializer = Sys.Serialization.FindSerializerFor(message);
        Assert.IsType<ActorBlkHyperionSerializer>(serializer);

        var bytes = serializer.ToBinary(message);
        var back = serializer.FromBinary(bytes, message.GetType());

        Assert.Equivalent(message, back, strict: true);
        Assert.Equal(message.GetType(), back.GetType());
    }

    // The node's own protocol between its actors: serializable (it is an ActorBlk message) but
    // never accepted from the network (README, "Security").
    public static IEnumerable<object[]> InternalMessages() =>
    [
        [HardwareQueue.ScanTimeouts.Instance],
        [HardwareQueue.Stop.Instance],
        [HardwareQueue.Start.Instance],
        [new HardwareQueue.TimeoutsExpired(0, 2, 5)],
        [new TagSetProtocol.Joined("shared", true, 2)],
        [new TagSetProtocol.Left("shared", false, 1)],
        [new CpuTopologyProtocol.Registered("nullb0", 4)],
        [new CpuTopologyProtocol.Unregistered("nullb0")],
        [new RequestQueueProtocol.Ready("nullb0")],
        [RequestQueueProtocol.Unregister.Instance],
        [new RequestQueueProtocol.Unregistered("nullb0", 0)],
    ];

    [Theory]
    [MemberData(nameof(InternalMessages))]
    public void Internal_messages_serialize_but_are_refused_from_the_network(object message)
    {
        var serializer = Sys.Serialization.FindSerializerFor(message);
        var bytes = serializer.ToBinary(message);
        Assert.Throws<System.Runtime.Serialization.SerializationException>(() => serializer.FromBinary(bytes, message.GetType()));
    }

    public static IEnumerable<object[]> AdminMessages() =>
    [
        [new BlockLayer.Destroy("nullb0")],
        [new Sysfs.Write("block/nullb0/queue/nr_requests", "4")],
        [new Sysfs.Hotplug(1, false)],
        [new CpuTopologyProtocol.CpuOffline(1)],
        [new CpuTopologyProtocol.CpuOnline(1)],
    ];

    [Theory]
    [MemberData(nameof(AdminMessages))]
    public void Administrative_messages_from_the_network_arrive_refused_unless_authenticated(object message)
    {
        var serializer = Sys.Serialization.FindSerializerFor(message);
        var refused = Assert.IsType<RemoteSurface.AdminRefused>(serializer.FromBinary(serializer.ToBinary(message), message.GetType()));
        Assert.Equivalent(message, refused.Request, strict: true);

        // No secret is configured in this system: even an envelope is refused.
        var envelope = new RemoteSurface.Authenticated("anything", (IActorBlkMessage)message);
        Assert.IsType<RemoteSurface.AdminRefused>(serializer.FromBinary(serializer.ToBinary(envelope), typeof(RemoteSurface.Authenticated)));
    }

    [Fact]
    public void A_payload_of_a_type_outside_the_allow_list_is_refused()
    {
        // A peer with stock Hyperion (no allow-list) sends a type this node must never instantiate.
        var permissive = new HyperionSerializer((ExtendedActorSystem)Sys, HyperionSerializerSettings.Default);
        var bytes = permissive.ToBinary(new Gadget());

        var ours = Sys.Serialization.FindSerializerForType(typeof(IActorBlkMessage));
        Assert.IsType<ActorBlkHyperionSerializer>(ours);
        var ex = Assert.Throws<System.Runtime.Serialization.SerializationException>(() => ours.FromBinary(bytes, typeof(object)));
        Assert.Contains("unknown type ActorBlk.Actors.Tests.Serialization.Gadget", ex.Message);

        // Behind the wire schema, Hyperion's own allow-list refuses it too.
        var hyperion = new HyperionSerializer((ExtendedActorSystem)Sys, ActorBlkHyperionSerializer.HyperionSettings);
        Assert.Contains("Unsafe Type", Assert.ThrowsAny<Exception>(() => hyperion.FromBinary(bytes, typeof(object))).ToString());
    }

    [Fact]
    public void An_envelope_nested_thousands_deep_is_refused_at_its_first_type_without_reading_the_graph()
    {
        // An outside audit sent Authenticated(Authenticated(... Destroy)) 28,000 deep (112 KB) as a
        // Hyperion graph: reading it overflowed the stack and killed the node before Admit could
        // refuse it. The envelope now travels as its surrogate (AuthenticatedWire, the request as
        // bytes); the envelope type itself is refused while a payload is read, so the reader stops
        // at the root. The graph is written by a plain Hyperion (no surrogates, no filter) on a
        // thread with room for its recursion.
        IActorBlkMessage nested = new BlockLayer.Destroy("nullb0");
        for (var i = 0; i < 20_000; i++)
        {
            nested = new RemoteSurface.Authenticated("guess", nested);
        }

        byte[] bytes = [];
        var writer = new Thread(() =>
        {
            var plain = new Hyperion.Serializer(Hyperion.SerializerOptions.Default.WithVersionTolerance(true).WithPreserveObjectReferences(false));
            using var stream = new MemoryStream();
            plain.Serialize(nested, stream);
            bytes = stream.ToArray();
        }, 512 << 20);
        writer.Start();
        writer.Join();
        Assert.True(bytes.Length > 40_000, $"{bytes.Length} bytes");

        var ours = Sys.Serialization.FindSerializerForType(typeof(IActorBlkMessage));
        var ex = Assert.Throws<System.Runtime.Serialization.SerializationException>(() => ours.FromBinary(bytes, typeof(object)));
        Assert.Contains("unknown type ActorBlk.Actors.Serialization.RemoteSurface+Authenticated", ex.Message);
    }

    [Fact]
    public void An_envelope_inside_an_envelope_is_refused_and_one_level_round_trips()
    {
        var serializer = Sys.Serialization.FindSerializerForType(typeof(IActorBlkMessage));
        var inner = new RemoteSurface.Authenticated("s", new BlockLayer.ListDevices());
        var twice = new RemoteSurface.Authenticated("s", inner);
        Assert.Throws<System.Runtime.Serialization.SerializationException>(() => serializer.FromBinary(serializer.ToBinary(twice), typeof(object)));

        // One level: the request inside comes back (refused as not authenticated: this system has no secret).
        Assert.IsType<BlockLayer.ListDevices>(Assert.IsType<RemoteSurface.AdminRefused>(serializer.FromBinary(serializer.ToBinary(inner), typeof(object))).Request);
    }

    [Theory]
    [InlineData("System.Collections.Generic.List`1[[ActorBlk.Actors.Serialization.IActorBlkMessage, ActorBlk.Actors]], System.Private.CoreLib", false)]
    [InlineData("ActorBlk.Actors.Serialization.RemoteSurface+AuthenticatedWire, ActorBlk.Actors", true)]
    [InlineData("ActorBlk.Actors.SoftwareContextProtocol+Submit, ActorBlk.Actors, Version=1.0.0.0, Culture=neutral, PublicKeyToken=null", true)]
    [InlineData("ActorBlk.Actors.SoftwareContextProtocol+Submit, ActorBlk.Actors", true)]
    [InlineData("ActorBlk.Actors.SoftwareContextProtocol+Submit, ActorBlk.Hardware", false)]
    [InlineData("ActorBlk.Actors.SoftwareContextProtocol+Submit, Evil", false)]
    [InlineData("ActorBlk.Actors.SoftwareContextProtocol+Submit", false)]
    [InlineData("System.String, Evil", false)]
    [InlineData("System.String, mscorlib", true)]
    [InlineData("System.Collections.Generic.List`1[[System.String, Evil]], System.Private.CoreLib", false)]
    [InlineData("ActorBlk.Hardware.Requests.BlockStatus, ActorBlk.Hardware", true)]
    [InlineData("System.Collections.Generic.List`1[[System.String, System.Private.CoreLib,%core%]], System.Private.CoreLib,%core%", true)]
    [InlineData("System.Collections.Generic.List`1[[ActorBlk.Actors.BlockLayer+DeviceSummary, ActorBlk.Actors]], System.Private.CoreLib,%core%", true)]
    [InlineData("System.Collections.Generic.Dictionary`2[[System.String, System.Private.CoreLib],[System.IO.DirectoryInfo, System.Private.CoreLib]], System.Private.CoreLib", false)]
    [InlineData("System.IO.DirectoryInfo, System.Private.CoreLib", false)]
    [InlineData("System.Diagnostics.Process, System.Diagnostics.Process", false)]
    [InlineData("ActorBlk.Hardware.Drivers.MemoryStore, ActorBlk.Hardware", false)]
    [InlineData("ActorBlk.Actors.Tests.Serialization.Gadget, ActorBlk.Actors.Tests", false)]
    [InlineData("", false)]
    [InlineData("System.Collections.Generic.List`1[[", false)]
    public void The_type_filter_normalises_names_and_allows_only_wire_types(string name, bool allowed)
    {
        Assert.Equal(allowed, ActorBlkTypeFilter.Instance.IsAllowed(name));
    }
}
