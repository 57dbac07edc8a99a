using System.Diagnostics;
using System.Runtime;
using System.Runtime.CompilerServices;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers;
using ActorBlk.Hardware.Drivers.File;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;
using ActorBlk.Hardware.Topology;

namespace ActorBlk.Host.Bench;

/// <summary>What a bench run measured.</summary>
internal sealed record BenchResult(
    BenchOptions Options,
    OpStats Read,
    OpStats Write,
    TimeSpan Measured,
    TimeSpan Elapsed,
    long Submitted,
    long Completed,
    long Errors,
    long Timeouts,
    double UsrCpu,
    double SysCpu,
    string DeviceDescription)
{
    /// <summary>The first error of the measured window (<see cref="BlockStatus.Ok"/> when none), fio's <c>first_error</c>.</summary>
    public BlockStatus FirstError { get; init; }

    /// <summary>
    /// The engine each hardware queue used, device after device, read after the run: a file
    /// device's io_uring or psync per queue (a queue whose ring could not be set up serves through
    /// psync), the driver's kind for other devices, null for a queue that never dispatched.
    /// </summary>
    public IReadOnlyList<string?> Engines { get; init; } = [];

    /// <summary>How long the run waited for the JIT before its ramp and window (<c>--jit_warmup</c>); zero without the wait.</summary>
    public TimeSpan JitWarmup { get; init; }

    /// <summary>Each device's figures (one entry per device of <c>--devices</c>).</summary>
    public IReadOnlyList<DeviceFigures> Devices { get; init; } = [];

    /// <summary>
    /// The dispatch mode the devices ran (the report's <c>dispatch=</c>, the JSON's
    /// <c>actorblk.dispatch</c>): ring, mailbox or bio, each device's <see cref="DeviceFigures.Dispatch"/>;
    /// when the devices differ, each mode once in the order of the devices, joined by <c>+</c> as
    /// <c>engine</c> joins engines (<c>ring+mailbox</c>). A result without device figures (built by
    /// a spec) reports the options'.
    /// </summary>
    public string Dispatch => string.Join('+',
        (Devices.Count > 0 ? Devices.Select(d => d.Dispatch) : [Options.Dispatch]).Distinct().Select(m => m.ToString().ToLowerInvariant()));

    /// <summary>Supervision over all devices: timeouts that expired, resets, faults injected.</summary>
    public SupervisionFigures Supervision { get; init; } = new();

    /// <summary>The CPU hotplug events sent while the load ran (<c>--hotplug-interval</c>); null without them.</summary>
    public HotplugFigures? Hotplug { get; init; }

    /// <summary>Where the device lives, for a run that joined a cluster (<c>--join</c>); null otherwise.</summary>
    public ClusterFigures? Cluster { get; init; }

    /// <summary>Second completions of a bio refused by the devices' queues (<c>RequestQueue.DoubleCompletions</c>); 0 unless the block layer has a bug.</summary>
    public long DoubleCompletions { get; init; }

    /// <summary>
    /// The devices that went offline during the run (an I/O completed with
    /// <see cref="BlockStatus.Offline"/>: the device is gone for good, its owner node left or
    /// was lost). The run stopped there, as nothing later could succeed.
    /// </summary>
    public IReadOnlyList<string> WentOffline { get; init; } = [];

    /// <summary>The process's context switches and page faults over the measured window (fio's ctx, majf, minf).</summary>
    public ResourceUsage.Snapshot Usage { get; init; }

    /// <summary>
    /// fio's disk utilisation: the disks a file device lives on (<see cref="DiskWatch"/>), their
    /// figures from the run's setup to its end; empty for a device on no disk of the machine.
    /// </summary>
    public IReadOnlyList<DiskUtil> Disks { get; init; } = [];

    /// <summary>Bandwidth and IOPS samples of reads over the measured window (<see cref="BenchSampler"/>).</summary>
    public IReadOnlyList<RateSample> ReadSamples { get; init; } = [];

    /// <summary>Bandwidth and IOPS samples of writes over the measured window.</summary>
    public IReadOnlyList<RateSample> WriteSamples { get; init; } = [];

    /// <summary>
    /// The figures of several devices run side by side as one: latencies merged, counters summed,
    /// the longest measured interval (they ran at the same time).
    /// </summary>
    public static BenchResult Combine(IReadOnlyList<BenchResult> results)
    {
        if (results.Count == 1)
        {
            return results[0];
        }

        var read = new OpStats();
        var write = new OpStats();
        foreach (var r in results)
        {
            read.Add(r.Read);
            write.Add(r.Write);
        }

        var first = results[0];
        var firstError = results.Select(r => r.FirstError).FirstOrDefault(e => e != BlockStatus.Ok);
        return new BenchResult(first.Options, read, write, results.Max(r => r.Measured), results.Max(r => r.Elapsed),
            results.Sum(r => r.Submitted), results.Sum(r => r.Completed), results.Sum(r => r.Errors), results.Sum(r => r.Timeouts),
            results.Max(r => r.UsrCpu), results.Max(r => r.SysCpu), $"{results.Count} devices{(first.Options.SharedTags ? " on one tag set" : string.Empty)}: {first.DeviceDescription}")
        {
            Devices = [.. results.SelectMany(r => r.Devices)],
            Engines = [.. results.SelectMany(r => r.Engines)],
            FirstError = firstError,
            JitWarmup = results.Max(r => r.JitWarmup),
            // One process: each device's window saw the same counters; the widest view is the largest.
            Usage = results.Select(r => r.Usage).MaxBy(u => u.ContextSwitches),
            Supervision = results.Select(r => r.Supervision).Aggregate((a, b) => a + b),
            WentOffline = [.. results.SelectMany(r => r.WentOffline)],
        };
    }
}

/// <summary>One device's share of a run.</summary>
/// <param name="Name">The device.</param>
/// <param name="Iops">Its completed I/Os per second over the measured interval.</param>
/// <param name="PeakInflight">
/// The most requests it held at once on its shared tags after ramp_time (the fair-share
/// accounting, <c>nr_active</c>); null when its tag set is not shared.
/// </param>
/// <param name="WentIdle">Times a timeout scan found it idle during the measured interval, handing its share to the others.</param>
/// <param name="Engines">The engine of each of its hardware queues (see <see cref="BenchResult.Engines"/>).</param>
/// <param name="Dispatch">
/// How its requests travel, as the device runs it (<see cref="IBlockDevice.Dispatch"/>, read when the
/// run was set up): ring or mailbox, bio for a stacked device; for a device of the cluster, its
/// local queue's.
/// </param>
internal sealed record DeviceFigures(string Name, double Iops, int? PeakInflight, long WentIdle, IReadOnlyList<string?> Engines, DispatchMode Dispatch);

/// <summary>What supervision saw and the fault injector did.</summary>
internal sealed record SupervisionFigures(long TimeoutsExpired = 0, long Resets = 0, long DeviceErrors = 0, FaultTotals? Faults = null)
{
    public static SupervisionFigures operator +(SupervisionFigures a, SupervisionFigures b) => new(
        a.TimeoutsExpired + b.TimeoutsExpired, a.Resets + b.Resets, a.DeviceErrors + b.DeviceErrors,
        a.Faults is null ? b.Faults : b.Faults is null ? a.Faults : a.Faults + b.Faults);
}

/// <summary>Faults injected, by kind.</summary>
internal sealed record FaultTotals(long Errors, long Resource, long Lost, long Stalls, long Crashes)
{
    public static FaultTotals operator +(FaultTotals a, FaultTotals b) =>
        new(a.Errors + b.Errors, a.Resource + b.Resource, a.Lost + b.Lost, a.Stalls + b.Stalls, a.Crashes + b.Crashes);
}

/// <summary>
/// Drives a device the way fio drives a file: <c>numjobs</c> jobs, each keeping <c>iodepth</c>
/// I/Os in flight. Every in-flight slot submits one I/O with a completion call-back (the device's
/// lowest-overhead interface, as fio engines use callbacks), records it and submits the next; the
/// I/O path allocates nothing, so neither does a slot.
/// With <c>--io-poll</c> each job is a thread that submits polled I/O and polls for it, as fio's
/// io_uring engine does with <c>hipri</c>.
/// </summary>
internal sealed class BenchRun
{
    private readonly BenchOptions _o;

    // The options' read share, read per I/O: computed once (the property derives it from the pattern).
    private readonly int _readShare;
    private readonly IBlockDevice _device;
    private readonly DispatchMode _dispatch;
    private readonly Job[] _jobs;
    private readonly BenchAccounting _accounting;
    private readonly TaskCompletionSource _started = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private int _jobsToStart;
    private volatile bool _stop;
    private long _runStarted = Stopwatch.GetTimestamp();

    // The process's CPU times and resource counts when the run, then its measured window, began:
    // what an interim report (Snapshot) measures from, as the final report measures from the window.
    private sealed record CpuBaseline(TimeSpan User, TimeSpan System, ResourceUsage.Snapshot Usage, long At)
    {
        public static CpuBaseline Now()
        {
            using var process = Process.GetCurrentProcess();
            return new(process.UserProcessorTime, process.PrivilegedProcessorTime, ResourceUsage.Now(), Stopwatch.GetTimestamp());
        }

        // The CPU figures from this baseline to a later one: user and system time in percent of
        // one CPU over the interval, and the resource counts it added.
        public (double User, double System, ResourceUsage.Snapshot Usage) To(CpuBaseline later)
        {
            var seconds = Math.Max(Stopwatch.GetElapsedTime(At, later.At).TotalSeconds, 1e-9);
            return (CpuPercent(later.User - User, seconds), CpuPercent(later.System - System, seconds), later.Usage - Usage);
        }
    }

    private volatile CpuBaseline? _cpuBaseline;

    // The CPU figures' end, taken as the window closes: a status report after that (a run that
    // ended before the interval, one device's run done while another's goes on) measures CPU to
    // the window's end, as its other figures stop there. They ran on to the report before.
    private volatile CpuBaseline? _cpuEnd;
    private long _rampStart = long.MaxValue;
    private volatile bool _offline;

    public BenchRun(BenchOptions options, IBlockDevice device, CpuSet onlineCpus, BenchClock? clock = null)
    {
        _o = options;
        _readShare = options.ReadShare;
        _device = device;
        // Read while the device is up: a stopped queue (a device gone offline) no longer says.
        _dispatch = device.Dispatch;
        _accounting = new BenchAccounting(clock ?? BenchClock.System, options.BlockSize);
        var cpus = onlineCpus.ToArray();
        // A job that failed at its setup (FailedJobs: its offset past the end) is not run, as fio's.
        _jobs = Enumerable.Range(0, options.NumJobs).Where(j => !options.FailedJobs.Contains(j)).Select(j =>
        {
            // One job keeps to the CPU it happens to run on; several are spread over the online CPUs.
            var cpu = options.NumJobs == 1 ? IBlockDevice.AnyCpu : cpus[j % cpus.Length];
            return new Job(j, cpu, options, device, seed: options.RandRepeat ? 0x9E3779B97F4A7C15UL + (ulong)j : (ulong)Random.Shared.NextInt64());
        }).ToArray();
        _jobsToStart = _jobs.Length;
    }

    /// <summary>
    /// Completes once every job of this run has submitted its first I/Os (each slot one), so the
    /// device holds its tags and counts as active. <see cref="RunAsync"/> starts its ramp from the
    /// moment all runs have started (fio starts every job before its ramp clock), so a device whose
    /// jobs start late cannot leave the others a larger fair share inside the measured window.
    /// </summary>
    public Task Started => _started.Task;

    /// <summary>
    /// When the ramp began on the run's clock (the window's opening when there is no ramp): after
    /// every run's jobs started and the JIT warm-up ended. Null before. The status line counts its
    /// progress from here over <c>--ramp_time</c> + <c>--runtime</c>.
    /// </summary>
    public long? RampStart => Volatile.Read(ref _rampStart) is var at && at != long.MaxValue ? at : null;

    /// <summary>Completed I/Os so far (for the progress line; a racy sum is fine).</summary>
    public long CompletedSoFar => _jobs.Sum(j => j.Slots.Sum(s => s.Completed));

    /// <summary>Completed reads so far (racy, for the status line).</summary>
    public long ReadsSoFar => _jobs.Sum(j => j.Slots.Sum(s => s.CompletedReads));

    /// <summary>Bytes completed so far.</summary>
    public long BytesSoFar => CompletedSoFar * _o.BlockSize;

    /// <summary>The share of the size-bound work issued so far, 0 to 1 (racy, for the status line).</summary>
    public double IssuedShare => _jobs.Average(j => j.IssuedShare);

    /// <summary>
    /// Each job's I/O logs (one per in-flight slot; <c>--write_lat_log</c>, <c>--write_iops_log</c>),
    /// empty without logging. Read once the run has ended.
    /// </summary>
    public IReadOnlyList<IReadOnlyList<IoLog>> JobLogs => [.. _jobs.Where(j => j.Slots[0].Log is not null).Select(j => (IReadOnlyList<IoLog>)[.. j.Slots.Select(s => s.Log!)])];

    /// <summary>The I/Os completed per window over the whole run (<c>--plot</c>), or null without a plot. Read once the run has ended.</summary>
    public IReadOnlyList<IoLog>? Timelines => _jobs[0].Slots[0].Timeline is null ? null : [.. _jobs.SelectMany(j => j.Slots).Select(s => s.Timeline!)];

    /// <summary>
    /// What the run measured so far, while it runs (<c>--status-interval</c>): the accounting's
    /// snapshot (see <see cref="BenchAccounting.Snapshot"/>) and the slots' counters, and with
    /// <paramref name="full"/> (a status report) the CPU figures and engines; the 500 ms sampler
    /// needs only the counts.
    /// </summary>
    public BenchResult Snapshot(bool full = true)
    {
        var (read, write, measured) = _accounting.Snapshot();
        long submitted = 0, completed = 0, errors = 0, timeouts = 0;
        foreach (var slot in _jobs.SelectMany(j => j.Slots))
        {
            submitted += slot.Submitted;
            completed += slot.Completed;
            errors += slot.Errors;
            timeouts += slot.Timeouts;
        }

        var seconds = Math.Max(measured.TotalSeconds, 1e-9);

        // CPU, context switches, faults and engines as the final report gives them, measured from
        // the window's start (from the run's during the ramp) to its end once it closed, or to now:
        // interim reports had 0 for the CPU figures and "none" for the engine (an outside audit;
        // fio fills them in its interim reports).
        var (usr, sys, usage) = full && _cpuBaseline is { } from ? from.To(_cpuEnd ?? CpuBaseline.Now()) : (0.0, 0.0, default(ResourceUsage.Snapshot));

        IReadOnlyList<string?> engines = full ? EnginesOf(_device) : [];

        // Elapsed is wall time since the run started, as fio's "elapsed" (it was the window's length).
        return new BenchResult(_o, read, write, measured, Stopwatch.GetElapsedTime(_runStarted), submitted, completed, errors, timeouts, usr, sys, _device.ToString() ?? _device.Name)
        {
            Devices = [new DeviceFigures(_device.Name, (read.Ios + write.Ios) / seconds, null, 0, engines, _dispatch)],
            Engines = engines,
            Usage = usage,
        };
    }

    /// <summary>Runs the jobs to the end of the window.</summary>
    /// <param name="allStarted">
    /// Completes when the jobs of every run of the same bench have started (see <see cref="Started"/>);
    /// the ramp is counted from then. Null for a run alone: its own <see cref="Started"/>.
    /// </param>
    /// <param name="cancellationToken">Ends the wait for the window early.</param>
    public async Task<BenchResult> RunAsync(Task? allStarted = null, CancellationToken cancellationToken = default)
    {
        var started = Stopwatch.GetTimestamp();
        _runStarted = started;
        _cpuBaseline = CpuBaseline.Now();
        var ramping = _o.RampTime > TimeSpan.Zero;
        var warming = _o.JitWarmup > TimeSpan.Zero && _o.Runtime is not null;
        if (!ramping && !warming)
        {
            _accounting.OpenWindow(_o.Runtime);
            Volatile.Write(ref _rampStart, _accounting.WindowStart);
        }

        var work = Task.WhenAll(_jobs.Select(RunJobAsync));
        var warmup = TimeSpan.Zero;
        if (ramping || warming)
        {
            await Task.WhenAny(work, allStarted ?? Started).ConfigureAwait(false);
            if (warming)
            {
                warmup = await WaitForJitAsync(work, _o.JitWarmup, JitQuiet, cancellationToken).ConfigureAwait(false);
            }

            Volatile.Write(ref _rampStart, _accounting.Now);
            if (ramping)
            {
                await Task.WhenAny(work, Task.Delay(_o.RampTime, cancellationToken)).ConfigureAwait(false);
            }

            if (work.IsCompleted || cancellationToken.IsCancellationRequested)
            {
                // Nothing is left to measure: the work ended inside the ramp (a size-bound run), or
                // a signal stopped the run before its window. The window used to open here anyway
                // and stay open until the jobs were told to stop, so the report gave a runtime of a
                // few ms with no I/O in it, or (after a signal) the I/Os completed after the signal.
                _accounting.OpenEmptyWindow();
            }
            else
            {
                _accounting.OpenWindow(_o.Runtime);
            }
        }

        // Peak in-flight counts start over with the measured interval.
        foreach (var hctx in _device.Queue.HardwareContexts)
        {
            hctx.ResetPeakActive();
        }

        var idle0 = _device.Queue.HardwareContexts.Sum(h => h.IdleTransitions);

        var window = CpuBaseline.Now();
        _cpuBaseline = window;
        if (_o.Runtime is { } runtime)
        {
            await Task.WhenAny(work, Task.Delay(runtime, cancellationToken)).ConfigureAwait(false);

            // .NET's timers count on a coarse clock (CLOCK_MONOTONIC_COARSE on Linux, a jiffy of up
            // to 4 ms), so the delay may end before the window's end on the run's clock, and closing
            // the window then cut it short: 1998 or 1999 ms for --runtime=2 in some runs, where README
            // promises runtime is exactly --runtime. The jobs go on to the end fixed when it opened.
            while (!work.IsCompleted && !cancellationToken.IsCancellationRequested && _accounting.Now < _accounting.WindowEnd)
            {
                await Task.WhenAny(work, Task.Delay(1, cancellationToken)).ConfigureAwait(false);
            }
        }
        else
        {
            await Task.WhenAny(work, Task.Delay(Timeout.Infinite, cancellationToken)).ConfigureAwait(false);
        }

        // The window ends at runtime (fixed when it opened) or now if the work ended first;
        // completions after its end, while the jobs wind down, are not recorded.
        _accounting.CloseWindow();
        var end = CpuBaseline.Now();
        _cpuEnd = end;
        // A window that measured nothing (OpenEmptyWindow) has no CPU share either: over its zero
        // length the few ms between the baselines read as every CPU busy (usr=200% on two).
        var (usr, sys, usage) = _accounting.Measured > TimeSpan.Zero ? window.To(end) : (0.0, 0.0, end.Usage - end.Usage);
        int? peak = _device.Queue.Kind == QueueKind.MultiQueue && _device.Queue.TagSet.IsShared ? _device.Queue.HardwareContexts.Max(h => h.PeakActiveRequests) : null;
        var wentIdle = _device.Queue.HardwareContexts.Sum(h => h.IdleTransitions) - idle0;
        _stop = true;
        await work.ConfigureAwait(false);
        foreach (var slot in _jobs.SelectMany(j => j.Slots))
        {
            slot.Release();
        }

        var measured = _accounting.Measured;
        var (read, write, firstError) = _accounting.Collect();
        _accounting.Dispose();
        long submitted = 0, completed = 0, errors = 0, timeouts = 0;
        foreach (var slot in _jobs.SelectMany(j => j.Slots))
        {
            submitted += slot.Submitted;
            completed += slot.Completed;
            errors += slot.Errors;
            timeouts += slot.Timeouts;
        }

        // Read after the run: a hardware queue picks its engine when its dispatch starts.
        var engines = EnginesOf(_device);
        var seconds = Math.Max(measured.TotalSeconds, 1e-9);
        return new BenchResult(_o, read, write, measured, Stopwatch.GetElapsedTime(started), submitted, completed, errors, timeouts,
            usr, sys, _device.ToString() ?? _device.Name)
        {
            Devices = [new DeviceFigures(_device.Name, (read.Ios + write.Ios) / seconds, peak, wentIdle, engines, _dispatch)],
            Engines = engines,
            // The window's first error, as fio's; a run whose errors all fell outside it (every I/O
            // failing in the ramp, say) reports the run's first, so err= is never 0 after errors.
            FirstError = firstError != BlockStatus.Ok ? firstError
                : _jobs.SelectMany(j => j.Slots).Select(s => s.FirstError).FirstOrDefault(e => e != BlockStatus.Ok),
            JitWarmup = warmup,
            Usage = usage,
            WentOffline = _offline ? [_device.Name] : [],
        };
    }

    // The process's CPU time over the window, in percent of one CPU. The times tick in 10 ms steps,
    // so a window of a few milliseconds (a device gone during the warm-up) could read 1,400% on two
    // CPUs (an outside audit); it is held to what the machine's CPUs can give.
    private static double CpuPercent(TimeSpan used, double seconds) =>
        Math.Min(100.0 * used.TotalSeconds / seconds, 100.0 * Environment.ProcessorCount);

    /// <summary>The window over which the warm-up looks at the JIT's work.</summary>
    internal static readonly TimeSpan JitQuiet = TimeSpan.FromMilliseconds(500);

    /// <summary>The share of one CPU the JIT may still use over <see cref="JitQuiet"/> for the warm-up to end.</summary>
    internal const double JitQuietShare = 0.05;

    /// <summary>
    /// The JIT warm-up of a time-based run (<c>--jit_warmup</c>): while the jobs run unmeasured,
    /// waits until the JIT spent less than <see cref="JitQuietShare"/> of a CPU compiling over the
    /// last <paramref name="quiet"/> (the I/O path's methods have gone through tiered compilation
    /// to their optimised code, and the bulk of the background compilations that compete with the
    /// jobs for the CPUs is over), at most <paramref name="limit"/>, or until the work ends.
    /// Returns how long it waited.
    /// </summary>
    /// <remarks>
    /// Without it the first second or so of a run measures tier-0 and instrumented code and a
    /// compiler thread busy beside the jobs: at queue depth 1 on the file device that was 55-90%
    /// of the later rate over the first 1-1.5 s, a few percent of a 5 s run. The window is longer
    /// than the runtime's call-counting delay (100 ms after the last tier-0 compilation; a pause
    /// of 270 ms was seen before tier-up began), so the pause before tier-up does not end it.
    /// </remarks>
    internal static async Task<TimeSpan> WaitForJitAsync(Task work, TimeSpan limit, TimeSpan quiet, CancellationToken cancellationToken)
    {
        var poll = TimeSpan.FromMilliseconds(Math.Clamp(quiet.TotalMilliseconds / 10, 1, 100));
        var start = Stopwatch.GetTimestamp();
        var samples = new Queue<(long At, TimeSpan Jit)>();
        samples.Enqueue((start, JitInfo.GetCompilationTime()));
        var budget = quiet * JitQuietShare;
        while (!work.IsCompleted && !cancellationToken.IsCancellationRequested && Stopwatch.GetElapsedTime(start) < limit)
        {
            await Task.WhenAny(work, Task.Delay(poll, cancellationToken)).ConfigureAwait(false);
            var now = Stopwatch.GetTimestamp();
            var jit = JitInfo.GetCompilationTime();

            // The oldest sample still at least a window old marks the window's start.
            while (samples.Count > 1 && Stopwatch.GetElapsedTime(samples.ElementAt(1).At, now) >= quiet)
            {
                samples.Dequeue();
            }

            var (at, before) = samples.Peek();
            samples.Enqueue((now, jit));
            if (Stopwatch.GetElapsedTime(at, now) >= quiet && jit - before < budget)
            {
                break;
            }
        }

        return Stopwatch.GetElapsedTime(start);
    }

    /// <summary>
    /// The width of a plot window: about 200 points over the runtime, at least 10 ms (100 ms
    /// when the run is size bound and its length unknown).
    /// </summary>
    internal static int PlotWindowMs(BenchOptions o) => o.Runtime is { } r ? (int)Math.Clamp(r.TotalMilliseconds / 200, 10, 60_000) : 100;

    /// <summary>The engine each hardware queue of <paramref name="device"/> uses now (null: the queue never dispatched).</summary>
    internal static IReadOnlyList<string?> EnginesOf(IBlockDevice device)
    {
        if (device.Queue.Kind != QueueKind.MultiQueue)
        {
            // A stacked device (bio-based): no hardware queues of its own.
            return [];
        }

        var driver = device.Queue.Driver;
        while (driver is FaultInjectionDriver faulty)
        {
            driver = faulty.Inner;
        }

        return [.. device.Queue.HardwareContexts.Select(h => driver is FileBlockDriver file ? file.EngineOf(h) : driver.Kind)];
    }

    private Task RunJobAsync(Job job)
    {
        if (_o.IoPoll)
        {
            // A polling job spins on its own thread, as fio's io_uring engine does with hipri.
            return Task.Factory.StartNew(() => RunPolledJob(job), CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default);
        }

        return Task.Run(() =>
        {
            foreach (var slot in job.Slots)
            {
                slot.Bind(this, job);
            }

            // Every slot's first I/O goes out before any slot's second, as fio fills its iodepth:
            // one that completes inline waits on this thread's list until every slot has started.
            // Before, the first slot's submissions went on here; on a device whose every I/O
            // completes inside its submission (a mirror over legs at irqmode=0) that loop did not
            // return, the other slots never started, and a run that waits for its jobs to start
            // (a JIT warm-up, the command line's default, or a ramp) never began its window: the
            // bench spun for ever and ignored SIGTERM.
            foreach (var slot in job.Slots)
            {
                slot.SubmitFirst();
            }

            JobStarted();
            Slot.SubmitPending();

            return Task.WhenAll(job.Slots.Select(s => s.Done));
        });
    }

    private void JobStarted()
    {
        if (Interlocked.Decrement(ref _jobsToStart) == 0)
        {
            _started.TrySetResult();
        }
    }

    private void RunPolledJob(Job job)
    {
        var inflight = new (PolledIo Io, bool Read, long T0, long Offset)[job.Slots.Length];
        var busy = new bool[inflight.Length];
        var active = 0;
        for (var i = 0; i < inflight.Length && job.TryClaim(); i++)
        {
            inflight[i] = SubmitPolled(job, job.Slots[i]);
            busy[i] = true;
            active++;
        }

        JobStarted();

        var index = 0;
        while (active > 0)
        {
            ref var entry = ref inflight[index];
            if (busy[index])
            {
                var slot = job.Slots[index];
                _device.Poll(entry.Io);
                var status = entry.Io.Completion.Result;
                Record(slot, entry.Read, status, entry.T0, entry.Offset);
                if (!_stop && job.TryClaim())
                {
                    entry = SubmitPolled(job, slot);
                }
                else
                {
                    entry = default;
                    busy[index] = false;
                    active--;
                }
            }

            index = (index + 1) % inflight.Length;
        }
    }

    private (PolledIo, bool, long, long) SubmitPolled(Job job, Slot slot)
    {
        var read = NextIsRead(slot);
        var offset = NextOffset(job, slot);
        var t0 = _accounting.Now;
        var io = _device.Submit(read ? BlockOp.Read : BlockOp.Write, offset, slot.Buffer, job.Cpu);
        slot.Submitted++;
        return (io, read, t0, offset);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private bool NextIsRead(Slot slot) => _readShare switch
    {
        100 => true,
        0 => false,
        var share => (int)(slot.NextRandom() % 100) < share,
    };

    // Inside the job's region (fio's file_offset + a block of io_size), random or in order.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private long NextOffset(Job job, Slot slot) => job.Start + (_o.IsRandom
        ? (long)Math.BigMul(slot.NextRandom(), (ulong)job.Blocks, out _) * _o.BlockSize // the high word: uniform in [0, blocks) without a division
        : job.NextSequential());

    // Counters stay per slot (the whole run, for submitted == completed); what the window
    // measured is kept per completing thread by the accounting. Two timestamps per I/O (as fio
    // with disable_slat): the asynchronous call returns at once, so submission and completion
    // latency are one measurement.
    private void Record(Slot slot, bool read, BlockStatus status, long t0, long offset)
    {
        slot.Completed++;
        if (status != BlockStatus.Ok)
        {
            if (status == BlockStatus.Offline)
            {
                // The device is gone for good: every later I/O would fail at once, so the jobs
                // stop here instead of spinning on errors until the runtime ends.
                _offline = true;
                _stop = true;
            }

            slot.Errors++;
            if (slot.FirstError == BlockStatus.Ok)
            {
                slot.FirstError = status;
            }

            if (status == BlockStatus.Timeout)
            {
                slot.Timeouts++;
            }
        }

        if (read)
        {
            slot.CompletedReads++;
        }

        if (_accounting.Record(read, status, t0, out var completed) && status == BlockStatus.Ok && (slot.Log ?? slot.Timeline) is not null)
        {
            var at = BenchClock.Nanoseconds(completed - _accounting.WindowStart);
            var latency = BenchClock.Nanoseconds(Math.Max(0, completed - t0)); // readings of two CPUs' counters may cross by a few ns
            slot.Log?.Add(at, latency, read, _o.BlockSize, offset);
            slot.Timeline?.Add(at, latency, read, _o.BlockSize, offset);
        }
    }

    private sealed class Job
    {
        private readonly long _size;
        private readonly int _blockSize;
        private readonly bool _timeBased;
        private long _issued;
        private long _position;

        public Job(int index, int cpu, BenchOptions o, IBlockDevice device, ulong seed)
        {
            Index = index;
            Cpu = cpu;
            // Its region: fio's [file_offset, file_offset + io_size), which offset_increment moves
            // per job; size-bound, a job issues io_size bytes.
            var region = o.Regions is { } regions ? regions[index] : new IoRegion(o.Offset + (index * o.OffsetIncrement), o.Size);
            Start = region.Start;
            _size = region.Length;
            _blockSize = o.BlockSize;
            _timeBased = o.Runtime is not null;
            Blocks = region.Length / o.BlockSize;
            Slots = Enumerable.Range(0, o.IoDepth).Select(s => new Slot(device.AllocateBuffer(o.BlockSize), seed + ((ulong)s * 0xBF58476D1CE4E5B9UL))
            {
                Log = o.LatLog is not null || o.IopsLog is not null ? new IoLog(o.LogAvgMsec) : null,
                Timeline = o.Plot is not null ? new IoLog(PlotWindowMs(o)) : null,
            }).ToArray();
        }

        /// <summary>The share of <c>size</c> issued so far (0 when time based).</summary>
        public double IssuedShare => _timeBased ? 0 : Math.Min(1.0, (double)Volatile.Read(ref _issued) / _size);

        public int Index { get; }

        public int Cpu { get; }

        /// <summary>Where the job's region starts on the device, in bytes.</summary>
        public long Start { get; }

        public long Blocks { get; }

        public Slot[] Slots { get; }

        /// <summary>Claims the next I/O: always when time based, otherwise until <c>size</c> bytes were issued.</summary>
        public bool TryClaim() => _timeBased || Interlocked.Add(ref _issued, _blockSize) <= _size;

        public long NextSequential()
        {
            var pos = Interlocked.Add(ref _position, _blockSize) - _blockSize;
            return pos % (Blocks * _blockSize);
        }
    }

    // A thread's submissions of the bench's slots: whether it is inside one now, and the slots whose
    // I/O completed inline there, for that submission to go on with once it returns (as the kernel
    // queues bios submitted during a submission on current->bio_list instead of recursing). One
    // thread-static read per I/O, where a compare-and-swap on the slot used to decide who goes on.
    // First in, first out, as bio_list_add and bio_list_pop: a stack let a slot whose every I/O
    // completes inline (a mirror degraded onto a memory leg) go on for ever on top of the slots
    // whose completions had landed on this thread before it, which were never submitted again.
    private sealed class SubmitterState
    {
        [ThreadStatic]
        private static SubmitterState? t_current;

        /// <summary>True while the thread is inside a slot's submission.</summary>
        public bool InSubmit;

        /// <summary>The oldest slot whose I/O completed inline during that submission.</summary>
        public Slot? Pending;

        /// <summary>The newest such slot.</summary>
        public Slot? PendingTail;

        public static SubmitterState Current => t_current ??= new SubmitterState();
    }

    // An in-flight slot: it submits one I/O with itself as the completion call-back, records it
    // when it completes and submits the next, like one iodepth entry of a fio job. The call-back
    // runs on the completion context; a slot is only ever touched by the flow of its current I/O.
    private sealed class Slot(AlignedBuffer memory, ulong seed) : IBioEndIo
    {
        // Aligned memory from the device, as fio allocates its buffers: O_DIRECT takes it without
        // a bounce copy, and with --fixedbufs it is registered memory.
        private readonly AlignedBuffer _memory = memory;

        private readonly TaskCompletionSource _done = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private ulong _state = seed == 0 ? 0x2545F4914F6CDD1DUL : seed;
        private BenchRun? _run;
        private Job? _job;
        private bool _read;
        private long _t0;
        private long _offset;

        // The next slot on its thread's list of slots whose I/O completed inside a submission.
        private Slot? _nextPending;

        public Task Done => _done.Task;

        public void Bind(BenchRun run, Job job)
        {
            _run = run;
            _job = job;
        }

        public void SubmitNext() => SubmitNext(SubmitterState.Current);

        /// <summary>
        /// Submits this slot's first I/O only: if it completes inside the submission, the slot waits
        /// on the calling thread's list for <see cref="SubmitPending"/>.
        /// </summary>
        public void SubmitFirst() => SubmitOne(SubmitterState.Current);

        /// <summary>Goes on with the slots on the calling thread's list, first in, first out, until it is empty.</summary>
        public static void SubmitPending()
        {
            var thread = SubmitterState.Current;
            Pop(thread)?.SubmitNext(thread);
        }

        public void OnBioComplete(Bio bio, BlockStatus status)
        {
            _run!.Record(this, _read, status, _t0, _offset);

            // Completed inside a submission on this thread (a stacked device over legs that
            // complete inline): that submission goes on with this slot once it returns, so the
            // stack does not grow with every I/O. Anywhere else (the usual case: a later round of
            // the dispatch loop, or another thread while the submitter is still returning) the
            // next I/O is submitted here, and nothing is shared with the submitter to decide it.
            var thread = SubmitterState.Current;
            if (thread.InSubmit)
            {
                if (thread.PendingTail is { } tail)
                {
                    tail._nextPending = this;
                }
                else
                {
                    thread.Pending = this;
                }

                thread.PendingTail = this;
                return;
            }

            SubmitNext(thread);
        }

        private void SubmitNext(SubmitterState thread)
        {
            for (var slot = this; slot is not null; slot = Pop(thread))
            {
                slot.SubmitOne(thread);
            }
        }

        // The oldest slot of the thread's list, taken off it; null when the list is empty.
        private static Slot? Pop(SubmitterState thread)
        {
            var slot = thread.Pending;
            if (slot is not null)
            {
                thread.Pending = slot._nextPending;
                if (thread.Pending is null)
                {
                    thread.PendingTail = null;
                }

                slot._nextPending = null;
            }

            return slot;
        }

        private void SubmitOne(SubmitterState thread)
        {
            var run = _run!;
            var job = _job!;
            if (run._stop || !job.TryClaim())
            {
                _done.TrySetResult();
                return;
            }

            _read = run.NextIsRead(this);
            var offset = run.NextOffset(job, this);
            _offset = offset;
            Submitted++;
            _t0 = run._accounting.SubmissionNow;
            thread.InSubmit = true;
            try
            {
                run._device.SubmitWithEndIo(_read ? BlockOp.Read : BlockOp.Write, offset, Buffer.Length, Buffer, RequestFlags.None, job.Cpu, this);
            }
            catch (Exception ex)
            {
                // Refused (the device went away, for instance): not in flight, so not counted as
                // submitted; this slot ends with the error, and the exception goes neither into
                // the completion context that called us nor past the slots waiting on this
                // thread's list.
                Submitted--;
                _done.TrySetException(ex);
            }
            finally
            {
                thread.InSubmit = false;
            }
        }

        public Memory<byte> Buffer => _memory.Memory;

        /// <summary>Frees the buffer once no I/O uses it.</summary>
        public void Release() => ((IDisposable)_memory).Dispose();

        public long Submitted { get; set; }

        public long Completed { get; set; }

        public long CompletedReads { get; set; }

        /// <summary>This slot's entries of the job's fio logs, or null without logging.</summary>
        public IoLog? Log { get; init; }

        /// <summary>This slot's completions per plot window, or null without a plot.</summary>
        public IoLog? Timeline { get; init; }

        public long Errors { get; set; }

        /// <summary>The first error this slot saw over the whole run (ramp and wind-down included).</summary>
        public BlockStatus FirstError { get; set; }

        public long Timeouts { get; set; }

        // xorshift64*: fast, allocation-free, good enough to spread offsets.
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public ulong NextRandom()
        {
            var x = _state;
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            _state = x;
            return x * 0x2545F4914F6CDD1DUL;
        }
    }
}
