using System.Diagnostics;
using System.Text.RegularExpressions;
using ActorBlk.Host.Commands;
using ActorBlk.Host.Tests.Support;
using ActorBlk.Testing;
using Xunit;

namespace ActorBlk.Host.Tests;

/// <summary>
/// An outside audit of pipes and process lifecycle: a client command whose stdout is /dev/full or
/// closed ended with "actorblk: failed:" and a stack trace; and since .NET drops the EPIPE of a
/// console write, <c>actorblk iostat 1 | head -3</c> never ended (it wrote its reports into the
/// closed pipe for ever), nor did a bench with <c>--status-interval</c> until its runtime was up.
/// Now a failed write is one line, "actorblk: write error: ...", and exit 1 (coreutils'
/// close_stdout), and a reader that went away ends the command quietly with 141, the status a
/// shell gives sysstat's iostat or fio when SIGPIPE ends them.
/// </summary>
[Collection(OwnResourceProcessesCollection.Name)]
public sealed partial class StandardOutputSpec
{
    private static readonly TimeSpan Within = TimeSpan.FromSeconds(90);

    [GeneratedRegex(@"Devices are addressable at akka\.tcp://actorblk@127\.0\.0\.1:(?<port>\d+)/user/actorblk")]
    private static partial Regex AddressLine();

    [Theory]
    [InlineData("> /dev/full", "No space left on device")]
    [InlineData(">&-", "Bad file descriptor")]
    public async Task A_write_to_stdout_that_fails_is_one_line_and_exit_1(string redirection, string reason)
    {
        var (code, error) = await Shell($"dotnet \"$0\" bench --help {redirection}", Within);

        Assert.Equal(1, code);
        Assert.Equal($"actorblk: write error: {reason}\n", error);
    }

    [Theory]
    [InlineData("bench --runtime=1 --jit_warmup=0 --size=16m --eta=always > /dev/null", 0)]
    [InlineData("iostat --node 127.0.0.1:1 1 1", 1)]
    [InlineData("bench --iodepth=0", 2)]
    public async Task With_stderr_closed_a_command_ends_with_its_own_exit_code(string command, int expected)
    {
        // A message that could not be written threw, and so did the report of that failure from
        // the command line's handler: the process aborted with 134 (bench at its first line,
        // iostat when no node answered).
        var (code, _) = await Shell($"dotnet \"$0\" {command} 2>&-", Within);

        Assert.Equal(expected, code);
    }

    // The reader is looked for before a write, where a C program's write would fail with EPIPE:
    // looked for after it, a command whose last line the reader took before leaving (`sysfs cat X
    // | head -1`) ended 141 instead of 0 (a review).
    [Fact]
    public void A_reader_that_leaves_after_the_last_line_is_no_broken_pipe_and_the_next_write_is()
    {
        var gone = false;
        using var taken = new LeavingReader(() => gone = true);
        using var output = new GuardedOutput(taken, () => gone);
        output.WriteLine("the last line");
        Assert.Equal("the last line" + Environment.NewLine, taken.ToString());
        var refused = Assert.Throws<StandardOutputException>(() => output.WriteLine("one more"));
        Assert.True(refused.BrokenPipe);
    }

    // A reader that takes a write and then goes away.
    private sealed class LeavingReader(Action leave) : StringWriter
    {
        public override void WriteLine(string? value)
        {
            base.WriteLine(value);
            leave();
        }
    }

    [Fact]
    public async Task Iostat_and_a_bench_whose_reader_went_away_end_quietly_with_141()
    {
        using var dir = new TempDirectory();
        var config = dir.File("node.conf");
        await File.WriteAllTextAsync(config, await File.ReadAllTextAsync(RepositoryFiles.Hocon()) + """

            actorblk.nbd.listen = off
            actorblk.topology.source = simulated
            actorblk.devices = [ { name = nullb0, driver = "null", size = 64m, irqmode = 0 } ]
            """);
        await using var node = ActorBlkProcess.Start("serve", "--config", config, "--port", "0");
        var port = AddressLine().Match(await node.WaitForLineAsync(l => AddressLine().IsMatch(l), Within)).Groups["port"].Value;

        // Without COUNT the reports go on until interrupted; head takes three lines and goes.
        var (iostat, iostatError) = await Shell($"dotnet \"$0\" iostat --node 127.0.0.1:{port} nullb0 1 | head -3 > /dev/null; exit ${{PIPESTATUS[0]}}", Within);
        Assert.Equal(141, iostat);
        Assert.Equal(string.Empty, iostatError);

        // An interim report that finds no reader stops the run (its runtime is far longer than the wait).
        var (bench, benchError) = await Shell("dotnet \"$0\" bench --runtime=3600 --jit_warmup=0 --status-interval=1 --size=16m | head -1 > /dev/null; exit ${PIPESTATUS[0]}", Within);
        Assert.Equal(141, bench);
        Assert.DoesNotContain(" at ", benchError, StringComparison.Ordinal);
    }

    // bash -c SCRIPT with $0 the actorblk.dll beside the tests; the exit code and stderr. A command
    // still running after `within` is killed and fails the spec.
    private static async Task<(int Code, string Error)> Shell(string script, TimeSpan within)
    {
        var info = new ProcessStartInfo("bash")
        {
            RedirectStandardError = true,
            UseShellExecute = false,
            WorkingDirectory = AppContext.BaseDirectory,
        };
        info.ArgumentList.Add("-c");
        info.ArgumentList.Add(script);
        info.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "actorblk.dll"));
        using var process = Process.Start(info) ?? throw new InvalidOperationException("bash did not start.");
        var error = process.StandardError.ReadToEndAsync();
        using var cts = new CancellationTokenSource(within);
        try
        {
            await process.WaitForExitAsync(cts.Token);
        }
        catch (OperationCanceledException)
        {
            process.Kill(entireProcessTree: true);
            await process.WaitForExitAsync();
            Assert.Fail($"`{script}` was still running after {within}; stderr: {await error}");
        }

        return (process.ExitCode, (await error).ReplaceLineEndings("\n"));
    }
}
