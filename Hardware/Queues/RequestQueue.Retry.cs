using ActorBlk.Hardware.Drivers;
using ActorBlk.Hardware.Requests;

namespace ActorBlk.Hardware.Queues;

// The retry policy of a request queue: retry or fail, abort, and reclaiming requests after a device reset.

public sealed partial class RequestQueue
{
    /// <summary>The default of <see cref="MaxRetries"/>.</summary>
    public const int DefaultMaxRetries = 5;

    /// <summary>How many times a request taken back from the device is retried before it fails.</summary>
    public int MaxRetries { get; set; }

    /// <summary>
    /// The retry rule, for a request the driver gives up on (a timeout) or the block layer takes
    /// back (a device reset): while it has retries left, is not fail-fast and the queue is not
    /// dying, it goes back to the head of its hardware queue with one retry more; otherwise it
    /// completes with <paramref name="failStatus"/>. Exactly once either way: a request that
    /// completed meanwhile is left alone.
    /// </summary>
    public RetryOutcome RetryOrFail(Request rq, BlockStatus failStatus)
    {
        ArgumentNullException.ThrowIfNull(rq);
        var generation = rq.Generation;
        if (rq.Queue != this || rq.State != RequestState.InFlight)
        {
            return RetryOutcome.AlreadyCompleted;
        }

        if (MayRetry(rq))
        {
            if (!rq.TryUnstart(generation))
            {
                return RetryOutcome.AlreadyCompleted;
            }

            CountRetry(rq);
            rq.Hctx!.PutBack(rq);
            return RetryOutcome.Requeued;
        }

        return EndRequestWithStatus(rq, failStatus, generation) ? RetryOutcome.Failed : RetryOutcome.AlreadyCompleted;
    }

    /// <summary>
    /// <c>blk_abort_request</c> (semantics §5 item 8): the request's deadline becomes now and its
    /// hardware queue's timeout scan runs at once, so the driver's <c>Timeout</c> handler sees it
    /// as expired. A request that is not in flight on this queue is left alone.
    /// </summary>
    /// <returns>True when the request was in flight and is now due.</returns>
    public bool AbortRequest(Request rq)
    {
        ArgumentNullException.ThrowIfNull(rq);
        // The state and generation in one load, before the queue and hardware queue, and the
        // deadline moved only for that incarnation: a request that completed meanwhile, its tag
        // reused, is the next I/O's, whose deadline must stay its own (a review).
        if (!rq.IsInFlight(out var generation) || rq.Queue != this || rq.Hctx is not { } hctx || !rq.TryExpire(generation, Clock.NowMilliseconds))
        {
            return false;
        }

        Events?.OnAbort(hctx);
        return true;
    }

    /// <summary>
    /// Takes back every request the driver holds (<c>blk_mq_tagset_busy_iter</c> after a
    /// controller reset) and applies <see cref="RetryOrFail"/> to each. Call it with dispatch
    /// quiesced and after the driver's <see cref="IBlockDriver.Reset"/>, so the driver has
    /// abandoned them.
    /// </summary>
    /// <returns>How many were requeued and how many failed.</returns>
    /// <remarks>
    /// The requests that fail are claimed here and completed each apart on the thread pool, as
    /// <see cref="SetOffline"/> does: this runs on a supervisor's actor, and a completion runs its
    /// submitter's code (a mirror's continuation, the caller's next I/O), which must not run there.
    /// </remarks>
    public (int Requeued, int Failed) ReclaimInFlight(BlockStatus failStatus)
    {
        var requeued = 0;
        List<Request>? failed = null;
        foreach (var (rq, generation) in InFlightClaims())
        {
            if (MayRetry(rq))
            {
                if (rq.TryUnstart(generation))
                {
                    CountRetry(rq);
                    rq.Hctx!.PutBack(rq);
                    requeued++;
                }

                continue;
            }

            if (rq.TryComplete(generation))
            {
                rq.Status = failStatus;
                (failed ??= []).Add(rq);
            }
        }

        EndApart(failed);
        return (requeued, failed?.Count ?? 0);
    }

    // The retry rule's test: not fail-fast, retries left (or this one not counted), queue alive.
    private bool MayRetry(Request rq) =>
        (rq.Flags & RequestFlags.FailFast) == 0 && (rq.Retries < MaxRetries || rq.RetryNotCounted) && !IsDying && !_detached;

    // One retry more, unless the device refused the request without running it (RetryNotCounted).
    private static void CountRetry(Request rq)
    {
        if (rq.RetryNotCounted)
        {
            rq.RetryNotCounted = false;
            return;
        }

        rq.Retries++;
    }

    /// <summary>
    /// <see cref="EndRequestWithStatus"/> with the completion proper queued as its own work item on
    /// the thread pool (<see cref="EndApart"/>): for a caller that ends several requests in turn
    /// (dispatch failing what an offline device was sent, teardown), so one caller's end_io that
    /// does not return cannot keep the others from being ended. Claimed here, exactly once.
    /// </summary>
    internal bool EndApartWithStatus(Request rq, BlockStatus status, uint generation)
    {
        if (!TryClaimWithStatus(rq, status, generation))
        {
            return false;
        }

        QueueEnd(rq);
        return true;
    }

    // Completes requests already claimed (TryComplete won, Status set), each as its own work item
    // on the thread pool, as the kernel completes each request of a reset or dead device in its
    // own softirq: never inline one after another on the caller's thread.
    private static void EndApart(List<Request>? claimed)
    {
        if (claimed is null)
        {
            return;
        }

        foreach (var rq in claimed)
        {
            QueueEnd(rq);
        }
    }
}
