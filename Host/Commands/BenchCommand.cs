using ActorBlk.Actors;
using ActorBlk.Actors.Clustering;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;
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

    /// <summary>Runs the bench with <paramref name="options"/> (parsed by <see cref="BenchCommandLine"/>).</summary>
    public static async Task<int> RunAsync(BenchOptions options)
    {
        // Fails early, with the option named, on a combination no device accepts.
        var configured = options.Config is null ? null : Configured(options);
        if (configured is null)
        {
            _ = options.ToDeviceOptions();
        }

        CheckOutputPaths(options);
        if (options.SizePercent is { } percent && configured is null && options.Join is null && options.FilePath is { } file && !Path.Exists(file))
        {
            // fio: "you need to specify size=" for a file that does not exist; the device would
            // create it at the default size, of which the share means nothing.
            throw new UsageException($"option --size: {percent}% is a share of an existing file's size, and {file} does not exist.");
        }

        foreach (var (option, share) in new[] { ("--offset", options.OffsetPercent), ("--offset_increment", options.OffsetIncrementPercent) })
        {
            if (share is > 0 && configured is null && options.Join is null && options.FilePath is { } missing && !Path.Exists(missing))
            {
                throw new UsageException($"option {option}: {share}% is a share of an existing file's size, and {missing} does not exist.");
            }
        }

        options = options with { LaidOutFrom = await LayOutFileAsync(options, configured).ConfigureAwait(false) };

        // SIGINT and SIGTERM stop the run, as fio's "terminating on signal": the jobs wind down,
        // the devices are removed in order and the report covers the run until the signal. Left
        // to the runtime, the signal would end the process under the running jobs (Akka's
        // shutdown hook removing the devices they use). Before the run there is nothing to
        // report: the bench exits at once. A second signal does not wait for the report.
        using var interrupt = new BenchInterrupt();

        // The timestamps' clock is fixed at its first read, before any device exists: --clocksource
        // when given, else the environment variable ACTORBLK_CLOCKSOURCE (TimestampClock reads it).
        if (ClockWarning(options.ClockSource, Environment.GetEnvironmentVariable(TimestampClock.EnvironmentVariable)) is { } warning)
        {
            await Console.Error.WriteLineAsync(warning).ConfigureAwait(false);
        }

        // Actor logging goes to stderr, so stdout carries the report alone (JSON stays parseable
        // when supervision has something to say).
        Serilog.Log.Logger = Logging.CreateConsoleLogger(Serilog.Events.LogEventLevel.Warning, toStandardError: true);
        var config = ConfigurationFactory.ParseString($$"""
            akka.loglevel = WARNING
            akka.stdout-loglevel = OFF
            akka.stdout-logger-class = "{{SerilogFallbackLogger.TypeName}}"
            akka.loggers = ["Akka.Logger.Serilog.SerilogLogger, Akka.Logger.Serilog"]
            akka.log-dead-letters = off
            """);
        if (options.PossibleCpus is { } possible)
        {
            config = ConfigurationFactory.ParseString($"actorblk.topology {{ source = simulated, simulated.cpus = {possible} }}").WithFallback(config);
        }

        // --join: a client member of the cluster (README, "Cluster") that opens the device wherever it lives.
        if (options.Join is not null && configured is null)
        {
            ClusterJoin.CheckDeviceAddress(options.Device);
        }

        config = options.Join is { } join
            ? ClusterJoin.Config(join, options.Config, config)
            : config.WithFallback(ActorBlkSettings.DefaultConfig());
        // The bench handles SIGINT and SIGTERM itself (BenchInterrupt); Akka's hook would stop the
        // system, and remove the devices, under the running jobs.
        config = ConfigurationFactory.ParseString("akka.coordinated-shutdown.run-by-clr-shutdown-hook = off").WithFallback(config);
        var bootstrap = BootstrapSetup.Create().WithConfig(config);
        var setup = Akka.Actor.Setup.ActorSystemSetup.Create(bootstrap);
        if (options.Join is not null)
        {
            // A member like any: serve's binding rule, and its TLS (pinned certificate, mutual
            // authentication) from the node's settings. Without the setup a bench could not join a
            // TLS cluster (Akka's own validation rejected the pinned self-signed certificate), and
            // an exposed address without TLS was bound unchecked.
            if (ActorBlk.Actors.Serialization.ActorBlkRemoting.CheckBinding(config) is { } insecure)
            {
                await Console.Error.WriteLineAsync($"actorblk: warning: {insecure}").ConfigureAwait(false);
            }

            if (ActorBlk.Actors.Serialization.ActorBlkRemoting.TlsSetup(config) is { } tls)
            {
                setup = Akka.Actor.Setup.ActorSystemSetup.Create(bootstrap, tls);
            }
        }

        using var system = ActorSystem.Create(options.Join is null ? "actorblk-bench" : NodeConfig.SystemName, setup);
        interrupt.BeforeExit = () => CoordinatedShutdown.Get(system).Run(CoordinatedShutdown.ClrExitReason.Instance).Wait(TimeSpan.FromSeconds(10));
        try
        {
            var layer = BlockLayer.Get(system);
            var devices = new List<IBlockDevice>();
            ClusterFigures? cluster = null;

            // --config: the file's devices, then its stacked devices, as serve creates them; the
            // bench drives the one --device names and removes them all in reverse order at the end.
            var owned = new List<IBlockDevice>();
            Task Teardown() => owned.Count > 0 ? DestroyAll(layer, Enumerable.Reverse(owned)) : DestroyAll(layer, devices);
            if (configured is not null)
            {
                if (options.Join is not null)
                {
                    await ClusterJoin.WaitUpAsync(system, ClusterJoin.Patience).ConfigureAwait(false);
                }

                foreach (var d in configured.Devices)
                {
                    owned.Add(await layer.CreateDeviceAsync(d).ConfigureAwait(false));
                }

                foreach (var stacked in configured.StackedDevices)
                {
                    await layer.CreateStackedDeviceAsync(stacked.Name).ConfigureAwait(false);
                    owned.Add(await layer.LoadTableAsync(stacked.Name, stacked.Table).ConfigureAwait(false));
                }

                devices.Add(owned.Single(d => d.Name == options.Device));
            }
            else if (options.Join is not null)
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
            var capacity = device.Capacity;
            if (!options.SizeGiven)
            {
                // fio's default (filesetup.c setup_files): the rest of the device after the offset;
                // size=N% is that share of the device's size (at most the rest), rounded down to
                // the block size (td_min_bs), 0% and 100% the whole rest, unrounded.
                options = options with { Size = options.RegionOf(0, capacity).Length };
            }

            // fio 3.33 fails a job whose offset is past the end (or leaves no block before it)
            // without --size, and runs the others; the bench refused the whole run.
            options = options with { FailedJobs = options.FailingJobs(capacity) };
            string? unusable = null;
            if (options.SizePercent is { } share and not (0 or 100) && (UInt128)(ulong)capacity * (uint)share / 100 < (ulong)options.BlockSize)
            {
                unusable = $"option --size: {share}% of the device's {capacity} bytes holds no block of {options.BlockSize} bytes.";
            }
            else if (options.Size > capacity)
            {
                unusable = $"option --size: {options.Size} bytes is more than the device holds ({capacity} bytes).";
            }
            else if (options.RegionProblem(capacity, device.LogicalBlockSize) is { } outside)
            {
                // fio's [offset, offset + size) of every job; the bench's file was laid out to it.
                unusable = outside;
            }
            else if (options.BlockSize % device.LogicalBlockSize != 0)
            {
                unusable = $"option --bs: {options.BlockSize} bytes is not a multiple of the device's {device.LogicalBlockSize}-byte logical block size.";
            }
            else if (device.IsReadOnly && options.ReadShare < 100)
            {
                unusable = $"option --rw: {options.PatternName} writes, and {device.Name} is read-only.";
            }
            else if (options.IoPoll && !device.Queue.CanPoll)
            {
                // Polled I/O needs poll queues (a null device with io_poll = on); without them the
                // first polled submission was refused mid-run and the bench failed with exit 1.
                unusable = $"option --io-poll: {device.Name} has no poll queues (only a null device with io_poll = on has them).";
            }

            if (unusable is not null)
            {
                await Teardown().ConfigureAwait(false);
                throw new UsageException(unusable);
            }

            options = options with { Regions = [.. Enumerable.Range(0, options.NumJobs).Select(job => options.RegionOf(job, capacity))] };

            // fio's disk utilisation (diskutil.c init_disk_util, at the job's setup): the disk a
            // file device lies on, read now and after the run; none for the other devices.
            var diskPath = configured is not null
                ? configured.Devices.FirstOrDefault(d => d.Name == options.Device && d.Driver == "file")?.Path
                : options.Join is null ? options.FilePath : null;
            var disks = diskPath is null ? null : DiskWatch.Start(diskPath);
            var description = device.Queue.BioDriver?.Description ?? device.Queue.Driver.Description;
            await Console.Error.WriteLineAsync($"actorblk bench: {(devices.Count > 1 ? $"{devices.Count} devices, " : string.Empty)}{device.Name}: {description}").ConfigureAwait(false);
            foreach (var job in options.FailedJobs)
            {
                await Console.Error.WriteLineAsync(options.JobFailure(job, capacity)).ConfigureAwait(false);
            }

            var runs = devices.Select(d => new BenchRun(options, d, layer.Topology.Online)).ToArray();

            if (options.HotplugInterval is not null && layer.Topology.Online.Count < 2)
            {
                await Teardown().ConfigureAwait(false);
                throw new UsageException($"option --hotplug-interval: {layer.Topology.Online.Count} CPU online; at least two are needed (--possible-cpus).");
            }

            using var progress = options.Eta ?? (options.Output == OutputFormat.Normal && !Console.IsErrorRedirected) ? Progress(runs, options) : null;
            using var stopReports = new CancellationTokenSource();
            // fio's bw and iops samples (bw_min ... iops_stddev in the JSON), every 500 ms; the
            // interim reports carry the samples taken so far, as fio's do.
            var sampler = new BenchSampler();
            var reports = options.StatusInterval is { } every
                ? new BenchStatusReports(every, BenchClock.System, () => BenchResult.Combine([.. runs.Select(r => r.Snapshot())]) with
                {
                    ReadSamples = sampler.Read,
                    WriteSamples = sampler.Write,
                    Disks = disks?.Read() ?? [],
                }, Console.Out, options.Output).RunAsync(stopReports.Token)
                : Task.CompletedTask;

            // An interim report that cannot be written (stdout's reader went away: `--status-interval=1
            // | head -2`) stops the run as a signal does, and the final report fails the same way
            // after the devices are removed. Before, the run went on to its end (a --runtime of an
            // hour ran an hour) writing into the closed pipe.
            _ = reports.ContinueWith(_ => interrupt.Stop(), CancellationToken.None, TaskContinuationOptions.OnlyOnFaulted | TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
            using var stopHotplug = new CancellationTokenSource();
            var hotplug = options.HotplugInterval is { } interval
                ? HotplugLoop.RunAsync(layer, interval, stopHotplug.Token)
                : Task.FromResult<HotplugFigures?>(null);
            var sampling = sampler.RunAsync(() => BenchResult.Combine([.. runs.Select(r => r.Snapshot(full: false))]), stopReports.Token);

            // The ramp of every run counts from the moment all of them have started (BenchRun.Started).
            var allStarted = Task.WhenAll(runs.Select(r => r.Started));
            BenchResult[] results;
            try
            {
                results = await Task.WhenAll(runs.Select(r => r.RunAsync(allStarted, interrupt.Begin()))).ConfigureAwait(false);
            }
            catch (InvalidBlockRequestException ex)
            {
                // The device refused an I/O at submission (it became read-only under the run, say):
                // a failed run with the device's reason, not a crash.
                interrupt.End();
                await stopHotplug.CancelAsync().ConfigureAwait(false);
                await stopReports.CancelAsync().ConfigureAwait(false);
                await Teardown().ConfigureAwait(false);
                throw new CommandFailedException($"the device refused an I/O: {ex.Message}");
            }

            interrupt.End();

            // fio's last update_io_ticks, once every job has ended.
            var diskFigures = disks?.Read() ?? [];
            await stopHotplug.CancelAsync().ConfigureAwait(false);
            await stopReports.CancelAsync().ConfigureAwait(false);
            try
            {
                await reports.ConfigureAwait(false);
            }
            catch (StandardOutputException)
            {
                // The run was stopped (above); the report below meets the same stdout, after the teardown.
            }

            await sampling.ConfigureAwait(false);
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
            await Teardown().ConfigureAwait(false);
            var result = BenchResult.Combine(results) with
            {
                Supervision = supervision,
                Hotplug = hotplugFigures,
                DoubleCompletions = queues.Sum(q => q.DoubleCompletions),   // read after teardown, which completes too
                Cluster = cluster,
                ReadSamples = sampler.Read,
                WriteSamples = sampler.Write,
                Disks = diskFigures,
            };
            Console.Out.Write(BenchReport.Render(result, options.Output));
            var written = true;
            try
            {
                WriteLogs(options, runs);
                if (options.Plot is { } plot)
                {
                    BenchPlot.Write(plot, result, [.. runs.SelectMany(r => r.Timelines ?? [])]);
                    await Console.Error.WriteLineAsync($"actorblk bench: plot written to {plot}").ConfigureAwait(false);
                }
            }
            catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
            {
                // The report is out; a log or plot that cannot be written fails the run, not the process.
                await Console.Error.WriteLineAsync($"actorblk bench: {ex.Message}").ConfigureAwait(false);
                written = false;
            }

            if (result.Errors > 0 && result.Read.Ios + result.Write.Ios == 0 && result.WentOffline.Count == 0)
            {
                // Every I/O failed: the report says how, the run failed (fio exits 1 on I/O errors).
                await Console.Error.WriteLineAsync($"actorblk bench: no I/O succeeded ({result.Errors} failed, the first with errno {-result.FirstError.ToErrno()}).").ConfigureAwait(false);
                return 1;
            }

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

            if (result.WentOffline.Count > 0)
            {
                await Console.Error.WriteLineAsync($"actorblk bench: {string.Join(", ", result.WentOffline)} went offline during the run (the run stopped there).").ConfigureAwait(false);
                return 1;
            }

            if (!written)
            {
                return 1;
            }

            // fio's exit status counts its failed jobs (backend.c reap_threads: exit_value++ for
            // each job with an error); held under 256, where an exit status would wrap to 0.
            return interrupt.Signal is not null ? BenchExit.Interrupted : Math.Min(options.FailedJobs.Count, 255);
        }
        finally
        {
            await system.Terminate().ConfigureAwait(false);
            await Serilog.Log.CloseAndFlushAsync().ConfigureAwait(false);
        }
    }

    /// <summary>
    /// Chooses the timestamps' clock: <paramref name="given"/> (<c>--clocksource</c>) when the
    /// command line has it, else what <paramref name="environment"/> (the value of
    /// <c>ACTORBLK_CLOCKSOURCE</c>) asks for, which <see cref="TimestampClock"/> reads at its first
    /// read. Returns the warning for stderr when the choice cannot be had (the counter is not
    /// usable here, or the clock was read already) or the variable names no clock (it then counts
    /// as auto); null otherwise.
    /// </summary>
    internal static string? ClockWarning(TimestampSource? given, string? environment)
    {
        string asked;
        TimestampSource source;
        if (given is { } option)
        {
            asked = $"--clocksource={option.ToString().ToLowerInvariant()}";
            source = option;
            if (!TimestampClock.Select(option))
            {
                return Unavailable(asked);
            }
        }
        else if (environment is null)
        {
            return null;
        }
        else if (!TimestampClock.TryParse(environment, out source))
        {
            return $"actorblk: {TimestampClock.EnvironmentVariable}={environment} is not auto, tsc (cpu) or monotonic (clock_gettime); timestamps use the {TimestampClock.Source.ToString().ToLowerInvariant()} clock";
        }
        else
        {
            asked = $"{TimestampClock.EnvironmentVariable}={environment}";
        }

        return source == TimestampSource.Tsc && TimestampClock.Source != TimestampSource.Tsc ? Unavailable(asked) : null;

        static string Unavailable(string asked) =>
            $"actorblk: {asked} is not available ({TimestampClock.FallbackReason ?? "the clock was read already"}); timestamps use the {TimestampClock.Source.ToString().ToLowerInvariant()} clock";
    }

    /// <summary>
    /// fio's layout of a job's file (filesetup.c <c>setup_files</c>: a regular file smaller than
    /// the job's offset + size is extended before the job opens it): a <c>--device=file:PATH</c>
    /// regular file smaller than <c>--offset</c> + <c>--size</c> (of the last job, with
    /// <c>--offset_increment</c>) grows to it, its bytes kept, the added range allocated, and
    /// fio's "Laying out IO file" line goes to stderr. A block device, a larger file (never shrunk)
    /// or a missing one (the device creates it at offset + size) is left as it is; a file that
    /// cannot be extended fails the run (exit 1) with the reason, before any device exists.
    /// Returns the file's size before it grew (the size <c>--offset=N%</c> is a share of), null
    /// when it was left as it is.
    /// </summary>
    private static async Task<long?> LayOutFileAsync(BenchOptions options, ActorBlkSettings? configured)
    {
        if (configured is not null || options.Join is not null || !options.SizeGiven || options.FilePath is not { } path)
        {
            return null;
        }

        // fio extends the file to the end of the job's region, offset + size, the offset found
        // from the file's size as it is (a share of it, with N%).
        var length = File.Exists(path) ? new FileInfo(path).Length : 0;
        var end = Enumerable.Range(0, options.NumJobs).Max(job => (Int128)options.StartOf(job, length) + options.Size);
        var extendTo = end > long.MaxValue ? long.MaxValue : (long)end;
        if (ActorBlk.Hardware.Drivers.File.FileBlockDriver.ExtendFile(path, extendTo, options.ToDeviceOptions().Name) is not null)
        {
            await Console.Error.WriteLineAsync($"{options.Name}: Laying out IO file (1 file / {extendTo >> 20}MiB)").ConfigureAwait(false);

            // The offsets stay those found from the size before the layout (fio's real_file_size).
            return length;
        }

        return null;
    }

    // fio opens its logs before the run; a directory that does not exist is known before anything starts.
    private static void CheckOutputPaths(BenchOptions options)
    {
        foreach (var (option, path) in new[] { ("--plot", options.Plot), ("--write_lat_log", options.LatLog), ("--write_iops_log", options.IopsLog) })
        {
            if (path is null)
            {
                continue;
            }

            // `--write_lat_log=` failed the run with Path.GetFullPath's ArgumentException and its
            // stack, exit 1 (an outside CLI fuzzing audit).
            if (string.IsNullOrWhiteSpace(path))
            {
                throw new UsageException($"option {option}: the path is empty.");
            }

            var directory = Path.GetDirectoryName(Path.GetFullPath(path));
            if (directory is not null && !Directory.Exists(directory))
            {
                throw new UsageException($"option {option}: the directory {directory} does not exist.");
            }
        }
    }

    // The devices of --config, checked before anything starts: --device must name one of them,
    // unless the bench joins a cluster: then a device the file does not define is opened from the
    // cluster, and the file gives the node's settings alone (its admin secret, TLS), none of its
    // devices being created (null). An operator audit found no way to give a client bench its
    // secret but a hocon.conf in the working directory.
    private static ActorBlkSettings? Configured(BenchOptions options)
    {
        ActorBlkSettings settings;
        try
        {
            settings = ActorBlkSettings.Create(NodeConfig.Load(options.Config!, port: null));
        }
        catch (Exception ex) when (ex is ConfigurationException or DeviceOptionsException)
        {
            throw new UsageException($"option --config: {ex.Message}");
        }

        var names = settings.Devices.Select(d => d.Name).Concat(settings.StackedDevices.Select(d => d.Name)).ToArray();
        if (!names.Contains(options.Device, StringComparer.Ordinal))
        {
            if (options.Join is not null)
            {
                return null;
            }

            throw new UsageException($"option --device: '{options.Device}' is not a device of {options.Config} (it has {(names.Length == 0 ? "none" : string.Join(", ", names))}).");
        }

        if (options.Devices > 1)
        {
            throw new UsageException("option --devices: with --config the bench drives the one device --device names.");
        }

        return settings;
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
                try
                {
                    await layer.DestroyDeviceAsync(d.Name).ConfigureAwait(false);
                }
                catch (KeyNotFoundException)
                {
                    // Removed already (the node is stopping): nothing is left to remove.
                }
            }
        }
    }

    private static async Task<SupervisionFigures> SupervisionOf(BlockLayer layer, IBlockDevice device)
    {
        RequestQueueProtocol.Info info;
        try
        {
            info = await layer.GetDeviceInfoAsync(device.Name).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is KeyNotFoundException or AskTimeoutException)
        {
            // Already removed (a cluster device's local queue goes when its owner node is downed),
            // or its actor no longer answers: the queue's own counters are what is left.
            return new SupervisionFigures(device.Queue.Stats.Timeouts, device.Queue.Stats.Resets, 0, null);
        }

        var faults = device.Queue.BioDriver is null && device.Queue.Driver is FaultInjectionDriver f
            ? new FaultTotals(f.Injected.Errors, f.Injected.Resource, f.Injected.Lost, f.Injected.Stalls, f.Injected.Crashes)
            : null;
        return new SupervisionFigures(info.Timeouts, info.Resets, info.DeviceErrors, faults);
    }

    // fio's status line on stderr (--eta), rewritten in place once a second while the run goes on.
    private static Timer Progress(BenchRun[] runs, BenchOptions options)
    {
        var line = new BenchStatusLine(options, BenchClock.System, () =>
        {
            var reads = runs.Sum(r => r.ReadsSoFar);
            return (reads, runs.Sum(r => r.CompletedSoFar) - reads, runs.Average(r => r.IssuedShare));
        }, () => runs.Select(r => r.RampStart).Where(at => at is not null).DefaultIfEmpty(null).Min());
        return new Timer(_ => Console.Error.Write($"\r{line.Next()}   "), null, TimeSpan.FromSeconds(1), TimeSpan.FromSeconds(1));
    }

    /// <summary>
    /// fio's per-job logs: PREFIX_lat.N.log and PREFIX_clat.N.log (the same values: submission is
    /// asynchronous and not timed apart, as fio with disable_slat, so PREFIX_slat.N.log is written
    /// empty), PREFIX_iops.N.log; N numbers the jobs from 1, device after device.
    /// </summary>
    internal static void WriteLogs(BenchOptions options, IReadOnlyList<BenchRun> runs)
    {
        var jobs = runs.SelectMany(r => r.JobLogs).ToList();
        for (var j = 0; j < jobs.Count; j++)
        {
            var n = j + 1;
            if (options.LatLog is { } lat)
            {
                var entries = IoLog.Merge(jobs[j], iops: false);
                foreach (var kind in new[] { "lat", "clat" })
                {
                    using var file = new StreamWriter($"{lat}_{kind}.{n}.log");
                    IoLog.Write(file, entries, options.LogOffset);
                }

                File.WriteAllText($"{lat}_slat.{n}.log", string.Empty);
            }

            if (options.IopsLog is { } iops)
            {
                using var file = new StreamWriter($"{iops}_iops.{n}.log");
                IoLog.Write(file, IoLog.Merge(jobs[j], iops: true), options.LogOffset);
            }
        }
    }
}
