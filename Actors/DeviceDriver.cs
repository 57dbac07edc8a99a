using ActorBlk.Actors.Serialization;
using ActorBlk.Hardware.Drivers;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;
using ActorBlk.Hardware.Topology;
using Akka.Actor;
using Akka.Event;

namespace ActorBlk.Actors;

/// <summary>
/// Protocol of the device-driver actors: one per hardware queue of a device. In mailbox dispatch
/// the driver actor of a hardware queue is its dispatcher: it takes batches off the queue, calls
/// QueueRq and finishes the round within one message. In both modes it is the unit its supervisor
/// (the request-queue actor) restarts or stops when the device fails. A restart is a device reset:
/// dispatch on every hardware queue is quiesced, the driver is reset, and the requests it held are
/// retried or failed by the retry rule.
/// </summary>
public static class DeviceDriver
{
    /// <summary>
    /// The device failed (a driver exception during dispatch, or timeouts piling up): the actor
    /// throws <paramref name="Error"/> so its supervisor decides. <paramref name="HardwareQueue"/>
    /// is -1 for a device-wide cause. Local only.
    /// </summary>
    public sealed record Fail(int HardwareQueue, Exception Error) : INoSerializationVerificationNeeded;

    /// <summary>Sent to the parent when a reset finished: requests requeued and failed (out of retries).</summary>
    public sealed record ResetDone(string Reason, int Requeued, int Failed) : IActorBlkMessage;

    /// <summary>Props of the driver actor of hardware queue <paramref name="hardwareQueue"/> of <paramref name="queue"/>.</summary>
    /// <param name="queue">The request queue whose driver the actor calls.</param>
    /// <param name="hardwareQueue">The index of the hardware queue the actor serves.</param>
    /// <param name="blocking">The driver's QueueRq may block: give the actor its own thread.</param>
    public static Props Props(RequestQueue queue, int hardwareQueue, bool blocking)
    {
        ArgumentNullException.ThrowIfNull(queue);
        ArgumentOutOfRangeException.ThrowIfNegative(hardwareQueue);
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(hardwareQueue, queue.HardwareContexts.Count);
        var props = Akka.Actor.Props.Create(() => new DeviceDriverActor(queue, hardwareQueue));
        return blocking ? props.WithDispatcher(ActorBlkSettings.BlockingDriverDispatcher) : props;
    }
}

/// <summary>
/// Thrown into the driver actor when a device's requests keep timing out: a transient device
/// error, so the supervisor resets the device as an NVMe driver resets a controller.
/// </summary>
public sealed class DeviceTimeoutsException(string message) : BlockDeviceErrorException(message);

/// <summary>The device-driver actor of one hardware queue.</summary>
internal sealed class DeviceDriverActor : UntypedActor, IWithUnboundedStash, IWithTimers
{
    /// <summary>Most requests one mailbox dispatch round hands to the driver.</summary>
    public const int DispatchBatchSize = 64;

    // Rounds run in one turn before the actor yields its thread to other actors (it sends itself
    // a Run when work is left).
    private const int RoundsPerTurn = 4;
    private const string RerunKey = "rerun";

    private readonly RequestQueue _queue;
    private readonly HardwareContext _hctx;
    private readonly IBlockDriver _driver;
    private readonly Request[] _scratch = new Request[DispatchBatchSize];
    private readonly ILoggingAdapter _log = Context.GetLogger();
    private bool _initialised;
    private string _resetReason = string.Empty;

    // True from the reset's quiesce until FinishReset releases it. A driver actor stopped in the
    // middle of a reset (the device was found gone meanwhile) releases it in PostStop, or the
    // queue would stay quiesced after a reopen and every request would wait for ever.
    private bool _resetQuiesceHeld;

    public DeviceDriverActor(RequestQueue queue, int hardwareQueue)
    {
        _queue = queue;
        _hctx = queue.HardwareContexts[hardwareQueue];
        _driver = queue.Driver;
    }

    public IStash Stash { get; set; } = null!;

    public ITimerScheduler Timers { get; set; } = null!;

    protected override void OnReceive(object message)
    {
        switch (message)
        {
            case HardwareQueue.Run:
                RunTurn();
                break;
            case HardwareQueue.WaitIdle:
                // Rounds run within one message: none is in progress now.
                Sender.Tell(HardwareQueue.DispatchIdle.Instance);
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
        _resetQuiesceHeld = true;

        // The quiesce covers every hardware queue of the device, so no other driver actor calls
        // the driver while it resets; it asks this actor too, which answers from Resetting.
        _queue.QuiesceAsync().PipeTo(Self, success: () => Quiesced.Instance, failure: ex => new Status.Failure(ex));
    }

    protected override void PostStop()
    {
        if (_resetQuiesceHeld)
        {
            _resetQuiesceHeld = false;
            _queue.Unquiesce();
        }

        // exit_hctx for the hardware queue this actor initialised (mailbox dispatch); a restart
        // passes here too, and the next instance initialises it again, as after a reset.
        if (!_initialised)
        {
            return;
        }

        _initialised = false;
        try
        {
            _driver.ExitHardwareContext(_hctx);
        }
        catch (Exception ex)
        {
            _log.Warning(ex, "{Driver} driver of {Device}: exit of hctx {Index} failed", _driver.Kind, _queue.Name, _hctx.Index);
        }
    }

    // While the device resets the queue is quiesced: a turn takes nothing, and the unquiesce at
    // the end of the reset runs every hardware queue again.
    private void Resetting(object message)
    {
        switch (message)
        {
            case HardwareQueue.Run:
                RunTurn();
                break;
            case HardwareQueue.WaitIdle:
                Sender.Tell(HardwareQueue.DispatchIdle.Instance);
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

            // Told before the queue runs again: the reset is counted before any request it
            // requeued can complete, so whoever saw that completion and then asks the queue
            // (GetInfo, the stat files) finds the reset.
            Context.Parent.Tell(new DeviceDriver.ResetDone(_resetReason, requeued, failed));

            // Also before the queue runs again: a driver's Poll that throws from now on (pollers
            // never stop) is a new device error, reported behind the ResetDone above, so it starts
            // a reset of its own. Cleared when the parent handled ResetDone, a throw in between
            // found the flag of the fault this reset covered still set and was dropped.
            _queue.ClearPollFaults();
        }
        finally
        {
            _resetQuiesceHeld = false;
            _queue.Unquiesce();
        }

        Become(OnReceive);
        Stash.UnstashAll();
    }

    // One turn of the dispatcher (mailbox dispatch; a ring-dispatch queue never sends Run here):
    // rounds of take, issue, finish (blk_mq_run_hw_queue) until the queue has nothing to give,
    // with the rerun rules of blk-mq-semantics §3 deciding what follows a partial round.
    private void RunTurn()
    {
        if (_queue.Runtime is not MailboxRuntime runtime)
        {
            return;
        }

        runtime.BeginTurn(_hctx.Index);
        for (var round = 0; round < RoundsPerTurn; round++)
        {
            var n = _hctx.TakeBatch(_scratch);
            if (n == 0)
            {
                // Empty, stopped or quiesced: a staged request, Start or Unquiesce runs it again.
                return;
            }

            var batch = _scratch.AsSpan(0, n);
            var outcome = Issue(batch);
            var decision = _hctx.FinishRound(batch, outcome);
            batch.Clear();
            switch (decision)
            {
                case DispatchDecision.RerunNow:
                    continue;
                case DispatchDecision.RerunAfterDelay:
                    Timers.StartSingleTimer(RerunKey, HardwareQueue.Run.Instance, HardwareContext.ResourceDelay);
                    return;
                case DispatchDecision.Faulted:
                    Context.Parent.Tell(new HardwareQueue.DeviceFaulted(_hctx.Index, outcome.Fault!));
                    return;
                default:
                    // Idle, or waiting for a completion to rerun it (SCHED_RESTART).
                    return;
            }
        }

        // Work is left: yield, and run again after what is already in the mailbox.
        runtime.Kick(_hctx);
    }

    // The driver runs as if on the hardware queue's CPU, so inline completions are routed as they
    // would be from that CPU's interrupt.
    private DispatchOutcome Issue(ReadOnlySpan<Request> batch)
    {
        if (!_initialised && !_queue.IsOffline)
        {
            try
            {
                _driver.InitHardwareContext(_hctx);
            }
            catch (Exception ex)
            {
                // A driver bug, handled as a throw from QueueRq: nothing of the batch was issued,
                // so all of it goes back to the dispatch list and the fault reaches the supervisor.
                // Before, the exception left the turn with the batch already off the ring: its
                // requests were lost with their tags (an outside driver audit).
                return new DispatchOutcome(0, 0, BlockStatus.Ok, ex);
            }

            _initialised = true;
        }

        using (CurrentCpu.Bind(_hctx.HomeCpu))
        {
            return _hctx.Issue(_driver, batch);
        }
    }

    private sealed record Quiesced
    {
        public static readonly Quiesced Instance = new();
    }
}
