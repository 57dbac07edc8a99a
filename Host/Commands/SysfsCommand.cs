using System.CommandLine;
using ActorBlk.Actors;

namespace ActorBlk.Host.Commands;

/// <summary>
/// <c>actorblk sysfs</c> and <c>actorblk hotplug</c>: read and write the attribute tree of a running
/// node, and take its CPUs offline and online, over Akka remoting on loopback.
/// </summary>
internal static class SysfsCommand
{
    /// <summary>Exit code of a refused operation (the errno is printed).</summary>
    public const int Refused = 1;

    private const string PathHelp = "PATH as under /sys: block/nullb0/queue/nr_requests, block/nullb0/mq/0/cpu_list, kernel/debug/block/nullb0/hctx0/pending (\"/sys/\" in front is accepted)";

    /// <summary>The <c>sysfs</c> command: <c>list [PREFIX]</c>, <c>cat PATH</c>, <c>write PATH VALUE</c>.</summary>
    public static Command CreateSysfs()
    {
        var node = new NodeOptions();
        var command = new Command("sysfs", """
            Read and write a running node's attributes. The node is --node, else akka.tcp://actorblk@HOST:PORT
            (akka.ssl.tcp with TLS), PORT from --port, else from hocon.conf, else 4053, and HOST hocon.conf's
            public-hostname, else its hostname, else 127.0.0.1. write (and hotplug) send the admin secret: $ACTORBLK_ADMIN_SECRET,
            else hocon.conf's actorblk.remote.admin-secret(-file); TLS settings come from hocon.conf too.
            """);
        node.AddTo(command);

        var prefix = new Argument<string?>("PREFIX") { Description = "list only the paths that start with it", Arity = ArgumentArity.ZeroOrOne };
        prefix.Validators.Add(RefuseOptionLike);

        // `sysfs list ''` listed every path, as no PREFIX does; `ls ''` names nothing (an outside CLI fuzzing audit).
        prefix.Validators.Add(result =>
        {
            if (result.Tokens.Any(t => t.Value.Length == 0))
            {
                result.AddError("PREFIX is empty: give none to list every path.");
            }
        });
        var list = new Command("list", "List the attribute paths.") { prefix };
        list.SetAction((parse, _) => AskAsync(node.AddressFrom(parse), new Sysfs.List(parse.GetValue(prefix) ?? string.Empty), node.ConfigFrom(parse)));

        var catPath = new Argument<string>("PATH") { Description = PathHelp };
        catPath.Validators.Add(RefuseOptionLike);
        var cat = new Command("cat", "Print an attribute.") { catPath };
        cat.SetAction((parse, _) => AskAsync(node.AddressFrom(parse), new Sysfs.Read(parse.GetRequiredValue(catPath)), node.ConfigFrom(parse)));

        var writePath = new Argument<string>("PATH") { Description = PathHelp };
        writePath.Validators.Add(RefuseOptionLike);
        var value = new Argument<string>("VALUE") { Description = "the text written to it" };
        var write = new Command("write", "Write an attribute (needs the admin secret).") { writePath, value };
        write.SetAction((parse, _) => AskAsync(node.AddressFrom(parse), new Sysfs.Write(parse.GetRequiredValue(writePath), parse.GetRequiredValue(value)), node.ConfigFrom(parse)));

        command.Subcommands.Add(list);
        command.Subcommands.Add(cat);
        command.Subcommands.Add(write);
        return command;
    }

    /// <summary>The <c>hotplug</c> command: <c>offline CPU</c>, <c>online CPU</c>.</summary>
    public static Command CreateHotplug()
    {
        var node = new NodeOptions();
        var command = new Command("hotplug", """
            Take a CPU of a running node offline or bring it online: every device is frozen, drained,
            re-mapped and unfrozen before the command returns.
            """);
        node.AddTo(command);
        foreach (var online in new[] { false, true })
        {
            var cpu = new Argument<int>("CPU")
            {
                Description = "the CPU number",
                CustomParser = r =>
                {
                    var text = r.Tokens.Count > 0 ? r.Tokens[0].Value : string.Empty;
                    if (int.TryParse(text, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var n))
                    {
                        return n;
                    }

                    r.AddError($"'{text}' is not a CPU number.");
                    return -1;
                },
            };
            var action = new Command(online ? "online" : "offline", online ? "Bring the CPU online." : "Take the CPU offline.") { cpu };
            action.SetAction((parse, _) => AskAsync(node.AddressFrom(parse), new Sysfs.Hotplug(parse.GetValue(cpu), online), node.ConfigFrom(parse)));
            command.Subcommands.Add(action);
        }

        return command;
    }

    // An option the command does not have, given where the path stands (`sysfs list --bogus`,
    // `sysfs cat --verbose`), was taken as the path and sent to the node: "no ActorBlk node
    // answered" or ENOENT and exit 1, where every other unknown option is a usage error (exit 2; an
    // outside CLI fuzzing audit). No attribute path starts with '-'; a VALUE may (io_poll_delay -1).
    private static void RefuseOptionLike(System.CommandLine.Parsing.ArgumentResult result)
    {
        foreach (var token in result.Tokens)
        {
            if (token.Value.StartsWith('-'))
            {
                result.AddError($"Unrecognized command or argument '{token.Value}' (an attribute path never starts with '-').");
            }
        }
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
                await Console.Out.WriteLineAsync($"CPU {hotplug.Cpu} {(hotplug.Online ? "online" : "offline")}: online CPUs {changed.Online}; {changed.Remapped} device(s) re-mapped; topology version {changed.Version}")
                    .ConfigureAwait(false);
                return 0;
            case Sysfs.Failed failed:
                // Most messages name their errno already; it is added only where one does not.
                var said = failed.Message.Contains($"({failed.Errno})", StringComparison.Ordinal) ? failed.Message : $"{failed.Message} ({failed.Errno})";
                await Console.Error.WriteLineAsync($"actorblk: {failed.Path}: {said}").ConfigureAwait(false);
                return Refused;
            default:
                await Console.Error.WriteLineAsync($"actorblk: unexpected answer {reply}").ConfigureAwait(false);
                return Refused;
        }
    }
}
