using ActorBlk.Actors.Serialization;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;
using Akka.Actor;
using Akka.Event;

namespace ActorBlk.Actors;

/// <summary>
/// Protocol of the hardware-queue actor: in both modes it runs the periodic timeout scan and takes
/// stop/start commands. In mailbox dispatch the queue's driver actor is its dispatcher; the
/// hardware-queue actor dispatches only while no driver actor lives, to fail what is staged once
/// the device is offline (blk-mq-semantics §3.5).
/// </summary>
public static class HardwareQueue
{
    /// <summary>
    /// Run the queue (a kick): the dispatcher takes, issues and finishes batches until the queue
    /// is empty, stopped or quiesced (mailbox dispatch). One is on its way at a time per queue.
    /// </summary>
    public sealed record Run : INoSerializationVerificationNeeded, IDeadLetterSuppression
    {
        /// <summary>The instance.</summary>
        public static readonly Run Instance = new();
    }

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

    /// <summary>Sent to the parent when a scan found expired requests.</summary>
    public sealed record TimeoutsExpired(int HardwareQueue, int Expired, int InFlight) : IActorBlkMessage;

    /// <summary>Sent to the parent by the dispatcher when the driver faulted during dispatch.</summary>
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
    /// <param name="maxScanInterval">Longest interval between timeout scans.</param>
    public static Props Props(HardwareContext hctx, TimeSpan maxScanInterval) =>
        Akka.Actor.Props.Create(() => new HardwareQueueActor(hctx, maxScanInterval));

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

    private readonly HardwareContext _hctx;
    private readonly TimeSpan _maxScanInterval;
    private readonly ILoggingAdapter _log = Context.GetLogger();
    private readonly RequestErrorLog _timeoutLog = new();
    private Request[]? _scratch;

    // True from a scan that found expired requests until they are handled after the dispatch
    // rounds in progress ended; a scan asked for meanwhile (an abort) runs right after.
    private bool _handlingExpired;
    private bool _scanAgain;

    public HardwareQueueActor(HardwareContext hctx, TimeSpan maxScanInterval)
    {
        _hctx = hctx;
        _maxScanInterval = maxScanInterval;
    }

    public ITimerScheduler Timers { get; set; } = null!;

    protected override void PreStart() => ScheduleScan();

    protected override void OnReceive(object message)
    {
        switch (message)
        {
            case HardwareQueue.Run:
                HandleRun();
                break;
            case HardwareQueue.WaitIdle:
                // Rounds run within one message: none is in progress now.
                Sender.Tell(HardwareQueue.DispatchIdle.Instance);
                break;
            case HardwareQueue.ScanTimeouts:
                HandleScan();
                break;
            case HandleExpired expired:
                HandleExpiredAfterDispatch(expired.Now);
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

    // The queue's dispatcher while no driver actor lives (mailbox dispatch). Once the device is
    // offline, Issue fails every staged request with Offline without calling the driver; while it
    // may still be reopened, requests wait for the new driver actor.
    private void HandleRun()
    {
        if (_hctx.Queue.Runtime is not MailboxRuntime runtime || !runtime.IsDispatcher(_hctx.Index, Self))
        {
            return;
        }

        runtime.BeginTurn(_hctx.Index);
        if (!_hctx.Queue.IsOffline)
        {
            return;
        }

        var scratch = _scratch ??= new Request[DeviceDriverActor.DispatchBatchSize];
        int n;
        while ((n = _hctx.TakeBatch(scratch)) > 0)
        {
            var batch = scratch.AsSpan(0, n);
            _hctx.FinishRound(batch, _hctx.Issue(_hctx.Queue.Driver, batch));
            batch.Clear();
        }
    }

    // The kernel's two passes (blk_mq_timeout_work, blk-mq-semantics §5 item 5): find the expired
    // requests, wait for the dispatch rounds in progress (blk_mq_wait_quiesce_done), then handle
    // what is still expired at the same time. A request whose QueueRq is still running (a thread
    // preempted, or a driver blocking, between Start and its completion inside QueueRq) is thus
    // never completed by its timeout handler under the driver's feet: the driver would go on
    // moving data for a request whose tag, bios and buffer already belong to other I/O.
    private void HandleScan()
    {
        if (_handlingExpired)
        {
            _scanAgain = true;
            return;
        }

        var now = _hctx.Queue.Clock.NowMilliseconds;
        var queue = _hctx.Queue;
        var found = _hctx.FindExpired(now);
        if (found.Expired == 0)
        {
            // Nothing to hand to the driver. Not the handling pass: an abort landing since the
            // first pass (its deadline now, in the same millisecond) would be handled without the
            // wait; its own scan follows and takes the two passes.
            ScheduleScan();
            return;
        }

        if (!queue.IsStarted)
        {
            // No dispatch rounds run, so none can be in progress.
            Report(_hctx.ScanTimeouts(now, queue.Driver), now);
            ScheduleScan();
            return;
        }

        _handlingExpired = true;
        queue.Runtime.WaitDispatchIdleAsync(_hctx).PipeTo(Self, success: () => new HandleExpired(now), failure: _ => new HandleExpired(now));
    }

    // The rounds that were in progress when the expired requests were found have ended. A wait
    // that failed (its dispatcher died) ends the rounds it waited for too.
    private void HandleExpiredAfterDispatch(long now)
    {
        _handlingExpired = false;
        Report(_hctx.ScanTimeouts(now, _hctx.Queue.Driver), now);
        if (_scanAgain)
        {
            _scanAgain = false;
            Self.Tell(HardwareQueue.ScanTimeouts.Instance);
            return;
        }

        ScheduleScan();
    }

    // The line is rate-limited as the I/O error lines are (printk_ratelimited: 10 in 5 s, then the
    // count held back with the next): a short io_timeout on a busy device expired requests at every
    // scan and wrote a line each time, 100 a second (an outside audit, io_timeout 1 under load).
    // The parent hears of every expiry; only the log is limited.
    private void Report(TimeoutScanResult result, long now)
    {
        if (result.Expired > 0)
        {
            if (_timeoutLog.TryEnter(now, out var suppressed))
            {
                _log.Warning("{Queue} hctx {Index}: {Expired} request(s) timed out after {Timeout} ms ({InFlight} in flight){Suppressed}",
                    _hctx.Queue.Name, _hctx.Index, result.Expired, _hctx.Queue.IoTimeoutMs, result.InFlight,
                    suppressed > 0 ? $"; {suppressed} such line(s) suppressed" : string.Empty);
            }

            Context.Parent.Tell(new HardwareQueue.TimeoutsExpired(_hctx.Index, result.Expired, result.InFlight));
        }
    }

    // One timer per hardware queue, re-armed after each scan so an io_timeout change takes effect.
    private void ScheduleScan() =>
        Timers.StartSingleTimer(TimeoutScanKey, HardwareQueue.ScanTimeouts.Instance,
            HardwareQueue.ScanInterval(_maxScanInterval, _hctx.Queue.IoTimeoutMs));

    // The second pass of a scan that found requests expired at Now.
    private sealed record HandleExpired(long Now);
}
