using System.CommandLine;
using System.CommandLine.Parsing;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers;
using ActorBlk.Hardware.Drivers.File;
using ActorBlk.Hardware.Queues;
using ActorBlk.Host.Commands;

namespace ActorBlk.Host.Bench;

/// <summary>
/// The options of <c>actorblk bench</c> as System.CommandLine declares them: fio's names and
/// meanings for the workload (<c>--rw=randread --bs=4k --iodepth=32</c>, either
/// <c>--name=value</c> or <c>--name value</c>), ActorBlk's for the device. Each value is checked
/// by its option's parser, so a bad one is a usage error naming the option before anything starts.
/// An option given more than once takes its last value, as fio does, each value checked in
/// order (an invalid one fails the parse even when a later one would do).
/// </summary>
/// <remarks>
/// To add an option: declare it below (a <see cref="CliOptions"/> factory gives fio's value
/// syntax and the error message), list it in <see cref="All"/> under its heading, add a property
/// to <see cref="BenchOptions"/> and read it in <see cref="From"/>.
/// </remarks>
internal sealed class BenchCommandLine
{
    // Workload (fio's names).
    private readonly Option<string> Name = CliOptions.TextWithDefault("--name", "actorblk", "NAME", "job name");
    private readonly Option<Word<IoPattern>> Rw = CliOptions.Choice("--rw", "randread",
        [("read", IoPattern.Read), ("write", IoPattern.Write), ("randread", IoPattern.RandRead), ("randwrite", IoPattern.RandWrite),
         ("rw", IoPattern.ReadWrite), ("readwrite", IoPattern.ReadWrite), ("randrw", IoPattern.RandReadWrite)],
        "I/O pattern", "--readwrite");

    private readonly Option<int> RwMixRead = CliOptions.Int("--rwmixread", 50, 0, 100, "share of reads in mixed patterns, in percent");
    private readonly Option<Word<long>> Bs = CliOptions.Size("--bs", "4k",
        "block size per I/O; fio's READ,WRITE[,TRIM] form (4k,8k; ,8k sets writes alone) gives each direction its own, and a mixed --rw needs the two equal",
        (option, text) => Sizes.ParseSplit(option, text).Read?.Bytes ?? 0, "SIZE[,SIZE[,SIZE]]");

    // fio's kb_base (options.c, 1024 or 1000): the base of k, m, g ... in the sizes given after it
    // on the command line (fio reads them in order), and of the normal report's units (1000:
    // decimal first, kB/s).
    private readonly Option<Word<int>> KbBase = CliOptions.Choice("--kb_base", "1024", [("1024", 1024), ("1000", 1000)],
        "unit base of the sizes after it (1024: k, m, g ... are powers of 1024 and KiB, MiB ... of 1000, fio's compatibility mode; 1000: the other way round) and of the normal report's units (1000: decimal first)");

    // The longest I/O a device takes (BlockDevice.MaxIoBytes, 2 GiB less 4 KiB). It was the largest
    // multiple of 512 an int holds, 2147483136: a --bs between the two passed the parse, and the run
    // allocated its buffers and then failed at the first I/O ("the length must be between 1 and
    // 2147479552 bytes", exit 1), where a workload the device cannot take is a usage error.
    private const long MaxBlockSize = BlockDevice.MaxIoBytes;
    private readonly Option<Word<long>> SizeOption = CliOptions.Size("--size", "1g",
        "device region each job covers; ends the run when no runtime is set; N% is that share of an existing file's or device's size",
        (option, text) => Sizes.ParsePercent(option, text) is { } percent ? -percent : Sizes.Parse(option, text), "SIZE|N%");
    // fio's offset (alias fileoffset) and offset_increment (options.c, FIO_OPT_STR_VAL_ZONE): a
    // size, or N% of the file's or device's size (filesetup.c get_start_offset).
    private readonly Option<Word<long>> OffsetOption = WithAlias(CliOptions.Size("--offset", "0",
        "where each job's region starts (fio's region is [offset, offset + size), and size defaults to the rest of the device); N% is that share of an existing file's or device's size, rounded up to the block size",
        (option, text) => Sizes.ParsePercent(option, text) is { } percent ? -percent : Sizes.Parse(option, text), "SIZE|N%"), "--fileoffset");

    private readonly Option<Word<long>> OffsetIncrement = CliOptions.Size("--offset_increment", "0",
        "with --numjobs, job N starts N times this after --offset (fio's offset_increment); N% is that share of the device's size, each job's offset then rounded up to the block size",
        (option, text) => Sizes.ParsePercent(option, text) is { } percent ? -percent : Sizes.Parse(option, text), "SIZE|N%");

    private readonly Option<int> IoDepth = CliOptions.Int("--iodepth", 1, 1, 65536, "I/Os each job keeps in flight");
    private readonly Option<int?> IoDepthBatchSubmit = CliOptions.OptionalInt("--iodepth_batch_submit", 0, 65536, "io_uring: submit as soon as N I/Os are prepared (1: each alone, fio's default); 0 = once per dispatch round [default: adaptive, half of the I/Os in flight, 1 to 16]", "N", "--iodepth_batch");
    private readonly Option<Word<bool>> FixedBufs = CliOptions.Bool("--fixedbufs", false, "io_uring: I/O buffers from registered memory");
    private readonly Option<int> NumJobs = CliOptions.Int("--numjobs", 1, 1, 1024, "jobs, each on its own CPU");
    private readonly Option<TimeSpan?> Runtime = CliOptions.Seconds("--runtime", "run this long (time based); 0 = no limit, size-bound as without it");
    private readonly Option<TimeSpan?> RampTime = CliOptions.Seconds("--ramp_time", "run this long before measuring [default: 0]");
    private readonly Option<TimeSpan?> JitWarmup = CliOptions.Seconds("--jit_warmup", "at most this long, before the ramp of a time-based run, the jobs run unmeasured until the JIT used under 5% of a CPU over 0.5 s (the tiered code reached its optimised form); 0 = off [default: 5]");
    private readonly Option<Word<bool>> Direct = CliOptions.Bool("--direct", true, "O_DIRECT for file devices, buffered I/O with 0");
    private readonly Option<Word<bool>> RandRepeat = CliOptions.Bool("--randrepeat", true, "same random offsets every run");
    private readonly Option<Word<bool>> LatPercentiles = CliOptions.Bool("--lat_percentiles", false, "percentiles of the whole latency too (fio's lat_percentiles): the JSON's lat_ns gets them and the report a 'lat percentiles' table beside clat's");

    private readonly Option<Word<TimestampSource>> ClockSource = CliOptions.Choice("--clocksource", "auto",
        [("auto", TimestampSource.Auto), ("tsc", TimestampSource.Tsc), ("cpu", TimestampSource.Tsc), ("monotonic", TimestampSource.Monotonic), ("clock_gettime", TimestampSource.Monotonic)],
        "clock of the I/O timestamps (fio's clocksource): tsc (cpu) reads the CPU's time-stamp counter, monotonic (clock_gettime) the kernel's clock; auto takes tsc on x86-64 Linux with constant_tsc and nonstop_tsc; without the option, the environment variable ACTORBLK_CLOCKSOURCE, when set, takes the place of the default");

    // fio flags ActorBlk always behaves as if given.
    private readonly Option<Word<bool>>[] AlwaysOn =
        [.. new[] { "--time_based", "--group_reporting", "--thread", "--norandommap" }.Select(f => CliOptions.Bool(f, true, "accepted, always on"))];

    // Reporting (fio's names).
    private readonly Option<Word<OutputFormat>> Output = CliOptions.ChoiceList("--output-format", "normal",
        [("normal", OutputFormat.Normal), ("json", OutputFormat.Json), ("json+", OutputFormat.Json | OutputFormat.JsonPlus),
         ("terse", OutputFormat.Terse), ("minimal", OutputFormat.Terse), ("csv", OutputFormat.Terse)],
        (a, b) => a | b,
        "the report on stdout: normal, json, json+ (json with each latency's fio histogram bins), terse (fio's terse line, version 3 or --terse-version's; minimal and csv are its other names), or a comma-separated list of them, each printed (terse, then json, then normal, as fio)", "--output_format");

    // fio's --minimal (init.c, no argument): output_format = FIO_OUTPUT_TERSE, replacing the
    // formats so far, as --output-format replaces them in turn; the later of the two wins.
    private readonly Option<bool> Minimal = new("--minimal")
    {
        Description = "the terse line alone, as --output-format=terse (fio's --minimal); the later of --minimal and --output-format wins, as in fio",
        Arity = ArgumentArity.Zero,
    };

    // fio's --append-terse (init.c, an optional argument it ignores): output_format |=
    // FIO_OUTPUT_TERSE, so the terse line comes with the formats set before it (printed first, as
    // fio prints its terse buffer before the normal one); a later --output-format or --minimal
    // replaces the formats, as in fio.
    private readonly Option<string?> AppendTerse = new("--append-terse")
    {
        Description = "the terse line as well as the formats given before it (fio's --append-terse; as --output-format=normal,terse by default)",
        Arity = ArgumentArity.ZeroOrOne,
        HelpName = "IGNORED",
    };

    // fio's --terse-version (init.c: 2 to 5, else "fio: bad terse version format").
    private readonly Option<int> TerseVersion = CliOptions.Int("--terse-version", 3, 2, 5, "the terse line's version, as fio's: 2 (no fio version field, trim included), 3 (the default), 4 (trim included), 5 (4 with each direction's bandwidth sample count and IOPS samples)");

    private readonly Option<Word<EtaMode>> Eta = CliOptions.Choice("--eta", "auto", [("auto", EtaMode.Auto), ("always", EtaMode.Always), ("never", EtaMode.Never)],
        "the status line on stderr: auto = when stderr is a terminal and the output format is normal alone");

    private readonly Option<TimeSpan?> StatusInterval = CliOptions.Seconds("--status-interval",
        "a full report of the figures so far (cumulative from the start) every SECONDS on stdout; with JSON one object per report");

    private readonly Option<string?> WriteLatLog = CliOptions.Text("--write_lat_log", "PREFIX", "per-job latency logs PREFIX_lat.N.log and PREFIX_clat.N.log in fio's log format");
    private readonly Option<string?> WriteIopsLog = CliOptions.Text("--write_iops_log", "PREFIX", "per-job IOPS logs PREFIX_iops.N.log in fio's log format");
    private readonly Option<int> LogAvgMsec = CliOptions.Int("--log_avg_msec", 0, 0, 3_600_000, "one averaged log entry per direction per N ms; 0 logs every I/O");
    private readonly Option<Word<bool>> LogOffset = CliOptions.Bool("--log_offset", false, "log entries carry the I/O's offset");
    private readonly Option<string?> Plot = CliOptions.Text("--plot", "FILE.png|FILE.svg", "draw IOPS over time and the latency percentile curve");

    // Device (ActorBlk's names).
    private readonly Option<string> Device = CliOptions.TextWithDefault("--device", "null", "null|file:PATH|nbd://HOST:PORT/EXPORT|nbd+unix:///EXPORT?socket=PATH",
        "null (null_blk), file:PATH (a regular file or block device; a missing file is created at --size, a smaller regular file extended to it, as fio lays out its files), nbd://HOST:PORT/EXPORT or nbd+unix:///EXPORT?socket=PATH (nbds:// and nbds+unix:// for TLS, with the NBD URI's tls-certificates=DIR, tls-hostname, tls-verify-peer; --submit-queues sets its connections), or with --join a device of the cluster, NAME or NAME@HOST:PORT");

    private readonly Option<string?> Join = CliOptions.Text("--join", "HOST:PORT",
        "join the cluster at HOST:PORT as a client owning no devices (with the hocon.conf of the working directory or next to actorblk); --device then names a device of the cluster, NAME or NAME@HOST:PORT, opened wherever it lives");

    private readonly Option<string?> ConfigFile = CliOptions.Text("--config", "PATH",
        "a node configuration (HOCON) whose actorblk.devices and actorblk.stacked-devices the bench creates in its own process (after joining, with --join, whose remoting and TLS settings then come from it); --device then names one of them, a mirror for instance");

    private readonly Option<Word<IoEngine>> Engine = CliOptions.Choice("--engine", "io_uring", [("io_uring", IoEngine.IoUring), ("iouring", IoEngine.IoUring), ("psync", IoEngine.Psync)],
        "file device I/O engine (psync where io_uring is unavailable)");

    private readonly Option<Word<DispatchMode>> Dispatch = CliOptions.Choice("--dispatch", "ring", [("ring", DispatchMode.Ring), ("mailbox", DispatchMode.Mailbox)], "dispatch mode");
    private readonly Option<int> SubmitQueues = CliOptions.Int("--submit-queues", 1, 1, 1024, "hardware queues");
    private readonly Option<int> HwQueueDepth = CliOptions.Int("--hw-queue-depth", 64, 1, 10240, "tags per hardware queue");
    private readonly Option<int> IrqModeOption = CliOptions.Int("--irqmode", 1, 0, 2, "null completion mode: 0 none, 1 softirq, 2 timer");
    private readonly Option<long> CompletionNsec = CliOptions.Long("--completion-nsec", 10_000, 0, "timer completion delay, irqmode 2");
    private readonly Option<int> RqAffinity = CliOptions.Int("--rq-affinity", 1, 0, 2, "completion affinity");
    private readonly Option<int> NoMerges = CliOptions.Int("--nomerges", 0, 0, 2, "merge policy");
    private readonly Option<Word<bool>> IoPoll = CliOptions.Bool("--io-poll", false, "polled I/O through a poll queue");
    private readonly Option<Word<bool>> MemoryBacked = CliOptions.Bool("--memory-backed", false, "keep data in RAM");
    private readonly Option<Word<CompletionContinuation>> Completion = CliOptions.Choice("--completion", "inline",
        [("inline", CompletionContinuation.Inline), ("threadpool", CompletionContinuation.ThreadPool)], "where completions continue");

    private readonly Option<int> IoTimeout = CliOptions.Int("--io-timeout", 0, 1, int.MaxValue, "request timeout in milliseconds, like queue/io_timeout; 0 keeps the driver's (null: 5000)");

    // Several devices, CPU hotplug.
    private readonly Option<int> Devices = CliOptions.Int("--devices", 1, 1, 64, "N devices, each driven by its own --numjobs jobs at --iodepth");
    private readonly Option<Word<bool>> SharedTags = CliOptions.Bool("--shared-tags", false, "the devices share one tag set of --hw-queue-depth tags (fair share)");
    private readonly Option<Word<bool>> TagFairness = CliOptions.Bool("--tag-fairness", true, "with --shared-tags: each active device holds at most max(ceil(depth / active), 4) tags (hctx_may_queue); 0 lets any take them all");
    private readonly Option<int?> PossibleCpus = CliOptions.OptionalInt("--possible-cpus", 1, 4096, "a simulated machine of N CPUs instead of this one's");
    private readonly Option<int?> HotplugInterval = CliOptions.OptionalInt("--hotplug-interval", 1, 3_600_000,
        "every MS, take the next CPU (1, 2, ... N-1 in turn) offline, then bring it back at the next tick; each event freezes, drains, re-maps and unfreezes every device", "MS");

    // Fault injection (null_blk style; any rate > 0 wraps the driver).
    private readonly Option<double> FaultErrorRate = CliOptions.Double("--fault-error-rate", 0, 0, 1, "share of requests failed with an I/O error");
    private readonly Option<double> FaultTimeoutRate = CliOptions.Double("--fault-timeout-rate", 0, 0, 1, "share of requests whose completion is lost: they time out and are retried");
    private readonly Option<double> FaultResourceRate = CliOptions.Double("--fault-resource-rate", 0, 0, 1, "share of requests refused with Resource/DeviceResource");
    private readonly Option<double> FaultLatencyRate = CliOptions.Double("--fault-latency-rate", 0, 0, 1, "share of requests behind a latency spike of --fault-latency");
    private readonly Option<int> FaultLatency = CliOptions.Int("--fault-latency", 10, 0, 60_000, "length of a latency spike in ms");
    private readonly Option<long> FaultCrashAfter = CliOptions.Long("--fault-crash-after", 0, 0, "the device crashes every N requests and is reset (0 = never)");
    private readonly Option<int> FaultSeed = CliOptions.Int("--fault-seed", 1, int.MinValue, int.MaxValue, "seed of the fault decisions");

    /// <summary>Every option of the command, in the order <c>--help</c> lists them.</summary>
    private IEnumerable<Option> All =>
    [
        Name, Rw, RwMixRead, Bs, SizeOption, OffsetOption, OffsetIncrement, KbBase, IoDepth, IoDepthBatchSubmit, FixedBufs, NumJobs, Runtime, RampTime, JitWarmup, Direct, RandRepeat, LatPercentiles, ClockSource, .. AlwaysOn,
        Output, Minimal, AppendTerse, TerseVersion, Eta, StatusInterval, WriteLatLog, WriteIopsLog, LogAvgMsec, LogOffset, Plot,
        Device, Join, ConfigFile, Engine, Dispatch, SubmitQueues, HwQueueDepth, IrqModeOption, CompletionNsec, RqAffinity, NoMerges, IoPoll, MemoryBacked, Completion, IoTimeout,
        Devices, SharedTags, TagFairness, PossibleCpus, HotplugInterval,
        FaultErrorRate, FaultTimeoutRate, FaultResourceRate, FaultLatencyRate, FaultLatency, FaultCrashAfter, FaultSeed,
    ];

    /// <summary>The <c>bench</c> command; its action runs <paramref name="run"/> with the options read.</summary>
    public Command Create(Func<BenchOptions, Task<int>> run)
    {
        ArgumentNullException.ThrowIfNull(run);
        var command = new Command("bench", "Drive a device like fio: fio's workload options and report (normal or JSON), ActorBlk's device options.");
        foreach (var option in All)
        {
            command.Options.Add(option);
        }

        command.SetAction((parse, _) => run(From(parse)));
        return command;
    }

    /// <summary>
    /// fio's <c>getopt_long_only</c> spelling of a long option with one dash (fio 3.33 takes
    /// <c>-rw=randread -size 1m</c>): each argument that is one dash and the name of one of
    /// <paramref name="command"/>'s options, with or without <c>=value</c>, gets its second dash.
    /// Anything else stays as it is (<c>-h</c>, a value, the arguments after <c>--</c>). fio's
    /// other getopt rule, an unambiguous prefix of an option's name (<c>--minim</c>), is not
    /// taken: fio decides it among its several hundred options, the bench knows only its own.
    /// </summary>
    public static IEnumerable<string> LongOnly(Command command, IEnumerable<string> args)
    {
        ArgumentNullException.ThrowIfNull(command);
        ArgumentNullException.ThrowIfNull(args);
        // Each long name, and whether its option needs a value (fio's required_argument). A flag,
        // or a bool whose value is optional (fio's FIO_OPT_STR_SET, optional_argument: getopt
        // takes its value only after '='), leaves the next argument an option (-fixedbufs -rw=read).
        var names = command.Options.SelectMany(o => o.Aliases.Prepend(o.Name).Select(n => (Name: n, Valued: o.Arity.MinimumNumberOfValues > 0)))
            .Where(n => n.Name.StartsWith("--", StringComparison.Ordinal)).ToDictionary(n => n.Name, n => n.Valued, StringComparer.Ordinal);
        var rest = false;
        var value = false; // the argument is the value of the option before it (-name -rw: the name "-rw", as fio)
        foreach (var arg in args)
        {
            rest |= arg == "--";
            var name = arg.Split('=', 2)[0];
            var rewritten = !rest && !value && arg.Length > 2 && arg[0] == '-' && arg[1] != '-' && names.ContainsKey("-" + name) ? "-" + arg : arg;
            value = !value && !rest && !rewritten.Contains('=', StringComparison.Ordinal) && names.TryGetValue(rewritten, out var valued) && valued;
            yield return rewritten;
        }
    }

    /// <summary>
    /// Parses <c>bench</c>'s arguments (without the command name) alone, for specs and tools: the
    /// options, or a <see cref="UsageException"/> with the first parse error.
    /// </summary>
    public static BenchOptions Parse(params string[] args)
    {
        var cli = new BenchCommandLine();
        var command = cli.Create(_ => Task.FromResult(0));
        var parse = command.Parse([.. LongOnly(command, args)]);
        if (parse.Errors.Count > 0)
        {
            throw new UsageException(parse.Errors[0].Message);
        }

        return cli.From(parse);
    }

    /// <summary>The options of a parse without errors, checked as a whole (<see cref="UsageException"/> names the option at fault).</summary>
    public BenchOptions From(ParseResult parse)
    {
        ArgumentNullException.ThrowIfNull(parse);
        var hotplugMs = parse.GetValue(HotplugInterval);

        // fio reads its command line in order: --kb_base applies to the sizes after it, and each
        // --bs fills the directions it names (a later one's empty values keep an earlier one's).
        var sizes = ReadSizes(parse);
        var pattern = parse.ValueOf(Rw);
        var reads = pattern is IoPattern.Read or IoPattern.RandRead || (pattern is IoPattern.ReadWrite or IoPattern.RandReadWrite && parse.GetValue(RwMixRead) > 0);
        var writes = pattern is IoPattern.Write or IoPattern.RandWrite || (pattern is IoPattern.ReadWrite or IoPattern.RandReadWrite && parse.GetValue(RwMixRead) < 100);
        if (reads && writes && sizes.Read.Bytes != sizes.Write.Bytes)
        {
            throw new UsageException($"option --bs: reads of {sizes.Read.Bytes} bytes and writes of {sizes.Write.Bytes}: the bench issues one block size for both directions of --rw={parse.GetValue(Rw).Text}, so fio's split form (READ,WRITE) needs them equal here.");
        }

        var (bs, bsText, bsBase) = reads ? sizes.Read : sizes.Write;

        // A block size past an int was cut to int.MaxValue and refused as "2147483647 is not a
        // multiple of 512", a number the user never gave (an outside bad-input audit).
        if (bs > MaxBlockSize)
        {
            throw new UsageException($"option --bs: {bs} is more than the largest block size, {MaxBlockSize} bytes.");
        }

        DecimalUnit("--bs", bsText, bs, bsBase);
        if (sizes.SizePercent is null)
        {
            DecimalUnit("--size", sizes.SizeText, sizes.Size, sizes.SizeBase);
        }

        if (sizes.Offset.Percent is null)
        {
            DecimalUnit("--offset", sizes.Offset.Text, sizes.Offset.Bytes, sizes.Offset.KbBase);
        }

        if (sizes.Increment.Percent is null)
        {
            DecimalUnit("--offset_increment", sizes.Increment.Text, sizes.Increment.Bytes, sizes.Increment.KbBase);
        }

        var options = new BenchOptions
        {
            Name = parse.GetValue(Name) ?? "actorblk",
            Pattern = pattern,
            RwMixRead = parse.GetValue(RwMixRead),
            BlockSize = (int)bs,
            Size = sizes.SizePercent is null ? sizes.Size : 1L << 30, // with a percentage, set once the device's size is known
            SizeGiven = parse.GetResult(SizeOption) is { Implicit: false } && sizes.SizePercent is null,
            SizePercent = sizes.SizePercent,
            Offset = sizes.Offset.Bytes,
            OffsetPercent = sizes.Offset.Percent,
            OffsetIncrement = sizes.Increment.Bytes,
            OffsetIncrementPercent = sizes.Increment.Percent,
            OffsetTexts = (Given(OffsetOption), Given(OffsetIncrement)),
            KbBase = parse.ValueOf(KbBase),
            IoDepth = parse.GetValue(IoDepth),
            SubmitBatch = parse.GetValue(IoDepthBatchSubmit),
            FixedBuffers = parse.ValueOf(FixedBufs),
            NumJobs = parse.GetValue(NumJobs),
            // fio's runtime=0 is no limit, and its time_based then has nothing to run for: the
            // run is size-bound, as without --runtime.
            Runtime = parse.GetValue(Runtime) is { } runtime && runtime > TimeSpan.Zero ? runtime : null,
            RampTime = parse.GetValue(RampTime) ?? TimeSpan.Zero,
            JitWarmup = parse.GetValue(JitWarmup) ?? TimeSpan.FromSeconds(5),
            Direct = parse.ValueOf(Direct),
            RandRepeat = parse.ValueOf(RandRepeat),
            LatPercentiles = parse.ValueOf(LatPercentiles),
            ClockSource = parse.GetResult(ClockSource) is { Implicit: false } ? parse.ValueOf(ClockSource) : null,
            Output = OutputOf(parse),
            TerseVersion = parse.GetValue(TerseVersion),
            Eta = parse.ValueOf(Eta) switch { EtaMode.Always => true, EtaMode.Never => false, _ => null },
            StatusInterval = parse.GetValue(StatusInterval) is { } every && every > TimeSpan.Zero ? every : null, // 0: off, as in fio
            LatLog = parse.GetValue(WriteLatLog),
            IopsLog = parse.GetValue(WriteIopsLog),
            LogAvgMsec = parse.GetValue(LogAvgMsec),
            LogOffset = parse.ValueOf(LogOffset),
            Plot = parse.GetValue(Plot),
            Device = parse.GetValue(Device) ?? "null",
            Join = parse.GetValue(Join) is { } join ? NodeConfig.ParseEndpoint(join, "--join") : null,
            Config = parse.GetValue(ConfigFile),
            Engine = parse.ValueOf(Engine),
            Dispatch = parse.ValueOf(Dispatch),
            SubmitQueues = parse.GetValue(SubmitQueues),
            HwQueueDepth = parse.GetValue(HwQueueDepth),
            IrqMode = (IrqMode)parse.GetValue(IrqModeOption),
            CompletionNsec = parse.GetValue(CompletionNsec),
            RqAffinity = (CompletionAffinity)parse.GetValue(RqAffinity),
            NoMerges = (MergePolicy)parse.GetValue(NoMerges),
            IoPoll = parse.ValueOf(IoPoll),
            MemoryBacked = parse.ValueOf(MemoryBacked),
            Completion = parse.ValueOf(Completion),
            IoTimeoutMs = parse.GetValue(IoTimeout),
            Devices = parse.GetValue(Devices),
            SharedTags = parse.ValueOf(SharedTags),
            TagFairness = parse.ValueOf(TagFairness),
            PossibleCpus = parse.GetValue(PossibleCpus),
            HotplugInterval = hotplugMs is { } ms ? TimeSpan.FromMilliseconds(ms) : null,
            Faults = new FaultInjectionOptions
            {
                ErrorRate = parse.GetValue(FaultErrorRate),
                TimeoutRate = parse.GetValue(FaultTimeoutRate),
                ResourceRate = parse.GetValue(FaultResourceRate),
                LatencyRate = parse.GetValue(FaultLatencyRate),
                Latency = TimeSpan.FromMilliseconds(parse.GetValue(FaultLatency)),
                CrashAfter = parse.GetValue(FaultCrashAfter),
                Seed = parse.GetValue(FaultSeed),
            },
        };

        options.Validate();
        return options;

        // An option's text as given (its last value), null when not given.
        string? Given(Option<Word<long>> option) => parse.GetResult(option) is { Implicit: false } ? parse.GetValue(option).Text : null;
    }

    private static Option<T> WithAlias<T>(Option<T> option, string alias)
    {
        option.Aliases.Add(alias);
        return option;
    }

    // The report's formats: the later of --output-format and --minimal (each replaces the formats
    // so far, as in fio), with the terse line added when an --append-terse follows them.
    private OutputFormat OutputOf(ParseResult parse)
    {
        var (minimal, output) = (LastPosition(parse, Minimal), LastPosition(parse, Output));
        var formats = minimal > output ? OutputFormat.Terse : parse.ValueOf(Output);
        return LastPosition(parse, AppendTerse) > Math.Max(minimal, output) ? formats | OutputFormat.Terse : formats;
    }

    // A size as given (its text), what it is in bytes, and the kb_base it was read under.
    private readonly record struct Given(long Bytes, string Text, int KbBase);

    // An offset as given: bytes (0 with a share), its share of the device's size (null: bytes), its
    // text and the kb_base it was read under.
    private readonly record struct GivenOffset(long Bytes, int? Percent, string Text, int KbBase);

    // The sizes as fio reads them: the command line's options in order, each size under the
    // --kb_base that stands before it (fio's fio_cmd_option_parse, one option at a time; a job
    // file's options are sorted, kb_base first, but the command line's are not).
    private (Given Read, Given Write, long Size, string SizeText, int SizeBase, int? SizePercent, GivenOffset Offset, GivenOffset Increment) ReadSizes(ParseResult parse)
    {
        var kbBase = 1024;
        Given read = new(4096, "4k", 1024), write = read;
        var size = parse.GetValue(SizeOption);
        var (sizeText, sizeBase) = (size.Text, 1024);
        var (offsetText, offsetBase) = ("0", 1024);
        var (incrementText, incrementBase) = ("0", 1024);
        var tokens = parse.Tokens;
        for (var i = 0; i + 1 < tokens.Count; i++)
        {
            if (tokens[i].Type != TokenType.Option || tokens[i + 1].Type != TokenType.Argument)
            {
                continue;
            }

            var value = tokens[i + 1].Value;
            if (Is(tokens[i], KbBase))
            {
                kbBase = value == "1000" ? 1000 : 1024;
            }
            else if (Is(tokens[i], Bs))
            {
                var (r, w, _) = Sizes.ParseSplit("bs", value, kbBase);
                read = r is { } rb ? new(rb.Bytes, rb.Text, kbBase) : read;
                write = w is { } wb ? new(wb.Bytes, wb.Text, kbBase) : write;
            }
            else if (Is(tokens[i], SizeOption))
            {
                (sizeText, sizeBase) = (value, kbBase);
            }
            else if (Is(tokens[i], OffsetOption))
            {
                (offsetText, offsetBase) = (value, kbBase);
            }
            else if (Is(tokens[i], OffsetIncrement))
            {
                (incrementText, incrementBase) = (value, kbBase);
            }
        }

        var percent = Sizes.ParsePercent("size", sizeText);
        return (read, write, percent is null ? Sizes.Parse("size", sizeText, sizeBase) : 0, sizeText, sizeBase, percent,
            Offset("offset", offsetText, offsetBase), Offset("offset_increment", incrementText, incrementBase));

        static GivenOffset Offset(string option, string text, int kbBase) => Sizes.ParsePercent(option, text) is { } share
            ? new(0, share, text, kbBase)
            : new(Sizes.Parse(option, text, kbBase), null, text, kbBase);

        static bool Is(Token token, Option option) => token.Value == option.Name || option.Aliases.Contains(token.Value);
    }

    // fio's KiB, MiB ... are powers of 1000 under its default kb_base=1024 (k, m ... under
    // kb_base=1000), so --bs=4KiB is 4000 bytes, which the 512-byte check would refuse with a
    // number the user never wrote.
    private static void DecimalUnit(string option, string text, long bytes, int kbBase)
    {
        if (bytes % 512 != 0 && Sizes.HasDecimalUnit(text, kbBase))
        {
            throw new UsageException(kbBase == 1024
                ? $"option {option}: '{text}' is {bytes} bytes, not a multiple of 512: with fio's default kb_base=1024 KiB, MiB, GiB, TiB and PiB are powers of 1000, and k, m, g, t and p (kB, Ki ...) powers of 1024."
                : $"option {option}: '{text}' is {bytes} bytes, not a multiple of 512: with kb_base=1000 k, m, g, t and p (kB, Ki ...) are powers of 1000, and KiB, MiB, GiB, TiB and PiB powers of 1024.");
        }
    }

    // Where an option last stands among the command line's tokens, -1 when it is not given: fio
    // reads its options in order, so of two that set the same thing the later one wins.
    private static int LastPosition(ParseResult parse, Option option)
    {
        var tokens = parse.Tokens;
        for (var i = tokens.Count - 1; i >= 0; i--)
        {
            if (tokens[i].Type == TokenType.Option && (tokens[i].Value == option.Name || option.Aliases.Contains(tokens[i].Value)))
            {
                return i;
            }
        }

        return -1;
    }
}

/// <summary>fio's <c>--eta</c>.</summary>
internal enum EtaMode
{
    /// <summary>The status line when stderr is a terminal and the output is not JSON.</summary>
    Auto,

    /// <summary>Always the status line.</summary>
    Always,

    /// <summary>No status line.</summary>
    Never,
}
