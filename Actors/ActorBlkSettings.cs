using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Topology;
using Akka.Actor;
using Akka.Configuration;

namespace ActorBlk.Actors;

/// <summary>Where request deadlines take their time from.</summary>
public enum ClockSource
{
    /// <summary>Coarse monotonic system ticks.</summary>
    System,

    /// <summary>The actor system scheduler's clock: TestKit virtual time moves deadlines.</summary>
    Scheduler,
}

/// <summary>The <c>actorblk</c> configuration section, read once per actor system.</summary>
/// <param name="TopologySource">"system" or "simulated".</param>
/// <param name="SimulatedCpus">Possible CPUs of a simulated machine.</param>
/// <param name="SimulatedSockets">Sockets of a simulated machine.</param>
/// <param name="SimulatedThreadsPerCore">SMT threads per core of a simulated machine.</param>
/// <param name="SimulatedOnline">CPUs online at start (empty: all).</param>
/// <param name="Clock">Deadline clock.</param>
/// <param name="TimeoutScanInterval">Longest interval between timeout scans.</param>
/// <param name="DrainTimeout">Wait for in-flight I/O at unregistration.</param>
/// <param name="RingSpin">Spin of idle dispatch loops.</param>
/// <param name="Devices">Devices to create at start.</param>
public sealed record ActorBlkSettings(
    string TopologySource,
    int SimulatedCpus,
    int SimulatedSockets,
    int SimulatedThreadsPerCore,
    CpuSet SimulatedOnline,
    ClockSource Clock,
    TimeSpan TimeoutScanInterval,
    TimeSpan DrainTimeout,
    TimeSpan RingSpin,
    IReadOnlyList<DeviceOptions> Devices)
{
    /// <summary>The dispatcher path for blocking drivers.</summary>
    public const string BlockingDriverDispatcher = "actorblk.blocking-driver-dispatcher";

    /// <summary>The default of <c>mailbox.busy-spin-microseconds</c>.</summary>
    public const int DefaultMailboxBusySpinMicroseconds = 1000;

    /// <summary>The library's defaults (the embedded reference.conf).</summary>
    public static Config DefaultConfig()
    {
        using var stream = typeof(ActorBlkSettings).Assembly.GetManifestResourceStream("ActorBlk.Actors.reference.conf")
                           ?? throw new InvalidOperationException("The embedded ActorBlk reference.conf is missing.");
        using var reader = new StreamReader(stream);
        return ConfigurationFactory.ParseString(reader.ReadToEnd());
    }

    /// <summary>
    /// The objects of the list <c>actorblk.KEY</c>. An empty list (<c>[]</c>, <c>[ ]</c>, or only
    /// comments and newlines inside) has none; an element that is not an object is refused.
    /// </summary>
    private static IEnumerable<Config> Entries(Config c, string key)
    {
        var list = c.GetValue(key);
        if (list is null || list.IsEmpty)
        {
            yield break;
        }

        IList<Akka.Configuration.Hocon.HoconValue> values;
        try
        {
            values = list.IsString() ? throw new FormatException("a string") : list.GetArray();
        }
        catch (Exception ex) when (ex is not OutOfMemoryException)
        {
            throw new ConfigurationException($"actorblk.{key}: must be a list of objects ([{{ name = ... }}, ...]), not '{(list.IsString() ? list.GetString() ?? "null" : list)}'.");
        }

        var index = 0;
        foreach (var value in values)
        {
            if (value is null || value.IsEmpty)
            {
                index++;
                continue;
            }

            if (!value.IsObject())
            {
                throw new ConfigurationException($"actorblk.{key}[{index}]: '{value}' is not an object ({{ name = ..., ... }}).");
            }

            yield return new Config(new Akka.Configuration.Hocon.HoconRoot(value));
            index++;
        }
    }

    /// <summary>
    /// Refuses a setting under <c>actorblk</c> that the library does not know (a misspelt
    /// <c>devcies</c> would otherwise leave a node with no devices and no word why). Every key
    /// must be one of reference.conf's, at every depth, except inside
    /// <c>blocking-driver-dispatcher</c> (an Akka dispatcher's own settings); the device lists
    /// are checked entry by entry when they are read.
    /// </summary>
    private static void RefuseUnknownKeys(Config config, Config defaults)
    {
        if (config.IsEmpty || !config.HasPath("actorblk"))
        {
            return;
        }

        var given = config.GetValue("actorblk");
        if (given is null)
        {
            return;
        }

        if (!given.IsObject())
        {
            // It aborted serve with a NullReferenceException from Akka's merge (an outside audit).
            throw new ConfigurationException($"actorblk: a section {{ ... }} is expected, not '{Text(given)}'.");
        }

        Walk("actorblk", given.GetObject(), defaults.GetValue("actorblk").GetObject());

        static void Walk(string path, Akka.Configuration.Hocon.HoconObject given, Akka.Configuration.Hocon.HoconObject known)
        {
            foreach (var (key, value) in given.Items)
            {
                var where = $"{path}.{key}";
                if (!known.Items.TryGetValue(key, out var reference))
                {
                    var near = known.Items.Keys.Where(k => Distance(k, key) <= 2).Order(StringComparer.Ordinal).ToArray();
                    throw new ConfigurationException(near.Length > 0
                        ? $"{where}: unknown setting (did you mean {string.Join(" or ", near.Select(k => $"{path}.{k}"))}?)."
                        : $"{where}: unknown setting; {path} takes {string.Join(", ", known.Items.Keys.Order(StringComparer.Ordinal))}.");
                }

                // A section where a value belongs, or a value (or list) where a section does: read
                // raw, these aborted serve with Akka's ArgumentNullException or NullReferenceException.
                // (Akka's HoconValue calls an empty list neither a string nor a list, so a list is
                // told from a value only where the reference holds a plain value.)
                // A substitution left unresolved (an optional ${?VAR} Akka does not fill) reads as
                // a section to Akka's HoconValue: such a value is left to the reader, as before.
                var plain = reference.IsString();

                // A control character (tab and newline among them) in any value but a file path's
                // or the admin secret's: `clock = "sys\ntem"` was echoed into the error on two
                // lines, and `nbd.listen` or `metrics.prometheus` took one into the log (a review).
                // A substitution is read as its value here (DeviceConfig.TextOf).
                if (plain && !AnyCharacterKeys.Contains(where) && Hardware.ControlCharacters.Refusal(DeviceConfig.TextOf(value)) is { } refusal)
                {
                    throw new ConfigurationException($"{where}: {refusal}");
                }

                if (value.Values.Any(v => v is Akka.Configuration.Hocon.HoconSubstitution))
                {
                    continue;
                }

                // A list assigned over a section the file set before is kept beside it by Akka's
                // parser, which then reads the section alone: `nbd = []` after `nbd { ... }` was
                // ignored in silence (an audit).
                if (reference.IsObject() != value.IsObject() || (plain && !value.IsString())
                    || (reference.IsObject() && value.Values.Any(v => v is Akka.Configuration.Hocon.HoconArray)))
                {
                    throw new ConfigurationException(reference.IsObject() ? $"{where}: a section {{ ... }} is expected, not '{Text(value)}'."
                        : $"{where}: a value is expected, not a {(value.IsObject() ? "section { ... }" : "list [ ... ]")}.");
                }

                // HOCON's null (and "null": Akka reads both as no string) failed the reader of the key
                // with "Value cannot be null." or a NullReferenceException, naming no key (an audit).
                if (plain && value.GetString() is null)
                {
                    throw NullValue(where, reference.GetString() ?? string.Empty);
                }

                if (value.IsObject() && where != BlockingDriverDispatcher)
                {
                    Walk(where, value.GetObject(), reference.GetObject());
                }
            }
        }

        static string Text(Akka.Configuration.Hocon.HoconValue value) =>
            value.Values.Any(v => v is Akka.Configuration.Hocon.HoconArray) ? "[ ... ]" : value.IsString() ? value.GetString() ?? "null" : value.IsObject() ? "{ ... }" : "[ ... ]";
    }

    // The keys whose values are file paths (Linux allows every byte but NUL in one) or the admin
    // secret (its own to choose): the only ones under actorblk that may hold a control character.
    private static readonly HashSet<string> AnyCharacterKeys = new(StringComparer.Ordinal)
    {
        "actorblk.topology.sysfs-root", "actorblk.nbd.certificate", "actorblk.nbd.key", "actorblk.cluster.registry.tls-ca",
        "actorblk.remote.admin-secret", "actorblk.remote.admin-secret-file",
    };

    // Levenshtein distance, for the "did you mean" of a misspelt setting (keys are short).
    private static int Distance(string a, string b)
    {
        var previous = new int[b.Length + 1];
        var current = new int[b.Length + 1];
        for (var j = 0; j <= b.Length; j++)
        {
            previous[j] = j;
        }

        for (var i = 1; i <= a.Length; i++)
        {
            current[0] = i;
            for (var j = 1; j <= b.Length; j++)
            {
                current[j] = Math.Min(Math.Min(current[j - 1] + 1, previous[j] + 1), previous[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1));
            }

            (previous, current) = (current, previous);
        }

        return previous[b.Length];
    }

    /// <summary>Reads the settings of <paramref name="system"/>.</summary>
    public static ActorBlkSettings Create(ActorSystem system)
    {
        ArgumentNullException.ThrowIfNull(system);
        return Create(system.Settings.Config);
    }

    /// <summary>Reads the <c>actorblk</c> section of <paramref name="config"/> over the library defaults.</summary>
    /// <exception cref="ConfigurationException">A setting is malformed.</exception>
    /// <exception cref="DeviceOptionsException">A device entry is invalid.</exception>
    public static ActorBlkSettings Create(Config config)
    {
        ArgumentNullException.ThrowIfNull(config);
        var defaults = DefaultConfig();
        RefuseUnknownKeys(config, defaults);
        var c = config.WithFallback(defaults).GetConfig("actorblk");
        CheckSettingsReadElsewhere(c);
        _ = Serialization.RemoteSurface.MaxInflightIoBytes(config.WithFallback(defaults)); // read by the first remote I/O
        _ = Serialization.RemoteSurface.MaxRemoteData(config); // read by the guardian, sysfs and every software context
        _ = Serialization.InboundConnectionCap.Limits(config.WithFallback(defaults), long.MaxValue); // read by the remoting transport
        var source = c.GetString("topology.source", "system");
        if (source is not ("system" or "simulated"))
        {
            throw new ConfigurationException($"actorblk.topology.source: '{source}' is not 'system' or 'simulated'.");
        }

        var onlineText = c.GetString("topology.simulated.online", string.Empty);
        if (!CpuSet.TryParse(onlineText, out var online))
        {
            throw new ConfigurationException($"actorblk.topology.simulated.online: '{onlineText}' is not a CPU list.");
        }

        var clock = c.GetString("clock", "system") switch
        {
            "system" => ClockSource.System,
            "scheduler" => ClockSource.Scheduler,
            var other => throw new ConfigurationException($"actorblk.clock: '{other}' is not 'system' or 'scheduler'."),
        };

        var watch = Span(c, "topology.watch-interval", TimeSpan.FromSeconds(1), "1s, 500ms, 0s for off");

        if (source == "simulated")
        {
            CheckSimulatedMachine(Int(c, "topology.simulated.cpus", 8), Int(c, "topology.simulated.sockets", 1), Int(c, "topology.simulated.threads-per-core", 1), online, onlineText);
        }

        var devices = Entries(c, "devices").Select(DeviceConfig.Parse).ToList();
        var stacked = Entries(c, "stacked-devices").Select(StackedDeviceConfig.Parse).ToList();
        var duplicate = devices.Select(d => d.Name).Concat(stacked.Select(d => d.Name)).GroupBy(n => n).FirstOrDefault(g => g.Count() > 1);
        if (duplicate is not null)
        {
            throw new DeviceOptionsException(duplicate.Key, "name", "two devices in actorblk.devices and actorblk.stacked-devices share this name.");
        }

        var known = new HashSet<string>(devices.Select(d => d.Name), StringComparer.Ordinal);
        foreach (var entry in stacked)
        {
            // A member named name@host:port is a device of another node, opened when the table loads.
            if (entry.Table.MemberNames.FirstOrDefault(m => !known.Contains(m) && !m.Contains('@', StringComparison.Ordinal)) is { } unknown)
            {
                throw new DeviceOptionsException(entry.Name, "members", $"'{unknown}' is not a device listed before it.");
            }

            known.Add(entry.Name);
        }

        var mailboxSpin = Int(c, "mailbox.spin-microseconds", 20);
        var ringSpin = Int(c, "ring.spin-microseconds", 20);
        if (ringSpin < 0)
        {
            throw new ConfigurationException($"actorblk.ring.spin-microseconds: {ringSpin} is negative."); // accepted before (an outside audit)
        }

        var mailboxThroughput = Int(c, "mailbox.throughput", 64);
        var mailboxBusySpin = Int(c, "mailbox.busy-spin-microseconds", DefaultMailboxBusySpinMicroseconds);
        return new ActorBlkSettings(
            source,
            Int(c, "topology.simulated.cpus", 8),
            Int(c, "topology.simulated.sockets", 1),
            Int(c, "topology.simulated.threads-per-core", 1),
            online,
            clock,
            Span(c, "timeout-scan-interval", TimeSpan.FromSeconds(1)),
            Span(c, "drain-timeout", TimeSpan.FromSeconds(30)),
            TimeSpan.FromMicroseconds(ringSpin),
            devices)
        {
            Supervision = new SupervisionSettings(
                Int(c, "supervision.max-resets", SupervisionSettings.Default.MaxResets),
                Span(c, "supervision.reset-window", SupervisionSettings.Default.ResetWindow),
                Span(c, "supervision.reopen-backoff-min", SupervisionSettings.Default.ReopenBackoffMin),
                Span(c, "supervision.reopen-backoff-max", SupervisionSettings.Default.ReopenBackoffMax),
                Int(c, "supervision.reopen-attempts", SupervisionSettings.Default.ReopenAttempts))
            {
                MaxReopens = Int(c, "supervision.max-reopens", SupervisionSettings.Default.MaxReopens),
            }.Validated(),
            StackedDevices = stacked,
            SysfsRoot = c.GetString("topology.sysfs-root", CpuTopology.DefaultSysfsRoot),
            WatchInterval = watch >= TimeSpan.Zero
                ? watch
                : throw new ConfigurationException($"actorblk.topology.watch-interval: {watch} is negative."),
            MailboxDispatcher = c.GetString("mailbox.dispatcher", "per-cpu") switch
            {
                "per-cpu" => true,
                "default" => false,
                var other => throw new ConfigurationException($"actorblk.mailbox.dispatcher: '{other}' is not 'per-cpu' or 'default'."),
            },
            MailboxPin = c.GetBoolean("mailbox.pin", true),
            MailboxSpin = mailboxSpin >= 0
                ? TimeSpan.FromMicroseconds(mailboxSpin)
                : throw new ConfigurationException($"actorblk.mailbox.spin-microseconds: {mailboxSpin} is negative."),
            MailboxBusySpin = mailboxBusySpin >= 0
                ? TimeSpan.FromMicroseconds(mailboxBusySpin)
                : throw new ConfigurationException($"actorblk.mailbox.busy-spin-microseconds: {mailboxBusySpin} is negative."),
            MailboxThroughput = mailboxThroughput > 0
                ? mailboxThroughput
                : throw new ConfigurationException($"actorblk.mailbox.throughput: {mailboxThroughput} is not positive."),
        };
    }

    // Settings other parts read when the node starts (the registry, remoting, the NBD export, the
    // mailbox threads), checked here with the rest so that a value that does not parse is the
    // one-line configuration error naming its key: read raw there, "pin = banana" aborted serve
    // with an unhandled NotSupportedException and a bad registry duration failed the start with a
    // stack trace (an outside audit).
    private static readonly string[] BooleansReadElsewhere =
        ["mailbox.pin", "nbd.allow-insecure", "allow-insecure-remoting", "remote.pin-certificate", "cluster.registry.enabled"];

    private static readonly string[] DurationsReadElsewhere =
        ["cluster.registry.poll-interval", "cluster.registry.remote-check-interval", "cluster.registry.member-wait"];

    private static void CheckSettingsReadElsewhere(Config c)
    {
        foreach (var key in BooleansReadElsewhere)
        {
            try
            {
                _ = c.GetBoolean(key);
            }
            catch (Exception ex) when (ex is NotSupportedException or FormatException)
            {
                throw new ConfigurationException($"actorblk.{key}: '{c.GetString(key)}' is not on or off.");
            }
        }

        CheckBlockingDriverDispatcher(c);
        if (c.GetString("cluster.registry.tls-ca", string.Empty) is { Length: > 0 } ca)
        {
            CheckTlsCa(ca);
        }

        foreach (var key in DurationsReadElsewhere)
        {
            if (Span(c, key, TimeSpan.Zero) is var span && span < TimeSpan.Zero && span != Timeout.InfiniteTimeSpan)
            {
                throw new ConfigurationException($"actorblk.{key}: '{c.GetString(key)}' is negative.");
            }
        }
    }

    // Akka builds a dispatcher when its first actor is made: a blocking-driver-dispatcher that
    // Akka could not build failed the first blocking device's creation ("Device m0 failed while it
    // was being registered; see the log") and serve's start with two stack traces (an outside
    // audit). The type and the values every dispatcher reads are checked here, as Akka reads them.
    private static readonly string[] DispatcherTypes = ["PinnedDispatcher", "Dispatcher", "ForkJoinDispatcher", "TaskDispatcher", "SynchronizedDispatcher"];

    private static void CheckBlockingDriverDispatcher(Config c)
    {
        const string section = "blocking-driver-dispatcher";
        var type = c.GetString($"{section}.type", "PinnedDispatcher") ?? throw NullValue($"actorblk.{section}.type", "PinnedDispatcher");
        if (Hardware.ControlCharacters.Refusal(type) is { } refusal)
        {
            throw new ConfigurationException($"actorblk.{section}.type: {refusal}");
        }

        // Akka resolves any other name with Type.GetType from its own assembly (so an unqualified
        // Akka.Dispatch name resolves there, not here) and instantiates it as a configurator: a
        // name that resolves to another type (System.String) failed the first blocking device as before.
        var resolved = DispatcherTypes.Contains(type, StringComparer.Ordinal)
            ? null
            : Type.GetType(type, throwOnError: false) ?? typeof(Akka.Dispatch.MessageDispatcherConfigurator).Assembly.GetType(type, throwOnError: false);
        if (!DispatcherTypes.Contains(type, StringComparer.Ordinal) && (resolved is null || !typeof(Akka.Dispatch.MessageDispatcherConfigurator).IsAssignableFrom(resolved)))
        {
            throw new ConfigurationException(
                $"actorblk.{section}.type: '{type}' is not a dispatcher type ({string.Join(", ", DispatcherTypes)}, or an assembly-qualified type name).");
        }

        _ = Int(c, $"{section}.throughput", 1);
        _ = Span(c, $"{section}.throughput-deadline-time", TimeSpan.Zero);
    }

    // The CA of remote opens is read at the first open of a TLS owner's device: a file that is
    // missing, unreadable or holds no PEM certificate is refused when the node starts instead.
    private static void CheckTlsCa(string path)
    {
        const string key = "actorblk.cluster.registry.tls-ca";
        if (!File.Exists(path))
        {
            throw new ConfigurationException($"{key}: '{path}' is {(Directory.Exists(path) ? "a directory, not a file" : "not a file")} (a PEM file of the CA that signed other nodes' NBD certificates).");
        }

        var certificates = new System.Security.Cryptography.X509Certificates.X509Certificate2Collection();
        try
        {
            certificates.ImportFromPemFile(path);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException or System.Security.Cryptography.CryptographicException)
        {
            throw new ConfigurationException($"{key}: '{path}' cannot be read as PEM certificates: {ActorBlk.Hardware.FileProblems.Describe(path, ex)}");
        }

        if (certificates.Count == 0)
        {
            throw new ConfigurationException($"{key}: '{path}' holds no PEM certificate (-----BEGIN CERTIFICATE-----).");
        }

        foreach (var certificate in certificates)
        {
            certificate.Dispose();
        }
    }

    // The simulated machine is built when the node starts: refused there, a bad count failed the
    // start with a stack trace naming a C# parameter, and an online list outside the machine was
    // accepted ("5" on 4 CPUs left no CPU online, and the first I/O hung: an outside audit).
    private static void CheckSimulatedMachine(int cpus, int sockets, int threadsPerCore, CpuSet online, string onlineText)
    {
        try
        {
            _ = CpuTopology.Simulated(cpus, sockets, threadsPerCore);
        }
        catch (ArgumentException ex)
        {
            var key = ex.ParamName switch { "sockets" => "sockets", "threadsPerCore" => "threads-per-core", _ => "cpus" };
            throw new ConfigurationException($"actorblk.topology.simulated.{key}: {ex.Message.Split(" (Parameter", 2)[0].Split('\n')[0]}");
        }

        if (!online.IsEmpty && online.Last >= cpus)
        {
            throw new ConfigurationException($"actorblk.topology.simulated.online: '{onlineText}' names CPU {online.Last}, but the simulated machine has CPUs 0-{cpus - 1} (cpus = {cpus}).");
        }
    }

    // A duration of the actorblk section (actorblk.nbd's too), its key named when it does not
    // parse: a value that did not parse failed serve with "The input string 'banana' was not in a
    // correct format." and no key (an outside audit).
    internal static TimeSpan Span(Config c, string key, TimeSpan fallback, string examples = "e.g. 500ms, 30s")
    {
        if (IsNull(c, key))
        {
            throw NullValue($"actorblk.{key}", fallback.TotalMilliseconds % 1000 == 0
                ? FormattableString.Invariant($"{fallback.TotalSeconds:0}s")
                : FormattableString.Invariant($"{fallback.TotalMilliseconds:0}ms"));
        }

        try
        {
            return c.GetTimeSpan(key, fallback);
        }
        catch (Exception ex) when (ex is FormatException or OverflowException)
        {
            throw new ConfigurationException($"actorblk.{key}: {NotADuration(c.GetString(key), examples)}");
        }
    }

    // True when KEY holds HOCON's null (or "null"), which Akka reads as a null string.
    private static bool IsNull(Config c, string key) => c.HasPath(key) && c.GetValue(key) is { } value && value.IsString() && value.GetString() is null;

    /// <summary>
    /// The text of <paramref name="key"/> (a full path, one of Akka's keys that ActorBlk reads), or
    /// null when it is absent or an optional substitution with nothing to take. HOCON's null, a
    /// list or a section is refused naming the key and <paramref name="fallback"/> (what removing
    /// the key gives), as every <c>actorblk</c> key's is; so is a control character, unless
    /// <paramref name="anyCharacter"/> (a file path, a password). Read raw, null was taken for the
    /// key's absence: <c>hostname = null</c> bound every interface, as <c>""</c> does (an audit).
    /// </summary>
    /// <exception cref="ConfigurationException">The value is null, a list, a section, or holds a control character.</exception>
    public static string? AkkaText(Config config, string key, string fallback, bool anyCharacter = false)
    {
        ArgumentNullException.ThrowIfNull(config);
        ArgumentNullException.ThrowIfNull(key);
        ArgumentNullException.ThrowIfNull(fallback);
        var value = config.HasPath(key) ? config.GetValue(key) : null;
        if (value is null || DeviceConfig.IsUnresolved(value))
        {
            return null;
        }

        if (!value.IsString() || value.Values.Any(v => v is Akka.Configuration.Hocon.HoconArray))
        {
            throw new ConfigurationException($"{key}: a value is expected, not a {(value.IsObject() ? "section { ... }" : "list [ ... ]")}.");
        }

        var text = value.GetString() ?? throw NullValue(key, fallback);
        return !anyCharacter && Hardware.ControlCharacters.Refusal(text) is { } refusal
            ? throw new ConfigurationException($"{key}: {refusal}")
            : text;
    }

    /// <summary>
    /// The refusal of HOCON's <c>null</c> for <paramref name="key"/> (its full name), naming the
    /// default that removing the key gives: no <c>actorblk</c> setting takes null as a value.
    /// </summary>
    internal static ConfigurationException NullValue(string key, string fallback) =>
        new($"{key}: null is not a value here; remove the key for the default ({(fallback.Length == 0 ? "none" : fallback)}).");

    // Akka refuses a signed duration before any range check, so "-1s" read "is not a duration"
    // (an outside audit); the sign is named instead.
    private static string NotADuration(string text, string examples) =>
        text.TrimStart().StartsWith('-')
            ? $"'{text}' is negative; a duration here is 0 or more ({examples})."
            : $"'{text}' is not a duration ({examples}).";

    internal static int Int(Config c, string key, int fallback)
    {
        if (IsNull(c, key))
        {
            throw NullValue($"actorblk.{key}", fallback.ToString(System.Globalization.CultureInfo.InvariantCulture));
        }

        try
        {
            return c.GetInt(key, fallback);
        }
        catch (Exception ex) when (ex is FormatException or OverflowException)
        {
            throw new ConfigurationException($"actorblk.{key}: '{c.GetString(key)}' is not a whole number.");
        }
    }

    /// <summary>
    /// Mailbox dispatch runs each CPU's software-context actor and the driver actors of the hardware
    /// queues homed on it on one dedicated thread per CPU (<c>mailbox.dispatcher = per-cpu</c>, the
    /// default); false leaves them on Akka's default dispatcher (<c>default</c>).
    /// </summary>
    public bool MailboxDispatcher { get; init; } = true;

    /// <summary>
    /// Pin each per-CPU mailbox thread to its CPU when the topology is read from the system
    /// (<c>mailbox.pin</c>, on by default); off lets the scheduler move it, which a machine shared
    /// with other busy processes may prefer.
    /// </summary>
    public bool MailboxPin { get; init; } = true;

    /// <summary>How long an idle per-CPU mailbox thread spins before it parks (<c>mailbox.spin-microseconds</c>).</summary>
    public TimeSpan MailboxSpin { get; init; } = TimeSpan.FromMicroseconds(20);

    /// <summary>
    /// How long, at most, an idle per-CPU mailbox thread keeps spinning while I/O submitted on its
    /// CPU is outstanding (<c>mailbox.busy-spin-microseconds</c>): its completion, or the next bio
    /// its submitter sends from another thread, is expected soon, and a parked thread would pay a
    /// wake-up for it. At most <see cref="MailboxSpin"/> turns it off.
    /// </summary>
    public TimeSpan MailboxBusySpin { get; init; } = TimeSpan.FromMicroseconds(DefaultMailboxBusySpinMicroseconds);

    /// <summary>Messages an actor on a per-CPU mailbox thread handles per turn (<c>mailbox.throughput</c>).</summary>
    public int MailboxThroughput { get; init; } = 64;

    /// <summary>How device drivers are supervised.</summary>
    public SupervisionSettings Supervision { get; init; } = SupervisionSettings.Default;

    /// <summary>
    /// Stacked devices to create at start, after <see cref="Devices"/> and in order
    /// (<c>actorblk.stacked-devices</c>): each may name devices of the list or earlier stacked ones.
    /// </summary>
    public IReadOnlyList<StackedDeviceOptions> StackedDevices { get; init; } = [];

    /// <summary>The sysfs CPU directory a <c>system</c> topology is read from (<c>topology.sysfs-root</c>).</summary>
    public string SysfsRoot { get; init; } = CpuTopology.DefaultSysfsRoot;

    /// <summary>
    /// How often the topology actor reads <c>online</c> under <see cref="SysfsRoot"/> to notice CPU
    /// hotplug on the host (<c>topology.watch-interval</c>); zero turns the watch off. Only a
    /// <c>system</c> topology read from sysfs is watched.
    /// </summary>
    public TimeSpan WatchInterval { get; init; } = TimeSpan.FromSeconds(1);

    /// <summary>The file the topology actor watches for host CPU hotplug, or null when nothing is watched.</summary>
    public string? WatchedOnlineFile =>
        TopologySource == "system" && WatchInterval > TimeSpan.Zero && File.Exists(Path.Combine(SysfsRoot, "online"))
            ? Path.Combine(SysfsRoot, "online")
            : null;

    /// <summary>The CPU topology these settings describe.</summary>
    public CpuTopology BuildTopology()
    {
        if (TopologySource == "system" && Directory.Exists(SysfsRoot))
        {
            return CpuTopology.FromSysfs(SysfsRoot);
        }

        var cpus = TopologySource == "system" ? Environment.ProcessorCount : SimulatedCpus;
        var all = CpuTopology.Simulated(cpus, TopologySource == "system" ? 1 : SimulatedSockets, TopologySource == "system" ? 1 : SimulatedThreadsPerCore);
        return SimulatedOnline.IsEmpty ? all : CpuTopology.Simulated(cpus, SimulatedSockets, SimulatedThreadsPerCore, online: SimulatedOnline);
    }
}

/// <summary>
/// The supervision of device drivers (<c>actorblk.supervision</c>): how many resets a device may
/// need within a window before it is given up, and how a gone device is reopened.
/// </summary>
/// <param name="MaxResets">Resets (restarts of the driver actors, and of the device's other actors after a driver bug) allowed within <paramref name="ResetWindow"/>; one more stops the device.</param>
/// <param name="ResetWindow">The window of <paramref name="MaxResets"/>.</param>
/// <param name="ReopenBackoffMin">Delay before the first reopen attempt of a gone device; it doubles after each failure.</param>
/// <param name="ReopenBackoffMax">The longest delay between reopen attempts.</param>
/// <param name="ReopenAttempts">Reopen attempts before the device is given up (offline).</param>
public sealed record SupervisionSettings(int MaxResets, TimeSpan ResetWindow, TimeSpan ReopenBackoffMin, TimeSpan ReopenBackoffMax, int ReopenAttempts)
{
    /// <summary>The library defaults: 10 resets a minute; reopen after 100 ms, doubling up to 10 s, 5 attempts.</summary>
    public static readonly SupervisionSettings Default = new(10, TimeSpan.FromMinutes(1), TimeSpan.FromMilliseconds(100), TimeSpan.FromSeconds(10), 5);

    /// <summary>
    /// Times a device may be gone and reopened within <see cref="ResetWindow"/>; the next time it is
    /// gone it is given up (offline) instead of reopened, so a device that keeps failing does not
    /// cycle between resets and reopens for ever. 3 by default.
    /// </summary>
    public int MaxReopens { get; init; } = 3;

    /// <summary>The delay before reopen attempt <paramref name="attempt"/> (0-based): min * 2^attempt, at most max.</summary>
    public TimeSpan ReopenDelay(int attempt) =>
        TimeSpan.FromTicks(Math.Min(ReopenBackoffMax.Ticks, ReopenBackoffMin.Ticks * (1L << Math.Min(attempt, 30))));

    /// <summary>Throws when a setting is out of range.</summary>
    /// <exception cref="ConfigurationException">A setting is out of range.</exception>
    public SupervisionSettings Validated()
    {
        // Each key named on its own (the error was the whole record's dump: an outside audit).
        Check(MaxResets >= 0, "max-resets", $"{MaxResets} is negative");
        Check(ResetWindow > TimeSpan.Zero, "reset-window", $"{ResetWindow.TotalMilliseconds} ms is not positive");
        Check(ReopenBackoffMin > TimeSpan.Zero, "reopen-backoff-min", $"{ReopenBackoffMin.TotalMilliseconds} ms is not positive");
        Check(ReopenBackoffMax >= ReopenBackoffMin, "reopen-backoff-max", $"{ReopenBackoffMax.TotalMilliseconds} ms is below reopen-backoff-min ({ReopenBackoffMin.TotalMilliseconds} ms)");
        Check(ReopenAttempts >= 0, "reopen-attempts", $"{ReopenAttempts} is negative");
        Check(MaxReopens >= 0, "max-reopens", $"{MaxReopens} is negative");
        return this;

        static void Check(bool ok, string key, string why)
        {
            if (!ok)
            {
                throw new ConfigurationException(FormattableString.Invariant($"actorblk.supervision.{key}: {why}."));
            }
        }
    }
}
