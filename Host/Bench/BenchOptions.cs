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
/// Options of <c>actorblk bench</c>. The workload options carry fio's names and meanings
/// (<c>--rw --rwmixread --bs --size --iodepth --numjobs --runtime --ramp_time --direct</c>); the
/// device options carry ActorBlk's (<c>--device --dispatch --submit-queues --hw-queue-depth
/// --irqmode --completion-nsec --rq-affinity --io-poll</c> ...).
/// </summary>
internal sealed record BenchOptions
{
    public const string Usage = """
        actorblk bench [fio-style options]
          workload (fio's names):
            --name=NAME               job name (actorblk)
            --rw=PATTERN              read | write | randread | randwrite | rw | randrw (randread)
            --rwmixread=PERCENT       share of reads in mixed patterns (50)
            --bs=SIZE                 block size per I/O (4k)
            --size=SIZE               device region each job covers; ends the run when no runtime is set (1g)
            --iodepth=N               I/Os each job keeps in flight (1)
            --iodepth_batch_submit=N  io_uring: submit as soon as N I/Os are prepared; 0 = once per dispatch round (1)
            --fixedbufs=0|1           io_uring: I/O buffers from registered memory (0)
            --numjobs=N               jobs, each on its own CPU (1)
            --runtime=SECONDS         run this long (time based)
            --ramp_time=SECONDS       run this long before measuring (0)
            --direct=0|1              O_DIRECT for file devices, buffered I/O with 0 (1)
            --time_based, --group_reporting, --thread, --norandommap, --lat_percentiles   accepted, always on
            --randrepeat=0|1          same random offsets every run (1)
            --output-format=normal|json
            --eta=auto|always|never   the status line on stderr: auto = when stderr is a terminal (auto)
          device (ActorBlk's names):
            --device=null             the null device (null_blk)
            --device=file:PATH        a regular file or block device; a missing file is created at --size
            --device=nbd://HOST:PORT/EXPORT  an NBD export through the nbd client driver (nbds:// for TLS);
                                      --submit-queues sets its connections, one hardware queue each
            --join=HOST:PORT          join the cluster at HOST:PORT as a client (hocon.conf of the working
                                      directory); --device=NAME or NAME@HOST:PORT names a device of the cluster
            --engine=io_uring|psync   file device I/O engine (io_uring; psync where io_uring is unavailable)
            --dispatch=ring|mailbox   (ring)
            --submit-queues=N         hardware queues (1)
            --hw-queue-depth=N        tags per hardware queue (64)
            --irqmode=0|1|2           null completion mode (1)
            --completion-nsec=N       timer completion delay, irqmode 2 (10000)
            --rq-affinity=0|1|2       completion affinity (1)
            --nomerges=0|1|2          merge policy (0)
            --io-poll=0|1             polled I/O through a poll queue (0)
            --memory-backed=0|1       keep data in RAM (0)
            --completion=inline|threadpool   where completions continue (inline)
            --io-timeout=MS           request timeout in milliseconds, like queue/io_timeout (null: 5000)
          several devices:
            --devices=N               N devices, each driven by its own --numjobs jobs at --iodepth (1)
            --shared-tags             the devices share one tag set of --hw-queue-depth tags (fair share)
          CPU hotplug while the load runs:
            --possible-cpus=N         a simulated machine of N CPUs instead of this one's
            --hotplug-interval=MS     every MS, take the next CPU (1, 2, ... N-1 in turn) offline, then bring it back
                                      at the next tick; each event freezes, drains, re-maps and unfreezes every device
          fault injection (null_blk style; any rate > 0 wraps the driver):
            --fault-error-rate=P      share of requests failed with an I/O error (0)
            --fault-timeout-rate=P    share of requests whose completion is lost: they time out and are retried (0)
            --fault-resource-rate=P   share of requests refused with Resource/DeviceResource (0)
            --fault-latency-rate=P    share of requests behind a latency spike of --fault-latency (0)
            --fault-latency=MS        length of a latency spike (10)
            --fault-crash-after=N     the device crashes every N requests and is reset (0 = never)
            --fault-seed=N            seed of the fault decisions (1)
        """;

    public string Name { get; init; } = "actorblk";

    public IoPattern Pattern { get; init; } = IoPattern.RandRead;

    public int RwMixRead { get; init; } = 50;

    public int BlockSize { get; init; } = 4096;

    public long Size { get; init; } = 1L << 30;

    public int IoDepth { get; init; } = 1;

    public int NumJobs { get; init; } = 1;

    public TimeSpan? Runtime { get; init; }

    public TimeSpan RampTime { get; init; } = TimeSpan.Zero;

    public bool Direct { get; init; } = true;

    public bool RandRepeat { get; init; } = true;

    public bool Json { get; init; }

    /// <summary>fio's <c>--eta</c>: the status line on stderr; null = auto (when stderr is a terminal and the output is not JSON).</summary>
    public bool? Eta { get; init; }

    public string Device { get; init; } = "null";

    public IoEngine Engine { get; init; } = IoEngine.IoUring;

    public int SubmitBatch { get; init; } = 1;

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

    /// <summary>
    /// A cluster node to join as a client (<c>--join HOST:PORT</c>); <see cref="Device"/> then names a
    /// device of the cluster, opened wherever it lives. Null: the device is created in the bench's process.
    /// </summary>
    public string? Join { get; init; }

    /// <summary>How many devices run side by side (<c>--devices</c>).</summary>
    public int Devices { get; init; } = 1;

    /// <summary>The devices share one tag set (<c>--shared-tags</c>).</summary>
    public bool SharedTags { get; init; }

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

    public static BenchOptions Parse(CommandLine cl)
    {
        // fio flags ActorBlk always behaves as if given.
        foreach (var flag in new[] { "time_based", "group_reporting", "thread", "norandommap", "lat_percentiles" })
        {
            cl.Bool(flag, true);
        }

        var options = new BenchOptions
        {
            Name = cl.String("name", "actorblk")!,
            Pattern = (cl.String("rw") ?? cl.String("readwrite", "randread")) switch
            {
                "read" => IoPattern.Read,
                "write" => IoPattern.Write,
                "randread" => IoPattern.RandRead,
                "randwrite" => IoPattern.RandWrite,
                "rw" or "readwrite" => IoPattern.ReadWrite,
                "randrw" => IoPattern.RandReadWrite,
                var other => throw new UsageException($"option --rw: '{other}' is not read, write, randread, randwrite, rw or randrw."),
            },
            RwMixRead = cl.Int("rwmixread", 50, 0, 100),
            BlockSize = (int)Math.Min(int.MaxValue, Sizes.Parse("bs", cl.String("bs", "4k")!)),
            Size = Sizes.Parse("size", cl.String("size", "1g")!),
            IoDepth = cl.Int("iodepth", 1, 1, 65536),
            SubmitBatch = cl.Int("iodepth_batch_submit", cl.Int("iodepth_batch", 1, 0, 65536), 0, 65536),
            FixedBuffers = cl.Bool("fixedbufs", false),
            NumJobs = cl.Int("numjobs", 1, 1, 1024),
            Runtime = Seconds(cl, "runtime"),
            RampTime = Seconds(cl, "ramp_time") ?? TimeSpan.Zero,
            Direct = cl.Bool("direct", true),
            RandRepeat = cl.Bool("randrepeat", true),
            Json = (cl.String("output-format") ?? cl.String("output_format", "normal")) switch
            {
                "normal" => false,
                "json" => true,
                var other => throw new UsageException($"option --output-format: '{other}' is not normal or json."),
            },
            Eta = cl.String("eta", "auto") switch
            {
                "auto" => null,
                "always" => true,
                "never" => false,
                var other => throw new UsageException($"option --eta: '{other}' is not auto, always or never."),
            },
            Device = cl.String("device", "null")!,
            Join = cl.String("join") is { } join ? Commands.NodeConfig.ParseEndpoint(join, "--join") : null,
            Engine = cl.String("engine", "io_uring") switch
            {
                "io_uring" or "iouring" => IoEngine.IoUring,
                "psync" => IoEngine.Psync,
                var other => throw new UsageException($"option --engine: '{other}' is not io_uring or psync."),
            },
            Dispatch = cl.String("dispatch", "ring") switch
            {
                "ring" => DispatchMode.Ring,
                "mailbox" => DispatchMode.Mailbox,
                var other => throw new UsageException($"option --dispatch: '{other}' is not ring or mailbox."),
            },
            SubmitQueues = cl.Int("submit-queues", 1, 1, 1024),
            HwQueueDepth = cl.Int("hw-queue-depth", 64, 1, 10240),
            IrqMode = (IrqMode)cl.Int("irqmode", 1, 0, 2),
            CompletionNsec = cl.Long("completion-nsec", 10_000, 0),
            RqAffinity = (CompletionAffinity)cl.Int("rq-affinity", 1, 0, 2),
            NoMerges = (MergePolicy)cl.Int("nomerges", 0, 0, 2),
            IoPoll = cl.Bool("io-poll", false),
            MemoryBacked = cl.Bool("memory-backed", false),
            Completion = cl.String("completion", "inline") switch
            {
                "inline" => CompletionContinuation.Inline,
                "threadpool" => CompletionContinuation.ThreadPool,
                var other => throw new UsageException($"option --completion: '{other}' is not inline or threadpool."),
            },
            IoTimeoutMs = cl.Int("io-timeout", 0, 1, int.MaxValue),
            Devices = cl.Int("devices", 1, 1, 64),
            SharedTags = cl.Bool("shared-tags", false),
            PossibleCpus = cl.String("possible-cpus") is null ? null : cl.Int("possible-cpus", 1, 1, 4096),
            HotplugInterval = cl.String("hotplug-interval") is null ? null : TimeSpan.FromMilliseconds(cl.Int("hotplug-interval", 100, 1, 3_600_000)),
            Faults = new FaultInjectionOptions
            {
                ErrorRate = cl.Double("fault-error-rate", 0, 0, 1),
                TimeoutRate = cl.Double("fault-timeout-rate", 0, 0, 1),
                ResourceRate = cl.Double("fault-resource-rate", 0, 0, 1),
                LatencyRate = cl.Double("fault-latency-rate", 0, 0, 1),
                Latency = TimeSpan.FromMilliseconds(cl.Int("fault-latency", 10, 0, 60_000)),
                CrashAfter = cl.Long("fault-crash-after", 0, 0),
                Seed = cl.Int("fault-seed", 1),
            },
        };

        options.Validate();
        return options;
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
        if (Device.StartsWith("nbd://", StringComparison.Ordinal) || Device.StartsWith("nbds://", StringComparison.Ordinal))
        {
            // The export keeps its own size and block size; the queue settings are ActorBlk's.
            return ToDeviceOptions(index, null) with { Driver = "nbd", Uri = Device, Connections = SubmitQueues, Size = null, Path = null, FixedBuffers = 0, MemoryBacked = false };
        }

        if (Device != "null" && string.IsNullOrEmpty(path))
        {
            throw new UsageException($"option --device: '{Device}' is not null, file:PATH or nbd://HOST:PORT/EXPORT.");
        }

        return ToDeviceOptions(index, path);
    }

    private DeviceOptions ToDeviceOptions(int index, string? path)
    {
        return new DeviceOptions
        {
            Name = $"bench{index}",
            Driver = path is null ? "null" : "file",
            Path = path,

            // fio's --size is the region the jobs cover; a file is created at that size when missing.
            Size = path is null || !System.IO.Path.Exists(path) ? Size : null,
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
            TagSetName = "bench",
            Faults = Faults,
        };
    }

    private void Validate()
    {
        if (BlockSize < 512 || BlockSize % 512 != 0)
        {
            throw new UsageException($"option --bs: {BlockSize} is not a multiple of 512.");
        }

        if (Size < BlockSize || Size % 512 != 0)
        {
            throw new UsageException($"option --size: {Size} must hold at least one block of {BlockSize} bytes and be a multiple of 512.");
        }

        if (Join is not null && (Devices > 1 || Device == "null" || FilePath is not null || Device.Contains("://", StringComparison.Ordinal)))
        {
            throw new UsageException("option --join: --device must name one device of the cluster (NAME or NAME@HOST:PORT).");
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

        if (Runtime is { } r && r <= TimeSpan.Zero)
        {
            throw new UsageException("option --runtime must be positive.");
        }
    }

    private static TimeSpan? Seconds(CommandLine cl, string name)
    {
        var text = cl.String(name);
        if (text is null)
        {
            return null;
        }

        // fio accepts plain seconds or a unit suffix (s, ms, m).
        var t = text.Trim().ToLowerInvariant();
        var scale = 1.0;
        if (t.EndsWith("ms", StringComparison.Ordinal))
        {
            scale = 0.001;
            t = t[..^2];
        }
        else if (t.EndsWith('s'))
        {
            t = t[..^1];
        }
        else if (t.EndsWith('m'))
        {
            scale = 60;
            t = t[..^1];
        }

        if (!double.TryParse(t, System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out var v) || v < 0)
        {
            throw new UsageException($"option --{name}: '{text}' is not a duration in seconds.");
        }

        return TimeSpan.FromSeconds(v * scale);
    }
}
