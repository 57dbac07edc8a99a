using ActorBlk.Hardware.Queues;
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
