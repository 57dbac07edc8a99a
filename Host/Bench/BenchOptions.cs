using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers;
using ActorBlk.Hardware.Drivers.File;
using ActorBlk.Hardware.Queues;
using ActorBlk.Host.Commands;

namespace ActorBlk.Host.Bench;

/// <summary>The I/O pattern (fio's <c>--rw</c>).</summary>
internal enum IoPattern
{
    /// <summary>Sequential reads.</summary>
    Read,

    /// <summary>Sequential writes.</summary>
    Write,

    /// <summary>Random reads.</summary>
    RandRead,

    /// <summary>Random writes.</summary>
    RandWrite,

    /// <summary>Sequential mixed reads and writes (<c>--rwmixread</c>).</summary>
    ReadWrite,

    /// <summary>Random mixed reads and writes (<c>--rwmixread</c>).</summary>
    RandReadWrite,
}

/// <summary>
/// The report's formats (fio's <c>--output-format</c>, a comma-separated list: each format given
/// is printed, in fio's order: terse, then JSON, then normal).
/// </summary>
[Flags]
internal enum OutputFormat
{
    /// <summary>fio's terse line, of <see cref="BenchOptions.TerseVersion"/> (<c>terse</c>, <c>minimal</c>, <c>csv</c>).</summary>
    Terse = 1,

    /// <summary>fio's JSON.</summary>
    Json = 2,

    /// <summary>fio's human-readable report.</summary>
    Normal = 4,

    /// <summary>With <see cref="Json"/>: fio's <c>json+</c>, each latency with percentiles also carrying its <c>bins</c>.</summary>
    JsonPlus = 8,
}

/// <summary>
/// Options of <c>actorblk bench</c>. The workload options carry fio's names and meanings
/// (<c>--rw --rwmixread --bs --size --iodepth --numjobs --runtime --ramp_time --direct</c>); the
/// device options carry ActorBlk's (<c>--device --dispatch --submit-queues --hw-queue-depth
/// --irqmode --completion-nsec --rq-affinity --io-poll</c> ...).
/// </summary>
internal sealed record BenchOptions
{
    public string Name { get; init; } = "actorblk";

    public IoPattern Pattern { get; init; } = IoPattern.RandRead;

    public int RwMixRead { get; init; } = 50;

    public int BlockSize { get; init; } = 4096;

    public long Size { get; init; } = 1L << 30;

    /// <summary>
    /// True when <c>--size</c> was given. Without it a device that exists (a file, an NBD export,
    /// a cluster or configured device) is driven whole, as fio does; one the bench creates (null,
    /// a missing file) gets <see cref="Size"/>'s default.
    /// </summary>
    public bool SizeGiven { get; init; }

    /// <summary>
    /// <c>--size=N%</c> (fio's <c>size_percent</c>, 0 to 100): the region is that share of the
    /// existing file's or device's size, rounded down to the block size (0% and 100%: the whole
    /// of it, as fio), set once the device is open (<see cref="Size"/> until then holds the
    /// default). Null: none.
    /// </summary>
    public int? SizePercent { get; init; }

    /// <summary>
    /// fio's <c>offset</c> (<c>--offset</c>, alias <c>--fileoffset</c>), in bytes: where each
    /// job's region starts (fio's region is <c>[offset, offset + size)</c>, and <c>size</c>
    /// defaults to the device's size less the offset). 0 by default, and with
    /// <see cref="OffsetPercent"/>.
    /// </summary>
    public long Offset { get; init; }

    /// <summary>
    /// <c>--offset=N%</c> (fio's <c>start_offset_percent</c>, 1 to 100): the region starts at that
    /// share of the existing file's or device's size, rounded up to the block size (fio's
    /// <c>offset_align</c> default, 0: <c>td_min_bs</c>). Null: none (0% is an offset of 0, as in fio).
    /// </summary>
    public int? OffsetPercent { get; init; }

    /// <summary>
    /// fio's <c>offset_increment</c> (<c>--offset_increment</c>), in bytes: job N of
    /// <see cref="NumJobs"/> starts N times this after <see cref="Offset"/> (fio's
    /// <c>subjob_number</c>). 0 by default, and with <see cref="OffsetIncrementPercent"/>.
    /// </summary>
    public long OffsetIncrement { get; init; }

    /// <summary>
    /// <c>--offset_increment=N%</c> (fio's <c>offset_increment_percent</c>, 1 to 100): the
    /// increment is that share of the device's size, and each job's offset is rounded up to the
    /// block size. Null: none.
    /// </summary>
    public int? OffsetIncrementPercent { get; init; }

    /// <summary>
    /// <c>--offset</c> and <c>--offset_increment</c> as given (null: not given), which the JSON's
    /// job options echo as fio echoes the options given, in their text.
    /// </summary>
    public (string? Offset, string? OffsetIncrement) OffsetTexts { get; init; }

    /// <summary>
    /// Each job's region of the device, job after job, once the device's size is known
    /// (<see cref="RegionOf"/>, set by the command); null: job N covers
    /// <c>[Offset + N * OffsetIncrement, + Size)</c>.
    /// </summary>
    public IReadOnlyList<IoRegion>? Regions { get; init; }

    /// <summary>
    /// The jobs that fail at their setup, as fio 3.33's do, and are not run (set by the command
    /// from <see cref="FailingJobs"/>): the others run and are reported, and the bench's exit
    /// status is their number, as fio's.
    /// </summary>
    public IReadOnlyList<int> FailedJobs { get; init; } = [];

    /// <summary>
    /// The file's size before the bench laid it out (extended it to offset + size), of which
    /// <c>--offset=N%</c> and <c>--offset_increment=N%</c> are shares, as fio computes its offsets
    /// from <c>real_file_size</c> before it extends the file; null: the device's capacity.
    /// </summary>
    public long? LaidOutFrom { get; init; }

    /// <summary>
    /// fio's <c>kb_base</c> (<c>--kb_base</c>, 1024 or 1000) as it stands at the end of the command
    /// line: the base of the normal report's units (fio's <c>i2p</c>: 1024 prints binary units
    /// first, 1000 decimal ones first and the bandwidth samples as <c>kB/s</c>).
    /// </summary>
    public int KbBase { get; init; } = 1024;

    public int IoDepth { get; init; } = 1;

    public int NumJobs { get; init; } = 1;

    public TimeSpan? Runtime { get; init; }

    public TimeSpan RampTime { get; init; } = TimeSpan.Zero;

    /// <summary>
    /// The longest a time-based run lets the JIT settle before its ramp and window start
    /// (<c>--jit_warmup</c>; zero: no wait). The command line's default is 5 s; options built in
    /// code default to none.
    /// </summary>
    public TimeSpan JitWarmup { get; init; } = TimeSpan.Zero;

    public bool Direct { get; init; } = true;

    public bool RandRepeat { get; init; } = true;

    /// <summary>
    /// Percentiles of the whole latency as well as of the completion latency (<c>--lat_percentiles</c>,
    /// fio's <c>lat_percentiles</c>, off by default): the JSON's <c>lat_ns</c> carries them and the
    /// report prints a <c>lat percentiles</c> table after the <c>clat</c> one. Without a separate
    /// submission latency both hold the same values.
    /// </summary>
    public bool LatPercentiles { get; init; }

    /// <summary>
    /// The clock of the I/O timestamps (<c>--clocksource</c>, fio's <c>clocksource</c>); null when
    /// the option was not given: the environment variable <c>ACTORBLK_CLOCKSOURCE</c> chooses, else auto.
    /// </summary>
    public TimestampSource? ClockSource { get; init; }

    /// <summary>The report's formats (<c>--output-format</c>); normal by default.</summary>
    public OutputFormat Output { get; init; } = OutputFormat.Normal;

    /// <summary>
    /// The terse line's version (<c>--terse-version</c>, fio's: 2, 3, 4 or 5; 3 by default):
    /// what <see cref="BenchReport.Terse"/> writes when <see cref="Output"/> holds <see cref="OutputFormat.Terse"/>.
    /// </summary>
    public int TerseVersion { get; init; } = 3;

    /// <summary>The report includes JSON (<c>json</c> or <c>json+</c>).</summary>
    public bool Json => (Output & OutputFormat.Json) != 0;

    /// <summary>fio's <c>--eta</c>: the status line on stderr; null = auto (when stderr is a terminal and the output format is normal alone).</summary>
    public bool? Eta { get; init; }

    public string Device { get; init; } = "null";

    public IoEngine Engine { get; init; } = IoEngine.IoUring;

    public int? SubmitBatch { get; init; }

    public bool FixedBuffers { get; init; }

    /// <summary>The backing path of a <c>file:PATH</c> device, or null for the null device.</summary>
    public string? FilePath => Device.StartsWith("file:", StringComparison.Ordinal) ? Device["file:".Length..] : null;

    public DispatchMode Dispatch { get; init; } = DispatchMode.Ring;

    public int SubmitQueues { get; init; } = 1;

    public int HwQueueDepth { get; init; } = 64;

    public IrqMode IrqMode { get; init; } = IrqMode.SoftIrq;

    public long CompletionNsec { get; init; } = 10_000;

    public CompletionAffinity RqAffinity { get; init; } = CompletionAffinity.CacheGroup;

    public MergePolicy NoMerges { get; init; } = MergePolicy.All;

    public bool IoPoll { get; init; }

    public bool MemoryBacked { get; init; }

    public CompletionContinuation Completion { get; init; } = CompletionContinuation.Inline;

    /// <summary>Request timeout in ms (<c>--io-timeout</c>); 0 keeps the driver's default.</summary>
    public int IoTimeoutMs { get; init; }

    /// <summary>fio's <c>--status-interval</c>: a full report of the figures so far this often; null: only at the end.</summary>
    public TimeSpan? StatusInterval { get; init; }

    /// <summary>fio's <c>--write_lat_log</c>: PREFIX of the per-job latency logs (PREFIX_lat.N.log, PREFIX_clat.N.log); null: none.</summary>
    public string? LatLog { get; init; }

    /// <summary>fio's <c>--write_iops_log</c>: PREFIX of the per-job IOPS logs (PREFIX_iops.N.log); null: none.</summary>
    public string? IopsLog { get; init; }

    /// <summary>fio's <c>--log_avg_msec</c>: one averaged log entry per direction per this many ms; 0 logs every I/O.</summary>
    public int LogAvgMsec { get; init; }

    /// <summary>fio's <c>--log_offset</c>: the logs carry each I/O's offset.</summary>
    public bool LogOffset { get; init; }

    /// <summary><c>--plot FILE.png|FILE.svg</c>: IOPS over time and the latency percentile curve; null: no plot.</summary>
    public string? Plot { get; init; }

    /// <summary>
    /// A cluster node to join as a client (<c>--join HOST:PORT</c>); <see cref="Device"/> then names a
    /// device of the cluster, opened wherever it lives. Null: the device is created in the bench's process.
    /// </summary>
    public string? Join { get; init; }

    /// <summary>
    /// A node configuration (<c>--config PATH</c>) whose <c>actorblk.devices</c> and
    /// <c>actorblk.stacked-devices</c> the bench creates in its process; <see cref="Device"/> then
    /// names one of them. With <see cref="Join"/> the bench joins with this file's remoting and TLS
    /// settings first, so a stacked device may name devices of other nodes. Null: none.
    /// </summary>
    public string? Config { get; init; }

    /// <summary>How many devices run side by side (<c>--devices</c>).</summary>
    public int Devices { get; init; } = 1;

    /// <summary>The devices share one tag set (<c>--shared-tags</c>).</summary>
    public bool SharedTags { get; init; }

    /// <summary>The shared tag set's fair share (<c>--tag-fairness</c>, on).</summary>
    public bool TagFairness { get; init; } = true;

    /// <summary>Faults injected into every device (<c>--fault-*</c>).</summary>
    public FaultInjectionOptions Faults { get; init; } = new();

    /// <summary>Possible CPUs of a simulated machine (<c>--possible-cpus</c>); null: this machine's topology.</summary>
    public int? PossibleCpus { get; init; }

    /// <summary>Interval between CPU hotplug events while the load runs (<c>--hotplug-interval</c>); null: none.</summary>
    public TimeSpan? HotplugInterval { get; init; }

    public bool IsRandom => Pattern is IoPattern.RandRead or IoPattern.RandWrite or IoPattern.RandReadWrite;

    public bool IsMixed => Pattern is IoPattern.ReadWrite or IoPattern.RandReadWrite;

    /// <summary>Share of reads in percent: 100 for read patterns, 0 for write patterns, rwmixread for mixed ones.</summary>
    public int ReadShare => Pattern switch
    {
        IoPattern.Read or IoPattern.RandRead => 100,
        IoPattern.Write or IoPattern.RandWrite => 0,
        _ => RwMixRead,
    };

    /// <summary>The fio name of the pattern.</summary>
    public string PatternName => Pattern switch
    {
        IoPattern.Read => "read",
        IoPattern.Write => "write",
        IoPattern.RandRead => "randread",
        IoPattern.RandWrite => "randwrite",
        IoPattern.ReadWrite => "rw",
        _ => "randrw",
    };

    /// <summary>
    /// Where job <paramref name="job"/> starts on a device of <paramref name="capacity"/> bytes,
    /// as fio 3.33 filesetup.c <c>get_start_offset</c> computes it: <see cref="Offset"/> (or its
    /// share of the size) plus <paramref name="job"/> increments; with a share in either, rounded
    /// up to the block size. Past <see cref="long.MaxValue"/>: <see cref="long.MaxValue"/>.
    /// </summary>
    internal long StartOf(int job, long capacity)
    {
        var align = false;
        Int128 increment = OffsetIncrement;
        if (OffsetIncrementPercent is { } incrementPercent and > 0)
        {
            increment = (Int128)capacity * incrementPercent / 100;
            align = true;
        }

        Int128 offset;
        if (OffsetPercent is { } percent and > 0)
        {
            offset = ((Int128)capacity * percent / 100) + (job * increment);
            align = true;
        }
        else
        {
            offset = Offset + (job * increment);
        }

        if (align)
        {
            offset = (offset + BlockSize - 1) / BlockSize * BlockSize;
        }

        return offset > long.MaxValue ? long.MaxValue : (long)offset;
    }

    /// <summary>
    /// Job <paramref name="job"/>'s region on a device of <paramref name="capacity"/> bytes, as fio
    /// 3.33 filesetup.c <c>setup_files</c> sets <c>file_offset</c> and <c>io_size</c>: from
    /// <see cref="StartOf"/>, <see cref="Size"/> bytes when <c>--size</c> gave them, else the rest
    /// of the device after the start; <c>--size=N%</c> is that share of the whole device, at most
    /// the rest, rounded down to the block size. A start past the end leaves a length of 0. The
    /// offsets' shares are of <see cref="LaidOutFrom"/> when the bench laid the file out.
    /// </summary>
    internal IoRegion RegionOf(int job, long capacity)
    {
        var start = StartOf(job, LaidOutFrom ?? capacity);
        var rest = Math.Max(0, capacity - start);
        var length = SizeGiven ? Size : rest;
        if (!SizeGiven && SizePercent is { } percent and not (0 or 100))
        {
            length = Math.Min((long)((UInt128)(ulong)capacity * (uint)percent / 100), rest);
            length -= length % BlockSize;
        }

        return new IoRegion(start, length);
    }

    /// <summary>
    /// Where the jobs' regions end at the furthest, in bytes, with offsets given in bytes (the
    /// size of the null device or missing file the bench creates, as fio lays out its file to
    /// <c>offset + size</c>); <see cref="long.MaxValue"/> past it.
    /// </summary>
    internal long RegionEnd
    {
        get
        {
            var end = (Int128)Offset + ((Int128)(NumJobs - 1) * OffsetIncrement) + Size;
            return end > long.MaxValue ? long.MaxValue : (long)end;
        }
    }

    /// <summary>
    /// Why job <paramref name="job"/> fails at its setup on a device of <paramref name="capacity"/>
    /// bytes, with fio 3.33's message first; null when it runs. Without <c>--size</c> (fio's
    /// filesetup.c <c>setup_files</c>, <c>size</c> not given), a job whose offset is past the end
    /// fails with "you need to specify valid offset=", and one left less than a block before the
    /// end with "blocksize is larger than data set range" (fio's <c>fio:</c> is the job's name
    /// here, as in the bench's other fio lines). fio fails that job alone: the others run.
    /// </summary>
    internal string? JobFailure(int job, long capacity)
    {
        if (SizeGiven)
        {
            // A given size is laid out (a regular file) or checked against the device (RegionProblem).
            return null;
        }

        var (start, length) = RegionOf(job, capacity);
        var option = job == 0 || (OffsetIncrement == 0 && OffsetIncrementPercent is null) ? "--offset" : "--offset_increment";
        if (start > capacity)
        {
            return $"{Name}: you need to specify valid offset= (job {job}: its offset, {start} bytes ({option}), is past the device's end ({capacity} bytes); the job is not run)";
        }

        return length < BlockSize
            ? $"{Name}: blocksize is larger than data set range (job {job}: its offset, {start} bytes ({option}), leaves no block of {BlockSize} bytes before the device's end ({capacity} bytes); the job is not run)"
            : null;
    }

    /// <summary>
    /// The jobs that fail at their setup on a device of <paramref name="capacity"/> bytes
    /// (<see cref="JobFailure"/>); none when every job would: a run with no job is refused as a
    /// usage error (<see cref="RegionProblem"/>), as before.
    /// </summary>
    internal IReadOnlyList<int> FailingJobs(long capacity)
    {
        var failing = Enumerable.Range(0, NumJobs).Where(job => JobFailure(job, capacity) is not null).ToList();
        return failing.Count < NumJobs ? failing : [];
    }

    /// <summary>
    /// Why the jobs' regions do not fit a device of <paramref name="capacity"/> bytes whose logical
    /// block is <paramref name="logicalBlockSize"/> bytes, naming the option at fault; null when
    /// they fit. fio refuses an offset past the end ("you need to specify valid offset=") and a
    /// region under one block ("blocksize is larger than data set range"); an offset that is not a
    /// multiple of the logical block could not be issued, and a region past the end of a device
    /// that cannot grow (only a regular file is laid out to it) would fail at its first I/O there.
    /// The jobs of <see cref="FailedJobs"/> are left out: they fail alone and are not run.
    /// </summary>
    internal string? RegionProblem(long capacity, int logicalBlockSize)
    {
        for (var job = 0; job < NumJobs; job++)
        {
            if (FailedJobs.Contains(job))
            {
                continue;
            }

            var (start, length) = RegionOf(job, capacity);
            var option = job == 0 || (OffsetIncrement == 0 && OffsetIncrementPercent is null) ? "--offset" : "--offset_increment";
            var what = NumJobs > 1 ? $"job {job}'s offset, {start} bytes," : $"{start} bytes";
            if (start % logicalBlockSize != 0)
            {
                return $"option {option}: {what} is not a multiple of the device's {logicalBlockSize}-byte logical block size.";
            }

            if (start >= capacity || length < BlockSize)
            {
                return $"option {option}: {what} leaves no block of {BlockSize} bytes before the device's end ({capacity} bytes).";
            }

            if (length > capacity - start)
            {
                return $"option {option}: {what} and --size's {length} bytes end at {(Int128)start + length}, past the device's end ({capacity} bytes).";
            }
        }

        return null;
    }

    /// <summary>The device the bench drives (the first of <see cref="Devices"/>).</summary>
    public DeviceOptions ToDeviceOptions() => ToDeviceOptions(0);

    /// <summary>Device <paramref name="index"/> of the <see cref="Devices"/> the bench drives: bench0, bench1, ...</summary>
    public DeviceOptions ToDeviceOptions(int index)
    {
        if (Join is not null)
        {
            // A device of the cluster: these are the settings of its local queue (the owner's NBD
            // export gives size and block size); --submit-queues above 1 sets the connections.
            return ToDeviceOptions(index, null) with { Connections = SubmitQueues, Size = null, FixedBuffers = 0, MemoryBacked = false };
        }

        var path = FilePath;
        if (IsNbdUri(Device))
        {
            // The export keeps its own size and block size; the queue settings are ActorBlk's.
            return ToDeviceOptions(index, null) with { Driver = "nbd", Uri = Device, Connections = SubmitQueues, Size = null, Path = null, FixedBuffers = 0, MemoryBacked = false };
        }

        if (Device != "null" && string.IsNullOrEmpty(path))
        {
            throw new UsageException($"option --device: '{Device}' is not null, file:PATH or an NBD URI (nbd://HOST:PORT/EXPORT, nbd+unix:///EXPORT?socket=PATH, nbds:// or nbds+unix:// for TLS).");
        }

        return ToDeviceOptions(index, path);
    }

    // The NBD URI specification's schemes (NbdUri parses the rest and says what is wrong).
    private static bool IsNbdUri(string device) =>
        device.StartsWith("nbd://", StringComparison.OrdinalIgnoreCase) || device.StartsWith("nbds://", StringComparison.OrdinalIgnoreCase)
        || device.StartsWith("nbd+unix://", StringComparison.OrdinalIgnoreCase) || device.StartsWith("nbds+unix://", StringComparison.OrdinalIgnoreCase);

    private DeviceOptions ToDeviceOptions(int index, string? path)
    {
        return new DeviceOptions
        {
            Name = $"bench{index}",
            Driver = path is null ? "null" : "file",
            Path = path,

            // fio's --size is the region the jobs cover; a file is created at that size when missing,
            // past the offset, as fio lays out its file to offset + size.
            Size = path is null || !System.IO.Path.Exists(path) ? RegionEnd : null,
            Direct = Direct,
            Engine = Engine,
            SubmitBatch = SubmitBatch,

            // Registered memory for every slot's buffer (fio's fixedbufs), within io_uring's 1 GiB.
            FixedBuffers = path is not null && FixedBuffers
                ? Math.Min(BufferArena.MaxBytes, (long)NumJobs * IoDepth * ((BlockSize + 4095) / 4096 * 4096))
                : 0,
            BlockSize = 512,
            SubmitQueues = SubmitQueues,
            HwQueueDepth = HwQueueDepth,
            IrqMode = IrqMode,
            CompletionNsec = CompletionNsec,
            MemoryBacked = MemoryBacked,
            RqAffinity = RqAffinity,
            NoMerges = NoMerges,
            IoPoll = IoPoll,
            Dispatch = Dispatch,
            Completion = Completion,
            IoTimeoutMs = IoTimeoutMs,
            SharedTags = SharedTags,
            TagFairness = TagFairness,
            TagSetName = "bench",
            Faults = Faults,
        };
    }

    /// <summary>Refuses combinations no single option's parser can see, naming the option.</summary>
    internal void Validate()
    {
        if (Join is not null && (Devices > 1 || Device == "null" || FilePath is not null || Device.Contains("://", StringComparison.Ordinal)))
        {
            throw new UsageException("option --join: --device must name one device of the cluster (NAME or NAME@HOST:PORT).");
        }

        if (BlockSize < 512 || BlockSize % 512 != 0)
        {
            throw new UsageException($"option --bs: {BlockSize} is not a multiple of 512.");
        }

        if (SizePercent is not null && Join is null && Device == "null")
        {
            // fio on its null engine: "you need to specify size=" (filesetup.c), a share of nothing.
            throw new UsageException($"option --size: {SizePercent}% is a share of an existing file's or device's size, and the null device has none until --size gives it one.");
        }

        foreach (var (option, bytes, percent) in new[] { ("--offset", Offset, OffsetPercent), ("--offset_increment", OffsetIncrement, OffsetIncrementPercent) })
        {
            if (bytes % 512 != 0)
            {
                throw new UsageException($"option {option}: {bytes} is not a multiple of 512.");
            }

            if (percent is > 0 && Join is null && Device == "null")
            {
                // The null device the bench creates is as large as the regions; a share of it has nothing to be a share of.
                throw new UsageException($"option {option}: {percent}% is a share of an existing file's or device's size, and the null device the bench creates is as large as the jobs' regions: give it in bytes.");
            }
        }

        // The null device or missing file is created as large as the regions: past 2^63 - 1 bytes,
        // RegionEnd's clamp was refused as "option 'size': 9223372036854775807 bytes is not a
        // positive multiple of the block size (512)", naming neither offset (a review).
        if ((Int128)Offset + ((Int128)(NumJobs - 1) * OffsetIncrement) + Size > long.MaxValue)
        {
            var option = NumJobs > 1 && OffsetIncrement > 0 ? "--offset_increment" : "--offset";
            throw new UsageException($"option {option}: the jobs' regions end past {long.MaxValue} bytes, the largest a device can be.");
        }

        if (Size < BlockSize || Size % 512 != 0)
        {
            throw new UsageException($"option --size: {Size} must hold at least one block of {BlockSize} bytes and be a multiple of 512.");
        }

        if (Devices > 1 && FilePath is not null)
        {
            throw new UsageException("option --devices: several devices need the null device; one file cannot back more than one device.");
        }

        try
        {
            Faults.Validate();
        }
        catch (ArgumentOutOfRangeException ex)
        {
            throw new UsageException($"option --{ex.ParamName?.Replace('_', '-')}: {ex.Message.Split(" (Parameter")[0]}");
        }

        if (HotplugInterval is not null && PossibleCpus is < 2)
        {
            throw new UsageException("option --hotplug-interval: the machine needs at least two CPUs (--possible-cpus) to take one offline.");
        }

        if (StatusInterval is { } si && si > TimeSpan.Zero && si < TimeSpan.FromMilliseconds(1))
        {
            throw new UsageException("option --status-interval must be 0 (off, as fio's default) or at least 1 ms.");
        }

        if (Plot is { } plot && !plot.EndsWith(".png", StringComparison.OrdinalIgnoreCase) && !plot.EndsWith(".svg", StringComparison.OrdinalIgnoreCase))
        {
            throw new UsageException($"option --plot: '{plot}' does not end in .png or .svg.");
        }

        if (Runtime is { } r && r <= TimeSpan.Zero)
        {
            throw new UsageException("option --runtime must be positive.");
        }
    }
}

/// <summary>A job's region of the device: fio's <c>[file_offset, file_offset + io_size)</c>, in bytes.</summary>
/// <param name="Start">Where it starts.</param>
/// <param name="Length">How long it is.</param>
internal readonly record struct IoRegion(long Start, long Length);
