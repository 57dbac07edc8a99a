using ActorBlk.Actors.Serialization;
using ActorBlk.Hardware.Drivers;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;
using ActorBlk.Hardware.Topology;
using DataPlaneQueue = ActorBlk.Hardware.Queues.RequestQueue;
using Akka.Actor;
using Akka.Event;

namespace ActorBlk.Actors;

/// <summary>
/// Protocol of the device-driver actor: it owns the <see cref="IBlockDriver"/>, is where QueueRq
/// runs in mailbox dispatch, and is the unit its supervisor (the request-queue actor) restarts
/// or stops when the device fails. A restart is a device reset: dispatch is quiesced, the driver
/// is reset, and the requests it held are retried or failed by the retry rule.
/// </summary>
public static class DeviceDriver
{
    /// <summary>Hand a dispatch batch to the driver; the sender gets <see cref="HardwareQueue.Dispatched"/>. Local only.</summary>
    public sealed record QueueRqs(HardwareContext Hctx, Request[] Batch) : INoSerializationVerificationNeeded;

    /// <summary>
    /// The device failed (a driver exception during dispatch, or timeouts piling up): the actor
    /// throws <paramref name="Error"/> so its supervisor decides. <paramref name="HardwareQueue"/>
    /// is -1 for a device-wide cause. Local only.
    /// </summary>
    public sealed record Fail(int HardwareQueue, Exception Error) : INoSerializationVerificationNeeded;

    /// <summary>Sent to the parent when a reset finished: requests requeued and failed (out of retries).</summary>
    public sealed record ResetDone(string Reason, int Requeued, int Failed) : IActorBlkMessage;

    /// <summary>Props of the actor owning the driver of <paramref name="queue"/>.</summary>
    /// <param name="queue">The request queue whose driver the actor owns.</param>
    /// <param name="blocking">The driver's QueueRq may block: give the actor its own thread.</param>
    public static Props Props(DataPlaneQueue queue, bool blocking)
    {
        var props = Akka.Actor.Props.Create(() => new DeviceDriverActor(queue));
        return blocking ? props.WithDispatcher(ActorBlkSettings.BlockingDriverDispatcher) : props;
    }
}

/// <summary>
/// Thrown into the driver actor when a device's requests keep timing out: a transient device
/// error, so the supervisor resets the device as an NVMe driver resets a controller.
/// </summary>
public sealed class DeviceTimeoutsException(string message) : BlockDeviceErrorException(message);

/// <summary>The device-driver actor.</summary>
internal sealed class DeviceDriverActor : UntypedActor, IWithUnboundedStash
{
    private readonly DataPlaneQueue _queue;
    private readonly IBlockDriver _driver;
    private readonly HashSet<HardwareContext> _initialised = [];
    private readonly ILoggingAdapter _log = Context.GetLogger();
    private string _resetReason = string.Empty;

    public DeviceDriverActor(DataPlaneQueue queue)
    {
        _queue = queue;
        _driver = queue.Driver;
    }

    public IStash Stash { get; set; } = null!;

    protected override void OnReceive(object message)
    {
        switch (message)
        {
            case DeviceDriver.QueueRqs q:
                HandleQueueRqs(q);
                break;
            case DeviceDriver.Fail f:
                // Let the supervisor decide: Restart resets the device, Stop gives it up.
                throw f.Error;
            default:
                Unhandled(message);
                break;
        }
    }

    protected override void PostRestart(Exception reason)
    {
        base.PostRestart(reason);
        _resetReason = reason.Message;
        Become(Resetting);
        _queue.QuiesceAsync().PipeTo(Self, success: () => Quiesced.Instance, failure: ex => new Status.Failure(ex));
    }

    protected override void PostStop()
    {
        // exit_hctx for the hardware queues this actor initialised (mailbox dispatch); a restart
        // passes here too, and the next instance initialises them again, as after a reset.
        foreach (var hctx in _initialised)
        {
            try
            {
                _driver.ExitHardwareContext(hctx);
            }
            catch (Exception ex)
            {
                _log.Warning(ex, "{Driver} driver of {Device}: exit of hctx {Index} failed", _driver.Kind, _queue.Name, hctx.Index);
            }
        }

        _initialised.Clear();
    }

    // While the device resets, nothing reaches the driver: a batch comes back untouched, as from
    // a device that is busy (DeviceResource), and runs again when the queue is unquiesced.
    private void Resetting(object message)
    {
        switch (message)
        {
            case DeviceDriver.QueueRqs q:
                Sender.Tell(new HardwareQueue.Dispatched(q.Batch, new DispatchOutcome(0, 0, BlockStatus.DeviceResource, null)));
                break;
            case Quiesced:
                FinishReset();
                break;
            case DeviceDriver.Fail f:
                _log.Debug("{Device}: a failure during the reset is covered by it: {Error}", _queue.Name, f.Error.Message);
                break;
            case Status.Failure failure:
                throw failure.Cause;
            default:
                Stash.Stash();
                break;
        }
    }

    private void FinishReset()
    {
        var requeued = 0;
        var failed = 0;
        try
        {
            if ((_driver.Features & DriverFeatures.Resettable) != 0)
            {
                // The driver abandons what it held; the block layer takes it back.
                _driver.Reset();
                (requeued, failed) = _queue.ReclaimInFlight(BlockStatus.IoError);
            }

            foreach (var hctx in _queue.HardwareContexts)
            {
                if (hctx.IsStopped)
                {
                    hctx.StartQueue();
                }
            }
        }
        finally
        {
            _queue.Unquiesce();
        }

        Context.Parent.Tell(new DeviceDriver.ResetDone(_resetReason, requeued, failed));
        Become(OnReceive);
        Stash.UnstashAll();
    }

    // The driver runs as if on the hardware queue's CPU, so inline completions are routed as they
    // would be from that CPU's interrupt.
    private void HandleQueueRqs(DeviceDriver.QueueRqs q)
    {
        if (_initialised.Add(q.Hctx))
        {
            _driver.InitHardwareContext(q.Hctx);
        }

        DispatchOutcome outcome;
        using (CurrentCpu.Bind(q.Hctx.HomeCpu))
        {
            outcome = q.Hctx.Issue(_driver, q.Batch);
        }

        Sender.Tell(new HardwareQueue.Dispatched(q.Batch, outcome));
    }

    private sealed record Quiesced
    {
        public static readonly Quiesced Instance = new();
    }
}
