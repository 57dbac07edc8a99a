using ActorBlk.Actors.Tests.Support;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers.Stacking;
using Akka.Configuration;
using Xunit;
using Xunit.Abstractions;

namespace ActorBlk.Actors.Tests;

/// <summary>
/// A mirror's log, as md's: a leg taken back and each sync pass starting and ending get a line
/// (an outside audit of a running cluster found only the leg-failure line). Logging at INFO here,
/// where the other specs keep to WARNING.
/// </summary>
public sealed class MirrorLogSpec : Akka.TestKit.Xunit2.TestKit
{
    private const int Block = 4096;
    private const long Region = 64 << 10;

    public MirrorLogSpec(ITestOutputHelper output)
        : base(ConfigurationFactory.ParseString("akka.loglevel = INFO").WithFallback(Configs.Simulated), output: output)
    {
    }

    private BlockLayer Layer => BlockLayer.Get(Sys);

    private Task<IBlockDevice> Leg(string name) =>
        Layer.CreateDeviceAsync(new DeviceOptions { Name = name, Size = 4 << 20, MemoryBacked = true });

    [Fact]
    public async Task A_re_add_a_replacement_and_a_check_log_the_leg_taken_back_and_each_pass_starting_and_done()
    {
        await Leg("la");
        var b = await Leg("lb");
        await Leg("lc");
        await Layer.CreateStackedDeviceAsync("mdl");
        var md = await Layer.LoadTableAsync("mdl", StackTable.Mirror(new MirrorOptions { RegionBytes = Region, AssumeClean = true }, "la", "lb"));
        var mirror = Assert.IsType<MirrorTarget>(md.Queue.BioDriver);
        await EventFilter.Warning(contains: "mdl: leg lb is faulty").ExpectOneAsync(async () =>
            await Layer.WriteAttributeAsync("block/mdl/md/dev-lb/state", "faulty"));
        await md.WriteAsync(0, new byte[Block]);
        await md.WriteAsync(5 * Region, new byte[Block]);

        // md: "md: recovery of RAID array md0", then "md: md0: recovery done."
        await EventFilter.Info(contains: "mdl: leg lb was re-added; it is rebuilding, 2 bitmap regions to recover (md/dev-lb/state, md/sync_completed)").ExpectOneAsync(() =>
            EventFilter.Info(contains: "mdl: recovery of RAID array started, 2 regions to do on lb (md/sync_action, md/sync_completed)").ExpectOneAsync(() =>
                EventFilter.Info(contains: "mdl: recovery done, 2 regions (md/sync_action)").ExpectOneAsync(async () =>
                {
                    await Layer.WriteAttributeAsync("block/mdl/md/dev-lb/state", "re-add");
                    await mirror.SyncIdle.WaitAsync(TimeSpan.FromSeconds(60));
                })));

        // Two blocks differ behind the mirror's back: "md: data-check of RAID array", "md: md0: data-check done."
        var data = new byte[Block];
        Array.Fill(data, (byte)7);
        await b.WriteAsync(MirrorSuperblock.DataOffset + (3 * Block), data);
        await b.WriteAsync(MirrorSuperblock.DataOffset + (300 * Block), data);
        await EventFilter.Info(contains: $"mdl: data-check of RAID array started, {mirror.Regions} regions to do on la, lb").ExpectOneAsync(() =>
            EventFilter.Info(contains: $"mdl: data-check done, {mirror.Regions} regions, {2 * Block >> 9} mismatched sectors (md/mismatch_cnt)").ExpectOneAsync(async () =>
            {
                await Layer.WriteAttributeAsync("block/mdl/md/sync_action", "check");
                await mirror.SyncIdle.WaitAsync(TimeSpan.FromSeconds(60));
            }));

        // A new device in the faulty slot owes every region.
        await Layer.WriteAttributeAsync("block/mdl/md/dev-lb/state", "faulty");
        await EventFilter.Info(contains: $"mdl: leg lc was added in place of the faulty leg; it is rebuilding, {mirror.Regions} bitmap regions to recover").ExpectOneAsync(() =>
            EventFilter.Info(contains: $"mdl: recovery done, {mirror.Regions} regions").ExpectOneAsync(async () =>
            {
                Assert.Equal("lb", await Layer.ReplaceMirrorLegAsync("mdl", 1, "lc"));
                await mirror.SyncIdle.WaitAsync(TimeSpan.FromSeconds(60));
            }));

        Assert.Equal(0, await Layer.DestroyDeviceAsync("mdl"));
    }

    [Fact]
    public async Task A_recovery_whose_leg_fails_mid_pass_logs_it_interrupted_at_warning()
    {
        // At 1 KiB/s the first recovery of 4 MiB takes over an hour: it is interrupted, not done.
        await Leg("ia");
        await Leg("ib");
        await Layer.CreateStackedDeviceAsync("mdi");
        var md = await Layer.LoadTableAsync("mdi", StackTable.Mirror(new MirrorOptions { RegionBytes = Region, SyncSpeedMinKiB = 1, SyncSpeedMaxKiB = 1 }, "ia", "ib"));
        var mirror = Assert.IsType<MirrorTarget>(md.Queue.BioDriver);

        // The pass copies (its first chunk done, it waits a minute for the next): failing the leg
        // before it took its legs would leave it nothing to do, and no pass to interrupt.
        await AwaitConditionAsync(() => Task.FromResult(mirror.SyncProgress.Done > 0), TimeSpan.FromSeconds(60), TimeSpan.FromMilliseconds(10));
        Assert.Equal("recover", mirror.CurrentSync?.Action);

        // md: "md: md0: recovery interrupted."
        await EventFilter.Warning(contains: "mdi: recovery interrupted after ").ExpectOneAsync(() =>
            EventFilter.Warning(contains: "mdi: leg ib is faulty").ExpectOneAsync(async () =>
            {
                await Layer.WriteAttributeAsync("block/mdi/md/dev-ib/state", "faulty");
                await mirror.SyncIdle.WaitAsync(TimeSpan.FromSeconds(60));
            }));

        Assert.Equal(0, await Layer.DestroyDeviceAsync("mdi"));
    }

    [Fact]
    public async Task A_pass_starting_while_the_table_is_loaded_is_logged_once()
    {
        // The first recovery of a new mirror starts as it is assembled, before the device's actor
        // subscribes; the actor reads CurrentSync after subscribing. Held here between the two, the
        // pass's SyncStarted is raised after the subscription and shows the same pass: before, it
        // was logged twice (an audit's 4 EiB mirror logged "recovery started" twice).
        await Leg("ra");
        await Leg("rb");
        await Layer.CreateStackedDeviceAsync("mdr");
        var release = new ManualResetEventSlim();
        var options = new MirrorOptions { RegionBytes = Region, BeforeSyncStartedRaised = _ => release.Wait(TimeSpan.FromSeconds(60)) };
        // The done line follows any second start line from the sync's thread: once it is seen,
        // every start line is counted.
        await EventFilter.Info(contains: "mdr: recovery of RAID array started").ExpectOneAsync(() =>
            EventFilter.Info(contains: "mdr: recovery done").ExpectOneAsync(async () =>
            {
                var md = await Layer.LoadTableAsync("mdr", StackTable.Mirror(options, "ra", "rb"));
                release.Set();
                await Assert.IsType<MirrorTarget>(md.Queue.BioDriver).SyncIdle.WaitAsync(TimeSpan.FromSeconds(60));
            }));

        Assert.Equal(0, await Layer.DestroyDeviceAsync("mdr"));
    }
}
