using ActorBlk.Actors.Tests.Support;
using ActorBlk.Hardware.Requests;
using ActorBlk.Hardware.Topology;
using ActorBlk.Testing;
using Akka.Actor;
using Xunit;
using Xunit.Abstractions;

namespace ActorBlk.Actors.Tests;


/// <summary>
/// The device-driver actor of one hardware queue: the queue's dispatcher in mailbox dispatch, and
/// the unit whose restart resets the device. The spec is its parent.
/// </summary>
public sealed class DeviceDriverSpec : Akka.TestKit.Xunit2.TestKit
{
    public DeviceDriverSpec(ITestOutputHelper output)
        : base(Configs.Simulated, output: output)
    {
    }

    private Task Until(Func<bool> condition) => AwaitConditionAsync(() => Task.FromResult(condition()), TimeSpan.FromSeconds(30), TimeSpan.FromMilliseconds(10));

    private static Task Idle(IActorRef dispatcher) => dispatcher.Ask<HardwareQueue.DispatchIdle>(HardwareQueue.WaitIdle.Instance, TimeSpan.FromSeconds(30));

    // A rig whose software contexts are real actors and whose hardware queues are dispatched by
    // the given actors (made from the rig).
    private MailboxRig Rig(ScriptedDriver driver, Func<MailboxRig, IActorRef[]> dispatchers, int hardwareQueues = 1)
    {
        var rig = new MailboxRig(driver, CpuTopology.Simulated(2), hardwareQueues: hardwareQueues);
        var contexts = rig.Queue.SoftwareContexts.Select(c => Sys.ActorOf(SoftwareContextProtocol.Props(c, rig.Device))).ToArray();
        rig.Start(contexts, dispatchers(rig));
        return rig;
    }

    private static void Read(MailboxRig rig, int n)
    {
        using (rig.Device.Plug())
        {
            for (var i = 0; i < n; i++)
            {
                _ = rig.Device.ReadAsync(i * 65536L, new byte[512], cpu: 0);
            }
        }
    }

    [Fact]
    public async Task A_round_stops_at_a_refusal_and_commits_what_it_queued()
    {
        IActorRef driver = ActorRefs.Nobody;
        var rig = Rig(new ScriptedDriver(), r => [driver = ChildActorOf(DeviceDriver.Props(r.Queue, 0, blocking: false))]);
        rig.Driver.Script(BlockStatus.Ok, BlockStatus.DeviceResource, BlockStatus.DeviceResource);

        // The three reads are staged while the queue is quiesced, so the driver's first round
        // takes all three: the plug's flush posts them to the context one by one, and a context
        // thread that is awake could otherwise hand the driver the first alone.
        await rig.Queue.QuiesceAsync();
        Read(rig, 3);
        await Until(() => rig.Queue.HardwareContexts[0].PendingCount == 3);
        rig.Queue.Unquiesce();

        // The first round queues one and commits it; SCHED_RESTART was clear, so the leftovers
        // run again at once, are refused again, and wait for a completion.
        await Until(() => rig.Driver.Calls.Count == 3);
        await Idle(driver);
        Assert.Single(rig.Driver.InFlight);
        Assert.Equal(1, rig.Driver.CommitCalls);
        Assert.Equal(2, rig.Queue.HardwareContexts[0].PendingCount);
    }

    [Fact]
    public async Task Initialises_its_hardware_queue_once_on_its_own_thread()
    {
        IActorRef driver = ActorRefs.Nobody;
        var rig = Rig(new ScriptedDriver(), r => [driver = ChildActorOf(DeviceDriver.Props(r.Queue, 0, blocking: true))]);

        Read(rig, 1);
        await Until(() => rig.Driver.InFlight.Count == 1);
        _ = rig.Device.ReadAsync(65536, new byte[512], cpu: 1);
        await Until(() => rig.Driver.InFlight.Count == 2);
        await Idle(driver);

        Assert.Equal(1, rig.Driver.InitHardwareContextCalls);
    }

    [Fact]
    public async Task A_restart_resets_the_device_and_what_it_held_is_retried()
    {
        // §3.5: a transient device error restarts the actor; the restart quiesces dispatch, resets
        // the driver, hands what it held to the retry rule and tells the parent (here the spec);
        // the unquiesce runs the queue, and the requests reach the reset device again.
        IActorRef driver = ActorRefs.Nobody;
        var rig = Rig(new ScriptedDriver(extra: Hardware.Drivers.DriverFeatures.Resettable),
            r => [driver = ChildActorOf(DeviceDriver.Props(r.Queue, 0, blocking: false), new OneForOneStrategy(_ => Directive.Restart))]);
        Read(rig, 2);
        await Until(() => rig.Driver.InFlight.Count == 2);
        var held = rig.Driver.InFlight.ToArray();

        driver.Tell(new DeviceDriver.Fail(-1, new Hardware.Drivers.BlockDeviceErrorException("controller fatal status")), TestActor);

        var done = await ExpectMsgAsync<DeviceDriver.ResetDone>();
        Assert.Equal(new DeviceDriver.ResetDone("controller fatal status", 2, 0), done);
        Assert.Equal(1, rig.Driver.ResetCalls);
        await Until(() => rig.Driver.InFlight.Count == 2);
        Assert.All(held, rq => Assert.Equal(1, rq.Retries));
        Assert.False(rig.Queue.IsQuiesced);
    }

    [Fact]
    public async Task A_reset_quiesces_every_hardware_queue_before_it_resets_the_driver()
    {
        // Hardware queue 1's dispatcher is a probe: the reset started by queue 0's driver actor
        // waits for it to be idle too before the driver is reset.
        var other = CreateTestProbe();
        IActorRef driver = ActorRefs.Nobody;
        var rig = Rig(new ScriptedDriver(extra: Hardware.Drivers.DriverFeatures.Resettable),
            r => [driver = ChildActorOf(DeviceDriver.Props(r.Queue, 0, blocking: false), new OneForOneStrategy(_ => Directive.Restart)), other.Ref],
            hardwareQueues: 2);

        driver.Tell(new DeviceDriver.Fail(0, new Hardware.Drivers.BlockDeviceErrorException("controller fatal status")), TestActor);

        await other.ExpectMsgAsync<HardwareQueue.WaitIdle>();
        await ExpectNoMsgAsync(TimeSpan.FromMilliseconds(200));
        Assert.Equal(0, rig.Driver.ResetCalls);
        Assert.True(rig.Queue.IsQuiesced);

        other.Reply(HardwareQueue.DispatchIdle.Instance);
        await ExpectMsgAsync<DeviceDriver.ResetDone>();
        Assert.Equal(1, rig.Driver.ResetCalls);

        // ResetDone is told before the driver actor unquiesces (DeviceDriver.FinishReset: counted
        // before any requeued request can complete), so the unquiesce is awaited, not read at once.
        await Until(() => !rig.Queue.IsQuiesced);
    }

    [Fact]
    public async Task A_driver_exception_is_reported_to_the_parent_not_a_crash()
    {
        IActorRef driver = ActorRefs.Nobody;
        var rig = Rig(new ScriptedDriver { ThrowOnQueue = new InvalidOperationException("bug") },
            r => [driver = ChildActorOf(DeviceDriver.Props(r.Queue, 0, blocking: false), new OneForOneStrategy(_ => Directive.Escalate))]);

        Read(rig, 1);

        var fault = await ExpectMsgAsync<HardwareQueue.DeviceFaulted>();
        Assert.IsType<InvalidOperationException>(fault.Error);
        Assert.True(rig.Queue.HardwareContexts[0].IsStopped);
        await Idle(driver);
        Assert.Equal(1, rig.Queue.HardwareContexts[0].PendingCount);
    }
}
