using System.Globalization;
using ActorBlk.Host.Commands;

namespace ActorBlk.Host.Iostat;

/// <summary>The unit of <c>actorblk iostat</c>'s throughput columns: sysstat's <c>-k</c> (the default) or <c>-m</c>.</summary>
internal enum IostatUnit
{
    /// <summary>kB (<c>-k</c>): sectors / 2.</summary>
    Kilobytes,

    /// <summary>MB (<c>-m</c>): sectors / 2048.</summary>
    Megabytes,
}

/// <summary>
/// What <c>actorblk iostat</c> was asked for, parsed from its operands as sysstat's iostat parses
/// its command line (iostat.c <c>main</c>): flags alone or grouped (<c>-dxz</c>), <c>-o JSON</c>,
/// <c>--dec=N</c>, <c>-p [ALL|DEVICE,...]</c>, <c>--human</c>, <c>--pretty</c>, <c>--compact</c>,
/// then device names (<c>ALL</c>, <c>/dev/NAME</c>), then INTERVAL and COUNT.
/// </summary>
/// <param name="Extended"><c>-x</c>: the extended columns.</param>
/// <param name="Unit"><c>-k</c> or <c>-m</c>.</param>
/// <param name="Timestamp"><c>-t</c>: each report starts with its time.</param>
/// <param name="OmitIdle"><c>-z</c>: a device with no I/O over the interval is left out of that report.</param>
/// <param name="Json"><c>-o JSON</c>: sysstat's JSON document instead of tables.</param>
/// <param name="Decimals"><c>--dec=N</c>: decimal places of the tables' values (2).</param>
/// <param name="Devices">The devices named; empty for every device.</param>
/// <param name="Interval">Seconds between reports (1 when not given).</param>
/// <param name="Count">Reports to print; null for until interrupted.</param>
/// <param name="SinceStart">
/// The first report covers the time since the node's block layer started, as sysstat's first report
/// covers the time since boot: always, unless <c>-y</c> is given with an interval (sysstat's
/// <c>DISPLAY_OMIT_SINCE_BOOT(flags) &amp;&amp; interval > 0</c>). It counts as one of the reports.
/// </param>
/// <param name="Unfiltered">
/// A device was named, or <c>ALL</c>, or <c>-p</c> was given a list: every device reported is
/// reported even if it never did any I/O (no read, write, discard or flush since it was created),
/// which sysstat otherwise leaves out (iostat.c, <c>I_D_UNFILTERED</c>).
/// </param>
/// <param name="CpuReport">
/// The CPU report (<c>avg-cpu</c>): with the device report unless <c>-c</c> or <c>-d</c> is given,
/// and with <c>-c</c> (sysstat's <c>I_D_CPU</c>).
/// </param>
/// <param name="DiskReport">
/// The device report: unless <c>-c</c> or <c>-d</c> is given, with <c>-d</c>, and whenever
/// <c>-x</c>, <c>-p</c> or a device is given (sysstat's <c>I_D_DISK</c>).
/// </param>
/// <param name="Short"><c>-s</c>: the short device report.</param>
/// <param name="Human"><c>--human</c>, or <c>-h</c>: values scaled to their unit, percentages with a <c>%</c>.</param>
/// <param name="Pretty"><c>--pretty</c>, or <c>-h</c>: the device name last, the extended report in four parts.</param>
/// <param name="Compact"><c>--compact</c>: under <c>--pretty</c>, the extended report in one part.</param>
/// <param name="RegistrationOrder">
/// <c>-p</c> without a list, grouped (<c>-xp</c>) or with <c>ALL</c> in its list (sysstat's
/// <c>I_D_EVERYTHING</c>, which reads <c>/proc/diskstats</c> and keeps its order): the devices in
/// the order they registered on the node, each new one after those seen before. Otherwise they are
/// in name order, as sysstat's <c>add_list_device</c> inserts them.
/// </param>
/// <param name="NamedFirst">
/// Under <see cref="RegistrationOrder"/>, the devices named (in <c>-p</c>'s list or as operands),
/// which come before the others, in sysstat's order: <c>add_list_device</c> puts a name in its list
/// when the command line is parsed, in <c>strcmp</c> order until <c>I_D_EVERYTHING</c> is set (by
/// <c>ALL</c> in the list, or <c>-p</c> without one) and after the names already there once it is
/// (<c>-p nullb1,nullb0,ALL</c> gives nullb0, nullb1; <c>-p ALL,nullb1,nullb0</c> nullb1, nullb0);
/// reading <c>/proc/diskstats</c> then appends the devices it has not seen. Null when none is named.
/// </param>
internal sealed record IostatOptions(bool Extended, IostatUnit Unit, bool Timestamp, bool OmitIdle, bool Json, int Decimals, IReadOnlyList<string> Devices, double Interval, long? Count, bool SinceStart = true, bool Unfiltered = false,
    bool CpuReport = true, bool DiskReport = true, bool Short = false, bool Human = false, bool Pretty = false, bool Compact = false, bool RegistrationOrder = false,
    IReadOnlyList<string>? NamedFirst = null)
{
    /// <summary>How the tables are laid out.</summary>
    public IostatLayout Layout => new(Unit, Decimals, Short, Human, Pretty);

    /// <summary>
    /// The parts of the extended device report: 1 to 4 (reads, writes, discards, the rest) under
    /// <c>--pretty</c> in tables, as sysstat breaks it unless <c>-s</c> or <c>--compact</c>; else
    /// the one part 0, the whole.
    /// </summary>
    public IReadOnlyList<int> Parts => Pretty && Extended && !Short && !Json && !Compact ? [1, 2, 3, 4] : [0];

    /// <summary>
    /// Parses the operands. <c>-c</c> and <c>-d</c> choose the reports (both when neither is
    /// given); <c>-y</c> leaves out the report since start when an interval is given; <c>-N</c> is
    /// accepted and changes nothing (an ActorBlk device's name is the only name it has); <c>-p</c>
    /// reports a device named in its list as a device named alone, and without a list (or with
    /// <c>ALL</c>) every device, as sysstat reports a disk with no partitions. sysstat's other
    /// options and anything else are usage errors naming the option.
    /// </summary>
    /// <exception cref="UsageException">An unknown or refused option, a bad interval or count, a device after the interval.</exception>
    public static IostatOptions Parse(IReadOnlyList<string> operands)
    {
        ArgumentNullException.ThrowIfNull(operands);
        bool extended = false, timestamp = false, omitIdle = false, json = false, omitSinceStart = false;
        bool cpu = false, disk = false, shortReport = false, human = false, pretty = false, compact = false, everything = false, listed = false;
        IostatUnit? unit = null;
        var decimals = 2;
        var devices = new List<string>();
        var named = new List<string>(); // sysstat's device list as the command line leaves it
        var numbers = new List<string>();
        var all = false;

        void SetUnit(IostatUnit value, char flag)
        {
            if (unit is { } set && set != value)
            {
                throw new UsageException($"-{flag} and -{(set == IostatUnit.Kilobytes ? 'k' : 'm')} together: choose one unit.");
            }

            unit = value;
        }

        // sysstat takes /dev/vda as well as vda. add_list_device keeps a name once: in strcmp
        // order while I_D_EVERYTHING is not set, after the others once it is.
        void AddDevice(string arg)
        {
            var name = arg.StartsWith("/dev/", StringComparison.Ordinal) ? arg["/dev/".Length..] : arg;
            if (name.Length == 0 || name.Contains('/', StringComparison.Ordinal))
            {
                throw new UsageException($"'{arg}' is not a device name.");
            }

            devices.Add(name);
            if (!named.Contains(name, StringComparer.Ordinal))
            {
                var at = everything ? -1 : named.FindIndex(n => string.CompareOrdinal(n, name) > 0);
                named.Insert(at < 0 ? named.Count : at, name);
            }
        }

        static bool Numeric(string arg) => arg.Length > 0 && (char.IsAsciiDigit(arg[0]) || arg[0] == '.');

        for (var i = 0; i < operands.Count; i++)
        {
            var arg = operands[i];
            if (arg.Length == 0)
            {
                throw new UsageException("an empty operand.");
            }

            if (arg == "-p")
            {
                // sysstat: "-p" takes the next word as its list unless it is a number or an
                // option; without a list it is every device and partition.
                if (i + 1 < operands.Count && operands[i + 1].Length > 0 && operands[i + 1][0] != '-' && !Numeric(operands[i + 1]))
                {
                    listed = true;
                    foreach (var name in operands[++i].Split(',', StringSplitOptions.RemoveEmptyEntries))
                    {
                        if (name == "ALL")
                        {
                            everything = true;
                        }
                        else
                        {
                            AddDevice(name);
                        }
                    }
                }
                else
                {
                    everything = true;
                }
            }
            else if (arg == "-o")
            {
                // sysstat takes exactly "JSON" (K_JSON), in upper case.
                if (i + 1 >= operands.Count || operands[i + 1] != "JSON")
                {
                    throw new UsageException("-o takes JSON, the only output format.");
                }

                json = true;
                i++;
            }
            else if (arg.StartsWith("--dec=", StringComparison.Ordinal))
            {
                if (arg.Length != "--dec=".Length + 1 || arg[^1] is < '0' or > '2')
                {
                    throw new UsageException($"{arg}: --dec takes 0, 1 or 2.");
                }

                decimals = arg[^1] - '0';
            }
            else if (arg == "--human")
            {
                human = true;
            }
            else if (arg == "--pretty")
            {
                pretty = true;
            }
            else if (arg == "--compact")
            {
                compact = true;
            }
            else if (arg.StartsWith("--", StringComparison.Ordinal))
            {
                throw new UsageException($"unknown option {arg}.");
            }
            else if (arg[0] == '-')
            {
                if (arg.Length == 1)
                {
                    throw new UsageException("unknown option -.");
                }

                foreach (var flag in arg.AsSpan(1))
                {
                    switch (flag)
                    {
                        case 'x': extended = true; break;
                        case 'k': SetUnit(IostatUnit.Kilobytes, flag); break;
                        case 'm': SetUnit(IostatUnit.Megabytes, flag); break;
                        case 't': timestamp = true; break;
                        case 'z': omitIdle = true; break;
                        case 'c': cpu = true; break;
                        case 'd': disk = true; break;
                        case 'y': omitSinceStart = true; break;
                        case 's': shortReport = true; break;
                        case 'h': human = pretty = true; break;
                        case 'N': break;
                        case 'p': everything = true; break;     // grouped, -p takes no list
                        default:
                            throw new UsageException($"unknown option -{flag} (in {arg}); the options are -c -d -h -k -m -N -p -s -t -x -y -z, -o JSON, --dec=N, --human, --pretty and --compact.");
                    }
                }
            }
            else if (Numeric(arg))
            {
                numbers.Add(arg);
            }
            else if (numbers.Count > 0)
            {
                throw new UsageException($"device '{arg}' after the interval.");
            }
            else if (arg == "ALL")
            {
                // sysstat's ALL: every device (which is what no device name means here).
                all = true;
            }
            else
            {
                AddDevice(arg);
            }
        }

        // sysstat: a device named, ALL, or -p with a list reports unused devices too; -p without
        // one reads every device (and partition: an ActorBlk device has none), and so does ALL.
        var unfiltered = all || listed || devices.Count > 0;
        if (all || everything)
        {
            devices.Clear();
        }

        // Both reports unless -c or -d says which; -x, -p and a device name add the device report.
        if (!cpu && !disk)
        {
            cpu = disk = true;
        }

        disk |= everything || extended || unfiltered;

        if (numbers.Count > 2)
        {
            throw new UsageException("at most an interval and a count.");
        }

        var interval = 1.0;
        if (numbers.Count > 0 && (!double.TryParse(numbers[0], NumberStyles.Float, CultureInfo.InvariantCulture, out interval) || interval < 0 || interval > 86_400))
        {
            throw new UsageException($"'{numbers[0]}' is not an interval in seconds.");
        }

        // sysstat: "if (!interval) count = 1" — an interval of 0 is the one since-boot report, as
        // no interval is (it was refused: an outside audit); "0 3" stays a usage error there too.
        var zero = numbers.Count > 0 && interval == 0;
        if (zero && numbers.Count == 2)
        {
            throw new UsageException("an interval of 0 takes no count (it prints the one report since the start).");
        }

        long? count = numbers.Count == 0 || zero ? 1 : null;
        if (numbers.Count == 2)
        {
            if (!long.TryParse(numbers[1], NumberStyles.None, CultureInfo.InvariantCulture, out var c) || c < 1)
            {
                throw new UsageException($"'{numbers[1]}' is not a count of reports.");
            }

            count = c;
        }

        return new IostatOptions(extended, unit ?? IostatUnit.Kilobytes, timestamp, omitIdle, json, decimals, devices, zero ? 1.0 : interval, count,
            !(omitSinceStart && numbers.Count > 0 && !zero), unfiltered, cpu, disk, shortReport, human, pretty, compact, everything,
            everything && named.Count > 0 ? named : null);
    }
}
