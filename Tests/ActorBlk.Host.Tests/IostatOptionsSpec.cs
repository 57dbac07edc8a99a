using System.Text.Json;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Sysfs;
using ActorBlk.Host.Commands;
using ActorBlk.Host.Iostat;
using Xunit;

namespace ActorBlk.Host.Tests;

/// <summary>
/// sysstat's options of <c>actorblk iostat</c> (iostat.c's command line, <c>write_disk_stat_header</c>,
/// <c>write_json_ext_stat</c>, <c>write_json_basic_stat</c>, <c>print_gal_header</c>,
/// <c>write_stats</c>): grouped flags, -c/-d, -k/-m, -s, -h/--human/--pretty, -N, -p, -t, -z, -o JSON
/// and --dec, parsed and laid out as sysstat does.
/// </summary>
public sealed class IostatOptionsSpec
{
    private static readonly DiskStatSample Before = DiskStatSample.Parse("     100       10      800       50      200       20     3200      400        2      900      460        5        0       40        5        7        3\n");
    private static readonly DiskStatSample After = DiskStatSample.Parse("    1100       60     8800      550     1200      220    19200     2400        4     1850     2990       15        5      120       25       17       13\n");

    [Fact]
    public void Flags_group_and_come_anywhere_before_or_after_the_devices()
    {
        var o = IostatOptions.Parse(["-dxz", "nullb0", "-t", "-m", "/dev/disk0", "2", "-y", "5"]);
        Assert.True(o.Extended);
        Assert.True(o.OmitIdle);
        Assert.True(o.Timestamp);
        Assert.False(o.Json);
        Assert.Equal(IostatUnit.Megabytes, o.Unit);
        Assert.Equal(["nullb0", "disk0"], o.Devices);
        Assert.True(o.Unfiltered);
        Assert.Equal(2, o.Interval);
        Assert.Equal(5, o.Count);
    }

    [Fact]
    public void Defaults_are_one_basic_report_in_kilobytes_over_one_second()
    {
        var o = IostatOptions.Parse([]);
        Assert.Equal(new IostatOptions(false, IostatUnit.Kilobytes, false, false, false, 2, o.Devices, 1.0, 1), o);
        Assert.Empty(o.Devices);
        Assert.False(o.Unfiltered);

        // sysstat's default: the CPU report and the device report.
        Assert.True(o.CpuReport);
        Assert.True(o.DiskReport);
        Assert.False(o.Short || o.Human || o.Pretty || o.Compact);
        Assert.Null(IostatOptions.Parse(["1"]).Count);
    }

    // iostat.c rw_io_stat_loop: the first report covers the time since boot unless -y is given
    // with an interval ("DISPLAY_OMIT_SINCE_BOOT(flags) && interval > 0"); it counts as a report.
    [Fact]
    public void The_first_report_is_since_start_unless_y_is_given_with_an_interval()
    {
        Assert.True(IostatOptions.Parse([]).SinceStart);
        Assert.True(IostatOptions.Parse(["-x", "1", "3"]).SinceStart);
        Assert.True(IostatOptions.Parse(["-y"]).SinceStart);
        Assert.False(IostatOptions.Parse(["-y", "1"]).SinceStart);
        Assert.False(IostatOptions.Parse(["-dxy", "nullb0", "2", "5"]).SinceStart);
    }

    // iostat.c: "By default iostat doesn't display unused devices. If some devices are explicitly
    // entered on the command line then don't apply this rule any more" (ALL included). Unused is
    // no read, write, discard or flush ever completed (its rd_ios, wr_ios, dc_ios, fl_ios test).
    [Fact]
    public void Devices_that_never_did_io_are_left_out_unless_devices_are_named_or_all()
    {
        Assert.False(IostatOptions.Parse(["-x", "1", "2"]).Unfiltered);
        Assert.True(IostatOptions.Parse(["ALL"]).Unfiltered);
        Assert.True(IostatOptions.Parse(["/dev/nullb0", "1"]).Unfiltered);

        var unused = DiskStatSample.Parse("0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0");
        Assert.True(IostatReport.NeverUsed(unused));
        Assert.False(IostatReport.NeverUsed(DiskStatSample.Parse("1 0 8 0 0 0 0 0 0 0 0 0 0 0 0 0 0")));
        Assert.False(IostatReport.NeverUsed(DiskStatSample.Parse("0 0 0 0 1 0 8 0 0 0 0 0 0 0 0 0 0")));
        Assert.False(IostatReport.NeverUsed(DiskStatSample.Parse("0 0 0 0 0 0 0 0 0 0 0 1 0 8 0 0 0")));
        Assert.False(IostatReport.NeverUsed(DiskStatSample.Parse("0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 1 0")));

        // In flight only (a request not completed yet, a time in queue): still unused, as sysstat's test.
        Assert.True(IostatReport.NeverUsed(DiskStatSample.Parse("0 0 0 0 0 0 0 0 1 5 5 0 0 0 0 0 0")));
    }

    [Fact]
    public void Json_and_decimal_places()
    {
        var o = IostatOptions.Parse(["-o", "JSON", "--dec=0", "-k", "ALL", "1", "3"]);
        Assert.True(o.Json);
        Assert.Equal(0, o.Decimals);
        Assert.Empty(o.Devices);
    }

    [Theory]
    [InlineData("-km")]              // sysstat: -k with -m is usage()
    [InlineData("-m", "-k")]
    [InlineData("-xq")]
    [InlineData("-")]
    [InlineData("-o")]
    [InlineData("-o", "json")]       // K_JSON is upper case
    [InlineData("-o", "XML")]
    [InlineData("--dec=3")]
    [InlineData("--dec=")]
    [InlineData("--dec=10")]
    [InlineData("-G")]               // sysstat's other options: GB, groups, persistent names, -f, -U, -V
    [InlineData("-g", "disks")]
    [InlineData("-j", "ID")]
    [InlineData("-f", "/tmp")]
    [InlineData("-xU")]
    [InlineData("-V")]
    [InlineData("--debuginfo")]
    [InlineData("-p", "nullb0,/dev/a/b")]
    [InlineData("1", "nullb0")]
    [InlineData("1", "2", "3")]
    public void Refused_options_are_usage_errors(params string[] operands)
    {
        Assert.Throws<UsageException>(() => IostatOptions.Parse(operands));
    }

    [Theory]
    [InlineData("-dxz", "1", "1")]
    [InlineData("-o", "JSON", "-t", "1", "1")]
    [InlineData("--dec=1", "-m", "1", "1")]
    [InlineData("-h", "1", "1")]     // sysstat's -h, not the help
    [InlineData("-hc", "1", "1")]
    [InlineData("-dsN", "-p", "ALL", "1", "1")]
    [InlineData("-c", "--human", "--pretty", "--compact", "1", "1")]
    public async Task The_command_line_hands_sysstat_options_to_iostat_and_only_then_asks_the_node(params string[] args)
    {
        // Nothing listens on port 1: a command line iostat accepts fails to reach the node (1),
        // where a refused one would be a usage error (2).
        using var error = new StringWriter();
        Assert.Equal(1, await CommandLine.RunAsync(["iostat", "--port=1", .. args], TextWriter.Null, error));
        Assert.Empty(error.ToString());
    }

    [Fact]
    public void Megabytes_divide_the_throughput_and_leave_request_sizes_in_kilobytes()
    {
        var r = IostatReport.Compute("nullb0", Before, After, 1000);
        Assert.Equal(
            "Device            r/s     rMB/s   rrqm/s  %rrqm r_await rareq-sz     w/s     wMB/s   wrqm/s  %wrqm w_await wareq-sz     d/s     dMB/s   drqm/s  %drqm d_await dareq-sz     f/s f_await  aqu-sz  %util",
            IostatReport.ExtendedHeaderFor(IostatUnit.Megabytes));

        // rkB/s 4000 is 3.90625 MB/s, wkB/s 8000 is 7.8125, dkB/s 40 is 0.0390625; rareq-sz stays 4.00 kB.
        Assert.Equal(
            "nullb0        1000.00      3.91    50.00   4.76    0.50     4.00 1000.00      7.81   200.00  16.67    2.00     8.00   10.00      0.04     5.00  33.33    2.00     4.00   10.00    1.00    2.53  95.00",
            IostatReport.FormatExtended(r, IostatUnit.Megabytes));

        // Over the interval: 4000 kB read is 3 whole MB (3.90625, truncated as sysstat's integer division).
        Assert.Equal(
            "Device             tps    MB_read/s    MB_wrtn/s    MB_dscd/s    MB_read    MB_wrtn    MB_dscd",
            IostatReport.BasicHeaderFor(IostatUnit.Megabytes));
        Assert.Equal(
            "nullb0         2010.00         3.91         7.81         0.04          3          7          0",
            IostatReport.FormatBasic(r, IostatUnit.Megabytes));
    }

    [Fact]
    public void Decimal_places_keep_the_columns_under_their_headers()
    {
        var r = IostatReport.Compute("nullb0", Before, After, 1000);
        Assert.StartsWith("nullb0           1000      4000       50      5       0        4", IostatReport.FormatExtended(r, IostatUnit.Kilobytes, 0), StringComparison.Ordinal);
        Assert.StartsWith("nullb0          2010.0       4000.0", IostatReport.FormatBasic(r, IostatUnit.Kilobytes, 1), StringComparison.Ordinal);
        foreach (var decimals in new[] { 0, 1, 2 })
        {
            Assert.Equal(IostatReport.ExtendedHeader.Length, IostatReport.FormatExtended(r, IostatUnit.Kilobytes, decimals).Length);
            Assert.Equal(IostatReport.BasicHeader.Length, IostatReport.FormatBasic(r, IostatUnit.Megabytes, decimals).Length);
        }
    }

    [Fact]
    public void Json_rows_have_sysstats_keys_in_sysstats_order()
    {
        var r = IostatReport.Compute("nullb0", Before, After, 1000);
        Assert.Equal(
            "{\"disk_device\": \"nullb0\", \"r/s\": 1000.00, \"w/s\": 1000.00, \"d/s\": 10.00, \"f/s\": 10.00, \"rkB/s\": 4000.00, \"wkB/s\": 8000.00, \"dkB/s\": 40.00, " +
            "\"rrqm/s\": 50.00, \"wrqm/s\": 200.00, \"drqm/s\": 5.00, \"rrqm\": 4.76, \"wrqm\": 16.67, \"drqm\": 33.33, " +
            "\"r_await\": 0.50, \"w_await\": 2.00, \"d_await\": 2.00, \"f_await\": 1.00, \"rareq-sz\": 4.00, \"wareq-sz\": 8.00, \"dareq-sz\": 4.00, \"aqu-sz\": 2.53, \"util\": 95.00}",
            IostatReport.JsonExtended(r));
        Assert.Equal(
            "{\"disk_device\": \"nullb0\", \"tps\": 2010.00, \"MB_read/s\": 3.91, \"MB_wrtn/s\": 7.81, \"MB_dscd/s\": 0.04, \"MB_read\": 3, \"MB_wrtn\": 7, \"MB_dscd\": 0}",
            IostatReport.JsonBasic(r, IostatUnit.Megabytes));
    }

    [Fact]
    public void An_idle_interval_is_what_z_leaves_out()
    {
        Assert.True(IostatReport.Compute("nullb0", After, After, 1000).Idle);
        Assert.False(IostatReport.Compute("nullb0", Before, After, 1000).Idle);

        // A flush alone is activity (sysstat compares fl_ios too).
        var flushed = DiskStatSample.Parse("    1100       60     8800      550     1200      220    19200     2400        4     1850     2990       15        5      120       25       18       13\n");
        Assert.False(IostatReport.Compute("nullb0", After, flushed, 1000).Idle);
    }

    [Theory]
    [InlineData(false, false, 0)]
    [InlineData(true, true, 1)]
    [InlineData(true, false, 2)]
    [InlineData(false, true, 3)]
    public async Task The_json_document_is_sysstats_and_parses_whatever_the_reports(bool extended, bool timestamp, int reports)
    {
        var options = IostatOptions.Parse([.. extended ? new[] { "-x" } : [], .. timestamp ? new[] { "-t" } : [], "-o", "JSON", "1"]);
        using var text = new StringWriter();
        var writer = new IostatWriter(text, options) { Iso = true };
        var at = new DateTimeOffset(2026, 12, 4, 10, 30, 1, TimeSpan.FromHours(1));
        await writer.BeginAsync("127.0.0.1:4053", 2, at);
        var row = IostatReport.Compute("nullb0", Before, After, 1000);
        for (var i = 0; i < reports; i++)
        {
            // The second report has no device (all idle under -z): an empty list, still valid.
            await writer.ReportAsync(at.AddSeconds(i + 1), i == 1 ? [] : [row, row with { Device = "disk0" }]);
        }

        await writer.EndAsync();
        await writer.EndAsync();

        using var document = JsonDocument.Parse(text.ToString());
        var host = document.RootElement.GetProperty("sysstat").GetProperty("hosts")[0];
        Assert.Equal("127.0.0.1:4053", host.GetProperty("nodename").GetString());
        Assert.Equal(2, host.GetProperty("number-of-cpus").GetInt32());
        Assert.Equal("2026-12-04", host.GetProperty("date").GetString());
        var statistics = host.GetProperty("statistics");
        Assert.Equal(reports, statistics.GetArrayLength());
        for (var i = 0; i < reports; i++)
        {
            var report = statistics[i];
            Assert.Equal(timestamp, report.TryGetProperty("timestamp", out var stamp));
            if (timestamp)
            {
                Assert.Equal($"2026-12-04T10:30:0{i + 2}+0100", stamp.GetString());

                // Written as sysstat writes it, not escaped (an operator audit saw \u002B0100).
                Assert.Contains($"\"timestamp\": \"2026-12-04T10:30:0{i + 2}+0100\"", text.ToString(), StringComparison.Ordinal);
            }

            var disks = report.GetProperty("disk");
            Assert.Equal(i == 1 ? 0 : 2, disks.GetArrayLength());
            if (disks.GetArrayLength() > 0)
            {
                Assert.Equal(extended ? 95.0 : 2010.0, disks[0].GetProperty(extended ? "util" : "tps").GetDouble());
            }
        }

        // sysstat's layout: tab indents, "}," between reports, the four closing lines.
        Assert.StartsWith("{\"sysstat\": {\n\t\"hosts\": [\n\t\t{\n\t\t\t\"nodename\": \"127.0.0.1:4053\",\n", text.ToString(), StringComparison.Ordinal);
        Assert.EndsWith("\t\t\t]\n\t\t}\n\t]\n}}\n", text.ToString(), StringComparison.Ordinal);
    }

    [Fact]
    public async Task The_tables_start_with_the_banner_and_each_report_with_its_time_under_t()
    {
        using var text = new StringWriter();
        var writer = new IostatWriter(text, IostatOptions.Parse(["-t", "1"])) { Iso = false };
        var at = new DateTimeOffset(2026, 12, 4, 10, 30, 1, TimeSpan.Zero);
        await writer.BeginAsync("127.0.0.1:4053", 2, at);
        await writer.ReportAsync(at.AddSeconds(1), [IostatReport.Compute("nullb0", Before, After, 1000)]);
        await writer.EndAsync();

        var lines = text.ToString().Split('\n');
        Assert.Matches(@"^ActorBlk \d+\.\d+\.\d+ \(127\.0\.0\.1:4053\) \t12/04/26 \t_[a-z0-9_]+_\t\(2 CPU\)$", lines[0]);
        Assert.Equal(string.Empty, lines[1]);
        Assert.Equal("12/04/26 10:30:02", lines[2]);
        Assert.Equal(IostatReport.BasicHeader, lines[3]);
        Assert.StartsWith("nullb0 ", lines[4], StringComparison.Ordinal);
        Assert.Equal(string.Empty, lines[5]);
    }

    // iostat.c main: -c and -d choose the reports, both when neither is given; -x, -p and a device
    // name add the device report ("Also display DISK reports if options -p, -x or a device has
    // been entered on the command line").
    [Theory]
    [InlineData(true, true)]
    [InlineData(true, false, "-c")]
    [InlineData(false, true, "-d")]
    [InlineData(true, true, "-c", "-d")]
    [InlineData(true, true, "-cd")]
    [InlineData(true, true, "-c", "-x")]
    [InlineData(true, true, "-c", "nullb0")]
    [InlineData(true, true, "-cp")]
    [InlineData(true, true, "-c", "-p", "nullb0")]
    [InlineData(false, true, "-dx", "ALL", "1")]
    [InlineData(true, false, "-cy", "-t", "2", "3")]
    public void C_and_d_choose_the_reports(bool cpu, bool disk, params string[] operands)
    {
        var o = IostatOptions.Parse(operands);
        Assert.Equal(cpu, o.CpuReport);
        Assert.Equal(disk, o.DiskReport);
    }

    // sysstat's -p: a list names devices (and their partitions: an ActorBlk device has none, so
    // -p nullb0 is nullb0 named) and reports them even unused; ALL in it, or -p without a list
    // (the next word a number or an option, or -p grouped), is every device, as reading
    // /proc/diskstats is; unused ones only under ALL or a list, as I_D_UNFILTERED has it.
    [Fact]
    public void P_names_devices_or_every_device_as_for_a_disk_without_partitions()
    {
        var listed = IostatOptions.Parse(["-p", "nullb0,/dev/nullb1", "1", "2"]);
        Assert.Equal(["nullb0", "nullb1"], listed.Devices);
        Assert.True(listed.Unfiltered);
        Assert.Equal(1, listed.Interval);
        Assert.Equal(2, listed.Count);

        foreach (var all in new[] { new[] { "-p", "ALL" }, ["-p", "nullb0,ALL"], ["ALL"], ["-xp", "nullb0"], ["-p", "-x", "nullb0"] })
        {
            var o = IostatOptions.Parse(all);
            Assert.Empty(o.Devices);
            Assert.True(o.Unfiltered, string.Join(' ', all));
        }

        foreach (var every in new[] { new[] { "-p" }, ["-p", "1", "2"], ["-p", "-x"], ["-dp"], ["-x", "-p", "0.5"] })
        {
            var o = IostatOptions.Parse(every);
            Assert.Empty(o.Devices);
            Assert.False(o.Unfiltered, string.Join(' ', every));
            Assert.True(o.DiskReport);
        }

        Assert.Equal(2, IostatOptions.Parse(["-p", "1", "2"]).Count);

        // A list is an option's value: it may follow the interval, where a device name may not.
        Assert.Equal(["nullb0"], IostatOptions.Parse(["1", "-p", "nullb0"]).Devices);
    }

    [Fact]
    public void S_h_and_n_are_taken()
    {
        static IostatOptions Same(IostatOptions o) => o with { Devices = [] };
        Assert.True(IostatOptions.Parse(["-s"]).Short);

        // -h is --human and --pretty together.
        var h = IostatOptions.Parse(["-xh"]);
        Assert.True(h.Human && h.Pretty && h.Extended);
        var human = IostatOptions.Parse(["--human"]);
        Assert.True(human.Human && !human.Pretty);
        var pretty = IostatOptions.Parse(["--pretty"]);
        Assert.True(pretty.Pretty && !pretty.Human);

        // --pretty breaks the extended report in four parts, unless -s, --compact or JSON.
        Assert.Equal([1, 2, 3, 4], h.Parts);
        Assert.Equal([0], IostatOptions.Parse(["-h"]).Parts);
        Assert.Equal([0], IostatOptions.Parse(["-xhs"]).Parts);
        Assert.Equal([0], IostatOptions.Parse(["-xh", "--compact"]).Parts);
        Assert.Equal([0], IostatOptions.Parse(["-xh", "-o", "JSON"]).Parts);

        // -N changes nothing: an ActorBlk device's name is its only name.
        Assert.Equal(Same(IostatOptions.Parse(["-x", "nullb0"])), Same(IostatOptions.Parse(["-xN", "nullb0"])));
    }

    [Fact]
    public void Headers_are_sysstats()
    {
        Assert.Equal("Device             tps    kB_read/s     kB_w+d/s    kB_read     kB_w+d", IostatReport.Header(false, new IostatLayout(Short: true)));
        Assert.Equal("Device             tps    MB_read/s     MB_w+d/s    MB_read     MB_w+d", IostatReport.Header(false, new IostatLayout(IostatUnit.Megabytes, Short: true)));
        Assert.Equal("Device             tps      kB/s    rqm/s   await  areq-sz  aqu-sz  %util", IostatReport.Header(true, new IostatLayout(Short: true)));
        Assert.Equal("      tps    kB_read/s    kB_wrtn/s    kB_dscd/s    kB_read    kB_wrtn    kB_dscd Device", IostatReport.Header(false, new IostatLayout(Pretty: true)));
        Assert.Equal("     r/s     rkB/s   rrqm/s  %rrqm r_await rareq-sz Device", IostatReport.Header(true, new IostatLayout(Pretty: true), 1));
        Assert.Equal("     f/s f_await  aqu-sz  %util Device", IostatReport.Header(true, new IostatLayout(Pretty: true), 4));
        Assert.Equal(IostatReport.ExtendedHeader, IostatReport.Header(true, new IostatLayout()));
        Assert.Equal(IostatReport.BasicHeader, IostatReport.Header(false, new IostatLayout(Human: true)));
    }

    // sysstat's tests/root1 and root2 (avg-cpu 1.49 39.91 ..., then 2.15 12.50 ...).
    private static readonly IostatCpu Cpu1 = IostatReport.ComputeCpu(default, CpuStatSample.Parse("cpu  96005 2578701 53845 3617879 60648 27891 25853 0 0 0"));
    private static readonly IostatCpu Cpu2 = IostatReport.ComputeCpu(CpuStatSample.Parse("cpu  96005 2578701 53845 3617879 60648 27891 25853 0 0 0"), CpuStatSample.Parse("cpu  96538 2581805 54302 3638469 60677 27975 25897 0 0 0"));

    [Fact]
    public void Avg_cpu_values_follow_dec_and_human()
    {
        // tests/expected.iostat-human (--human) and expected.iostat-dec (--dec=1).
        Assert.Equal("           1.5%   39.9%    1.7%    0.9%    0.0%   56.0%", IostatReport.FormatCpu(Cpu1, 2, human: true));
        Assert.Equal("            1.5    39.9     1.7     0.9     0.0    56.0", IostatReport.FormatCpu(Cpu1, 1));
        Assert.Equal("              1      40       2       1       0      56", IostatReport.FormatCpu(Cpu1, 0));
        Assert.Equal(
            "\"avg-cpu\":  {\"user\": 1.49, \"nice\": 39.91, \"system\": 1.67, \"iowait\": 0.94, \"steal\": 0.00, \"idle\": 56.00}",
            IostatReport.JsonCpu(Cpu1));
    }

    // tests/expected.iostat-ct (iostat -ct 1 2), after its banner: the time, the CPU report and
    // its blank line, the blank line write_stats ends with and the one the loop writes.
    [Fact]
    public async Task C_alone_is_laid_out_as_sysstats()
    {
        var text = await ReportsAsync(["-ct", "1", "2"], (Cpu1, []), (Cpu2, []));
        Assert.Equal(
            "\n" +
            "06/01/20 12:53:20\n" +
            "avg-cpu:  %user   %nice %system %iowait  %steal   %idle\n" +
            "           1.49   39.91    1.67    0.94    0.00   56.00\n" +
            "\n\n\n" +
            "06/01/20 12:53:21\n" +
            "avg-cpu:  %user   %nice %system %iowait  %steal   %idle\n" +
            "           2.15   12.50    2.35    0.12    0.00   82.89\n" +
            "\n\n\n",
            AfterBanner(text));
    }

    // tests/expected.iostat (iostat 1 2) with its sda alone: the CPU report before each device
    // report, two blank lines after each report.
    [Fact]
    public async Task The_cpu_report_comes_before_each_device_report_as_sysstats()
    {
        var sda = IostatReport.Compute("sda", default, DiskStatSample.Parse("49601 2822 3195498 623970 12180 9784 821088 117109 0 32862 714408 0 0 0 0"), 7_192_550);
        var text = await ReportsAsync(["1", "2"], (Cpu1, [sda]), (Cpu2, [sda with { ReadsPerSecond = 0, WritesPerSecond = 0, ReadKbPerSecond = 0, WriteKbPerSecond = 0, KbRead = 0, KbWritten = 0 }]));
        Assert.Equal(
            "\n" +
            "avg-cpu:  %user   %nice %system %iowait  %steal   %idle\n" +
            "           1.49   39.91    1.67    0.94    0.00   56.00\n" +
            "\n" +
            "Device             tps    kB_read/s    kB_wrtn/s    kB_dscd/s    kB_read    kB_wrtn    kB_dscd\n" +
            "sda               8.59       222.14        57.08         0.00    1597749     410544          0\n" +
            "\n\n" +
            "avg-cpu:  %user   %nice %system %iowait  %steal   %idle\n" +
            "           2.15   12.50    2.35    0.12    0.00   82.89\n" +
            "\n" +
            "Device             tps    kB_read/s    kB_wrtn/s    kB_dscd/s    kB_read    kB_wrtn    kB_dscd\n" +
            "sda               0.00         0.00         0.00         0.00          0          0          0\n" +
            "\n\n",
            AfterBanner(text));

        // -d: the device report alone, as before.
        var devices = await ReportsAsync(["-d", "1", "1"], (Cpu1, [sda]));
        Assert.Equal("\n" + IostatReport.BasicHeader + "\n" + IostatReport.FormatBasic(sda) + "\n\n\n", AfterBanner(devices));
    }

    // tests/expected.iostat-x-pretty (iostat -x --pretty) with its sda alone: four parts, each
    // with its header, a blank line between them.
    [Fact]
    public async Task Pretty_breaks_the_extended_report_in_four_parts_as_sysstat()
    {
        var sda = IostatReport.Compute("sda", default, DiskStatSample.Parse("49601 2822 3195498 623970 12180 9784 821088 117109 0 32862 714408 0 0 0 0"), 7_192_550);
        var text = await ReportsAsync(["-x", "--pretty"], (Cpu1, [sda]));
        Assert.Equal(
            "\n" +
            "avg-cpu:  %user   %nice %system %iowait  %steal   %idle\n" +
            "           1.49   39.91    1.67    0.94    0.00   56.00\n" +
            "\n" +
            "     r/s     rkB/s   rrqm/s  %rrqm r_await rareq-sz Device\n" +
            "    6.90    222.14     0.39   5.38   12.58    32.21 sda\n" +
            "\n" +
            "     w/s     wkB/s   wrqm/s  %wrqm w_await wareq-sz Device\n" +
            "    1.69     57.08     1.36  44.55    9.61    33.71 sda\n" +
            "\n" +
            "     d/s     dkB/s   drqm/s  %drqm d_await dareq-sz Device\n" +
            "    0.00      0.00     0.00   0.00    0.00     0.00 sda\n" +
            "\n" +
            "     f/s f_await  aqu-sz  %util Device\n" +
            "    0.00    0.00    0.10   0.46 sda\n" +
            "\n\n",
            AfterBanner(text));
    }

    // tests/expected.iostat-x-p-ALL-JSON: "avg-cpu" before "disk" in each statistics entry; -c
    // alone: "avg-cpu" without the comma and without "disk". -xs: write_json_ext_stat's short keys.
    [Fact]
    public async Task Json_entries_hold_avg_cpu_before_disk()
    {
        var sda = IostatReport.Compute("sda", default, DiskStatSample.Parse("49601 2822 3195498 623970 12180 9784 821088 117109 0 32862 714408 0 0 0 0"), 7_192_550);
        var both = await ReportsAsync(["-xs", "-o", "JSON", "1", "2"], (Cpu1, [sda]), (Cpu2, [sda]));
        Assert.Contains(
            "\t\t\t\"statistics\": [\n" +
            "\t\t\t\t{\n" +
            "\t\t\t\t\t\"avg-cpu\":  {\"user\": 1.49, \"nice\": 39.91, \"system\": 1.67, \"iowait\": 0.94, \"steal\": 0.00, \"idle\": 56.00},\n" +
            "\t\t\t\t\t\"disk\": [\n" +
            "\t\t\t\t\t\t{\"disk_device\": \"sda\", \"tps\": 8.59, \"kB/s\": 279.22, \"rqm/s\": 1.75, \"await\": 12.00, \"areq-sz\": 32.51, \"aqu-sz\": 0.10, \"util\": 0.46}\n" +
            "\t\t\t\t\t]\n" +
            "\t\t\t\t},\n" +
            "\t\t\t\t{\n" +
            "\t\t\t\t\t\"avg-cpu\":  {\"user\": 2.15, ",
            both,
            StringComparison.Ordinal);
        using (var document = JsonDocument.Parse(both))
        {
            var statistics = document.RootElement.GetProperty("sysstat").GetProperty("hosts")[0].GetProperty("statistics");
            Assert.Equal(2, statistics.GetArrayLength());
            Assert.Equal(["avg-cpu", "disk"], statistics[1].EnumerateObject().Select(p => p.Name));
            Assert.Equal(82.89, statistics[1].GetProperty("avg-cpu").GetProperty("idle").GetDouble());
        }

        var cpu = await ReportsAsync(["-c", "-t", "-o", "JSON", "1", "1"], (Cpu1, []));
        Assert.Contains(
            "\t\t\t\t{\n" +
            "\t\t\t\t\t\"timestamp\": \"06/01/20 12:53:20\",\n" +
            "\t\t\t\t\t\"avg-cpu\":  {\"user\": 1.49, \"nice\": 39.91, \"system\": 1.67, \"iowait\": 0.94, \"steal\": 0.00, \"idle\": 56.00}\n" +
            "\t\t\t\t}\n" +
            "\t\t\t]\n",
            cpu,
            StringComparison.Ordinal);
        using var cpuOnly = JsonDocument.Parse(cpu);
        Assert.Equal(["timestamp", "avg-cpu"], cpuOnly.RootElement.GetProperty("sysstat").GetProperty("hosts")[0].GetProperty("statistics")[0].EnumerateObject().Select(p => p.Name));
    }

    // The writer's output for OPERANDS and one report per (CPU, rows), taken a second apart from
    // 06/01/20 12:53:20 (the time of sysstat's test data), in the C locale's format.
    private static async Task<string> ReportsAsync(string[] operands, params (IostatCpu Cpu, IostatRow[] Rows)[] reports)
    {
        using var text = new StringWriter();
        var writer = new IostatWriter(text, IostatOptions.Parse(operands)) { Iso = false };
        var at = new DateTimeOffset(2020, 6, 1, 12, 53, 20, TimeSpan.Zero);
        await writer.BeginAsync("127.0.0.1:4053", 9, at);
        for (var i = 0; i < reports.Length; i++)
        {
            await writer.ReportAsync(at.AddSeconds(i), reports[i].Rows, reports[i].Cpu);
        }

        await writer.EndAsync();
        return text.ToString();
    }

    private static string AfterBanner(string text) => text[(text.IndexOf('\n', StringComparison.Ordinal) + 1)..];
}
