using ActorBlk.Actors.Nbd;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Nbd;
using ActorBlk.Testing;
using Akka.Configuration;
using Xunit;

namespace ActorBlk.Actors.Tests.Nbd;

/// <summary>
/// TLS settings from hocon: the server's <c>actorblk.nbd</c> certificate keys and a device
/// entry's <c>tls_ca</c> / <c>tls_verify</c>, used end to end.
/// </summary>
public sealed class NbdTlsSettingsSpec
{
    [Fact]
    public async Task The_hocon_certificate_and_key_serve_tls_and_a_device_entry_with_tls_ca_verifies_it()
    {
        using var certs = new TestCertificates();
        using var dir = new TempDirectory("nbd-tls-settings");
        var (certificate, key) = certs.WriteServerPem(dir.File("server.pem"), dir.File("server.key"));
        var ca = certs.WriteAuthorityPem(dir.File("ca.pem"));
        var settings = NbdExportSettings.Create(ConfigurationFactory.ParseString($$"""
            actorblk.nbd {
              listen = "127.0.0.1:0"
              tls = require
              certificate = "{{certificate}}"
              key = "{{key}}"
            }
            """));
        Assert.Equal((NbdTlsMode.Require, certificate, key), (settings.Tls, settings.CertificatePath, settings.KeyPath));
        var options = settings.ToServerOptions();
        Assert.NotNull(options.Certificate);
        Assert.True(options.Certificate.HasPrivateKey);
        Assert.Equal(certs.Server.Thumbprint, options.Certificate.Thumbprint);

        await using var devices = new RingDevices(2);
        var backing = devices.Create(new DeviceOptions { Name = "mem0", Size = 8 << 20, MemoryBacked = true }, ActorBlk.Hardware.Topology.CpuTopology.Simulated(2));
        await using var server = NbdServer.Start(new NbdDeviceList([backing]), options);
        var entry = DeviceConfig.Parse(ConfigurationFactory.ParseString($$"""
            name = tlsr0
            driver = nbd
            uri = "nbds://127.0.0.1:{{server.LocalEndPoint.Port}}/mem0"
            tls_ca = "{{ca}}"
            """));
        Assert.Equal((ca, true), (entry.TlsCa, entry.TlsVerify));
        var remote = devices.Create(entry, ActorBlk.Hardware.Topology.CpuTopology.Simulated(2));
        var data = Enumerable.Range(0, 4096).Select(i => (byte)(i + 3)).ToArray();
        await remote.WriteAsync(4096, data);
        var back = new byte[4096];
        await backing.ReadAsync(4096, back);
        Assert.Equal(data, back);

        // tls_verify = off parses; a PEM certificate without its key cannot serve TLS.
        Assert.False(DeviceConfig.Parse(ConfigurationFactory.ParseString("name = x\ndriver = nbd\nuri = \"nbds://h/e\"\ntls_verify = off")).TlsVerify);
        var keyless = NbdExportSettings.Create(ConfigurationFactory.ParseString($$"""actorblk.nbd { listen = "127.0.0.1:0", tls = on, certificate = "{{ca}}" }"""));
        Assert.Throws<ConfigurationException>(() => keyless.ToServerOptions());
    }

    [Fact]
    public void Shutdown_grace_comes_from_hocon_with_a_three_second_default_and_bad_values_are_refused()
    {
        Assert.Equal(TimeSpan.FromSeconds(3), NbdExportSettings.Create(ConfigurationFactory.ParseString("""actorblk.nbd.listen = "127.0.0.1:0" """)).ToServerOptions().ShutdownGrace);
        var set = NbdExportSettings.Create(ConfigurationFactory.ParseString("""actorblk.nbd { listen = "127.0.0.1:0", shutdown-grace = 250ms }"""));
        Assert.Equal(TimeSpan.FromMilliseconds(250), set.ToServerOptions().ShutdownGrace);
        var bad = NbdExportSettings.Create(ConfigurationFactory.ParseString("""actorblk.nbd { listen = "127.0.0.1:0", shutdown-grace = 2h }""")).ToServerOptions();
        Assert.Contains("shutdown-grace", Assert.Throws<ArgumentException>(bad.Validate).Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Buffer_memory_and_send_timeout_come_from_hocon_and_bad_values_are_refused()
    {
        var defaults = NbdExportSettings.Create(ConfigurationFactory.ParseString("""actorblk.nbd.listen = "127.0.0.1:0" """)).ToServerOptions();
        Assert.Equal(1L << 30, defaults.MaxBufferMemory);
        Assert.Equal(TimeSpan.FromSeconds(60), defaults.StallTimeout);
        var set = NbdExportSettings.Create(ConfigurationFactory.ParseString("""actorblk.nbd { listen = "127.0.0.1:0", max-buffer-memory = 256m, stall-timeout = 5s }""")).ToServerOptions();
        Assert.Equal(256L << 20, set.MaxBufferMemory);
        Assert.Equal(TimeSpan.FromSeconds(5), set.StallTimeout);
        Assert.Contains("max-buffer-memory", Assert.Throws<ConfigurationException>(() => NbdExportSettings.Create(ConfigurationFactory.ParseString("""actorblk.nbd { listen = "127.0.0.1:0", max-buffer-memory = lots }"""))).Message, StringComparison.Ordinal);
        var small = NbdExportSettings.Create(ConfigurationFactory.ParseString("""actorblk.nbd { listen = "127.0.0.1:0", max-buffer-memory = 1m }""")).ToServerOptions();
        Assert.Contains("max-buffer-memory", Assert.Throws<ArgumentException>(small.Validate).Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Keepalive_comes_from_hocon_with_a_thirty_second_default_and_bad_values_are_refused()
    {
        Assert.Equal(TimeSpan.FromSeconds(30), NbdExportSettings.Create(ConfigurationFactory.ParseString("""actorblk.nbd.listen = "127.0.0.1:0" """)).ToServerOptions().KeepAlive);
        Assert.Equal(TimeSpan.FromSeconds(12), NbdExportSettings.Create(ConfigurationFactory.ParseString("""actorblk.nbd { listen = "127.0.0.1:0", keepalive = 12s }""")).ToServerOptions().KeepAlive);
        var off = NbdExportSettings.Create(ConfigurationFactory.ParseString("""actorblk.nbd { listen = "127.0.0.1:0", keepalive = 0s }""")).ToServerOptions();
        Assert.Equal(TimeSpan.Zero, off.KeepAlive);
        off.Validate();
        Assert.Contains("keepalive", Assert.Throws<ConfigurationException>(() => NbdExportSettings.Create(ConfigurationFactory.ParseString("""actorblk.nbd { listen = "127.0.0.1:0", keepalive = soon }"""))).Message, StringComparison.Ordinal);
        foreach (var bad in new[] { "1500ms", "3h" })
        {
            var options = NbdExportSettings.Create(ConfigurationFactory.ParseString($$"""actorblk.nbd { listen = "127.0.0.1:0", keepalive = {{bad}} }""")).ToServerOptions();
            Assert.StartsWith("keepalive must be whole seconds", Assert.Throws<ArgumentException>(options.Validate).Message, StringComparison.Ordinal);
        }
    }
}
