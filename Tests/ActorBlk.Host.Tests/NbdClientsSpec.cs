using System.Diagnostics;
using System.Text.RegularExpressions;
using ActorBlk.Host.Tests.Support;
using ActorBlk.Testing;
using Xunit;

namespace ActorBlk.Host.Tests;

/// <summary>
/// `actorblk serve` exports its devices over NBD to real clients: nbdinfo, nbdcopy, qemu-img,
/// qemu-io and fio's nbd engine, started against a served node (.ci/run installs them).
/// </summary>
[Collection(ServeProcessesCollection.Name)]
public sealed partial class NbdClientsSpec
{
    private static readonly TimeSpan StartTimeout = TimeSpan.FromSeconds(90);

    [GeneratedRegex(@"NBD export listening on (?<endpoint>127\.0\.0\.1:\d+)")]
    private static partial Regex ListeningLine();

    private static bool Installed(params string[] tools) =>
        tools.All(t => (Environment.GetEnvironmentVariable("PATH") ?? string.Empty).Split(':').Any(d => d.Length > 0 && File.Exists(Path.Combine(d, t))));

    private static async Task<(int Code, string Output)> RunAsync(string file, params string[] args)
    {
        var psi = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in args)
        {
            psi.ArgumentList.Add(a);
        }

        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        await p.WaitForExitAsync().WaitAsync(TimeSpan.FromMinutes(3));
        return (p.ExitCode, await stdout + await stderr);
    }

    private static async Task<string> RunOkAsync(string file, params string[] args)
    {
        var (code, output) = await RunAsync(file, args);
        Assert.True(code == 0, $"{file} {string.Join(' ', args)} exited {code}: {output}");
        return output;
    }

    [SkippableFact]
    public async Task Real_clients_read_and_write_the_devices_of_a_served_node()
    {
        Skip.IfNot(Installed("nbdinfo", "nbdcopy", "qemu-img", "qemu-io", "fio"), "the NBD clients are not installed (.ci/run installs them)");
        using var dir = new TempDirectory();
        var config = dir.File("node.conf");
        await File.WriteAllTextAsync(config, await File.ReadAllTextAsync(RepositoryFiles.Hocon()) + $$"""

            actorblk.devices = [
              { name = nbd0, driver = "null", size = 64m, memory_backed = on, irqmode = 0, hw_queue_depth = 64 }
              { name = file0, driver = file, path = "{{dir.File("file0.img")}}", size = 32m, hw_queue_depth = 64 }
            ]
            """);
        await using var node = ActorBlkProcess.Start("serve", "--config", config, "--port", "0", "--nbd-listen", "127.0.0.1:0");
        var line = await node.WaitForLineAsync(l => ListeningLine().IsMatch(l), StartTimeout);
        var endpoint = ListeningLine().Match(line).Groups["endpoint"].Value;
        Assert.Contains($"Exporting nbd0 over NBD at nbd://{endpoint}/nbd0 (the default export)", node.Output);
        Assert.Contains($"Exporting file0 over NBD at nbd://{endpoint}/file0", node.Output);

        var list = await RunOkAsync("nbdinfo", "--list", $"nbd://{endpoint}");
        Assert.Contains("nbd0", list);
        Assert.Contains("file0", list);
        Assert.Matches(@"export-size:\s+33554432", await RunOkAsync("nbdinfo", $"nbd://{endpoint}/file0"));

        // An image goes in with qemu-img and comes back out with nbdcopy over 4 connections.
        var image = dir.File("image.raw");
        var back = dir.File("back.raw");
        var bytes = new byte[32 << 20];
        new Random(3).NextBytes(bytes);
        await File.WriteAllBytesAsync(image, bytes);
        await RunOkAsync("qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", image, $"nbd://{endpoint}/file0");
        await RunOkAsync("nbdcopy", "--connections=4", $"nbd://{endpoint}/file0", back);
        Assert.Equal(bytes, await File.ReadAllBytesAsync(back));

        var io = await RunOkAsync("qemu-io", "-f", "raw", "-c", "write -P 0x3c 1M 1M", "-c", "flush", "-c", "read -P 0x3c 1M 1M", $"nbd://{endpoint}/nbd0");
        Assert.DoesNotContain("failed", io, StringComparison.OrdinalIgnoreCase);

        var fio = await RunOkAsync("fio", "--name=served", "--ioengine=nbd", $"--uri=nbd://{endpoint}/nbd0", "--rw=randrw", "--bs=4k",
            "--iodepth=32", "--size=8M", "--verify=crc32c", "--verify_fatal=1");
        Assert.Matches(@"err=\s*0", fio);

        node.Terminate();
        Assert.Equal(0, await node.WaitForExitAsync(TimeSpan.FromSeconds(60)));
        Assert.Contains("NBD export on", node.Output);
        Assert.Contains("Unregistered nbd0: every request completed", node.Output);
    }

    [Fact]
    public async Task A_non_loopback_listen_address_without_tls_is_refused_and_the_error_says_why()
    {
        // serve refuses the address while reading its settings, before remoting or NBD bind anything.
        await using var node = ActorBlkProcess.Start("serve", "--config", RepositoryFiles.Hocon(), "--port", "0", "--nbd-listen", "0.0.0.0:10809");
        Assert.Equal(2, await node.WaitForExitAsync(StartTimeout));
        Assert.Contains("not a loopback address", node.Output);
        Assert.Contains("allow-insecure", node.Output);
    }

    [Fact]
    public async Task Nbd_listen_off_serves_without_an_export()
    {
        using var dir = new TempDirectory();
        var config = dir.File("node.conf");
        await File.WriteAllTextAsync(config, await File.ReadAllTextAsync(RepositoryFiles.Hocon()) + "\nactorblk.devices = [ { name = nullb0, size = 16m } ]\n");
        await using var node = ActorBlkProcess.Start("serve", "--config", config, "--port", "0", "--nbd-listen", "off");
        await node.WaitForLineAsync(l => l.Contains("NBD export is off", StringComparison.Ordinal), StartTimeout);
        node.Terminate();
        Assert.Equal(0, await node.WaitForExitAsync(TimeSpan.FromSeconds(60)));
    }
}
