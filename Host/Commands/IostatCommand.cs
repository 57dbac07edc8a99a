using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using ActorBlk.Actors;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Sysfs;
using ActorBlk.Host.Iostat;

namespace ActorBlk.Host.Commands;

/// <summary>
/// <c>actorblk iostat</c>: sysstat's <c>iostat</c> (basic or <c>-x</c>) over the
/// <c>block/&lt;dev&gt;/stat</c> files of a running node, read through its sysfs actor.
/// </summary>
internal static class IostatCommand
{
    private const string Description = """
        A running node's CPU use (avg-cpu, from its machine's /proc/stat, read as its stat attribute)
        and device statistics (from successive reads of block/<dev>/stat), computed as sysstat's
        iostat computes them. Options as sysstat's, alone or grouped (-dxz): -c the CPU report alone,
        -d the device report alone (both without either); -x the extended columns (r/s rkB/s rrqm/s
        %rrqm r_await rareq-sz, the same for w and d, f/s f_await, aqu-sz, %util); -s the short
        columns; -k (the default) or -m for kB or MB; -h (--human --pretty) values with their unit and
        the device name last; -t each report's time (S_TIME_FORMAT=ISO for ISO 8601); -z leave out
        devices with no I/O over the interval; -o JSON sysstat's JSON document; --dec=0|1|2 decimal
        places; -N is accepted (a device's name is its only name); -p [ALL|DEVICE,...] as a disk with
        no partitions (without a list, or with ALL, the devices in the order they registered on the
        node, as sysstat's come in /proc/diskstats order; else in name order). The first report covers the time since the node's block layer started (and
        for the CPU since its machine booted: sysstat's since boot); -y leaves it out when an INTERVAL
        is given. Without INTERVAL one report since the start; without COUNT reports until
        interrupted. Without DEVICE every device that did I/O; DEVICE may be NAME, /dev/NAME or ALL,
        and a named device the node does not have is left out until it exists. --node takes HOST:PORT
        as iostat users would give it.
        """;

    /// <summary>Exit code when the node cannot be read.</summary>
    public const int Failed = 1;

    /// <summary>The <c>iostat</c> command; reports go to <paramref name="output"/>.</summary>
    public static Command Create(TextWriter output)
    {
        var node = new NodeOptions();
        var operands = new Argument<string[]>("operands") { HelpName = "[-c] [-d] [-h] [-k|-m] [-N] [-s] [-t] [-x] [-y] [-z] [-o JSON] [--dec=N] [-p [ALL|DEVICE,...]] DEVICE... INTERVAL COUNT", Arity = ArgumentArity.ZeroOrMore, Description = "sysstat's options, the devices (all when none), then the interval in seconds and the number of reports" };
        var command = new Command("iostat", Description) { operands };
        node.AddTo(command);

        // sysstat's flags group (-dxz) and -o takes a word: no option but the node's is declared, so
        // every other token reaches the operands, in order, and is parsed as iostat parses its argv.
        command.SetAction((parse, cancel) =>
        {
            var options = IostatOptions.Parse(parse.GetValue(operands) ?? []);
            return RunAsync(node.AddressFrom(parse), node.ConfigFrom(parse), options, output, cancel);
        });
        return command;
    }

    /// <summary>Runs the reports; failures and notes go to <paramref name="error"/> (stderr when not given).</summary>
    public static async Task<int> RunAsync(string address, Akka.Configuration.Config? nodeConfig, IostatOptions options, TextWriter output, CancellationToken cancel = default, TextWriter? error = null)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(output);
        error ??= Console.Error;
        // SIGINT and SIGTERM end the reports as sysstat's handler does: no report is written after
        // it, a JSON document is closed, and the exit code is 0. The handlers stay until the
        // client is closed: `timeout` signals the process and then its group, so a second signal
        // may come while the reports end.
        using var interrupted = CancellationTokenSource.CreateLinkedTokenSource(cancel);
        void OnSignal(PosixSignalContext context)
        {
            context.Cancel = true;
            try
            {
                interrupted.Cancel();
            }
            catch (ObjectDisposedException)
            {
                // Signalled as the command returns.
            }
        }

        using var onInt = PosixSignalRegistration.Create(PosixSignal.SIGINT, OnSignal);
        using var onTerm = PosixSignalRegistration.Create(PosixSignal.SIGTERM, OnSignal);
        cancel = interrupted.Token;

        NodeClient connected;
        try
        {
            // TLS settings from the node's configuration, as `actorblk sysfs` connects (README, "Security").
            connected = NodeClient.Connect(address, nodeConfig);
        }
        catch (Akka.Configuration.ConfigurationException ex)
        {
            await error.WriteLineAsync($"actorblk: {ex.Message}").ConfigureAwait(false);
            return Failed;
        }

        await using var client = connected;
        var writer = new IostatWriter(output, options);

        var devices = options.Devices.ToList();
        try
        {
            // The reports keep a fixed period from the first sample, as sysstat's alarm() does:
            // the time a sample takes (a round trip per device) is not added to every interval.
            // A sample that overran a whole period skips the ticks it missed (as alarm() signals
            // coalesce) rather than firing reports back to back over millisecond windows.
            // The clock starts once the first sample is in: the first round trip also connects to
            // the node, and must not shorten the first interval.
            var period = TimeSpan.FromSeconds(options.Interval);
            await writer.BeginAsync(NodeNameOf(address), await CpusOfAsync(client, cancel).ConfigureAwait(false), DateTimeOffset.Now).ConfigureAwait(false);
            var previous = await SampleAsync(client, devices, options, cancel).ConfigureAwait(false);
            if (options.RegistrationOrder && options.NamedFirst is { } named)
            {
                previous = previous.WithNamedFirst(named);
            }
            if (options.CpuReport && previous.Cpu is null)
            {
                // A node whose machine has no /proc/stat (not Linux): the CPU report cannot be
                // made. Asked for alone (-c), that is a failure; with the device report, it is
                // left out, and said so once.
                if (!options.DiskReport)
                {
                    throw new IostatException($"{NoCpu}; use -d for the device report.");
                }

                await error.WriteLineAsync($"actorblk: {NoCpu}; the avg-cpu report is left out.").ConfigureAwait(false);
                options = options with { CpuReport = false };
            }

            var start = Stopwatch.GetTimestamp();
            long done = 0;
            if (options.SinceStart && await UptimeAsync(client, cancel).ConfigureAwait(false) is { } uptime)
            {
                // sysstat's first report, since boot: every device counter from 0 at the node's
                // start, and the CPU's from 0 at its machine's boot (its counters count from there).
                var zero = new Sampling(previous.At - uptime, new Dictionary<string, (DiskStatSample, TimeSpan)>(), default(CpuStatSample));
                await writer.ReportAsync(DateTimeOffset.Now, Rows(zero, previous, options), Cpu(zero, previous)).ConfigureAwait(false);
                done = 1;
            }

            long tick = 0;
            for (var report = done; options.Count is null || report < options.Count; report++)
            {
                var elapsed = Stopwatch.GetElapsedTime(start);
                tick = Math.Max(tick + 1, (long)(elapsed / period) + 1);
                try
                {
                    await Task.Delay(period * tick - elapsed, cancel).ConfigureAwait(false);
                }
                catch (OperationCanceledException) when (cancel.IsCancellationRequested)
                {
                    // Interrupted as sysstat's SIGINT: the JSON document is still closed properly.
                    break;
                }

                var now = DateTimeOffset.Now;
                var current = await SampleAsync(client, devices, options, cancel).ConfigureAwait(false);
                if (options.RegistrationOrder)
                {
                    current = current.InOrderOf(previous);
                }

                if (options.CpuReport && current.Cpu is null)
                {
                    throw new IostatException($"the node did not answer its CPU use ({BlockLayer.CpuStatAttribute}).");
                }

                await writer.ReportAsync(now, Rows(previous, current, options), Cpu(previous, current)).ConfigureAwait(false);
                previous = current;
            }

            await writer.EndAsync().ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (cancel.IsCancellationRequested)
        {
            // Interrupted while a sample was taken (or before the first): that report is not written.
            await writer.EndAsync().ConfigureAwait(false);
        }
        catch (NodeUnreachableException ex)
        {
            await writer.EndAsync().ConfigureAwait(false);
            await error.WriteLineAsync($"actorblk: {ex.Message}").ConfigureAwait(false);
            return Failed;
        }
        catch (IostatException ex)
        {
            await writer.EndAsync().ConfigureAwait(false);
            await error.WriteLineAsync($"actorblk: {ex.Message}").ConfigureAwait(false);
            return Failed;
        }

        return 0;
    }

    private const string NoCpu = $"the node does not publish its CPU use (no {BlockLayer.CpuStatAttribute} attribute: its machine has no /proc/stat, or the node predates the attribute)";

    // The node, as iostat's banner names its host: HOST:PORT of its address.
    private static string NodeNameOf(string address)
    {
        var at = address.LastIndexOf('@');
        return at >= 0 ? address[(at + 1)..].TrimEnd('/') : address;
    }

    // The node's uptime (its block layer's), as sysstat reads /proc/uptime; null from a node that
    // does not publish it (then there is no report since start).
    private static async Task<TimeSpan?> UptimeAsync(NodeClient client, CancellationToken cancel)
    {
        var reply = await client.AskAsync(new Sysfs.Read(BlockLayer.UptimeAttribute)).WaitAsync(cancel).ConfigureAwait(false);
        return reply is Sysfs.Value { Text: var text } && double.TryParse(text.Trim(), NumberStyles.Float, CultureInfo.InvariantCulture, out var seconds) && seconds >= 0
            ? TimeSpan.FromSeconds(seconds)
            : null;
    }

    // The node's CPUs, as sysstat counts them for "(N CPU)": the present ones of its topology.
    private static async Task<int> CpusOfAsync(NodeClient client, CancellationToken cancel)
    {
        if (await client.AskAsync(new Sysfs.Read(CpuAttributes.Root + "present")).WaitAsync(cancel).ConfigureAwait(false) is not Sysfs.Value { Text: var list })
        {
            return 0;
        }

        var count = 0;
        foreach (var range in list.Trim().Split(',', StringSplitOptions.RemoveEmptyEntries))
        {
            var dash = range.IndexOf('-', StringComparison.Ordinal);
            if (dash < 0)
            {
                count++;
            }
            else if (int.TryParse(range.AsSpan(0, dash), NumberStyles.None, CultureInfo.InvariantCulture, out var first) &&
                     int.TryParse(range.AsSpan(dash + 1), NumberStyles.None, CultureInfo.InvariantCulture, out var last) && last >= first)
            {
                count += last - first + 1;
            }
            else
            {
                throw new IostatException($"the node's {CpuAttributes.Root}present is not a CPU list: '{list.Trim()}'.");
            }
        }

        return count;
    }

    /// <summary>
    /// The rows between two samplings, as sysstat's <c>write_stats</c> computes them. A device
    /// not in <paramref name="before"/> (created since, named and absent until now, or not read
    /// in it: on a node, unregistered meanwhile; sysstat would keep its last record) counts from
    /// a zero record at the time of <paramref name="before"/>: sysstat's <c>add_list_device</c>
    /// zeroes both records of a device it sees for the first time (<c>memset(d->dev_stats[i], 0,
    /// ...)</c>), so its first interval covers everything it did since it appeared. A device whose
    /// counters went backwards was destroyed and created again under its name between the two:
    /// it counts from a zero record too, as sysstat's "Try to detect if device has been removed
    /// then inserted again" test sets <c>ioj = &amp;iozero</c>. That test looks at the I/O and
    /// sector counters only (they wrap on 32-bit kernels); ActorBlk's counters are 64-bit and
    /// never go back on a live device, so any of them going back is taken as a new device. A
    /// device gone since <paramref name="before"/> is not reported (sysstat skips a device whose
    /// <c>exist</c> is false). sysstat leaves out unused devices unless devices are named (or
    /// ALL), and with <c>-z</c> the idle ones.
    /// </summary>
    internal static List<IostatRow> Rows(Sampling before, Sampling after, IostatOptions options)
    {
        ArgumentNullException.ThrowIfNull(before);
        ArgumentNullException.ThrowIfNull(after);
        ArgumentNullException.ThrowIfNull(options);
        var rows = new List<IostatRow>();
        foreach (var (device, sample) in after.Devices)
        {
            var known = before.Devices.TryGetValue(device, out var earlier);
            var from = known && !IostatReport.WentBack(earlier.Stat, sample.Stat)
                ? earlier
                : (Stat: default(DiskStatSample), At: known ? earlier.At : before.At);
            var row = IostatReport.Compute(device, from.Stat, sample.Stat, Math.Max(1e-3, (sample.At - from.At).TotalMilliseconds));
            if ((options.Unfiltered || !IostatReport.NeverUsed(sample.Stat)) && (!options.OmitIdle || !row.Idle))
            {
                rows.Add(row);
            }
        }

        return rows;
    }

    /// <summary>The CPU report between two samplings; null when either has no CPU reading.</summary>
    internal static IostatCpu? Cpu(Sampling before, Sampling after)
    {
        ArgumentNullException.ThrowIfNull(before);
        ArgumentNullException.ThrowIfNull(after);
        return before.Cpu is { } b && after.Cpu is { } a ? IostatReport.ComputeCpu(b, a) : null;
    }

    // The CPU times of the node's machine (its stat attribute, the cpu line of /proc/stat), as
    // sysstat reads /proc/stat each sample; null from a node that does not publish them.
    private static async Task<CpuStatSample?> CpuStatAsync(NodeClient client, CancellationToken cancel)
    {
        switch (await client.AskAsync(new Sysfs.Read(BlockLayer.CpuStatAttribute)).WaitAsync(cancel).ConfigureAwait(false))
        {
            case Sysfs.Value value:
                try
                {
                    return CpuStatSample.Parse(value.Text);
                }
                catch (FormatException ex)
                {
                    throw new IostatException($"the node's {BlockLayer.CpuStatAttribute}: {ex.Message}");
                }

            case Sysfs.Failed:
                return null;
            case var reply:
                throw new IostatException($"unexpected answer {reply}");
        }
    }

    // One reading of the CPU times (for the CPU report) and of every device's stat (for the device
    // report: the named ones, else all the node lists), each device stamped with the midpoint of
    // its round trip; the sampling is stamped with its start. A node with no device (its block/
    // listing is ENOENT) and a named device the node does not have (ENOENT) read as no device: the
    // report is empty, or lacks that device, and the reports go on, as sysstat's do (a named
    // device that does not exist is skipped until it does).
    private static async Task<Sampling> SampleAsync(NodeClient client, List<string> devices, IostatOptions options, CancellationToken cancel)
    {
        var started = Stopwatch.GetElapsedTime(0);
        var cpu = options.CpuReport ? await CpuStatAsync(client, cancel).ConfigureAwait(false) : null;
        var result = new OrderedDictionary<string, (DiskStatSample, TimeSpan)>(StringComparer.Ordinal);
        if (!options.DiskReport)
        {
            return new Sampling(started, result, cpu);
        }

        var names = devices;
        if (names.Count == 0 && options.RegistrationOrder)
        {
            // sysstat's -p (ALL) reads /proc/diskstats, whose order is the kernel's registration
            // order: the guardian lists the devices in theirs.
            // The devices named (-p nullb1,ALL) come first, as sysstat's list holds them from the
            // command line before it reads /proc/diskstats; they came in registration order too.
            var list = await client.AskGuardianAsync<BlockLayer.DeviceList>(BlockLayer.ListDevices.Instance).WaitAsync(cancel).ConfigureAwait(false);
            var first = options.NamedFirst ?? [];
            names = [.. first, .. list.Devices.Select(d => d.Name).Where(n => !first.Contains(n, StringComparer.Ordinal))];
        }
        else if (names.Count == 0)
        {
            switch (await client.AskAsync(new Sysfs.List("block/")).WaitAsync(cancel).ConfigureAwait(false))
            {
                case Sysfs.Listing listing:
                    names = [.. listing.Paths.Where(p => p.EndsWith("/stat", StringComparison.Ordinal) && p.Count(c => c == '/') == 2).Select(p => p.Split('/')[1])];
                    break;
                case Sysfs.Failed { Errno: "E2BIG" }:
                    // More attribute paths than one remoting message holds (about 130 devices and
                    // up): the guardian's device list, a few dozen bytes a device, names them.
                    var list = await client.AskGuardianAsync<BlockLayer.DeviceList>(BlockLayer.ListDevices.Instance).WaitAsync(cancel).ConfigureAwait(false);
                    names = [.. list.Devices.Select(d => d.Name)];
                    break;
                case Sysfs.Failed { Errno: "ENOENT" }:
                    // Nothing under block/: the node has no device (yet, or any more).
                    names = [];
                    break;
                case Sysfs.Failed failed:
                    throw new IostatException($"the node did not list its devices: {failed.Errno} {failed.Message}");
                default:
                    throw new IostatException("the node did not list its devices.");
            }
        }

        // Otherwise in name order, as sysstat's add_list_device inserts a device it has not seen
        // (strcmp order), whether named or read from /sys/block.
        foreach (var name in options.RegistrationOrder ? names : (IEnumerable<string>)names.Order(StringComparer.Ordinal))
        {
            var sent = Stopwatch.GetElapsedTime(0);
            var reply = await client.AskAsync(new Sysfs.Read($"block/{name}/stat")).WaitAsync(cancel).ConfigureAwait(false);
            var at = (sent + Stopwatch.GetElapsedTime(0)) / 2;
            switch (reply)
            {
                case Sysfs.Value value:
                    try
                    {
                        result[name] = (DiskStatSample.Parse(value.Text), at);
                    }
                    catch (FormatException ex)
                    {
                        // A failure of the node's answer (1), not a configuration error (2).
                        throw new IostatException($"the node's block/{name}/stat: {ex.Message}");
                    }

                    break;
                case Sysfs.Failed failed when devices.Count == 0 || failed.Errno == "ENOENT":
                    // Unregistered between the listing and the read (hotplug), or named and not
                    // there (yet): left out of this report.
                    break;
                case Sysfs.Failed failed:
                    throw new IostatException($"{name}: {failed.Message} ({failed.Errno})");
                default:
                    throw new IostatException($"unexpected answer {reply}");
            }
        }

        return new Sampling(started, result, cpu);
    }

    /// <summary>One sampling: when it started, each device's reading with the time it was taken (the midpoint of its round trip), and the CPU times.</summary>
    /// <param name="At">When the sampling started, on <see cref="Stopwatch"/>'s clock.</param>
    /// <param name="Devices">The devices read, by name.</param>
    /// <param name="Cpu">The cpu line of the node machine's <c>/proc/stat</c>; null when not read (no CPU report) or not published.</param>
    internal sealed record Sampling(TimeSpan At, IReadOnlyDictionary<string, (DiskStatSample Stat, TimeSpan At)> Devices, CpuStatSample? Cpu = null)
    {
        /// <summary>
        /// The devices a running iostat has seen, in its order, those gone since included (set by
        /// <see cref="InOrderOf"/>); null for a sampling not ordered so (its own devices' order).
        /// </summary>
        public IReadOnlyList<string>? Seen { get; init; }

        /// <summary>
        /// This sampling with its devices in the order of those <paramref name="previous"/> had
        /// seen (<see cref="Seen"/>), those not seen before after them in this one's order:
        /// sysstat keeps its device list for the whole run and adds a device it has not seen at the
        /// end (under <c>-p</c>, where it does not sort them). A device gone for a while keeps its
        /// place when it comes back (destroyed and created again, say), as sysstat's list entry,
        /// only marked nonexistent meanwhile, is found by its name; it came last (only the previous
        /// sampling's devices were kept).
        /// </summary>
        public Sampling InOrderOf(Sampling previous)
        {
            ArgumentNullException.ThrowIfNull(previous);
            var seen = new List<string>(previous.Seen ?? previous.Devices.Keys);
            var known = new HashSet<string>(seen, StringComparer.Ordinal);
            foreach (var name in Devices.Keys)
            {
                if (known.Add(name))
                {
                    seen.Add(name);
                }
            }

            var ordered = new OrderedDictionary<string, (DiskStatSample Stat, TimeSpan At)>(StringComparer.Ordinal);
            foreach (var name in seen)
            {
                if (Devices.TryGetValue(name, out var reading))
                {
                    ordered.Add(name, reading);
                }
            }

            return this with { Devices = ordered, Seen = seen };
        }

        /// <summary>
        /// This sampling having seen <paramref name="named"/> first, those it has not read
        /// included: sysstat's list holds the devices named from the command line on, so one
        /// that appears later takes its place among them, not the last.
        /// </summary>
        public Sampling WithNamedFirst(IReadOnlyList<string> named)
        {
            ArgumentNullException.ThrowIfNull(named);
            return this with { Seen = [.. named, .. (Seen ?? Devices.Keys).Where(n => !named.Contains(n, StringComparer.Ordinal))] };
        }
    }
}

/// <summary>The node could not be read as iostat needs.</summary>
internal sealed class IostatException(string message) : Exception(message);
