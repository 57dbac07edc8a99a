using System.Diagnostics;
using ActorBlk.Actors;

namespace ActorBlk.Host.Bench;

/// <summary>What <c>--hotplug-interval</c> did while the load ran.</summary>
/// <param name="IntervalMs">The interval between events.</param>
/// <param name="Events">CPU offline and online events the topology actor carried out.</param>
/// <param name="Remaps">Queue re-maps (freeze, drain, re-map, unfreeze of one device) those events caused.</param>
/// <param name="TopologyVersion">The topology version after the last event.</param>
/// <param name="MaxEventMs">The longest an event took, from sending it to every device running again.</param>
internal sealed record HotplugFigures(int IntervalMs, long Events, long Remaps, long TopologyVersion, double MaxEventMs);

/// <summary>
/// Sends CPU hotplug events while a bench runs: every interval the next CPU (1, 2, ... in turn; CPU 0
/// stays, as the boot CPU does) goes offline, and at the following tick it comes back online.
/// </summary>
internal static class HotplugLoop
{
    public static async Task<HotplugFigures?> RunAsync(BlockLayer layer, TimeSpan interval, CancellationToken stop)
    {
        var online = layer.Topology.Online.ToArray();
        var candidates = online.Where(c => c != online[0]).ToArray();
        long events = 0, remaps = 0, version = 0;
        var longest = TimeSpan.Zero;
        var next = 0;
        int? offline = null;
        using var timer = new PeriodicTimer(interval);
        try
        {
            while (await timer.WaitForNextTickAsync(stop).ConfigureAwait(false))
            {
                var cpu = offline ?? candidates[next++ % candidates.Length];
                var started = Stopwatch.GetTimestamp();

                // The event runs to the end even when the load stops meanwhile: a CPU is never left
                // half re-mapped, and the devices are destroyed only after it.
                var changed = await layer.SetCpuOnlineAsync(cpu, online: offline is not null, CancellationToken.None).ConfigureAwait(false);
                var took = Stopwatch.GetElapsedTime(started);
                longest = took > longest ? took : longest;
                offline = offline is null ? cpu : null;
                events++;
                remaps += changed.Remapped;
                version = changed.Version;
            }
        }
        catch (OperationCanceledException)
        {
            // The load finished.
        }

        // Leave the machine as it was found.
        if (offline is { } down)
        {
            var changed = await layer.SetCpuOnlineAsync(down, online: true, CancellationToken.None).ConfigureAwait(false);
            events++;
            remaps += changed.Remapped;
            version = changed.Version;
        }

        return new HotplugFigures((int)interval.TotalMilliseconds, events, remaps, version, longest.TotalMilliseconds);
    }
}
