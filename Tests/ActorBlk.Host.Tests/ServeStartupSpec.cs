using System.Net;
using System.Net.Sockets;
using ActorBlk.Host.Tests.Support;
using ActorBlk.Testing;
using Xunit;

namespace ActorBlk.Host.Tests;

/// <summary>
/// `actorblk serve` told to stop before its start-up finished, and a second node started on a
/// port a running node holds (found by an outside audit: the first hung for ever on SIGTERM, the
/// second started beside the first and shared its connections).
/// </summary>
[Collection(ServeProcessesCollection.Name)]
public sealed class ServeStartupSpec
{
    private static readonly TimeSpan Within = TimeSpan.FromSeconds(60);

    private static int UnusedPort()
    {
        var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        var port = ((IPEndPoint)listener.LocalEndpoint).Port;
        listener.Stop();
        return port;
    }

    [Fact]
    public async Task Sigterm_stops_a_node_whose_seed_never_answers()
    {
        // Akka retries the join without end; the start-up waited for member-up without end too.
        await using var node = ActorBlkProcess.Start("serve", "--config", RepositoryFiles.Hocon(), "--port", "0", "--nbd-listen", "127.0.0.1:0", "--seed", $"127.0.0.1:{UnusedPort()}");
        await node.WaitForLineAsync(l => l.Contains("Registered disk0", StringComparison.Ordinal), Within);
        node.Terminate();
        Assert.Equal(0, await node.WaitForExitAsync(Within));
        Assert.Contains("Stopping before the node joined its cluster", node.Output);
        Assert.Contains("Unregistered disk0: every request completed", node.Output);
        Assert.Contains("ActorBlk node stopped", node.Output);
    }

    [Fact]
    public async Task Sigterm_stops_a_node_that_waits_for_a_mirror_leg_on_another_node()
    {
        // The leg's node never comes; member-wait is 30 s, and the stop must not wait it out.
        using var dir = new TempDirectory("serve-member-wait");
        var config = File.ReadAllText(RepositoryFiles.Hocon()).Replace(
            "stacked-devices = []",
            $"stacked-devices = [ {{ name = md9, type = mirror, members = [nullb0, \"disk-x@127.0.0.1:{UnusedPort()}\"] }} ]",
            StringComparison.Ordinal);
        Assert.Contains("md9", config, StringComparison.Ordinal);
        File.WriteAllText(dir.File("hocon.conf"), config);
        await using var node = ActorBlkProcess.Start("serve", "--config", dir.File("hocon.conf"), "--port", "0", "--nbd-listen", "127.0.0.1:0");
        await node.WaitForLineAsync(l => l.Contains("Registered disk0", StringComparison.Ordinal), Within);
        node.Terminate();
        Assert.Equal(0, await node.WaitForExitAsync(Within));
        Assert.Contains("ActorBlk node stopped before its start-up finished", node.Output);
        Assert.DoesNotContain("did not appear", node.Output, StringComparison.Ordinal);
        Assert.DoesNotContain("FTL", node.Output, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_second_node_on_the_remoting_port_of_a_running_node_is_refused_with_the_port_named()
    {
        await using var first = ActorBlkProcess.Start("serve", "--config", RepositoryFiles.Hocon(), "--port", "0", "--nbd-listen", "off");
        var line = await first.WaitForLineAsync(l => l.Contains("Devices are addressable at akka.tcp://actorblk@127.0.0.1:", StringComparison.Ordinal), Within);
        var port = line[(line.IndexOf("127.0.0.1:", StringComparison.Ordinal) + "127.0.0.1:".Length)..].Split('/')[0];

        await using var second = ActorBlkProcess.Start("serve", "--config", RepositoryFiles.Hocon(), "--port", port, "--nbd-listen", "off");
        Assert.Equal(1, await second.WaitForExitAsync(Within));
        Assert.Contains($"the remoting address 127.0.0.1:{port} is in use", second.Output, StringComparison.Ordinal);
        Assert.DoesNotContain("Remoting started", second.Output, StringComparison.Ordinal);

        first.Terminate();
        Assert.Equal(0, await first.WaitForExitAsync(Within));
    }
}
