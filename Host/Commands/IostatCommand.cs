using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using ActorBlk.Actors;
using ActorBlk.Hardware.Queues;
using ActorBlk.Host.Iostat;

namespace ActorBlk.Host.Commands;

/// <summary>
/// <c>actorblk iostat</c>: sysstat's <c>iostat</c> (basic or <c>-x</c>) over the
/// <c>block/&lt;dev&gt;/stat</c> files of a running node, read through its sysfs actor.
/// </summary>
internal static class IostatCommand
{
    private const string Description = """
        A running node's device statistics, computed from successive reads of block/<dev>/stat as
        sysstat's iostat computes them; -x for the extended columns (r/s rkB/s rrqm/s %rrqm r_await
        rareq-sz, the same for w and d, f/s f_await, aqu-sz, %util). Every report covers one interval:
        the node's time since boot is not known, so the first report is that of the first INTERVAL
        seconds (iostat -y). Without INTERVAL one report over 1 second; without COUNT reports until
        interrupted. --node takes HOST:PORT as iostat users would give it.
        """;

    /// <summary>Exit code when the node cannot be read.</summary>
    public const int Failed = 1;

    /// <summary>The <c>iostat</c> command; reports go to <paramref name="output"/>.</summary>
    public static Command Create(TextWriter output)
    {
        var node = new NodeOptions();
        var extended = new Option<bool>("-x") { Description = "the extended columns" };
        var operands = new Argument<string[]>("operands") { HelpName = "DEVICE... INTERVAL COUNT", Arity = ArgumentArity.ZeroOrMore, Description = "devices (all when none), then the interval in seconds and the number of reports" };
        var command = new Command("iostat", Description) { extended, operands };
        node.AddTo(command);
        command.SetAction((parse, cancel) =>
        {
            return RunAsync(node.AddressFrom(parse), node.ConfigFrom(parse), parse.GetValue(extended), parse.GetValue(operands) ?? [], output, cancel);
        });
        return command;
    }

    /// <summary>Runs the reports; a bad operand list is a <see cref="UsageException"/>.</summary>
    public static async Task<int> RunAsync(string address, Akka.Configuration.Config? nodeConfig, bool extended, IReadOnlyList<string> operands, TextWriter output, CancellationToken cancel = default)
    {
        ArgumentNullException.ThrowIfNull(operands);
        var devices = new List<string>();
        var numbers = new List<string>();
        var all = false;
        foreach (var arg in operands)
        {
            if (arg.StartsWith('-'))
            {
                throw new UsageException($"unknown option {arg}.");
            }
            else if (char.IsAsciiDigit(arg[0]) || arg[0] == '.')
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
                // sysstat takes /dev/vda as well as vda.
                var name = arg.StartsWith("/dev/", StringComparison.Ordinal) ? arg["/dev/".Length..] : arg;
                if (name.Length == 0 || name.Contains('/', StringComparison.Ordinal))
                {
                    throw new UsageException($"'{arg}' is not a device name.");
                }

                devices.Add(name);
            }
        }

        if (all)
        {
            devices.Clear();
        }

        if (numbers.Count > 2)
        {
            throw new UsageException("at most an interval and a count.");
        }

        var interval = 1.0;
        if (numbers.Count > 0 && (!double.TryParse(numbers[0], NumberStyles.Float, CultureInfo.InvariantCulture, out interval) || interval <= 0 || interval > 86_400))
        {
            throw new UsageException($"'{numbers[0]}' is not an interval in seconds.");
        }

        long? count = numbers.Count == 0 ? 1 : null;
        if (numbers.Count == 2)
        {
            if (!long.TryParse(numbers[1], NumberStyles.None, CultureInfo.InvariantCulture, out var c) || c < 1)
            {
                throw new UsageException($"'{numbers[1]}' is not a count of reports.");
            }

            count = c;
        }

        NodeClient connected;
        try
        {
            // TLS settings from the node's configuration, as `actorblk sysfs` connects (README, "Security").
            connected = NodeClient.Connect(address, nodeConfig);
        }
        catch (Akka.Configuration.ConfigurationException ex)
        {
            await Console.Error.WriteLineAsync($"actorblk: {ex.Message}").ConfigureAwait(false);
            return Failed;
        }

        await using var client = connected;
        try
        {
            // The reports keep a fixed period from the first sample, as sysstat's alarm() does:
            // the time a sample takes (a round trip per device) is not added to every interval.
            // A sample that overran a whole period skips the ticks it missed (as alarm() signals
            // coalesce) rather than firing reports back to back over millisecond windows.
            var period = TimeSpan.FromSeconds(interval);
            var start = Stopwatch.GetTimestamp();
            var previous = await SampleAsync(client, devices).ConfigureAwait(false);
            long tick = 0;
            for (long report = 0; count is null || report < count; report++)
            {
                var elapsed = Stopwatch.GetElapsedTime(start);
                tick = Math.Max(tick + 1, (long)(elapsed / period) + 1);
                await Task.Delay(period * tick - elapsed, cancel).ConfigureAwait(false);

                var current = await SampleAsync(client, devices).ConfigureAwait(false);
                await output.WriteLineAsync(extended ? IostatReport.ExtendedHeader : IostatReport.BasicHeader).ConfigureAwait(false);
                foreach (var (device, sample) in current)
                {
                    if (previous.TryGetValue(device, out var before))
                    {
                        var row = IostatReport.Compute(device, before.Stat, sample.Stat, Math.Max(1e-3, (sample.At - before.At).TotalMilliseconds));
                        await output.WriteLineAsync(extended ? IostatReport.FormatExtended(row) : IostatReport.FormatBasic(row)).ConfigureAwait(false);
                    }
                }

                await output.WriteLineAsync().ConfigureAwait(false);
                await output.FlushAsync(cancel).ConfigureAwait(false);
                previous = current;
            }
        }
        catch (OperationCanceledException) when (cancel.IsCancellationRequested)
        {
            return 0;
        }
        catch (NodeUnreachableException ex)
        {
            await Console.Error.WriteLineAsync($"actorblk: {ex.Message}").ConfigureAwait(false);
            return Failed;
        }
        catch (IostatException ex)
        {
            await Console.Error.WriteLineAsync($"actorblk: {ex.Message}").ConfigureAwait(false);
            return Failed;
        }

        return 0;
    }

    // One reading of every device's stat (the named ones, else all the node lists), each stamped
    // with the midpoint of its round trip.
    private static async Task<SortedDictionary<string, (DiskStatSample Stat, TimeSpan At)>> SampleAsync(NodeClient client, List<string> devices)
    {
        var names = devices;
        if (names.Count == 0)
        {
            switch (await client.AskAsync(new Sysfs.List("block/")).ConfigureAwait(false))
            {
                case Sysfs.Listing listing:
                    names = [.. listing.Paths.Where(p => p.EndsWith("/stat", StringComparison.Ordinal) && p.Count(c => c == '/') == 2).Select(p => p.Split('/')[1])];
                    break;
                case Sysfs.Failed { Errno: "E2BIG" }:
                    // More attribute paths than one remoting message holds (about 130 devices and
                    // up): the guardian's device list, a few dozen bytes a device, names them.
                    var list = await client.AskGuardianAsync<BlockLayer.DeviceList>(BlockLayer.ListDevices.Instance).ConfigureAwait(false);
                    names = [.. list.Devices.Select(d => d.Name)];
                    break;
                case Sysfs.Failed failed:
                    throw new IostatException($"the node did not list its devices: {failed.Errno} {failed.Message}");
                default:
                    throw new IostatException("the node did not list its devices.");
            }
        }

        var result = new SortedDictionary<string, (DiskStatSample, TimeSpan)>(StringComparer.Ordinal);
        foreach (var name in names)
        {
            var sent = Stopwatch.GetElapsedTime(0);
            var reply = await client.AskAsync(new Sysfs.Read($"block/{name}/stat")).ConfigureAwait(false);
            var at = (sent + Stopwatch.GetElapsedTime(0)) / 2;
            switch (reply)
            {
                case Sysfs.Value value:
                    result[name] = (DiskStatSample.Parse(value.Text), at);
                    break;
                case Sysfs.Failed failed when devices.Count == 0:
                    // Unregistered between the listing and the read (hotplug): left out of this report.
                    _ = failed;
                    break;
                case Sysfs.Failed failed:
                    throw new IostatException($"{name}: {failed.Message} ({failed.Errno})");
                default:
                    throw new IostatException($"unexpected answer {reply}");
            }
        }

        return result;
    }
}

/// <summary>The node could not be read as iostat needs.</summary>
internal sealed class IostatException(string message) : Exception(message);
