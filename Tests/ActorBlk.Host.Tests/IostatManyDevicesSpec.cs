using System.Text;
using System.Text.RegularExpressions;
using ActorBlk.Host.Tests.Support;
using Xunit;

namespace ActorBlk.Host.Tests;

/// <summary>
/// `actorblk iostat` with no device names on a node with more devices than one attribute listing
/// holds: an outside audit found it failing ("the node did not list its devices") from about 130
/// devices, because it listed block/ in one remoting message (E2BIG). It now asks the guardian
/// for the device list then.
/// </summary>
public sealed partial class IostatManyDevicesSpec : IDisposable
{
    private static readonly TimeSpan Within = TimeSpan.FromSeconds(180);

    private readonly string _config = Path.Combine(Path.GetTempPath(), $"actorblk-iostat-{Guid.NewGuid():N}.conf");

    [GeneratedRegex(@"Devices are addressable at akka\.tcp://actorblk@127\.0\.0\.1:(?<port>\d+)/user/actorblk")]
    private static partial Regex AddressLine();

    public void Dispose() => File.Delete(_config);

    [Fact]
    public async Task Every_device_of_a_node_with_200_devices_is_reported()
    {
        // The repository's hocon.conf (a cluster node that joins itself under --port 0) with 200
        // small null devices instead of its own.
        var devices = new StringBuilder();
        for (var i = 0; i < 200; i++)
        {
            devices.Append(i == 0 ? string.Empty : ",\n").Append($"  {{ name = d{i:D3}, size = 1m }}");
        }

        File.WriteAllText(_config, $"include \"{RepositoryFiles.Hocon()}\"\n" +
            "actorblk.nbd.listen = off\nactorblk.topology.source = simulated\n" +
            $"actorblk.devices = [\n{devices}\n]\n");
        await using var node = ActorBlkProcess.Start("serve", "--config", _config, "--port", "0");
        var line = await node.WaitForLineAsync(l => AddressLine().IsMatch(l), Within);
        var port = AddressLine().Match(line).Groups["port"].Value;

        // ALL lists the node's devices as no name does, and reports even those that never did I/O.
        await using var iostat = ActorBlkProcess.Start("iostat", "--node", $"127.0.0.1:{port}", "ALL", "1", "1");
        var exit = await iostat.WaitForExitAsync(Within);
        Assert.True(exit == 0, $"iostat ALL exited {exit}:\n{iostat.Output}");
        Assert.Equal(200, iostat.StandardOutput.Split('\n').Count(l => Regex.IsMatch(l, @"^d\d{3}\s")));

        // No name: the same listing, and sysstat's rule leaves out the devices that never did I/O
        // (all of them here).
        await using var unnamed = ActorBlkProcess.Start("iostat", "--node", $"127.0.0.1:{port}", "1", "1");
        exit = await unnamed.WaitForExitAsync(Within);
        Assert.True(exit == 0, $"iostat exited {exit}:\n{unnamed.Output}");
        Assert.Contains("Device ", unnamed.StandardOutput, StringComparison.Ordinal);
        Assert.DoesNotContain(unnamed.StandardOutput.Split('\n'), l => Regex.IsMatch(l, @"^d\d{3}\s"));

        // As sysstat takes them (an outside audit: /dev/d007 read block//dev/d007/stat, ENOENT,
        // and ALL was a device name): a /dev/ path names the device, and ALL names them all.
        await using var named = ActorBlkProcess.Start("iostat", "--node", $"127.0.0.1:{port}", "/dev/d007", "d008", "1", "2");
        exit = await named.WaitForExitAsync(Within);
        Assert.True(exit == 0, $"iostat /dev/d007 d008 exited {exit}:\n{named.Output}");
        var rows = named.StandardOutput.Split('\n').Where(l => Regex.IsMatch(l, @"^d\d{3}\s")).Select(l => l.Split(' ')[0]).ToList();
        Assert.Equal(["d007", "d008", "d007", "d008"], rows);
    }
}
