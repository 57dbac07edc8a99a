using ActorBlk.Actors.Serialization;
using ActorBlk.Hardware.Drivers;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;
using Akka.Actor;
using Akka.Event;

namespace ActorBlk.Actors;

/// <summary>
/// Protocol of the hardware-queue actor: in mailbox dispatch it is the queue's dispatcher (it
/// stages requests, runs dispatch rounds through the driver actor, applies the requeue and rerun
/// rules); in both modes it runs the periodic timeout scan and takes stop/start commands.
/// </summary>
public static class HardwareQueue
{
    /// <summary>Stage one request for dispatch (mailbox dispatch). Local only.</summary>
    public sealed record Dispatch(Request Request) : INoSerializationVerificationNeeded;

    /// <summary>Stage a batch of requests, e.g. a plug flush (mailbox dispatch). Local only.</summary>
    public sealed record DispatchBatch(Request[] Requests) : INoSerializationVerificationNeeded;

    /// <summary>Run the queue (a kick): dispatch whatever is staged.</summary>
    public sealed record Run : INoSerializationVerificationNeeded
    {
        /// <summary>The instance.</summary>
        public static readonly Run Instance = new();
    }

    /// <summary>The driver actor's answer to a dispatch batch. Local only.</summary>
    public sealed record Dispatched(Request[] Batch, DispatchOutcome Outcome) : INoSerializationVerificationNeeded;

    /// <summary>Reply <see cref="DispatchIdle"/> once no dispatch round is in progress (quiesce). Local only.</summary>
    public sealed record WaitIdle : INoSerializationVerificationNeeded
    {
        /// <summary>The instance.</summary>
        public static readonly WaitIdle Instance = new();
    }

    /// <summary>No dispatch round is in progress.</summary>
    public sealed record DispatchIdle : INoSerializationVerificationNeeded
    {
        /// <summary>The instance.</summary>
        public static readonly DispatchIdle Instance = new();
    }

    /// <summary>Scan for expired requests now (the timer sends it; anyone may).</summary>
    public sealed record ScanTimeouts : IActorBlkMessage
    {
        /// <summary>The instance.</summary>
        public static readonly ScanTimeouts Instance = new();
    }

    /// <summary>Stop dispatching (<c>blk_mq_stop_hw_queue</c>).</summary>
    public sealed record Stop : IActorBlkMessage
    {
        /// <summary>The instance.</summary>
        public static readonly Stop Instance = new();
    }

    /// <summary>Start a stopped queue and run it (<c>blk_mq_start_hw_queue</c>).</summary>
    public sealed record Start : IActorBlkMessage
    {
        /// <summary>The instance.</summary>
        public static readonly Start Instance = new();
    }

    /// <summary>Send dispatch batches to a new driver actor (after a gone device was reopened). Local only.</summary>
    public sealed record UseDriver(IActorRef Driver) : INoSerializationVerificationNeeded;

    /// <summary>Sent to the parent when a scan found expired requests.</summary>
    public sealed record TimeoutsExpired(int HardwareQueue, int Expired, int InFlight) : IActorBlkMessage;

    /// <summary>Sent to the parent when the driver faulted during dispatch.</summary>
    public sealed record DeviceFaulted(int HardwareQueue, Exception Error) : INoSerializationVerificationNeeded;

    /// <summary>Asks for the queue's counters.</summary>
    public sealed record GetStats : IActorBlkQuery
    {
        /// <summary>The instance.</summary>
        public static readonly GetStats Instance = new();
    }

    /// <summary>The hardware queue's counters (the kernel's per-hctx debug attributes).</summary>
    public sealed record Stats(int Index, bool Mapped, bool Stopped, long Run, long Queued, int Pending, int Active, int DispatchBusy, long[] Dispatched) : IActorBlkMessage;

    /// <summary>Props of the actor for <paramref name="hctx"/>.</summary>
    /// <param name="hctx">The hardware queue.</param>
    /// <param name="driver">The driver actor (mailbox dispatch sends batches there).</param>
    /// <param name="mailbox">True when this actor is the dispatcher (mailbox dispatch).</param>
    /// <param name="maxScanInterval">Longest interval between timeout scans.</param>
    public static Props Props(HardwareContext hctx, IActorRef driver, bool mailbox, TimeSpan maxScanInterval) =>
        Akka.Actor.Props.Create(() => new HardwareQueueActor(hctx, driver, mailbox, maxScanInterval));

    /// <summary>
    /// The scan interval for a queue: <c>min(max, io_timeout / 2)</c>, at least 10 ms (the
    /// scheduler's tick), so a short timeout is noticed within half its length.
    /// </summary>
    public static TimeSpan ScanInterval(TimeSpan max, int ioTimeoutMs) =>
        TimeSpan.FromMilliseconds(Math.Max(10, Math.Min(max.TotalMilliseconds, ioTimeoutMs / 2.0)));
}

/// <summary>The hardware-queue actor.</summary>
internal sealed class HardwareQueueActor : UntypedActor, IWithTimers
{
    private const string TimeoutScanKey = "timeout-scan";
    private const string RerunKey = "rerun";

    private readonly HardwareContext _hctx;
    private IActorRef _driver;
    private readonly bool _mailbox;
    private readonly TimeSpan _maxScanInterval;
    private readonly Request[] _scratch = new Request[DispatchBatchSize];
    private readonly List<IActorRef> _idleWaiters = [];
    private readonly ILoggingAdapter _log = Context.GetLogger();
    private bool _roundScheduled;

    // The batch the driver actor holds (a round in flight), and which driver actor holds it.
    private Request[]? _batch;
    private IActorRef? _batchTarget;
    private bool _driverAlive = true;

    public HardwareQueueActor(HardwareContext hctx, IActorRef driver, bool mailbox, TimeSpan maxScanInterval)
    {
        _hctx = hctx;
        _driver = driver;
        _mailbox = mailbox;
        _maxScanInterval = maxScanInterval;
    }

    private bool RoundInFlight => _batch is not null;

    /// <summary>Most requests one mailbox dispatch round hands to the driver.</summary>
    public const int DispatchBatchSize = 64;

    public ITimerScheduler Timers { get; set; } = null!;

    protected override void PreStart()
    {
        if (_mailbox)
        {
            Context.Watch(_driver);
        }

        ScheduleScan();
    }

    protected override void OnReceive(object message)
    {
        switch (message)
        {
            case HardwareQueue.Dispatch d:
                _hctx.Stage(d.Request);
                ScheduleRound();
                break;
            case HardwareQueue.DispatchBatch b:
                foreach (var rq in b.Requests)
                {
                    _hctx.Stage(rq);
                }

                ScheduleRound();
                break;
            case HardwareQueue.Run:
                ScheduleRound();
                break;
            case RunRound:
                HandleRunRound();
                break;
            case HardwareQueue.Dispatched done:
                HandleDispatched(done);
                break;
            case HardwareQueue.WaitIdle:
                if (RoundInFlight)
                {
                    _idleWaiters.Add(Sender);
                }
                else
                {
                    Sender.Tell(HardwareQueue.DispatchIdle.Instance);
                }

                break;
            case HardwareQueue.ScanTimeouts:
                HandleScan();
                break;
            case HardwareQueue.UseDriver use:
                _driver = use.Driver;
                _driverAlive = true;
                if (_mailbox)
                {
                    Context.Watch(_driver);
                    ScheduleRound();
                }

                break;
            case Terminated t:
                HandleDriverTerminated(t.ActorRef);
                break;
            case HardwareQueue.Stop:
                _hctx.StopQueue();
                break;
            case HardwareQueue.Start:
                _hctx.StartQueue();
                break;
            case HardwareQueue.GetStats:
                Sender.Tell(new HardwareQueue.Stats(_hctx.Index, _hctx.IsMapped, _hctx.IsStopped, _hctx.RunCount, _hctx.QueuedCount,
                    _hctx.PendingCount, _hctx.ActiveRequests, _hctx.DispatchBusy, [.. _hctx.DispatchedHistogram]));
                break;
            default:
                Unhandled(message);
                break;
        }
    }

    // A round runs after the messages already in the mailbox, so requests that arrived together
    // go to the driver together.
    private void ScheduleRound()
    {
        if (!_mailbox || _roundScheduled || RoundInFlight)
        {
            return;
        }

        _roundScheduled = true;
        Self.Tell(RunRound.Instance);
    }

    private void HandleRunRound()
    {
        _roundScheduled = false;
        if (RoundInFlight)
        {
            return;
        }

        if (!_driverAlive && !_hctx.Queue.IsOffline)
        {
            // The device is gone and may be reopened: requests wait until UseDriver.
            ReleaseIdleWaiters();
            return;
        }

        var n = _hctx.TakeBatch(_scratch);
        if (n == 0)
        {
            ReleaseIdleWaiters();
            return;
        }

        var batch = _scratch.AsSpan(0, n).ToArray();
        Array.Clear(_scratch, 0, n);
        if (!_driverAlive)
        {
            // Offline with no driver: Issue fails every request with Offline without calling it.
            FinishRound(batch, _hctx.Issue(_hctx.Queue.Driver, batch));
            return;
        }

        _batch = batch;
        _batchTarget = _driver;
        _driver.Tell(new DeviceDriver.QueueRqs(_hctx, batch));
    }

    private void HandleDispatched(HardwareQueue.Dispatched done)
    {
        if (!ReferenceEquals(done.Batch, _batch))
        {
            return;
        }

        FinishRound(done.Batch, done.Outcome);
    }

    // The driver actor was stopped (the device is gone). A local actor's messages arrive before
    // its Terminated, so a batch still unanswered never reached the driver: it went to dead
    // letters with the actor's mailbox. It goes back to the head of the queue untouched.
    private void HandleDriverTerminated(IActorRef actor)
    {
        if (actor.Equals(_driver))
        {
            _driverAlive = false;
        }

        if (_batch is { } lost && actor.Equals(_batchTarget))
        {
            FinishRound(lost, new DispatchOutcome(0, 0, BlockStatus.DeviceResource, null));
            ScheduleRound();
        }
    }

    private void FinishRound(Request[] batch, DispatchOutcome outcome)
    {
        _batch = null;
        _batchTarget = null;
        var decision = _hctx.FinishRound(batch, outcome);
        switch (decision)
        {
            case DispatchDecision.RerunNow:
                ScheduleRound();
                break;
            case DispatchDecision.RerunAfterDelay:
                Timers.StartSingleTimer(RerunKey, HardwareQueue.Run.Instance, HardwareContext.ResourceDelay);
                break;
            case DispatchDecision.Faulted:
                Context.Parent.Tell(new HardwareQueue.DeviceFaulted(_hctx.Index, outcome.Fault!));
                break;
        }

        if (!RoundInFlight)
        {
            ReleaseIdleWaiters();
        }
    }

    private void HandleScan()
    {
        var result = _hctx.ScanTimeouts(_hctx.Queue.Clock.NowMilliseconds, _hctx.Queue.Driver);
        if (result.Expired > 0)
        {
            _log.Warning("{Queue} hctx {Index}: {Expired} request(s) timed out after {Timeout} ms ({InFlight} in flight)",
                _hctx.Queue.Name, _hctx.Index, result.Expired, _hctx.Queue.IoTimeoutMs, result.InFlight);
            Context.Parent.Tell(new HardwareQueue.TimeoutsExpired(_hctx.Index, result.Expired, result.InFlight));
        }

        ScheduleScan();
    }

    // One timer per hardware queue, re-armed after each scan so an io_timeout change takes effect.
    private void ScheduleScan() =>
        Timers.StartSingleTimer(TimeoutScanKey, HardwareQueue.ScanTimeouts.Instance,
            HardwareQueue.ScanInterval(_maxScanInterval, _hctx.Queue.IoTimeoutMs));

    private void ReleaseIdleWaiters()
    {
        foreach (var waiter in _idleWaiters)
        {
            waiter.Tell(HardwareQueue.DispatchIdle.Instance);
        }

        _idleWaiters.Clear();
    }

    private sealed record RunRound
    {
        public static readonly RunRound Instance = new();
    }
}
