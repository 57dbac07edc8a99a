using System.Text.RegularExpressions;
using ActorBlk.Host.Tests.Support;
using Xunit;

namespace ActorBlk.Host.Tests;

/// <summary>
/// Issue 14 items 1 and 2 as processes: two `actorblk serve` nodes form one cluster with
/// <c>--seed</c>, `actorblk devices` prints every device of both from either node, and a node
/// stopped by SIGTERM drains its devices, withdraws them and leaves; the other keeps serving.
/// </summary>
[Collection(ClusterProcessesCollection.Name)]
public sealed partial class ClusterServeSpec
{
    private static readonly TimeSpan Within = TimeSpan.FromSeconds(90);

    [GeneratedRegex(@"Devices are addressable at akka\.tcp://actorblk@(?<node>127\.0\.0\.1:\d+)/user/actorblk")]
    private static partial Regex AddressLine();

    private static string Config(string devices)
    {
        var path = Path.Combine(Path.GetTempPath(), $"actorblk-cluster-{Guid.NewGuid():N}.conf");
        File.WriteAllText(path, File.ReadAllText(RepositoryFiles.Hocon()) + $$"""

            actorblk.devices = [ {{devices}} ]
            actorblk.topology.source = simulated
            actorblk.nbd.listen = "127.0.0.1:0"
            """);
        return path;
    }

    [Fact]
    public async Task Two_serve_processes_form_one_cluster_list_each_others_devices_and_one_leaves_on_sigterm()
    {
        var configA = Config("{ name = nullb0, size = 16m }");
        var configB = Config("{ name = nullb0, size = 32m }, { name = nullb1, size = 8m, bs = 4096, read_only = on }");
        try
        {
            await using var a = ActorBlkProcess.Start("serve", "--config", configA, "--port", "0");
            var nodeA = AddressLine().Match(await a.WaitForLineAsync(l => AddressLine().IsMatch(l), Within)).Groups["node"].Value;
            await using var b = ActorBlkProcess.Start("serve", "--config", configB, "--port", "0", "--seed", nodeA);
            var nodeB = AddressLine().Match(await b.WaitForLineAsync(l => AddressLine().IsMatch(l), Within)).Groups["node"].Value;

            // a logs b's devices as they arrive in its registry, in either order (one gossip
            // delivers both; the lines are read once, so each is awaited whichever comes first),
            // and again when their export's address arrives (a line that named no address looked
            // like a repeat of the first). a's own device too: its export's address is published
            // after a's address line, and nothing orders it before b's lines.
            var pending = new HashSet<string> { $"Cluster device nullb0@{nodeA}: live", $"Cluster device nullb0@{nodeB}: live", $"Cluster device nullb1@{nodeB}: live" };
            static bool Exported(string line) => Regex.IsMatch(line, @", exported at nbd://127\.0\.0\.1:\d+/nullb[01]$");
            while (pending.Count > 0)
            {
                var line = await a.WaitForLineAsync(l => Exported(l) && pending.Any(p => l.Contains(p, StringComparison.Ordinal)), Within);
                pending.RemoveWhere(p => line.Contains(p, StringComparison.Ordinal));
            }

            await using (var list = ActorBlkProcess.Start("devices", "--node", nodeA))
            {
                Assert.Equal(0, await list.WaitForExitAsync(Within));
                var lines = list.StandardOutput.Split('\n', StringSplitOptions.RemoveEmptyEntries);
                Assert.Equal(4, lines.Length);
                Assert.Matches(@"^NAME\s+NODE\s+SIZE\s+BS\s+HWQ\s+RO\s+STATE\s+NBD\s+MIRROR$", lines[0]);
                Assert.Matches($@"^nullb0\s+{Regex.Escape(nodeA)}\s+16MiB\s+512\s+1\s+0\s+live\s+nbd://127\.0\.0\.1:\d+/nullb0\s+-$", lines.Single(l => l.Contains(nodeA, StringComparison.Ordinal)));
                Assert.Matches($@"^nullb1\s+{Regex.Escape(nodeB)}\s+8MiB\s+4096\s+1\s+1\s+live\s+nbd://127\.0\.0\.1:\d+/nullb1\s+-$", lines.Single(l => l.StartsWith("nullb1", StringComparison.Ordinal)));
                Assert.Single(lines, l => l.StartsWith("nullb0", StringComparison.Ordinal) && l.Contains(nodeB, StringComparison.Ordinal) && l.Contains("32MiB", StringComparison.Ordinal));
            }

            // b stops: its devices drain, are withdrawn, and it leaves; a keeps running without them.
            b.Terminate();
            Assert.Equal(0, await b.WaitForExitAsync(Within));
            Assert.Contains("Unregistered nullb1: every request completed", b.Output);
            await a.WaitForLineAsync(l => l.Contains($"Cluster device nullb1@{nodeB}: removed", StringComparison.Ordinal), Within);

            await using (var list = ActorBlkProcess.Start("devices", "--node", nodeA))
            {
                Assert.Equal(0, await list.WaitForExitAsync(Within));
                var lines = list.StandardOutput.Split('\n', StringSplitOptions.RemoveEmptyEntries);
                Assert.Equal(2, lines.Length);
                Assert.StartsWith("nullb0", lines[1], StringComparison.Ordinal);
                Assert.Contains(nodeA, lines[1], StringComparison.Ordinal);
            }

            a.Terminate();
            Assert.Equal(0, await a.WaitForExitAsync(Within));
        }
        finally
        {
            File.Delete(configA);
            File.Delete(configB);
        }
    }

    [Fact]
    public async Task Devices_shows_a_mirrors_state_from_its_owners_md_attributes()
    {
        // Issue 13 item 5: the MIRROR column, read from the owner's block/<dev>/md/ attributes.
        var config = Config("{ name = m0, size = 16m, memory_backed = 1 }, { name = m1, size = 16m, memory_backed = 1 }");
        File.AppendAllText(config, "\nactorblk.stacked-devices = [ { name = md0, type = mirror, members = [m0, m1], region = 1m, assume-clean = on } ]\n");
        try
        {
            await using var a = ActorBlkProcess.Start("serve", "--config", config, "--port", "0");
            var nodeA = AddressLine().Match(await a.WaitForLineAsync(l => AddressLine().IsMatch(l), Within)).Groups["node"].Value;

            async Task<string[]> Devices()
            {
                await using var list = ActorBlkProcess.Start("devices", "--node", nodeA);
                Assert.Equal(0, await list.WaitForExitAsync(Within));
                return list.StandardOutput.Split('\n', StringSplitOptions.RemoveEmptyEntries);
            }

            async Task Sysfs(params string[] args)
            {
                await using var command = ActorBlkProcess.Start(["sysfs", "--node", $"akka.tcp://actorblk@{nodeA}", .. args]);
                var code = await command.WaitForExitAsync(Within);
                Assert.True(code == 0, $"sysfs {string.Join(' ', args)}: exit {code}: {command.Output}");
            }

            // The registry has the stacked device, with its NBD export, once it is published.
            await a.WaitForLineAsync(l => l.Contains("Cluster device md0@", StringComparison.Ordinal), Within);
            var lines = await Devices();
            for (var i = 0; i < 30 && !lines.Any(l => l.StartsWith("md0", StringComparison.Ordinal) && l.Contains("nbd://", StringComparison.Ordinal)); i++)
            {
                lines = await Devices();
            }

            Assert.Equal(4, lines.Length);
            Assert.Matches(@"^NAME\s+NODE\s+SIZE\s+BS\s+HWQ\s+RO\s+STATE\s+NBD\s+MIRROR$", lines[0]);
            Assert.Matches($@"^md0\s+{Regex.Escape(nodeA)}\s+\S+\s+512\s+1\s+0\s+live\s+nbd://127\.0\.0\.1:\d+/md0\s+raid1 2/2 in_sync$", lines.Single(l => l.StartsWith("md0", StringComparison.Ordinal)));
            Assert.Matches(@"^m0\s.*\snbd://127\.0\.0\.1:\d+/m0\s+-$", lines.Single(l => l.StartsWith("m0", StringComparison.Ordinal)));

            // A leg failed by hand: degraded; re-added (nothing written meanwhile): in sync again.
            await Sysfs("write", "block/md0/md/dev-m1/state", "faulty");
            Assert.EndsWith("raid1 1/2 degraded", (await Devices()).Single(l => l.StartsWith("md0", StringComparison.Ordinal)), StringComparison.Ordinal);
            await Sysfs("write", "block/md0/md/dev-m1/state", "re-add");
            var md0 = string.Empty;
            for (var i = 0; i < 30 && !md0.EndsWith("in_sync", StringComparison.Ordinal); i++)
            {
                md0 = (await Devices()).Single(l => l.StartsWith("md0", StringComparison.Ordinal));
                Assert.Matches(@"raid1 (2/2 in_sync|1/2 recover \d+%|1/2 degraded)$", md0);
            }

            Assert.EndsWith("raid1 2/2 in_sync", md0, StringComparison.Ordinal);
            a.Terminate();
            Assert.Equal(0, await a.WaitForExitAsync(Within));
        }
        finally
        {
            File.Delete(config);
        }
    }

    [Theory]
    [InlineData("raid1\n", "2\n", "0\n", "idle\n", "none\n", "raid1 2/2 in_sync")]
    [InlineData("raid1\n", "3\n", "1\n", "idle\n", "none\n", "raid1 2/3 degraded")]
    [InlineData("raid1\n", "2\n", "1\n", "recover\n", "37000 / 100000\n", "raid1 1/2 recover 37%")]
    [InlineData("raid1\n", "2\n", "0\n", "check\n", "5 / 10\n", "raid1 2/2 check 50%")]
    [InlineData("raid1\n", "2\n", "1\n", "recover\n", "none\n", "raid1 1/2 recover ?")]
    [InlineData("raid1\n", "2\n", "2\n", "idle\n", "none\n", "raid1 0/2 failed")]
    [InlineData("raid1\n", null, "0\n", "idle\n", "none\n", "?")]
    [InlineData(null, null, null, null, null, null)]
    public void The_mirror_column_says_legs_in_sync_and_the_running_sync(string? level, string? disks, string? degraded, string? action, string? completed, string? expected) =>
        Assert.Equal(expected, ActorBlk.Host.Commands.DevicesCommand.MirrorState(level, disks, degraded, action, completed));

    [Theory]
    [InlineData("serve --seed nowhere", "option --seed: 'nowhere' is not HOST:PORT")]
    [InlineData("serve --seed 127.0.0.1:99999", "is not HOST:PORT")]
    [InlineData("serve --hostname bad/host", "option --hostname: 'bad/host' is not a host name")]
    [InlineData("devices --node 127.0.0.1", "option --node: '127.0.0.1' is not HOST:PORT")]
    [InlineData("devices --node 127.0.0.1:4053 extra", "Unrecognized command or argument 'extra'")]
    public async Task Cluster_usage_errors_exit_with_2_and_say_why(string args, string message)
    {
        await using var command = ActorBlkProcess.Start(args.Split(' '));

        Assert.Equal(2, await command.WaitForExitAsync(Within));
        Assert.Contains(message, command.Output);
    }
}
