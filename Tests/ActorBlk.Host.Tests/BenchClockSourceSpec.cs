using System.Text.Json;
using ActorBlk.Host.Tests.Support;
using Xunit;

namespace ActorBlk.Host.Tests;

/// <summary>
/// The clock of the bench's timestamps: <c>--clocksource</c> when given, else the environment
/// variable <c>ACTORBLK_CLOCKSOURCE</c>, else auto. An outside audit found the variable ignored by
/// the bench (it selected the option's default, auto, before the clock's first read), and a value
/// naming no clock taken for auto without a word.
/// </summary>
public sealed class BenchClockSourceSpec
{
    private static readonly TimeSpan Within = TimeSpan.FromSeconds(120);

    private static async Task<(string ClockSource, string Error)> Run(string? environment, params string[] args)
    {
        await using var bench = ActorBlkProcess.StartWithEnvironment(
            new Dictionary<string, string?> { ["ACTORBLK_CLOCKSOURCE"] = environment },
            ["bench", "--device=null", "--size=1m", "--output-format=json", .. args]);
        var exit = await bench.WaitForExitAsync(Within);
        Assert.True(exit == 0, $"bench exited {exit}:\n{bench.Output}");
        var json = JsonDocument.Parse(bench.StandardOutput).RootElement;
        return (json.GetProperty("actorblk").GetProperty("clocksource").GetString()!, bench.StandardError);
    }

    [Fact]
    public async Task Without_the_option_the_environment_variable_chooses_the_clock()
    {
        var (clock, error) = await Run("monotonic");
        Assert.Equal("monotonic", clock);
        Assert.DoesNotContain("actorblk: ", error, StringComparison.Ordinal);

        // fio's spelling is accepted there too.
        Assert.Equal("monotonic", (await Run("clock_gettime")).ClockSource);
    }

    [Fact]
    public async Task The_option_given_beats_the_environment_variable()
    {
        var (unset, _) = await Run(null);
        Assert.Equal(unset, (await Run("monotonic", "--clocksource=auto")).ClockSource);
        Assert.Equal("monotonic", (await Run("tsc", "--clocksource=monotonic")).ClockSource);
    }

    [Fact]
    public async Task A_variable_naming_no_clock_is_a_warning_and_the_clock_is_auto()
    {
        var (unset, _) = await Run(null);
        var (clock, error) = await Run("bogus");

        Assert.Equal(unset, clock);
        var warning = Assert.Single(error.Split('\n', StringSplitOptions.RemoveEmptyEntries), l => l.StartsWith("actorblk: ", StringComparison.Ordinal));
        Assert.Equal($"actorblk: ACTORBLK_CLOCKSOURCE=bogus is not auto, tsc (cpu) or monotonic (clock_gettime); timestamps use the {clock} clock", warning);
    }
}
