using ActorBlk.Hardware.Queues;
using ActorBlk.Host.Bench;
using ActorBlk.Host.Commands;
using Xunit;

namespace ActorBlk.Host.Tests;

/// <summary>
/// Issue 12 item 5: `actorblk`'s command line through System.CommandLine, run in process: help for
/// every command, suggestions for a misspelt option or command, exit code 2 for a usage error,
/// fio's spellings in both forms, and the [suggest] directive shell completion uses.
/// </summary>
public sealed class CommandLineSpec
{
    private static async Task<(int Code, string Out, string Err)> Run(params string[] args)
    {
        using var output = new StringWriter();
        using var error = new StringWriter();
        var code = await CommandLine.RunAsync(args, output, error);
        return (code, output.ToString(), error.ToString());
    }

    [Theory]
    [InlineData("serve")]
    [InlineData("devices")]
    [InlineData("bench")]
    [InlineData("sysfs")]
    [InlineData("sysfs list")]
    [InlineData("sysfs cat")]
    [InlineData("sysfs write")]
    [InlineData("hotplug")]
    [InlineData("hotplug offline")]
    [InlineData("iostat")]
    public async Task Every_command_has_help(string command)
    {
        // iostat's -h is sysstat's (human readable, IostatOptionsSpec): its help is --help or -?.
        foreach (var help in command == "iostat" ? new[] { "--help", "-?" } : ["--help", "-h"])
        {
            var (code, output, _) = await Run([.. command.Split(' '), help]);

            Assert.Equal(0, code);
            // The usage line starts with the executable's name: actorblk, or the test host here.
            Assert.Contains("Usage:", output, StringComparison.Ordinal);
            Assert.Contains($" {command} ", output, StringComparison.Ordinal);
        }
    }

    [Fact]
    public async Task Help_lists_every_command_and_without_a_command_is_a_usage_error()
    {
        var (code, output, _) = await Run("help");
        Assert.Equal(0, code);
        foreach (var command in new[] { "serve", "devices", "bench", "sysfs", "hotplug", "iostat" })
        {
            Assert.Contains($"  {command} ", output, StringComparison.Ordinal);
        }

        Assert.Equal(2, (await Run()).Code);
        var benchHelp = await Run("help", "bench");
        Assert.Equal(0, benchHelp.Code);
        Assert.Contains("--iodepth", benchHelp.Out, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("bench --iodepht=4", "--iodepth")]
    [InlineData("bench --numjbos 2", "--numjobs")]
    [InlineData("bench --write_lat_lgo=x", "--write_lat_log")]
    [InlineData("benhc --rw=read", "bench")]
    [InlineData("devices --nodes 127.0.0.1:4053", "--node")]
    public async Task A_misspelt_option_or_command_is_a_usage_error_with_a_suggestion(string args, string suggestion)
    {
        var (code, _, error) = await Run(args.Split(' '));

        Assert.Equal(2, code);
        Assert.Contains("Did you mean", error, StringComparison.Ordinal);
        Assert.Contains("\n" + suggestion + "\n", error.ReplaceLineEndings("\n"), StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("bench --iodepth=0", "option --iodepth: '0' is not a whole number from 1 to 65536.")]
    [InlineData("bench --rw=sideways", "option --rw: 'sideways' is not read, write, randread, randwrite, rw, readwrite or randrw.")]
    [InlineData("bench --bs=4q", "option --bs: '4q' is not a size")]
    [InlineData("bench --direct=2", "option --direct: '2' is not 0 or 1.")]
    [InlineData("bench --runtime=soon", "option --runtime: 'soon' is not a duration in seconds.")]
    [InlineData("bench --runtime=1e30", "option --runtime: '1e30' is longer than the longest wait, 4294967 s (49 days).")] // aborted the process: an OverflowException, exit 134 (an outside audit)
    [InlineData("bench --runtime=1e9", "option --runtime: '1e9' is longer than the longest wait")] // failed the run with a timer's ArgumentOutOfRangeException and its stack
    [InlineData("bench --ramp_time=100000h", "option --ramp_time: '100000h' is longer than the longest wait")]
    [InlineData("bench --status-interval=1e300d", "option --status-interval: '1e300d' is longer than the longest wait")]
    [InlineData("bench --bs=2g", "option --bs: 2147483648 is more than the largest block size, 2147479552 bytes.")] // "2147483647 is not a multiple of 512" before
    [InlineData("bench --bs=2147483136 --size=4g", "option --bs: 2147483136 is more than the largest block size, 2147479552 bytes.")] // ran, and failed at its first I/O with exit 1
    [InlineData("bench --plot=out.jpg", "option --plot: 'out.jpg' does not end in .png or .svg.")]
    [InlineData("bench --log_avg_msec=-1", "option --log_avg_msec")]
    [InlineData("bench --iodepth", "--iodepth")]
    [InlineData("bench extra", "Unrecognized command or argument 'extra'")]
    [InlineData("bench --join=127.0.0.1:1 --device=vol-a@bogus", "option --device: 'bogus' is not HOST:PORT")]
    [InlineData("bench --join=127.0.0.1:1 --device=@127.0.0.1:4053", "option --device: '@127.0.0.1:4053' is not NAME or NAME@HOST:PORT.")]
    [InlineData("serve --port=70000", "option --port: '70000' is not a whole number from 0 to 65535.")]
    [InlineData("sysfs", "Required command was not provided.")]
    [InlineData("sysfs cat", "Required argument 'PATH' missing")]
    [InlineData("hotplug offline three", "'three' is not a CPU number.")]
    [InlineData("frobnicate", "Unrecognized command or argument 'frobnicate'")]
    public async Task Usage_errors_exit_with_2_and_say_what_is_wrong(string args, string message)
    {
        var (code, output, error) = await Run(args.Split(' '));

        Assert.Equal(2, code);
        Assert.Contains(message, error, StringComparison.Ordinal);
        Assert.DoesNotContain(message, output, StringComparison.Ordinal);
    }

    // An outside CLI fuzzing audit: `serve --nbd-listen ''` served without an NBD export (off is
    // spelled off) and `sysfs list ''` listed every path (as no PREFIX), both in silence. (The
    // configuration named does not exist, so a serve the parser let through stops there.)
    [Theory]
    [InlineData("option --nbd-listen: an empty value is not ADDRESS:PORT or unix:PATH; write off to serve without an NBD export.", "serve", "--config", "/nonexistent/node.conf", "--nbd-listen", "")]
    [InlineData("Required argument missing for option: '--nbd-listen'", "serve", "--config", "/nonexistent/node.conf", "--nbd-listen=")] // the parser's own refusal, as before
    [InlineData("option --nbd-listen: 'null' is not ADDRESS:PORT (e.g. 127.0.0.1:10809, [::1]:10809), unix:PATH or off.", "serve", "--config", "/nonexistent/node.conf", "--nbd-listen", "null")]
    [InlineData("option --nbd-listen: 'unix:' names no path (e.g. unix:/run/actorblk/nbd.sock).", "serve", "--config", "/nonexistent/node.conf", "--nbd-listen", "unix:")]
    [InlineData("option --nbd-listen: 'unix:nbd.sock' is a relative path; a Unix socket's path must be absolute (e.g. unix:/run/actorblk/nbd.sock): a relative one would depend on the directory the node starts in.", "serve", "--config", "/nonexistent/node.conf", "--nbd-listen", "unix:nbd.sock")]
    [InlineData("option --nbd-listen: '127.0.0.1' is not ADDRESS:PORT", "serve", "--config", "/nonexistent/node.conf", "--nbd-listen", "127.0.0.1")]
    [InlineData("option --nbd-listen: an empty value is not ADDRESS:PORT or unix:PATH; write off to serve without an NBD export.", "serve", "--config", "/nonexistent/node.conf", "--nbd-listen", "off", "--nbd-listen", "")]
    [InlineData("PREFIX is empty: give none to list every path.", "sysfs", "list", "", "--port", "1")]
    public async Task An_empty_value_that_meant_something_is_a_usage_error_naming_the_option(string message, params string[] args)
    {
        var (code, output, error) = await Run(args);

        Assert.Equal(2, code);
        Assert.Contains(message, error, StringComparison.Ordinal);
        Assert.Empty(output);
    }

    [Fact]
    public void An_empty_nbd_listen_setting_is_refused_naming_the_key()
    {
        var refused = Assert.Throws<Akka.Configuration.ConfigurationException>(() => ActorBlk.Actors.Nbd.NbdExportSettings.ParseListen(""));
        Assert.Contains("actorblk.nbd.listen: '' is not ADDRESS:PORT", refused.Message, StringComparison.Ordinal);
        Assert.Null(ActorBlk.Actors.Nbd.NbdExportSettings.ParseListen("off"));
    }

    [Theory]
    [InlineData("listen", "actorblk.nbd.listen: null is not a value here; remove the key for the default (off).")]
    [InlineData("tls", "actorblk.nbd.tls: null is not a value here")]
    [InlineData("max-payload", "actorblk.nbd.max-payload: null is not a value here")]
    [InlineData("certificate", "actorblk.nbd.certificate: null is not a value here; remove the key for the default (none).")]
    public void A_null_nbd_setting_is_refused_naming_the_key(string key, string message)
    {
        // `listen = null` failed with "Value cannot be null." naming no key; `tls = null` with a
        // NullReferenceException.
        var config = Akka.Configuration.ConfigurationFactory.ParseString($"actorblk.nbd.{key} = null");
        var refused = Assert.Throws<Akka.Configuration.ConfigurationException>(() => ActorBlk.Actors.Nbd.NbdExportSettings.Create(config));
        Assert.Contains(message, refused.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Fio_spellings_parse_as_name_equals_value_and_as_name_space_value()
    {
        string[] equals = ["--rw=randwrite", "--bs=64k", "--iodepth=32", "--numjobs=2", "--size=1g", "--runtime=10s", "--ramp_time=500ms",
            "--direct=0", "--time_based", "--group_reporting=1", "--output-format=json", "--eta=never", "--status-interval=2",
            "--write_lat_log=job", "--write_iops_log=job", "--log_avg_msec=100", "--log_offset=1", "--plot=run.svg"];
        var spaced = equals.SelectMany(a => a.Split('=', 2)).ToArray();

        var options = BenchCommandLine.Parse(equals);
        Assert.Equal(options, BenchCommandLine.Parse(spaced));
        Assert.Equal(IoPattern.RandWrite, options.Pattern);
        Assert.Equal(64 * 1024, options.BlockSize);
        Assert.Equal(32, options.IoDepth);
        Assert.Equal(2, options.NumJobs);
        Assert.Equal(1L << 30, options.Size);
        Assert.Equal(TimeSpan.FromSeconds(10), options.Runtime);
        Assert.Equal(TimeSpan.FromMilliseconds(500), options.RampTime);
        Assert.False(options.Direct);
        Assert.True(options.Json);
        Assert.False(options.Eta);
        Assert.Equal(TimeSpan.FromSeconds(2), options.StatusInterval);
        Assert.Equal("job", options.LatLog);
        Assert.Equal("job", options.IopsLog);
        Assert.Equal(100, options.LogAvgMsec);
        Assert.True(options.LogOffset);
        Assert.Equal("run.svg", options.Plot);
    }

    [Fact]
    public void A_boolean_given_alone_is_on_and_takes_0_or_1()
    {
        var alone = BenchCommandLine.Parse("--shared-tags", "--io-poll", "--hw-queue-depth=128", "--memory-backed", "--log_offset");
        Assert.True(alone.SharedTags);
        Assert.True(alone.IoPoll);
        Assert.True(alone.MemoryBacked);
        Assert.True(alone.LogOffset);
        Assert.Equal(128, alone.HwQueueDepth);

        var valued = BenchCommandLine.Parse("--direct", "0", "--randrepeat=0", "--memory-backed=1", "--fixedbufs", "on");
        Assert.False(valued.Direct);
        Assert.False(valued.RandRepeat);
        Assert.True(valued.MemoryBacked);
        Assert.True(valued.FixedBuffers);
    }

    [Fact]
    public void Defaults_are_fios_and_aliases_name_the_same_option()
    {
        var options = BenchCommandLine.Parse();

        // One default is not fio's: the command line lets the JIT settle before it measures
        // (--jit_warmup, 5 s at most; README "Benchmarking"), where options built in code do not.
        Assert.Equal(new BenchOptions { JitWarmup = TimeSpan.FromSeconds(5) }, options);

        var aliased = BenchCommandLine.Parse("--readwrite=randrw", "--output_format=json", "--iodepth_batch=4");
        Assert.Equal(IoPattern.RandReadWrite, aliased.Pattern);
        Assert.True(aliased.Json);
        Assert.Equal(4, aliased.SubmitBatch);
        Assert.Equal(DispatchMode.Mailbox, BenchCommandLine.Parse("--dispatch", "mailbox").Dispatch);
    }

    // An outside audit: "bench --iodepth=2 --iodepth=4" exited 2 ("Option '--iodepth' expects a
    // single argument but 2 were provided."), where fio takes the last; a harness appends its
    // overrides to a base command line. Every option kind, in both spellings.
    [Fact]
    public void A_repeated_option_takes_its_last_value_as_fio_does()
    {
        string[] first = ["--iodepth=2", "--iodepth_batch_submit=2", "--completion-nsec=5", "--fault-error-rate=0.1", "--direct=1", "--rw=read",
            "--name=a", "--device=file:/a", "--plot=a.png", "--size=1m", "--runtime=1", "--clocksource=tsc", "--readwrite=write"];
        string[] last = ["--iodepth=4", "--iodepth_batch=8", "--completion-nsec=7", "--fault-error-rate=0.2", "--direct=0", "--rw=randwrite",
            "--name=b", "--device=null", "--plot=b.svg", "--size=2m", "--runtime=500ms", "--clocksource=monotonic"];
        string[] equals = [.. first, .. last];
        foreach (var args in new[] { equals, equals.SelectMany(a => a.Split('=', 2)).ToArray() })
        {
            var options = BenchCommandLine.Parse(args);
            Assert.Equal(4, options.IoDepth);
            Assert.Equal(8, options.SubmitBatch);
            Assert.Equal(7, options.CompletionNsec);
            Assert.Equal(0.2, options.Faults.ErrorRate);
            Assert.False(options.Direct);
            Assert.Equal(IoPattern.RandWrite, options.Pattern);
            Assert.Equal("b", options.Name);
            Assert.Equal("null", options.Device);
            Assert.Equal("b.svg", options.Plot);
            Assert.Equal(2L << 20, options.Size);
            Assert.True(options.SizeGiven);
            Assert.Equal(TimeSpan.FromMilliseconds(500), options.Runtime);
            Assert.Equal(TimestampSource.Monotonic, options.ClockSource);
        }

        // A boolean given alone counts as 1 wherever it stands, the last occurrence deciding.
        Assert.True(BenchCommandLine.Parse("--direct=0", "--direct").Direct);
        Assert.True(BenchCommandLine.Parse("--direct", "0", "--direct", "--size=1m").Direct);
        Assert.False(BenchCommandLine.Parse("--direct", "--direct=0").Direct);
        Assert.True(BenchCommandLine.Parse("--memory-backed", "--memory-backed").MemoryBacked);
        Assert.Equal(128, BenchCommandLine.Parse("--hw-queue-depth", "32", "--hw-queue-depth", "128").HwQueueDepth);
    }

    [Theory]
    [InlineData("bench --iodepth=0 --iodepth=4", "option --iodepth: '0' is not a whole number from 1 to 65536.")]
    [InlineData("bench --iodepth=4 --iodepth=0", "option --iodepth: '0' is not a whole number from 1 to 65536.")]
    [InlineData("bench --rw=sideways --rw=read", "option --rw: 'sideways' is not read,")]
    [InlineData("bench --bs=4q --bs=4k", "option --bs: '4q' is not a size")]
    [InlineData("bench --direct=2 --direct", "option --direct: '2' is not 0 or 1.")]
    [InlineData("bench --runtime=soon --runtime=1", "option --runtime: 'soon' is not a duration in seconds.")]
    [InlineData("bench --iodepth 2 4", "Unrecognized command or argument '4'")]
    [InlineData("bench --iodepth=2 --iodepth", "option --iodepth needs a value.")] // the 2 won in silence (a review)
    [InlineData("bench --rw=randwrite --rw --size=1m", "option --rw needs a value.")]
    [InlineData("serve --port 1 --port", "option --port needs a value.")]
    [InlineData("serve --port=70000 --port=4053", "option --port: '70000' is not a whole number from 0 to 65535.")]
    [InlineData("devices --port=0 --port=4053", "option --port: '0' is not a whole number from 1 to 65535.")]
    public async Task Each_value_of_a_repeated_option_is_checked_in_order_as_fio_does(string args, string message)
    {
        var (code, _, error) = await Run(args.Split(' '));

        Assert.Equal(2, code);
        Assert.Contains(message, error, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("[suggest:11]", "bench --iod", "--iodepth")]
    [InlineData("[suggest:13]", "bench --rw ra", "randread")]
    [InlineData("[suggest:15]", "bench --eta alw", "always")]
    [InlineData("[suggest:3]", "ben", "bench")]
    [InlineData("[suggest:15]", "sysfs --port 1 ", "list")]
    [InlineData("[suggest:16]", "bench --rw read ", "--iodepth")]
    public async Task The_suggest_directive_completes_options_values_and_commands(string directive, string line, string completion)
    {
        var (code, output, _) = await Run(directive, line);

        Assert.Equal(0, code);
        Assert.Contains(completion, output.Split('\n', StringSplitOptions.TrimEntries));
    }

    // An outside CLI fuzz: System.CommandLine threw on a negative position, and the command line
    // printed "failed:" with its stack trace (exit 1); a position that is no number was reported as
    // a configuration error.
    [Theory]
    [InlineData("[suggest:-1]")]
    [InlineData("[suggest:abc]")]
    [InlineData("[suggest:]")]
    [InlineData("[suggest:3")]
    public async Task A_suggest_directive_whose_position_is_not_a_number_of_0_or_more_is_a_usage_error(string directive)
    {
        var (code, _, error) = await Run(directive, "bench");

        Assert.Equal(2, code);
        Assert.StartsWith($"actorblk: '{directive}': the completion directive's position is a number of 0 or more", error, StringComparison.Ordinal);
        Assert.DoesNotContain("   at ", error, StringComparison.Ordinal);
    }
}
