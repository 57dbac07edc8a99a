using System.Diagnostics;
using System.Text.Json;
using System.Text.RegularExpressions;
using ActorBlk.Host.Tests.Support;
using ActorBlk.Testing;
using Xunit;

namespace ActorBlk.Host.Tests;

/// <summary>
/// `actorblk iostat -xz -o JSON -t` against a served node while fio's nbd engine keeps one of its
/// two devices busy: the idle device is left out of every report (-z), the document is sysstat's
/// and parses (each entry with the node machine's avg-cpu before the devices), and SIGTERM ends
/// an unbounded run with the document closed and exit code 0, as sysstat's signal handler does.
/// </summary>
[Collection(OwnResourceProcessesCollection.Name)]
public sealed partial class IostatJsonSpec
{
    private static readonly TimeSpan Within = TimeSpan.FromSeconds(90);

    [GeneratedRegex(@"NBD export listening on (?<endpoint>127\.0\.0\.1:\d+)")]
    private static partial Regex ListeningLine();

    [GeneratedRegex(@"Devices are addressable at akka\.tcp://actorblk@127\.0\.0\.1:(?<port>\d+)/user/actorblk")]
    private static partial Regex AddressLine();

    private static bool Installed(string tool) =>
        (Environment.GetEnvironmentVariable("PATH") ?? string.Empty).Split(':').Any(d => d.Length > 0 && File.Exists(Path.Combine(d, tool)));

    [SkippableFact]
    public async Task Json_reports_leave_out_the_idle_device_and_sigterm_closes_the_document()
    {
        Skip.IfNot(Installed("fio"), "fio is not installed (.ci/run installs it)");
        using var dir = new TempDirectory();
        var config = dir.File("node.conf");
        await File.WriteAllTextAsync(config, await File.ReadAllTextAsync(RepositoryFiles.Hocon()) + """

            actorblk.devices = [
              { name = busy0, driver = "null", size = 64m, irqmode = 0 }
              { name = idle0, driver = "null", size = 64m, irqmode = 0 }
            ]
            """);
        await using var node = ActorBlkProcess.Start("serve", "--config", config, "--port", "0", "--nbd-listen", "127.0.0.1:0");
        var endpoint = ListeningLine().Match(await node.WaitForLineAsync(l => ListeningLine().IsMatch(l), Within)).Groups["endpoint"].Value;
        var port = AddressLine().Match(node.Output).Groups["port"].Value;
        Assert.NotEmpty(port);

        // fio reads busy0 for as long as the spec runs; it is killed at the end.
        var psi = new ProcessStartInfo("fio") { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in new[] { "--name=busy", "--ioengine=nbd", $"--uri=nbd://{endpoint}/busy0", "--rw=randread", "--bs=4k", "--iodepth=4", "--time_based", "--runtime=600" })
        {
            psi.ArgumentList.Add(a);
        }

        using var fio = Process.Start(psi)!;
        try
        {
            // The second report's interval lies wholly inside fio's run: iostat starts once the
            // node has completed fio's first reads (fio connects and negotiates first, which a
            // loaded machine may stretch past iostat's first interval).
            await WaitForReadsAsync(port, "busy0");
            await using var iostat = ActorBlkProcess.Start("iostat", "--node", $"127.0.0.1:{port}", "-xz", "-t", "-o", "JSON", "1", "2");
            Assert.Equal(0, await iostat.WaitForExitAsync(Within));
            using var document = JsonDocument.Parse(iostat.StandardOutput);
            var statistics = document.RootElement.GetProperty("sysstat").GetProperty("hosts")[0].GetProperty("statistics");
            Assert.Equal(2, statistics.GetArrayLength());
            foreach (var report in statistics.EnumerateArray())
            {
                // sysstat's entry: the time, the node machine's CPU use, the devices.
                Assert.Equal(["timestamp", "avg-cpu", "disk"], report.EnumerateObject().Select(p => p.Name));
                Assert.InRange(report.GetProperty("avg-cpu").EnumerateObject().Sum(p => p.Value.GetDouble()), 99.95, 100.05);
                Assert.DoesNotContain(report.GetProperty("disk").EnumerateArray(), d => d.GetProperty("disk_device").GetString() == "idle0");
            }

            var busy = Assert.Single(statistics[1].GetProperty("disk").EnumerateArray());
            Assert.Equal("busy0", busy.GetProperty("disk_device").GetString());
            Assert.True(busy.GetProperty("r/s").GetDouble() > 0, iostat.StandardOutput);
            Assert.Equal(4.0, busy.GetProperty("rareq-sz").GetDouble());

            // Unbounded: SIGTERM after the first row ends it with the document closed.
            await using var endless = ActorBlkProcess.Start("iostat", "--node", $"127.0.0.1:{port}", "-o", "JSON", "1");
            await endless.WaitForLineAsync(l => l.Contains("\"disk_device\"", StringComparison.Ordinal), Within);
            endless.Terminate();
            Assert.Equal(0, await endless.WaitForExitAsync(Within));
            using var closed = JsonDocument.Parse(endless.StandardOutput);
            var sinceStart = closed.RootElement.GetProperty("sysstat").GetProperty("hosts")[0].GetProperty("statistics");
            Assert.True(sinceStart.GetArrayLength() >= 1);

            // Its first report covers the time since the node started, as sysstat's since boot:
            // fio has read busy0 since before the first run's second interval; idle0 never did I/O,
            // and no device was named, so it is left out.
            var sinceStartBusy = Assert.Single(sinceStart[0].GetProperty("disk").EnumerateArray());
            Assert.Equal("busy0", sinceStartBusy.GetProperty("disk_device").GetString());
            Assert.True(sinceStartBusy.GetProperty("tps").GetDouble() > 0, endless.StandardOutput);
            Assert.True(sinceStartBusy.GetProperty("kB_read/s").GetDouble() > 0, endless.StandardOutput);
        }
        finally
        {
            fio.Kill(entireProcessTree: true);
            await fio.WaitForExitAsync();
        }

        node.Terminate();
        Assert.Equal(0, await node.WaitForExitAsync(Within));
    }

    // Polls the device's stat file (its first field: reads completed) until it shows a read.
    private static async Task WaitForReadsAsync(string port, string device)
    {
        var deadline = DateTime.UtcNow + Within;
        var last = string.Empty;
        while (DateTime.UtcNow < deadline)
        {
            await using var cat = ActorBlkProcess.Start("sysfs", "cat", $"block/{device}/stat", "--node", $"127.0.0.1:{port}");
            Assert.Equal(0, await cat.WaitForExitAsync(Within));
            last = cat.StandardOutput;
            var fields = last.Split(' ', StringSplitOptions.RemoveEmptyEntries);
            if (fields.Length > 0 && long.TryParse(fields[0], out var reads) && reads > 0)
            {
                return;
            }
        }

        Assert.Fail($"{device} did no read within {Within}: {last}");
    }
}
