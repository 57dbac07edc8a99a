using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Requests;
using ActorBlk.Hardware.Topology;
using ActorBlk.Host.Bench;
using ActorBlk.Testing;
using Xunit;

namespace ActorBlk.Host.Tests;

/// <summary>
/// A device that goes offline under the bench (its owner node left or was lost): the run stops
/// there instead of spinning on Offline errors until its runtime ends, says which device, and
/// every I/O it submitted completed once.
/// </summary>
public sealed class BenchOfflineSpec
{
    [Fact]
    public async Task A_device_that_goes_offline_ends_the_run_early_and_is_reported()
    {
        await using var devices = new RingDevices(2);
        var device = devices.Create(new DeviceOptions { Name = "gone0", Size = 64 << 20, MemoryBacked = true }, CpuTopology.Simulated(2));
        var options = new BenchOptions { Pattern = IoPattern.RandRead, IoDepth = 4, Size = 64 << 20, Runtime = TimeSpan.FromMinutes(10) };
        var run = new BenchRun(options, device, CpuSet.Of(0, 1));
        var running = run.RunAsync();
        while (run.CompletedSoFar < 1000)
        {
            await Task.WhenAny(running, Task.Delay(10));
            Assert.False(running.IsCompleted, "the run ended before the device went offline");
        }

        device.Queue.SetOffline(failInFlight: true);

        // Well within the ten-minute runtime: the liveness bound of the await, not a timing claim.
        var result = await running.WaitAsync(TimeSpan.FromSeconds(60));
        Assert.Equal(["gone0"], result.WentOffline);
        Assert.Equal(result.Submitted, result.Completed);
        Assert.True(result.Errors is > 0 and <= 4 + 1, $"{result.Errors} errors: the jobs stop at the first Offline completion (at most the I/Os in flight fail)");
        Assert.Equal(BlockStatus.Offline, result.FirstError);
    }
}
