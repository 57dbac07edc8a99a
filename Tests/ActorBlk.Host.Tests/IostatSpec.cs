using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Sysfs;
using ActorBlk.Host.Commands;
using ActorBlk.Host.Iostat;
using Xunit;

namespace ActorBlk.Host.Tests;

/// <summary>
/// The arithmetic of <c>actorblk iostat</c> against sysstat's formulas on recorded <c>stat</c>
/// samples; the expected values are worked out by hand in the comments.
/// </summary>
public sealed class IostatSpec
{
    // Two readings one second apart of a device under mixed load.
    private static readonly DiskStatSample Before = DiskStatSample.Parse("     100       10      800       50      200       20     3200      400        2      900      460        5        0       40        5        7        3\n");
    private static readonly DiskStatSample After = DiskStatSample.Parse("    1100       60     8800      550     1200      220    19200     2400        4     1850     2990       15        5      120       25       17       13\n");

    [Fact]
    public void Extended_columns_follow_sysstat_over_one_second()
    {
        var r = IostatReport.Compute("nullb0", Before, After, 1000);

        Assert.Equal(1000, r.ReadsPerSecond, 6);           // S_VALUE(rd_ios) = 1000 / 1 s
        Assert.Equal(4000, r.ReadKbPerSecond, 6);          // 8000 sectors / 2 / 1 s
        Assert.Equal(50, r.ReadMergesPerSecond, 6);        // 50 merges / 1 s
        Assert.Equal(100.0 * 50 / 1050, r.ReadMergePercent, 6); // merges / (merges + ios)
        Assert.Equal(0.5, r.ReadAwait, 6);                 // 500 ticks / 1000 ios
        Assert.Equal(4, r.ReadRequestKb, 6);               // 8000 / 1000 / 2
        Assert.Equal(1000, r.WritesPerSecond, 6);
        Assert.Equal(8000, r.WriteKbPerSecond, 6);         // 16000 / 2
        Assert.Equal(200, r.WriteMergesPerSecond, 6);
        Assert.Equal(100.0 * 200 / 1200, r.WriteMergePercent, 6);
        Assert.Equal(2, r.WriteAwait, 6);                  // 2000 / 1000
        Assert.Equal(8, r.WriteRequestKb, 6);
        Assert.Equal(10, r.DiscardsPerSecond, 6);
        Assert.Equal(40, r.DiscardKbPerSecond, 6);         // 80 / 2
        Assert.Equal(5, r.DiscardMergesPerSecond, 6);
        Assert.Equal(100.0 * 5 / 15, r.DiscardMergePercent, 6);
        Assert.Equal(2, r.DiscardAwait, 6);                // 20 / 10
        Assert.Equal(4, r.DiscardRequestKb, 6);            // 80 / 10 / 2
        Assert.Equal(10, r.FlushesPerSecond, 6);
        Assert.Equal(1, r.FlushAwait, 6);                  // 10 / 10
        Assert.Equal(2.53, r.QueueSize, 6);                // (2990 - 460) ms / 1000 ms
        Assert.Equal(95, r.Utilization, 6);                // (1850 - 900) ms / 1000 ms * 100
        Assert.Equal(2010, r.TransfersPerSecond, 6);

        Assert.Equal(
            "nullb0        1000.00   4000.00    50.00   4.76    0.50     4.00 1000.00   8000.00   200.00  16.67    2.00     8.00   10.00     40.00     5.00  33.33    2.00     4.00   10.00    1.00    2.53  95.00",
            IostatReport.FormatExtended(r));
    }

    [Fact]
    public void Rates_divide_by_the_interval_and_awaits_do_not()
    {
        // The same deltas over 2 s: every rate halves, aqu-sz and %util halve, awaits and sizes stay.
        var r = IostatReport.Compute("nullb0", Before, After, 2000);
        Assert.Equal(500, r.ReadsPerSecond, 6);
        Assert.Equal(2000, r.ReadKbPerSecond, 6);
        Assert.Equal(25, r.ReadMergesPerSecond, 6);
        Assert.Equal(0.5, r.ReadAwait, 6);
        Assert.Equal(4000, r.WriteKbPerSecond, 6);
        Assert.Equal(1.265, r.QueueSize, 6);
        Assert.Equal(47.5, r.Utilization, 6);
        Assert.Equal(
            "nullb0         1005.00      2000.00      4000.00        20.00       4000       8000         40",
            IostatReport.FormatBasic(r));
    }

    [Fact]
    public void An_idle_interval_reads_zero_not_nan()
    {
        var r = IostatReport.Compute("nullb0", After, After, 1000);
        Assert.Equal(0, r.ReadAwait);
        Assert.Equal(0, r.ReadMergePercent);
        Assert.Equal(0, r.WriteRequestKb);
        Assert.Equal(0, r.FlushAwait);
        Assert.Equal(0, r.Utilization);
        Assert.DoesNotContain("NaN", IostatReport.FormatExtended(r), StringComparison.Ordinal);
    }

    [Fact]
    public void A_counter_that_went_back_counts_from_zero()
    {
        // The device was re-created between the readings: its counters restarted.
        var r = IostatReport.Compute("nullb0", After, Before, 1000);
        Assert.Equal(100, r.ReadsPerSecond, 6);
        Assert.Equal(400, r.ReadKbPerSecond, 6);
    }

    // An outside audit (finding 2): a device new since the previous sampling was left out, and its
    // first sampling became its baseline, so the I/O it did before never showed. sysstat's
    // add_list_device zeroes a new device's records: its first interval counts from 0.
    [Fact]
    public void A_device_new_since_the_previous_sampling_counts_from_a_zero_record()
    {
        var rows = IostatCommand.Rows(Sampling(0, ("nullb0", Before)), Sampling(2, ("dyn0", Before), ("nullb0", After)), IostatOptions.Parse([]));
        Assert.Equal(["dyn0", "nullb0"], rows.Select(r => r.Device));
        var dyn0 = rows[0];
        Assert.Equal(50, dyn0.ReadsPerSecond, 6);          // 100 reads since it appeared, over the 2 s since the previous sampling
        Assert.Equal(400, dyn0.KbRead, 6);                 // 800 sectors / 2
        Assert.Equal(1600, dyn0.KbWritten, 6);             // 3200 / 2
        Assert.Equal(0.5, dyn0.ReadAwait, 6);              // 50 ticks / 100 reads
        Assert.Equal(500, rows[1].ReadsPerSecond, 6);      // nullb0 from its previous reading

        // A device gone since the previous sampling is not reported.
        Assert.Empty(IostatCommand.Rows(Sampling(0, ("nullb0", Before)), Sampling(1), IostatOptions.Parse([])));
    }

    // Destroyed and created again under its name between two samplings: a counter below its
    // previous value means a new device, which counts from 0 as a whole (sysstat's "removed then
    // inserted again" test, ioj = &iozero). Counter by counter (the old rule) this device showed
    // 50 writes and a 3 ms w_await: its 150 writes less the old device's 100.
    [Fact]
    public void A_device_created_again_between_samplings_counts_from_a_zero_record()
    {
        var old = DiskStatSample.Parse("0 0 0 0 100 0 800 400 0 300 400 0 0 0 0 0 0");
        var again = DiskStatSample.Parse("0 0 0 0 150 0 1200 150 0 120 150 0 0 0 0 0 0");
        Assert.True(IostatReport.WentBack(old, again));
        Assert.False(IostatReport.WentBack(Before, After));
        Assert.False(IostatReport.WentBack(After, After with { InFlight = 0 }));   // in_flight goes down as requests complete

        var row = Assert.Single(IostatCommand.Rows(Sampling(0, ("dyn0", old)), Sampling(1, ("dyn0", again)), IostatOptions.Parse([])));
        Assert.Equal(150, row.WritesPerSecond, 6);
        Assert.Equal(600, row.KbWritten, 6);
        Assert.Equal(1, row.WriteAwait, 6);                // 150 ticks / 150 writes
        Assert.Equal(12, row.Utilization, 6);              // 120 ms of 1000
    }

    // sysstat's own test data: the cpu lines of tests/root1 and tests/root2/proc/stat, and the
    // avg-cpu values its expected outputs (tests/expected.iostat) hold for them.
    private static readonly CpuStatSample Root1 = CpuStatSample.Parse("cpu  96005 2578701 53845 3617879 60648 27891 25853 0 0 0\n");
    private static readonly CpuStatSample Root2 = CpuStatSample.Parse("cpu  96538 2581805 54302 3638469 60677 27975 25897 0 0 0\n");

    [Fact]
    public void Avg_cpu_is_sysstats_on_sysstats_own_test_data()
    {
        // The first report, since boot: every counter from 0. The total is user + nice + system +
        // idle + iowait + irq + softirq + steal = 6460822 jiffies; %system adds irq and softirq.
        var sinceBoot = IostatReport.ComputeCpu(default, Root1);
        Assert.Equal(100.0 * 96005 / 6460822, sinceBoot.User, 9);
        Assert.Equal(100.0 * 2578701 / 6460822, sinceBoot.Nice, 9);
        Assert.Equal(100.0 * (53845 + 27891 + 25853) / 6460822, sinceBoot.System, 9);
        Assert.Equal(100.0 * 60648 / 6460822, sinceBoot.Iowait, 9);
        Assert.Equal(0, sinceBoot.Steal);
        Assert.Equal(100.0 * 3617879 / 6460822, sinceBoot.Idle, 9);
        Assert.Equal("           1.49   39.91    1.67    0.94    0.00   56.00", IostatReport.FormatCpu(sinceBoot));

        // Then root1 to root2 (its second report).
        Assert.Equal("           2.15   12.50    2.35    0.12    0.00   82.89", IostatReport.FormatCpu(IostatReport.ComputeCpu(Root1, Root2)));
    }

    // /proc/stat counts guest time in user (and guest_nice in nice): sysstat's iostat leaves it
    // there and does not add guest or guest_nice to the total ("Don't add cpu_guest/cpu_guest_nice
    // because cpu_user/cpu_nice already include them"). A counter that went back reads 0; a total
    // that did not move is taken as 1 jiffy, so nothing divides by 0.
    [Fact]
    public void Guest_time_stays_in_user_and_out_of_the_total()
    {
        var before = CpuStatSample.Parse("cpu  1000 100 500 8000 200 50 50 100 300 20");
        var after = CpuStatSample.Parse("cpu  1600 200 800 8500 300 100 150 200 700 60");

        // Deltas: user 600 (guest 400 of it), nice 100 (guest_nice 40), system 300, idle 500,
        // iowait 100, irq 50, softirq 100, steal 100: a total of 1850.
        var cpu = IostatReport.ComputeCpu(before, after);
        Assert.Equal(100.0 * 600 / 1850, cpu.User, 9);         // 32.43, not 200 / 1850 (guest taken out) nor 600 / 2290 (guest added)
        Assert.Equal(100.0 * 100 / 1850, cpu.Nice, 9);
        Assert.Equal(100.0 * 450 / 1850, cpu.System, 9);       // 300 + 50 + 100
        Assert.Equal(100.0 * 100 / 1850, cpu.Iowait, 9);
        Assert.Equal(100.0 * 100 / 1850, cpu.Steal, 9);
        Assert.Equal(100.0 * 500 / 1850, cpu.Idle, 9);
        Assert.Equal("          32.43    5.41   24.32    5.41    5.41   27.03", IostatReport.FormatCpu(cpu));

        Assert.Equal(0, IostatReport.ComputeCpu(after, after with { Idle = 8490, User = 1610 }).Idle);
        var still = IostatReport.ComputeCpu(after, after);
        Assert.Equal(new IostatCpu(0, 0, 0, 0, 0, 0), still);
    }

    // sysstat's tests/root1 sda and sdq stat files, whose first report covers the 7192.55 s since
    // boot (tests/root1/proc/uptime), and tests/root2 sdq 31.17 s later.
    private static readonly DiskStatSample Sda = DiskStatSample.Parse("49601 2822 3195498 623970 12180 9784 821088 117109 0 32862 714408 0 0 0 0\n");
    private static readonly DiskStatSample Sdq1 = DiskStatSample.Parse("49401 2722 3195008 622070 0 0 0 0 0 32562 714008 8638 547 362610 123000\n");
    private static readonly DiskStatSample Sdq2 = DiskStatSample.Parse("49601 2822 3195498 623970 0 0 0 0 0 32862 714408 8738 627 363610 125000\n");

    [Fact]
    public void Short_and_human_rows_are_sysstats_on_sysstats_own_test_data()
    {
        var sda = IostatReport.Compute("sda", default, Sda, 7_192_550);
        var sdq = IostatReport.Compute("sdq", default, Sdq1, 7_192_550);

        // tests/expected.iostat (iostat 1 2), expected.iostat-s (iostat -s 1 2).
        Assert.Equal("sda               8.59       222.14        57.08         0.00    1597749     410544          0", IostatReport.FormatBasic(sda));
        Assert.Equal("sda               8.59       222.14        57.08    1597749     410544", IostatReport.Format(sda, extended: false, new IostatLayout(Short: true)));
        Assert.Equal("sdq               8.07       222.11        25.21    1597504     181305", IostatReport.Format(sdq, extended: false, new IostatLayout(Short: true)));

        // expected.iostat-xs (iostat -xs 2 3): await is (r + w + d ticks) / (r + w + d I/Os) =
        // 741079 / 61781 = 12.00, areq-sz 4016586 sectors / 61781 / 2 = 32.51 kB.
        Assert.Equal(741079.0 / 61781, sda.Await, 9);
        Assert.Equal(4016586.0 / 61781 / 2, sda.RequestKb, 9);
        Assert.Equal("sda               8.59    279.22     1.75   12.00    32.51    0.10   0.46", IostatReport.Format(sda, extended: true, new IostatLayout(Short: true)));
        Assert.Equal("sdq               9.62     23.90     5.77   13.00     2.48    0.01   0.96", IostatReport.Format(IostatReport.Compute("sdq", Sdq1, Sdq2, 31_170), extended: true, new IostatLayout(Short: true)));

        // expected.iostat-human (iostat --human) and expected.iostat-h (iostat -dh -p ALL):
        // kB scaled by 1024 while 1024 or more, one decimal, its unit's letter; -h also puts the
        // name last.
        Assert.Equal("sda               8.59       222.1k        57.1k         0.0k       1.5G     400.9M       0.0k", IostatReport.Format(sda, extended: false, new IostatLayout(Human: true)));
        Assert.Equal("     8.59       222.1k        57.1k         0.0k       1.5G     400.9M       0.0k sda", IostatReport.Format(sda, extended: false, new IostatLayout(Human: true, Pretty: true)));
        Assert.Equal("     8.07       222.1k         0.0k        25.2k       1.5G       0.0k     177.1M sdq", IostatReport.Format(sdq, extended: false, new IostatLayout(Human: true, Pretty: true)));

        // expected.iostat-x-pretty (iostat -x --pretty): the extended report in four parts.
        var pretty = new IostatLayout(Pretty: true);
        Assert.Equal("    6.90    222.14     0.39   5.38   12.58    32.21 sda", IostatReport.Format(sda, extended: true, pretty, part: 1));
        Assert.Equal("    1.69     57.08     1.36  44.55    9.61    33.71 sda", IostatReport.Format(sda, extended: true, pretty, part: 2));
        Assert.Equal("    0.00      0.00     0.00   0.00    0.00     0.00 sda", IostatReport.Format(sda, extended: true, pretty, part: 3));
        Assert.Equal("    0.00    0.00    0.10   0.46 sda", IostatReport.Format(sda, extended: true, pretty, part: 4));

        // -x --human (by sysstat's cprintf_unit and cprintf_xpc): throughput and sizes scaled,
        // percentages with one decimal and a %.
        Assert.Equal("sda              6.90    222.1k     0.39   5.4%   12.58    32.2k    1.69     57.1k     1.36  44.5%    9.61    33.7k    0.00      0.0k     0.00   0.0%    0.00     0.0k    0.00    0.00    0.10   0.5%",
            IostatReport.Format(sda, extended: true, new IostatLayout(Human: true)));
    }

    private static IostatCommand.Sampling Sampling(double seconds, params (string Name, DiskStatSample Stat)[] devices) =>
        new(TimeSpan.FromSeconds(seconds), devices.ToDictionary(d => d.Name, d => (d.Stat, TimeSpan.FromSeconds(seconds))));

    [Fact]
    public void Values_stand_under_their_headers()
    {
        // Every column's right edge in the row is the right edge of its header.
        foreach (var (header, row) in new[]
        {
            (IostatReport.ExtendedHeader, IostatReport.FormatExtended(IostatReport.Compute("nullb0", Before, After, 1000))),
            (IostatReport.BasicHeader, IostatReport.FormatBasic(IostatReport.Compute("nullb0", Before, After, 1000))),
        })
        {
            Assert.Equal(header.Length, row.Length);
            static IEnumerable<int> Ends(string line) => Enumerable.Range(1, line.Length - 1).Where(i => line[i] == ' ' && line[i - 1] != ' ').Append(line.Length);
            Assert.Equal(Ends(header).Skip(1), Ends(row).Skip(1));
        }
    }

    [Fact]
    public void An_interval_of_0_is_the_one_report_since_the_start()
    {
        // sysstat: "if (!interval) count = 1", and -y needs an interval above 0 to drop the
        // report since boot; "iostat 0" was a usage error (an outside audit).
        foreach (var args in new[] { new[] { "0" }, ["-y", "0"], ["-x", "nullb0", "0"] })
        {
            var options = IostatOptions.Parse(args);
            Assert.Equal(1, options.Count);
            Assert.True(options.SinceStart);
        }
    }

    [Theory]
    [InlineData("1", "2", "3")]
    [InlineData("0", "3")]
    [InlineData("-1")]
    [InlineData("1", "0")]
    [InlineData("-q")]
    [InlineData("1", "nullb0")]
    [InlineData("/dev/")]
    [InlineData("/dev/a/b")]
    public async Task Bad_arguments_are_usage_errors(params string[] args)
    {
        using var error = new StringWriter();
        Assert.Equal(2, await CommandLine.RunAsync(["iostat", "--port=1", .. args], TextWriter.Null, error));
        Assert.Contains("See 'actorblk iostat --help'.", error.ToString(), StringComparison.Ordinal);
    }
}
