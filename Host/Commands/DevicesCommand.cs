using System.CommandLine;
using System.Globalization;
using ActorBlk.Actors.Clustering;

namespace ActorBlk.Host.Commands;

/// <summary>
/// <c>actorblk devices</c>: prints the devices of the whole cluster as a running node's registry
/// sees them (README, "Cluster").
/// </summary>
internal static class DevicesCommand
{
    /// <summary>The <c>devices</c> command.</summary>
    public static Command Create()
    {
        var node = new NodeOptions();
        var command = new Command("devices", """
            List the devices of the whole cluster the node belongs to: name, owner node, size, logical
            block size, hardware queues, read-only, state (live, offline, dying) and NBD endpoint.
            A device is addressed as NAME@NODE, or by NAME alone when no other node has one of that name.
            """);
        node.AddTo(command);
        command.SetAction((parse, _) =>
        {
            var text = parse.GetValue(node.Node);
            return RunAsync(text is not null && !text.Contains("://", StringComparison.Ordinal)
                ? $"akka.tcp://{NodeConfig.SystemName}@{NodeConfig.ParseEndpoint(text, "--node")}"
                : node.AddressFrom(parse));
        });
        return command;
    }

    private static async Task<int> RunAsync(string address)
    {
        await using var client = NodeClient.Connect(address);
        ClusterDeviceList list;
        try
        {
            list = await client.AskGuardianAsync<ClusterDeviceList>(ListClusterDevices.Instance).ConfigureAwait(false);
        }
        catch (NodeUnreachableException ex)
        {
            await Console.Error.WriteLineAsync($"actorblk: {ex.Message}").ConfigureAwait(false);
            return SysfsCommand.Refused;
        }

        if (!list.Enabled)
        {
            await Console.Error.WriteLineAsync($"actorblk: the node at {address} is not a cluster member (it keeps no device registry).").ConfigureAwait(false);
            return SysfsCommand.Refused;
        }

        await Console.Out.WriteAsync(Format(list.Devices)).ConfigureAwait(false);
        return 0;
    }

    /// <summary>The table: a header line, then one line per device.</summary>
    public static string Format(IReadOnlyList<ClusterDevice> devices)
    {
        string[] header = ["NAME", "NODE", "SIZE", "BS", "HWQ", "RO", "STATE", "NBD"];
        var rows = devices.Select(d => new[]
        {
            d.Name, d.Node, Sizes.Format(d.Capacity), d.LogicalBlockSize.ToString(CultureInfo.InvariantCulture),
            d.HardwareQueues.ToString(CultureInfo.InvariantCulture), d.ReadOnly ? "1" : "0", d.State,
            d.NbdEndpoint.Length > 0 ? d.NbdEndpoint : "-",
        }).Prepend(header).ToList();
        var widths = Enumerable.Range(0, header.Length).Select(c => rows.Max(r => r[c].Length)).ToArray();
        var text = new System.Text.StringBuilder();
        foreach (var row in rows)
        {
            text.AppendLine(string.Join("  ", row.Select((cell, c) => c == row.Length - 1 ? cell : cell.PadRight(widths[c]))).TrimEnd());
        }

        return text.ToString();
    }
}
