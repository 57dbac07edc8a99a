using ActorBlk.Actors.Tests.Support;
using Akka.Actor;
using Xunit;
using Xunit.Abstractions;

namespace ActorBlk.Actors.Tests.Security;

/// <summary>
/// A node never keeps running while it serves nothing (README, "Security"): if the guardian or an
/// actor it cannot serve without stops, the block layer fails, logs it at error level and runs
/// coordinated shutdown with <see cref="BlockLayer.NodeFailed"/> (whose exit code is non-zero;
/// <c>actorblk serve</c> exits 1).
/// </summary>
public sealed class NodeFailureSpec(ITestOutputHelper output) : Akka.TestKit.Xunit2.TestKit(Configs.Simulated, output: output)
{
    private BlockLayer Layer => BlockLayer.Get(Sys);

    [Fact]
    public async Task A_guardian_that_stops_fails_the_node_and_shuts_it_down()
    {
        var layer = Layer;
        await layer.CreateDeviceAsync(new Hardware.Devices.DeviceOptions { Name = "nullb0", Size = 1 << 20, PollQueues = 0 });
        var errors = CreateTestProbe();
        Sys.EventStream.Subscribe(errors.Ref, typeof(Akka.Event.Error));
        Sys.Stop(layer.Guardian);

        await Sys.WhenTerminated.WaitAsync(TimeSpan.FromSeconds(60));
        Assert.Contains("/user/actorblk stopped unexpectedly", layer.FailureReason);

        // Logged at error level before the shutdown began (so already in the probe's queue).
        var logged = new List<string>();
        while (errors.HasMessages)
        {
            logged.Add(errors.ReceiveOne(TimeSpan.Zero)!.ToString()!);
        }

        Assert.Contains(logged, l => l.Contains("ActorBlk failed", StringComparison.Ordinal) && l.Contains("stopped unexpectedly", StringComparison.Ordinal));
        Assert.IsType<BlockLayer.NodeFailed>(CoordinatedShutdown.Get(Sys).ShutdownReason);
        Assert.NotEqual(0, BlockLayer.NodeFailed.Instance.ExitCode);
    }

    [Fact]
    public async Task A_sysfs_actor_that_stops_fails_the_node()
    {
        var layer = Layer;
        await layer.Guardian.Ask<BlockLayer.DeviceList>(BlockLayer.ListDevices.Instance, TimeSpan.FromSeconds(30));
        var sysfs = await Sys.ActorSelection(layer.Guardian.Path / Sysfs.ActorName).ResolveOne(TimeSpan.FromSeconds(30));
        Sys.Stop(sysfs);

        await Sys.WhenTerminated.WaitAsync(TimeSpan.FromSeconds(60));
        Assert.Contains("sysfs stopped unexpectedly", layer.FailureReason);
        Assert.IsType<BlockLayer.NodeFailed>(CoordinatedShutdown.Get(Sys).ShutdownReason);
    }

    [Fact]
    public async Task A_serving_device_actor_that_stops_fails_the_node_but_a_destroy_does_not()
    {
        var layer = Layer;
        await layer.CreateDeviceAsync(new Hardware.Devices.DeviceOptions { Name = "gone", Size = 1 << 20, PollQueues = 0 });
        await layer.DestroyDeviceAsync("gone");
        Assert.Null(layer.FailureReason);

        await layer.CreateDeviceAsync(new Hardware.Devices.DeviceOptions { Name = "nullb0", Size = 1 << 20, PollQueues = 0 });
        var probe = CreateTestProbe();
        layer.Guardian.Tell(new BlockLayer.GetDeviceInfo("nullb0"), probe.Ref);
        await probe.ExpectMsgAsync<RequestQueueProtocol.Info>(TimeSpan.FromSeconds(30));
        Sys.Stop(probe.LastSender);

        await Sys.WhenTerminated.WaitAsync(TimeSpan.FromSeconds(60));
        Assert.Contains("device nullb0", layer.FailureReason);
    }
}
