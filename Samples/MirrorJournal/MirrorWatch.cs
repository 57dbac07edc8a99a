using System.Diagnostics;
using System.Globalization;
using ActorBlk.Actors;
using ActorBlk.Hardware.Drivers.Stacking;

namespace ActorBlk.Samples.MirrorJournal;

/// <summary>
/// Watches the mirror while the journal runs: says when a leg goes faulty, comes back and is in
/// sync again (with the regions the resync copied), and prints a progress line every interval with
/// the records written and the mirror's state as its <c>md/</c> attributes show it.
/// </summary>
public sealed class MirrorWatch(BlockLayer layer, MirrorTarget mirror, JournalWriter writer, IReadOnlyList<string> legNames, TimeSpan interval, Action<string> say)
{
    private static readonly TimeSpan Poll = TimeSpan.FromMilliseconds(100);
    private readonly object _lock = new();
    private readonly MirrorLegState[] _states = Enumerable.Range(0, legNames.Count).Select(mirror.LegState).ToArray();
    private readonly int[] _owed = Owed(mirror, legNames.Count);
    private long _resyncBaseline;

    /// <summary>Times a leg went faulty.</summary>
    public int Faults { get; private set; }

    /// <summary>Resyncs that brought a faulty leg back in sync.</summary>
    public int Resyncs { get; private set; }

    /// <summary>Regions the last resync copied (-1 before one ended).</summary>
    public long LastResyncRegions { get; private set; } = -1;

    /// <summary>Runs until <paramref name="stop"/> is cancelled.</summary>
    public async Task RunAsync(CancellationToken stop)
    {
        var lastLine = Stopwatch.GetTimestamp();
        var lastCount = writer.Written;
        using var timer = new PeriodicTimer(Poll);
        try
        {
            while (await timer.WaitForNextTickAsync(stop))
            {
                Check();
                var elapsed = Stopwatch.GetElapsedTime(lastLine);
                if (elapsed >= interval)
                {
                    var count = writer.Written;
                    say(Progress(count, (count - lastCount) / elapsed.TotalSeconds));
                    lastLine = Stopwatch.GetTimestamp();
                    lastCount = count;
                }
            }
        }
        catch (OperationCanceledException)
        {
        }
    }

    /// <summary>Says what changed in the legs' states since the last look.</summary>
    public void Check()
    {
        lock (_lock)
        {
            for (var leg = 0; leg < _states.Length; leg++)
            {
                var now = mirror.LegState(leg);
                if (now != _states[leg])
                {
                    Changed(leg, _states[leg], now);
                    _states[leg] = now;
                }
            }
        }
    }

    /// <summary>
    /// One line: <c>records 1200 (100/s, 340 while degraded) | md: degraded 1, sync_action idle,
    /// sync_completed none | journal-leg0 in_sync, journal-leg1-127.0.0.1-4054 faulty</c>.
    /// </summary>
    public string Progress(long count, double? perSecond = null)
    {
        var md = $"block/{JournalOptions.Mirror}/md/";
        var legs = layer.ListAttributes(md + "dev-")
            .Where(p => p.EndsWith("/state", StringComparison.Ordinal))
            .Select(p => $"{p[(md.Length + 4)..^6]} {layer.ReadAttribute(p).Trim()}");
        return string.Create(CultureInfo.InvariantCulture,
            $"records {count} ({(perSecond is { } rate ? $"{rate:0}/s, " : string.Empty)}{writer.WrittenDegraded} while degraded) | md: degraded {Attr(md + "degraded")}, sync_action {Attr(md + "sync_action")}, sync_completed {Attr(md + "sync_completed")} | {string.Join(", ", legs)}");
    }

    private string Attr(string path) => layer.ReadAttribute(path).Trim();

    // Per leg, the dirty regions it owed when the mirror last took it back (-1: none since the
    // last look), from MirrorTarget.LegTakenBack, which reports them as the leg goes rebuilding.
    private static int[] Owed(MirrorTarget mirror, int legs)
    {
        var owed = Enumerable.Repeat(-1, legs).ToArray();
        mirror.LegTakenBack += back =>
        {
            var leg = mirror.Legs.ToList().FindIndex(l => l.Name == back.Leg);
            if (leg >= 0 && leg < owed.Length)
            {
                Volatile.Write(ref owed[leg], back.OwedRegions);
            }
        };
        return owed;
    }

    private void Changed(int leg, MirrorLegState was, MirrorLegState now)
    {
        var name = legNames[leg];
        if (now == MirrorLegState.Faulty)
        {
            Faults++;
            _resyncBaseline = mirror.ResyncedRegions;

            // A count the last return left (its event landed after the look that saw the leg
            // rebuilding, or no look saw it rebuilding) is not this outage's: the next return
            // reports its own, and a look before that event reads the bitmap.
            Volatile.Write(ref _owed[leg], -1);
            say($"mirror degraded: leg {name} is faulty after {writer.Written} records; the journal goes on on the other leg");
        }
        else if (now == MirrorLegState.Rebuilding)
        {
            // The regions the leg owed when it was taken back: the bitmap read now has lost those
            // the resync copied since (a poll later, at sync_speed_max, 10 of 33 in a README
            // walk-through, which then read "resyncing 23 dirty regions" and "copied 33").
            var owed = Interlocked.Exchange(ref _owed[leg], -1);
            say($"leg {name} is back: re-added, resyncing {(owed >= 0 ? owed : mirror.DirtyRegions())} dirty regions of {mirror.Regions}");
        }
        else if (was != MirrorLegState.InSync)
        {
            Resyncs++;
            LastResyncRegions = mirror.ResyncedRegions - _resyncBaseline;
            say($"resync done: leg {name} is in sync again; copied {LastResyncRegions} of {mirror.Regions} regions ({(LastResyncRegions < mirror.Regions ? "the dirty ones only" : "all of them")}), after {writer.Written} records");
        }
    }
}
