using System.Diagnostics;
using ActorBlk.Actors;
using ActorBlk.Actors.Clustering;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers;
using ActorBlk.Host.Bench;
using Akka.Actor;
using Akka.Configuration;

namespace ActorBlk.Host.Commands;

/// <summary>
/// <c>actorblk bench</c>: a fio-style load generator. It creates the device in a local actor
/// system (ring or mailbox dispatch), drives it with fio's workload options, and reports in fio's
/// human or JSON format. The run fails (exit 3) unless every submitted I/O completed, and completed once.
/// </summary>
internal static class BenchCommand
{
    /// <summary>Exit code of a run in which submitted and completed I/Os differ, or an I/O completed twice.</summary>
    public const int LostIo = 3;

    public static async Task<int> RunAsync(CommandLine cl)
    {
        var options = BenchOptions.Parse(cl);
        cl.RejectUnknown();
        if (cl.Positional.Count > 0)
        {
            throw new UsageException($"unexpected argument '{cl.Positional[0]}'.");
        }

        // Fails early, with the option named, on a combination no device accepts.
        _ = options.ToDeviceOptions();

        // Actor logging goes to stderr, so stdout carries the report alone (JSON stays parseable
        // when supervision has something to say).
        Serilog.Log.Logger = Logging.CreateConsoleLogger(Serilog.Events.LogEventLevel.Warning, toStandardError: true);
        var config = ConfigurationFactory.ParseString("""
            akka.loglevel = WARNING
            akka.stdout-loglevel = OFF
            akka.loggers = ["Akka.Logger.Serilog.SerilogLogger, Akka.Logger.Serilog"]
            akka.log-dead-letters = off
            """);
        if (options.PossibleCpus is { } possible)
        {
            config = ConfigurationFactory.ParseString($"actorblk.topology {{ source = simulated, simulated.cpus = {possible} }}").WithFallback(config);
        }

        // --join: a client member of the cluster (README, "Cluster") that opens the device wherever it lives.
        config = options.Join is { } join
            ? ClusterJoin.Config(join, null, config)
            : config.WithFallback(ActorBlkSettings.DefaultConfig());
        using var system = ActorSystem.Create(options.Join is null ? "actorblk-bench" : NodeConfig.SystemName, config);
        try
        {
            var layer = BlockLayer.Get(system);
            var devices = new List<IBlockDevice>();
            ClusterFigures? cluster = null;
            if (options.Join is not null)
            {
                var opened = await ClusterJoin.OpenAsync(system, options.Device, options.ToDeviceOptions(0), ClusterJoin.Patience).ConfigureAwait(false);
                cluster = new ClusterFigures(opened.Device.Id, opened.Device.Node, opened.IsRemote, opened.Device.NbdEndpoint, opened.Name);
                devices.Add(opened);
            }

            for (var i = devices.Count; i < options.Devices; i++)
            {
                devices.Add(await layer.CreateDeviceAsync(options.ToDeviceOptions(i)).ConfigureAwait(false));
            }

            var device = devices[0];
            if (options.Size > device.Capacity)
            {
                await DestroyAll(layer, devices).ConfigureAwait(false);
                throw new UsageException($"option --size: {options.Size} bytes is more than the device holds ({device.Capacity} bytes).");
            }

            var driver = device.Queue.Driver;
            await Console.Error.WriteLineAsync($"actorblk bench: {(devices.Count > 1 ? $"{devices.Count} devices, " : string.Empty)}{device.Name}: {driver.Description}").ConfigureAwait(false);
            var runs = devices.Select(d => new BenchRun(options, d, layer.Topology.Online)).ToArray();

            if (options.HotplugInterval is not null && layer.Topology.Online.Count < 2)
            {
                await DestroyAll(layer, devices).ConfigureAwait(false);
                throw new UsageException($"option --hotplug-interval: {layer.Topology.Online.Count} CPU online; at least two are needed (--possible-cpus).");
            }

            using var progress = options.Eta ?? (!options.Json && !Console.IsErrorRedirected) ? Progress(runs, options) : null;
            using var stopHotplug = new CancellationTokenSource();
            var hotplug = options.HotplugInterval is { } interval
                ? HotplugLoop.RunAsync(layer, interval, stopHotplug.Token)
                : Task.FromResult<HotplugFigures?>(null);
            var results = await Task.WhenAll(runs.Select(r => r.RunAsync())).ConfigureAwait(false);
            await stopHotplug.CancelAsync().ConfigureAwait(false);
            var hotplugFigures = await hotplug.ConfigureAwait(false);
            if (progress is not null)
            {
                await progress.DisposeAsync().ConfigureAwait(false);
                await Console.Error.WriteLineAsync().ConfigureAwait(false); // the status line stays, the report starts below it
            }

            var supervision = new SupervisionFigures();
            foreach (var d in devices)
            {
                supervision += await SupervisionOf(layer, d).ConfigureAwait(false);
            }

            var queues = devices.Select(d => d.Queue).ToArray();
            await DestroyAll(layer, devices).ConfigureAwait(false);
            var result = BenchResult.Combine(results) with
            {
                Supervision = supervision,
                Hotplug = hotplugFigures,
                DoubleCompletions = queues.Sum(q => q.DoubleCompletions),   // read after teardown, which completes too
                Cluster = cluster,
            };
            Console.Out.Write(options.Json ? BenchReport.Json(result) + "\n" : BenchReport.Human(result));
            if (result.Submitted != result.Completed)
            {
                await Console.Error.WriteLineAsync($"actorblk bench: {result.Submitted} I/Os were submitted but {result.Completed} completed.").ConfigureAwait(false);
                return LostIo;
            }

            if (result.DoubleCompletions != 0)
            {
                await Console.Error.WriteLineAsync($"actorblk bench: {result.DoubleCompletions} second completion(s) of an I/O were refused.").ConfigureAwait(false);
                return LostIo;
            }

            return 0;
        }
        finally
        {
            await system.Terminate().ConfigureAwait(false);
            await Serilog.Log.CloseAndFlushAsync().ConfigureAwait(false);
        }
    }

    private static async Task DestroyAll(BlockLayer layer, IEnumerable<IBlockDevice> devices)
    {
        foreach (var d in devices)
        {
            if (d is ClusterBlockDevice opened)
            {
                // A device of the cluster is closed, not destroyed (its local queue goes with the last handle).
                await opened.CloseAsync().ConfigureAwait(false);
            }
            else
            {
                await layer.DestroyDeviceAsync(d.Name).ConfigureAwait(false);
            }
        }
    }

    private static async Task<SupervisionFigures> SupervisionOf(BlockLayer layer, IBlockDevice device)
    {
        var info = await layer.GetDeviceInfoAsync(device.Name).ConfigureAwait(false);
        var faults = device.Queue.Driver is FaultInjectionDriver f
            ? new FaultTotals(f.Injected.Errors, f.Injected.Resource, f.Injected.Lost, f.Injected.Stalls, f.Injected.Crashes)
            : null;
        return new SupervisionFigures(info.Timeouts, info.Resets, info.DeviceErrors, faults);
    }

    // fio's status line on stderr (--eta), rewritten in place once a second while the run goes on.
    private static Timer Progress(BenchRun[] runs, BenchOptions options)
    {
        var started = Stopwatch.GetTimestamp();
        long lastIos = 0;
        var lastTime = started;
        return new Timer(_ =>
        {
            var now = Stopwatch.GetTimestamp();
            var ios = runs.Sum(r => r.CompletedSoFar);
            var rate = (ios - lastIos) / Stopwatch.GetElapsedTime(lastTime, now).TotalSeconds;
            lastIos = ios;
            lastTime = now;
            var elapsed = Stopwatch.GetElapsedTime(started, now);
            var total = (options.Runtime ?? TimeSpan.Zero) + options.RampTime;
            var eta = total > elapsed ? total - elapsed : TimeSpan.Zero;
            Console.Error.Write($"\rJobs: {options.NumJobs} [{options.PatternName}][{Sizes.Format(rate * options.BlockSize)}/s][{BenchReport.Count(rate)} IOPS][eta {eta:mm\\:ss}]   ");
        }, null, TimeSpan.FromSeconds(1), TimeSpan.FromSeconds(1));
    }
}
