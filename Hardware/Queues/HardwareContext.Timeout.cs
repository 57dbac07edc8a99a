using ActorBlk.Hardware.Drivers;

namespace ActorBlk.Hardware.Queues;

// The timeout scan of a hardware queue (blk-timeout.c, blk-mq-semantics §5).

public sealed partial class HardwareContext
{
    /// <summary>
    /// The timeout scan of this hardware queue (<c>blk_mq_timeout_work</c>, blk-mq-semantics §5):
    /// every in-flight request whose deadline has passed gets TIMED_OUT and the driver's handler,
    /// which either completed it (Done) or asks for another full timeout (ResetTimer). A shared
    /// queue with nothing in flight is marked idle.
    /// </summary>
    /// <remarks>
    /// This is the second pass of the kernel's scan: the caller must first have found the expired
    /// requests with <see cref="FindExpired"/> and then waited for the dispatch rounds in progress
    /// (<see cref="IQueueRuntime.WaitDispatchIdleAsync"/>), passing the same <paramref name="now"/>,
    /// so that no handler runs while the <c>QueueRq</c> that started its request is still running
    /// (a driver that completes inside <c>QueueRq</c> would otherwise move data for a request the
    /// handler already completed, and whose tag, bios and buffers belong to other I/O by then).
    /// </remarks>
    public TimeoutScanResult ScanTimeouts(long now, IBlockDriver driver)
    {
        ArgumentNullException.ThrowIfNull(driver);
        return Scan(now, driver);
    }

    /// <summary>
    /// The first pass of the timeout scan (blk-mq-semantics §5 item 5): counts the in-flight
    /// requests expired at <paramref name="now"/> without handling them, and marks an idle shared
    /// queue idle. When some expired, the caller waits for the dispatch rounds in progress and then
    /// handles them with <see cref="ScanTimeouts"/> and the same <paramref name="now"/>.
    /// </summary>
    public TimeoutScanResult FindExpired(long now) => Scan(now, driver: null);

    private TimeoutScanResult Scan(long now, IBlockDriver? driver)
    {
        var expired = 0;
        var inFlight = 0;
        var requests = Tags.Requests;
        for (var t = 0; t < requests.Count; t++)
        {
            // The state and the generation in one load, first: what is read after it (the queue,
            // the mark, the deadline) may already be a later incarnation's, if the request
            // completed and its tag was reused and started meanwhile; the generation says so.
            var rq = requests[t];
            if (!rq.IsInFlight(out var generation) || rq.Hctx != this || rq.Queue != Queue)
            {
                continue;
            }

            inFlight++;
            if (rq.TimedOut || now < rq.Deadline)
            {
                continue;
            }

            if (driver is null)
            {
                expired++;
                continue;
            }

            if (!rq.TryMarkTimedOut())
            {
                continue;
            }

            // Marked: the handler runs only if the request is still the incarnation found expired
            // (the deadline read before the state, which a start publishes after its deadline). A
            // request that completed, its tag reused and started between the loads above, is the
            // next I/O, not expired: before, its handler ran (an NBD client's kills a healthy
            // connection), and the mark is taken back off it (a review; by reasoning, see the commit).
            if (now < rq.Deadline || !rq.IsInFlight(out var current) || current != generation)
            {
                rq.UnmarkTimedOut();
                continue;
            }

            // A request the handler completes (null_blk's and the NBD client's complete it, the
            // retry rule fails it) ends apart on the thread pool: its completion runs its
            // submitter's code (a mirror's continuation, the caller's next I/O), and on this
            // thread (a hardware queue's actor) one that did not return held the handlers of the
            // other expired requests, which nothing else ends, and the actor with them.
            expired++;
            TimeoutAction action;
            var thread = BlockThread.Current;
            var outer = thread.EndApart;
            thread.EndApart = true;
            try
            {
                action = driver.Timeout(rq);
            }
            catch
            {
                // A driver bug: its handler threw, which restarts the hardware queue's actor (the
                // supervisor logs it). The request is re-armed, as for BLK_EH_RESET_TIMER, so that
                // its next expiry runs the handler again; left marked, it was never looked at
                // again and waited for ever unless the driver completed it (a review).
                if (rq.IsInFlight(out current) && current == generation)
                {
                    rq.ResetTimer(now);
                }

                throw;
            }
            finally
            {
                thread.EndApart = outer;
            }

            if (action == TimeoutAction.ResetTimer && rq.IsInFlight(out current) && current == generation)
            {
                rq.ResetTimer(now);
            }
        }

        // Idle only when nothing is started and no tag is held either: a request that holds a tag
        // but waits in a mailbox or on the dispatch list (mailbox dispatch keeps many there) is
        // work in progress, and marking its queue idle would hand its share to the others. The
        // kernel looks at started requests only; the difference is when a scan catches every
        // request of a busy queue between allocation and start.
        if (inFlight == 0 && Volatile.Read(ref Account.NrActive) == 0)
        {
            MarkIdle();
        }

        return new TimeoutScanResult(expired, inFlight);
    }
}
