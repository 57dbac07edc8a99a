using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Nbd;
using ActorBlk.Hardware.Topology;
using ActorBlk.Testing;
using Xunit;

namespace ActorBlk.Hardware.Tests.Nbd;

/// <summary>NBD_OPT_STARTTLS: tls = require refuses everything but the upgrade; after it, the export works over TLS.</summary>
public sealed class NbdTlsSpec
{
    private static X509Certificate2 SelfSigned()
    {
        using var key = RSA.Create(2048);
        var request = new CertificateRequest("CN=localhost", key, HashAlgorithmName.SHA256, RSASignaturePadding.Pkcs1);
        return request.CreateSelfSigned(DateTimeOffset.UtcNow.AddDays(-1), DateTimeOffset.UtcNow.AddDays(1));
    }

    [Fact]
    public async Task Require_refuses_options_before_starttls_and_serves_the_nbds_client_driver_after_it()
    {
        using var certificate = SelfSigned();
        await using var fx = NbdExportFixture.Start(new NbdServerOptions { Tls = NbdTlsMode.Require, Certificate = certificate });
        await using (var plain = await RawNbdClient.NegotiateAsync(fx.Endpoint))
        {
            await plain.SendOptionAsync(NbdOption.Go, RawNbdClient.InfoRequest("mem0"));
            Assert.Equal(NbdReply.ErrTlsRequired, (await plain.ReadOptionReplyAsync()).Type);
            await plain.SendOptionAsync(NbdOption.List, []);
            Assert.Equal(NbdReply.ErrTlsRequired, (await plain.ReadOptionReplyAsync()).Type);
            await plain.SendOptionAsync(NbdOption.ExportName, "mem0"u8.ToArray());
            Assert.True(await plain.ClosedByServerAsync());
        }

        await using var devices = new RingDevices(2);
        var device = devices.Create(new DeviceOptions { Name = "tls0", Driver = "nbd", Uri = $"nbds://127.0.0.1:{fx.Endpoint.Port}/mem0", Connections = 2 }, CpuTopology.Simulated(2));
        var data = Enumerable.Range(0, 8192).Select(i => (byte)(i ^ 0x5a)).ToArray();
        await device.WriteAsync(4096, data);
        var back = new byte[data.Length];
        await device.ReadAsync(4096, back);
        Assert.Equal(data, back);
        await fx.Mem.ReadAsync(4096, back);
        Assert.Equal(data, back);
    }

    [Fact]
    public async Task Tls_off_refuses_starttls_so_an_nbds_client_fails_clearly()
    {
        await using var fx = NbdExportFixture.Start();
        var ex = Assert.Throws<BlockDeviceOpenException>(() => DeviceBuilder.CreateDriver(
            new DeviceOptions { Name = "tls1", Driver = "nbd", Uri = $"nbds://127.0.0.1:{fx.Endpoint.Port}/mem0" }));
        Assert.Contains("refused STARTTLS", ex.Message, StringComparison.Ordinal);
    }
}
