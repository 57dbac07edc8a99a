using ActorBlk.Hardware.Requests;

namespace ActorBlk.Host.Bench;

/// <summary>
/// What a bench run counts, and when: the measured window and the per-direction figures fio
/// reports. The window opens after <c>ramp_time</c> and closes at the end of <c>runtime</c>
/// (fixed when it opens, so a late wake-up of the timer cannot stretch it) or when the last I/O
/// of a size-bound run completes. A completion is recorded only when its time falls inside the
/// window. A failed I/O counts in its direction's <c>total_ios</c> and <c>drop_ios</c> and in the
/// error totals, never in bytes, bandwidth, latency or the IOPS samples (fio's <c>io_completed</c>
/// accounts bytes, blocks and latency only for I/Os without an error); the report's IOPS, fio's,
/// is of <c>total_ios</c> and so counts it.
/// </summary>
/// <remarks>
/// Completions run on many threads (dispatch loops, completion workers, polling jobs). Each thread
/// writes its own statistics without locks; <see cref="Collect"/> merges them once every I/O has
/// completed, so no one reads a thread's numbers while it writes them.
/// </remarks>
internal sealed class BenchAccounting : IDisposable
{
    private readonly BenchClock _clock;
    private readonly int _blockSize;
    private readonly ThreadLocal<ThreadStats> _threads;

    // Every thread's statistics, kept here rather than read from the ThreadLocal's Values: a
    // sampler that asked for a snapshot just as the run disposed its accounting read a disposed
    // ThreadLocal and took the process down (one run in forty under CPU hotplug).
    private readonly List<ThreadStats> _all = [];
    // The statistics this thread recorded into last, and (ThreadStats.Owner) for which accounting:
    // one thread-static, read once per completion (each costs a TLS lookup on Linux).
    [ThreadStatic]
    private static ThreadStats? t_stats;

    private long _start = long.MaxValue;
    private long _end = long.MaxValue;

    public BenchAccounting(BenchClock clock, int blockSize)
    {
        ArgumentNullException.ThrowIfNull(clock);
        ArgumentOutOfRangeException.ThrowIfLessThan(blockSize, 1);
        _clock = clock;
        _blockSize = blockSize;
        _threads = new ThreadLocal<ThreadStats>(() =>
        {
            var stats = new ThreadStats();
            lock (_all)
            {
                _all.Add(stats);
            }

            return stats;
        });
    }

    /// <summary>Now, on the run's clock.</summary>
    public long Now => _clock.Timestamp;

    /// <summary>The submission time of an I/O submitted now (<see cref="BenchClock.BatchTimestamp"/>).</summary>
    public long SubmissionNow => _clock.BatchTimestamp;

    /// <summary>
    /// Opens the measured window now. With a <paramref name="runtime"/> its end is fixed at once:
    /// completions later than that are not recorded however late the run is stopped.
    /// </summary>
    public void OpenWindow(TimeSpan? runtime)
    {
        var start = _clock.Timestamp;
        Volatile.Write(ref _end, runtime is { } r ? start + BenchClock.Ticks(r) : long.MaxValue);
        Volatile.Write(ref _start, start);
    }

    /// <summary>
    /// Opens and closes the window at once, now: for a run whose work ended, or which was stopped,
    /// before its window would have opened (a size-bound run done within its ramp, a signal in the
    /// ramp or the JIT warm-up). It measures nothing, and <see cref="Measured"/> is zero.
    /// </summary>
    /// <remarks>
    /// The window ends one tick before it starts, so no completion time falls inside it. It was
    /// [now, now], and a completion batch whose time (read once per batch on another thread) was
    /// that same nanosecond recorded its I/Os into a window of no length: a run stopped in its
    /// ramp reported 3 reads over runtime 0 (one CI run).
    /// </remarks>
    public void OpenEmptyWindow()
    {
        var now = _clock.Timestamp;
        Volatile.Write(ref _end, now - 1);
        Volatile.Write(ref _start, now);
    }

    /// <summary>Closes the window now, unless its runtime already ended it earlier.</summary>
    public void CloseWindow()
    {
        var now = _clock.Timestamp;
        if (now < Volatile.Read(ref _end))
        {
            Volatile.Write(ref _end, now);
        }
    }

    /// <summary>The measured interval: from the window's opening to its end.</summary>
    public TimeSpan Measured
    {
        get
        {
            var start = Volatile.Read(ref _start);
            var end = Volatile.Read(ref _end);
            return start == long.MaxValue || end == long.MaxValue ? TimeSpan.Zero : BenchClock.Duration(Math.Max(0, end - start));
        }
    }

    /// <summary>
    /// Records one finished I/O submitted at <paramref name="submitted"/> and completed now, if
    /// now is inside the window; returns whether it was recorded.
    /// </summary>
    public bool Record(bool read, BlockStatus status, long submitted) => Record(read, status, submitted, out _);

    /// <summary>As <see cref="Record(bool, BlockStatus, long)"/>, giving the completion time it read.</summary>
    public bool Record(bool read, BlockStatus status, long submitted, out long completed)
    {
        completed = _clock.BatchTimestamp;
        if (completed < Volatile.Read(ref _start) || completed > Volatile.Read(ref _end))
        {
            return false;
        }

        var thread = Local();
        var stats = read ? thread.Read : thread.Write;
        if (status == BlockStatus.Ok)
        {
            stats.Total.RecordTicks(completed - submitted);
            stats.Ios++;
            stats.Bytes += _blockSize;
        }
        else
        {
            stats.Failed++;
            if (completed < thread.FirstErrorAt)
            {
                thread.FirstErrorAt = completed;
                thread.FirstError = status;
            }
        }

        return true;
    }

    /// <summary>When the window opened, on the run's clock; <see cref="long.MaxValue"/> before it opens.</summary>
    public long WindowStart => Volatile.Read(ref _start);

    /// <summary>When the window ends, on the run's clock; <see cref="long.MaxValue"/> while no end is fixed.</summary>
    public long WindowEnd => Volatile.Read(ref _end);

    /// <summary>
    /// The figures so far, while I/O still runs (<c>--status-interval</c>): every thread's
    /// statistics merged as they are at this moment, and the interval measured up to now. Threads
    /// keep writing while they are read, so an I/O recorded during the copy may be in one figure
    /// and not yet in another; the next snapshot and the final <see cref="Collect"/> have it.
    /// </summary>
    public (OpStats Read, OpStats Write, TimeSpan Measured) Snapshot()
    {
        var read = new OpStats();
        var write = new OpStats();
        foreach (var t in AllThreads())
        {
            read.Add(t.Read);
            write.Add(t.Write);
        }

        var start = Volatile.Read(ref _start);
        var end = Math.Min(Volatile.Read(ref _end), _clock.Timestamp);
        var measured = start == long.MaxValue ? TimeSpan.Zero : BenchClock.Duration(Math.Max(0, end - start));
        return (read, write, measured);
    }

    /// <summary>Merges every thread's figures; call once no I/O is in flight.</summary>
    public (OpStats Read, OpStats Write, BlockStatus FirstError) Collect()
    {
        var read = new OpStats();
        var write = new OpStats();
        var firstAt = long.MaxValue;
        var first = BlockStatus.Ok;
        foreach (var t in AllThreads())
        {
            read.Add(t.Read);
            write.Add(t.Write);
            if (t.FirstErrorAt < firstAt)
            {
                firstAt = t.FirstErrorAt;
                first = t.FirstError;
            }
        }

        return (read, write, first);
    }

    public void Dispose() => _threads.Dispose();

    private ThreadStats[] AllThreads()
    {
        lock (_all)
        {
            return [.. _all];
        }
    }

    // This thread's statistics: the last accounting a thread recorded for is remembered in a
    // thread-static, which is cheaper than ThreadLocal's lookup on every completion.
    private ThreadStats Local()
    {
        if (t_stats is { } last && ReferenceEquals(last.Owner, this))
        {
            return last;
        }

        var stats = _threads.Value!;
        stats.Owner = this;
        t_stats = stats;
        return stats;
    }

    private sealed class ThreadStats
    {
        public BenchAccounting? Owner { get; set; }

        public OpStats Read { get; } = new();

        public OpStats Write { get; } = new();

        public long FirstErrorAt { get; set; } = long.MaxValue;

        public BlockStatus FirstError { get; set; }
    }
}
