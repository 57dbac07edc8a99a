using System.Text.RegularExpressions;
using ActorBlk.Hardware.Drivers;
using ActorBlk.Hardware.Drivers.File;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Tags;
using ActorBlk.Hardware.Topology;

namespace ActorBlk.Hardware.Devices;

/// <summary>
/// Everything needed to create a block device. Names and defaults follow null_blk's module
/// parameters and the sysfs queue attributes; the hocon.conf keys are the names in brackets.
/// </summary>
public sealed partial record DeviceOptions
{
    /// <summary>Default request timeout of the null device (null_blk uses 5 s).</summary>
    public const int NullDefaultTimeoutMs = 5_000;

    /// <summary>Device name (<c>name</c>): letters, digits, '-', '_' and '.', at most 32 characters.</summary>
    public string Name { get; init; } = "nullb0";

    /// <summary>Driver (<c>driver</c>): <c>null</c> (null_blk) or <c>file</c> (a regular file or block device).</summary>
    public string Driver { get; init; } = "null";

    /// <summary>
    /// Capacity in bytes (<c>size</c>). Null means the driver's default: 250 GiB for the null
    /// device (null_blk's), the whole file or block device for the file device. A file device
    /// creates a missing file at this size, and serves this prefix of a larger one.
    /// </summary>
    public long? Size { get; init; }

    /// <summary>The backing file or block device of the file device (<c>path</c>).</summary>
    public string? Path { get; init; }

    /// <summary>
    /// The export of an <c>nbd</c> device (<c>uri</c>): <c>nbd://host:port/export</c> or
    /// <c>nbd+unix:///export?socket=PATH</c>, <c>nbds://</c> or <c>nbds+unix://</c> for TLS, with the
    /// NBD URI specification's query parameters (<see cref="Drivers.Nbd.NbdUri"/>).
    /// </summary>
    public string? Uri { get; init; }

    /// <summary>
    /// For an <c>nbds://</c> device: PEM file of the CA (or the server certificate) the server's
    /// certificate must chain to (<c>tls_ca</c>); null uses the system trust store.
    /// </summary>
    public string? TlsCa { get; init; }

    /// <summary>For an <c>nbds://</c> device: verify the server certificate (<c>tls_verify</c>); off is insecure, for self-signed test setups only.</summary>
    public bool TlsVerify { get; init; } = true;

    /// <summary>Connections of an <c>nbd</c> device (<c>connections</c>), one hardware queue each; it replaces <see cref="SubmitQueues"/>.</summary>
    public int Connections { get; init; } = 1;

    /// <summary>O_DIRECT for the file device (<c>direct</c>, on by default); off means buffered I/O.</summary>
    public bool Direct { get; init; } = true;

    /// <summary>I/O engine of the file device (<c>engine</c>: io_uring or psync).</summary>
    public IoEngine Engine { get; init; } = IoEngine.IoUring;

    /// <summary>Registered memory of the file device in bytes (<c>fixed_buffers</c>; 0 = none, at most 1 GiB).</summary>
    public long FixedBuffers { get; init; }

    /// <summary>
    /// io_uring submission batch of the file device (<c>submit_batch</c>): null (<c>auto</c>, the
    /// default) adapts to the requests in flight; N submits every N requests; 0 once per dispatch round.
    /// </summary>
    public int? SubmitBatch { get; init; }

    /// <summary>Logical block size in bytes (<c>bs</c>), 512..4096.</summary>
    public int BlockSize { get; init; } = 512;

    /// <summary>
    /// Hardware queues (<c>submit_queues</c>); clamped to the possible CPUs; 0 means 1, as
    /// null_blk's parameter (semantics §12.1). An <c>nbd</c> device ignores it: its hardware queues
    /// are its <see cref="Connections"/> (a device entry in configuration refuses it there).
    /// </summary>
    public int SubmitQueues { get => _submitQueues; init => _submitQueues = value == 0 ? 1 : value; }

    private readonly int _submitQueues = 1;

    /// <summary>Poll queues (<c>poll_queues</c>); used only when <see cref="IoPoll"/> is on.</summary>
    public int PollQueues { get; init; } = 1;

    /// <summary>Tags per hardware queue (<c>hw_queue_depth</c>), 64 by default, at most 10240.</summary>
    public int HwQueueDepth { get; init; } = 64;

    /// <summary>Reserved tags per hardware queue (<c>reserved_tags</c>).</summary>
    public int ReservedTags { get; init; }

    /// <summary>Completion mode of the null device (<c>irqmode</c> 0, 1, 2).</summary>
    public IrqMode IrqMode { get; init; } = IrqMode.SoftIrq;

    /// <summary>Timer completion delay in nanoseconds (<c>completion_nsec</c>).</summary>
    public long CompletionNsec { get; init; } = 10_000;

    /// <summary>Keep data in RAM (<c>memory_backed</c>).</summary>
    public bool MemoryBacked { get; init; }

    /// <summary>QueueRq may block (<c>blocking</c>).</summary>
    public bool Blocking { get; init; }

    /// <summary>Support discard and write-zeroes (<c>discard</c>), for memory-backed devices.</summary>
    public bool Discard { get; init; } = true;

    /// <summary>Advertise a volatile write cache so flush and FUA reach the driver (<c>write_cache</c>).</summary>
    public bool WriteCache { get; init; }

    /// <summary>Share one tag set with every other device that sets it (<c>shared_tags</c>).</summary>
    public bool SharedTags { get; init; }

    /// <summary>Name of the shared tag set, when <see cref="SharedTags"/> is on (<c>tag_set</c>).</summary>
    public string TagSetName { get; init; } = "shared";

    /// <summary>
    /// A shared tag set's fair share (<c>tag_fairness</c>, on): each active queue may hold at most
    /// <c>max(ceil(depth / active queues), 4)</c> tags (<c>hctx_may_queue</c>, blk-mq-semantics
    /// §2.5). Off, any queue may take the whole set, as with the 2024 proposal that drops the
    /// throttling. The device that creates a shared set decides for it; later devices join it as
    /// it is. Without <see cref="SharedTags"/> or <see cref="HostWideTags"/> there is nothing to share.
    /// </summary>
    public bool TagFairness { get; init; } = true;

    /// <summary>Host-wide tags: one tag map for all hardware queues (<c>shared_tag_bitmap</c>).</summary>
    public bool HostWideTags { get; init; }

    /// <summary>Completion affinity (<c>rq_affinity</c> 0, 1, 2), 1 by default.</summary>
    public CompletionAffinity RqAffinity { get; init; } = CompletionAffinity.CacheGroup;

    /// <summary>Merge policy (<c>nomerges</c> 0, 1, 2).</summary>
    public MergePolicy NoMerges { get; init; } = MergePolicy.All;

    /// <summary>Polled I/O (<c>io_poll</c>).</summary>
    public bool IoPoll { get; init; }

    /// <summary>Request timeout in milliseconds (<c>io_timeout</c>); 0 means the driver's default.</summary>
    public int IoTimeoutMs { get; init; }

    /// <summary>Largest request in KiB (<c>max_sectors_kb</c>); 0 means the default (1280).</summary>
    public int MaxSectorsKb { get; init; }

    /// <summary>Refuse writes (<c>read_only</c>).</summary>
    public bool ReadOnly { get; init; }

    /// <summary>Report a rotational device (<c>rotational</c>).</summary>
    public bool Rotational { get; init; }

    /// <summary>Ring or mailbox dispatch (<c>dispatch</c>).</summary>
    public DispatchMode Dispatch { get; init; } = DispatchMode.Ring;

    /// <summary>Where awaited I/O continues (<c>completion</c>: inline or threadpool).</summary>
    public CompletionContinuation Completion { get; init; } = CompletionContinuation.Inline;

    /// <summary>How CPUs are spread over hardware queues (<c>cpu_map</c>).</summary>
    public CpuMapAlgorithm CpuMapAlgorithm { get; init; } = CpuMapAlgorithm.GroupEvenly;

    /// <summary>
    /// Faults to inject (<c>fault_error_rate</c>, <c>fault_resource_rate</c>, <c>fault_timeout_rate</c>,
    /// <c>fault_latency_rate</c>, <c>fault_latency</c>, <c>fault_crash_after</c>, <c>fault_gone</c>,
    /// <c>fault_reopen_failures</c>, <c>fault_seed</c>): when any is set the driver is wrapped in a
    /// <see cref="FaultInjectionDriver"/>.
    /// </summary>
    public FaultInjectionOptions Faults { get; init; } = new();

    /// <summary>Retries of a request taken back from the device before it fails (<c>max_retries</c>, 5).</summary>
    public int MaxRetries { get; init; } = RequestQueue.DefaultMaxRetries;

    /// <summary>
    /// Timeouts within <see cref="TimeoutWindowMs"/> after which the supervisor resets the device
    /// (<c>reset_after_timeouts</c>, 5; 0 never resets for timeouts).
    /// </summary>
    public int ResetAfterTimeouts { get; init; } = 5;

    /// <summary>The window in which timeouts are counted, in milliseconds (<c>timeout_window</c>, 60000).</summary>
    public int TimeoutWindowMs { get; init; } = 60_000;

    /// <summary>Checks every option; throws for the first one out of range.</summary>
    /// <exception cref="DeviceOptionsException">An option cannot describe a device.</exception>
    public void Validate()
    {
        if (!IsDeviceName(Name))
        {
            Fail("name", $"'{Name}' is not a device name (letters, digits, '-', '_', '.'; at most 32 characters; not . or ..).");
        }

        if (Driver is not ("null" or "file" or "nbd"))
        {
            Fail("driver", $"unknown driver '{Driver}' (known: null, file, nbd).");
        }

        if (Driver == "nbd")
        {
            if (string.IsNullOrWhiteSpace(Uri))
            {
                Fail("uri", "the nbd driver needs the export's URI (nbd://host:port/export).");
            }

            Drivers.Nbd.NbdUri? uri = null;
            try
            {
                uri = Drivers.Nbd.NbdUri.Parse(Uri!);
            }
            catch (FormatException ex)
            {
                Fail("uri", ex.Message);
            }

            // Two settings for one thing would leave the reader to guess which one counts.
            if (uri!.TlsCertificates is not null && TlsCa is not null)
            {
                Fail("tls_ca", $"the URI's tls-certificates names the trust anchors too ('{uri.TlsCertificates}'): give one of them.");
            }

            if (uri.TlsVerifyPeer == true && !TlsVerify)
            {
                Fail("tls_verify", "it is off, and the URI asks for verification (tls-verify-peer=1): give one of them.");
            }

            if (Connections is < 1 or > 64)
            {
                Fail("connections", $"{Connections} is not 1 to 64.");
            }

            if (Size is not null)
            {
                Fail("size", "an nbd device takes its size from the server.");
            }
        }
        else if (Uri is not null || TlsCa is not null)
        {
            Fail(Uri is not null ? "uri" : "tls_ca", $"only the nbd driver has a URI or TLS settings (this device's driver is '{Driver}').");
        }

        if (Driver == "file" && string.IsNullOrWhiteSpace(Path))
        {
            Fail("path", "the file driver needs the path of a file or block device.");
        }

        if (Driver != "file" && Path is not null)
        {
            Fail("path", $"only the file driver has a backing path (this device's driver is '{Driver}').");
        }

        // Refused here too, not only when the driver is built, so that a configuration gets the
        // one-line option error before a node starts (a review found serve's start-up stack).
        if (IoPoll && Driver != "null")
        {
            Fail("io_poll", $"the {Driver} driver cannot poll (only the null driver has poll queues).");
        }

        if (!Enum.IsDefined(Engine))
        {
            Fail("engine", $"{Engine} is not io_uring or psync.");
        }

        if (FixedBuffers is < 0 or > BufferArena.MaxBytes)
        {
            Fail("fixed_buffers", $"{FixedBuffers} bytes is not 0 to 1 GiB.");
        }

        if (SubmitBatch is < 0)
        {
            Fail("submit_batch", $"{SubmitBatch} cannot be negative (auto adapts, 0 submits once per dispatch round).");
        }

        if (BlockSize is < 512 or > 4096 || (BlockSize & (BlockSize - 1)) != 0)
        {
            Fail("bs", $"{BlockSize} is not a power of two from 512 to 4096.");
        }

        if (Size is { } size && (size <= 0 || size % BlockSize != 0))
        {
            Fail("size", $"{size} bytes is not a positive multiple of the block size ({BlockSize}).");
        }

        if (MemoryBacked && Size is > MaxMemoryBackedSize)
        {
            Fail("size", $"{Size} bytes: a memory-backed device holds at most {MaxMemoryBackedSize} bytes (1 PiB; its pages are allocated as written).");
        }

        if (SubmitQueues < 1)
        {
            Fail("submit_queues", $"{SubmitQueues}: at least one hardware queue is needed.");
        }

        if (PollQueues < 0 || (IoPoll && PollQueues < 1))
        {
            Fail("poll_queues", $"{PollQueues}: io_poll needs at least one poll queue.");
        }

        if (HwQueueDepth is < 1 or > TagSet.MaxDepth)
        {
            // The kernel clamps a driver's depth to BLK_MQ_MAX_DEPTH; an option the operator set
            // is refused instead, as bench's --hw-queue-depth is (an outside audit found it clamped
            // in silence).
            Fail("hw_queue_depth", $"{HwQueueDepth}: the depth must be from 1 to {TagSet.MaxDepth} (BLK_MQ_MAX_DEPTH).");
        }

        if (ReservedTags < 0 || ReservedTags >= Math.Min(HwQueueDepth, TagSet.MaxDepth))
        {
            Fail("reserved_tags", $"{ReservedTags}: must be below hw_queue_depth ({HwQueueDepth}).");
        }

        if (!Enum.IsDefined(IrqMode))
        {
            Fail("irqmode", $"{(int)IrqMode} is not 0, 1 or 2.");
        }

        if (CompletionNsec < 0)
        {
            Fail("completion_nsec", $"{CompletionNsec} cannot be negative.");
        }

        if (!Enum.IsDefined(RqAffinity))
        {
            Fail("rq_affinity", $"{(int)RqAffinity} is not 0, 1 or 2.");
        }

        if (!Enum.IsDefined(NoMerges))
        {
            Fail("nomerges", $"{(int)NoMerges} is not 0, 1 or 2.");
        }

        if (IoTimeoutMs < 0)
        {
            Fail("io_timeout", $"{IoTimeoutMs} cannot be negative.");
        }

        // As the attribute (§11.3 item 9): at least a page; at most 2 GiB (a bio's size is 32-bit).
        if (MaxSectorsKb < 0 || (MaxSectorsKb > 0 && (MaxSectorsKb < 4 || MaxSectorsKb > 2 << 20 || MaxSectorsKb * 1024L < BlockSize)))
        {
            Fail("max_sectors_kb", $"{MaxSectorsKb} is not 0 (the default) or 4 to {2 << 20} KiB holding at least one block of {BlockSize} bytes.");
        }

        if (!Enum.IsDefined(Dispatch))
        {
            Fail("dispatch", $"{Dispatch} is not ring or mailbox.");
        }

        if (!Enum.IsDefined(Completion))
        {
            Fail("completion", $"{(int)Completion} is not inline or threadpool.");
        }

        if (!Enum.IsDefined(CpuMapAlgorithm))
        {
            Fail("cpu_map", $"{(int)CpuMapAlgorithm} is not group-evenly, present-first or contiguous.");
        }

        if (MaxRetries is < 0 or > 100)
        {
            Fail("max_retries", $"{MaxRetries} is not 0 to 100.");
        }

        if (ResetAfterTimeouts < 0)
        {
            Fail("reset_after_timeouts", $"{ResetAfterTimeouts} cannot be negative (0 never resets).");
        }

        if (TimeoutWindowMs <= 0)
        {
            Fail("timeout_window", $"{TimeoutWindowMs} must be a positive number of milliseconds.");
        }

        try
        {
            Faults.Validate();
        }
        catch (ArgumentOutOfRangeException ex)
        {
            Fail(ex.ParamName is { Length: > 0 } key && key.StartsWith("fault_", StringComparison.Ordinal) ? key : "fault", ex.Message);
        }

        if (SharedTags && string.IsNullOrWhiteSpace(TagSetName))
        {
            Fail("tag_set", "a shared tag set needs a name.");
        }

        // The name becomes part of an actor's name and shows in each sharing device's info: "a/b",
        // "a b" or a newline failed the guardian (an illegal actor name) and stopped the whole
        // node, from hocon.conf or the API alike (a review).
        // What Akka takes in an actor name (ActorPath.IsValidPathElement: ASCII letters and digits
        // and -_.*$+:@&=,!~'; ; its %XX escapes aside): names such as "db:fast" or "pool+1" worked
        // before the check and still do (a review).
        if (SharedTags && !TagSetPattern().IsMatch(TagSetName))
        {
            Fail("tag_set", $"'{TagSetName}' is not a tag set name (ASCII letters, digits and -_.*$+:@&=,!~';).");
        }
    }

    /// <summary>The tag set these options call for.</summary>
    public TagSetOptions ToTagSetOptions(int payloadSize) => new()
    {
        Name = SharedTags ? TagSetName : Name,
        HardwareQueues = Driver == "nbd" ? Connections : SubmitQueues,
        PollQueues = IoPoll ? PollQueues : 0,
        QueueDepth = HwQueueDepth,
        ReservedTags = ReservedTags,
        PayloadSize = payloadSize,
        Flags = (HostWideTags ? TagSetFlags.HostWide : 0) | (Blocking || MemoryBacked ? TagSetFlags.Blocking : 0),
        FairSharing = TagFairness,
        TimeoutMs = EffectiveTimeoutMs,
        MapAlgorithm = CpuMapAlgorithm,
    };

    /// <summary>The queue settings these options call for.</summary>
    public QueueOptions ToQueueOptions() => new()
    {
        MergePolicy = NoMerges,
        RqAffinity = RqAffinity,
        IoTimeoutMs = EffectiveTimeoutMs,
        IoPoll = IoPoll,
        ReadOnly = ReadOnly,
        Rotational = Rotational,
        Continuation = Completion,
        MaxRetries = MaxRetries,
    };

    /// <summary>The null driver settings these options call for.</summary>
    public NullBlockOptions ToNullBlockOptions() => new()
    {
        SizeBytes = Size ?? NullBlockOptions.DefaultSizeBytes,
        BlockSize = BlockSize,
        IrqMode = IrqMode,
        CompletionNsec = CompletionNsec,
        MemoryBacked = MemoryBacked,
        Blocking = Blocking,
        Discard = Discard,
        Pollable = IoPoll,
        MaxSectors = MaxSectorsKb * 2,
        WriteCache = WriteCache,
    };

    /// <summary>The file driver settings these options call for.</summary>
    public FileBlockOptions ToFileBlockOptions() => new()
    {
        Path = Path ?? string.Empty,
        SizeBytes = Size,
        BlockSize = BlockSize,
        Direct = Direct,
        Engine = Engine,
        SubmitBatch = SubmitBatch,
        FixedBuffers = FixedBuffers,
        ReadOnly = ReadOnly,
        Discard = Discard,
        MaxSectors = MaxSectorsKb * 2,
    };

    /// <summary>The request timeout in effect: the option, or the driver's default.</summary>
    public int EffectiveTimeoutMs => IoTimeoutMs > 0 ? IoTimeoutMs : Driver == "null" ? NullDefaultTimeoutMs : TagSet.DefaultTimeoutMs;

    /// <summary>The largest memory-backed device: 1 PiB (its page directory is sized for the whole capacity up front).</summary>
    public const long MaxMemoryBackedSize = 1L << 50;

    /// <summary>
    /// True for a valid device name: letters, digits, '-', '_' and '.', 1 to 32 characters, and not
    /// "." or ".." (a name is a path component of the attribute tree). Nothing may follow: the
    /// pattern ended in '$', which .NET also matches before a final newline, so "d0\n" passed, and
    /// creating it through the API stopped the node (an illegal actor name in the guardian).
    /// </summary>
    public static bool IsDeviceName(string? name) =>
        !string.IsNullOrEmpty(name) && name.Length <= 32 && name is not ("." or "..") && NamePattern().IsMatch(name);

    private void Fail(string option, string message) => throw new DeviceOptionsException(Name, option, message);

    [GeneratedRegex(@"\A[A-Za-z0-9_.-]+\z")]
    private static partial Regex NamePattern();

    [GeneratedRegex(@"\A[A-Za-z0-9_.*$+:@&=,!~';-]+\z")]
    private static partial Regex TagSetPattern();
}
