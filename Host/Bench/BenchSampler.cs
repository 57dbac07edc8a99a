namespace ActorBlk.Host.Bench;

/// <summary>One bandwidth and IOPS sample of a direction over a sampling window.</summary>
/// <param name="KiBPerSecond">Bandwidth in KiB/s, as fio's <c>bw</c>.</param>
/// <param name="Iops">I/Os per second.</param>
internal readonly record struct RateSample(double KiBPerSecond, double Iops);

/// <summary>fio's min, max, mean and standard deviation of a set of samples, with their count.</summary>
internal readonly record struct SampleStats(double Min, double Max, double Mean, double StdDev, int Count)
{
    /// <summary>The statistics of <paramref name="values"/> (all zero without any), with fio's sample standard deviation (n - 1).</summary>
    public static SampleStats Of(IReadOnlyList<double> values)
    {
        if (values.Count == 0)
        {
            return default;
        }

        var mean = values.Average();
        var variance = values.Count > 1 ? values.Sum(v => (v - mean) * (v - mean)) / (values.Count - 1) : 0;
        return new SampleStats(values.Min(), values.Max(), mean, Math.Sqrt(variance), values.Count);
    }
}

/// <summary>
/// fio's bandwidth and IOPS samples (<c>bw_avg_time</c> and <c>iops_avg_time</c>, 500 ms by
/// default): the figures of the measured window are read every interval and each interval's
/// difference becomes one sample per direction, from which the report's <c>bw_min</c>,
/// <c>bw_max</c>, <c>bw_mean</c>, <c>bw_dev</c>, <c>bw_samples</c> and the <c>iops_*</c> twins
/// are computed. Time before the window opens (ramp, JIT warm-up) gives no sample.
/// </summary>
internal sealed class BenchSampler
{
    /// <summary>fio's default sampling interval.</summary>
    public static readonly TimeSpan DefaultInterval = TimeSpan.FromMilliseconds(500);

    private readonly List<RateSample> _read = [];
    private readonly List<RateSample> _write = [];
    private readonly Lock _lock = new();
    private (long ReadIos, long ReadBytes, long WriteIos, long WriteBytes, TimeSpan Measured) _last;

    /// <summary>Read samples so far.</summary>
    public IReadOnlyList<RateSample> Read
    {
        get
        {
            lock (_lock)
            {
                return [.. _read];
            }
        }
    }

    /// <summary>Write samples so far.</summary>
    public IReadOnlyList<RateSample> Write
    {
        get
        {
            lock (_lock)
            {
                return [.. _write];
            }
        }
    }

    /// <summary>
    /// Takes the cumulative figures of the measured window: the part since the last call becomes a
    /// sample per direction, unless the window has not moved (not open yet, or already closed).
    /// </summary>
    public void Add(long readIos, long readBytes, long writeIos, long writeBytes, TimeSpan measured)
    {
        lock (_lock)
        {
            var seconds = (measured - _last.Measured).TotalSeconds;
            if (seconds > 0)
            {
                _read.Add(new RateSample((readBytes - _last.ReadBytes) / 1024.0 / seconds, (readIos - _last.ReadIos) / seconds));
                _write.Add(new RateSample((writeBytes - _last.WriteBytes) / 1024.0 / seconds, (writeIos - _last.WriteIos) / seconds));
            }

            _last = (readIos, readBytes, writeIos, writeBytes, measured);
        }
    }

    /// <summary>Samples <paramref name="snapshot"/> every <paramref name="interval"/> until <paramref name="cancel"/>.</summary>
    public async Task RunAsync(Func<BenchResult> snapshot, TimeSpan interval, CancellationToken cancel)
    {
        using var timer = new PeriodicTimer(interval);
        try
        {
            while (await timer.WaitForNextTickAsync(cancel).ConfigureAwait(false))
            {
                var r = snapshot();
                Add(r.Read.Ios, r.Read.Bytes, r.Write.Ios, r.Write.Bytes, r.Measured);
            }
        }
        catch (OperationCanceledException) when (cancel.IsCancellationRequested)
        {
        }
    }
}
