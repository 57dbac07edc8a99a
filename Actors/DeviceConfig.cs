using System.Globalization;
using ActorBlk.Hardware;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers;
using ActorBlk.Hardware.Drivers.File;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Topology;
using Akka.Configuration;

namespace ActorBlk.Actors;

/// <summary>
/// Reads one <c>actorblk.devices</c> entry into <see cref="DeviceOptions"/>. Keys use null_blk and
/// sysfs names; an unknown key is an error, so a typo cannot silently fall back to a default.
/// </summary>
public static class DeviceConfig
{
    /// <summary>Every key a device entry may have.</summary>
    public static readonly IReadOnlySet<string> Keys = new HashSet<string>(StringComparer.Ordinal)
    {
        "name", "driver", "size", "bs", "submit_queues", "poll_queues", "hw_queue_depth", "reserved_tags",
        "irqmode", "completion_nsec", "memory_backed", "blocking", "discard", "write_cache", "shared_tags",
        "tag_set", "tag_fairness", "shared_tag_bitmap", "rq_affinity", "nomerges", "io_poll", "io_timeout", "max_sectors_kb",
        "read_only", "rotational", "dispatch", "completion", "cpu_map", "path", "uri", "connections", "tls_ca", "tls_verify", "direct", "engine", "submit_batch", "fixed_buffers", "max_retries", "reset_after_timeouts", "timeout_window",
        "fault_error_rate", "fault_resource_rate", "fault_timeout_rate", "fault_latency_rate", "fault_latency", "fault_crash_after",
        "fault_gone", "fault_reopen_failures", "fault_seed",
    };

    /// <summary>Parses a device entry; values absent from it keep the <see cref="DeviceOptions"/> defaults.</summary>
    /// <exception cref="DeviceOptionsException">A key is unknown or a value is malformed or out of range.</exception>
    public static DeviceOptions Parse(Config entry)
    {
        ArgumentNullException.ThrowIfNull(entry);
        var defaults = new DeviceOptions();
        var items = entry.Root.GetObject().Items;
        var name = NameOf(entry, items) ?? defaults.Name;
        foreach (var (key, value) in items)
        {
            if (!Keys.Contains(key))
            {
                throw new DeviceOptionsException(name, key, $"unknown key (known: {string.Join(", ", Keys.Order())}).");
            }

            // Every key takes one value. A list or a section read as a string is null to Akka:
            // on/off and choice keys failed with a NullReferenceException and its stack (exit 1),
            // `driver = [file]` was read as the null driver and `path = { }` as no path (an outside
            // audit).
            if (NotOneValue(value) is { } why)
            {
                throw new DeviceOptionsException(name, key, why);
            }

            // HOCON's null (and "null") reads as no string: on/off and choice keys failed with a
            // NullReferenceException, the others read '' or took the default (an audit). `driver =
            // null` alone has a meaning: the null driver.
            if (key != "driver" && IsNull(value))
            {
                throw new DeviceOptionsException(name, key, NullIsNoValue);
            }

            // A control character (tab and newline among them) is refused in every value but a
            // file path's: `name = "d\n0"` was echoed into the log and the error whole, and `tag_set`
            // or `uri` kept it (a review). Akka's reader trims whitespace at either end already.
            if (!AnyCharacterKeys.Contains(key) && ControlCharacters.Refusal(TextOf(value)) is { } refusal)
            {
                throw new DeviceOptionsException(name, key, refusal);
            }
        }

        var options = new DeviceOptions
        {
            Name = name,
            Driver = Driver(entry, defaults.Driver),
            Size = entry.HasPath("size") ? ParseSize(name, entry.GetString("size")) : defaults.Size,
            Path = entry.HasPath("path") ? entry.GetString("path") : defaults.Path,
            Uri = entry.HasPath("uri") ? entry.GetString("uri") : defaults.Uri,
            Connections = Int(entry, name, "connections", defaults.Connections),
            TlsCa = entry.HasPath("tls_ca") ? entry.GetString("tls_ca") : defaults.TlsCa,
            TlsVerify = Bool(entry, name, "tls_verify", defaults.TlsVerify),
            Direct = Bool(entry, name, "direct", defaults.Direct),
            Engine = Choice(entry, name, "engine", defaults.Engine, ("io_uring", IoEngine.IoUring), ("psync", IoEngine.Psync)),
            SubmitBatch = SubmitBatch(entry, name, defaults.SubmitBatch),
            FixedBuffers = entry.HasPath("fixed_buffers") ? ParseSize(name, entry.GetString("fixed_buffers"), "fixed_buffers") : defaults.FixedBuffers,
            MaxRetries = Int(entry, name, "max_retries", defaults.MaxRetries),
            ResetAfterTimeouts = Int(entry, name, "reset_after_timeouts", defaults.ResetAfterTimeouts),
            TimeoutWindowMs = Int(entry, name, "timeout_window", defaults.TimeoutWindowMs),
            Faults = new FaultInjectionOptions
            {
                ErrorRate = Double(entry, name, "fault_error_rate", defaults.Faults.ErrorRate),
                ResourceRate = Double(entry, name, "fault_resource_rate", defaults.Faults.ResourceRate),
                TimeoutRate = Double(entry, name, "fault_timeout_rate", defaults.Faults.TimeoutRate),
                LatencyRate = Double(entry, name, "fault_latency_rate", defaults.Faults.LatencyRate),
                Latency = TimeSpan.FromMilliseconds(Int(entry, name, "fault_latency", (int)defaults.Faults.Latency.TotalMilliseconds)),
                CrashAfter = Long(entry, name, "fault_crash_after", defaults.Faults.CrashAfter),
                CrashIsGone = Bool(entry, name, "fault_gone", defaults.Faults.CrashIsGone),
                ReopenFailures = Int(entry, name, "fault_reopen_failures", defaults.Faults.ReopenFailures),
                Seed = Int(entry, name, "fault_seed", defaults.Faults.Seed),
            },
            BlockSize = Int(entry, name, "bs", defaults.BlockSize),
            SubmitQueues = Int(entry, name, "submit_queues", defaults.SubmitQueues),
            PollQueues = Int(entry, name, "poll_queues", defaults.PollQueues),
            HwQueueDepth = Int(entry, name, "hw_queue_depth", defaults.HwQueueDepth),
            ReservedTags = Int(entry, name, "reserved_tags", defaults.ReservedTags),
            IrqMode = (IrqMode)Int(entry, name, "irqmode", (int)defaults.IrqMode),
            CompletionNsec = Long(entry, name, "completion_nsec", defaults.CompletionNsec),
            MemoryBacked = Bool(entry, name, "memory_backed", defaults.MemoryBacked),
            Blocking = Bool(entry, name, "blocking", defaults.Blocking),
            Discard = Bool(entry, name, "discard", defaults.Discard),
            WriteCache = Bool(entry, name, "write_cache", defaults.WriteCache),
            SharedTags = Bool(entry, name, "shared_tags", defaults.SharedTags),
            TagSetName = Str(entry, "tag_set", defaults.TagSetName),
            TagFairness = Bool(entry, name, "tag_fairness", defaults.TagFairness),
            HostWideTags = Bool(entry, name, "shared_tag_bitmap", defaults.HostWideTags),
            RqAffinity = (CompletionAffinity)Int(entry, name, "rq_affinity", (int)defaults.RqAffinity),
            NoMerges = (MergePolicy)Int(entry, name, "nomerges", (int)defaults.NoMerges),
            IoPoll = Bool(entry, name, "io_poll", defaults.IoPoll),
            IoTimeoutMs = Int(entry, name, "io_timeout", defaults.IoTimeoutMs),
            MaxSectorsKb = Int(entry, name, "max_sectors_kb", defaults.MaxSectorsKb),
            ReadOnly = Bool(entry, name, "read_only", defaults.ReadOnly),
            Rotational = Bool(entry, name, "rotational", defaults.Rotational),
            Dispatch = Choice(entry, name, "dispatch", defaults.Dispatch, ("ring", DispatchMode.Ring), ("mailbox", DispatchMode.Mailbox)),
            Completion = Choice(entry, name, "completion", defaults.Completion, ("inline", CompletionContinuation.Inline), ("threadpool", CompletionContinuation.ThreadPool)),
            CpuMapAlgorithm = Choice(entry, name, "cpu_map", defaults.CpuMapAlgorithm,
                ("group-evenly", CpuMapAlgorithm.GroupEvenly), ("present-first", CpuMapAlgorithm.PresentFirst), ("contiguous", CpuMapAlgorithm.Contiguous)),
        };
        options.Validate();

        // TLS settings on a plain nbd:// URI would be ignored: a mistyped scheme then moved the
        // data in clear without a word (an outside audit).
        var nbdUri = options.Driver == "nbd" ? Hardware.Drivers.Nbd.NbdUri.Parse(options.Uri!) : null;
        if (nbdUri is { Tls: false } && (entry.HasPath("tls_ca") || entry.HasPath("tls_verify")))
        {
            var key = entry.HasPath("tls_ca") ? "tls_ca" : "tls_verify";
            throw new DeviceOptionsException(name, key, $"only an nbds:// or nbds+unix:// URI uses TLS ('{options.Uri}' does not); it would be ignored.");
        }

        // tls_verify = on said explicitly against the URI's tls-verify-peer=0 (DeviceOptions.Validate
        // cannot tell an explicit on from the default).
        if (nbdUri is { TlsVerifyPeer: false } && entry.HasPath("tls_verify") && options.TlsVerify)
        {
            throw new DeviceOptionsException(name, "tls_verify", "it is on, and the URI turns verification off (tls-verify-peer=0): give one of them.");
        }

        // An nbd device's hardware queues are its connections (DeviceOptions.ToTagSetOptions):
        // submit_queues on one was ignored in silence (a review).
        if (options.Driver == "nbd" && entry.HasPath("submit_queues"))
        {
            throw new DeviceOptionsException(name, "submit_queues", "an nbd device has one hardware queue per connection: use connections; it would be ignored.");
        }

        // A tag set's name names a shared set only: without shared_tags = on the device has a set
        // of its own and the name was ignored in silence (an outside bad-input audit).
        if (entry.HasPath("tag_set") && !options.SharedTags)
        {
            throw new DeviceOptionsException(name, "tag_set", "names a shared tag set, and this device does not share one (set shared_tags = on); it would be ignored.");
        }

        foreach (var (key, driver) in DriverKeys)
        {
            if (options.Driver != driver && entry.HasPath(key))
            {
                throw new DeviceOptionsException(name, key, $"only the {driver} driver has this setting (this device's driver is '{options.Driver}'); it would be ignored.");
            }
        }

        return options;
    }

    /// <summary>An entry's <c>name</c> as given, <c>[ ... ]</c> when it is not one value, null when absent.</summary>
    internal static string? NameOf(Config entry, IDictionary<string, Akka.Configuration.Hocon.HoconValue> items) =>
        !items.TryGetValue("name", out var value) ? null : value.IsString() ? entry.GetString("name") ?? "null" : "[ ... ]";

    // The keys whose values are file paths: Linux allows every byte but NUL in one.
    private static readonly string[] AnyCharacterKeys = ["path", "tls_ca"];

    /// <summary>The text of one value as Akka reads it; null for HOCON's null or a substitution left unresolved.</summary>
    internal static string? TextOf(Akka.Configuration.Hocon.HoconValue value) =>
        value.IsString() && !IsUnresolved(value) ? value.GetString() : null;

    /// <summary>The refusal of HOCON's <c>null</c> for a key of a device entry.</summary>
    internal const string NullIsNoValue = "null is not a value here; remove the key for the default.";

    /// <summary>True when <paramref name="value"/> is HOCON's null (or <c>"null"</c>): one value that Akka reads as no string.</summary>
    internal static bool IsNull(Akka.Configuration.Hocon.HoconValue value) =>
        value.IsString() && !IsUnresolved(value) && value.GetString() is null;

    /// <summary>
    /// Why <paramref name="value"/> is not the one value a key takes (a list or a section), or null
    /// when it is. A substitution Akka left unresolved is left to the reader, as ActorBlkSettings does.
    /// </summary>
    internal static string? NotOneValue(Akka.Configuration.Hocon.HoconValue value) =>
        value.IsString() || IsUnresolved(value) ? null : $"a value is expected, not a {(value.IsObject() ? "section { ... }" : "list [ ... ]")}.";

    /// <summary>True when <paramref name="value"/> holds a substitution Akka left unresolved.</summary>
    // A substitution the parser could not resolve: an optional ${?X} with no X, which Akka.NET
    // 1.5's parser leaves resolved to a section (a probe). A resolved one stays in the value's
    // elements with its ResolvedValue set, and reads as that value: taken for unresolved,
    // `enable-ssl = ${x}` read as off and `port = ${p}` as 0 (a review). For the scalar keys
    // that ask, a substitution resolved to a section means nothing else.
    internal static bool IsUnresolved(Akka.Configuration.Hocon.HoconValue value) =>
        value.Values.Any(v => v is Akka.Configuration.Hocon.HoconSubstitution s && (s.ResolvedValue is null || s.ResolvedValue.IsObject()));

    // Keys that only one driver reads: on a device of another driver they would be ignored in
    // silence (path, uri, tls_ca and io_poll = on are refused by DeviceOptions.Validate first,
    // with messages of their own; submit_queues on an nbd device above, with one too).
    // The API's DeviceOptions keeps them as plain properties that other drivers ignore, so that
    // one set of options (the bench's) can describe any driver.
    private static readonly (string Key, string Driver)[] DriverKeys =
    [
        ("direct", "file"), ("engine", "file"), ("submit_batch", "file"), ("fixed_buffers", "file"),
        ("connections", "nbd"), ("tls_verify", "nbd"),
        ("write_cache", "null"), ("io_poll", "null"), ("poll_queues", "null"),
    ];

    /// <summary>
    /// Parses a size: plain bytes, or a number with a binary unit (k, m, g, t; "KiB" etc. also
    /// accepted): "512m" is 512 MiB.
    /// </summary>
    /// <exception cref="DeviceOptionsException">The text is not a size.</exception>
    public static long ParseSize(string device, string text, string key = "size") =>
        ByteSize.TryParse(text, out var bytes) ? bytes : throw new DeviceOptionsException(device, key, $"'{text}' is not a size (bytes, or a number with k, m, g or t).");

    private static string Str(Config c, string key, string fallback) => c.HasPath(key) ? c.GetString(key) : fallback;

    // `driver = null` is HOCON's null literal; for this key it names the null driver.
    private static string Driver(Config c, string fallback) =>
        !c.HasPath("driver") ? fallback : string.IsNullOrEmpty(c.GetString("driver")) ? "null" : c.GetString("driver");

    private static int Int(Config c, string device, string key, int fallback)
    {
        var value = Long(c, device, key, fallback);
        if (value is < int.MinValue or > int.MaxValue)
        {
            throw new DeviceOptionsException(device, key, $"{value} is out of range.");
        }

        return (int)value;
    }

    // submit_batch: a whole number, or "auto" (null: the engine adapts the batch).
    private static int? SubmitBatch(Config c, string device, int? fallback) =>
        !c.HasPath("submit_batch") ? fallback
        : string.Equals(c.GetString("submit_batch"), "auto", StringComparison.OrdinalIgnoreCase) ? null
        : Int(c, device, "submit_batch", 0);

    private static long Long(Config c, string device, string key, long fallback)
    {
        if (!c.HasPath(key))
        {
            return fallback;
        }

        var text = c.GetString(key);
        return long.TryParse(text, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out var v)
            ? v
            : throw new DeviceOptionsException(device, key, $"'{text}' is not a whole number.");
    }

    private static double Double(Config c, string device, string key, double fallback)
    {
        if (!c.HasPath(key))
        {
            return fallback;
        }

        var text = c.GetString(key);
        return double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out var v) && double.IsFinite(v)
            ? v
            : throw new DeviceOptionsException(device, key, $"'{text}' is not a number.");
    }

    private static bool Bool(Config c, string device, string key, bool fallback)
    {
        if (!c.HasPath(key))
        {
            return fallback;
        }

        return c.GetString(key).ToLowerInvariant() switch
        {
            "on" or "true" or "yes" or "1" => true,
            "off" or "false" or "no" or "0" => false,
            var other => throw new DeviceOptionsException(device, key, $"'{other}' is not on/off."),
        };
    }

    private static T Choice<T>(Config c, string device, string key, T fallback, params (string Name, T Value)[] choices)
    {
        if (!c.HasPath(key))
        {
            return fallback;
        }

        var text = c.GetString(key).ToLowerInvariant();
        foreach (var (n, v) in choices)
        {
            if (n == text)
            {
                return v;
            }
        }

        throw new DeviceOptionsException(device, key, $"'{text}' is not one of {string.Join(", ", choices.Select(x => x.Name))}.");
    }
}
