using System.Diagnostics;
using System.Text.Json;
using ActorBlk.Hardware.Requests;
using ActorBlk.Host.Bench;
using ActorBlk.Host.Commands;
using Xunit;

namespace ActorBlk.Host.Tests;

/// <summary>
/// fio's other output formats, which the bench refused: <c>--output-format=json+</c> (the JSON
/// with each latency's histogram <c>bins</c>, fio 3.33 stat.c <c>add_ddir_lat_json</c>),
/// <c>terse</c> (stat.c <c>show_thread_status_terse_all</c>, version 3) and comma lists of
/// formats (init.c <c>parse_output_format</c>; each printed, terse then JSON then normal). The
/// expected values are worked out by hand from fio's formulas.
/// </summary>
public sealed class BenchOutputFormatSpec
{
    // fio 3.33 stat.c plat_val_to_idx and plat_idx_to_val (FIO_IO_U_PLAT_BITS 6, FIO_IO_U_PLAT_VAL 64):
    // below 128 ns a value is its own bucket; above, msb m gives error_bits = m - 6, the index
    // (error_bits + 1) * 64 + ((value >> error_bits) & 63), and the bucket's value
    // 2^(error_bits + 6) + (k + 0.5) * 2^error_bits with k = index % 64.
    [Theory]
    [InlineData(1L, 1, 1L)]
    [InlineData(127L, 127, 127L)]
    [InlineData(128L, 128, 129L)]            // msb 7, error_bits 1: 128 + 0.5 * 2
    [InlineData(129L, 128, 129L)]
    [InlineData(130L, 129, 131L)]            // k = 1: 128 + 1.5 * 2
    [InlineData(255L, 191, 255L)]            // k = 63: 128 + 63.5 * 2
    [InlineData(256L, 192, 258L)]            // msb 8, error_bits 2: 256 + 0.5 * 4
    [InlineData(1000L, 317, 1004L)]          // msb 9, error_bits 3: 256 + 61 = 317; 512 + 61.5 * 8
    [InlineData(10_000L, 526, 10_048L)]      // msb 13, error_bits 7: 512 + 14; 8192 + 14.5 * 128
    [InlineData(22_634L, 600, 22_656L)]      // fio 3.33's own json+ on the null engine: max 22634, bin "22656"
    [InlineData((1L << 34) - 1, 1855, 17_112_760_320L)] // the last bucket: 2^33 + 63.5 * 2^27
    [InlineData(LatencyRecorder.HighestNs, 1855, 17_112_760_320L)] // past it, fio's index is clamped to the last
    public void A_latency_lands_in_fios_bucket_with_fios_value(long ns, int index, long value)
    {
        Assert.Equal(index, LatencyRecorder.FioPlatIndex(ns));
        Assert.Equal(value, LatencyRecorder.FioPlatValue(index));
    }

    [Fact]
    public void Every_bucket_of_the_recorder_lies_inside_one_of_fios()
    {
        // The lowest and the highest value of each HDR bucket have the same fio bucket, so the
        // recorder's counts give fio's exactly (no value of the bucket could go elsewhere).
        for (var i = 1; i < LatencyRecorder.CountsLength - 1; i++)
        {
            var lowest = LatencyRecorder.ValueAt(i);
            var highest = LatencyRecorder.ValueAt(i + 1) - 1;
            Assert.True(LatencyRecorder.FioPlatIndex(lowest) == LatencyRecorder.FioPlatIndex(highest), $"HDR index {i} ({lowest}..{highest}) spans fio buckets");
        }
    }

    [Fact]
    public void Json_plus_writes_fios_bins_where_there_are_percentiles()
    {
        var result = Result(new BenchOptions(), [100, 128, 129, 130, 1000, 1003, 22_634, 60_000_000_000]);

        var plain = Job(BenchReport.Json(result));
        Assert.False(plain.GetProperty("read").GetProperty("clat_ns").TryGetProperty("bins", out _));

        var job = Job(BenchReport.Json(result, plus: true));
        var bins = job.GetProperty("read").GetProperty("clat_ns").GetProperty("bins");
        Assert.Equal(
            [("100", 1L), ("129", 2L), ("131", 1L), ("1004", 2L), ("22656", 1L), ("17112760320", 1L)],
            bins.EnumerateObject().Select(b => (b.Name, b.Value.GetInt64())));
        Assert.Equal(job.GetProperty("read").GetProperty("clat_ns").GetProperty("N").GetInt64(), bins.EnumerateObject().Sum(b => b.Value.GetInt64()));

        // fio writes bins only with percentiles and samples: not in lat_ns (lat_percentiles=0),
        // slat_ns, a direction without I/O, trim or sync.
        Assert.False(job.GetProperty("read").GetProperty("lat_ns").TryGetProperty("bins", out _));
        Assert.False(job.GetProperty("read").GetProperty("slat_ns").TryGetProperty("bins", out _));
        Assert.False(job.GetProperty("write").GetProperty("clat_ns").TryGetProperty("bins", out _));
        Assert.False(job.GetProperty("trim").GetProperty("clat_ns").TryGetProperty("bins", out _));
        Assert.False(job.GetProperty("sync").GetProperty("lat_ns").TryGetProperty("bins", out _));

        // With --lat_percentiles lat_ns has its percentiles and so its bins.
        var lat = Job(BenchReport.Json(result with { Options = new BenchOptions { LatPercentiles = true } }, plus: true));
        Assert.Equal(bins.ToString(), lat.GetProperty("read").GetProperty("lat_ns").GetProperty("bins").ToString());
    }

    [Theory]
    [InlineData("normal", (int)(OutputFormat.Normal))]
    [InlineData("json", (int)(OutputFormat.Json))]
    [InlineData("json+", (int)(OutputFormat.Json | OutputFormat.JsonPlus))]
    [InlineData("terse", (int)(OutputFormat.Terse))]
    [InlineData("minimal", (int)(OutputFormat.Terse))]
    [InlineData("csv", (int)(OutputFormat.Terse))]
    [InlineData("normal,json", (int)(OutputFormat.Normal | OutputFormat.Json))]
    [InlineData("json,json+", (int)(OutputFormat.Json | OutputFormat.JsonPlus))]
    [InlineData("terse,normal,json+", (int)(OutputFormat.Terse | OutputFormat.Normal | OutputFormat.Json | OutputFormat.JsonPlus))]
    public void Output_format_takes_fios_names_and_comma_lists(string given, int format)
    {
        Assert.Equal((OutputFormat)format, BenchCommandLine.Parse($"--output-format={given}").Output);
        Assert.Equal((OutputFormat)format, BenchCommandLine.Parse("--output_format", given).Output);
    }

    // fio's --minimal (init.c parse_cmd_line, case 'm': output_format = FIO_OUTPUT_TERSE) sets the
    // formats, as --output-format does (parse_output_format starts from 0), so the later of the
    // two wins: fio 3.33 prints the terse line alone for "--output-format=json --minimal" and the
    // JSON alone for "--minimal --output-format=json". The bench refused --minimal.
    [Theory]
    [InlineData("--minimal", (int)OutputFormat.Terse)]
    [InlineData("--minimal --minimal", (int)OutputFormat.Terse)]
    [InlineData("--output-format=json --minimal", (int)OutputFormat.Terse)]
    [InlineData("--output-format=normal,json+ --minimal", (int)OutputFormat.Terse)]
    [InlineData("--minimal --output-format=json", (int)OutputFormat.Json)]
    [InlineData("--minimal --output_format json,normal", (int)(OutputFormat.Json | OutputFormat.Normal))]
    [InlineData("--output-format=json --minimal --output-format=normal", (int)OutputFormat.Normal)]
    public void Minimal_is_fios_terse_output_and_the_later_of_it_and_output_format_wins(string args, int format) =>
        Assert.Equal((OutputFormat)format, BenchCommandLine.Parse(args.Split(' ')).Output);

    // fio 3.33's --append-terse (init.c case 'f': output_format |= FIO_OUTPUT_TERSE, its optional
    // argument ignored): the terse line as well as the formats set before it; a later
    // --output-format or --minimal replaces them all. fio 3.33 printed the terse line before the
    // normal report ("--append-terse" alone) and before the JSON ("--output-format=json
    // --append-terse"), and the JSON alone for "--append-terse=foo --output-format=json". The
    // bench refused the option.
    [Theory]
    [InlineData("--append-terse", (int)(OutputFormat.Normal | OutputFormat.Terse))]
    [InlineData("--append-terse=foo", (int)(OutputFormat.Normal | OutputFormat.Terse))]
    [InlineData("--output-format=json --append-terse", (int)(OutputFormat.Json | OutputFormat.Terse))]
    [InlineData("--append-terse --output-format=json", (int)OutputFormat.Json)]
    [InlineData("--append-terse --minimal", (int)OutputFormat.Terse)]
    [InlineData("--minimal --append-terse", (int)OutputFormat.Terse)]
    [InlineData("--append-terse --output-format=json --append-terse", (int)(OutputFormat.Json | OutputFormat.Terse))]
    public void Append_terse_adds_fios_terse_line_to_the_formats_before_it(string args, int format) =>
        Assert.Equal((OutputFormat)format, BenchCommandLine.Parse(args.Split(' ')).Output);

    [Fact]
    public void Append_terse_prints_the_terse_line_first_as_fio_3_33_does()
    {
        var result = Result(new BenchOptions { Name = "append" }, [1500]);
        var text = BenchReport.Render(result, BenchCommandLine.Parse("--append-terse").Output);
        var newline = text.IndexOf('\n');
        Assert.Equal(BenchReport.Terse(result), text[..(newline + 1)]);
        Assert.Equal(BenchReport.Human(result), text[(newline + 1)..]);
    }

    [Fact]
    public void Minimal_takes_no_value_as_in_fio()
    {
        // fio's getopt: "option '--minimal' doesn't allow an argument".
        var error = Assert.Throws<UsageException>(() => BenchCommandLine.Parse("--minimal=1"));
        Assert.Contains("'1'", error.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("xml")]
    [InlineData("json,")]
    [InlineData(",json")]
    [InlineData("json,,normal")]
    [InlineData("JSON")]
    public void An_unknown_format_in_the_list_is_a_usage_error_as_in_fio(string given)
    {
        var error = Assert.Throws<UsageException>(() => BenchCommandLine.Parse($"--output-format={given}"));
        Assert.Equal($"option --output-format: '{given}' is not normal, json, json+, terse, minimal or csv, or a comma-separated list of them.", error.Message);
    }

    [Fact]
    public void Several_formats_print_each_in_fios_order_terse_json_normal()
    {
        var result = Result(new BenchOptions { Name = "order" }, [1500]);
        var text = BenchReport.Render(result, BenchCommandLine.Parse("--output-format=normal,json+,terse").Output);

        var jsonStart = text.IndexOf("{\n", StringComparison.Ordinal);
        var normalStart = text.IndexOf("order: (groupid=0", StringComparison.Ordinal);
        Assert.StartsWith("3;actorblk-bench-1;order;0;0;", text, StringComparison.Ordinal);
        Assert.Equal(text.IndexOf('\n') + 1, jsonStart);
        Assert.True(normalStart > jsonStart);
        var plus = JsonDocument.Parse(text[jsonStart..normalStart]).RootElement;
        Assert.True(plus.GetProperty("jobs")[0].GetProperty("read").GetProperty("clat_ns").TryGetProperty("bins", out _));

        // One format alone is that format alone, as before: the JSON document and a newline, or the summary.
        var json = BenchReport.Render(result, OutputFormat.Json);
        Assert.StartsWith("{\n", json, StringComparison.Ordinal);
        Assert.EndsWith("}\n", json, StringComparison.Ordinal);
        Assert.False(JsonDocument.Parse(json).RootElement.GetProperty("jobs")[0].GetProperty("read").GetProperty("clat_ns").TryGetProperty("bins", out _));
        Assert.Equal(BenchReport.Human(result), BenchReport.Render(result, OutputFormat.Normal));
    }

    [Fact]
    public void Terse_is_fios_version_3_line()
    {
        var expected = string.Concat(
            "3;actorblk-bench-1;terse;0;5",
            TerseRead, TerseBandwidth,
            // write: nothing moved, so runtime 0 (fio counts a direction's runtime only when it
            // moved bytes), no latencies (fio's percentiles of no samples are 0), no samples.
            TerseIdle,
            TerseTail);
        Assert.Equal(expected, BenchReport.Terse(TerseResult()));
        Assert.Equal(121 + 2, BenchReport.Terse(TerseResult()).Split(';').Length);   // fio 3.33 with continue_on_error: 123 fields
        Assert.Equal(expected, BenchReport.Terse(TerseResult(3)));
    }

    // fio 3.33 stat.c show_thread_status_terse_all and show_ddir_status_terse: version 2 has no
    // fio version field and a trim direction, 4 the version field and trim, 5 as 4 with, after each
    // direction's bandwidth samples, their count and the IOPS samples (min, max, mean, deviation,
    // count). Field counts as fio 3.33's null engine prints them (161, 121, 162, 180), plus the two
    // continue_on_error fields. The bench wrote version 3 whatever was asked.
    [Theory]
    [InlineData(2, 161)]
    [InlineData(4, 162)]
    [InlineData(5, 180)]
    public void Terse_version_gives_fios_line_of_that_version(int version, int fields)
    {
        var expected = version switch
        {
            2 => string.Concat("2;terse;0;5", TerseRead, TerseBandwidth, TerseIdle, TerseIdle, TerseTail),
            4 => string.Concat("4;actorblk-bench-1;terse;0;5", TerseRead, TerseBandwidth, TerseIdle, TerseIdle, TerseTail),
            // read's samples: 2 of bandwidth; IOPS 1 and 2, mean 1.5, deviation sqrt(0.5).
            _ => string.Concat(
                "5;actorblk-bench-1;terse;0;5",
                TerseRead, TerseBandwidth, ";2;1;2;1.500000;0.707107;2",
                TerseIdle, ";0;0;0;0.000000;0.000000;0",
                TerseIdle, ";0;0;0;0.000000;0.000000;0",
                TerseTail),
        };

        var line = BenchReport.Terse(TerseResult(version));
        Assert.Equal(expected, line);
        Assert.Equal(fields + 2, line.Split(';').Length);
        Assert.Equal(line, BenchReport.Render(TerseResult(version), BenchCommandLine.Parse("--minimal", $"--terse-version={version}").Output));
    }

    [Theory]
    [InlineData("2", 2)]
    [InlineData("3", 3)]
    [InlineData("4", 4)]
    [InlineData("5", 5)]
    public void Terse_version_takes_fios_versions(string given, int version)
    {
        Assert.Equal(version, BenchCommandLine.Parse($"--terse-version={given}").TerseVersion);
        Assert.Equal(version, BenchCommandLine.Parse("--terse-version", given).TerseVersion);
        Assert.Equal(3, BenchCommandLine.Parse().TerseVersion);
    }

    // fio: "fio: bad terse version format" and exit 1; here a usage error (exit 2, every
    // actorblk command's code for one) naming the option and the versions.
    [Theory]
    [InlineData("1")]
    [InlineData("6")]
    [InlineData("three")]
    public void Terse_version_refuses_what_fio_refuses(string given)
    {
        var error = Assert.Throws<UsageException>(() => BenchCommandLine.Parse($"--terse-version={given}"));
        Assert.Equal($"option --terse-version: '{given}' is not a whole number from 2 to 5.", error.Message);
    }

    // The terse line's read of TerseResult: four reads of 4 KiB in one second (500 ns, 1.5 us,
    // 2.5 us, 1.2 ms).
    private const string TerseRead =
        // read: KiB, bw = 1000 * 16384 / 1000 / 1024, iops = 1000 * 4 / 1000, runtime ms.
        ";16;16;4;1000"
        + ";0;0;0.000000;0.000000"                        // slat: none
        + ";0;1200;301.125000;599.250556"                 // clat in us: min 500/1000, max, mean 1204500/4, sample deviation
        // The percentiles (us), fio's (calc_clat_percentiles): of 4 latencies, 1..20% take the
        // 1st (rank 4 * p / 100 rounded up: 1), 30..50% the 2nd, 60..70% the 3rd, 80% on the 4th,
        // each its fio bucket's middle: 500 -> 256 + 61.5 * 4 = 502, 1500 -> 1024 + 29.5 * 16 =
        // 1496, 2500 -> 2048 + 14.5 * 32 = 2512, 1.2 ms -> 2^20 + 9.5 * 2^14 = 1204224, each
        // / 1000; then 0%=0 three times. (HdrHistogram's gave 0, 0, 1, 1, 1, 2, 2, 1200.)
        + ";1.000000%=0;5.000000%=0;10.000000%=0;20.000000%=0;30.000000%=1;40.000000%=1;50.000000%=1;60.000000%=2"
        + ";70.000000%=2;80.000000%=1204;90.000000%=1204;95.000000%=1204;99.000000%=1204;99.500000%=1204;99.900000%=1204"
        + ";99.950000%=1204;99.990000%=1204;0%=0;0%=0;0%=0"
        + ";0;1200;301.125000;599.250556";                // lat: the same measurement

    // bw: min, max, mean 6 * 100 / (16384 * 1000 / 1000 / 1024) = 37.5%, mean, deviation sqrt(8).
    private const string TerseBandwidth = ";4;8;37.500000%;6.000000;2.828427";

    // A direction that moved nothing (the write, trim): runtime 0, no latencies (fio's
    // percentiles of no samples are 0), no samples.
    private static readonly string TerseIdle = ";0;0;0;0;0;0;0.000000;0.000000;0;0;0.000000;0.000000"
        + string.Concat(BenchReport.Percentiles.Select(p => $";{p:0.000000}%=0")) + ";0%=0;0%=0;0%=0"
        + ";0;0;0.000000;0.000000;0;0;0.000000%;0.000000;0.000000";

    private const string TerseTail =
        ";12.500000%;0.125000%;0;0;0"                     // cpu, ctx, majf, minf
        + ";100.0%;0.0%;0.0%;0.0%;0.0%;0.0%;0.0%"         // depth 1
        // Shares of all 5 I/Os, the failed write too (fio's total_io_u): us <2 holds 1.5 us (20%)
        // plus the 500 ns one folded in (20%); <4 2.5 us; ms: <2 1.2 ms.
        + ";40.00%;20.00%;0.00%;0.00%;0.00%;0.00%;0.00%;0.00%;0.00%;0.00%"
        + ";20.00%;0.00%;0.00%;0.00%;0.00%;0.00%;0.00%;0.00%;0.00%;0.00%;0.00%;0.00%"
        + ";1;5"                                          // total errors, first error (continue_on_error)
        + "\n";

    // Four reads of 4 KiB in one second (500 ns, 1.5 us, 2.5 us, 1.2 ms), two bandwidth
    // samples (4 and 8 KiB/s, 1 and 2 IOPS), one failed write (EIO).
    private static BenchResult TerseResult(int? version = null)
    {
        var options = version is { } v ? new BenchOptions { Name = "terse", TerseVersion = v } : new BenchOptions { Name = "terse" };
        var result = Result(options, [500, 1500, 2500, 1_200_000]) with
        {
            UsrCpu = 12.5,
            SysCpu = 0.125,
            ReadSamples = [new RateSample(4, 1), new RateSample(8, 2)],
            FirstError = BlockStatus.IoError,
        };
        result.Write.Failed = 1;
        return result;
    }

    [Theory]
    [InlineData(0.125, 2, "0.12")]         // a tie goes to even, as glibc's printf (.NET's F2 gives 0.13)
    [InlineData(0.375, 2, "0.38")]
    [InlineData(1.0 / 128, 6, "0.007812")]
    [InlineData(2.5, 0, "2")]
    [InlineData(100.0, 2, "100.00")]
    [InlineData(-0.0, 6, "-0.000000")]
    [InlineData(0.1, 20, "0.10000000000000000555")]
    [InlineData(1e21, 1, "1000000000000000000000.0")]
    [InlineData(double.NaN, 6, "-nan")]    // x86's default NaN (0.0 / 0.0) has its sign bit set
    [InlineData(double.PositiveInfinity, 6, "inf")]
    public void Terse_numbers_are_written_as_glibcs_printf_writes_them(double value, int decimals, string text) =>
        Assert.Equal(text, BenchReport.CFixed(value, decimals));

    private static BenchResult Result(BenchOptions options, long[] readNs)
    {
        var reads = new OpStats { Ios = readNs.Length, Bytes = readNs.Length * 4096L };
        foreach (var ns in readNs)
        {
            reads.Total.RecordTicks((long)(ns * (Stopwatch.Frequency / 1e9)));
        }

        return new BenchResult(options, reads, new OpStats(), TimeSpan.FromSeconds(1), TimeSpan.FromSeconds(1),
            Submitted: readNs.Length, Completed: readNs.Length, Errors: 0, Timeouts: 0, UsrCpu: 0, SysCpu: 0, DeviceDescription: "spec");
    }

    private static JsonElement Job(string json) => JsonDocument.Parse(json).RootElement.GetProperty("jobs")[0];
}
