using System.Diagnostics;
using System.Numerics;
using System.Runtime.CompilerServices;
using HdrHistogram;

namespace ActorBlk.Host.Bench;

/// <summary>
/// Latencies of one operation kind, recorded by one writer without locks: exact count, minimum,
/// maximum, sum and sum of squares, and an HDR histogram (3 significant digits, 1 ns to 60 s)
/// from which fio's histogram and percentiles are folded. Recorders of different slots are merged
/// after the run.
/// </summary>
/// <remarks>
/// The per-I/O record is the bench's own: one <c>lzcnt</c>, a shift and an increment into a counts
/// array laid out exactly as HdrHistogram lays out a <see cref="LongHistogram"/>(1, 60 s, 3). The
/// library's record finds the bucket through a table and a chain of compares, which costs several
/// nanoseconds per I/O at queue depth 1. <see cref="Histogram"/> replays the counts into a
/// <see cref="LongHistogram"/> (every index's lowest value, which maps back to the same index), so
/// percentiles come out identical to recording into the library directly (the plot's). fio's
/// coarser histogram (its <c>json+</c> bins) is folded from the same counts (<see cref="FioBins"/>),
/// exactly, and the reports' percentiles are fio's, found in it (<see cref="FioPercentiles"/>).
/// </remarks>
internal sealed class LatencyRecorder
{
    /// <summary>Largest latency the histogram tracks, in nanoseconds; longer ones count as this.</summary>
    public const long HighestNs = 60_000_000_000;

    private const int SignificantDigits = 3;

    // HdrHistogram's layout for 3 significant digits and a unit of 1 ns: sub-buckets of 2048 values
    // (2 x 10^3 rounded up to a power of two), each bucket after the first adding its upper half.
    private const int SubBucketHalfCountMagnitude = 10;
    private const int SubBucketHalfCount = 1 << SubBucketHalfCountMagnitude;
    private const long SubBucketMask = (2L << SubBucketHalfCountMagnitude) - 1;
    private const int LeadingZeroCountBase = 64 - SubBucketHalfCountMagnitude - 1;

    /// <summary>Length of the counts array: the index of <see cref="HighestNs"/> plus one.</summary>
    internal static readonly int CountsLength = CountsIndex(HighestNs) + 1;

    private static readonly double NsPerTick = 1e9 / Stopwatch.Frequency;

    // Linux's Stopwatch ticks are nanoseconds: no conversion through a double (folded by the JIT).
    private static readonly bool TicksAreNs = Stopwatch.Frequency == 1_000_000_000;

    private readonly long[] _counts = new long[CountsLength];
    private LongHistogram? _histogram;
    private long _histogramCount = -1;

    /// <summary>
    /// The recorded latencies as an HDR histogram, rebuilt from the counts when more were recorded
    /// since the last call. For reports: a recorder still being written gives a moment's view.
    /// </summary>
    public LongHistogram Histogram
    {
        get
        {
            var count = Count;
            if (_histogram is null || _histogramCount != count)
            {
                var histogram = new LongHistogram(1, HighestNs, SignificantDigits);
                for (var i = 0; i < _counts.Length; i++)
                {
                    var n = _counts[i];
                    if (n != 0)
                    {
                        histogram.RecordValueWithCount(ValueAt(i), n);
                    }
                }

                _histogram = histogram;
                _histogramCount = count;
            }

            return _histogram;
        }
    }

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
        _counts[CountsIndex(ns)]++;
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
        Array.Clear(_counts);
        _histogram = null;
        Count = 0;
        Min = long.MaxValue;
        Max = 0;
        Sum = 0;
        SumSquares = 0;
    }

    public void Add(LatencyRecorder other)
    {
        var counts = other._counts;
        for (var i = 0; i < counts.Length; i++)
        {
            _counts[i] += counts[i];
        }

        Count += other.Count;
        Sum += other.Sum;
        SumSquares += other.SumSquares;
        Min = Math.Min(Min, other.Min);
        Max = Math.Max(Max, other.Max);
    }

    /// <summary>
    /// How many latencies fall in each group that <paramref name="upperBoundsNs"/> (ascending)
    /// marks: group i holds the latencies below bound i and at or above bound i - 1, and one more
    /// group at the end holds those at or above the last bound. fio's <c>latency_ns</c>,
    /// <c>latency_us</c> and <c>latency_ms</c> are such groups. A latency is placed by the lowest
    /// value of its histogram bucket (3 significant digits), so one within 0.1% of a bound may
    /// land on the bound's lower side.
    /// </summary>
    public long[] Groups(ReadOnlySpan<long> upperBoundsNs)
    {
        var groups = new long[upperBoundsNs.Length + 1];
        var group = 0;
        for (var i = 0; i < _counts.Length; i++)
        {
            var n = _counts[i];
            if (n == 0)
            {
                continue;
            }

            var value = ValueAt(i);
            while (group < upperBoundsNs.Length && value >= upperBoundsNs[group])
            {
                group++;
            }

            groups[group] += n;
        }

        return groups;
    }

    /// <summary>fio's <c>FIO_IO_U_PLAT_BITS</c>: each power of two above 127 ns is split into 2^6 buckets.</summary>
    internal const int FioPlatBits = 6;

    /// <summary>fio's <c>FIO_IO_U_PLAT_VAL</c>: buckets per group.</summary>
    internal const int FioPlatVal = 1 << FioPlatBits;

    /// <summary>fio's <c>FIO_IO_U_PLAT_NR</c>: 29 groups of 64 buckets; the last holds every latency of 2^34 ns (17.2 s) and more.</summary>
    internal const int FioPlatCount = 29 * FioPlatVal;

    /// <summary>
    /// fio's latency buckets (its <c>--output-format=json+</c> <c>bins</c>): each bucket's value
    /// (fio's <c>plat_idx_to_val</c>) and how many latencies fell in it, ascending, the empty ones
    /// left out. fio's buckets are coarser than this recorder's and each of these lies inside one
    /// of them (both split each power of two evenly, fio into 64 and HdrHistogram into 1,024 from
    /// 2,048 ns up, exact below), so every latency lands in the bucket fio would put it in; one
    /// over <see cref="HighestNs"/>, recorded as that, lands in fio's last bucket as it would itself.
    /// </summary>
    public IReadOnlyList<(long Value, long Count)> FioBins()
    {
        var counts = FioCounts();
        var bins = new List<(long, long)>();
        for (var i = 0; i < counts.Length; i++)
        {
            if (counts[i] != 0)
            {
                bins.Add((FioPlatValue(i), counts[i]));
            }
        }

        return bins;
    }

    /// <summary>
    /// fio's percentiles of these latencies, as fio 3.33 stat.c <c>calc_clat_percentiles</c>
    /// finds them in its buckets (<see cref="FioBins"/>'s): walking up the buckets, a percentile
    /// is the value (<see cref="FioPlatValue"/>, the bucket's middle) of the first bucket at which
    /// the cumulative count reaches <see cref="FioPercentileRank"/> of <see cref="Count"/>, fio's
    /// <c>samples</c>. Without latencies every percentile is 0, as fio's (bucket 0 reaches a rank
    /// of 0). <paramref name="percentiles"/> must be ascending, as fio sorts its list. A moment's
    /// view of a recorder still being written may count fewer in its buckets than
    /// <see cref="Count"/>; a percentile the buckets never reach then takes the highest bucket's
    /// value (fio reports "error calculating latency percentiles" and leaves it unset).
    /// </summary>
    public long[] FioPercentiles(IReadOnlyList<double> percentiles)
    {
        ArgumentNullException.ThrowIfNull(percentiles);
        var values = new long[percentiles.Count];
        var counts = FioCounts();
        var samples = Count;
        var ranks = percentiles.Select(p => FioPercentileRank(p, samples)).ToArray();
        var j = 0;
        var sum = 0L;
        var last = 0L;
        for (var i = 0; i < counts.Length && j < values.Length; i++)
        {
            sum += counts[i];
            if (counts[i] != 0)
            {
                last = FioPlatValue(i);
            }

            while (j < values.Length && sum >= ranks[j])
            {
                values[j++] = FioPlatValue(i);
            }
        }

        for (; j < values.Length; j++)
        {
            values[j] = last;
        }

        return values;
    }

    // 0.01 rounded to the x87 extended format's 64-bit significand: 0xA3D70A3D70A3D70A * 2^-70,
    // fio 3.33's constant (the ten bytes it loads with fldt).
    private static readonly BigInteger FioHundredthMantissa = new(0xA3D70A3D70A3D70AUL);
    private const int FioHundredthExponent = -70;

    /// <summary>
    /// How many of <paramref name="samples"/> latencies fio's <c>calc_clat_percentiles</c> counts
    /// before it takes <paramref name="percentile"/>: the least whole number at or above fio's
    /// <c>(long double) p / 100.0 * nr</c> as fio 3.33 is built. Its Makefile compiles with
    /// <c>-ffast-math</c>, so gcc multiplies by a reciprocal: <c>nr * 0.01L</c> once, then that
    /// times p per percentile, each product rounded to x87 extended precision (64-bit significand,
    /// to nearest, ties to even), and the running count is compared with the result. It differs
    /// from plain arithmetic at a few ranks, and fio 3.33 shows it: 2,000 samples put 99.95% at
    /// the 2,000th (double arithmetic gives 1,999 exactly), 100 put 60% at the 60th (division in
    /// extended precision gives 60.0000000000000000035, so the 61st).
    /// </summary>
    internal static long FioPercentileRank(double percentile, long samples)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(samples);
        if (samples == 0 || percentile <= 0)
        {
            return 0;
        }

        var (m, e) = X87Multiply(FioHundredthMantissa, FioHundredthExponent, samples, 0);
        var bits = BitConverter.DoubleToInt64Bits(percentile);
        var exponent = (int)((bits >> 52) & 0x7FF);
        var mantissa = bits & 0xF_FFFF_FFFF_FFFFL;
        (m, e) = exponent == 0
            ? X87Multiply(m, e, mantissa, -1074)
            : X87Multiply(m, e, mantissa | (1L << 52), exponent - 1075);

        // The least whole number at or above m * 2^e.
        if (e >= 0)
        {
            return (long)(m << e);
        }

        var whole = m >> -e;
        return (long)(whole << -e == m ? whole : whole + 1);
    }

    // a * 2^ae times b * 2^be, rounded to a 64-bit significand (to nearest, ties to even), as an
    // x87 fmul at the extended precision Linux runs it at.
    private static (BigInteger Mantissa, int Exponent) X87Multiply(BigInteger a, int ae, BigInteger b, int be)
    {
        var m = a * b;
        var e = ae + be;
        var excess = (int)m.GetBitLength() - 64;
        if (excess > 0)
        {
            var dropped = m & ((BigInteger.One << excess) - 1);
            var half = BigInteger.One << (excess - 1);
            m >>= excess;
            e += excess;
            if (dropped > half || (dropped == half && !m.IsEven))
            {
                m += 1;
            }
        }

        return (m, e);
    }

    // The latencies counted in fio's buckets: each bucket of the recorder lies inside one of fio's.
    private long[] FioCounts()
    {
        var counts = new long[FioPlatCount];
        for (var i = 0; i < _counts.Length; i++)
        {
            var n = _counts[i];
            if (n != 0)
            {
                counts[FioPlatIndex(ValueAt(i))] += n;
            }
        }

        return counts;
    }

    /// <summary>fio 3.33 stat.c <c>plat_val_to_idx</c>: the bucket of a latency of <paramref name="value"/> ns.</summary>
    internal static int FioPlatIndex(long value)
    {
        var msb = value == 0 ? 0 : 63 - BitOperations.LeadingZeroCount((ulong)value);
        if (msb <= FioPlatBits)
        {
            // Below 128 every value is its own bucket.
            return (int)value;
        }

        var errorBits = msb - FioPlatBits;
        var index = ((errorBits + 1) << FioPlatBits) + (int)((FioPlatVal - 1) & (value >> errorBits));
        return Math.Min(index, FioPlatCount - 1);
    }

    /// <summary>
    /// fio 3.33 stat.c <c>plat_idx_to_val</c>: the value fio gives bucket <paramref name="index"/>,
    /// the middle of its range (<c>base + (k + 0.5) * 2^error_bits</c>, a whole number as error_bits
    /// is at least 1), or the index itself below 128.
    /// </summary>
    internal static long FioPlatValue(int index)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(index);
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(index, FioPlatCount);
        if (index < FioPlatVal << 1)
        {
            return index;
        }

        var errorBits = (index >> FioPlatBits) - 1;
        var groupBase = 1L << (errorBits + FioPlatBits);
        var k = (long)(index % FioPlatVal);
        return groupBase + (k << errorBits) + (1L << (errorBits - 1));
    }

    /// <summary>HdrHistogram's counts index of <paramref name="value"/> (1 to <see cref="HighestNs"/>).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static int CountsIndex(long value)
    {
        var bucket = LeadingZeroCountBase - BitOperations.LeadingZeroCount((ulong)(value | SubBucketMask));
        var subBucket = (int)(value >> bucket);
        return ((bucket + 1) << SubBucketHalfCountMagnitude) + subBucket - SubBucketHalfCount;
    }

    /// <summary>The lowest value that lands on counts index <paramref name="index"/>.</summary>
    internal static long ValueAt(int index)
    {
        var bucket = (index >> SubBucketHalfCountMagnitude) - 1;
        var subBucket = (index & (SubBucketHalfCount - 1)) + SubBucketHalfCount;
        if (bucket < 0)
        {
            subBucket -= SubBucketHalfCount;
            bucket = 0;
        }

        return (long)subBucket << bucket;
    }
}

/// <summary>What one operation kind (read or write) did during the measured period.</summary>
internal sealed class OpStats
{
    /// <summary>Submission to completion, per successful I/O.</summary>
    public LatencyRecorder Total { get; } = new();

    /// <summary>I/Os that succeeded: the ones bandwidth, latency and the IOPS samples are made of.</summary>
    public long Ios { get; set; }

    /// <summary>Bytes moved by the I/Os that succeeded.</summary>
    public long Bytes { get; set; }

    /// <summary>I/Os that ended with an error (fio's <c>drop_ios</c> here).</summary>
    public long Failed { get; set; }

    /// <summary>Every I/O that finished in the window, failed or not (fio's <c>total_ios</c>, of which its IOPS is).</summary>
    public long TotalIos => Ios + Failed;

    public void Add(OpStats other)
    {
        Total.Add(other.Total);
        Ios += other.Ios;
        Bytes += other.Bytes;
        Failed += other.Failed;
    }
}
