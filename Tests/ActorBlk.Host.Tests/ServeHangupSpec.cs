using ActorBlk.Host.Tests.Support;
using ActorBlk.Testing;
using Xunit;

namespace ActorBlk.Host.Tests;

/// <summary>
/// An outside audit of signals: SIGHUP (the terminal or ssh session that started <c>serve</c>
/// closed) ended the node at once with the runtime's default, exit 129: no drain, no removal of
/// the devices, mirrors left unclean, NBD clients unanswered. The generic host stops on SIGINT,
/// SIGQUIT and SIGTERM; SIGHUP now stops the node the same way.
/// </summary>
[Collection(OwnResourceProcessesCollection.Name)]
public sealed class ServeHangupSpec
{
    private const int SigHup = 1;
    private static readonly TimeSpan Within = TimeSpan.FromSeconds(90);

    [Fact]
    public async Task Sighup_stops_the_node_as_sigterm_does()
    {
        using var dir = new TempDirectory();
        var config = dir.File("node.conf");
        await File.WriteAllTextAsync(config, await File.ReadAllTextAsync(RepositoryFiles.Hocon()) + $$"""

            actorblk.nbd.listen = off
            actorblk.topology.source = simulated
            actorblk.devices = [ { name = hup0, driver = file, path = "{{dir.File("hup0.img")}}", size = 16m } ]
            """);
        await using var node = ActorBlkProcess.Start("serve", "--config", config, "--port", "0");
        await node.WaitForLineAsync(l => l.Contains("Devices are addressable at", StringComparison.Ordinal), Within);

        node.Signal(SigHup);

        Assert.Equal(0, await node.WaitForExitAsync(Within));
        Assert.Contains(node.Output.Split('\n'), l => l.Contains("Cluster device hup0@", StringComparison.Ordinal) && l.TrimEnd().EndsWith(": removed", StringComparison.Ordinal));
        Assert.Contains("ActorBlk node stopped", node.Output, StringComparison.Ordinal);
    }
}
