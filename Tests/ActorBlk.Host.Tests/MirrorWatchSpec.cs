using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers.Stacking;
using ActorBlk.Samples.MirrorJournal;
using ActorBlk.Testing;
using Xunit;

namespace ActorBlk.Host.Tests;

/// <summary>
/// The MirrorJournal sample's watcher of the mirror, on data-plane devices: its lines about a leg
/// that comes back must agree with each other. A README walk-through killed the second node under
/// the journal and restarted it; the sample printed "resyncing 23 dirty regions of 64" and then
/// "copied 33 of 64 regions (the dirty ones only)": it read the bitmap when its poll saw the leg
/// rebuilding, after the resync (at sync_speed_max, with the journal stopped) had copied 10.
/// </summary>
public sealed class MirrorWatchSpec : IAsyncLifetime
{
    private const long Region = 64 << 10;
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(60);

    private readonly MirrorDevices _devices = new(4L << 20);

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync() => await _devices.DisposeAsync();

    [Fact]
    public async Task A_leg_taken_back_is_said_to_owe_the_regions_the_resync_then_copies()
    {
        var (a, _) = Leg("journal-leg0");
        var (b, fb) = Leg("journal-leg1");

        // 64 KiB/s on a clock the spec moves: the resync copies a 64 KiB region a second, so the
        // watcher can look while the leg is rebuilding with one region of three copied.
        var clock = new ManualTimeProvider();
        var mirror = await MirrorTarget.AssembleAsync("journal", [a, b],
            new MirrorOptions { RegionBytes = Region, AssumeClean = true, SyncSpeedMinKiB = 64, SyncSpeedMaxKiB = 64 }, clock);
        var journal = Serve(mirror);
        var writer = new JournalWriter(journal, mirror, journal.Capacity / JournalRecord.SlotBytes, depth: 1, rate: 0);
        var lines = new List<string>();
        // Check reads only the mirror's states and the writer; the block layer is for progress lines.
        var watch = new MirrorWatch(null!, mirror, writer, ["journal-leg0", "journal-leg1@127.0.0.1:4054"], TimeSpan.FromSeconds(1), lines.Add);

        fb.Dead = true;
        var block = new byte[JournalRecord.SlotBytes];
        foreach (var region in new[] { 1, 4, 7 })
        {
            await journal.WriteAsync(region * Region, block);
        }

        watch.Check();
        Assert.Contains(lines, l => l.StartsWith("mirror degraded: leg journal-leg1@127.0.0.1:4054 is faulty", StringComparison.Ordinal));
        fb.Dead = false;
        await mirror.ReAddAsync(1);

        // Each second moved lets the pass count the region it copied and copy the next, after
        // which it waits on its throttle again (two timers: the throttle's and the bitmap
        // daemon's). The count is read only once the pass waits again: read at once after the
        // move, it could still be 0 on a loaded machine, and a second move let a second region
        // through (one CI run: 2 resynced).
        await Task.WhenAny(clock.WhenTimersPendingAsync(2), mirror.SyncIdle).WaitAsync(Patience);
        while (mirror.ResyncedRegions == 0)
        {
            clock.Advance(TimeSpan.FromSeconds(1));
            await Task.WhenAny(clock.WhenTimersPendingAsync(2), mirror.SyncIdle).WaitAsync(Patience);
        }

        // The copied region's bit is cleared at the recovery's next checkpoint (every 1/16 of
        // the mirror), not at the region's end: until then a crash copies it again.
        Assert.Equal(1, mirror.ResyncedRegions);
        Assert.Equal(3, mirror.DirtyRegions());

        watch.Check();
        Assert.Contains("leg journal-leg1@127.0.0.1:4054 is back: re-added, resyncing 3 dirty regions of", lines[^1], StringComparison.Ordinal);

        while (!mirror.SyncIdle.IsCompleted)
        {
            await Task.WhenAny(clock.WhenTimersPendingAsync(2), mirror.SyncIdle).WaitAsync(Patience);
            clock.Advance(TimeSpan.FromSeconds(1));
        }

        await mirror.SyncIdle.WaitAsync(Patience);
        watch.Check();
        Assert.Contains("resync done: leg journal-leg1@127.0.0.1:4054 is in sync again; copied 3 of", lines[^1], StringComparison.Ordinal);
    }

    // The watcher's poll runs on its own: it may see a leg rebuilding after the mirror took it back
    // and before the mirror's LegTakenBack reached the watcher (the state changes under the mirror's
    // lock, the event is raised after it). It then reads the bitmap, and the event's count, landing
    // after the look, must not be kept for the leg's next return, which owes other regions.
    [Fact]
    public async Task A_leg_seen_rebuilding_before_its_event_is_never_said_to_owe_an_earlier_return_s_regions()
    {
        var (a, _) = Leg("journal-leg0");
        var (b, fb) = Leg("journal-leg1");
        var clock = new ManualTimeProvider();
        var mirror = await MirrorTarget.AssembleAsync("journal", [a, b],
            new MirrorOptions { RegionBytes = Region, AssumeClean = true, SyncSpeedMinKiB = 64, SyncSpeedMaxKiB = 64 }, clock);
        var journal = Serve(mirror);
        var writer = new JournalWriter(journal, mirror, journal.Capacity / JournalRecord.SlotBytes, depth: 1, rate: 0);
        var lines = new List<string>();
        MirrorWatch? watch = null;

        // Subscribed before the watcher, so it runs first: the poll looking in that gap.
        mirror.LegTakenBack += _ => watch!.Check();
        watch = new MirrorWatch(null!, mirror, writer, ["journal-leg0", "journal-leg1"], TimeSpan.FromSeconds(1), lines.Add);
        var block = new byte[JournalRecord.SlotBytes];

        // Out with three regions written meanwhile, back, resynced.
        fb.Dead = true;
        foreach (var region in new[] { 1, 4, 7 })
        {
            await journal.WriteAsync(region * Region, block);
        }

        watch.Check();
        fb.Dead = false;
        await mirror.ReAddAsync(1);
        Assert.Contains("leg journal-leg1 is back: re-added, resyncing 3 dirty regions of", lines[^1], StringComparison.Ordinal);
        await ResyncAsync(mirror, clock);
        watch.Check();
        Assert.Contains("resync done: leg journal-leg1 is in sync again; copied 3 of", lines[^1], StringComparison.Ordinal);

        // Out again with one region written: it owes one, not the three of the return before.
        fb.Dead = true;
        await journal.WriteAsync(2 * Region, block);
        watch.Check();
        fb.Dead = false;
        await mirror.ReAddAsync(1);
        Assert.Contains("leg journal-leg1 is back: re-added, resyncing 1 dirty regions of", lines[^1], StringComparison.Ordinal);
        await ResyncAsync(mirror, clock);
        watch.Check();
        Assert.Contains("resync done: leg journal-leg1 is in sync again; copied 1 of", lines[^1], StringComparison.Ordinal);
    }

    // Moves the clock a second at a time (a 64 KiB region a second) until the resync is over.
    private static Task ResyncAsync(MirrorTarget mirror, ManualTimeProvider clock) => MirrorSync.PumpUntilIdleAsync(clock, mirror, Patience);

    // Legs that advertise no write cache (DeviceOptions.WriteCache off).
    private (BlockDevice Device, FaultyLeg Faults) Leg(string name) => _devices.Leg(name, writeCache: false);

    private BlockDevice Serve(MirrorTarget target) => _devices.Serve(target, "journal");
}
