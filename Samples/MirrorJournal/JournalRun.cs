using System.Diagnostics;
using System.Globalization;
using ActorBlk.Actors;
using ActorBlk.Actors.Hosting;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers.Stacking;
using Akka.Actor;
using Akka.Configuration;
using Akka.Hosting;
using Akka.Logger.Serilog;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Serilog;
using Serilog.Events;
using AkkaCluster = Akka.Cluster.Cluster;

namespace ActorBlk.Samples.MirrorJournal;

/// <summary>
/// One run of the sample: this process is the cluster's first node (its oldest member, the one a
/// 2-node cluster keeps when the other is lost; README "Cluster"). It serves the local leg, waits
/// for the second node's leg, builds the mirror, appends records while watching the mirror, and
/// at the end waits for the mirror to be whole, stops it and verifies every record on each leg.
/// </summary>
public sealed class JournalRun(JournalOptions options, TextWriter output)
{
    private readonly Stopwatch _clock = Stopwatch.StartNew();
    private readonly CancellationTokenSource _stop = new();
    private readonly CancellationTokenSource _giveUp = new();
    private readonly CancellationTokenSource _watchStop = new();
    private Task _watching = Task.CompletedTask;
    private LegNode? _node2;
    private volatile bool _ctrlC;

    /// <summary>Runs the sample; 0 when every record verified on both legs.</summary>
    public async Task<int> RunAsync()
    {
        Console.CancelKeyPress += OnCancel;
        try
        {
            return await RunCoreAsync();
        }
        catch (Exception ex)
        {
            Say($"FAILED: {ex.GetType().Name}: {ex.Message}");
            await _stop.CancelAsync();
            return 1;
        }
        finally
        {
            Console.CancelKeyPress -= OnCancel;
        }
    }

    private async Task<int> RunCoreAsync()
    {
        Directory.CreateDirectory(options.Dir);
        var configPath = options.Config ?? Locate("hocon.conf") ?? throw new InvalidOperationException("no hocon.conf in the working directory or beside this program; pass --config PATH.");
        var configText = await File.ReadAllTextAsync(configPath);
        var node2Config = Path.Combine(options.Dir, "node2.conf");
        await File.WriteAllTextAsync(node2Config, configText + $$"""


            # The second node of the MirrorJournal sample: one file device, the journal mirror's second leg.
            actorblk.devices = [ { name = {{JournalOptions.RemoteLeg}}, driver = file, path = "{{Path.Combine(options.Dir, "leg1.img")}}", size = {{options.LegBytes >> 20}}m, bs = 4096 } ]
            actorblk.stacked-devices = []
            """);

        using var host = BuildHost(ConfigurationFactory.ParseString(configText));
        await host.StartAsync();
        try
        {
            var system = host.Services.GetRequiredService<ActorSystem>();
            var layer = BlockLayer.Get(system);
            var self = await FormClusterAsync(system);

            // The second leg: a device of the second node, found in the cluster's registry.
            var actorblk = options.ActorBlk ?? LocateActorBlk();
            string legName;
            if (options.Chaos)
            {
                var node2 = await StartNode2Async(actorblk, node2Config, 0, self);
                legName = $"{JournalOptions.RemoteLeg}@{node2.Address}";
            }
            else
            {
                legName = options.Leg ?? JournalOptions.RemoteLeg;
                Say($"waiting for device {legName} on a second node{(options.Leg is null ? "; start it in another terminal:" : string.Empty)}");
                if (options.Leg is null)
                {
                    Say($"  dotnet {actorblk ?? "actorblk.dll"} serve --config {node2Config} --port {(options.Port == 0 ? 4054 : options.Port + 1)} --seed {self} --nbd-listen 127.0.0.1:0");
                }
            }

            var leg = await WaitForLegAsync(layer, legName);
            Say($"second leg: {leg.Id}, {leg.Capacity >> 20} MiB, {leg.LogicalBlockSize}-byte blocks, NBD {leg.NbdEndpoint}");

            var (journal, mirror) = await BuildMirrorAsync(layer, leg.Id);
            var slots = journal.Capacity / JournalRecord.SlotBytes;
            var limit = options.Chaos || options.Records == 0 ? slots : Math.Min(options.Records, slots);
            Say($"journal: {slots} slots of {JournalRecord.SlotBytes} bytes; appending {(options.Chaos ? "until the chaos steps are done" : $"{limit} records")} " +
                $"at {(options.Rate > 0 ? $"{options.Rate:0} records/s" : "full speed")}, {options.Depth} in flight, each with FUA; Ctrl-C stops");

            var writer = new JournalWriter(journal, mirror, slots, options.Depth, options.Rate);
            var watch = new MirrorWatch(layer, mirror, writer, [JournalOptions.LocalLeg, leg.Id], options.Interval, Say);
            _watching = watch.RunAsync(_watchStop.Token);
            var writing = Task.Run(() => writer.RunAsync(limit, _stop.Token));
            if (options.Chaos)
            {
                try
                {
                    await ChaosAsync(layer, mirror, writer, writing, actorblk!, node2Config, self);
                }
                catch (OperationCanceledException) when (_ctrlC)
                {
                    // README: Ctrl-C stops the journal and goes on to the verification.
                    Say("chaos: stopped by Ctrl-C; the remaining chaos steps are skipped");
                }

                await _stop.CancelAsync();
            }

            await writing;
            if (writer.Failure is null)
            {
                await journal.FlushAsync(); // every append is FUA already; this is the journal's close
            }

            var stoppedBy = writer.Failure is not null ? $"an append failed: {writer.Failure.Message}"
                : writer.Full ? "the journal is full" : _ctrlC ? "Ctrl-C" : options.Chaos ? "the chaos steps are done" : "done";
            Say($"journal stopped ({stoppedBy}): {writer.Written} records written, {writer.WrittenDegraded} of them while degraded");

            // Both legs must be whole before each can be checked on its own.
            if (mirror.Degraded > 0 && !mirror.IsFailed)
            {
                Say(mirror.SyncAction == "idle"
                    ? $"waiting for the mirror to be whole again (degraded {mirror.Degraded}): bring the second node back; Ctrl-C to give up"
                    : $"waiting for the resync to finish (sync_action {mirror.SyncAction}); Ctrl-C to give up");
                await WaitUntilAsync(() => mirror.Degraded == 0 && mirror.SyncAction == "idle", "the mirror being whole again", _giveUp.Token, swallow: true);
            }

            await _watchStop.CancelAsync();
            await _watching;
            watch.Check();
            Say(watch.Progress(writer.Written));
            var whole = mirror.Degraded == 0;

            // A clean stop: the bitmap is cleared and the superblocks marked clean, the remote leg's handle closed.
            await layer.DestroyDeviceAsync(JournalOptions.Mirror);
            Say($"mirror {JournalOptions.Mirror} stopped; reading the journal back from each leg on its own");

            var results = new List<LegVerification>();
            var local = layer.TryGetDevice(JournalOptions.LocalLeg, out var found) ? found : throw new InvalidOperationException($"{JournalOptions.LocalLeg} was not created");
            results.Add(await VerifyAsync(local, $"{JournalOptions.LocalLeg} (local)", writer.Written));
            if (whole)
            {
                await using var remote = await layer.OpenAsync(leg.Id);
                results.Add(await VerifyAsync(remote, $"{leg.Id} (remote)", writer.Written));
            }
            else
            {
                Say($"verify {leg.Id} (remote): not verified, the leg never came back in sync");
            }

            var ok = writer.Failure is null && whole && results.All(r => r.Ok) && results.Select(r => r.Sha256).Distinct().Count() == 1;
            if (options.Chaos && (writer.WrittenDegraded == 0 || watch.Resyncs == 0))
            {
                Say("chaos: the run did not see both a degraded journal and a resync");
                ok = false;
            }

            Say(ok
                ? $"verified: both legs hold all {writer.Written} records, identical (sha256 {results[0].Sha256[..16]}...)"
                : "NOT verified: see above");
            return ok ? 0 : 1;
        }
        catch (OperationCanceledException ex) when (_ctrlC)
        {
            Say($"stopped by Ctrl-C ({ex.Message}); NOT verified");
            await _stop.CancelAsync();
            return 1;
        }
        catch (Exception ex)
        {
            Say($"FAILED: {ex.GetType().Name}: {ex.Message}");
            await _stop.CancelAsync();
            return 1;
        }
        finally
        {
            await _watchStop.CancelAsync();
            await _watching;
            if (_node2 is not null)
            {
                var code = await _node2.StopAsync(options.Patience);
                Say($"second node stopped (exit code {code?.ToString(CultureInfo.InvariantCulture) ?? "-"})");
                await _node2.DisposeAsync();
            }

            await host.StopAsync();
            await Log.CloseAndFlushAsync();
        }
    }

    // The embedded node: the shared hocon.conf (remoting, serializers, split-brain resolver) with
    // this node's port and log level, no devices of the file but the local leg.
    private IHost BuildHost(Config shared)
    {
        var config = ConfigurationFactory.ParseString($"""
            akka.loglevel = {options.LogLevel switch { LogEventLevel.Error => "ERROR", LogEventLevel.Warning => "WARNING", _ => "INFO" }}
            akka.stdout-loglevel = ERROR
            akka.remote.dot-netty.tcp.port = {options.Port}
            # This node forms the cluster by joining itself (FormClusterAsync); the second node seeds from it.
            akka.cluster.seed-nodes = []
            akka.cluster.log-info = off
            # The lost node's connection errors are expected here; the mirror's lines say what happened.
            akka.remote.log-remote-lifecycle-events = off
            # Stopping the sample stops the node; nothing else runs coordinated shutdown.
            akka.coordinated-shutdown.run-by-clr-shutdown-hook = off
            actorblk.devices = []
            actorblk.stacked-devices = []
            """).WithFallback(shared)
            // Gossip may arrive before anything touches Distributed Data: its serializer must be known from the start.
            .WithFallback(Akka.DistributedData.DistributedData.DefaultConfig());

        // The node's own log (Akka's and ActorBlk's, through Serilog as in `actorblk serve`) goes to
        // stderr, so stdout carries the sample's report alone.
        Log.Logger = new LoggerConfiguration()
            .MinimumLevel.Is(options.LogLevel)
            // Remoting's error for the killed node's dropped association (an internal type): expected, and the mirror's lines report the loss.
            .Filter.ByExcluding(e => e.Exception?.GetType().FullName == "Akka.Remote.EndpointDisassociatedException")
            .WriteTo.Console(outputTemplate: "[{Timestamp:HH:mm:ss.fff} {Level:u3}] {Message:lj}{NewLine}{Exception}",
                formatProvider: CultureInfo.InvariantCulture, standardErrorFromLevel: LogEventLevel.Verbose)
            .CreateLogger();

        // TLS remoting as `actorblk serve` sets it up (the certificate, mutual authentication, the
        // pin): without it Akka validated the chain itself and refused the pinned self-signed
        // certificate README's "Security" makes, so with such a hocon.conf the second node could
        // never join (an outside TLS audit).
        var tls = ActorBlk.Actors.Serialization.ActorBlkRemoting.TlsSetup(config);
        var builder = Host.CreateApplicationBuilder();
        builder.Logging.ClearProviders();
        builder.Services.AddSingleton<IHostLifetime, QuietLifetime>();
        builder.Services.AddAkka("actorblk", (akka, _) => (tls is null ? akka : akka.AddSetup(tls))
            .AddHocon(config, HoconAddMode.Prepend)
            .ConfigureLoggers(loggers =>
            {
                loggers.ClearLoggers();
                loggers.AddSerilogLogging();
            })
            .WithActorBlk(new ActorBlkOptions
            {
                Devices =
                {
                    new DeviceOptions
                    {
                        Name = JournalOptions.LocalLeg,
                        Driver = "file",
                        Path = Path.Combine(options.Dir, "leg0.img"),
                        Size = options.LegBytes,
                        BlockSize = 4096,
                    },
                },
            }));
        return builder.Build();
    }

    private async Task<string> FormClusterAsync(ActorSystem system)
    {
        var cluster = AkkaCluster.Get(system);
        var up = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        cluster.RegisterOnMemberUp(() => up.TrySetResult());
        await cluster.JoinAsync(cluster.SelfAddress);
        await up.Task.WaitAsync(options.Patience);
        var self = $"{cluster.SelfAddress.Host}:{cluster.SelfAddress.Port}";
        Say($"node 1 is up at {self} (the cluster's first node); local leg {JournalOptions.LocalLeg} on {Path.Combine(options.Dir, "leg0.img")}");
        return self;
    }

    private async Task<LegNode> StartNode2Async(string? actorblk, string config, int port, string seed)
    {
        if (actorblk is null || !File.Exists(actorblk))
        {
            throw new InvalidOperationException($"--chaos needs actorblk.dll ({actorblk ?? "not found beside this program or in the repository's Host build"}); pass --actorblk PATH.");
        }

        var node = await LegNode.StartAsync(actorblk, config, port, seed, Path.Combine(options.Dir, "node2.log"), options.Patience);
        _node2 = node;
        Say($"chaos: second node started (pid {node.Pid}) at {node.Address}; its log is {Path.Combine(options.Dir, "node2.log")}");
        return node;
    }

    private async Task<Actors.Clustering.ClusterDevice> WaitForLegAsync(BlockLayer layer, string name)
    {
        // Live, and exported: `serve` publishes its NBD endpoint just after its devices.
        using var limit = Limit(_stop.Token);
        var at = name.Contains('@', StringComparison.Ordinal);
        try
        {
            await layer.ClusterDevices.WaitForAsync(
                d => d.Any(e => (at ? e.Id == name : e.Name == name) && e.State == Actors.Clustering.ClusterDeviceStates.Live && e.NbdEndpoint.Length > 0), limit.Token);
            return layer.ClusterDevices.Resolve(name);
        }
        catch (OperationCanceledException) when (!_stop.IsCancellationRequested)
        {
            throw new TimeoutException($"no live device {name} appeared in the cluster within {options.Patience.TotalSeconds} s.");
        }
        catch (OperationCanceledException)
        {
            throw new OperationCanceledException($"before device {name} appeared; nothing was written");
        }
    }

    // mdadm --create: the old metadata on both legs is cleared, so the mirror is new and copies
    // the first leg onto the second whole before the journal starts.
    private async Task<(IBlockDevice Journal, MirrorTarget Mirror)> BuildMirrorAsync(BlockLayer layer, string legId)
    {
        var zeroes = new byte[JournalVerifier.MirrorDataOffset];
        var local = layer.TryGetDevice(JournalOptions.LocalLeg, out var found) ? found : throw new InvalidOperationException($"{JournalOptions.LocalLeg} was not created");
        await local.WriteAsync(0, zeroes, Hardware.Requests.RequestFlags.Fua);
        await using (var remote = await layer.OpenAsync(legId))
        {
            await remote.WriteAsync(0, zeroes, Hardware.Requests.RequestFlags.Fua);
        }

        await layer.CreateStackedDeviceAsync(JournalOptions.Mirror);
        var journal = await layer.LoadTableAsync(JournalOptions.Mirror, StackTable.Mirror(new MirrorOptions { RegionBytes = options.RegionBytes }, JournalOptions.LocalLeg, legId));
        var mirror = (MirrorTarget)journal.Queue.BioDriver!;
        Say($"mirror {JournalOptions.Mirror}: raid1 over {JournalOptions.LocalLeg} and {legId}, {journal.Capacity >> 10} KiB, {mirror.Regions} regions of {mirror.RegionBytes >> 10} KiB");
        Say($"initial sync: copying {JournalOptions.LocalLeg} onto {legId} (a new mirror)");
        await WaitUntilAsync(() => mirror.Degraded == 0 && mirror.SyncAction == "idle", "the initial sync", _stop.Token);
        Say($"initial sync done: copied {mirror.ResyncedRegions} of {mirror.Regions} regions");
        return (journal, mirror);
    }

    // kill -9 of the second node while the journal runs; once the cluster has downed it and the
    // journal went on degraded, the node is started again at the same address and the mirror takes
    // its leg back by itself.
    private async Task ChaosAsync(BlockLayer layer, MirrorTarget mirror, JournalWriter writer, Task writing, string actorblk, string config, string self)
    {
        var lost = _node2!;
        await WrittenAsync(writer, writing, options.KillAt);

        // Its port is kept from other programs from before the kill until the node is back on it.
        using var kept = lost.KeepPort();
        Say($"chaos: kill -9 of the second node (pid {lost.Pid}) after {writer.Written} records");
        await lost.DisposeAsync();
        _node2 = null;

        await WaitUntilAsync(() => mirror.Degraded > 0, "the mirror marking the lost leg faulty", _stop.Token);
        var degradedAt = writer.Written;
        using (var limit = Limit(_stop.Token))
        {
            try
            {
                await layer.ClusterDevices.WaitForAsync(d => d.All(e => e.Node != lost.Address), limit.Token);
            }
            catch (OperationCanceledException) when (!_stop.IsCancellationRequested)
            {
                throw new TimeoutException($"the cluster did not remove the killed node {lost.Address} within {options.Patience.TotalSeconds} s.");
            }
        }

        Say($"chaos: the second node is out of the cluster (downed by the split-brain resolver) after {writer.Written} records");
        await WrittenAsync(writer, writing, degradedAt + options.DegradedRecords);

        var port = int.Parse(lost.Address[(lost.Address.LastIndexOf(':') + 1)..], CultureInfo.InvariantCulture);
        Say($"chaos: restarting the second node at {lost.Address} after {writer.Written} records ({writer.WrittenDegraded} written while degraded)");
        await StartNode2Async(actorblk, config, port, self);
        kept?.Dispose();
        await WaitUntilAsync(() => mirror.Degraded == 0 && mirror.SyncAction == "idle", "the mirror taking the leg back and resyncing it", _stop.Token);
        await WrittenAsync(writer, writing, writer.Written + options.AfterRecords);
    }

    private async Task WrittenAsync(JournalWriter writer, Task writing, long count)
    {
        using var limit = Limit(_stop.Token);
        await Task.WhenAny(writer.WhenWritten(count), writing, Task.Delay(Timeout.Infinite, limit.Token));
        if (writer.Written < count && _ctrlC)
        {
            throw new OperationCanceledException($"stopped by Ctrl-C at {writer.Written} records.");
        }

        if (writer.Written < count)
        {
            throw new InvalidOperationException($"the journal stopped at {writer.Written} records before {count} (failed, full, stopped, or stuck for {options.Patience.TotalSeconds} s): {writer.Failure?.Message ?? "no error"}.");
        }
    }

    // Polls the mirror's state (it has no change events) for at most the patience.
    private async Task WaitUntilAsync(Func<bool> condition, string what, CancellationToken cancel, bool swallow = false)
    {
        using var limit = Limit(cancel);
        using var tick = new PeriodicTimer(TimeSpan.FromMilliseconds(100));
        try
        {
            while (!condition())
            {
                await tick.WaitForNextTickAsync(limit.Token);
            }
        }
        catch (OperationCanceledException) when (swallow)
        {
        }
        catch (OperationCanceledException) when (cancel.IsCancellationRequested)
        {
            throw new OperationCanceledException($"stopped while waiting for {what}.");
        }
        catch (OperationCanceledException)
        {
            throw new TimeoutException($"{what} did not happen within {options.Patience.TotalSeconds} s.");
        }
    }

    private CancellationTokenSource Limit(CancellationToken cancel)
    {
        var limit = CancellationTokenSource.CreateLinkedTokenSource(cancel);
        limit.CancelAfter(options.Patience);
        return limit;
    }

    private async Task<LegVerification> VerifyAsync(IBlockDevice leg, string name, long records)
    {
        var result = await JournalVerifier.VerifyAsync(leg, records);
        Say(result.Ok
            ? $"verify {name}: {result.Good} of {records} records ok (sequence, length, crc32c, payload), sha256 {result.Sha256[..16]}..."
            : $"verify {name}: {result.Bad} of {records} records BAD, first: {result.FirstProblem}");
        return result;
    }

    private void OnCancel(object? sender, ConsoleCancelEventArgs e)
    {
        e.Cancel = true;
        _ctrlC = true;
        if (!_stop.IsCancellationRequested)
        {
            Say("Ctrl-C: stopping the journal (again to give up waiting)");
            _stop.Cancel();
        }
        else
        {
            _giveUp.Cancel();
        }
    }

    private void Say(string line)
    {
        lock (output)
        {
            output.WriteLine(string.Create(CultureInfo.InvariantCulture, $"[{_clock.Elapsed.TotalSeconds,6:0.0}s] {line}"));
            output.Flush();
        }
    }

    private static string? Locate(string file) =>
        new[] { Environment.CurrentDirectory, AppContext.BaseDirectory }.Select(d => Path.Combine(d, file)).FirstOrDefault(File.Exists);

    // actorblk.dll beside this program (the test's output directory), else the repository's Host
    // build of the same configuration.
    private static string? LocateActorBlk()
    {
        var beside = Path.Combine(AppContext.BaseDirectory, "actorblk.dll");
        if (File.Exists(beside))
        {
            return beside;
        }

        var configuration = AppContext.BaseDirectory.Contains("/Debug/", StringComparison.Ordinal) ? "Debug" : "Release";
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            if (File.Exists(Path.Combine(dir.FullName, "ActorBlk.sln")))
            {
                var built = Path.Combine(dir.FullName, "Host", "bin", configuration, "net10.0", "actorblk.dll");
                return File.Exists(built) ? built : null;
            }
        }

        return null;
    }

    // The host's lifetime does nothing: Ctrl-C belongs to the run (stop the journal, then verify).
    private sealed class QuietLifetime : IHostLifetime
    {
        public Task WaitForStartAsync(CancellationToken cancellationToken) => Task.CompletedTask;

        public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;
    }
}
