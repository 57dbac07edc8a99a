using System.Globalization;

namespace ActorBlk.Host.Bench;

/// <summary>
/// fio's status line (<c>--eta</c>), rewritten in place on stderr while the run goes on:
/// <c>Jobs: 4 (f=1): [r(4)][45.0%][r=1544MiB/s][r=395k IOPS][eta 00m:06s]</c>. The job state is
/// fio's letter (r/w/m random read, write, mixed; R/W/M sequential); the rates cover the time since
/// the previous line and show the directions the pattern uses; progress and eta follow the runtime
/// (ramp_time included) of a time-based run from the moment its ramp begins, or the bytes issued
/// of a size-bound one.
/// </summary>
internal sealed class BenchStatusLine
{
    private static readonly CultureInfo Inv = CultureInfo.InvariantCulture;

    private readonly BenchOptions _o;
    private readonly BenchClock _clock;
    private readonly Func<(long Reads, long Writes, double IssuedShare)> _sample;
    private readonly long _started;
    private readonly Func<long?>? _rampStart;
    private long _lastAt;
    private long _lastReads;
    private long _lastWrites;

    /// <summary>
    /// A status line for a run of <paramref name="options"/> started now on <paramref name="clock"/>;
    /// <paramref name="sample"/> gives the I/Os completed so far by direction and the share of the
    /// size-bound work issued (0 to 1). <paramref name="rampStart"/> gives when the ramp began on
    /// <paramref name="clock"/> (the measured window, when there is no ramp), null while the jobs
    /// start and the JIT warm-up runs: a time-based run's progress counts from then (an outside
    /// audit: counted from the line's creation, a 2 s warm-up put it 25% ahead of the window,
    /// 99.9% at 73% of it). Without it, progress counts from the line's creation.
    /// </summary>
    public BenchStatusLine(BenchOptions options, BenchClock clock, Func<(long Reads, long Writes, double IssuedShare)> sample, Func<long?>? rampStart = null)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(clock);
        ArgumentNullException.ThrowIfNull(sample);
        _o = options;
        _clock = clock;
        _sample = sample;
        _started = clock.Timestamp;
        _lastAt = _started;
        _rampStart = rampStart;
    }

    /// <summary>The line now: rates since the previous call (or the start).</summary>
    public string Next()
    {
        var now = _clock.Timestamp;
        var (reads, writes, issued) = _sample();
        var seconds = Math.Max(BenchClock.Duration(now - _lastAt).TotalSeconds, 1e-9);
        var readIops = (reads - _lastReads) / seconds;
        var writeIops = (writes - _lastWrites) / seconds;
        _lastAt = now;
        _lastReads = reads;
        _lastWrites = writes;

        var elapsed = BenchClock.Duration(now - _started);
        double done;
        TimeSpan eta;
        if (_o.Runtime is { } runtime)
        {
            // The ramp and the window are ahead while the jobs start and the JIT warms up: 0% and
            // the whole of them to go.
            var from = _rampStart is null ? _started : _rampStart();
            elapsed = from is { } at ? BenchClock.Duration(Math.Max(0, now - at)) : TimeSpan.Zero;
            var total = runtime + _o.RampTime;
            done = Math.Min(1, elapsed / total);
            eta = total > elapsed ? total - elapsed : TimeSpan.Zero;
        }
        else
        {
            done = issued;
            eta = issued > 0 && issued < 1 ? elapsed * ((1 - issued) / issued) : TimeSpan.Zero;
        }

        var jobs = _o.NumJobs * _o.Devices;
        return Format(jobs, _o.Devices, State(_o), done * 100, _o.ReadShare > 0, _o.ReadShare < 100, readIops, writeIops, _o.BlockSize, eta);
    }

    /// <summary>fio's line from its figures.</summary>
    public static string Format(int jobs, int files, char state, double percent, bool showRead, bool showWrite, double readIops, double writeIops, int blockSize, TimeSpan eta)
    {
        var bw = new List<string>();
        var iops = new List<string>();
        if (showRead)
        {
            bw.Add($"r={Rate(readIops * blockSize)}");
            iops.Add($"r={BenchReport.Count(readIops)}");
        }

        if (showWrite)
        {
            bw.Add($"w={Rate(writeIops * blockSize)}");
            iops.Add($"w={BenchReport.Count(writeIops)}");
        }

        return string.Create(Inv, $"Jobs: {jobs} (f={files}): [{state}({jobs})][{percent:0.0}%][{string.Join(',', bw)}][{string.Join(',', iops)} IOPS][eta {Eta(eta)}]");
    }

    // fio's eta.c: num2str(rate in KiB/s, 4, 1024, pow2, N2S_BYTEPERSEC), e.g. 3604MiB/s.
    private static string Rate(double bytesPerSecond) => BenchReport.Num2Str((ulong)Math.Max(0, bytesPerSecond / 1024), 4, 1024, pow2: true, "B/s");

    /// <summary>fio's eta: <c>00m:07s</c>, <c>01h:02m:03s</c>, <c>1d:02h:03m:04s</c>.</summary>
    public static string Eta(TimeSpan eta)
    {
        var t = TimeSpan.FromSeconds(Math.Round(Math.Max(0, eta.TotalSeconds)));
        return t.Days > 0 ? string.Create(Inv, $"{t.Days}d:{t.Hours:00}h:{t.Minutes:00}m:{t.Seconds:00}s")
            : t.Hours > 0 ? string.Create(Inv, $"{t.Hours:00}h:{t.Minutes:00}m:{t.Seconds:00}s")
            : string.Create(Inv, $"{t.Minutes:00}m:{t.Seconds:00}s");
    }

    // fio's run-state letters: lower case random, upper case sequential.
    private static char State(BenchOptions o) => o.Pattern switch
    {
        IoPattern.Read => 'R',
        IoPattern.RandRead => 'r',
        IoPattern.Write => 'W',
        IoPattern.RandWrite => 'w',
        IoPattern.ReadWrite => 'M',
        _ => 'm',
    };
}

/// <summary>
/// fio's <c>--status-interval</c>: every interval a full report of the figures so far (cumulative
/// from the start of the measured window, so rates are running averages), in the output's formats;
/// with JSON one complete object per report, as fio does (the stream is a sequence of JSON
/// documents, <c>jq</c> reads it as is). The final report follows as usual.
/// </summary>
internal sealed class BenchStatusReports
{
    private readonly long _interval;
    private readonly BenchClock _clock;
    private readonly Func<BenchResult> _snapshot;
    private readonly TextWriter _output;
    private readonly OutputFormat _format;
    private long _next;

    /// <summary>Reports every <paramref name="interval"/> on <paramref name="clock"/> from now, of <paramref name="snapshot"/>, to <paramref name="output"/>.</summary>
    public BenchStatusReports(TimeSpan interval, BenchClock clock, Func<BenchResult> snapshot, TextWriter output, OutputFormat format)
    {
        ArgumentNullException.ThrowIfNull(clock);
        ArgumentNullException.ThrowIfNull(snapshot);
        ArgumentNullException.ThrowIfNull(output);
        ArgumentOutOfRangeException.ThrowIfLessThanOrEqual(interval, TimeSpan.Zero);
        _interval = BenchClock.Ticks(interval);
        _clock = clock;
        _snapshot = snapshot;
        _output = output;
        _format = format;
        _next = clock.Timestamp + _interval;
    }

    /// <summary>Reports written so far.</summary>
    public int Written { get; private set; }

    /// <summary>Time until the next report is due (zero when it is).</summary>
    public TimeSpan DueIn => BenchClock.Duration(Math.Max(0, _next - _clock.Timestamp));

    /// <summary>Writes a report if one is due; intervals that passed unseen are skipped, not made up.</summary>
    public bool Poll()
    {
        var now = _clock.Timestamp;
        if (now < _next)
        {
            return false;
        }

        var result = _snapshot();
        // Each format given, as the final report; a human summary is followed by a blank line.
        _output.Write(BenchReport.Render(result, _format) + ((_format & OutputFormat.Normal) != 0 ? "\n" : string.Empty));
        _output.Flush();
        Written++;
        while (_next <= now)
        {
            _next += _interval;
        }

        return true;
    }

    /// <summary>Reports until <paramref name="cancel"/>, waking when the next one is due.</summary>
    public async Task RunAsync(CancellationToken cancel)
    {
        try
        {
            while (!cancel.IsCancellationRequested)
            {
                await Task.Delay(DueIn + TimeSpan.FromMilliseconds(1), cancel).ConfigureAwait(false);
                Poll();
            }
        }
        catch (OperationCanceledException) when (cancel.IsCancellationRequested)
        {
        }
    }
}
