using System.Net;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using System.Text.RegularExpressions;
using ActorBlk.Actors;
using ActorBlk.Actors.Serialization;
using ActorBlk.Hardware.Requests;
using ActorBlk.Host.Tests.Support;
using ActorBlk.Testing;
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

    // A listener on 127.0.0.1 that is not an ActorBlk node: each connection gets what
    // answer(index, stream) does with it (the index counts connections from 0).
    private sealed class FakePeer : IAsyncDisposable
    {
        private readonly System.Net.Sockets.TcpListener _listener;
        private readonly CancellationTokenSource _stop = new();
        private readonly Task _accepting;

        public FakePeer(Func<int, Stream, CancellationToken, Task> answer, int port = 0)
        {
            _listener = new System.Net.Sockets.TcpListener(IPAddress.Loopback, port);
            _listener.Server.SetSocketOption(System.Net.Sockets.SocketOptionLevel.Socket, System.Net.Sockets.SocketOptionName.ReuseAddress, true);
            _listener.Start();
            _accepting = Task.Run(async () =>
            {
                for (var index = 0; !_stop.IsCancellationRequested; index++)
                {
                    using var connection = await _listener.AcceptTcpClientAsync(_stop.Token);
                    try
                    {
                        await answer(index, connection.GetStream(), _stop.Token);
                    }
                    catch (Exception ex) when (ex is IOException or System.Security.Authentication.AuthenticationException)
                    {
                        // The node closed the connection first, or refused the handshake.
                    }
                }
            });
        }

        public int Port => ((IPEndPoint)_listener.LocalEndpoint).Port;

        public async ValueTask DisposeAsync()
        {
            await _stop.CancelAsync();
            await Assert.ThrowsAnyAsync<OperationCanceledException>(() => _accepting);
            _listener.Stop();
            _stop.Dispose();
        }
    }

    // A remoting frame of plain TCP (length 5, five bytes): no TLS record.
    private static Task PlainFrame(Stream stream, CancellationToken cancel) => stream.WriteAsync(new byte[] { 0, 0, 0, 5, 1, 2, 3, 4, 5 }, cancel).AsTask();

    private string TlsConfig(string certificate) => Config($$"""
        akka.remote.dot-netty.tcp { enable-ssl = on, ssl.certificate { path = {{System.Text.Json.JsonSerializer.Serialize(certificate)}}, password = "pfx-password" } }
        actorblk.remote.admin-secret = "secure-serve-secret"
        """);

    // Akka.Remote (since 1.5.50) shuts the whole actor system down when a TLS handshake on a
    // connection it opened fails. A node whose seed (or member) address was held by something that
    // does not speak TLS, or has another certificate, stopped itself with exit 0 (an outside TLS
    // audit). ActorBlk's transport now makes the handshake first: a failure is an association
    // failure, which the node retries as for a seed that is down, saying why.
    [Fact]
    public async Task A_node_whose_seed_does_not_speak_tls_keeps_trying_and_says_why()
    {
        var config = TlsConfig(MakeCertificate());
        await using var seed = new FakePeer((_, stream, cancel) => PlainFrame(stream, cancel));
        await using var node = ActorBlkProcess.Start("serve", "--config", config, "--port", "0", "--seed", $"127.0.0.1:{seed.Port}");

        // Twice: the node is still there after the first failure, and tries again.
        for (var i = 0; i < 2; i++)
        {
            await node.WaitForLineAsync(l => l.Contains($"TLS handshake with 127.0.0.1:{seed.Port} failed (", StringComparison.Ordinal)
                && l.Contains("the process listening there does not speak TLS or does not present a certificate this node accepts", StringComparison.Ordinal), StartTimeout);
        }

        node.Terminate();
        Assert.Equal(0, await node.WaitForExitAsync(StartTimeout));
        Assert.DoesNotContain("TlsHandshakeFailureReason", node.Output, StringComparison.Ordinal);
    }

    // The outside audit's case: a TLS cluster of two; one member is killed and something without
    // TLS takes its port (here a listener; there, the member restarted with TLS off). The survivor
    // reconnected, Akka's handshake failed, and it shut itself down (with three nodes, both
    // survivors did: the whole cluster). It stays up and keeps serving.
    [Fact]
    public async Task A_member_whose_address_is_taken_by_a_process_without_tls_does_not_stop_the_others()
    {
        var config = TlsConfig(MakeCertificate());
        await using var a = ActorBlkProcess.Start("serve", "--config", config, "--port", "0");
        var aAddress = AddressLine().Match(await a.WaitForLineAsync(l => AddressLine().IsMatch(l), StartTimeout)).Groups["address"].Value;
        await using var b = ActorBlkProcess.Start("serve", "--config", config, "--port", "0", "--seed", new Uri(aAddress).Authority);
        var bAddress = AddressLine().Match(await b.WaitForLineAsync(l => AddressLine().IsMatch(l), StartTimeout)).Groups["address"].Value;
        var bPort = new Uri(bAddress).Port;
        await a.WaitForLineAsync(l => l.Contains($"{bAddress}] to [Up]", StringComparison.Ordinal) || l.Contains($"{new Uri(bAddress).Authority}: live", StringComparison.Ordinal), StartTimeout);

        // The port is kept from other processes from before the kill until the stranger listens on it
        // (its listener sets ReuseAddress, SO_REUSEPORT on Linux, so it binds beside the reservation).
        using var kept = ReservedPort.Of(bPort);
        await b.KillAsync();
        await using var stranger = new FakePeer((_, stream, cancel) => PlainFrame(stream, cancel), bPort);
        kept.Dispose();
        await a.WaitForLineAsync(l => l.Contains($"TLS handshake with 127.0.0.1:{bPort} failed (", StringComparison.Ordinal), StartTimeout);

        // Still a node: it answers a client over TLS.
        await using (var devices = ActorBlkProcess.Start("devices", "--config", config, "--node", aAddress))
        {
            Assert.True(await devices.WaitForExitAsync(StartTimeout) == 0, devices.Output);
            Assert.Contains("nullb0", devices.StandardOutput, StringComparison.Ordinal);
        }

        a.Terminate();
        Assert.Equal(0, await a.WaitForExitAsync(StartTimeout));
        Assert.DoesNotContain("TlsHandshakeFailureReason", a.Output, StringComparison.Ordinal);
    }

    // A node with TLS off seeded at a TLS node (or the reverse) kept trying to join for ever, and
    // only the seed's log said why (an outside TLS audit): Akka's own lines on the joining node say
    // an association failed, not what to check. serve now says it has not joined, after three
    // of Akka's join retries (retry-unsuccessful-join-after) and then every six, naming the seeds
    // and what makes a seed refuse a node.
    [Fact]
    public async Task A_node_without_tls_seeded_at_a_tls_node_says_why_it_has_not_joined()
    {
        var config = TlsConfig(MakeCertificate());
        await using var seed = ActorBlkProcess.Start("serve", "--config", config, "--port", "0");
        var seedAuthority = new Uri(AddressLine().Match(await seed.WaitForLineAsync(l => AddressLine().IsMatch(l), StartTimeout)).Groups["address"].Value).Authority;
        var plain = Config("""
            akka.cluster.retry-unsuccessful-join-after = 1s
            actorblk.remote.admin-secret = "secure-serve-secret"
            """);
        await using var node = ActorBlkProcess.Start("serve", "--config", plain, "--port", "0", "--seed", seedAuthority);
        var line = await node.WaitForLineAsync(l => l.Contains("has not joined its cluster", StringComparison.Ordinal), StartTimeout);
        Assert.Contains($"akka.tcp://actorblk@{seedAuthority}", line, StringComparison.Ordinal);
        Assert.Contains("enable-ssl", line, StringComparison.Ordinal);
        Assert.Contains("after 3 s", line, StringComparison.Ordinal);
        node.Terminate();
        await node.WaitForExitAsync(StartTimeout);
    }

    // What is left of Akka's shutdown (a peer that passes ActorBlk's handshake and fails Akka's
    // right after, or an embedding application without ActorBlk's TLS setup): `serve` said
    // "ActorBlk node stopped", exit 0, as if asked to stop. It names the failure, exit 1.
    [Fact]
    public async Task A_node_that_akka_stops_after_a_failed_tls_handshake_exits_1_and_says_why()
    {
        var path = MakeCertificate();
        var config = TlsConfig(path);
        using var certificate = X509CertificateLoader.LoadPkcs12FromFile(path, "pfx-password");

        // The first connection (ActorBlk's handshake) gets TLS with the node's own certificate; every
        // later one (Akka's) a plain frame.
        await using var seed = new FakePeer(async (index, stream, cancel) =>
        {
            if (index > 0)
            {
                await PlainFrame(stream, cancel);
                return;
            }

            await using var tls = new System.Net.Security.SslStream(stream);
            await tls.AuthenticateAsServerAsync(
                new System.Net.Security.SslServerAuthenticationOptions { ServerCertificate = certificate, ClientCertificateRequired = true, RemoteCertificateValidationCallback = (_, _, _, _) => true },
                cancel);
            _ = await tls.ReadAsync(new byte[1], cancel); // until the node closes it
        });

        await using var node = ActorBlkProcess.Start("serve", "--config", config, "--port", "0", "--seed", $"127.0.0.1:{seed.Port}");
        Assert.Equal(1, await node.WaitForExitAsync(StartTimeout));
        Assert.Contains("ActorBlk node stopped: Akka.Remote shut this actor system down: TLS handshake failed on outbound connection to", node.Output, StringComparison.Ordinal);
    }

    // The log limit on what peers send (README, "Security", Noise) did not reach Akka's TLS events:
    // each connection that failed the handshake wrote three, one with 12 lines of advice and a
    // stack trace (an outside audit: 300 connections of 6 bytes, 1.8 KB, wrote 3,600 lines, 290 KB).
    [Fact]
    public async Task Tls_handshakes_that_peers_fail_are_limited_in_the_log_as_other_peer_noise()
    {
        var config = TlsConfig(MakeCertificate());
        await using var node = ActorBlkProcess.Start("serve", "--config", config, "--port", "0");
        var port = new Uri(AddressLine().Match(await node.WaitForLineAsync(l => AddressLine().IsMatch(l), StartTimeout)).Groups["address"].Value).Port;

        // Plain bytes, and TLS with a certificate the node does not pin; each until the node closes it.
        var elapsed = System.Diagnostics.Stopwatch.StartNew();
        for (var i = 0; i < 40; i++)
        {
            using var client = new System.Net.Sockets.TcpClient();
            await client.ConnectAsync(IPAddress.Loopback, port);
            var stream = client.GetStream();
            if (i % 2 == 0)
            {
                await stream.WriteAsync("\0\0\0\u0002hi"u8.ToArray());
                Assert.Equal(0, await stream.ReadAsync(new byte[64]));
                continue;
            }

            using var stranger = X509CertificateLoader.LoadPkcs12FromFile(MakeCertificate($"stranger{i}.pfx"), "pfx-password");
            await using var tls = new System.Net.Security.SslStream(stream);
            await Assert.ThrowsAnyAsync<Exception>(async () =>
            {
                await tls.AuthenticateAsClientAsync(new System.Net.Security.SslClientAuthenticationOptions
                {
                    TargetHost = "127.0.0.1",
                    ClientCertificates = [stranger],
                    RemoteCertificateValidationCallback = (_, _, _, _) => true,
                });
                _ = await tls.ReadAsync(new byte[64]); // TLS 1.3: the refusal of the client's certificate comes after
                throw new IOException("closed");
            });
        }

        await node.WaitForLineAsync(l => l.Contains("(a peer sent what the node cannot or will not read", StringComparison.Ordinal), StartTimeout);
        node.Terminate();
        Assert.Equal(0, await node.WaitForExitAsync(StartTimeout));
        var lines = node.Output.Split('\n');

        // At most 10 lines a minute: one window here, more only if a loaded machine stretched the
        // 40 connections past a minute (they make about 120 such events).
        var windows = (int)(elapsed.Elapsed.TotalMinutes) + 1;
        Assert.InRange(lines.Count(l => l.Contains("(a peer sent what the node cannot or will not read", StringComparison.Ordinal)), 1, 10 * windows);
        Assert.DoesNotContain(lines, l => l.Contains("TLS troubleshooting", StringComparison.Ordinal) || l.StartsWith("   at ", StringComparison.Ordinal));
        Assert.DoesNotContain(lines, l => (l.Contains("TLS handshake failed on channel", StringComparison.Ordinal) || l.Contains("Rejected incoming connection", StringComparison.Ordinal)
            || l.Contains("Certificate pinning failed", StringComparison.Ordinal)) && !l.Contains("at most 10 such lines a minute", StringComparison.Ordinal));
    }

    // README's network set-up names the node's own address (hostname = 10.0.0.5, TLS). A client
    // given that hocon.conf asked 127.0.0.1, where nothing listens, and said no node answered (an
    // outside TLS audit): it asks the host the configuration gives the node. Here "localhost",
    // which binds loopback but is an address of its own: a node answers only messages addressed
    // to it.
    [Fact]
    public async Task A_client_given_the_nodes_config_asks_the_host_that_config_gives_the_node()
    {
        var config = TlsConfig(MakeCertificate());
        File.AppendAllText(config, "\nakka.remote.dot-netty.tcp.hostname = localhost\n");
        await using var node = ActorBlkProcess.Start("serve", "--config", config, "--port", "0");
        var address = AddressLine().Match(await node.WaitForLineAsync(l => AddressLine().IsMatch(l), StartTimeout)).Groups["address"].Value;
        Assert.StartsWith("akka.ssl.tcp://actorblk@localhost:", address, StringComparison.Ordinal);

        await using (var devices = ActorBlkProcess.Start("devices", "--config", config, "--port", new Uri(address).Port.ToString(System.Globalization.CultureInfo.InvariantCulture)))
        {
            Assert.True(await devices.WaitForExitAsync(StartTimeout) == 0, devices.Output);
            Assert.Contains("nullb0", devices.StandardOutput, StringComparison.Ordinal);
        }

        node.Terminate();
        Assert.Equal(0, await node.WaitForExitAsync(StartTimeout));
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
