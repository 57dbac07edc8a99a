using System.Diagnostics;
using System.Text.RegularExpressions;
using ActorBlk.Actors;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;
using ActorBlk.Host.Bench;
using ActorBlk.Host.Tests.Support;
using ActorBlk.Testing;
using Akka.Actor;
using Akka.Cluster;
using Akka.Configuration;
using Xunit;
using Xunit.Abstractions;

namespace ActorBlk.Host.Tests;

/// <summary>
/// Issue 14 item 4 with processes: two `actorblk serve` nodes (a seed, and the owner of a device)
/// and a client node in the test process that joined them as `bench --join` does. The client drives
/// the owner's device at QD32; the owner is killed with SIGKILL, every I/O completes with an error
/// and none hangs; the owner is downed and its device leaves the client's registry; the owner
/// restarted at the same address serves the device again and the client's handle, never reopened,
/// works again.
/// </summary>
[Collection(ClusterProcessesCollection.Name)]
public sealed partial class ClusterNodeLossSpec(ITestOutputHelper output)
{
    private static readonly TimeSpan Within = TimeSpan.FromSeconds(120);

    [GeneratedRegex(@"Devices are addressable at akka\.tcp://actorblk@(?<node>127\.0\.0\.1:(?<port>\d+))/user/actorblk")]
    private static partial Regex AddressLine();

    private static string Config(string devices)
    {
        var path = Path.Combine(Path.GetTempPath(), $"actorblk-loss-{Guid.NewGuid():N}.conf");
        File.WriteAllText(path, File.ReadAllText(RepositoryFiles.Hocon()) + $$"""

            actorblk.devices = [ {{devices}} ]
            actorblk.topology.source = simulated
            actorblk.nbd.listen = "127.0.0.1:0"
            # A crash is decided sooner than the shipped 20 s.
            akka.cluster.split-brain-resolver.stable-after = 3s
            """);
        return path;
    }

    private static byte[] Pattern(int length, byte seed) => [.. Enumerable.Range(0, length).Select(i => (byte)(seed + (i * 3)))];

    [Fact]
    public async Task A_killed_owner_fails_every_io_of_its_remote_device_and_once_restarted_the_same_handle_works_again()
    {
        var configA = Config("{ name = seed0, size = 1m }");
        var configB = Config("{ name = vol0, size = 16m, memory_backed = 1 }");
        try
        {
            await using var a = ActorBlkProcess.Start("serve", "--config", configA, "--port", "0");
            var nodeA = AddressLine().Match(await a.WaitForLineAsync(l => AddressLine().IsMatch(l), Within)).Groups["node"].Value;
            var b = ActorBlkProcess.Start("serve", "--config", configB, "--port", "0", "--seed", nodeA);
            var matchB = AddressLine().Match(await b.WaitForLineAsync(l => AddressLine().IsMatch(l), Within));
            var nodeB = matchB.Groups["node"].Value;

            // The port is kept from other processes until the owner is back on it (seconds after the kill).
            var port = matchB.Groups["port"].Value;
            using var keptB = ReservedPort.Of(int.Parse(port, System.Globalization.CultureInfo.InvariantCulture));

            var overrides = ConfigurationFactory.ParseString("""
                akka.loglevel = WARNING
                akka.loggers = ["Akka.Event.DefaultLogger"]
                akka.coordinated-shutdown.run-by-actor-system-terminate = on
                """);
            using var client = ActorSystem.Create("actorblk", ClusterJoin.Config(nodeA, configA, overrides));
            await using var disk = await ClusterJoin.OpenAsync(client, "vol0", new DeviceOptions { Completion = CompletionContinuation.ThreadPool, IoTimeoutMs = 10_000 }, Within);
            Assert.True(disk.IsRemote);
            Assert.Equal(nodeB, disk.Device.Node);
            var layer = BlockLayer.Get(client);

            // QD32: 32 workers write and read back their own block until an I/O fails.
            var running = 0;
            var started = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            var workers = Enumerable.Range(0, 32).Select(w => Task.Run(async () =>
            {
                var block = Pattern(4096, (byte)w);
                var back = new byte[4096];
                var first = true;
                while (true)
                {
                    var status = await disk.ExecuteAsync(BlockOp.Write, w * 4096L, 4096, block).AsTask().WaitAsync(Within);
                    if (status == BlockStatus.Ok)
                    {
                        status = await disk.ExecuteAsync(BlockOp.Read, w * 4096L, 4096, back).AsTask().WaitAsync(Within);
                    }

                    if (status != BlockStatus.Ok)
                    {
                        return (status, Stopwatch.GetTimestamp());
                    }

                    Assert.Equal(block, back);
                    if (first && Interlocked.Increment(ref running) == 32)
                    {
                        started.TrySetResult();
                    }

                    first = false;
                }
            })).ToArray();
            await started.Task.WaitAsync(Within);

            // kill -9 of the owner.
            var killed = Stopwatch.GetTimestamp();
            await b.KillAsync();
            await b.DisposeAsync();

            var ends = await Task.WhenAll(workers).WaitAsync(Within);
            Assert.All(ends, e => Assert.NotEqual(BlockStatus.Ok, e.status));
            var firstError = Stopwatch.GetElapsedTime(killed, ends.Min(e => e.Item2));
            var lastError = Stopwatch.GetElapsedTime(killed, ends.Max(e => e.Item2));
            output.WriteLine($"kill -9 to first error {firstError.TotalMilliseconds:0} ms, to the last of 32 workers {lastError.TotalMilliseconds:0} ms; statuses {string.Join(", ", ends.GroupBy(e => e.status).Select(g => $"{g.Key} x{g.Count()}"))}");
            Assert.Equal(BlockStatus.Offline, await AwaitStatusAsync(disk, BlockStatus.Offline));
            Assert.Equal(0L, disk.Queue.DoubleCompletions);

            // Downed by the split-brain resolver and removed: the device leaves the registry.
            await layer.ClusterDevices.WaitForAsync(d => d.All(e => e.Node != nodeB), new CancellationTokenSource(Within).Token);

            // Restarted at the same address: the same handle works again.
            await using var again = ActorBlkProcess.Start("serve", "--config", configB, "--port", port, "--seed", nodeA);
            await again.WaitForLineAsync(l => l.Contains($"actorblk@{nodeB}/user/actorblk", StringComparison.Ordinal), Within);
            var data = Pattern(4096, 201);
            Assert.Equal(BlockStatus.Ok, await AwaitStatusAsync(disk, BlockStatus.Ok, BlockOp.Write, data));
            var read = new byte[4096];
            await disk.ReadAsync(0, read).AsTask().WaitAsync(Within);
            Assert.Equal(data, read);

            await disk.CloseAsync();
            await CoordinatedShutdown.Get(client).Run(CoordinatedShutdown.ClusterLeavingReason.Instance).WaitAsync(Within);
            again.Terminate();
            Assert.Equal(0, await again.WaitForExitAsync(Within));
            a.Terminate();
            Assert.Equal(0, await a.WaitForExitAsync(Within));
        }
        finally
        {
            File.Delete(configA);
            File.Delete(configB);
        }
    }

    /// <summary>
    /// A node the cluster downs did not stop because it was asked to: `serve` exits 1 and says
    /// why, so a supervisor that restarts failed services restarts it (an outside audit saw exit
    /// 0, the code of a clean SIGTERM). Two nodes; the oldest is killed; keep-oldest downs the
    /// survivor (README, "Cluster": losing the oldest of 2 stops the survivor too).
    /// </summary>
    [Fact]
    public async Task A_node_the_cluster_downs_exits_1_and_says_so()
    {
        var configA = Config("{ name = seed1, size = 1m }");
        var configB = Config("{ name = vol1, size = 1m }");
        try
        {
            await using var a = ActorBlkProcess.Start("serve", "--config", configA, "--port", "0");
            var nodeA = AddressLine().Match(await a.WaitForLineAsync(l => AddressLine().IsMatch(l), Within)).Groups["node"].Value;
            await using var b = ActorBlkProcess.Start("serve", "--config", configB, "--port", "0", "--seed", nodeA);
            await b.WaitForLineAsync(l => AddressLine().IsMatch(l), Within);

            // b is a member once a's device reached its registry.
            await b.WaitForLineAsync(l => l.Contains($"Cluster device seed1@{nodeA}: live", StringComparison.Ordinal), Within);

            await a.KillAsync();
            Assert.Equal(1, await b.WaitForExitAsync(Within));
            Assert.Contains("ActorBlk node stopped: the cluster downed it", b.Output, StringComparison.Ordinal);
        }
        finally
        {
            File.Delete(configA);
            File.Delete(configB);
        }
    }

    // Repeats one I/O (each bounded) until it completes with the expected status, for at most Within.
    private static async Task<BlockStatus> AwaitStatusAsync(IBlockDevice device, BlockStatus expected, BlockOp op = BlockOp.Read, byte[]? data = null)
    {
        var buffer = data ?? new byte[4096];
        using var limit = new CancellationTokenSource(Within);
        using var tick = new PeriodicTimer(TimeSpan.FromMilliseconds(100));
        var status = BlockStatus.Ok;
        do
        {
            status = await device.ExecuteAsync(op, 0, 4096, buffer).AsTask().WaitAsync(Within);
            if (status == expected)
            {
                return status;
            }
        }
        while (await tick.WaitForNextTickAsync(limit.Token));
        return status;
    }
}
