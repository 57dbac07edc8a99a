using ActorBlk.Actors.Tests.Support;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;
using ActorBlk.Hardware.Topology;
using ActorBlk.Testing;
using Akka.Actor;
using Akka.TestKit;
using Xunit;
using Xunit.Abstractions;

namespace ActorBlk.Actors.Tests;

using CpuTopology = ActorBlk.Hardware.Topology.CpuTopology;

/// <summary>
/// The hardware-queue actor as the mailbox dispatcher, with a probe standing in for the driver
/// actor (the spec runs the driver calls itself) and virtual time for its timers.
/// </summary>
public sealed class HardwareQueueSpec : Akka.TestKit.Xunit2.TestKit
{
    private readonly MailboxRig _rig;
    private readonly TestProbe _driver;
    private readonly IActorRef _hctx;

    public HardwareQueueSpec(ITestOutputHelper output)
        : base(Configs.VirtualTime, output: output)
    {
        _rig = new MailboxRig(new ScriptedDriver(), CpuTopology.Simulated(2), new QueueOptions { MergePolicy = MergePolicy.Off, IoTimeoutMs = 1000 },
            clock: new SchedulerBlockClock(Sys.Scheduler));
        _driver = CreateTestProbe();
        var contexts = _rig.Queue.SoftwareContexts.Select(c => Sys.ActorOf(SoftwareContext.Props(c, _rig.Device))).ToArray();
        _hctx = ChildActorOf(HardwareQueue.Props(_rig.Queue.HardwareContexts[0], _driver.Ref, mailbox: true, TimeSpan.FromSeconds(1)));
        _rig.Start(contexts, [_hctx]);
    }

    private TestScheduler Scheduler => (TestScheduler)Sys.Scheduler;

    private HardwareContext Hctx => _rig.Queue.HardwareContexts[0];

    private async Task<DeviceDriver.QueueRqs> ExpectBatch() => await _driver.ExpectMsgAsync<DeviceDriver.QueueRqs>();

    // Plays the driver actor: runs the batch through the scripted driver and answers the queue.
    private void Answer(DeviceDriver.QueueRqs batch) =>
        _driver.Reply(new HardwareQueue.Dispatched(batch.Batch, batch.Hctx.Issue(_rig.Driver, batch.Batch)));

    [Fact]
    public async Task A_batch_lost_with_a_stopped_driver_goes_back_and_reaches_the_next_one()
    {
        // The driver actor stops (a gone device) with the batch unanswered in its mailbox.
        _ = _rig.Device.ReadAsync(0, new byte[512], cpu: 0);
        var lost = await ExpectBatch();
        await _driver.ExpectNoMsgAsync(TimeSpan.FromMilliseconds(50));
        Sys.Stop(_driver.Ref);
        await AwaitConditionAsync(() => Task.FromResult(Hctx.PendingCount == 1), TimeSpan.FromSeconds(5));

        // No dispatch while there is no driver; the reopened device's actor gets the same request.
        var reopened = CreateTestProbe();
        _hctx.Tell(new HardwareQueue.UseDriver(reopened.Ref));
        var again = await reopened.ExpectMsgAsync<DeviceDriver.QueueRqs>();
        Assert.Same(lost.Batch[0], again.Batch[0]);
        reopened.Reply(new HardwareQueue.Dispatched(again.Batch, again.Hctx.Issue(_rig.Driver, again.Batch)));
        Assert.Single(_rig.Driver.InFlight);
    }

    [Fact]
    public async Task Staged_requests_go_to_the_driver_actor_in_one_batch()
    {
        using (_rig.Device.Plug())
        {
            for (var i = 0; i < 3; i++)
            {
                _ = _rig.Device.ReadAsync(i * 4096L, new byte[512], cpu: 0);
            }
        }

        var batch = await ExpectBatch();
        Assert.Equal(3, batch.Batch.Length);
        Answer(batch);
        await _driver.ExpectNoMsgAsync(TimeSpan.FromMilliseconds(100));
        Assert.Equal(3, _rig.Driver.InFlight.Count);
        Assert.Equal([false, false, true], _rig.Driver.Calls.Select(c => c.Last));
    }

    [Fact]
    public async Task Resource_reruns_at_once_then_after_3_ms_of_virtual_time()
    {
        _ = _rig.Device.ReadAsync(0, new byte[512], cpu: 1);
        _rig.Driver.Script(BlockStatus.Resource, BlockStatus.Resource);

        Answer(await ExpectBatch());          // SCHED_RESTART clear: rerun now
        Answer(await ExpectBatch());          // restart set, Resource: rerun after 3 ms
        await _driver.ExpectNoMsgAsync(TimeSpan.FromMilliseconds(100));

        Scheduler.Advance(TimeSpan.FromMilliseconds(3));
        Answer(await ExpectBatch());

        Assert.Single(_rig.Driver.InFlight);
    }

    [Fact]
    public async Task Device_resource_waits_for_a_completion()
    {
        _ = _rig.Device.ReadAsync(0, new byte[512], cpu: 1);
        Answer(await ExpectBatch());
        _ = _rig.Device.ReadAsync(4096, new byte[512], cpu: 1);
        _rig.Driver.Script(BlockStatus.DeviceResource, BlockStatus.DeviceResource);
        Answer(await ExpectBatch());
        Answer(await ExpectBatch());

        Scheduler.Advance(TimeSpan.FromMilliseconds(10));
        await _driver.ExpectNoMsgAsync(TimeSpan.FromMilliseconds(100));

        _rig.Driver.CompleteAll();
        Answer(await ExpectBatch());
        Assert.Single(_rig.Driver.InFlight);
    }

    [Fact]
    public async Task Wait_idle_answers_only_after_the_round_in_flight()
    {
        _ = _rig.Device.ReadAsync(0, new byte[512], cpu: 1);
        var batch = await ExpectBatch();

        _hctx.Tell(HardwareQueue.WaitIdle.Instance);
        await ExpectNoMsgAsync(TimeSpan.FromMilliseconds(100));

        Answer(batch);
        await ExpectMsgAsync<HardwareQueue.DispatchIdle>();
    }

    [Fact]
    public async Task The_timeout_scan_reports_expired_requests_to_the_parent()
    {
        _ = _rig.Device.ReadAsync(0, new byte[512], cpu: 1);
        Answer(await ExpectBatch());

        // Step virtual time past one io_timeout; each scan re-arms its timer when it has run.
        await AwaitAssertAsync(() =>
        {
            Scheduler.Advance(TimeSpan.FromMilliseconds(100));
            Assert.True(HasMessages);
        }, TimeSpan.FromSeconds(10), TimeSpan.FromMilliseconds(20));

        var expired = await ExpectMsgAsync<HardwareQueue.TimeoutsExpired>();
        Assert.Equal(1, expired.Expired);
        Assert.Single(_rig.Driver.TimedOut);
    }

    [Fact]
    public async Task A_driver_fault_stops_the_queue_and_is_reported()
    {
        _ = _rig.Device.ReadAsync(0, new byte[512], cpu: 1);
        _rig.Driver.ThrowOnQueue = new Hardware.Drivers.BlockDeviceErrorException("media gone");
        Answer(await ExpectBatch());

        var fault = await ExpectMsgAsync<HardwareQueue.DeviceFaulted>();
        Assert.Equal("media gone", fault.Error.Message);
        Assert.True(Hctx.IsStopped);
        Assert.Equal(1, Hctx.PendingCount);
    }

    [Fact]
    public async Task Stop_and_start_control_dispatch()
    {
        _hctx.Tell(HardwareQueue.Stop.Instance);
        _ = _rig.Device.ReadAsync(0, new byte[512], cpu: 1);
        await _driver.ExpectNoMsgAsync(TimeSpan.FromMilliseconds(200));

        _hctx.Tell(HardwareQueue.Start.Instance);
        Answer(await ExpectBatch());
    }

    [Fact]
    public async Task The_scan_interval_is_half_the_io_timeout_at_most()
    {
        Assert.Equal(TimeSpan.FromMilliseconds(500), HardwareQueue.ScanInterval(TimeSpan.FromSeconds(1), 1000));
        Assert.Equal(TimeSpan.FromSeconds(1), HardwareQueue.ScanInterval(TimeSpan.FromSeconds(1), 30_000));
        Assert.Equal(TimeSpan.FromMilliseconds(10), HardwareQueue.ScanInterval(TimeSpan.FromSeconds(1), 4));
        await Task.CompletedTask;
    }
}
