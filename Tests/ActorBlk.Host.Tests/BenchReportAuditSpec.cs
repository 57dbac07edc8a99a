using System.Text.Json;
using ActorBlk.Hardware.Queues;
using ActorBlk.Host.Bench;
using Xunit;

namespace ActorBlk.Host.Tests;

/// <summary>
/// What an outside audit of the report against README and fio 3.33 found, in process: the
/// dispatch named was the option's, not the devices'.
/// </summary>
public sealed class BenchReportAuditSpec
{
    private static BenchResult Result(BenchOptions options, params DispatchMode[] devices) =>
        new(options, new OpStats(), new OpStats(), TimeSpan.FromSeconds(1), TimeSpan.FromSeconds(1),
            Submitted: 0, Completed: 0, Errors: 0, Timeouts: 0, UsrCpu: 0, SysCpu: 0, DeviceDescription: "spec")
        {
            Devices = [.. devices.Select((d, i) => new DeviceFigures($"d{i}", 0, null, 0, [], d))],
        };

    [Theory]
    [InlineData(new[] { DispatchMode.Mailbox }, "mailbox")]
    [InlineData(new[] { DispatchMode.Mailbox, DispatchMode.Mailbox }, "mailbox")]
    [InlineData(new[] { DispatchMode.Bio }, "bio")]
    [InlineData(new[] { DispatchMode.Mailbox, DispatchMode.Ring, DispatchMode.Mailbox }, "mailbox+ring")]
    public void The_dispatch_reported_is_the_devices_each_mode_once_in_device_order(DispatchMode[] devices, string dispatch)
    {
        var result = Result(new BenchOptions { Dispatch = DispatchMode.Ring }, devices);

        Assert.Equal(dispatch, result.Dispatch);
        Assert.Contains($", dispatch={dispatch}, engine=", BenchReport.Human(result), StringComparison.Ordinal);
        var actorblk = JsonDocument.Parse(BenchReport.Json(result)).RootElement.GetProperty("actorblk");
        Assert.Equal(dispatch, actorblk.GetProperty("dispatch").GetString());
        Assert.Equal(devices.Select(d => d.ToString().ToLowerInvariant()), actorblk.GetProperty("devices").EnumerateArray().Select(d => d.GetProperty("dispatch").GetString()));

        // Several runs combined (--devices) keep each device's.
        var runs = devices.Select(d => Result(new BenchOptions(), d)).ToArray();
        Assert.Equal(dispatch, BenchResult.Combine(runs).Dispatch);
    }
}
