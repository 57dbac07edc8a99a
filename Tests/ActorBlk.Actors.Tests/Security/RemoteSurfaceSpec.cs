using ActorBlk.Actors.Serialization;
using ActorBlk.Actors.Tests.Support;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Requests;
using Akka.Actor;
using Akka.Cluster;
using Akka.Configuration;
using Akka.Dispatch.SysMsg;
using Akka.Event;
using Akka.Serialization;
using Akka.TestKit;
using Xunit;
using Xunit.Abstractions;

namespace ActorBlk.Actors.Tests.Security;

/// <summary>A type no allow-list admits; its constructor records every instance (what JSON would run).</summary>
public sealed class JsonGadget
{
    private static int _constructed;

    /// <summary>Records the instance.</summary>
    public JsonGadget() => Interlocked.Increment(ref _constructed);

    /// <summary>Instances constructed in this process.</summary>
    public static int Constructed => Volatile.Read(ref _constructed);

    /// <summary>A field for the payload to carry.</summary>
    public string Command { get; set; } = "rm -rf /";
}

/// <summary>A second gadget, sent with Hyperion under ActorBlk's serializer id.</summary>
public sealed class HyperionGadget
{
    private static int _constructed;

    /// <summary>Records the instance.</summary>
    public HyperionGadget() => Interlocked.Increment(ref _constructed);

    /// <summary>Instances constructed in this process.</summary>
    public static int Constructed => Volatile.Read(ref _constructed);

    /// <summary>A field for the payload to carry.</summary>
    public string Command { get; set; } = "format c:";
}

/// <summary>
/// The attacker's Hyperion: ActorBlk's wire format and serializer id, without the allow-list or
/// the unsafe-type deny-list, so it writes any type under id 7351.
/// </summary>
public sealed class RogueHyperionSerializer : HyperionSerializer
{
    /// <summary>Created by Akka's serialization extension.</summary>
    public RogueHyperionSerializer(ExtendedActorSystem system)
        : base(system, new HyperionSerializerSettings(false, true, typeof(ActorBlkHyperionSerializer.NoExtraKnownTypes), [], [], false, Hyperion.DisabledTypeFilter.Instance))
    {
    }

    /// <inheritdoc />
    public override int Identifier => ActorBlkHyperionSerializer.SerializerId;
}

/// <summary>A message the attacker writes byte for byte under Akka's <c>akka-misc</c> id (16) and a manifest of its choice.</summary>
/// <param name="Manifest">The manifest the node's serializer is asked to read.</param>
/// <param name="Bytes">The payload.</param>
public sealed record RawMiscPayload(string Manifest, byte[] Bytes);

/// <summary>The attacker's <c>akka-misc</c>: writes <see cref="RawMiscPayload"/> as it is, and reads anything back as one.</summary>
public sealed class RawMiscSerializer(ExtendedActorSystem system) : SerializerWithStringManifest(system)
{
    /// <inheritdoc />
    public override int Identifier => 16;

    /// <inheritdoc />
    public override byte[] ToBinary(object obj) => ((RawMiscPayload)obj).Bytes;

    /// <inheritdoc />
    public override string Manifest(object o) => ((RawMiscPayload)o).Manifest;

    /// <inheritdoc />
    public override object FromBinary(byte[] bytes, string manifest) => new RawMiscPayload(manifest, bytes);
}

/// <summary>
/// The node's network surface over real remoting (README, "Security"): a separate actor system on
/// loopback that is not a cluster member tries what an attacker on the network would. Each attempt
/// is refused or dropped, nothing is instantiated, and the node still serves I/O afterwards. "Dropped"
/// is shown by ordering: a request sent after it over the same association is answered, so the
/// dropped message was processed (and discarded) first.
/// </summary>
public sealed class RemoteSurfaceSpec : Akka.TestKit.Xunit2.TestKit, IAsyncLifetime
{
    private const string Secret = "correct horse battery staple";
    private const long Capacity = 8 << 20;

    private static readonly Config NodeConfig = ConfigurationFactory.ParseString($$"""
        akka.actor.provider = cluster
        akka.remote.dot-netty.tcp { hostname = 127.0.0.1, port = 0 }
        akka.cluster.min-nr-of-members = 1
        akka.cluster.log-info = off
        actorblk.remote.admin-secret = "{{Secret}}"
        """).WithFallback(ActorBlkRemoting.SerializerConfig).WithFallback(ActorBlkRemoting.UntrustedModeConfig).WithFallback(Configs.Simulated);

    internal static readonly Config AttackerConfig = ConfigurationFactory.ParseString("""
        akka.loglevel = WARNING
        akka.actor.provider = remote
        akka.remote.dot-netty.tcp { hostname = 127.0.0.1, port = 0 }
        akka.actor.serializers.rogue = "ActorBlk.Actors.Tests.Security.RogueHyperionSerializer, ActorBlk.Actors.Tests"
        akka.actor.serializers.akka-cluster = "Akka.Cluster.Serialization.ClusterMessageSerializer, Akka.Cluster"
        akka.actor.serialization-identifiers { "Akka.Cluster.Serialization.ClusterMessageSerializer, Akka.Cluster" = 5 }
        akka.actor.serialization-bindings {
          "Akka.Cluster.IClusterMessage, Akka.Cluster" = akka-cluster
          "ActorBlk.Actors.Serialization.IActorBlkMessage, ActorBlk.Actors" = rogue
          "ActorBlk.Actors.Tests.Security.HyperionGadget, ActorBlk.Actors.Tests" = rogue
        }
        """);

    private readonly ActorSystem _attacker;
    private readonly TestProbe _events;

    public RemoteSurfaceSpec(ITestOutputHelper output)
        : base(NodeConfig, "actorblk", output)
    {
        _attacker = ActorSystem.Create("attacker", AttackerConfig);
        _events = CreateTestProbe();
        Sys.EventStream.Subscribe(_events.Ref, typeof(UnhandledMessage));
        Sys.EventStream.Subscribe(_events.Ref, typeof(DeadLetter));
    }

    private BlockLayer Layer => BlockLayer.Get(Sys);

    private string Node => ((ExtendedActorSystem)Sys).Provider.DefaultAddress.ToString();

    public async Task InitializeAsync()
    {
        var cluster = Cluster.Get(Sys);
        await cluster.JoinAsync(cluster.SelfAddress);
        await Layer.CreateDeviceAsync(new DeviceOptions { Name = "nullb0", Size = Capacity, MemoryBacked = true, PollQueues = 0 });
    }

    public async Task DisposeAsync() => await _attacker.Terminate();

    private ActorSelection Guardian(ActorSystem from) => from.ActorSelection($"{Node}/user/actorblk");

    private ActorSelection SysfsActor(ActorSystem from) => from.ActorSelection($"{Node}/user/actorblk/sysfs");

    // A request through the guardian's mailbox after whatever was sent before it: the answer proves
    // the earlier messages were processed (or dropped), and the node still serves I/O.
    private async Task AssertStillServes(TestProbe from)
    {
        var data = Enumerable.Range(0, 4096).Select(i => (byte)(i * 7)).ToArray();
        Guardian(from.Sys).Tell(new BlockLayer.Io("nullb0", 900, BlockOp.Write, 8192, 4096, data), from.Ref);
        var written = await from.ExpectMsgAsync<SoftwareContextProtocol.Completed>(TimeSpan.FromSeconds(30));
        Assert.Equal((900L, BlockStatus.Ok), (written.Id, written.Status));

        Guardian(from.Sys).Tell(new BlockLayer.Io("nullb0", 901, BlockOp.Read, 8192, 4096), from.Ref);
        var read = await from.ExpectMsgAsync<SoftwareContextProtocol.Completed>(TimeSpan.FromSeconds(30));
        Assert.Equal((901L, BlockStatus.Ok), (read.Id, read.Status));
        Assert.Equal(data, read.Data);
        Assert.Contains("nullb0", Layer.Devices.Select(d => d.Name));
    }

    // Nothing of the attacker's reached an actor on the node (no unhandled message, no dead letter).
    private void AssertNothingDelivered<T>()
    {
        foreach (var message in Delivered())
        {
            Assert.False(message is T, $"{typeof(T).Name} was delivered on the node: {message}");
        }
    }

    // What reached an actor on the node without being handled, so far.
    private List<object> Delivered()
    {
        var delivered = new List<object>();
        while (_events.HasMessages)
        {
            switch (_events.ReceiveOne(TimeSpan.Zero))
            {
                case UnhandledMessage u:
                    delivered.Add(u.Message);
                    break;
                case DeadLetter d:
                    delivered.Add(d.Message);
                    break;
            }
        }

        return delivered;
    }

    [Fact]
    public async Task A_json_tagged_payload_of_a_type_outside_the_allow_list_is_never_instantiated()
    {
        var attacker = CreateTestProbe(_attacker);
        var gadget = new JsonGadget();
        Assert.IsType<NewtonSoftJsonSerializer>(_attacker.Serialization.FindSerializerFor(gadget));
        var before = JsonGadget.Constructed;

        Guardian(_attacker).Tell(gadget, attacker.Ref);
        Guardian(_attacker).Tell(new List<string> { "also", "json" }, attacker.Ref);
        await AssertStillServes(attacker);

        Assert.Equal(before, JsonGadget.Constructed);
        AssertNothingDelivered<JsonGadget>();
        AssertNothingDelivered<List<string>>();
    }

    [Fact]
    public async Task A_hyperion_payload_of_a_type_outside_the_allow_list_is_never_instantiated()
    {
        var attacker = CreateTestProbe(_attacker);
        var gadget = new HyperionGadget();
        Assert.Equal(ActorBlkHyperionSerializer.SerializerId, _attacker.Serialization.FindSerializerFor(gadget).Identifier);
        var before = HyperionGadget.Constructed;

        Guardian(_attacker).Tell(gadget, attacker.Ref);
        await AssertStillServes(attacker);

        Assert.Equal(before, HyperionGadget.Constructed);
        AssertNothingDelivered<HyperionGadget>();
    }

    [Fact]
    public async Task PoisonPill_and_Kill_through_a_selection_never_stop_the_guardian_or_sysfs()
    {
        var attacker = CreateTestProbe(_attacker);
        var watcher = CreateTestProbe();
        watcher.Watch(Layer.Guardian);

        Guardian(_attacker).Tell(PoisonPill.Instance, attacker.Ref);
        Guardian(_attacker).Tell(Kill.Instance, attacker.Ref);
        SysfsActor(_attacker).Tell(PoisonPill.Instance, attacker.Ref);
        SysfsActor(_attacker).Tell(Kill.Instance, attacker.Ref);

        // The guardian answers what was sent after them; the sysfs actor too.
        await AssertStillServes(attacker);
        SysfsActor(_attacker).Tell(new Sysfs.Read("block/nullb0/queue/logical_block_size"), attacker.Ref);
        Assert.Equal("512\n", (await attacker.ExpectMsgAsync<Sysfs.Value>(TimeSpan.FromSeconds(30))).Text);
        Assert.False(watcher.HasMessages);
        Assert.Null(Layer.FailureReason);
    }

    [Fact]
    public async Task System_messages_from_a_peer_never_stop_or_confuse_an_actor()
    {
        var attacker = CreateTestProbe(_attacker);

        // The attacker learns the device actor's reference from an answer it sends.
        Guardian(_attacker).Tell(new BlockLayer.GetDeviceInfo("nullb0"), attacker.Ref);
        await attacker.ExpectMsgAsync<RequestQueueProtocol.Info>(TimeSpan.FromSeconds(30));
        var device = (IInternalActorRef)attacker.LastSender;
        Guardian(_attacker).Tell(new Identify(1), attacker.Ref);
        var guardian = (IInternalActorRef)(await attacker.ExpectMsgAsync<ActorIdentity>(TimeSpan.FromSeconds(30))).Subject!;

        // Terminate the device actor; tell the guardian its device died; unregister it directly.
        device.SendSystemMessage(new Terminate());
        guardian.SendSystemMessage(new DeathWatchNotification(device, existenceConfirmed: true, addressTerminated: false));
        device.Tell(RequestQueueProtocol.Unregister.Instance, attacker.Ref);
        device.Tell(HardwareQueue.Stop.Instance, attacker.Ref);

        // Ordering over the association: the device actor answers what came after.
        device.Tell(new RequestQueueProtocol.Io(77, BlockOp.Read, 0, 512), attacker.Ref);
        Assert.Equal(BlockStatus.Ok, (await attacker.ExpectMsgAsync<SoftwareContextProtocol.Completed>(TimeSpan.FromSeconds(30))).Status);
        await AssertStillServes(attacker);
        Assert.Null(Layer.FailureReason);

        // The forged notification reached the guardian only as a refusal it ignores.
        var refused = Delivered().OfType<RefusedSystemMessage>().Select(r => r.What).ToList();
        Assert.Contains("DeathWatchNotification naming a local actor", refused);
    }

    [Fact]
    public async Task Leave_and_down_through_the_trusted_cluster_daemon_path_are_refused()
    {
        // The daemon's path is trusted (members join and gossip through it); an outside audit made
        // nodes leave and downed them through it with no secret. A member takes Leave and Down only
        // from itself, so the guarded cluster serializer refuses both from the network.
        var attacker = CreateTestProbe(_attacker);
        var self = Cluster.Get(Sys).SelfAddress;
        var daemon = _attacker.ActorSelection($"{Node}/system/cluster/core/daemon");
        foreach (var name in new[] { "Leave", "Down" })
        {
            var type = typeof(Cluster).Assembly.GetType($"Akka.Cluster.ClusterUserAction+{name}", throwOnError: true)!;
            daemon.Tell(Activator.CreateInstance(type, self)!, attacker.Ref);
        }

        // Identify is handled in the daemon's mailbox after what came before it over the association.
        daemon.Tell(new Identify(7), attacker.Ref);
        Assert.NotNull((await attacker.ExpectMsgAsync<ActorIdentity>(TimeSpan.FromSeconds(30))).Subject);
        await AssertStillServes(attacker);
        Assert.Equal(MemberStatus.Up, Cluster.Get(Sys).SelfMember.Status);
        var guarded = Assert.IsType<GuardedClusterMessageSerializer>(Sys.Serialization.FindSerializerForType(typeof(Cluster).Assembly.GetType("Akka.Cluster.ClusterUserAction+Leave", throwOnError: true)!));
        Assert.Equal(2, guarded.RefusedManifests.Count);
    }

    [Fact]
    public async Task A_destroy_from_a_non_member_without_the_secret_is_refused_and_changes_nothing()
    {
        var attacker = CreateTestProbe(_attacker);
        await Layer.CreateDeviceAsync(new DeviceOptions { Name = "victim", Size = 1 << 20, PollQueues = 0 });

        Guardian(_attacker).Tell(new BlockLayer.Destroy("victim"), attacker.Ref);
        var refused = await attacker.ExpectMsgAsync<RemoteSurface.NotAuthorized>(TimeSpan.FromSeconds(30));
        Assert.Contains("authenticated", refused.Reason);

        Guardian(_attacker).Tell(new RemoteSurface.Authenticated("guess", new BlockLayer.Destroy("victim")), attacker.Ref);
        Assert.Contains("wrong", (await attacker.ExpectMsgAsync<RemoteSurface.NotAuthorized>(TimeSpan.FromSeconds(30))).Reason);

        SysfsActor(_attacker).Tell(new Sysfs.Write("block/victim/queue/nr_requests", "4"), attacker.Ref);
        var write = await attacker.ExpectMsgAsync<Sysfs.Failed>(TimeSpan.FromSeconds(30));
        Assert.Equal("EPERM", write.Errno);

        // A write of no bytes changes nothing, but the permission check comes first, as open(2)'s.
        SysfsActor(_attacker).Tell(new Sysfs.Write("block/victim/queue/nr_requests", string.Empty), attacker.Ref);
        Assert.Equal("EPERM", (await attacker.ExpectMsgAsync<Sysfs.Failed>(TimeSpan.FromSeconds(30))).Errno);
        SysfsActor(_attacker).Tell(new Sysfs.Hotplug(1, Online: false), attacker.Ref);
        Assert.Equal("EPERM", (await attacker.ExpectMsgAsync<Sysfs.Failed>(TimeSpan.FromSeconds(30))).Errno);

        Assert.Contains("victim", Layer.Devices.Select(d => d.Name));
        Assert.NotEqual("4\n", Layer.ReadAttribute("block/victim/queue/nr_requests"));
        Assert.Equal("0-3\n", Layer.ReadAttribute("devices/system/cpu/online"));

        // With the secret the same requests go through (the empty write too, changing nothing).
        SysfsActor(_attacker).Tell(new RemoteSurface.Authenticated(Secret, new Sysfs.Write("block/victim/queue/nr_requests", "4")), attacker.Ref);
        Assert.Equal("4\n", (await attacker.ExpectMsgAsync<Sysfs.Written>(TimeSpan.FromSeconds(30))).Text);
        SysfsActor(_attacker).Tell(new RemoteSurface.Authenticated(Secret, new Sysfs.Write("block/victim/queue/nr_requests", string.Empty)), attacker.Ref);
        Assert.Equal("4\n", (await attacker.ExpectMsgAsync<Sysfs.Written>(TimeSpan.FromSeconds(30))).Text);
        Guardian(_attacker).Tell(new RemoteSurface.Authenticated(Secret, new BlockLayer.Destroy("victim")), attacker.Ref);
        Assert.Equal("victim", (await attacker.ExpectMsgAsync<BlockLayer.Destroyed>(TimeSpan.FromSeconds(60))).Name);
        await AssertStillServes(attacker);
    }

    [Fact]
    public async Task An_oversized_read_is_refused_with_its_request_id_before_anything_is_allocated()
    {
        var attacker = CreateTestProbe(_attacker);

        // The whole device: beyond max_sectors_kb.
        Guardian(_attacker).Tell(new BlockLayer.Io("nullb0", 41, BlockOp.Read, 0, (int)Capacity), attacker.Ref);
        var whole = await attacker.ExpectMsgAsync<SoftwareContextProtocol.Rejected>(TimeSpan.FromSeconds(30));
        Assert.Equal((41L, InvalidRequestReason.OutOfRange), (whole.Id, whole.Reason));
        Assert.Contains("max_sectors_kb", whole.Message);

        // Within max_sectors_kb but larger than one remoting frame: the reply could never arrive.
        Guardian(_attacker).Tell(new BlockLayer.Io("nullb0", 42, BlockOp.Read, 0, 256 << 10), attacker.Ref);
        var frame = await attacker.ExpectMsgAsync<SoftwareContextProtocol.Rejected>(TimeSpan.FromSeconds(30));
        Assert.Equal(42L, frame.Id);
        Assert.Contains("NBD", frame.Message);

        // Negative, beyond the capacity, data on a read, an unknown device: typed, with the id.
        Guardian(_attacker).Tell(new BlockLayer.Io("nullb0", 43, BlockOp.Read, 0, -1), attacker.Ref);
        Assert.Equal(43L, (await attacker.ExpectMsgAsync<SoftwareContextProtocol.Rejected>(TimeSpan.FromSeconds(30))).Id);
        Guardian(_attacker).Tell(new BlockLayer.Io("nullb0", 44, BlockOp.Read, Capacity - 512, 4096), attacker.Ref);
        Assert.Equal(44L, (await attacker.ExpectMsgAsync<SoftwareContextProtocol.Rejected>(TimeSpan.FromSeconds(30))).Id);
        Guardian(_attacker).Tell(new BlockLayer.Io("nullb0", 45, BlockOp.Read, 0, 512, new byte[512]), attacker.Ref);
        Assert.Equal(45L, (await attacker.ExpectMsgAsync<SoftwareContextProtocol.Rejected>(TimeSpan.FromSeconds(30))).Id);
        Guardian(_attacker).Tell(new BlockLayer.Io("nope", 46, BlockOp.Read, 0, 512), attacker.Ref);
        Assert.Equal(new BlockLayer.NoSuchDevice("nope", 46), await attacker.ExpectMsgAsync<BlockLayer.NoSuchDevice>(TimeSpan.FromSeconds(30)));

        await AssertStillServes(attacker);
    }

    [Fact]
    public void An_oversized_read_without_a_sender_is_refused_too()
    {
        // A message from a peer that names no sender arrives with dead letters as its sender, a
        // local reference, and the frame limit was applied to remote senders only: an outside
        // audit sent 2,000 reads of 1,280 KiB (max_sectors_kb) that way to `actorblk serve`,
        // 300 KB in all, and the node grew from 127 MB to 2.6 GB.
        var device = Layer.Devices.Single(d => d.Name == "nullb0");
        var read = new SoftwareContextProtocol.Submit(47, BlockOp.Read, 0, 256 << 10);
        const int frame = 120_000;
        foreach (var nobody in new[] { ActorRefs.Nobody, Sys.DeadLetters })
        {
            var refused = MessageIo.Check(device, read, nobody, frame);
            Assert.NotNull(refused);
            Assert.Equal((47L, InvalidRequestReason.OutOfRange), (refused.Id, refused.Reason));
            Assert.Contains("NBD", refused.Message);
        }

        // A local caller (the BlockLayer API, an actor of the process) still reads up to max_sectors_kb.
        Assert.Null(MessageIo.Check(device, read, TestActor, frame));
        Assert.Null(MessageIo.Check(device, read with { Length = 4096 }, Sys.DeadLetters, frame));
    }

    [Fact]
    public async Task Internal_protocol_messages_are_not_accepted_from_the_network()
    {
        var attacker = CreateTestProbe(_attacker);
        Guardian(_attacker).Tell(new RequestQueueProtocol.Unregistered("nullb0", 0), attacker.Ref);
        Guardian(_attacker).Tell(new RequestQueueProtocol.Ready("nullb0"), attacker.Ref);
        await AssertStillServes(attacker);
        AssertNothingDelivered<RequestQueueProtocol.Unregistered>();
        AssertNothingDelivered<RequestQueueProtocol.Ready>();
    }

    [Fact]
    public void A_config_from_the_network_is_refused_before_its_hocon_is_parsed()
    {
        // akka-misc reads a Config by handing its text to Akka's HOCON parser, which recurses once
        // per nesting level. Only remote deployment (refused) carries one.
        var misc = Assert.IsType<GuardedMiscMessageSerializer>(Sys.Serialization.FindSerializerForType(typeof(Config)));
        var manifest = misc.Manifest(ConfigurationFactory.ParseString("a = 1"));
        Assert.Contains(manifest, misc.RefusedManifests);
        var refused = Assert.Throws<System.Runtime.Serialization.SerializationException>(() => misc.FromBinary("a = 1"u8.ToArray(), manifest));
        Assert.Contains("ActorBlk refuses", refused.Message);
    }

    [Fact]
    public async Task A_deeply_nested_config_through_the_trusted_path_does_not_kill_the_node()
    {
        // An outside audit: 50,000 nested brackets (100 KB, within one remoting frame) sent as a
        // Config to /user/actorblk from a peer without the secret overflowed the stack of the
        // node's remoting reader and the process died ("Stack overflow", 43,000 lines of trace).
        var raw = ActorSystem.Create("rawattacker", ConfigurationFactory.ParseString("""
            akka.loglevel = WARNING
            akka.actor.provider = remote
            akka.remote.dot-netty.tcp { hostname = 127.0.0.1, port = 0 }
            akka.actor.serializers.raw-misc = "ActorBlk.Actors.Tests.Security.RawMiscSerializer, ActorBlk.Actors.Tests"
            akka.actor.serialization-bindings { "ActorBlk.Actors.Tests.Security.RawMiscPayload, ActorBlk.Actors.Tests" = raw-misc }
            """).WithFallback(AttackerConfig));
        try
        {
            var manifest = ((SerializerWithStringManifest)Sys.Serialization.FindSerializerForType(typeof(Config))).Manifest(ConfigurationFactory.Empty);
            var hocon = System.Text.Encoding.UTF8.GetBytes("a = " + new string('[', 50_000) + new string(']', 50_000));
            var attacker = CreateTestProbe(raw);
            Guardian(raw).Tell(new RawMiscPayload(manifest, hocon), attacker.Ref);
            Guardian(raw).Tell(new RawMiscPayload(manifest, "a = 1"u8.ToArray()), attacker.Ref);
            await AssertStillServes(attacker);
            AssertNothingDelivered<Config>();
        }
        finally
        {
            await raw.Terminate();
        }
    }

    // An actor selection's wire form (SelectionEnvelope: field 1 the enclosed message's bytes,
    // field 2 its serializer id) around an Identify, wrapped in selections depth - 1 times more.
    private byte[] NestedSelection(int depth)
    {
        var identify = Sys.Serialization.FindSerializerFor(new Identify(5));
        var inner = identify.ToBinary(new Identify(5));
        var innerId = identify.Identifier;
        var manifest = System.Text.Encoding.UTF8.GetBytes(((SerializerWithStringManifest)identify).Manifest(new Identify(5)));
        for (var level = 0; level < depth; level++)
        {
            var envelope = new MemoryStream();
            WriteBytesField(envelope, 1, inner);
            envelope.WriteByte(0x10);
            WriteVarint(envelope, (uint)innerId);
            if (level == 0)
            {
                WriteBytesField(envelope, 4, manifest);
            }

            inner = envelope.ToArray();
            innerId = 6;
        }

        return inner;

        static void WriteBytesField(MemoryStream to, int field, byte[] bytes)
        {
            to.WriteByte((byte)((field << 3) | 2));
            WriteVarint(to, (uint)bytes.Length);
            to.Write(bytes);
        }

        static void WriteVarint(MemoryStream to, uint value)
        {
            for (; value >= 0x80; value >>= 7)
            {
                to.WriteByte((byte)(value | 0x80));
            }

            to.WriteByte((byte)value);
        }
    }

    [Fact]
    public void Payloads_nested_in_payloads_are_refused_past_a_small_depth()
    {
        // An outside audit: a selection whose message is a selection again, 19,000 deep in one
        // 110 KB frame, was read level by level, copying the rest each time: the node allocated
        // about 1 GB and answered its peer 5 s later, per message (five: 15 s, 1.1 to 1.9 GB).
        Assert.IsType<GuardedMessageContainerSerializer>(Sys.Serialization.FindSerializerForType(typeof(ActorSelectionMessage)));
        var delivery = typeof(ActorSystem).Assembly.GetType("Akka.Delivery.Internal.IDeliverySerializable", throwOnError: true)!;
        Assert.IsType<GuardedReliableDeliverySerializer>(Sys.Serialization.FindSerializerForType(delivery));

        // A few levels read as before (selections over the wire, AssertStillServes, still work).
        Assert.IsType<ActorSelectionMessage>(Sys.Serialization.Deserialize(NestedSelection(3), 6, string.Empty));

        var deep = NestedSelection(1_000);
        var refused = Assert.Throws<System.Runtime.Serialization.SerializationException>(() => Sys.Serialization.Deserialize(deep, 6, string.Empty));
        Assert.Contains($"more than {PayloadNesting.MaxDepth} deep", refused.ToString());

        // The limit is per message: the next one reads as before.
        Assert.IsType<ActorSelectionMessage>(Sys.Serialization.Deserialize(NestedSelection(1), 6, string.Empty));
    }
}
