using ActorBlk.Actors.Tests.Support;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;
using ActorBlk.Hardware.Topology;
using ActorBlk.Testing;
using Akka.TestKit;
using Xunit;
using Xunit.Abstractions;

namespace ActorBlk.Actors.Tests;

using CpuTopology = ActorBlk.Hardware.Topology.CpuTopology;

/// <summary>The device-driver actor, with a probe standing in for the hardware queue.</summary>
public sealed class DeviceDriverSpec : Akka.TestKit.Xunit2.TestKit
{
    public DeviceDriverSpec(ITestOutputHelper output)
        : base(Configs.Simulated, output: output)
    {
    }

    private static Request[] Stage(MailboxRig rig, int n)
    {
        // Builds n requests through the real submission path (a manual runtime stages them in the ring).
        var runtime = new ManualRuntime();
        rig.Queue.Start(runtime);
        for (var i = 0; i < n; i++)
        {
            _ = TestQueues.Submit(rig.Queue, BlockOp.Read, i * 64, 8);
        }

        var batch = new Request[n];
        rig.Queue.HardwareContexts[0].TakeBatch(batch);
        return batch;
    }

    [Fact]
    public async Task Runs_the_batch_through_the_driver_and_answers_the_outcome()
    {
        var rig = new MailboxRig(new ScriptedDriver(), CpuTopology.Simulated(2));
        var batch = Stage(rig, 3);
        rig.Driver.Script(BlockStatus.Ok, BlockStatus.DeviceResource);
        var hctx = CreateTestProbe();
        var driver = Sys.ActorOf(DeviceDriver.Props(rig.Queue, blocking: false));

        driver.Tell(new DeviceDriver.QueueRqs(rig.Queue.HardwareContexts[0], batch), hctx.Ref);

        var done = await hctx.ExpectMsgAsync<HardwareQueue.Dispatched>();
        Assert.Same(batch, done.Batch);
        Assert.Equal(new DispatchOutcome(1, 1, BlockStatus.DeviceResource, null), done.Outcome);
        Assert.Equal(1, rig.Driver.CommitCalls);
    }

    [Fact]
    public async Task Initialises_each_hardware_queue_once_on_its_own_thread()
    {
        var rig = new MailboxRig(new ScriptedDriver(), CpuTopology.Simulated(2));
        var batch = Stage(rig, 2);
        var hctx = CreateTestProbe();
        var driver = Sys.ActorOf(DeviceDriver.Props(rig.Queue, blocking: true));

        driver.Tell(new DeviceDriver.QueueRqs(rig.Queue.HardwareContexts[0], batch[..1]), hctx.Ref);
        driver.Tell(new DeviceDriver.QueueRqs(rig.Queue.HardwareContexts[0], batch[1..]), hctx.Ref);
        await hctx.ExpectMsgAsync<HardwareQueue.Dispatched>();
        await hctx.ExpectMsgAsync<HardwareQueue.Dispatched>();

        Assert.Equal(1, rig.Driver.InitHardwareContextCalls);
        Assert.Equal(2, rig.Driver.InFlight.Count);
    }

    [Fact]
    public async Task A_restart_resets_the_device_and_reports_what_it_requeued()
    {
        // §3.5: a transient device error restarts the actor; the restart quiesces dispatch, resets
        // the driver, hands what it held to the retry rule and tells the parent (here the probe).
        var rig = new MailboxRig(new ScriptedDriver(extra: Hardware.Drivers.DriverFeatures.Resettable), CpuTopology.Simulated(2));
        var batch = Stage(rig, 2);
        var hctx = CreateTestProbe();
        var driver = ChildActorOf(DeviceDriver.Props(rig.Queue, blocking: false),
            new Akka.Actor.OneForOneStrategy(_ => Akka.Actor.Directive.Restart));
        driver.Tell(new DeviceDriver.QueueRqs(rig.Queue.HardwareContexts[0], batch), hctx.Ref);
        await hctx.ExpectMsgAsync<HardwareQueue.Dispatched>();
        Assert.Equal(2, rig.Queue.InFlightCount);

        driver.Tell(new DeviceDriver.Fail(-1, new Hardware.Drivers.BlockDeviceErrorException("controller fatal status")), TestActor);

        var done = await ExpectMsgAsync<DeviceDriver.ResetDone>();
        Assert.Equal(new DeviceDriver.ResetDone("controller fatal status", 2, 0), done);
        Assert.Equal(1, rig.Driver.ResetCalls);
        Assert.Equal(0, rig.Queue.InFlightCount);
        Assert.Equal(2, rig.Queue.HardwareContexts[0].PendingCount);
        Assert.All(batch, rq => Assert.Equal(1, rq.Retries));
    }

    [Fact]
    public async Task A_driver_exception_is_an_outcome_not_a_crash()
    {
        var rig = new MailboxRig(new ScriptedDriver { ThrowOnQueue = new InvalidOperationException("bug") }, CpuTopology.Simulated(2));
        var batch = Stage(rig, 1);
        var hctx = CreateTestProbe();
        var driver = Sys.ActorOf(DeviceDriver.Props(rig.Queue, blocking: false));

        driver.Tell(new DeviceDriver.QueueRqs(rig.Queue.HardwareContexts[0], batch), hctx.Ref);

        var done = await hctx.ExpectMsgAsync<HardwareQueue.Dispatched>();
        Assert.IsType<InvalidOperationException>(done.Outcome.Fault);
        Assert.Equal(0, done.Outcome.Processed);
    }
}
