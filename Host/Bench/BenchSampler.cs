namespace ActorBlk.Host.Bench;

/// <summary>One bandwidth and IOPS sample of a direction over a sampling interval, in fio's whole units.</summary>
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
/// difference becomes a sample per direction, from which the report's <c>bw_min</c>,
/// <c>bw_max</c>, <c>bw_mean</c>, <c>bw_dev</c>, <c>bw_samples</c> and the <c>iops_*</c> twins
/// are computed. Time before the window opens (ramp, JIT warm-up) gives no sample.
/// </summary>
/// <remarks>
/// The rule is fio 3.33's (stat.c <c>__add_samples</c>, the helper thread's
/// <c>add_bw_samples</c> and <c>add_iops_samples</c>). An interval shorter than the sampling
/// interval by more than 1 ms (<c>LOG_MSEC_SLACK</c>) gives no sample yet and goes on into the
/// next: the end of the window, which fio never samples either (its job has stopped running),
/// unless it is the boundary the next sample is due at (<see cref="Close"/>).
/// The sampling times count from the window's opening, as fio's <c>bw_sample_time</c> is reset
/// to the end of the ramp (libfio.c <c>reset_all_stats</c>): the first sample comes one interval
/// into the window and spans that interval (<see cref="RunAsync(Func{BenchResult}, TimeProvider, CancellationToken)"/>;
/// the bench's ticks ran from its start, so its first sample spanned one to two intervals). A
/// direction that moved no bytes in an
/// interval gives no sample (<c>if (!delta) continue;</c>, whether or not the workload has that
/// direction: a randread's writes, a randrw direction idle for a while, a direction whose every
/// I/O failed, as failed I/Os add no bytes). A direction that moved any gets one, in fio's
/// integer arithmetic over the interval in whole milliseconds, truncated (<c>mtime_since</c>):
/// <c>bytes * 1000 / ms / 1024</c> KiB/s and <c>ios * 1000 / ms</c> IOPS, so an active direction
/// that moved less than 1,024 bytes a second gives a bandwidth sample of 0, the only zero sample
/// fio takes (its other, an interval of 0 ms, cannot happen past the slack rule).
/// </remarks>
internal sealed class BenchSampler(TimeSpan interval)
{
    /// <summary>fio's default sampling interval.</summary>
    public static readonly TimeSpan DefaultInterval = TimeSpan.FromMilliseconds(500);

    // fio's LOG_MSEC_SLACK (not Windows): an interval this much short of the sampling interval counts.
    private const long SlackMs = 1;

    private readonly List<RateSample> _read = [];
    private readonly List<RateSample> _write = [];
    private readonly Lock _lock = new();
    private readonly long _intervalMs = (long)interval.TotalMilliseconds;
    private (long ReadIos, long ReadBytes, long WriteIos, long WriteBytes, TimeSpan Measured) _last;
    private TimeSpan _polled = TimeSpan.MinValue;

    // The sampling points so far (each interval closed, whatever its directions moved): the
    // window's boundaries, one interval apart from its opening, that have been sampled.
    private long _points;

    /// <summary>A sampler at fio's default interval (<see cref="DefaultInterval"/>).</summary>
    public BenchSampler()
        : this(DefaultInterval)
    {
    }

    /// <summary>The sampling interval.</summary>
    public TimeSpan Interval { get; } = interval;

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
    /// Takes the cumulative figures of the measured window (<paramref name="measured"/> of it so
    /// far): once the interval since the last sample is long enough, each direction that moved
    /// bytes since then gives a sample (<see cref="BenchSampler"/>'s rule).
    /// </summary>
    public void Add(long readIos, long readBytes, long writeIos, long writeBytes, TimeSpan measured) =>
        Poll(readIos, readBytes, writeIos, writeBytes, measured);

    /// <summary>
    /// As <see cref="Add"/>, and returns how long to wait for the next sample, as fio's helper
    /// thread waits what stat.c <c>__add_samples</c> returns: before a sample is due, the rest of
    /// the interval since the last one (since the window's opening before the first),
    /// <c>avg_time - spent</c>; after a sample, the interval, less <c>1 + spent - avg_time</c>
    /// ms when the sample came late (a sample 8 ms late is followed by one 491 ms later; fio's
    /// unsigned arithmetic gives the whole interval once that would be negative). A window that
    /// did not move since the previous call (not open yet, or closed) is looked at again one
    /// interval later.
    /// </summary>
    public TimeSpan Poll(long readIos, long readBytes, long writeIos, long writeBytes, TimeSpan measured)
    {
        lock (_lock)
        {
            var moved = measured != _polled;
            _polled = measured;
            var spent = Math.Max(0, (long)Math.Floor((measured - _last.Measured).TotalMilliseconds));
            if (spent < _intervalMs && _intervalMs - spent > SlackMs)
            {
                var rest = Interval - (measured - _last.Measured);
                return moved && rest > TimeSpan.Zero ? rest : Interval;
            }

            TakePoint(readIos, readBytes, writeIos, writeBytes, measured, spent);
            var late = 1 + spent - _intervalMs;
            return spent <= _intervalMs || late >= _intervalMs ? Interval : TimeSpan.FromMilliseconds(_intervalMs - late);
        }
    }

    /// <summary>
    /// The last look, once the window has closed (<paramref name="measured"/> is all of it): a
    /// sample as <see cref="Poll"/> takes one, and also whenever the window reaches the boundary
    /// the next sample is due at (one interval more than the samples so far, from the window's
    /// opening, less the 1 ms slack), however short the rest since the last sample. So a window of
    /// N whole intervals has N samples, its last at its end, whenever the timer woke for the
    /// others: a sample taken 3 ms late left 497 ms, which <see cref="Poll"/> does not sample, and
    /// a 2 s run showed 3 samples or 4 by the timer's lateness. fio's own count races its job's end
    /// (its helper thread's last wake and the job's runtime check) and is N or N - 1.
    /// </summary>
    public void Close(long readIos, long readBytes, long writeIos, long writeBytes, TimeSpan measured)
    {
        lock (_lock)
        {
            var spent = Math.Max(0, (long)Math.Floor((measured - _last.Measured).TotalMilliseconds));
            var boundary = TimeSpan.FromMilliseconds(((_points + 1) * _intervalMs) - SlackMs);
            var due = spent >= _intervalMs || _intervalMs - spent <= SlackMs;
            if (measured > _last.Measured && (due || measured >= boundary))
            {
                TakePoint(readIos, readBytes, writeIos, writeBytes, measured, spent);
            }

            _polled = measured;
        }
    }

    // Under the lock: a sampling point, each direction's sample and the figures it counts from next.
    private void TakePoint(long readIos, long readBytes, long writeIos, long writeBytes, TimeSpan measured, long spent)
    {
        Sample(_read, readIos - _last.ReadIos, readBytes - _last.ReadBytes, spent);
        Sample(_write, writeIos - _last.WriteIos, writeBytes - _last.WriteBytes, spent);
        _last = (readIos, readBytes, writeIos, writeBytes, measured);
        _points++;
    }

    /// <summary>Samples <paramref name="snapshot"/> every <see cref="Interval"/> of its measured window until <paramref name="cancel"/>.</summary>
    public Task RunAsync(Func<BenchResult> snapshot, CancellationToken cancel) => RunAsync(snapshot, TimeProvider.System, cancel);

    /// <summary>
    /// Samples <paramref name="snapshot"/> until <paramref name="cancel"/>, waiting on
    /// <paramref name="time"/> for each sample as long as <see cref="Poll"/> says: the samples fall
    /// one <see cref="Interval"/> apart from the window's opening (its <see cref="BenchResult.Measured"/>),
    /// whenever in the run, after a ramp or a JIT warm-up, that comes. When <paramref name="cancel"/>
    /// ends it (the run is over, its window closed) it looks once more (<see cref="Close"/>): a
    /// window that ends on a boundary, as a time-based one does, gets its last sample there, which
    /// fio takes when its job runs a little past the runtime, where a wake-up of the timer later
    /// than the run's end lost it (3 samples in 2 s where fio has 4). A shorter rest is not
    /// sampled, by the rule of <see cref="BenchSampler"/>.
    /// </summary>
    public async Task RunAsync(Func<BenchResult> snapshot, TimeProvider time, CancellationToken cancel)
    {
        ArgumentNullException.ThrowIfNull(snapshot);
        ArgumentNullException.ThrowIfNull(time);
        try
        {
            while (!cancel.IsCancellationRequested)
            {
                await Task.Delay(PollSnapshot(snapshot()), time, cancel).ConfigureAwait(false);
            }
        }
        catch (OperationCanceledException) when (cancel.IsCancellationRequested)
        {
        }

        var last = snapshot();
        Close(last.Read.Ios, last.Read.Bytes, last.Write.Ios, last.Write.Bytes, last.Measured);
    }

    private TimeSpan PollSnapshot(BenchResult r) => Poll(r.Read.Ios, r.Read.Bytes, r.Write.Ios, r.Write.Bytes, r.Measured);

    // fio's __add_samples for one direction: no sample without bytes; whole KiB/s and IOPS.
    private static void Sample(List<RateSample> samples, long ios, long bytes, long spentMs)
    {
        if (bytes <= 0)
        {
            return;
        }

        samples.Add(spentMs == 0
            ? new RateSample(0, 0)
            : new RateSample((ulong)bytes * 1000UL / (ulong)spentMs / 1024UL, (ulong)Math.Max(0, ios) * 1000UL / (ulong)spentMs));
    }
}
