using ActorBlk.Actors;

namespace ActorBlk.Host.Commands;

/// <summary>
/// <c>actorblk sysfs</c> and <c>actorblk hotplug</c>: read and write the attribute tree of a running
/// node, and take its CPUs offline and online, over Akka remoting on loopback.
/// </summary>
internal static class SysfsCommand
{
    public const string SysfsUsage = """
        actorblk sysfs [--node ADDRESS | --port N | --config PATH] list [PREFIX]
        actorblk sysfs [...] cat PATH
        actorblk sysfs [...] write PATH VALUE
          PATH as under /sys: block/nullb0/queue/nr_requests, block/nullb0/mq/0/cpu_list,
          kernel/debug/block/nullb0/hctx0/pending ("/sys/" in front is accepted).
          The node is akka.tcp://actorblk@127.0.0.1:PORT, PORT from --port, else from hocon.conf, else 4053.
          write (and hotplug) send the admin secret: $ACTORBLK_ADMIN_SECRET, else hocon.conf's
          actorblk.remote.admin-secret(-file); TLS settings come from hocon.conf too.
        """;

    public const string HotplugUsage = """
        actorblk hotplug [--node ADDRESS | --port N | --config PATH] offline|online CPU
          Takes a CPU of the node offline or brings it online: every device is frozen, drained,
          re-mapped and unfrozen before the command returns.
        """;

    /// <summary>Exit code of a refused operation (the errno is printed).</summary>
    public const int Refused = 1;

    public static async Task<int> RunSysfsAsync(CommandLine cl)
    {
        var address = NodeClient.AddressFrom(cl);
        var nodeConfig = NodeClient.ConfigFrom(cl);
        cl.RejectUnknown();
        object message = cl.Positional switch
        {
            ["list"] => new Sysfs.List(),
            ["list", var prefix] => new Sysfs.List(prefix),
            ["cat", var path] => new Sysfs.Read(path),
            ["write", var path, var value] => new Sysfs.Write(path, value),
            [] => throw new UsageException($"a sub-command is needed.\n{SysfsUsage}"),
            _ => throw new UsageException($"'{string.Join(' ', cl.Positional)}' is not list [PREFIX], cat PATH or write PATH VALUE.\n{SysfsUsage}"),
        };

        return await AskAsync(address, message, nodeConfig).ConfigureAwait(false);
    }

    public static async Task<int> RunHotplugAsync(CommandLine cl)
    {
        var address = NodeClient.AddressFrom(cl);
        var nodeConfig = NodeClient.ConfigFrom(cl);
        cl.RejectUnknown();
        if (cl.Positional is not [var action and ("offline" or "online"), var cpuText])
        {
            throw new UsageException($"expected offline|online CPU.\n{HotplugUsage}");
        }

        if (!int.TryParse(cpuText, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var cpu))
        {
            throw new UsageException($"'{cpuText}' is not a CPU number.\n{HotplugUsage}");
        }

        return await AskAsync(address, new Sysfs.Hotplug(cpu, action == "online"), nodeConfig).ConfigureAwait(false);
    }

    private static async Task<int> AskAsync(string address, object message, Akka.Configuration.Config? nodeConfig)
    {
        NodeClient connected;
        try
        {
            connected = NodeClient.Connect(address, nodeConfig);
        }
        catch (Akka.Configuration.ConfigurationException ex)
        {
            await Console.Error.WriteLineAsync($"actorblk: {ex.Message}").ConfigureAwait(false);
            return Refused;
        }

        await using var client = connected;
        object reply;
        try
        {
            reply = await client.AskAsync(message).ConfigureAwait(false);
        }
        catch (NodeUnreachableException ex)
        {
            await Console.Error.WriteLineAsync($"actorblk: {ex.Message}").ConfigureAwait(false);
            return Refused;
        }

        switch (reply)
        {
            case Sysfs.Listing listing:
                foreach (var path in listing.Paths)
                {
                    await Console.Out.WriteLineAsync(path).ConfigureAwait(false);
                }

                return 0;
            case Sysfs.Value value:
                await Console.Out.WriteAsync(value.Text).ConfigureAwait(false);
                return 0;
            case Sysfs.Written:
                return 0;
            case CpuTopologyProtocol.TopologyChanged changed:
                var hotplug = (Sysfs.Hotplug)message;
                await Console.Out.WriteLineAsync($"CPU {hotplug.Cpu} {(hotplug.Online ? "online" : "offline")}: online CPUs {changed.Online}, {changed.Remapped} device(s) re-mapped, topology version {changed.Version}")
                    .ConfigureAwait(false);
                return 0;
            case Sysfs.Failed failed:
                await Console.Error.WriteLineAsync($"actorblk: {failed.Path}: {failed.Message} ({failed.Errno})").ConfigureAwait(false);
                return Refused;
            default:
                await Console.Error.WriteLineAsync($"actorblk: unexpected answer {reply}").ConfigureAwait(false);
                return Refused;
        }
    }
}
