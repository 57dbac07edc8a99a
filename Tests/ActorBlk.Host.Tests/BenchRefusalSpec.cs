using ActorBlk.Host.Tests.Support;
using Xunit;

namespace ActorBlk.Host.Tests;

/// <summary>
/// What an outside audit found `actorblk bench` doing with a device that cannot take the workload:
/// a read-only device under writes, or a --bs below the logical block size, aborted the process
/// (SIGABRT, exit 134) from the first submission; a run whose every I/O failed reported err=0 and
/// exited 0; and --size defaulted to 1 GiB on every device, where fio drives the whole device.
/// </summary>
public sealed class BenchRefusalSpec : IDisposable
{
    private static readonly TimeSpan Within = TimeSpan.FromSeconds(120);

    private readonly string _config = Path.Combine(Path.GetTempPath(), $"actorblk-refusal-{Guid.NewGuid():N}.conf");

    public BenchRefusalSpec()
    {
        File.WriteAllText(_config, """
            actorblk.topology.source = simulated
            actorblk.devices = [
              { name = ro0, size = 16m, memory_backed = on, read_only = on },
              { name = b4k, size = 16m, memory_backed = on, bs = 4096 } ]
            """);
    }

    public void Dispose() => File.Delete(_config);

    [Theory]
    [InlineData("ro0", "--rw=randwrite", "option --rw: randwrite writes, and ro0 is read-only.")]
    [InlineData("ro0", "--rw=randrw", "option --rw: randrw writes, and ro0 is read-only.")]
    [InlineData("b4k", "--bs=512", "option --bs: 512 bytes is not a multiple of the device's 4096-byte logical block size.")]
    [InlineData("b4k", "--io-poll=1", "option --io-poll: b4k has no poll queues (only a null device with io_poll = on has them).")]
    public async Task A_workload_the_device_cannot_take_is_a_usage_error_naming_the_option(string device, string option, string message)
    {
        await using var bench = ActorBlkProcess.Start("bench", "--config", _config, $"--device={device}", option, "--runtime=1");
        Assert.Equal(2, await bench.WaitForExitAsync(Within));
        Assert.Contains(message, bench.Output, StringComparison.Ordinal);
        Assert.DoesNotContain("Unhandled exception", bench.Output, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Without_size_an_existing_device_is_driven_whole_as_fio_does()
    {
        // 16 MiB in 4 KiB reads with no runtime: the run covers the whole device once.
        await using var bench = ActorBlkProcess.Start("bench", "--config", _config, "--device=ro0", "--rw=read", "--bs=4k", "--output-format=json");
        Assert.Equal(0, await bench.WaitForExitAsync(Within));
        var json = System.Text.Json.JsonDocument.Parse(bench.StandardOutput).RootElement;
        Assert.Equal(4096, json.GetProperty("jobs")[0].GetProperty("read").GetProperty("total_ios").GetInt64());
        Assert.Equal("16777216", json.GetProperty("global options").GetProperty("size").GetString());
    }

    [Fact]
    public async Task Size_as_a_percentage_is_that_share_of_the_device_as_fio_does()
    {
        // fio's size=33% (filesetup.c): 16 MiB * 33 / 100 = 5536481, rounded down to the 4 KiB
        // block size: 5533696 bytes, 1351 reads (fio 3.33 on a 10 MiB file: 3457024 bytes, the
        // same rule). The bench refused the percentage as "not a size".
        await using var bench = ActorBlkProcess.Start("bench", "--config", _config, "--device=ro0", "--rw=read", "--bs=4k", "--size=33%", "--output-format=json");
        Assert.Equal(0, await bench.WaitForExitAsync(Within));
        var json = System.Text.Json.JsonDocument.Parse(bench.StandardOutput).RootElement;
        Assert.Equal(1351, json.GetProperty("jobs")[0].GetProperty("read").GetProperty("total_ios").GetInt64());
        Assert.Equal("5533696", json.GetProperty("global options").GetProperty("size").GetString());
    }

    [Fact]
    public async Task Size_as_a_percentage_of_a_file_that_does_not_exist_is_a_usage_error()
    {
        // fio: "you need to specify size=". The device would have created the file at 1 GiB.
        var missing = Path.Combine(Path.GetTempPath(), $"actorblk-percent-{Guid.NewGuid():N}");
        await using var bench = ActorBlkProcess.Start("bench", $"--device=file:{missing}", "--size=50%", "--runtime=1");
        Assert.Equal(2, await bench.WaitForExitAsync(Within));
        Assert.Contains($"option --size: 50% is a share of an existing file's size, and {missing} does not exist.", bench.Output, StringComparison.Ordinal);
        Assert.False(File.Exists(missing));
    }

    [Fact]
    public async Task Runtime_zero_is_no_limit_as_in_fio_so_the_run_is_size_bound()
    {
        // fio: runtime=0 is "no limit", and time_based without a runtime is dropped, so the job
        // covers --size once; the bench refused --runtime=0 as "must be positive" (exit 2).
        await using var bench = ActorBlkProcess.Start("bench", "--config", _config, "--device=ro0", "--rw=read", "--bs=4k", "--size=8m", "--runtime=0", "--time_based", "--output-format=json");
        Assert.Equal(0, await bench.WaitForExitAsync(Within));
        var json = System.Text.Json.JsonDocument.Parse(bench.StandardOutput).RootElement;
        Assert.Equal(2048, json.GetProperty("jobs")[0].GetProperty("read").GetProperty("total_ios").GetInt64());
    }

    [Fact]
    public async Task A_run_whose_every_io_failed_reports_the_error_and_exits_1()
    {
        await using var bench = ActorBlkProcess.Start("bench", "--device=null", "--size=16m", "--runtime=1", "--fault-error-rate=1", "--output-format=json");
        Assert.Equal(1, await bench.WaitForExitAsync(Within));
        Assert.Contains("no I/O succeeded", bench.Output, StringComparison.Ordinal);
        var job = System.Text.Json.JsonDocument.Parse(bench.StandardOutput).RootElement.GetProperty("jobs")[0];
        Assert.NotEqual(0, job.GetProperty("error").GetInt32());
    }
}
