using System.Diagnostics;
using System.Net.Sockets;
using ActorBlk.Host.Tests.Support;
using ActorBlk.Testing;
using Xunit;

namespace ActorBlk.Host.Tests;

/// <summary>
/// <c>actorblk serve --nbd-listen unix:PATH</c>: the export on a Unix domain socket, reached by
/// libnbd's tools over <c>nbd+unix://</c>; the socket file a killed node left is bound again, a
/// live server's socket or a file that is not a socket stops the node with one line, and the
/// file is removed when the node stops.
/// </summary>
[Collection(ServeProcessesCollection.Name)]
public sealed class ServeUnixSocketSpec
{
    private static readonly TimeSpan Within = TimeSpan.FromSeconds(90);

    private static bool Installed(params string[] tools) =>
        tools.All(t => (Environment.GetEnvironmentVariable("PATH") ?? string.Empty).Split(':').Any(d => d.Length > 0 && File.Exists(Path.Combine(d, t))));

    private static async Task<string> RunOkAsync(string file, params string[] args)
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
        var output = await stdout + await stderr;
        Assert.True(p.ExitCode == 0, $"{file} {string.Join(' ', args)} exited {p.ExitCode}: {output}");
        return output;
    }

    private static async Task<string> ConfigAsync(TempDirectory dir)
    {
        var config = dir.File("node.conf");
        await File.WriteAllTextAsync(config, await File.ReadAllTextAsync(RepositoryFiles.Hocon())
            + "\nactorblk.devices = [ { name = nbd0, driver = \"null\", size = 32m, memory_backed = on, irqmode = 0 } ]\n");
        return config;
    }

    [SkippableFact]
    public async Task A_node_exports_on_the_socket_to_libnbd_binds_again_over_the_file_a_killed_node_left_and_removes_it_at_the_stop()
    {
        Skip.IfNot(Installed("nbdinfo", "nbdcopy"), "nbdinfo and nbdcopy (libnbd-bin) are not installed (.ci/run installs them)");
        using var dir = new TempDirectory("srvu");
        var config = await ConfigAsync(dir);
        var socket = dir.File("nbd.sock");
        var uri = $"nbd+unix:///nbd0?socket={socket}";

        await using (var killed = ActorBlkProcess.Start("serve", "--config", config, "--port", "0", "--nbd-listen", $"unix:{socket}"))
        {
            // The export's lines, in the order serve logs them.
            await killed.WaitForLineAsync(l => l.Contains($"Exporting nbd0 over NBD at {uri} (the default export)", StringComparison.Ordinal), Within);
            await killed.WaitForLineAsync(l => l.Contains($"NBD export listening on unix:{socket} (TLS off)", StringComparison.Ordinal), Within);
            await killed.WaitForLineAsync(l => l.Contains("The cluster registry publishes no NBD endpoint for this node's devices: a Unix socket is reachable on this machine only", StringComparison.Ordinal), Within);
            Assert.Contains("nbd0", await RunOkAsync("nbdinfo", "--list", $"nbd+unix:///?socket={socket}"));
            await killed.KillAsync();
        }

        // SIGKILL: no stop ran, and the socket file stays with nothing listening on it.
        Assert.True(File.Exists(socket));
        Assert.False(UnixSockets.Listens(socket));

        await using var node = ActorBlkProcess.Start("serve", "--config", config, "--port", "0", "--nbd-listen", $"unix:{socket}");
        await node.WaitForLineAsync(l => l.Contains($"NBD export listening on unix:{socket}", StringComparison.Ordinal), Within);

        // Logged through Akka's logger, which may write it after serve's own lines.
        var stale = $"NBD server: removed the stale socket '{socket}' (nothing listened on it: a server that did not stop cleanly left it) to listen there";
        if (!node.Output.Contains(stale, StringComparison.Ordinal))
        {
            await node.WaitForLineAsync(l => l.Contains(stale, StringComparison.Ordinal), Within);
        }


        var image = dir.File("image.raw");
        var back = dir.File("back.raw");
        var bytes = new byte[32 << 20];
        new Random(9).NextBytes(bytes);
        await File.WriteAllBytesAsync(image, bytes);
        await RunOkAsync("nbdcopy", "--connections=2", "--flush", image, uri);
        await RunOkAsync("nbdcopy", "--connections=2", uri, back);
        Assert.Equal(bytes, await File.ReadAllBytesAsync(back));

        node.Terminate();
        Assert.Equal(0, await node.WaitForExitAsync(Within));
        Assert.Contains($"NBD export on unix:{socket} stopped", node.Output, StringComparison.Ordinal);
        Assert.False(File.Exists(socket));
    }

    [Fact]
    public async Task A_socket_another_server_listens_on_or_a_file_that_is_no_socket_stops_the_node_with_one_line()
    {
        using var dir = new TempDirectory("srvu");
        var config = await ConfigAsync(dir);
        var socket = dir.File("nbd.sock");
        using (var other = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified))
        {
            other.Bind(new UnixDomainSocketEndPoint(socket));
            other.Listen();
            await using var node = ActorBlkProcess.Start("serve", "--config", config, "--port", "0", "--nbd-listen", $"unix:{socket}");
            Assert.Equal(1, await node.WaitForExitAsync(Within));
            var line = Assert.Single(node.StandardError.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries));
            Assert.Equal($"actorblk: the NBD export cannot listen on unix:{socket}: another server listens on the socket (it accepted a connection: another ActorBlk node, qemu-nbd or nbdkit?); stop it, or choose another path", line);
            Assert.DoesNotContain("   at ", node.Output, StringComparison.Ordinal);
            Assert.True(UnixSockets.Listens(socket));
        }

        var file = dir.File("disk.img");
        await File.WriteAllTextAsync(file, "not a socket");
        await using (var node = ActorBlkProcess.Start("serve", "--config", config, "--port", "0", "--nbd-listen", $"unix:{file}"))
        {
            Assert.Equal(1, await node.WaitForExitAsync(Within));
            var line = Assert.Single(node.StandardError.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries));
            Assert.Equal($"actorblk: the NBD export cannot listen on unix:{file}: '{file}' is a regular file, not a socket, and is left alone: remove it, or choose another path", line);
        }

        Assert.Equal("not a socket", await File.ReadAllTextAsync(file));
    }
}
