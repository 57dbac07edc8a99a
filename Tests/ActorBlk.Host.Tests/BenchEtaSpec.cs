using System.Text.Json;
using ActorBlk.Host.Tests.Support;
using Xunit;

namespace ActorBlk.Host.Tests;

/// <summary>bench's status line (fio's <c>--eta</c>, in fio's form): on stderr, off when stderr is not a terminal unless asked for.</summary>
public sealed class BenchEtaSpec
{
    private static readonly TimeSpan Within = TimeSpan.FromSeconds(120);

    [Fact]
    public async Task Eta_always_writes_the_status_line_to_stderr_and_leaves_stdout_to_the_report()
    {
        await using var bench = ActorBlkProcess.Start("bench", "--device=null", "--rw=randread", "--bs=4k", "--iodepth=4", "--runtime=3", "--jit_warmup=0", "--eta=always", "--output-format=json");
        Assert.Equal(0, await bench.WaitForExitAsync(Within));
        Assert.Matches(@"Jobs: 1 \(f=1\): \[r\(1\)\]\[\d+\.\d%\]\[r=[\d.]+[KMG]?i?B/s\]\[r=[\d.]+[kM]? IOPS\]\[eta \d\dm:\d\ds\]", bench.Output);
        Assert.DoesNotContain("Jobs:", bench.StandardOutput, StringComparison.Ordinal);
        Assert.Equal(JsonValueKind.Object, JsonDocument.Parse(bench.StandardOutput).RootElement.ValueKind);
    }

    [Theory]
    [InlineData("--eta=never")]
    [InlineData("--eta=auto")]
    public async Task Never_and_auto_with_stderr_redirected_write_no_status_line(string eta)
    {
        await using var bench = ActorBlkProcess.Start("bench", "--device=null", "--rw=randread", "--bs=4k", "--iodepth=4", "--runtime=2", "--jit_warmup=0", eta);
        Assert.Equal(0, await bench.WaitForExitAsync(Within));
        Assert.DoesNotContain("Jobs:", bench.Output, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Another_value_is_a_usage_error()
    {
        await using var bench = ActorBlkProcess.Start("bench", "--device=null", "--eta=sometimes");
        Assert.Equal(2, await bench.WaitForExitAsync(Within));
        Assert.Contains("option --eta: 'sometimes' is not auto, always or never.", bench.Output, StringComparison.Ordinal);
    }
}
