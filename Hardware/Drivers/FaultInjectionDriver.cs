using System.Collections.Concurrent;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;

namespace ActorBlk.Hardware.Drivers;

/// <summary>
/// What <see cref="FaultInjectionDriver"/> injects, as probabilities per request (0 to 1) and
/// counts. All zero means no injection.
/// </summary>
public sealed record FaultInjectionOptions
{
    /// <summary>Requests that fail with <see cref="BlockStatus.IoError"/> (<c>fault_error_rate</c>).</summary>
    public double ErrorRate { get; init; }

    /// <summary>Requests refused with Resource or DeviceResource, to be dispatched again (<c>fault_resource_rate</c>).</summary>
    public double ResourceRate { get; init; }

    /// <summary>Requests whose completion is lost, so they time out (<c>fault_timeout_rate</c>).</summary>
    public double TimeoutRate { get; init; }

    /// <summary>Requests before which the device stalls for <see cref="Latency"/> (<c>fault_latency_rate</c>).</summary>
    public double LatencyRate { get; init; }

    /// <summary>How long a latency spike stalls the hardware queue (<c>fault_latency</c>, 10 ms).</summary>
    public TimeSpan Latency { get; init; } = TimeSpan.FromMilliseconds(10);

    /// <summary>Every this many requests the device crashes (<c>fault_crash_after</c>; 0 = never).</summary>
    public long CrashAfter { get; init; }

    /// <summary>A crash leaves the device gone rather than in a transient error (<c>fault_gone</c>).</summary>
    public bool CrashIsGone { get; init; }

    /// <summary>How many reopen attempts of a gone device fail before one succeeds (<c>fault_reopen_failures</c>; -1 = never reopens).</summary>
    public int ReopenFailures { get; init; }

    /// <summary>Seed of the decisions (<c>fault_seed</c>): the same seed gives each hardware queue the same sequence of faults.</summary>
    public int Seed { get; init; } = 1;

    /// <summary>True when anything is injected.</summary>
    public bool Enabled => ErrorRate > 0 || ResourceRate > 0 || TimeoutRate > 0 || LatencyRate > 0 || CrashAfter > 0;

    // How far a sum of rates may lie from 1 through binary rounding alone.
    internal const double RateTolerance = 1e-9;

    /// <summary>Throws for a probability outside 0..1, a negative count or latency.</summary>
    /// <exception cref="ArgumentOutOfRangeException">An option is out of range.</exception>
    public void Validate()
    {
        Check(ErrorRate, "fault_error_rate");
        Check(ResourceRate, "fault_resource_rate");
        Check(TimeoutRate, "fault_timeout_rate");
        Check(LatencyRate, "fault_latency_rate");
        // A tolerance for the sum's rounding: 0.2 + 0.4 + 0.3 + 0.1 is 1.0000000000000002 in binary
        // floating point, and those rates were refused as adding up to more than 1 (a review).
        if (ErrorRate + ResourceRate + TimeoutRate + LatencyRate > 1 + RateTolerance)
        {
            throw new ArgumentOutOfRangeException("fault_error_rate", FormattableString.Invariant($"the fault rates (fault_error_rate {ErrorRate}, fault_resource_rate {ResourceRate}, fault_timeout_rate {TimeoutRate}, fault_latency_rate {LatencyRate}) add up to more than 1."));
        }

        // Each key on its own, so that the error names the key that is wrong.
        if (Latency < TimeSpan.Zero)
        {
            throw new ArgumentOutOfRangeException("fault_latency", FormattableString.Invariant($"{Latency.TotalMilliseconds} ms cannot be negative."));
        }

        if (CrashAfter < 0)
        {
            throw new ArgumentOutOfRangeException("fault_crash_after", FormattableString.Invariant($"{CrashAfter} cannot be negative (0 never crashes)."));
        }

        if (ReopenFailures < -1)
        {
            throw new ArgumentOutOfRangeException("fault_reopen_failures", FormattableString.Invariant($"{ReopenFailures} cannot be below -1 (-1: the reopens never succeed)."));
        }

        static void Check(double rate, string name)
        {
            if (double.IsNaN(rate) || rate is < 0 or > 1)
            {
                throw new ArgumentOutOfRangeException(name, rate, $"{name} must be a probability from 0 to 1.");
            }
        }
    }
}

/// <summary>
/// Wraps any driver and injects faults into the requests handed to it, like null_blk's fault
/// injection: I/O errors, Resource/DeviceResource refusals, lost completions (the request times
/// out and the retry rule takes over), latency spikes (the hardware queue stalls), and a device
/// crash every N requests, transient (the supervisor resets the device) or gone (the supervisor
/// stops it; reopening fails a configured number of times).
/// </summary>
/// <remarks>
/// <para>
/// Decisions are drawn per hardware queue from a generator seeded with the seed and the queue's
/// index, in dispatch order, so a seed gives each hardware queue the same faults on every run.
/// Hardware queue 0 draws from <c>new Random(seed)</c>, queue <c>i</c> from the seed plus
/// <c>i</c> times 0x9E3779B9 (see <see cref="GeneratorSeed"/>). The generator's seed was
/// <c>HashCode.Combine(seed, index)</c>, which .NET randomises per process: a seed repeated its
/// faults within one process only, and a bench run with <c>--fault-seed=3</c> injected different
/// faults each time (at <c>--fault-timeout-rate=0.002</c>, over 4,096 I/Os, none lost about one
/// run in 6,000, which failed <c>BenchSpec</c>'s check that timeouts happened).
/// </para>
/// <para>
/// The wrapper is resettable only when the wrapped driver is: a reset lets the block layer take
/// back every request the driver held, and only a driver whose own reset abandons them (the null
/// device drops its timers) can promise that the device no longer touches their buffers. The file
/// device's requests are in the kernel, so a crash injected over it is a reset that takes nothing
/// back: its stopped hardware queues start again and the kernel's requests complete as they
/// would. A gone device is always reopened (<see cref="DriverFeatures.Reopenable"/>), and the
/// block layer takes back what the old device held after a reopen, so over a driver that cannot
/// abandon its requests <see cref="Reopen"/> first waits until the device has answered every
/// request handed to it, up to <see cref="InnerDrainLimit"/>, as a controller reset stops the
/// hardware from touching any request's memory before the block layer cancels them.
/// </para>
/// <para>
/// The wrapped driver's allocation map (NBD block status) is passed through, as nbdkit's error
/// filter passes its plugin's extents through while it fails reads: no fault changes what a read
/// that succeeds returns (a hole still reads as zeroes), they only fail or delay it. When no read
/// can succeed (<see cref="ReadsCanSucceed"/>, or the device is gone until it reopens) a hole does not read at all: the device answers
/// data, as the file device does past the end of a file cut behind its back, so a client reads it
/// and meets the faults instead of copying zeroes.
/// </para>
/// </remarks>
public sealed class FaultInjectionDriver : IBlockDriver, IAllocationMap
{
    private readonly IBlockDriver _inner;
    private readonly FaultInjectionOptions _options;
    private readonly ConcurrentDictionary<int, Random> _random = new();
    private readonly ConcurrentDictionary<Request, uint> _lost = new();

    // The wrapped driver cannot abandon its requests: those it accepted, each with the generation
    // it was started under, so a reopen can wait until the device answered them all.
    private readonly bool _innerAbandons;
    private readonly ConcurrentDictionary<Request, uint> _handedOver = new();
    private long _requests;
    private int _reopenFailuresLeft;
    private volatile bool _gone;
    private volatile bool _recoveryCancelled;

    /// <summary>Wraps <paramref name="inner"/>.</summary>
    /// <exception cref="ArgumentOutOfRangeException">An option is out of range.</exception>
    public FaultInjectionDriver(IBlockDriver inner, FaultInjectionOptions options)
    {
        ArgumentNullException.ThrowIfNull(inner);
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        _inner = inner;
        _options = options;
        _reopenFailuresLeft = options.ReopenFailures;
        _innerAbandons = (inner.Features & DriverFeatures.Resettable) != 0;
    }

    /// <summary>
    /// How long a reopen waits for a wrapped driver that cannot abandon its requests (the file
    /// device) to answer those it holds before the attempt fails (30 s, the io_uring engine's own
    /// drain limit).
    /// </summary>
    internal TimeSpan InnerDrainLimit { get; set; } = TimeSpan.FromSeconds(30);

    /// <summary>The wrapped driver.</summary>
    public IBlockDriver Inner => _inner;

    /// <summary>The faults.</summary>
    public FaultInjectionOptions Options => _options;

    /// <summary>Requests handed to this driver so far.</summary>
    public long Requests => Interlocked.Read(ref _requests);

    /// <summary>Counters of the faults injected so far.</summary>
    public FaultCounters Injected { get; } = new();

    /// <summary>True after a crash that left the device gone, until it reopens.</summary>
    public bool IsGone => _gone;

    /// <summary>
    /// False when every request handed to the device fails or never reaches it: the refusal,
    /// error and lost-completion rates add up to 1 (drawn as <see cref="QueueRq"/> draws them), or
    /// the device crashes at every request (<c>fault_crash_after</c> 1).
    /// </summary>
    internal bool ReadsCanSucceed =>
        _options.ResourceRate + _options.ErrorRate + _options.TimeoutRate < 1 - FaultInjectionOptions.RateTolerance && _options.CrashAfter != 1;

    /// <inheritdoc />
    public string Kind => "faulty";

    /// <inheritdoc />
    public string Description =>
        $"fault injection over {_inner.Kind} (errors {_options.ErrorRate}, resource {_options.ResourceRate}, lost {_options.TimeoutRate}, " +
        $"latency {_options.LatencyRate} x {_options.Latency.TotalMilliseconds} ms, crash every {_options.CrashAfter}{(_options.CrashIsGone ? " (gone)" : string.Empty)}, seed {_options.Seed}): {_inner.Description}";

    /// <inheritdoc />
    public QueueLimits Limits => _inner.Limits;

    /// <inheritdoc />
    public bool ReadOnly => _inner.ReadOnly;

    /// <summary>
    /// The wrapped driver's features (<see cref="DriverFeatures.Resettable"/> only when it has it),
    /// and <see cref="DriverFeatures.Reopenable"/>; <see cref="DriverFeatures.Blocking"/> with latency spikes.
    /// </summary>
    public DriverFeatures Features =>
        _inner.Features | DriverFeatures.Reopenable | (_options.LatencyRate > 0 ? DriverFeatures.Blocking : 0);

    /// <inheritdoc />
    public int PayloadSize => _inner.PayloadSize;

    /// <inheritdoc />
    public void InitRequest(Request request, int hardwareQueue) => _inner.InitRequest(request, hardwareQueue);

    /// <inheritdoc />
    public void InitHardwareContext(HardwareContext hctx) => _inner.InitHardwareContext(hctx);

    /// <inheritdoc />
    public void ExitHardwareContext(HardwareContext hctx) => _inner.ExitHardwareContext(hctx);

    /// <inheritdoc />
    public AlignedBuffer? AllocateBuffer(int length) => _inner.AllocateBuffer(length);

    /// <inheritdoc />
    public BlockStatus QueueRq(HardwareContext hctx, Request request, bool last)
    {
        ArgumentNullException.ThrowIfNull(hctx);
        ArgumentNullException.ThrowIfNull(request);
        if (_gone)
        {
            throw new BlockDeviceErrorException($"{hctx}: the device is gone.", deviceGone: true);
        }

        var n = Interlocked.Increment(ref _requests);
        if (_options.CrashAfter > 0 && n % _options.CrashAfter == 0)
        {
            Interlocked.Increment(ref Injected.Crashes);
            if (_options.CrashIsGone)
            {
                _gone = true;
            }

            throw new BlockDeviceErrorException($"{hctx}: injected device crash after {n} requests.", _options.CrashIsGone);
        }

        var random = _random.GetOrAdd(hctx.Index, static (index, seed) => new Random(GeneratorSeed(seed, index)), _options.Seed);
        var roll = random.NextDouble();
        var edge = _options.ResourceRate;
        if (roll < edge)
        {
            Interlocked.Increment(ref Injected.Resource);

            // DeviceResource promises a rerun on the next completion: only when one will come.
            return random.Next(2) == 0 && HasOtherInFlight(hctx, request) ? BlockStatus.DeviceResource : BlockStatus.Resource;
        }

        if (roll < (edge += _options.ErrorRate))
        {
            Interlocked.Increment(ref Injected.Errors);
            request.Start();
            request.Complete(BlockStatus.IoError);
            return BlockStatus.Ok;
        }

        if (roll < (edge += _options.TimeoutRate))
        {
            Interlocked.Increment(ref Injected.Lost);
            request.Start();
            _lost[request] = request.Generation;
            return BlockStatus.Ok;
        }

        if (roll < edge + _options.LatencyRate)
        {
            Interlocked.Increment(ref Injected.Stalls);
            Thread.Sleep(_options.Latency);
        }

        if (_innerAbandons)
        {
            return _inner.QueueRq(hctx, request, last);
        }

        // Start gives the request the next generation (only its owner starts it, so no other can).
        var generation = unchecked(request.Generation + 1);
        var status = _inner.QueueRq(hctx, request, last);
        if (status == BlockStatus.Ok)
        {
            _handedOver[request] = generation;
        }

        return status;
    }

    /// <summary>
    /// The seed of hardware queue <paramref name="index"/>'s generator: <paramref name="seed"/>
    /// itself for queue 0, spread by the golden ratio (0x9E3779B9) for the others. The same in
    /// every process, unlike <see cref="HashCode"/>, whose values are randomised per process.
    /// </summary>
    internal static int GeneratorSeed(int seed, int index) => unchecked(seed + (index * -1640531527));

    /// <inheritdoc />
    public void CommitRqs(HardwareContext hctx) => _inner.CommitRqs(hctx);

    /// <inheritdoc />
    public int Poll(HardwareContext hctx) => _inner.Poll(hctx);

    /// <summary>
    /// A lost request timed out: the retry rule decides (dispatched again while retries last,
    /// then failed with <see cref="BlockStatus.Timeout"/>). Others go to the wrapped driver.
    /// </summary>
    public TimeoutAction Timeout(Request request)
    {
        ArgumentNullException.ThrowIfNull(request);
        if (_lost.TryRemove(request, out var generation) && generation == request.Generation && request.Queue is { } queue)
        {
            queue.RetryOrFail(request, BlockStatus.Timeout);
            return TimeoutAction.Done;
        }

        return _inner.Timeout(request);
    }

    /// <summary>
    /// Resets the device: lost requests are forgotten (the block layer takes them back), the
    /// wrapped driver is reset. Over a driver that cannot abandon its requests (the wrapper is then
    /// not resettable, and the block layer does not call this) it waits as <see cref="Reopen"/> does.
    /// </summary>
    /// <exception cref="BlockDeviceErrorException">The wrapped driver still holds requests after <see cref="InnerDrainLimit"/>, or the device is being removed.</exception>
    public void Reset()
    {
        AbandonInner();
        _lost.Clear();
    }

    /// <summary>
    /// Reopens a gone device: fails <see cref="FaultInjectionOptions.ReopenFailures"/> times first
    /// (always with -1). Then the wrapped driver is reset, or, when it cannot abandon its requests,
    /// the reopen waits until it has answered every request handed to it: the block layer takes
    /// back what is still in flight once the device is reopened.
    /// </summary>
    /// <exception cref="BlockDeviceErrorException">The device is still gone: an injected failure, the wrapped driver still holds requests after <see cref="InnerDrainLimit"/>, or the device is being removed.</exception>
    public void Reopen()
    {
        if (_options.ReopenFailures < 0 || Interlocked.Decrement(ref _reopenFailuresLeft) >= 0)
        {
            throw new BlockDeviceErrorException("Injected: the device is still gone.", deviceGone: true);
        }

        AbandonInner();
        _reopenFailuresLeft = _options.ReopenFailures;
        _lost.Clear();
        _gone = false;
    }

    /// <summary>A reopen waiting for the wrapped driver gives up at once, as does any later one; the wrapped driver is told too.</summary>
    public void CancelRecovery()
    {
        _recoveryCancelled = true;
        _inner.CancelRecovery();
    }

    /// <summary>The wrapped driver abandons its requests; the faults injected here hold none of their buffers.</summary>
    public void Abandon() => _inner.Abandon();

    /// <summary>
    /// The wrapped driver's map when it has one and a read can succeed (<see cref="ReadsCanSucceed"/>,
    /// and the device is not gone after an injected crash, <see cref="IsGone"/>, until it reopens);
    /// otherwise it cannot tell, and every byte counts as data.
    /// </summary>
    /// <inheritdoc />
    public bool TryGetExtent(long offset, long maxLength, out long length, out bool allocated)
    {
        if (ReadsCanSucceed && !_gone && _inner is IAllocationMap map)
        {
            return map.TryGetExtent(offset, maxLength, out length, out allocated);
        }

        (length, allocated) = (0, true);
        return false;
    }

    /// <summary>The wrapped driver's asynchronous map (a remote one's too), under the same conditions as <see cref="TryGetExtent"/>.</summary>
    /// <inheritdoc />
    public ValueTask<AllocationExtent?> GetExtentAsync(long offset, long maxLength, CancellationToken cancellationToken = default) =>
        ReadsCanSucceed && !_gone && _inner is IAllocationMap map
            ? map.GetExtentAsync(offset, maxLength, cancellationToken)
            : ValueTask.FromResult<AllocationExtent?>(null);

    /// <inheritdoc />
    public string? PlannedLoss => _inner.PlannedLoss;

    /// <inheritdoc />
    public void Dispose() => _inner.Dispose();

    // After this the wrapped driver holds no request the block layer could take back: it was reset
    // (it abandons them), or it answered every request handed to it (its completions go on
    // meanwhile: the io_uring engine's reaper thread or dispatch loop, the psync worker; the queue
    // is quiesced, so nothing new reaches it).
    private void AbandonInner()
    {
        if (_innerAbandons)
        {
            _inner.Reset();
            return;
        }

        var deadline = Environment.TickCount64 + (long)InnerDrainLimit.TotalMilliseconds;
        while (HeldByInner() is var held && held > 0)
        {
            if (_recoveryCancelled)
            {
                throw new BlockDeviceErrorException(
                    $"The device is being removed; the {_inner.Kind} device still holds {held} request(s).", deviceGone: true);
            }

            if (Environment.TickCount64 >= deadline)
            {
                throw new BlockDeviceErrorException(
                    FormattableString.Invariant($"The {_inner.Kind} device still holds {held} request(s) after {InnerDrainLimit.TotalSeconds} s; they cannot be taken back while it may still write into their buffers."),
                    deviceGone: true);
            }

            Thread.Sleep(1);
        }
    }

    // Requests the wrapped driver accepted and has not completed (each under the generation it
    // was handed over with); the others are forgotten.
    private int HeldByInner()
    {
        var held = 0;
        foreach (var (rq, generation) in _handedOver)
        {
            if (rq.IsInFlight(out var current) && current == generation)
            {
                held++;
            }
            else
            {
                _handedOver.TryRemove(new KeyValuePair<Request, uint>(rq, generation));
            }
        }

        return held;
    }

    private static bool HasOtherInFlight(HardwareContext hctx, Request request)
    {
        foreach (var rq in hctx.Tags.Requests)
        {
            if (rq != request && rq.Hctx == hctx && rq.Queue == request.Queue && rq.State == RequestState.InFlight)
            {
                return true;
            }
        }

        return false;
    }
}

/// <summary>How many faults of each kind a <see cref="FaultInjectionDriver"/> injected.</summary>
public sealed class FaultCounters
{
    /// <summary>Requests failed with an I/O error.</summary>
    public long Errors;

    /// <summary>Requests refused with Resource or DeviceResource.</summary>
    public long Resource;

    /// <summary>Completions lost.</summary>
    public long Lost;

    /// <summary>Latency spikes.</summary>
    public long Stalls;

    /// <summary>Device crashes.</summary>
    public long Crashes;
}
