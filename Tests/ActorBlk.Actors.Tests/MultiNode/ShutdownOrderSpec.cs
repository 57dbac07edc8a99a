using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers.Stacking;
using Akka.Actor;
using Xunit;

namespace ActorBlk.Actors.Tests.MultiNode;

/// <summary>
/// README "Devices": a node's shutdown tears down its stacked devices first, then the devices they
/// are built on, as md arrays stop before their members. A mirror's remote leg is a device of its
/// own (the handle's local queue), which the mirror does not hold: torn down in the same wave, it
/// could go first, and the mirror logged the leg faulty while its node stopped (a cluster audit).
/// </summary>
[Collection(ClusterCollection.Name)]
public sealed class ShutdownOrderSpec : Akka.TestKit.Xunit2.TestKit
{
    private const long LegBytes = (16L << 20) + MirrorSuperblock.DataOffset;

    private static readonly TimeSpan Setup = TimeSpan.FromSeconds(90);

    public ShutdownOrderSpec()
        : base(Support.Configs.Simulated)
    {
    }

    private static DeviceOptions Memory(string name) => new() { Name = name, Size = LegBytes, MemoryBacked = true, PollQueues = 0 };

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task A_node_stopping_stops_its_mirror_before_the_mirrors_remote_leg(bool nested)
    {
        var a = ClusterNode.Start("a");
        await using var _a = a;
        var b = ClusterNode.Start("b");
        await using var _b = b;
        await a.JoinAsync(a, Setup);
        await b.JoinAsync(a, Setup);
        a.ExportNbd();
        b.ExportNbd();
        await a.Layer.CreateDeviceAsync(Memory("legr"));
        await b.Layer.CreateDeviceAsync(Memory("legl"));
        await b.WaitForDevicesAsync(d => d.Any(e => e.Name == "legr" && e.NbdEndpoint.Length > 0), Setup);
        await b.Layer.CreateStackedDeviceAsync("md0");
        var md0 = await b.Layer.LoadTableAsync("md0", StackTable.Mirror(new MirrorOptions { RegionBytes = 256 << 10 }, "legl", $"legr@{a.Name}"));
        var mirror = (MirrorTarget)md0.Queue.BioDriver!;
        await mirror.SyncIdle.WaitAsync(Setup);
        await md0.WriteAsync(0, new byte[4096]);
        if (nested)
        {
            // A linear device over the mirror, and a device nothing is built on: the linear goes
            // first, then the mirror, then its legs, and nothing is left.
            await b.Layer.CreateDeviceAsync(Memory("solo"));
            await b.Layer.CreateStackedDeviceAsync("lin0");
            await b.Layer.LoadTableAsync("lin0", StackTable.Linear("md0"));
        }

        var warnings = CreateTestProbe(b.System);
        b.System.EventStream.Subscribe(warnings.Ref, typeof(Akka.Event.Warning));
        await CoordinatedShutdown.Get(b.System).Run(CoordinatedShutdown.ClrExitReason.Instance).WaitAsync(Setup);

        // Both legs were in sync when the mirror stopped; no leg was taken for faulty.
        Assert.Equal(MirrorLegState.InSync, mirror.LegState(0));
        Assert.Equal(MirrorLegState.InSync, mirror.LegState(1));
        var logged = new List<string>();
        while (warnings.HasMessages)
        {
            logged.Add($"{((Akka.Event.LogEvent)warnings.ReceiveOne(TimeSpan.Zero)!).Message}");
        }

        Assert.DoesNotContain(logged, m => m.Contains("is faulty", StringComparison.Ordinal));
        Assert.Empty(b.Layer.Devices);
    }
}
