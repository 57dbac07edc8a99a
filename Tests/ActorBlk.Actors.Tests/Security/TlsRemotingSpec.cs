using System.Net;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using ActorBlk.Actors.Serialization;
using ActorBlk.Actors.Tests.Support;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Requests;
using ActorBlk.Testing;
using Akka.Actor;
using Akka.Actor.Setup;
using Akka.Cluster;
using Akka.Configuration;
using Xunit;

namespace ActorBlk.Actors.Tests.Security;

/// <summary>
/// Akka.Remote over TLS on loopback (README, "Security"): a node and a client that share one
/// self-signed certificate (made here at run time, never committed) talk sysfs, hotplug and I/O;
/// a client without it, or with another certificate, reaches nothing. Also: a two-member cluster
/// still forms and heartbeats in untrusted mode with the trusted paths hocon.conf lists.
/// </summary>
public sealed class TlsRemotingSpec : IAsyncLifetime
{
    private const string Password = "test-only";
    private const string Secret = "tls-admin-secret";

    private readonly TempDirectory _dir = new();
    private readonly List<ActorSystem> _systems = [];

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync()
    {
        foreach (var system in _systems)
        {
            await system.Terminate();
        }

        _dir.Dispose();
    }

    // A self-signed certificate for localhost/127.0.0.1, usable by servers and clients.
    private string MakeCertificate(string name)
    {
        using var key = RSA.Create(2048);
        var request = new CertificateRequest($"CN={name}", key, HashAlgorithmName.SHA256, RSASignaturePadding.Pkcs1);
        var san = new SubjectAlternativeNameBuilder();
        san.AddIpAddress(IPAddress.Loopback);
        san.AddDnsName("localhost");
        request.CertificateExtensions.Add(san.Build());
        request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.DigitalSignature | X509KeyUsageFlags.KeyEncipherment, critical: false));
        request.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension([new Oid("1.3.6.1.5.5.7.3.1"), new Oid("1.3.6.1.5.5.7.3.2")], critical: false));
        using var certificate = request.CreateSelfSigned(DateTimeOffset.UtcNow.AddDays(-1), DateTimeOffset.UtcNow.AddDays(7));
        var path = Path.Combine(_dir.Path, name + ".pfx");
        File.WriteAllBytes(path, certificate.Export(X509ContentType.Pkcs12, Password));
        return path;
    }

    private ActorSystem Start(string name, string hocon)
    {
        var config = ConfigurationFactory.ParseString(hocon)
            .WithFallback(ActorBlkRemoting.SerializerConfig)
            .WithFallback(ActorBlkRemoting.UntrustedModeConfig)
            .WithFallback(Configs.Simulated);
        var setup = BootstrapSetup.Create().WithConfig(config);
        var system = ActorBlkRemoting.TlsSetup(config) is { } tls
            ? ActorSystem.Create(name, ActorSystemSetup.Create(setup, tls))
            : ActorSystem.Create(name, setup);
        _systems.Add(system);
        return system;
    }

    private static string Tls(string certificate) => $$"""
        akka.remote.dot-netty.tcp {
          enable-ssl = on
          ssl.certificate { path = {{System.Text.Json.JsonSerializer.Serialize(certificate)}}, password = "{{Password}}" }
        }
        """;

    private const string Remote = """
        akka.actor.provider = remote
        akka.remote.dot-netty.tcp { hostname = 127.0.0.1, port = 0 }
        """;

    private static string Address(ActorSystem system) => ((ExtendedActorSystem)system).Provider.DefaultAddress.ToString();

    [Fact]
    public async Task Sysfs_hotplug_and_io_work_over_tls_and_nothing_reaches_the_node_without_the_certificate()
    {
        var certificate = MakeCertificate("actorblk");
        var node = Start("actorblk", Remote + Tls(certificate) + $"\nactorblk.remote.admin-secret = \"{Secret}\"");
        var layer = BlockLayer.Get(node);
        await layer.CreateDeviceAsync(new DeviceOptions { Name = "nullb0", Size = 8 << 20, MemoryBacked = true, PollQueues = 0 });
        Assert.StartsWith("akka.ssl.tcp://actorblk@127.0.0.1:", Address(node));

        var client = Start("client", Remote + Tls(certificate));
        var sysfs = await client.ActorSelection($"{Address(node)}/user/actorblk/sysfs").ResolveOne(TimeSpan.FromSeconds(60));
        var guardian = await client.ActorSelection($"{Address(node)}/user/actorblk").ResolveOne(TimeSpan.FromSeconds(60));

        // sysfs: list, read, an authenticated write.
        var listing = await sysfs.Ask<Sysfs.Listing>(new Sysfs.List("block/nullb0/queue/"), TimeSpan.FromSeconds(30));
        Assert.Contains("block/nullb0/queue/nr_requests", listing.Paths);
        var written = await sysfs.Ask<Sysfs.Written>(new RemoteSurface.Authenticated(Secret, new Sysfs.Write("block/nullb0/queue/nr_requests", "16")), TimeSpan.FromSeconds(30));
        Assert.Equal("16\n", written.Text);

        // hotplug: CPU 3 offline and back.
        var offline = await sysfs.Ask<CpuTopologyProtocol.TopologyChanged>(new RemoteSurface.Authenticated(Secret, new Sysfs.Hotplug(3, Online: false)), TimeSpan.FromSeconds(60));
        Assert.Equal("0-2", offline.Online);
        var online = await sysfs.Ask<CpuTopologyProtocol.TopologyChanged>(new RemoteSurface.Authenticated(Secret, new Sysfs.Hotplug(3, Online: true)), TimeSpan.FromSeconds(60));
        Assert.Equal("0-3", online.Online);

        // I/O messages: a write and the read of it.
        var data = Enumerable.Range(0, 8192).Select(i => (byte)(i % 251)).ToArray();
        var w = await guardian.Ask<SoftwareContextProtocol.Completed>(new BlockLayer.Io("nullb0", 1, BlockOp.Write, 4096, data.Length, data), TimeSpan.FromSeconds(30));
        Assert.Equal((1L, BlockStatus.Ok), (w.Id, w.Status));
        var r = await guardian.Ask<SoftwareContextProtocol.Completed>(new BlockLayer.Io("nullb0", 2, BlockOp.Read, 4096, data.Length), TimeSpan.FromSeconds(30));
        Assert.Equal(data, r.Data);

        // A plain-TCP client (at the same port) and a client with another certificate resolve nothing.
        var plain = Start("plain", Remote);
        var plainAddress = Address(node).Replace("akka.ssl.tcp://", "akka.tcp://", StringComparison.Ordinal);
        await Assert.ThrowsAsync<ActorNotFoundException>(() => plain.ActorSelection($"{plainAddress}/user/actorblk").ResolveOne(TimeSpan.FromSeconds(10)));
        var stranger = Start("stranger", Remote + Tls(MakeCertificate("stranger")));
        await Assert.ThrowsAsync<ActorNotFoundException>(() => stranger.ActorSelection($"{Address(node)}/user/actorblk").ResolveOne(TimeSpan.FromSeconds(10)));

        // The node still serves its client.
        var again = await guardian.Ask<SoftwareContextProtocol.Completed>(new BlockLayer.Io("nullb0", 3, BlockOp.Read, 4096, 512), TimeSpan.FromSeconds(30));
        Assert.Equal(BlockStatus.Ok, again.Status);
    }

    [Fact]
    public async Task A_two_member_cluster_forms_in_untrusted_mode_and_members_use_the_admin_secret()
    {
        const string member = """
            akka.actor.provider = cluster
            akka.remote.dot-netty.tcp { hostname = 127.0.0.1, port = 0 }
            akka.cluster.min-nr-of-members = 1
            akka.cluster.log-info = off
            actorblk.remote.admin-secret = "member-secret"
            """;
        var first = Start("actorblk", member);
        var second = Start("actorblk", member);
        var bothUp = new[] { first, second }.Select(s => AllUp(s, Cluster.Get(first).SelfAddress, Cluster.Get(second).SelfAddress)).ToArray();
        await Cluster.Get(first).JoinAsync(Cluster.Get(first).SelfAddress);
        await Cluster.Get(second).JoinAsync(Cluster.Get(first).SelfAddress);

        // Both members see both Up: gossip and heartbeats pass untrusted mode through the trusted paths.
        await Task.WhenAll(bothUp).WaitAsync(TimeSpan.FromSeconds(90));

        // A member administers another with the shared secret.
        var layer = BlockLayer.Get(first);
        await layer.CreateDeviceAsync(new DeviceOptions { Name = "nullb1", Size = 1 << 20, PollQueues = 0 });
        var guardian = await second.ActorSelection($"{Address(first)}/user/actorblk").ResolveOne(TimeSpan.FromSeconds(60));
        var destroyed = await guardian.Ask<BlockLayer.Destroyed>(new RemoteSurface.Authenticated("member-secret", new BlockLayer.Destroy("nullb1")), TimeSpan.FromSeconds(60));
        Assert.Equal("nullb1", destroyed.Name);
    }

    // Completes when every address is Up as seen from system.
    private static Task AllUp(ActorSystem system, params Address[] addresses)
    {
        var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var listener = system.ActorOf(Props.Create(() => new UpWatcher(addresses, done)));
        Cluster.Get(system).Subscribe(listener, ClusterEvent.SubscriptionInitialStateMode.InitialStateAsEvents, typeof(ClusterEvent.MemberUp));
        return done.Task;
    }

    private sealed class UpWatcher : ReceiveActor
    {
        public UpWatcher(Address[] addresses, TaskCompletionSource done)
        {
            var left = new HashSet<Address>(addresses);
            Receive<ClusterEvent.MemberUp>(up =>
            {
                left.Remove(up.Member.Address);
                if (left.Count == 0)
                {
                    done.TrySetResult();
                }
            });
        }
    }
}
