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
        // Akka's own debug lines come from the start (its loggers starting), before the node says
        // it is up; the lines are read once, so they are looked for in what was written, not
        // awaited after it (a node with nothing more to say at debug level waited in vain). They
        // reach the console through Akka's logger actor, though, and the address line straight
        // from serve's start-up: with that actor behind (a loaded machine), the first of them may
        // still be on its way, so it is awaited if it is not there yet.
        await node.WaitForLineAsync(l => l.Contains("Devices are addressable at", StringComparison.Ordinal), Within);
        if (!node.Output.Contains(" DBG] ", StringComparison.Ordinal))
        {
            await node.WaitForLineAsync(l => l.Contains(" DBG] ", StringComparison.Ordinal), Within);
        }

        Assert.Contains(" DBG] ", node.Output, StringComparison.Ordinal);

        node.Terminate();
        Assert.Equal(0, await node.WaitForExitAsync(Within));
    }
}
