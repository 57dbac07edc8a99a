using System.Diagnostics;
using ActorBlk.Host.Bench;

namespace ActorBlk.Host.Tests.Support;

/// <summary>A bench clock that moves only when the spec says so.</summary>
internal sealed class ManualBenchClock : BenchClock
{
    private long _now = 1_000_000;

    public override long Timestamp => _now;

    public void Advance(TimeSpan by) => _now += (long)(by.TotalSeconds * Stopwatch.Frequency);
}
