using System.Text.RegularExpressions;
using ActorBlk.Actors;
using ActorBlk.Host.Commands;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers.Stacking;
using ActorBlk.Hardware.Requests;
using ActorBlk.Host.Tests.Support;
using ActorBlk.Testing;
using Akka.Actor;
using Akka.Cluster;
using Akka.Configuration;
using Xunit;
using Xunit.Abstractions;

namespace ActorBlk.Host.Tests;

/// <summary>
/// Issue 13 item 6 with real nodes: the test process is the cluster's seed (its oldest member,
/// the one a 2-node cluster keeps, README "Cluster") and holds a mirror whose legs are devices of
/// an `actorblk serve` process that joined it. That process is killed with SIGKILL under a
/// verified write load: no caller sees an error and every acknowledged write reads back; restarted
/// at the same address, its leg is re-added by itself and resynced for the dirty regions only,
/// after which both legs hold the same data block for block. A mirror whose legs are all on the
/// killed node fails every I/O with Offline, and nothing hangs.
/// </summary>
[Collection(ClusterProcessesCollection.Name)]
public sealed partial class MirrorNodeLossSpec(ITestOutputHelper output)
{
    // Liveness bounds for a loaded 2-core machine (process start, failure detection, downing, resync).
    private static readonly TimeSpan Within = TimeSpan.FromSeconds(120);

    private const int Block = 4096;
    private const long LegBytes = 64L << 20;

    // Where a leg's data starts: after the mirror's 64 KiB metadata area (MirrorSuperblock.DataOffset, README "Mirrors").
    private const long LegDataOffset = 64 << 10;

    [GeneratedRegex(@"Devices are addressable at akka\.tcp://actorblk@(?<node>127\.0\.0\.1:(?<port>\d+))/user/actorblk")]
    private static partial Regex AddressLine();

    private static string Config(string devices)
    {
        var path = Path.Combine(Path.GetTempPath(), $"actorblk-mirror-{Guid.NewGuid():N}.conf");
        File.WriteAllText(path, File.ReadAllText(RepositoryFiles.Hocon()) + $$"""

            actorblk.devices = [ {{devices}} ]
            actorblk.topology.source = simulated
            actorblk.nbd.listen = "127.0.0.1:0"
            # A crash is decided sooner than the shipped 20 s; a starved heartbeat is not one.
            akka.cluster.split-brain-resolver.stable-after = 3s
            akka.cluster.failure-detector.acceptable-heartbeat-pause = 8s
            """);
        return path;
    }

    // The block's number and the version are in its first bytes.
    private static byte[] Stamp(long block, int version) => BlockStamp.Labelled(block, version, label: block);

    // The mirror's node: an actor system in this process that forms the cluster (it is the oldest).
    private static async Task<(ActorSystem System, string Node)> StartSeedAsync(string config)
    {
        var overrides = ConfigurationFactory.ParseString("""
            akka.loglevel = WARNING
            akka.loggers = ["Akka.Event.DefaultLogger"]
            akka.cluster.log-info = off
            akka.coordinated-shutdown.run-by-actor-system-terminate = on
            actorblk.devices = []
            actorblk.stacked-devices = []
            """);
        var system = ActorSystem.Create(NodeConfig.SystemName, overrides
            .WithFallback(NodeConfig.Load(config, port: 0))
            .WithFallback(Akka.DistributedData.DistributedData.DefaultConfig()));
        var cluster = Cluster.Get(system);
        var up = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        cluster.RegisterOnMemberUp(() => up.TrySetResult());
        await cluster.JoinAsync(cluster.SelfAddress).WaitAsync(Within);
        await up.Task.WaitAsync(Within);
        return (system, $"{cluster.SelfAddress.Host}:{cluster.SelfAddress.Port}");
    }

    private static async Task<(ActorBlkProcess Process, string Node, string Port)> StartServeAsync(string config, string seed, string port = "0")
    {
        var process = ActorBlkProcess.Start("serve", "--config", config, "--port", port, "--seed", seed);
        var match = AddressLine().Match(await process.WaitForLineAsync(l => AddressLine().IsMatch(l), Within));
        return (process, match.Groups["node"].Value, match.Groups["port"].Value);
    }

    private static async Task WaitForDevicesAsync(BlockLayer layer, Func<IReadOnlyList<Actors.Clustering.ClusterDevice>, bool> condition)
    {
        using var limit = new CancellationTokenSource(Within);
        await layer.ClusterDevices.WaitForAsync(condition, limit.Token);
    }

    // Polls a condition (every 100 ms, for at most Within); a timeout names what was awaited.
    private static async Task WaitUntilAsync(Func<bool> condition, Func<string> what)
    {
        using var limit = new CancellationTokenSource(Within);
        using var tick = new PeriodicTimer(TimeSpan.FromMilliseconds(100));
        while (!condition())
        {
            try
            {
                await tick.WaitForNextTickAsync(limit.Token);
            }
            catch (OperationCanceledException)
            {
                throw new TimeoutException($"not within {Within}: {what()}");
            }
        }
    }

    [Fact]
    public async Task Killing_the_node_of_a_leg_under_verified_writes_costs_no_write_and_its_return_resyncs_only_the_dirty_regions()
    {
        var seedConfig = Config(string.Empty);
        var legPath = Path.Combine(Path.GetTempPath(), $"actorblk-mirror-legb-{Guid.NewGuid():N}.img");
        var legConfig = Config($"{{ name = legb, driver = file, path = \"{legPath}\", size = {LegBytes >> 20}m, direct = off }}");
        var (system, nodeA) = await StartSeedAsync(seedConfig);
        try
        {
            var layer = BlockLayer.Get(system);
            var (b, nodeB, portB) = await StartServeAsync(legConfig, nodeA);
            await using var _b = b;

            // The port is kept from other processes until the node is back on it (seconds after the kill).
            using var keptB = ReservedPort.Of(int.Parse(portB, System.Globalization.CultureInfo.InvariantCulture));
            await WaitForDevicesAsync(layer, d => d.Any(e => e.Id == $"legb@{nodeB}" && e.NbdEndpoint.Length > 0));

            // The mirror: a local memory-backed leg and the file device of the other node.
            var lega = await layer.CreateDeviceAsync(new DeviceOptions { Name = "lega", Size = LegBytes, MemoryBacked = true });
            await layer.CreateStackedDeviceAsync("md0");
            var md = await layer.LoadTableAsync("md0", StackTable.Mirror(new MirrorOptions { RegionBytes = 64 << 10, AssumeClean = true }, "lega", $"legb@{nodeB}"));
            var mirror = (MirrorTarget)md.Queue.BioDriver!;
            Assert.True(mirror.Regions > 1000);
            var remoteLeg = mirror.Legs[1].Name;

            // Verified random writes (8 writers x 75: at most 600 regions dirty of 1023); the
            // 150th write to be issued kills the leg's node with SIGKILL, the load goes on.
            var issued = 0;
            Task? kill = null;
            var (acknowledged, errors) = await VerifiedWriters.RunAsync(md, Block, writers: 8, writesEach: 75, (block, version) =>
            {
                if (Interlocked.Increment(ref issued) == 150)
                {
                    kill = Task.Run(b.KillAsync);
                }

                return Stamp(block, version);
            }).WaitAsync(Within);
            Assert.NotNull(kill);
            await kill.WaitAsync(Within);

            // No caller saw an error; the leg is faulty and the mirror says it is degraded.
            Assert.Equal(0, errors);
            Assert.Equal(MirrorLegState.Faulty, mirror.LegState(1));
            Assert.Equal(1, mirror.Degraded);
            Assert.Equal("1\n", layer.ReadAttribute("block/md0/md/degraded"));
            Assert.Equal("faulty\n", layer.ReadAttribute($"block/md0/md/dev-{remoteLeg}/state"));

            // Every acknowledged write reads back, from the surviving leg.
            var back = new byte[Block];
            var verified = 0;
            for (var block = 0; block < acknowledged.Length; block++)
            {
                if (acknowledged[block] != 0)
                {
                    await md.ReadAsync((long)block * Block, back).AsTask().WaitAsync(Within);
                    Assert.True(Stamp(block, acknowledged[block]).AsSpan().SequenceEqual(back), $"block {block} lost version {acknowledged[block]}");
                    verified++;
                }
            }

            Assert.True(verified > 100, $"{verified} blocks verified");
            var dirty = mirror.DirtyRegions();
            var resyncedBefore = mirror.ResyncedRegions;
            Assert.InRange(dirty, 1, mirror.Regions - 1);

            // Downed and removed: the device leaves the registry. Then the node is back at the same
            // address with the same file: the mirror re-adds the leg by itself and copies the dirty regions.
            await WaitForDevicesAsync(layer, d => d.All(e => e.Node != nodeB));
            var (again, _, _) = await StartServeAsync(legConfig, nodeA, portB);
            await using var _again = again;
            await WaitUntilAsync(() => mirror.LegState(1) == MirrorLegState.InSync && mirror.SyncAction == "idle",
                () => $"leg {remoteLeg} is {mirror.LegState(1)}, sync_action {mirror.SyncAction}, resynced {mirror.ResyncedRegions - resyncedBefore} of {dirty} dirty regions");
            var resynced = mirror.ResyncedRegions - resyncedBefore;
            output.WriteLine($"{verified} blocks verified after the kill; {dirty} dirty regions of {mirror.Regions}, {resynced} resynced");
            Assert.Equal(dirty, resynced);
            Assert.Equal(0, mirror.Degraded);
            Assert.Equal("in_sync\n", layer.ReadAttribute($"block/md0/md/dev-{remoteLeg}/state"));

            // Both legs' data areas (after the 64 KiB metadata area) are equal block for block.
            await using var legb = await layer.OpenAsync($"legb@{nodeB}");
            var left = new byte[1 << 20];
            var right = new byte[1 << 20];
            for (long at = 0; at < mirror.DataBytes; at += left.Length)
            {
                var length = (int)Math.Min(left.Length, mirror.DataBytes - at);
                await lega.ReadAsync(LegDataOffset + at, left.AsMemory(0, length)).AsTask().WaitAsync(Within);
                await legb.ReadAsync(LegDataOffset + at, right.AsMemory(0, length)).AsTask().WaitAsync(Within);
                for (var x = 0; x < length; x += Block)
                {
                    Assert.True(left.AsSpan(x, Block).SequenceEqual(right.AsSpan(x, Block)), $"the legs differ in the mirror's block at byte {at + x}");
                }
            }

            await legb.CloseAsync();
            Assert.Equal(0, await layer.DestroyDeviceAsync("md0").WaitAsync(Within));
            Assert.Equal(0, await layer.DestroyDeviceAsync("lega").WaitAsync(Within));
            again.Terminate();
            Assert.Equal(0, await again.WaitForExitAsync(Within));
        }
        finally
        {
            await CoordinatedShutdown.Get(system).Run(CoordinatedShutdown.ClusterLeavingReason.Instance).WaitAsync(Within);
            File.Delete(seedConfig);
            File.Delete(legConfig);
            File.Delete(legPath);
        }
    }

    [Fact]
    public async Task A_mirror_whose_legs_are_all_on_a_killed_node_fails_every_io_with_offline_and_nothing_hangs()
    {
        var seedConfig = Config(string.Empty);
        var legConfig = Config("{ name = legc0, size = 16m, memory_backed = 1 }, { name = legc1, size = 16m, memory_backed = 1 }");
        var (system, nodeA) = await StartSeedAsync(seedConfig);
        try
        {
            var layer = BlockLayer.Get(system);
            var (c, nodeC, _) = await StartServeAsync(legConfig, nodeA);
            await using var _c = c;
            await WaitForDevicesAsync(layer, d => d.Count(e => e.Node == nodeC && e.Name.StartsWith("legc", StringComparison.Ordinal) && e.NbdEndpoint.Length > 0) == 2);
            await layer.CreateStackedDeviceAsync("md1");
            var md = await layer.LoadTableAsync("md1", StackTable.Mirror(new MirrorOptions { RegionBytes = 64 << 10, AssumeClean = true }, $"legc0@{nodeC}", $"legc1@{nodeC}"));
            var mirror = (MirrorTarget)md.Queue.BioDriver!;

            // 16 workers write and read back their own block until an I/O fails.
            var running = 0;
            var started = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            var workers = Enumerable.Range(0, 16).Select(w => Task.Run(async () =>
            {
                var block = Stamp(w, 1);
                var back = new byte[Block];
                var first = true;
                while (true)
                {
                    var status = await md.ExecuteAsync(BlockOp.Write, w * (long)Block, Block, block).AsTask().WaitAsync(Within);
                    if (status == BlockStatus.Ok)
                    {
                        status = await md.ExecuteAsync(BlockOp.Read, w * (long)Block, Block, back).AsTask().WaitAsync(Within);
                    }

                    if (status != BlockStatus.Ok)
                    {
                        return status;
                    }

                    Assert.Equal(block, back);
                    if (first && Interlocked.Increment(ref running) == 16)
                    {
                        started.TrySetResult();
                    }

                    first = false;
                }
            })).ToArray();
            await started.Task.WaitAsync(Within);

            await c.KillAsync();

            // Every worker's I/O ends, with Offline; the mirror has failed and later I/O fails at once.
            var statuses = await Task.WhenAll(workers).WaitAsync(Within);
            Assert.All(statuses, s => Assert.Equal(BlockStatus.Offline, s));
            Assert.True(mirror.IsFailed);
            Assert.Equal(BlockStatus.Offline, await md.ExecuteAsync(BlockOp.Read, 0, Block, new byte[Block]).AsTask().WaitAsync(Within));
            Assert.Equal(BlockStatus.Offline, await md.ExecuteAsync(BlockOp.Write, 0, Block, new byte[Block]).AsTask().WaitAsync(Within));
            await Assert.ThrowsAsync<BlockIoException>(() => md.FlushAsync().AsTask().WaitAsync(Within));
            Assert.Equal("offline", (await layer.GetDeviceInfoAsync("md1").WaitAsync(Within)).Health);
            Assert.Equal(0L, md.Queue.DoubleCompletions);

            // The failed mirror is removed without waiting for anything.
            Assert.Equal(0, await layer.DestroyDeviceAsync("md1").WaitAsync(Within));
        }
        finally
        {
            await CoordinatedShutdown.Get(system).Run(CoordinatedShutdown.ClusterLeavingReason.Instance).WaitAsync(Within);
            File.Delete(seedConfig);
            File.Delete(legConfig);
        }
    }

    [Fact]
    public async Task A_seed_whose_hocon_mirror_names_a_leg_of_a_node_that_joins_later_forms_the_cluster_and_serves_the_mirror_once_the_leg_appears()
    {
        // The shipped topology in a file: the mirror's node is the seed (no --seed), its table
        // names legb@B; B joins it afterwards. The seed must form the cluster before it creates
        // its devices, or B could never join and the table would wait for legb in vain.
        // Both ports are chosen before either node starts (A's table names B's); each is kept from
        // other processes until its node listens on it.
        using var reservedA = ReservedPort.Any();
        using var reservedB = ReservedPort.Any();
        var (portA, portB) = (reservedA.Port, reservedB.Port);
        var configA = Config("{ name = lega, size = 16m, memory_backed = 1 }");
        File.AppendAllText(configA, $"\nactorblk.stacked-devices = [ {{ name = md0, type = mirror, members = [lega, \"legb@127.0.0.1:{portB}\"], assume-clean = on }} ]\n");
        var configB = Config("{ name = legb, size = 16m, memory_backed = 1 }");
        try
        {
            await using var a = ActorBlkProcess.Start("serve", "--config", configA, "--port", portA.ToString(System.Globalization.CultureInfo.InvariantCulture));
            await using var b = ActorBlkProcess.Start("serve", "--config", configB, "--port", portB.ToString(System.Globalization.CultureInfo.InvariantCulture), "--seed", $"127.0.0.1:{portA}");
            await a.WaitForLineAsync(l => l.Contains("Serving md0: stacked device", StringComparison.Ordinal) && l.Contains($"legb-127.0.0.1-{portB}", StringComparison.Ordinal), Within);
            await a.WaitForLineAsync(l => AddressLine().IsMatch(l), Within);

            await using var list = ActorBlkProcess.Start("devices", "--node", $"127.0.0.1:{portA}");
            Assert.Equal(0, await list.WaitForExitAsync(Within));
            Assert.EndsWith("raid1 2/2 in_sync", list.StandardOutput.Split('\n', StringSplitOptions.RemoveEmptyEntries).Single(l => l.StartsWith("md0", StringComparison.Ordinal)), StringComparison.Ordinal);

            b.Terminate();
            Assert.Equal(0, await b.WaitForExitAsync(Within));
            a.Terminate();
            Assert.Equal(0, await a.WaitForExitAsync(Within));
        }
        finally
        {
            File.Delete(configA);
            File.Delete(configB);
        }
    }
}
