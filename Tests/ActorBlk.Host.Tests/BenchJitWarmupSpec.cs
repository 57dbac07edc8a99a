using System.Text.Json;
using ActorBlk.Host.Bench;
using ActorBlk.Host.Tests.Support;
using Xunit;

namespace ActorBlk.Host.Tests;

/// <summary>
/// Issue 16 item 10: the bench's JIT warm-up (<c>--jit_warmup</c>) never outlasts the work it
/// waits beside, nor its limit, and a run reports how long it waited.
/// </summary>
public sealed class BenchJitWarmupSpec
{
    [Fact]
    public async Task The_warmup_ends_when_the_work_ends()
    {
        var work = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var waiting = BenchRun.WaitForJitAsync(work.Task, TimeSpan.FromHours(1), TimeSpan.FromHours(1), CancellationToken.None);
        Assert.False(waiting.IsCompleted);

        work.SetResult();
        await waiting;
    }

    [Fact]
    public async Task The_warmup_ends_at_its_limit_and_on_cancellation()
    {
        var never = new TaskCompletionSource().Task;
        await BenchRun.WaitForJitAsync(never, TimeSpan.Zero, TimeSpan.FromHours(1), CancellationToken.None);

        using var cancel = new CancellationTokenSource();
        var waiting = BenchRun.WaitForJitAsync(never, TimeSpan.FromHours(1), TimeSpan.FromHours(1), cancel.Token);
        await cancel.CancelAsync();
        await waiting;
    }

    [Fact]
    public async Task A_time_based_run_reports_its_warmup_and_the_option_turns_it_off()
    {
        var off = await RunJson("--jit_warmup=0");
        Assert.Equal(0, off.GetProperty("actorblk").GetProperty("jit_warmup_ms").GetInt64());

        var on = await RunJson("--jit_warmup=0.2");
        Assert.True(on.GetProperty("actorblk").GetProperty("jit_warmup_ms").GetInt64() >= 0);
        Assert.True(on.GetProperty("jobs")[0].GetProperty("read").GetProperty("total_ios").GetInt64() > 0);
    }

    private static async Task<JsonElement> RunJson(string warmup)
    {
        await using var bench = ActorBlkProcess.Start(["bench", "--device", "null", "--irqmode=0", "--iodepth=1", "--runtime=1", warmup, "--output-format=json"]);
        Assert.Equal(0, await bench.WaitForExitAsync(TimeSpan.FromSeconds(120)));
        return JsonDocument.Parse(bench.StandardOutput).RootElement;
    }
}
