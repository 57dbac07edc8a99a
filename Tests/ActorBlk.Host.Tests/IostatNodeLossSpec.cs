using System.Text.Json;
using System.Text.RegularExpressions;
using ActorBlk.Host.Tests.Support;
using ActorBlk.Testing;
using Xunit;

namespace ActorBlk.Host.Tests;

/// <summary>
/// An outside audit (finding 1): a node SIGKILLed under <c>actorblk iostat -o JSON 1 1000</c> left
/// the client's Akka error (<c>[ERROR][...][akka://actorblk-client/...] Disassociated</c> and its
/// stack trace) on stdout, inside the JSON <c>statistics</c> array, and in the table too. The
/// client commands' Akka log goes to stderr now, and the disassociation is not logged: the command
/// says that no node answered.
/// </summary>
[Collection(OwnResourceProcessesCollection.Name)]
public sealed partial class IostatNodeLossSpec
{
    private static readonly TimeSpan Within = TimeSpan.FromSeconds(90);

    [GeneratedRegex(@"Devices are addressable at akka\.tcp://actorblk@127\.0\.0\.1:(?<port>\d+)/user/actorblk")]
    private static partial Regex AddressLine();

    [Fact]
    public async Task A_node_killed_under_iostat_leaves_stdout_to_the_report()
    {
        using var dir = new TempDirectory();
        var config = dir.File("node.conf");
        await File.WriteAllTextAsync(config, await File.ReadAllTextAsync(RepositoryFiles.Hocon()) + """

            actorblk.nbd.listen = off
            actorblk.topology.source = simulated
            actorblk.devices = [ { name = nullb0, driver = "null", size = 64m, irqmode = 0 } ]
            """);
        await using var node = ActorBlkProcess.Start("serve", "--config", config, "--port", "0");
        var port = AddressLine().Match(await node.WaitForLineAsync(l => AddressLine().IsMatch(l), Within)).Groups["port"].Value;

        await using var json = ActorBlkProcess.Start("iostat", "--node", $"127.0.0.1:{port}", "-o", "JSON", "nullb0", "1", "1000");
        await using var table = ActorBlkProcess.Start("iostat", "--node", $"127.0.0.1:{port}", "-x", "nullb0", "1", "1000");
        for (var report = 0; report < 2; report++)
        {
            await json.WaitForLineAsync(l => l.Contains("\"disk_device\"", StringComparison.Ordinal), Within);
            await table.WaitForLineAsync(l => l.StartsWith("nullb0 ", StringComparison.Ordinal), Within);
        }

        await node.KillAsync();

        foreach (var iostat in new[] { json, table })
        {
            Assert.Equal(1, await iostat.WaitForExitAsync(Within));
            Assert.Contains("no ActorBlk node answered at", iostat.StandardError, StringComparison.Ordinal);
            Assert.DoesNotContain("akka://", iostat.StandardOutput, StringComparison.Ordinal);
            Assert.DoesNotContain("[ERROR]", iostat.StandardOutput, StringComparison.Ordinal);
            Assert.DoesNotContain("Disassociated", iostat.Output, StringComparison.Ordinal);
        }

        // The document is whole: the reports before the loss, closed.
        using var document = JsonDocument.Parse(json.StandardOutput);
        var statistics = document.RootElement.GetProperty("sysstat").GetProperty("hosts")[0].GetProperty("statistics");
        Assert.True(statistics.GetArrayLength() >= 2, json.StandardOutput);
        Assert.All(statistics.EnumerateArray(), s => Assert.Equal("nullb0", s.GetProperty("disk")[0].GetProperty("disk_device").GetString()));
    }
}
