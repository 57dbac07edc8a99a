using ActorBlk.Hardware.Devices;
using ActorBlk.Host.Commands;

namespace ActorBlk.Host;

/// <summary>The <c>actorblk</c> command.</summary>
public static class Program
{
    private const string Help = """
        actorblk: a user-space multi-queue block layer on Akka.NET

        usage:
          actorblk serve [--config PATH] [--port N] [--seed HOST:PORT,...] [--hostname H]
                                                        run a node serving the devices of hocon.conf,
                                                        joining the cluster of the seed nodes
          actorblk devices [--node HOST:PORT]           list the devices of the whole cluster
          actorblk bench [fio-style options]            drive a device like fio (actorblk bench --help)
          actorblk sysfs list|cat PATH|write PATH VALUE read and write a running node's attributes
          actorblk hotplug offline|online CPU           take a running node's CPU offline or online
          actorblk iostat [-x] [INTERVAL [COUNT]]       a running node's device statistics, as iostat shows them
          actorblk help                                 this text

        """;

    /// <summary>Entry point; returns 0 on success, 1 on failure, 2 on a usage error.</summary>
    public static async Task<int> Main(string[] args)
    {
        if (args.Length == 0 || args[0] is "help" or "--help" or "-h")
        {
            Console.Out.Write(Help);
            return args.Length == 0 ? 2 : 0;
        }

        try
        {
            if (args.Length > 1 && args[1] is "--help" or "-h")
            {
                Console.Out.WriteLine(args[0] switch
                {
                    "bench" => Bench.BenchOptions.Usage,
                    "sysfs" => SysfsCommand.SysfsUsage,
                    "hotplug" => SysfsCommand.HotplugUsage,
                    "devices" => DevicesCommand.Usage,
                    "serve" => ServeCommand.Usage,
                    "iostat" => IostatCommand.Usage,
                    _ => Help,
                });
                return 0;
            }

            var cl = new CommandLine(args.Skip(1));
            return args[0] switch
            {
                "serve" => await ServeCommand.RunAsync(cl).ConfigureAwait(false),
                "bench" => await BenchCommand.RunAsync(cl).ConfigureAwait(false),
                "sysfs" => await SysfsCommand.RunSysfsAsync(cl).ConfigureAwait(false),
                "hotplug" => await SysfsCommand.RunHotplugAsync(cl).ConfigureAwait(false),
                "devices" => await DevicesCommand.RunAsync(cl).ConfigureAwait(false),
                "iostat" => await IostatCommand.RunAsync(cl, Console.Out).ConfigureAwait(false),
                _ => throw new UsageException($"unknown command '{args[0]}'."),
            };
        }
        catch (UsageException ex)
        {
            await Console.Error.WriteLineAsync($"actorblk: {ex.Message}").ConfigureAwait(false);
            await Console.Error.WriteAsync(Help).ConfigureAwait(false);
            return 2;
        }
        catch (DeviceOptionsException ex)
        {
            await Console.Error.WriteLineAsync($"actorblk: {ex.Message}").ConfigureAwait(false);
            return 2;
        }
        catch (BlockDeviceOpenException ex)
        {
            await Console.Error.WriteLineAsync($"actorblk: {ex.Message}").ConfigureAwait(false);
            return 1;
        }
    }
}
