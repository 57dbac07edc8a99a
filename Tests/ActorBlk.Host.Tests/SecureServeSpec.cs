using System.Net;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using System.Text.RegularExpressions;
using ActorBlk.Actors;
using ActorBlk.Actors.Serialization;
using ActorBlk.Hardware.Requests;
using ActorBlk.Host.Tests.Support;
using Akka.Actor;
using Akka.Actor.Setup;
using Akka.Configuration;
using Xunit;

namespace ActorBlk.Host.Tests;

/// <summary>
/// `actorblk serve` over TLS (README, "Security"): the repository's hocon.conf with TLS turned on
/// and a certificate made at run time; `actorblk sysfs` and `actorblk hotplug` reach it as separate
/// processes with the same configuration, and I/O messages travel over it. A non-loopback address
/// without TLS is refused before anything starts.
/// </summary>
[Collection(OwnResourceProcessesCollection.Name)]
public sealed partial class SecureServeSpec : IDisposable
{
    private static readonly TimeSpan StartTimeout = TimeSpan.FromSeconds(60);
    private readonly string _dir = Directory.CreateTempSubdirectory("actorblk-tls-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [GeneratedRegex(@"Devices are addressable at (?<address>akka\.ssl\.tcp://\S+)/user/actorblk")]
    private static partial Regex AddressLine();

    // A self-signed certificate (PKCS#12), made here and deleted with the directory.
    private string MakeCertificate(string file = "node.pfx", string? password = "pfx-password")
    {
        using var key = RSA.Create(2048);
        var request = new CertificateRequest("CN=actorblk", key, HashAlgorithmName.SHA256, RSASignaturePadding.Pkcs1);
        var san = new SubjectAlternativeNameBuilder();
        san.AddIpAddress(IPAddress.Loopback);
        request.CertificateExtensions.Add(san.Build());
        using var certificate = request.CreateSelfSigned(DateTimeOffset.UtcNow.AddDays(-1), DateTimeOffset.UtcNow.AddDays(7));
        var path = Path.Combine(_dir, file);
        File.WriteAllBytes(path, certificate.Export(X509ContentType.Pkcs12, password));
        return path;
    }

    // hocon.conf with overrides after it (later keys win): one small null device, a simulated
    // 4-CPU machine, NBD on a port of its own (OwnResourceProcessesCollection), the given extra settings.
    private string Config(string extra)
    {
        var path = Path.Combine(_dir, $"node-{Guid.NewGuid():N}.conf");
        File.WriteAllText(path, File.ReadAllText(RepositoryFiles.Hocon()) + $$"""

            actorblk.devices = [ { name = nullb0, driver = "null", size = 64m, memory_backed = on } ]
            actorblk.topology { source = simulated, simulated { cpus = 4 } }
            actorblk.nbd.listen = "127.0.0.1:0"
            {{extra}}
            """);
        return path;
    }

    [Fact]
    public async Task Sysfs_hotplug_and_io_reach_a_node_over_tls()
    {
        var certificate = MakeCertificate();
        var nbdCertificate = MakeCertificate("nbd.pfx", password: null);
        var config = Config($$"""
            akka.remote.dot-netty.tcp { enable-ssl = on, ssl.certificate { path = {{System.Text.Json.JsonSerializer.Serialize(certificate)}}, password = "pfx-password" } }
            actorblk.remote.admin-secret = "secure-serve-secret"
            actorblk.nbd { tls = require, certificate = {{System.Text.Json.JsonSerializer.Serialize(nbdCertificate)}} }
            """);
        await using var node = ActorBlkProcess.Start("serve", "--config", config, "--port", "0");
        var line = await node.WaitForLineAsync(l => AddressLine().IsMatch(l), StartTimeout);
        var address = AddressLine().Match(line).Groups["address"].Value;
        Assert.Contains("Remoting: TLS with mutual authentication", node.Output);

        // The export's URI as a client must use it, as the registry publishes it: it said nbd://,
        // which a server with tls = require refuses (an outside audit).
        await node.WaitForLineAsync(l => l.Contains("NBD export listening on", StringComparison.Ordinal), StartTimeout);
        Assert.Matches(@"Exporting nullb0 over NBD at nbds://127\.0\.0\.1:\d+/nullb0 \(the default export\)", node.Output);

        async Task<(int Code, string Out, string All)> Run(params string[] args)
        {
            await using var command = ActorBlkProcess.Start([args[0], "--config", config, "--node", address, .. args[1..]]);
            var code = await command.WaitForExitAsync(StartTimeout);
            return (code, command.StandardOutput, command.Output);
        }

        // A client without the node's --config speaks plain remoting, which the node drops: the
        // answer names TLS (it said only "is `actorblk serve` running there?").
        await using (var plain = ActorBlkProcess.Start("sysfs", "cat", "block/nullb0/queue/nr_requests", "--node", new Uri(address.Replace("akka.ssl.tcp", "tcp", StringComparison.Ordinal)).Authority))
        {
            Assert.Equal(1, await plain.WaitForExitAsync(StartTimeout));
            Assert.Contains("no ActorBlk node answered at akka.tcp://", plain.Output, StringComparison.Ordinal);
            Assert.Contains("A node with TLS remoting answers only a client given a --config that turns TLS on", plain.Output, StringComparison.Ordinal);
        }

        var list = await Run("sysfs", "list", "block/nullb0/queue/");
        Assert.True(list.Code == 0, $"sysfs list exited {list.Code}:\n{list.All}");
        Assert.Contains("block/nullb0/queue/nr_requests\n", list.Out);
        var written = await Run("sysfs", "write", "block/nullb0/queue/nr_requests", "8");
        Assert.True(written.Code == 0, $"sysfs write exited {written.Code}:\n{written.All}");
        var cat = await Run("sysfs", "cat", "block/nullb0/queue/nr_requests");
        Assert.True(cat.Code == 0, $"sysfs cat exited {cat.Code}:\n{cat.All}");
        Assert.Equal("8\n", cat.Out);
        var offline = await Run("hotplug", "offline", "3");
        Assert.True(offline.Code == 0, $"hotplug offline exited {offline.Code}:\n{offline.All}");
        Assert.Contains("online CPUs 0-2", offline.Out);
        var online = await Run("hotplug", "online", "3");
        Assert.True(online.Code == 0, $"hotplug online exited {online.Code}:\n{online.All}");

        // devices with the node's hocon.conf: it crashed (no TLS transport loaded) before.
        var devices = await Run("devices");
        Assert.True(devices.Code == 0, $"devices exited {devices.Code}:\n{devices.All}");
        Assert.Contains("nullb0", devices.Out);
        Assert.DoesNotContain("Unhandled exception", devices.All);

        // I/O messages from an actor system holding the certificate.
        var clientConfig = ConfigurationFactory.ParseString($$"""
            akka.loglevel = WARNING
            akka.actor.provider = remote
            akka.remote.dot-netty.tcp { hostname = 127.0.0.1, port = 0, enable-ssl = on, ssl.certificate { path = {{System.Text.Json.JsonSerializer.Serialize(certificate)}}, password = "pfx-password" } }
            """).WithFallback(ActorBlkRemoting.SerializerConfig);
        var client = ActorSystem.Create("client", ActorSystemSetup.Create(BootstrapSetup.Create().WithConfig(clientConfig), ActorBlkRemoting.TlsSetup(clientConfig)!));
        try
        {
            var guardian = client.ActorSelection($"{address}/user/actorblk");
            var data = Enumerable.Range(0, 4096).Select(i => (byte)(i * 3)).ToArray();
            var write = await guardian.Ask<SoftwareContextProtocol.Completed>(new BlockLayer.Io("nullb0", 1, BlockOp.Write, 8192, 4096, data), TimeSpan.FromSeconds(30));
            var read = await guardian.Ask<SoftwareContextProtocol.Completed>(new BlockLayer.Io("nullb0", 2, BlockOp.Read, 8192, 4096), TimeSpan.FromSeconds(30));
            Assert.Equal(BlockStatus.Ok, write.Status);
            Assert.Equal(data, read.Data);
        }
        finally
        {
            await client.Terminate();
        }

        node.Terminate();
        Assert.Equal(0, await node.WaitForExitAsync(TimeSpan.FromSeconds(60)));
        Assert.Contains("sysfs: wrote '8' to block/nullb0/queue/nr_requests", node.Output);
    }

    [Fact]
    public async Task A_non_loopback_address_without_tls_is_refused_unless_explicitly_allowed()
    {
        // serve refuses the address while reading its settings, before remoting binds anything.
        var config = Config("akka.remote.dot-netty.tcp.hostname = \"0.0.0.0\"");
        await using var node = ActorBlkProcess.Start("serve", "--config", config, "--port", "0");

        Assert.Equal(2, await node.WaitForExitAsync(StartTimeout));
        Assert.Contains("without TLS", node.Output);
        Assert.Contains("actorblk.allow-insecure-remoting = on", node.Output);
    }
}
