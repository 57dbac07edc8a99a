using ActorBlk.Host.Tests.Support;
using ActorBlk.Testing;
using Xunit;

namespace ActorBlk.Host.Tests;

/// <summary>
/// hocon.conf: <c>akka.loglevel</c> is the level of Akka's own events, which Serilog writes to the
/// console. An outside audit set it to DEBUG and got no debug line: the node's log stayed at
/// information whatever Akka passed on.
/// </summary>
[Collection(OwnResourceProcessesCollection.Name)]
public sealed class ServeLogLevelSpec
{
    private static readonly TimeSpan Within = TimeSpan.FromSeconds(90);

    [Fact]
    public async Task Akka_loglevel_debug_lets_debug_lines_through_the_nodes_log()
    {
        using var dir = new TempDirectory("serve-debug");
        var config = dir.File("node.conf");
        await File.WriteAllTextAsync(config, await File.ReadAllTextAsync(RepositoryFiles.Hocon()) + """

            akka.loglevel = DEBUG
            actorblk.nbd.listen = off
            actorblk.topology.source = simulated
            actorblk.devices = [ { name = nullb0, driver = "null", size = 64m, irqmode = 0 } ]
            """);
        await using var node = ActorBlkProcess.Start("serve", "--config", config, "--port", "0");
        await node.WaitForLineAsync(l => l.Contains("Devices are addressable at", StringComparison.Ordinal), Within);
        await node.WaitForLineAsync(l => l.Contains(" DBG] ", StringComparison.Ordinal), Within);

        node.Terminate();
        Assert.Equal(0, await node.WaitForExitAsync(Within));
    }
}
