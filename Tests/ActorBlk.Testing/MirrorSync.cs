using ActorBlk.Hardware.Drivers.Stacking;

namespace ActorBlk.Testing;

/// <summary>Drives a mirror's resync or recovery on a <see cref="ManualTimeProvider"/>.</summary>
public static class MirrorSync
{
    /// <summary>
    /// Waits until the sync sleeps on the manual clock beside the bitmap daemon (two timers, its
    /// throttle's and the daemon's), or has finished.
    /// </summary>
    public static Task AwaitTimerAsync(ManualTimeProvider clock, MirrorTarget mirror, TimeSpan patience) =>
        Task.WhenAny(clock.WhenTimersPendingAsync(2), mirror.SyncIdle).WaitAsync(patience);

    /// <summary>Moves the clock a second at a time, each once the sync waits on it, until the sync has finished.</summary>
    public static async Task PumpUntilIdleAsync(ManualTimeProvider clock, MirrorTarget mirror, TimeSpan patience)
    {
        while (!mirror.SyncIdle.IsCompleted)
        {
            await AwaitTimerAsync(clock, mirror, patience).ConfigureAwait(false);
            clock.Advance(TimeSpan.FromSeconds(1));
        }

        await mirror.SyncIdle.WaitAsync(patience).ConfigureAwait(false);
    }
}
