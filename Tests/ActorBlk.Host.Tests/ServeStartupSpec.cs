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

    // A port that answers nothing: held by a listener that never accepts (the kernel completes the
    // TCP handshake into its backlog, nobody speaks), for the whole spec. A port merely found free
    // could be taken by a node of a spec running beside this one, which would then answer.
    private sealed class SilentPort : IDisposable
    {
        private readonly TcpListener _listener = new(IPAddress.Loopback, 0);

        public SilentPort() => _listener.Start();

        public int Port => ((IPEndPoint)_listener.LocalEndpoint).Port;

        public void Dispose() => _listener.Stop();
    }

    [Fact]
    public async Task Sigterm_stops_a_node_whose_seed_never_answers()
    {
        // Akka retries the join without end; the start-up waited for member-up without end too.
        using var seed = new SilentPort();
        await using var node = ActorBlkProcess.Start("serve", "--config", RepositoryFiles.Hocon(), "--port", "0", "--nbd-listen", "127.0.0.1:0", "--seed", $"127.0.0.1:{seed.Port}");
        await node.WaitForLineAsync(l => l.Contains("Registered disk0", StringComparison.Ordinal), Within);
        node.Terminate();
        Assert.Equal(0, await node.WaitForExitAsync(Within));
        Assert.Contains("Stopping before the node joined its cluster", node.Output);
        Assert.Contains("Unregistered disk0: every request completed", node.Output);
        Assert.Contains("ActorBlk node stopped", node.Output);
    }

    // The "has not joined its cluster" line waits three, then six, of Akka's join retries
    // (retry-unsuccessful-join-after). A setting of 0s logged it without pause, and one of 30d
    // made Task.Delay throw: serve failed its start-up with an ArgumentOutOfRangeException stack
    // (a review). Each wait is kept from 1 s to Task.Delay's longest.
    [Theory]
    [InlineData("30d")]
    [InlineData("0s")]
    public async Task A_join_retry_setting_of_0s_or_of_days_neither_floods_the_log_nor_fails_the_start_up(string retry)
    {
        using var dir = new TempDirectory("serve-join-retry");
        File.WriteAllText(dir.File("hocon.conf"), File.ReadAllText(RepositoryFiles.Hocon()) + $"\nakka.cluster.retry-unsuccessful-join-after = {retry}\n");
        using var seed = new SilentPort();
        await using var node = ActorBlkProcess.Start("serve", "--config", dir.File("hocon.conf"), "--port", "0", "--nbd-listen", "127.0.0.1:0", "--seed", $"127.0.0.1:{seed.Port}");
        await node.WaitForLineAsync(l => l.Contains("Registered disk0", StringComparison.Ordinal), Within);
        if (retry == "0s")
        {
            var line = await node.WaitForLineAsync(l => l.Contains("has not joined its cluster", StringComparison.Ordinal), Within);
            Assert.Contains("after 1 s:", line, StringComparison.Ordinal);
        }

        node.Terminate();
        Assert.Equal(0, await node.WaitForExitAsync(Within));
        Assert.Contains("Stopping before the node joined its cluster", node.Output);
        Assert.DoesNotContain("ArgumentOutOfRangeException", node.Output, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Sigterm_stops_a_node_that_waits_for_a_mirror_leg_on_another_node()
    {
        // The leg's node never comes; member-wait is 30 s, and the stop must not wait it out.
        using var dir = new TempDirectory("serve-member-wait");
        using var nobody = new SilentPort();
        var config = File.ReadAllText(RepositoryFiles.Hocon()).Replace(
            "stacked-devices = []",
            $"stacked-devices = [ {{ name = md9, type = mirror, members = [nullb0, \"disk-x@127.0.0.1:{nobody.Port}\"] }} ]",
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

    // An outside CLI audit started two nodes on one port within 5 s and both ran: Akka's transport
    // binds with SO_REUSEPORT, and the listener check only sees a node that already listens. The
    // node starting first holds the address's lock file (as here, the spec holding it), and the
    // other is refused before its actor system starts.
    [Fact]
    public async Task A_node_on_a_remoting_address_whose_lock_another_node_holds_is_refused_with_the_port_named()
    {
        int port;
        using (var probe = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, 0))
        {
            probe.Start();
            port = ((System.Net.IPEndPoint)probe.LocalEndpoint).Port;
        }

        using (var held = ActorBlk.Host.Commands.RemotingPortLock.Acquire("127.0.0.1", port))
        {
            Assert.NotNull(held);
            await using var second = ActorBlkProcess.Start("serve", "--config", RepositoryFiles.Hocon(), "--port", port.ToString(System.Globalization.CultureInfo.InvariantCulture), "--nbd-listen", "off");
            Assert.Equal(1, await second.WaitForExitAsync(Within));
            AssertOneLineOnStandardError(second, $"actorblk: the remoting address 127.0.0.1:{port} is in use: another ActorBlk node of this user is starting or running on it");
            Assert.DoesNotContain("Remoting started", second.Output, StringComparison.Ordinal);
            Assert.DoesNotContain("   at ", second.Output, StringComparison.Ordinal);
        }

        // Released (as at the holder's exit, however it ends): the address can be taken again.
        using var again = ActorBlk.Host.Commands.RemotingPortLock.Acquire("127.0.0.1", port);
        Assert.NotNull(again);
    }

    // A review: Akka.NET binds hostname:port and reads no bind-hostname or bind-port (Akka JVM's
    // keys), but serve locked and checked bind-port when set, so a node with bind-port set took
    // another address's lock and started on a port whose lock another node held.
    [Fact]
    public async Task A_bind_port_which_Akka_does_not_read_does_not_move_the_remoting_address_lock()
    {
        int port, other;
        using (var probe = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, 0))
        using (var probe2 = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, 0))
        {
            probe.Start();
            probe2.Start();
            port = ((System.Net.IPEndPoint)probe.LocalEndpoint).Port;
            other = ((System.Net.IPEndPoint)probe2.LocalEndpoint).Port;
        }

        using var dir = new TempDirectory("serve-bind-port");
        File.WriteAllText(dir.File("hocon.conf"), File.ReadAllText(RepositoryFiles.Hocon())
            + $"\nakka.remote.dot-netty.tcp {{ bind-port = {other}, bind-hostname = 127.0.0.2 }}\n");
        using var held = ActorBlk.Host.Commands.RemotingPortLock.Acquire("127.0.0.1", port);
        Assert.NotNull(held);
        await using var second = ActorBlkProcess.Start("serve", "--config", dir.File("hocon.conf"), "--port", port.ToString(System.Globalization.CultureInfo.InvariantCulture), "--nbd-listen", "off");
        Assert.Equal(1, await second.WaitForExitAsync(Within));
        AssertOneLineOnStandardError(second, $"actorblk: the remoting address 127.0.0.1:{port} is in use: another ActorBlk node of this user is starting or running on it");
        Assert.DoesNotContain("Remoting started", second.Output, StringComparison.Ordinal);
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
        AssertOneLineOnStandardError(second, $"actorblk: the remoting address 127.0.0.1:{port} is in use");
        Assert.DoesNotContain("   at ", second.Output, StringComparison.Ordinal);

        first.Terminate();
        Assert.Equal(0, await first.WaitForExitAsync(Within));
    }

    [Fact]
    public async Task A_node_whose_NBD_address_is_in_use_says_so_on_stderr_in_one_line_and_exits_1()
    {
        // An outside audit: the error went to stdout only, as a log line with a stack trace.
        var taken = new TcpListener(IPAddress.Loopback, 0);
        taken.Start();
        try
        {
            var port = ((IPEndPoint)taken.LocalEndpoint).Port;
            await using var node = ActorBlkProcess.Start("serve", "--config", RepositoryFiles.Hocon(), "--port", "0", "--nbd-listen", $"127.0.0.1:{port}");
            Assert.Equal(1, await node.WaitForExitAsync(Within));
            AssertOneLineOnStandardError(node, $"actorblk: the NBD export cannot listen on 127.0.0.1:{port}");
            Assert.Contains($"FTL] The node failed: the NBD export cannot listen on 127.0.0.1:{port}", node.StandardOutput, StringComparison.Ordinal);
            Assert.DoesNotContain("   at ", node.Output, StringComparison.Ordinal);
            Assert.Contains("Unregistered disk0: every request completed", node.StandardOutput, StringComparison.Ordinal);
        }
        finally
        {
            taken.Stop();
        }
    }

    [Fact]
    public async Task A_node_whose_device_file_is_locked_names_the_file_on_stderr_in_one_line_and_exits_1()
    {
        using var dir = new TempDirectory("serve-locked");
        var image = dir.File("disk0.img");
        var config = File.ReadAllText(RepositoryFiles.Hocon()).Replace("/var/tmp/actorblk-disk0.img", image, StringComparison.Ordinal);
        Assert.Contains(image, config, StringComparison.Ordinal);
        File.WriteAllText(dir.File("hocon.conf"), config);

        // FileShare.None takes flock(LOCK_EX) on Linux, as another device or process holding the file would.
        using (var holder = new FileStream(image, FileMode.Create, FileAccess.ReadWrite, FileShare.None))
        {
            holder.SetLength(16 << 20);
            await using var node = ActorBlkProcess.Start("serve", "--config", dir.File("hocon.conf"), "--port", "0", "--nbd-listen", "off");
            Assert.Equal(1, await node.WaitForExitAsync(Within));
            AssertOneLineOnStandardError(node, $"actorblk: disk0: cannot use '{image}': the file is in use");

            // No stack trace: Akka.Hosting echoed the failure with its stack on stdout before the
            // node's own report ("Unable to start AkkaHostedService ..."); serve drops the echo.
            Assert.Contains("FTL] The node failed: disk0: cannot use", node.StandardOutput, StringComparison.Ordinal);
            Assert.DoesNotContain("   at ", node.Output, StringComparison.Ordinal);
            Assert.DoesNotContain("Unable to start AkkaHostedService", node.Output, StringComparison.Ordinal);
        }
    }

    // An admin secret file that exists but cannot be read was taken for no secret (File.Exists is
    // false for it), so the node sealed and checked nothing; here a directory stands for it (the
    // specs run as root, who may read any file). Now the node does not start.
    [Fact]
    public async Task A_node_whose_admin_secret_file_cannot_be_read_names_it_on_stderr_in_one_line_and_exits_1()
    {
        using var dir = new TempDirectory("serve-secret");
        var secret = dir.File("admin-secret");
        Directory.CreateDirectory(secret);
        var config = File.ReadAllText(RepositoryFiles.Hocon()).Replace("\"~/.actorblk/admin-secret\"", $"\"{secret}\"", StringComparison.Ordinal);
        Assert.Contains(secret, config, StringComparison.Ordinal);
        File.WriteAllText(dir.File("hocon.conf"), config);

        await using var node = ActorBlkProcess.Start("serve", "--config", dir.File("hocon.conf"), "--port", "0", "--nbd-listen", "off");
        Assert.Equal(1, await node.WaitForExitAsync(Within));
        AssertOneLineOnStandardError(node, $"actorblk: the admin secret file '{secret}' (actorblk.remote.admin-secret-file) cannot be read: ");
        Assert.DoesNotContain("   at ", node.Output, StringComparison.Ordinal);
    }

    /// <summary>
    /// A configuration written from scratch, without <c>akka.actor.provider</c>, failed the start
    /// with Akka.Hosting's 40-line stack trace about ClusterSettings (an outside audit): an ActorBlk
    /// node is a cluster member, so the provider defaults to cluster, and another is refused.
    /// </summary>
    [Fact]
    public async Task A_configuration_without_a_provider_is_a_cluster_node_and_another_provider_is_refused()
    {
        using var dir = new TempDirectory("serve-provider");
        var minimal = $$"""
            akka.remote.dot-netty.tcp { hostname = 127.0.0.1, port = 0 }
            actorblk { nbd.listen = off, remote.admin-secret-file = "{{dir.File("admin-secret")}}", devices = [ { name = n0, driver = null, size = 16m } ] }
            """;
        File.WriteAllText(dir.File("minimal.conf"), minimal);
        await using (var node = ActorBlkProcess.Start("serve", "--config", dir.File("minimal.conf")))
        {
            await node.WaitForLineAsync(l => l.Contains("Serving n0", StringComparison.Ordinal), Within);
            node.Terminate();
            Assert.Equal(0, await node.WaitForExitAsync(Within));
        }

        File.WriteAllText(dir.File("remote.conf"), "akka.actor.provider = remote\n" + minimal);
        await using var refused = ActorBlkProcess.Start("serve", "--config", dir.File("remote.conf"));
        Assert.Equal(2, await refused.WaitForExitAsync(Within));
        Assert.StartsWith("actorblk: akka.actor.provider: 'remote' is not cluster; an ActorBlk node is a cluster member", refused.StandardError, StringComparison.Ordinal);
        Assert.DoesNotContain("   at ", refused.Output, StringComparison.Ordinal);
    }

    private static void AssertOneLineOnStandardError(ActorBlkProcess process, string start)
    {
        var lines = process.StandardError.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        var line = Assert.Single(lines);
        Assert.StartsWith(start, line, StringComparison.Ordinal);
    }
}
