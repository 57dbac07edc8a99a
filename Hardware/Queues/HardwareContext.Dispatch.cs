using System.Runtime.CompilerServices;
using System.Numerics;
using ActorBlk.Hardware.Drivers;
using ActorBlk.Hardware.Requests;

namespace ActorBlk.Hardware.Queues;

// Dispatch of a hardware queue: stop/start, requeue, staging and the three-step round (blk-mq-semantics §3.5).

public sealed partial class HardwareContext
{
    /// <summary>Stops the queue (<c>blk_mq_stop_hw_queue</c>): nothing is dispatched until <see cref="StartQueue"/>.</summary>
    public void StopQueue() => Interlocked.Or(ref _state, StateStopped);

    /// <summary>Starts a stopped queue and runs it (<c>blk_mq_start_hw_queue</c>).</summary>
    public void StartQueue()
    {
        Interlocked.And(ref _state, ~StateStopped);
        Queue.Runtime.Kick(this);
    }

    /// <summary>Hands a request back for dispatch ahead of new work, from any thread (<c>blk_mq_requeue_request</c>).</summary>
    public void Requeue(Request rq)
    {
        ArgumentNullException.ThrowIfNull(rq);
        rq.Unstart();
        PutBack(rq);
    }

    // An idle (unstarted) request goes back ahead of new work and the queue is run.
    internal void PutBack(Request rq)
    {
        if (!Requeued.TryPublish(rq))
        {
            throw new InvalidOperationException("The requeue ring overflowed; it is sized to the tag depth and cannot fill.");
        }

        Queue.Runtime.Kick(this);
    }

    /// <summary>
    /// Stages a request for the next round (the dispatcher's side of staging, used by the mailbox
    /// dispatcher when a request arrives as a message; ring dispatch publishes from submitters).
    /// </summary>
    /// <exception cref="InvalidOperationException">The ring is full; it is sized to the tag depth, so this is a bug.</exception>
    internal void Stage(Request rq)
    {
        ArgumentNullException.ThrowIfNull(rq);
        if (!Ring.TryPublish(rq))
        {
            throw new InvalidOperationException($"{this}: the staging ring overflowed; it is sized to the tag depth.");
        }
    }

    /// <summary>True when a round would find something to dispatch.</summary>
    public bool HasWork => Volatile.Read(ref _dispatchCount) > 0 || _ownerStagedCount > 0 || !Ring.IsEmpty || !Requeued.IsEmpty;

    /// <summary>Most requests the dispatcher's own list holds (one round's batch).</summary>
    internal const int OwnerStagedCapacity = 64;

    /// <summary>Requests on the dispatcher's own list (see <see cref="TryStageOwned"/>).</summary>
    internal int OwnerStagedCount => _ownerStagedCount;

    /// <summary>Requests ever staged on the dispatcher's own list instead of the ring.</summary>
    internal long OwnerStagedTotal => Volatile.Read(ref _ownerStagedTotal);

    /// <summary>
    /// Stages a request on the dispatcher's own list, for the thread that owns the dispatcher and
    /// is inside a round (the caller checks that): only while the ring is empty, so that a thread's
    /// requests are still dispatched in the order it staged them (the list is taken before the
    /// ring, and nothing of this thread can wait in the ring behind it), and while the list has room.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal bool TryStageOwned(Request rq)
    {
        var n = _ownerStagedCount;
        if (n == _ownerStaged.Length || !Ring.IsEmpty)
        {
            return false;
        }

        _ownerStaged[n] = rq;
        Volatile.Write(ref _ownerStagedCount, n + 1);
        Volatile.Write(ref _ownerStagedTotal, _ownerStagedTotal + 1);
        return true;
    }

    // Moves the dispatcher's own list to the front of batch; returns how many.
    private int TakeOwnerStaged(Span<Request> batch)
    {
        var count = _ownerStagedCount;
        var n = Math.Min(count, batch.Length);
        var staged = _ownerStaged;
        for (var i = 0; i < n; i++)
        {
            batch[i] = staged[i];
        }

        // What did not fit moves to the front, in order; the slots left behind are cleared.
        for (var i = n; i < count; i++)
        {
            staged[i - n] = staged[i];
        }

        for (var i = count - n; i < count; i++)
        {
            staged[i] = null!;
        }

        Volatile.Write(ref _ownerStagedCount, count - n);
        return n;
    }

    /// <summary>
    /// First step of a round (dispatcher): fills <paramref name="batch"/> with requests to dispatch,
    /// the dispatch list first (setting SCHED_RESTART, as the kernel does when it finds earlier
    /// leftovers), then new requests from the ring. Returns 0 while stopped or quiesced.
    /// </summary>
    internal int TakeBatch(Span<Request> batch)
    {
        if (IsStopped || Queue.IsQuiesced || batch.Length == 0)
        {
            return 0;
        }

        // Counters written by the dispatcher only: plain writes, read racily by statistics.
        Volatile.Write(ref _run, _run + 1);
        SpliceRequeued();

        var n = 0;
        if (_dispatchHead is not null)
        {
            Interlocked.Or(ref _state, StateSchedRestart);
            while (n < batch.Length && _dispatchHead is { } rq)
            {
                _dispatchHead = rq.NextInList;
                rq.NextInList = null;
                batch[n++] = rq;
            }

            if (_dispatchHead is null)
            {
                _dispatchTail = null;
            }

            Volatile.Write(ref _dispatchCount, _dispatchCount - n);
            return n;
        }

        // The dispatcher's own list first: what its thread staged while the ring was empty.
        var owned = _ownerStagedCount > 0 ? TakeOwnerStaged(batch) : 0;
        n = owned + Ring.TakeBatch(batch[owned..]);
        for (var i = owned; i < n; i++)
        {
            batch[i].ClaimForDispatch();
        }

        Volatile.Write(ref _queued, _queued + n);
        return n;
    }

    /// <summary>
    /// Second step (driver context): calls the driver for each request (<c>blk_mq_dispatch_rq_list</c>).
    /// Stops at the first Resource/DeviceResource refusal or driver exception; ends requests the
    /// driver rejected with another status; calls CommitRqs when the batch stopped early after
    /// something was queued.
    /// </summary>
    internal DispatchOutcome Issue(IBlockDriver driver, ReadOnlySpan<Request> batch)
    {
        ArgumentNullException.ThrowIfNull(driver);
        if (Queue.IsOffline)
        {
            // The device is gone or the queue torn down: nothing reaches the driver any more. Each
            // request completes apart on the thread pool, as SetOffline fails those in flight: a
            // completion runs its submitter's code (a mirror's continuation, the caller's next
            // I/O), and ended in turn here, one that did not return (a bench's end_io resubmitting
            // to a mirror degraded onto a leg that completes inline) kept the rest of the batch,
            // and everything behind it in the ring, from failing, and held this dispatcher's
            // thread (a dispatch loop, a submitter's direct round, a hardware queue's actor).
            foreach (var rq in batch)
            {
                Queue.EndApartWithStatus(rq, BlockStatus.Offline, rq.Generation);
            }

            return new DispatchOutcome(0, batch.Length, BlockStatus.Ok, null);
        }

        var queued = 0;
        var status = BlockStatus.Ok;
        var i = 0;
        Exception? fault = null;
        for (; i < batch.Length; i++)
        {
            var rq = batch[i];
            var generation = rq.Generation;
            try
            {
                status = driver.QueueRq(this, rq, last: i == batch.Length - 1);
            }
            catch (Exception ex)
            {
                fault = ex;
                status = BlockStatus.IoError;

                // Put back unless the driver already ended it: never started (its generation is
                // the one read before QueueRq), or started and still in flight, it is a leftover.
                // A driver that completed the request and then threw has freed it (its tag may
                // be another bio's by now): putting it back would run it twice.
                var started = rq.Generation;
                if (started != generation && !rq.TryUnstart(started))
                {
                    i++;
                }

                break;
            }

            if (status == BlockStatus.Ok)
            {
                // Accepted without Start (the driver broke the contract): the request is started
                // here, so its deadline runs and a removal finds it among the driver's. Left idle,
                // it was no one's: a completion the driver sent was refused as not in flight, no
                // timeout ever looked at it, and a destroy failed nothing for it, so its caller
                // waited for ever and its tag and usage reference outlived the device (an outside
                // driver audit).
                if (rq.Generation == generation && rq.TryStartForDriver(generation))
                {
                    Interlocked.Increment(ref _unstartedAccepted);
                }

                queued++;
                continue;
            }

            if (status is BlockStatus.Resource or BlockStatus.DeviceResource)
            {
                rq.Unstart();
                break;
            }

            // Ended whether or not the driver started it, as blk_mq_dispatch_rq_list ends it
            // (virtio_blk starts the request, then returns BLK_STS_IOERR when the ring refuses
            // it). Never started, it is still the idle incarnation read before QueueRq; started,
            // it is the next one, and only that incarnation still in flight is ended: a driver
            // that broke the contract by completing it as well has freed it already.
            if (rq.Generation == generation)
            {
                Queue.EndRequestWithStatus(rq, status, generation);
            }
            else
            {
                Queue.EndRequestDirect(rq, status, generation + 1);
            }
        }

        var processed = i;
        if ((processed < batch.Length || status != BlockStatus.Ok) && queued > 0)
        {
            try
            {
                driver.CommitRqs(this);
            }
            catch (Exception ex)
            {
                // A driver bug, handled as a throw from QueueRq: the round's leftovers go back to
                // the dispatch list and the fault stops the queue and reaches the supervisor.
                // Before, the exception left the round: ring dispatch's loop thread died with it
                // (the process aborted), and in mailbox dispatch the leftovers, already off the
                // ring, were neither put back nor failed: their callers waited for ever and their
                // tags stayed taken past the device's removal (an outside driver audit).
                fault ??= ex;
            }
        }

        return new DispatchOutcome(queued, processed, status, fault);
    }

    /// <summary>
    /// Third step (dispatcher): puts leftovers back at the head of the dispatch list in order,
    /// updates the busy average and histogram, and says when to run next.
    /// </summary>
    internal DispatchDecision FinishRound(ReadOnlySpan<Request> batch, DispatchOutcome outcome)
    {
        _dispatched[DispatchBucket(outcome.Queued)]++;
        var leftovers = batch[outcome.Processed..];
        if (leftovers.IsEmpty && outcome.Fault is null)
        {
            UpdateDispatchBusy(false);
            return HasWork ? DispatchDecision.RerunNow : DispatchDecision.Idle;
        }

        for (var i = leftovers.Length - 1; i >= 0; i--)
        {
            PushFront(leftovers[i]);
        }

        UpdateDispatchBusy(true);
        if (outcome.Fault is not null)
        {
            Fault(outcome.Fault);
            return DispatchDecision.Faulted;
        }

        if (!NeedsRestart)
        {
            return DispatchDecision.RerunNow;
        }

        return outcome.LastStatus == BlockStatus.Resource ? DispatchDecision.RerunAfterDelay : DispatchDecision.WaitForCompletion;
    }

    /// <summary>
    /// The driver failed on this hardware queue (a round's QueueRq or CommitRqs threw, or its
    /// InitHardwareContext did): the queue stops until the supervisor's reset starts it again.
    /// The caller reports <see cref="LastFault"/> to the supervisor.
    /// </summary>
    internal void Fault(Exception fault)
    {
        LastFault = fault;
        StopQueue();

        // The device went offline while this round ran, after Issue looked (a driver that
        // failed because its connection had just been dropped for good): the start that
        // SetOffline gives every hardware queue may have come before this stop, and nothing
        // starts an offline queue again (its supervisor ignores device errors by then), so
        // the leftovers, never started and so never timed out, would wait for ever. Start
        // it: the next round fails them with Offline. StopQueue's interlocked write orders the
        // stop before this read, and SetOffline marks the queue offline before it starts the
        // queues, so either that start clears this stop or this read sees the queue offline.
        if (Queue.IsOffline)
        {
            StartQueue();
        }
    }

    /// <summary>One whole round on the calling thread: take, issue, finish (ring mode's dispatch loop).</summary>
    internal DispatchDecision RunOnce(IBlockDriver driver, Request[] scratch)
    {
        ArgumentNullException.ThrowIfNull(scratch);
        var n = TakeBatch(scratch);
        if (n == 0)
        {
            return IsStopped || Queue.IsQuiesced || !HasWork ? DispatchDecision.Idle : DispatchDecision.RerunNow;
        }

        var outcome = Issue(driver, scratch.AsSpan(0, n));
        var decision = FinishRound(scratch.AsSpan(0, n), outcome);

        // Mostly one or a few: a loop costs less than a call to clear them.
        for (var i = 0; i < n; i++)
        {
            scratch[i] = null!;
        }

        return decision;
    }

    /// <summary>The histogram bucket of a round that queued <paramref name="queued"/> requests: 0, or min(6, ilog2(n) + 1).</summary>
    public static int DispatchBucket(int queued) => queued == 0 ? 0 : Math.Min(DispatchOrder - 1, BitOperations.Log2((uint)queued) + 1);

    /// <summary>Takes every request off the dispatch list and the rings (teardown, device reset).</summary>
    internal List<Request> DrainPending()
    {
        var all = new List<Request>();
        SpliceRequeued();
        while (_dispatchHead is { } rq)
        {
            _dispatchHead = rq.NextInList;
            rq.NextInList = null;
            all.Add(rq);
        }

        _dispatchTail = null;
        Volatile.Write(ref _dispatchCount, 0);
        for (var i = 0; i < _ownerStagedCount; i++)
        {
            all.Add(_ownerStaged[i]);
            _ownerStaged[i] = null!;
        }

        Volatile.Write(ref _ownerStagedCount, 0);
        while (Ring.TryTake(out var staged))
        {
            staged.ClaimForDispatch();
            all.Add(staged);
        }

        return all;
    }

    // blk_mq_update_dispatch_busy: ewma = (7 * ewma + (busy ? 16 : 0)) / 8, untouched at 0 when idle.
    internal void UpdateDispatchBusy(bool busy)
    {
        var ewma = _dispatchBusy;
        if (ewma == 0 && !busy)
        {
            return;
        }

        ewma = ((ewma * 7) + (busy ? 16 : 0)) / 8;
        Volatile.Write(ref _dispatchBusy, ewma);
    }

    private void PushFront(Request rq)
    {
        rq.NextInList = _dispatchHead;
        _dispatchHead = rq;
        _dispatchTail ??= rq;
        Volatile.Write(ref _dispatchCount, _dispatchCount + 1);
    }

    private void PushBack(Request rq)
    {
        rq.NextInList = null;
        if (_dispatchTail is null)
        {
            _dispatchHead = rq;
        }
        else
        {
            _dispatchTail.NextInList = rq;
        }

        _dispatchTail = rq;
        Volatile.Write(ref _dispatchCount, _dispatchCount + 1);
    }

    private void SpliceRequeued()
    {
        while (Requeued.TryTake(out var rq))
        {
            PushBack(rq);
        }
    }
}
