using System.Diagnostics;
using HdrHistogram;

namespace ActorBlk.Host.Bench;

/// <summary>
/// Latencies of one operation kind, recorded by one writer without locks: exact count, minimum,
/// maximum, sum and sum of squares, and an HDR histogram for percentiles (3 significant digits,
/// 1 ns to 60 s). Recorders of different slots are merged after the run.
/// </summary>
internal sealed class LatencyRecorder
{
    /// <summary>Largest latency the histogram tracks, in nanoseconds; longer ones count as this.</summary>
    public const long HighestNs = 60_000_000_000;

    private static readonly double NsPerTick = 1e9 / Stopwatch.Frequency;

    // Linux's Stopwatch ticks are nanoseconds: no conversion through a double (folded by the JIT).
    private static readonly bool TicksAreNs = Stopwatch.Frequency == 1_000_000_000;

    public LatencyRecorder() => Histogram = new LongHistogram(1, HighestNs, 3);

    public LongHistogram Histogram { get; }

    public long Count { get; private set; }

    public long Min { get; private set; } = long.MaxValue;

    public long Max { get; private set; }

    public double Sum { get; private set; }

    public double SumSquares { get; private set; }

    public double Mean => Count == 0 ? 0 : Sum / Count;

    public double StdDev => Count < 2 ? 0 : Math.Sqrt(Math.Max(0, (SumSquares - (Sum * Sum / Count)) / (Count - 1)));

    /// <summary>Records a latency given in stopwatch ticks.</summary>
    public void RecordTicks(long ticks)
    {
        var ns = Math.Clamp(TicksAreNs ? ticks : (long)(ticks * NsPerTick), 1, HighestNs);
        Histogram.RecordValue(ns);
        Count++;
        Sum += ns;
        SumSquares += (double)ns * ns;
        if (ns < Min)
        {
            Min = ns;
        }

        if (ns > Max)
        {
            Max = ns;
        }
    }

    public void Reset()
    {
        Histogram.Reset();
        Count = 0;
        Min = long.MaxValue;
        Max = 0;
        Sum = 0;
        SumSquares = 0;
    }

    public void Add(LatencyRecorder other)
    {
        Histogram.Add(other.Histogram);
        Count += other.Count;
        Sum += other.Sum;
        SumSquares += other.SumSquares;
        Min = Math.Min(Min, other.Min);
        Max = Math.Max(Max, other.Max);
    }
}

/// <summary>What one operation kind (read or write) did during the measured period.</summary>
internal sealed class OpStats
{
    /// <summary>Submission to completion, per successful I/O.</summary>
    public LatencyRecorder Total { get; } = new();

    /// <summary>I/Os that succeeded: the ones IOPS, bandwidth and latency are made of.</summary>
    public long Ios { get; set; }

    /// <summary>Bytes moved by the I/Os that succeeded.</summary>
    public long Bytes { get; set; }

    /// <summary>I/Os that ended with an error (fio's <c>drop_ios</c> here).</summary>
    public long Failed { get; set; }

    /// <summary>Every I/O that finished in the window, failed or not (fio's <c>total_ios</c>).</summary>
    public long TotalIos => Ios + Failed;

    public void Add(OpStats other)
    {
        Total.Add(other.Total);
        Ios += other.Ios;
        Bytes += other.Bytes;
        Failed += other.Failed;
    }
}
