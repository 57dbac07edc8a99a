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
            block size, hardware queues, read-only, state (live, offline, dying, or unreachable while
            the asked node cannot reach the owner), NBD endpoint and, for a mirror, its state as its owner's md attributes give it (raid1 2/2 in_sync, raid1 1/2
            degraded, raid1 1/2 recover 37%; ? when the owner does not answer, - for other devices).
            A device is addressed as NAME@NODE, or by NAME alone when no other node has one of that name.
            """);
        node.AddTo(command);
        command.SetAction((parse, _) =>
        {
            // The node's TLS settings come from its hocon.conf, as for the other client commands:
            // with TLS on, HOST:PORT means akka.ssl.tcp, and the client must load the TLS transport.
            return RunAsync(node.AddressFrom(parse), node.ConfigFrom(parse));
        });
        return command;
    }

    private static async Task<int> RunAsync(string address, Akka.Configuration.Config? nodeConfig)
    {
        NodeClient connected;
        try
        {
            connected = NodeClient.Connect(address, nodeConfig);
        }
        catch (Akka.Configuration.ConfigurationException ex)
        {
            await Console.Error.WriteLineAsync($"actorblk: {ex.Message}").ConfigureAwait(false);
            return 1;
        }

        await using var client = connected;
        ClusterDeviceList list;
        try
        {
            // The node answers in pages that fit one remoting message each.
            list = await client.AskGuardianAsync<ClusterDeviceList>(ListClusterDevices.Instance).ConfigureAwait(false);
            var all = new List<ClusterDevice>(list.Devices);
            while (list is { More: true, Devices.Length: > 0 })
            {
                list = await client.AskGuardianAsync<ClusterDeviceList>(new ListClusterDevices(list.Devices[^1].Id)).ConfigureAwait(false);
                all.AddRange(list.Devices);
            }

            list = list with { Devices = [.. all], More = false };
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

        var mirrors = await MirrorStatesAsync(client, address, list.Devices).ConfigureAwait(false);
        await Console.Out.WriteAsync(Format(list.Devices, mirrors)).ConfigureAwait(false);
        return 0;
    }

    /// <summary>
    /// The table: a header line, then one line per device. <paramref name="mirrors"/> holds the
    /// MIRROR cell by device id (<c>name@node</c>); a device it lacks shows <c>-</c>.
    /// </summary>
    public static string Format(IReadOnlyList<ClusterDevice> devices, IReadOnlyDictionary<string, string>? mirrors = null)
    {
        string[] header = ["NAME", "NODE", "SIZE", "BS", "HWQ", "RO", "STATE", "NBD", "MIRROR"];
        var rows = devices.Select(d => new[]
        {
            d.Name, d.Node, Sizes.Format(d.Capacity), d.LogicalBlockSize.ToString(CultureInfo.InvariantCulture),
            d.HardwareQueues.ToString(CultureInfo.InvariantCulture), d.ReadOnly ? "1" : "0", d.State,
            d.NbdEndpoint.Length > 0 ? d.NbdEndpoint : "-",
            mirrors is not null && mirrors.TryGetValue(d.Id, out var mirror) ? mirror : "-",
        }).Prepend(header).ToList();
        var widths = Enumerable.Range(0, header.Length).Select(c => rows.Max(r => r[c].Length)).ToArray();
        var text = new System.Text.StringBuilder();
        foreach (var row in rows)
        {
            text.AppendLine(string.Join("  ", row.Select((cell, c) => c == row.Length - 1 ? cell : cell.PadRight(widths[c]))).TrimEnd());
        }

        return text.ToString();
    }

    /// <summary>
    /// The MIRROR cell of a mirror from its md attributes (README, "Mirrors"): level, legs in sync
    /// of all legs, then <c>in_sync</c>, <c>degraded</c>, <c>failed</c> (no leg in sync), or the
    /// running sync and how far it is (<c>recover 37%</c>, <c>check 12%</c>). Null when
    /// <paramref name="level"/> is null (not a mirror); <c>?</c> when an attribute is missing.
    /// </summary>
    public static string? MirrorState(string? level, string? raidDisks, string? degraded, string? syncAction, string? syncCompleted)
    {
        if (level is null)
        {
            return null;
        }

        if (!int.TryParse(raidDisks, NumberStyles.Integer, CultureInfo.InvariantCulture, out var disks)
            || !int.TryParse(degraded, NumberStyles.Integer, CultureInfo.InvariantCulture, out var notInSync)
            || syncAction is null)
        {
            return "?";
        }

        var inSync = Math.Max(0, disks - notInSync);
        var action = syncAction.Trim();
        var state = action != "idle" ? $"{action} {Percent(syncCompleted)}"
            : inSync == 0 ? "failed"
            : notInSync > 0 ? "degraded"
            : "in_sync";
        return $"{level.Trim()} {inSync}/{disks} {state}";
    }

    // "done / total" in sectors as a whole percentage (rounded down, so 100% only when done); "?" otherwise.
    private static string Percent(string? syncCompleted)
    {
        var parts = syncCompleted?.Split('/', StringSplitOptions.TrimEntries);
        return parts is [var doneText, var totalText]
            && long.TryParse(doneText, NumberStyles.None, CultureInfo.InvariantCulture, out var done)
            && long.TryParse(totalText, NumberStyles.None, CultureInfo.InvariantCulture, out var total) && total > 0
            ? $"{Math.Min(100, done * 100 / total)}%"
            : "?";
    }

    // Asks each owner node's attribute tree (in parallel, 5 s at most per node) which of its devices
    // are mirrors, and their state. A node that does not answer shows "?" for every device.
    private static async Task<Dictionary<string, string>> MirrorStatesAsync(NodeClient client, string address, IReadOnlyList<ClusterDevice> devices)
    {
        var scheme = address[..Math.Max(0, address.IndexOf("://", StringComparison.Ordinal))];
        var within = TimeSpan.FromSeconds(5);
        var states = new Dictionary<string, string>(StringComparer.Ordinal);
        // An unreachable node is not asked (it would only time out): its devices show "?".
        foreach (var d in devices.Where(d => d.State == ClusterDeviceStates.Unreachable))
        {
            states[d.Id] = "?";
        }

        var nodes = devices.Where(d => d.State is not (ClusterDeviceStates.Dying or ClusterDeviceStates.Unreachable)).GroupBy(d => d.Node, StringComparer.Ordinal);
        var answers = await Task.WhenAll(nodes.Select(async node =>
        {
            var owner = $"{scheme}://{NodeConfig.SystemName}@{node.Key}";
            var members = node.ToArray();
            var levels = await client.ReadAttributesAsync(owner, [.. members.Select(d => $"block/{d.Name}/md/level")], within).ConfigureAwait(false);
            if (levels.All(l => l is null))
            {
                // Either no mirrors, or no answer: a device's queue attribute tells them apart.
                var alive = await client.ReadAttributesAsync(owner, [$"block/{members[0].Name}/stat"], within).ConfigureAwait(false);
                return members.Select(d => (d.Id, State: alive[0] is null ? "?" : null)).ToArray();
            }

            var mirrors = members.Where((_, i) => levels[i] is not null).ToArray();
            var attributes = await client.ReadAttributesAsync(owner,
                [.. mirrors.SelectMany(d => new[] { "raid_disks", "degraded", "sync_action", "sync_completed" }.Select(a => $"block/{d.Name}/md/{a}"))], within).ConfigureAwait(false);
            return mirrors.Select((d, i) => (d.Id, State: MirrorState(levels[Array.IndexOf(members, d)], attributes[4 * i], attributes[(4 * i) + 1], attributes[(4 * i) + 2], attributes[(4 * i) + 3])))
                .ToArray();
        })).ConfigureAwait(false);
        foreach (var (id, state) in answers.SelectMany(a => a))
        {
            if (state is not null)
            {
                states[id] = state;
            }
        }

        return states;
    }
}
