using System.Text.Json;
using ActorBlk.Testing;
using ActorBlk.Host.Tests.Support;
using Xunit;

namespace ActorBlk.Host.Tests;

/// <summary>
/// SIGINT and SIGTERM during `actorblk bench`, as fio treats them ("terminating on signal"): the
/// run stops, its devices are removed in order, the report covers the run until the signal, and
/// the exit code is 128. Found by an outside audit: of 41 signalled runs none ended cleanly; the
/// signal ran Akka's shutdown hook under the jobs, which reported the local null device offline,
/// crashed the teardown (no report, exit 134) or hung.
/// </summary>
[Collection(OwnResourceProcessesCollection.Name)]
public sealed class BenchSignalSpec
{
    private static readonly TimeSpan Within = TimeSpan.FromSeconds(90);

    [Theory]
    [InlineData(2, "SIGINT")]
    [InlineData(15, "SIGTERM")]
    public async Task A_signal_during_the_run_stops_it_with_a_whole_report_and_exit_128(int signal, string name)
    {
        using var dir = new TempDirectory("bench-signal");
        await using var bench = ActorBlkProcess.Start(
            "bench", "--runtime=600", "--jit_warmup=0", "--rw=randrw", "--iodepth=8", "--output-format=json", "--status-interval=1",
            $"--write_iops_log={dir.File("sig")}", "--log_avg_msec=100");

        // The first periodic report: the jobs run and the measured window is open.
        await bench.WaitForLineAsync(l => l.StartsWith('{'), Within);
        bench.Signal(signal);
        Assert.Equal(128, await bench.WaitForExitAsync(Within));

        Assert.Contains($"terminating on signal {name}", bench.Output, StringComparison.Ordinal);
        Assert.DoesNotContain("went offline", bench.Output, StringComparison.Ordinal);
        Assert.DoesNotContain("Unhandled exception", bench.Output, StringComparison.Ordinal);

        // The final report is the last JSON document on stdout: I/Os measured, none failed.
        var last = bench.StandardOutput.TrimEnd();
        using var report = JsonDocument.Parse(last[last.LastIndexOf("\n{", StringComparison.Ordinal)..]);
        var job = report.RootElement.GetProperty("jobs")[0];
        Assert.True(job.GetProperty("read").GetProperty("total_ios").GetInt64() > 0);
        Assert.Equal(0, job.GetProperty("error").GetInt32());
        Assert.Equal(0L, report.RootElement.GetProperty("actorblk").GetProperty("double_completions").GetInt64());
        Assert.True(File.Exists(dir.File("sig") + "_iops.1.log"), "the logs are written after a signal too");
    }

    [Fact]
    public async Task A_log_or_plot_in_a_directory_that_does_not_exist_is_a_usage_error_before_the_run()
    {
        await using var bench = ActorBlkProcess.Start("bench", "--runtime=1", "--plot=/nonexistent-actorblk/p.png");
        Assert.Equal(2, await bench.WaitForExitAsync(Within));
        Assert.Contains("option --plot: the directory /nonexistent-actorblk does not exist", bench.Output, StringComparison.Ordinal);
        Assert.DoesNotContain("Unhandled exception", bench.Output, StringComparison.Ordinal);
    }

    // An outside CLI fuzzing audit: an empty log prefix failed the run with an ArgumentException and its
    // stack, exit 1 (an empty --plot was refused already: it does not end in .png or .svg).
    [Theory]
    [InlineData("--write_lat_log")]
    [InlineData("--write_iops_log")]
    public async Task An_empty_log_or_plot_path_is_a_usage_error_before_the_run(string option)
    {
        await using var bench = ActorBlkProcess.Start("bench", "--runtime=1", option, string.Empty);
        Assert.Equal(2, await bench.WaitForExitAsync(Within));
        Assert.Contains($"option {option}: the path is empty.", bench.Output, StringComparison.Ordinal);
        Assert.DoesNotContain("   at ", bench.Output, StringComparison.Ordinal);
    }
}
