using ActorBlk.Actors.Tests.Support;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Requests;
using ActorBlk.Testing;
using Akka.Configuration;
using Xunit;
using Xunit.Abstractions;

namespace ActorBlk.Actors.Tests;

/// <summary>
/// A hotplug event whose remap waits for a device that does not drain (a slow disk holds its
/// I/O) past <c>drain-timeout</c> plus 10 s: the caller is answered EBUSY while the remap goes
/// on. An outside slow-disk audit ran <c>actorblk hotplug offline 1</c> with a file device's
/// writes held by a throttled disk: the sysfs actor piped the TimeoutException back as a
/// Status.Failure, which remoting refuses to carry, and the command waited its 60 s and reported
/// that the node did not answer, though the node was up and finished the remap.
/// </summary>
public sealed class SlowRemapSysfsSpec : Akka.TestKit.Xunit2.TestKit
{
    public SlowRemapSysfsSpec(ITestOutputHelper output)
        : base(ConfigurationFactory.ParseString("actorblk.drain-timeout = 0s").WithFallback(Configs.Simulated), output: output)
    {
    }

    private BlockLayer Layer => BlockLayer.Get(Sys);

    [Fact]
    public async Task A_hotplug_event_held_by_a_device_that_does_not_drain_is_answered_EBUSY_and_the_remap_goes_on()
    {
        var driver = new ScriptedDriver(capacityBytes: 64 << 20);
        var device = await Layer.CreateDeviceAsync(new DeviceOptions { Name = "held", SubmitQueues = 1, IoTimeoutMs = 600_000 }, driver);
        var read = device.ExecuteAsync(BlockOp.Read, 0, 4096, new byte[4096]).AsTask();
        await AwaitConditionAsync(() => Task.FromResult(driver.InFlight.Count == 1));

        var sysfs = Sys.ActorSelection(Layer.Guardian.Path / Sysfs.ActorName);
        sysfs.Tell(new Sysfs.Hotplug(1, Online: false), TestActor);
        sysfs.Tell(new Sysfs.Write("devices/system/cpu/cpu2/online", "0"), TestActor);

        // drain-timeout (0 s) plus 10 s each, concurrently.
        var answers = new[] { await ExpectMsgAsync<Sysfs.Failed>(TimeSpan.FromSeconds(40)), await ExpectMsgAsync<Sysfs.Failed>(TimeSpan.FromSeconds(40)) };
        Assert.All(answers, a => Assert.Equal("EBUSY", a.Errno));
        Assert.All(answers, a => Assert.Contains("the remap did not answer", a.Message, StringComparison.Ordinal));
        Assert.Equal(
            ["devices/system/cpu/cpu1/online", "devices/system/cpu/cpu2/online"],
            answers.Select(a => a.Path).Order(StringComparer.Ordinal));

        // The device answers: the remaps end, and the read completes once.
        Assert.Equal(1, driver.CompleteAll());
        Assert.Equal(BlockStatus.Ok, await read);
        await AwaitAssertAsync(() => Assert.Equal("0,3\n", Layer.ReadAttribute("devices/system/cpu/online")), TimeSpan.FromSeconds(30));
    }
}
