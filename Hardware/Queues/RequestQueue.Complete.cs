using System.Runtime.CompilerServices;
using ActorBlk.Hardware.Requests;
using ActorBlk.Hardware.Topology;

namespace ActorBlk.Hardware.Queues;

// Completion of a request queue: ending requests exactly once.

public sealed partial class RequestQueue
{
    // The I/O error messages' rate limit (printk_ratelimited), per device.
    private readonly RequestErrorLog _errorLog = new();

    /// <summary>
    /// <c>blk_mq_complete_request</c>: marks the request complete (once) and runs the completion
    /// here or on the submitting CPU as rq_affinity decides (blk-mq-semantics §6 item 4).
    /// </summary>
    internal bool CompleteRequest(Request rq, BlockStatus status, uint generation)
    {
        if (!rq.TryComplete(generation))
        {
            return false;
        }

        rq.Status = status;
        var affinity = (CompletionAffinity)_rqAffinity;
        if (affinity == CompletionAffinity.Anywhere || (rq.Flags & RequestFlags.Polled) != 0)
        {
            EndRequest(rq);
            return true;
        }

        var topology = Topology;
        var target = rq.Ctx!;
        var cpu = CurrentCpu.Resolve(topology);
        var submit = target.Cpu;
        var runtime = Runtime;
        if (topology.IsOnline(submit) &&
            ((cpu != submit && (affinity == CompletionAffinity.SubmittingCpu || !topology.SharesCache(cpu, submit))) ||
             !runtime.CompletesInPlace(target)))
        {
            // Redirected to the submitting CPU by rq_affinity, or completed on a thread that is no
            // CPU of the runtime's (mailbox dispatch: a timer or reaper thread), whose completion
            // runs on the submitting CPU's thread as a kernel interrupt's softirq runs on a CPU.
            runtime.DeliverCompletion(target, rq);
        }
        else
        {
            EndRequest(rq);
        }

        return true;
    }

    /// <summary><c>blk_mq_end_request</c> from the driver: complete here, no redirection.</summary>
    internal bool EndRequestDirect(Request rq, BlockStatus status, uint generation)
    {
        if (!rq.TryComplete(generation))
        {
            return false;
        }

        rq.Status = status;
        EndRequest(rq);
        return true;
    }

    /// <summary>Ends a request with an error status whether or not the driver started it (QueueRq rejected it, or teardown).</summary>
    public bool EndRequestWithStatus(Request rq, BlockStatus status, uint generation)
    {
        ArgumentNullException.ThrowIfNull(rq);
        if (!TryClaimWithStatus(rq, status, generation))
        {
            return false;
        }

        EndRequest(rq);
        return true;
    }

    // Claims rq for an ending with status, whether or not the driver started it: false when
    // something else ended it first (exactly once).
    private static bool TryClaimWithStatus(Request rq, BlockStatus status, uint generation)
    {
        var won = rq.State == RequestState.InFlight ? rq.TryComplete(generation) : rq.TryCompleteUnstarted();
        if (won)
        {
            rq.Status = status;
        }

        return won;
    }

    // The completion proper of a claimed request as its own work item on the thread pool, never on
    // the caller's thread (EndApart, EndApartWithStatus, a timeout handler's ending).
    private static void QueueEnd(Request rq) =>
        ThreadPool.UnsafeQueueUserWorkItem(static rq => rq.Queue!.EndRequest(rq), rq, preferLocal: false);

    /// <summary>
    /// The completion proper, on the completion context (<c>__blk_mq_end_request</c>): frees the
    /// tag and the usage reference, then completes every bio with the request's status, so a
    /// continuation that submits again finds the tag free. A request whose only bio has an end_io
    /// call-back keeps its usage reference, and its tag when nobody waits for one, over the
    /// call-back instead, for a resubmission from the call-back to take over
    /// (<see cref="CompleteHolding"/>).
    /// </summary>
    internal void EndRequest(Request rq)
    {
        ArgumentNullException.ThrowIfNull(rq);
        var thread = BlockThread.Current;
        if (thread.EndApart)
        {
            // Ended by a timeout handler: apart, on the thread pool (HardwareContext's scan).
            QueueEnd(rq);
            return;
        }

        var status = rq.Status;
        var hctx = rq.Hctx!;
        var ctx = rq.Ctx!;
        var sync = IsSync(rq.Op, rq.Flags);
        var bios = rq.DetachBios();

        ctx.CountCompleted(sync, thread);
        if (rq.StatStartNs != 0)
        {
            Stats.Done(rq.Op, rq.Sectors, rq.StatStartNs, thread, status);
            rq.StatStartNs = 0;
        }

        if (status != BlockStatus.Ok)
        {
            ReportError(rq, status);
        }

        if (bios is { Next: null, EndIo: not null } && !Usage.IsFrozen)
        {
            // The request is idle from here on either way: only its tag may stay allocated.
            var holdTag = hctx.CanHoldTag(rq);
            if (holdTag)
            {
                rq.MarkIdle();
            }
            else
            {
                hctx.ReleaseTag(rq, rq.Tag, ctx.Cpu);
            }

            hctx.RestartIfNeeded();
            CompleteHolding(bios, status, ctx.Cpu, holdTag ? rq : null, thread);
            return;
        }

        hctx.ReleaseTag(rq, rq.Tag, ctx.Cpu);
        Usage.Exit(ctx.Cpu);
        hctx.RestartIfNeeded();

        while (bios is not null)
        {
            var next = bios.Next;
            bios.Next = null;
            bios.CompleteFromRequest(status);
            bios = next;
        }
    }

    // blk_update_request: a request that failed is reported, rate-limited as printk_ratelimited
    // is, unless the device is gone (Offline: its loss is reported once, as the kernel stays
    // silent once the disk is dead). The report runs before the request frees its tag and
    // completes its bios: a receiver that throws (IQueueEvents is public) loses its message, never
    // the request's completion.
    // A discard, or a write-zeroes that asked not to fall back to writing (REQ_NOFALLBACK, NBD's
    // FAST_ZERO probe), that the device cannot do: the kernel refuses those before any request
    // (bio level, no message), and the caller asked only to learn whether it can.
    private static bool Quiet(Request rq, BlockStatus status) =>
        status == BlockStatus.NotSupported && (rq.Op == BlockOp.Discard || (rq.Flags & RequestFlags.NoFallback) != 0);

    [MethodImpl(MethodImplOptions.NoInlining)]
    private void ReportError(Request rq, BlockStatus status)
    {
        if (status == BlockStatus.Offline || Quiet(rq, status) || Events is not { } events || !_errorLog.TryEnter(Clock.NowMilliseconds, out var suppressed))
        {
            return;
        }

        try
        {
            events.OnRequestError(new RequestError(Name, rq.Hctx?.Index ?? -1, rq.Op, rq.Flags, rq.Sector, rq.Bytes, status), suppressed);
        }
        catch (Exception)
        {
            // Only a message is lost: the request completes below as it would have.
        }
    }

    /// <summary>
    /// Completes a request's only bio, which has an end_io call-back, holding the request's usage
    /// reference, and its tag if <paramref name="heldTag"/> is set, over the call-back: a bio the
    /// call-back submits to this queue on this thread (the next I/O of a loop such as the bench's,
    /// or fio's) takes them over in <see cref="Enter(Bio)"/> and <see cref="SubmitBio"/> instead of
    /// dropping them here and taking new ones there, four interlocked operations per I/O and the
    /// bitmap search.
    /// <list type="bullet">
    /// <item>The usage reference never lapses, so a freeze that started meanwhile counts it and
    /// waits for the new request, as for any request that entered before the gate closed; a
    /// submission while the gate is closed enters as usual.</item>
    /// <item>The tag is held only while nobody waits for a tag of its map, and taken over only
    /// while still nobody does (<see cref="TakeHeldTag"/>), so a waiter that queued meanwhile is
    /// passed over by at most the one request that took the tag: the next completion finds it
    /// waiting and frees its tag.</item>
    /// <item>What is not taken over is dropped when the call-back returns, the tag first: as the
    /// kernel frees the tag and drops the reference after <c>bio_endio</c>
    /// (<c>blk_mq_end_request</c> then <c>blk_mq_free_request</c>, <c>blk_queue_exit</c>).</item>
    /// </list>
    /// </summary>
    private void CompleteHolding(Bio bio, BlockStatus status, int cpu, Request? heldTag, BlockThread hold)
    {
        // The marks: what the thread holds over the call-back (BlockThread.HoldUsage, HoldTag); a
        // submission on the thread takes them over (Enter, TakeHeldTag) and clears what it took.
        var outerUsage = hold.HoldUsage;
        var outerTag = hold.HoldTag;
        hold.HoldUsage = this;
        hold.HoldTag = heldTag;
        try
        {
            bio.CompleteFromRequest(status);
        }
        finally
        {
            // A nested completion on this thread restores its own outer marks, so each mark still
            // names what this completion holds exactly when it was not taken over.
            var usageTaken = !ReferenceEquals(hold.HoldUsage, this);
            var tagTaken = !ReferenceEquals(hold.HoldTag, heldTag);
            hold.HoldUsage = outerUsage;
            hold.HoldTag = outerTag;
            if (heldTag is not null && !tagTaken)
            {
                heldTag.Hctx!.ReleaseTag(heldTag, heldTag.Tag, cpu);
            }

            if (!usageTaken)
            {
                Usage.Exit(cpu);
            }
        }
    }

    /// <summary>
    /// The tag an end_io call-back on this thread holds (<see cref="CompleteHolding"/>), taken over
    /// for a request of <paramref name="hctx"/> when it belongs to that hardware queue's map, the
    /// bio asks for a normal tag and nobody waits for one; otherwise -1.
    /// </summary>
    private static int TakeHeldTag(HardwareContext hctx, Bio bio, BlockThread thread)
    {
        if (thread.HoldTag is not { } held ||
            !ReferenceEquals(held.Hctx, hctx) ||
            (bio.Flags & RequestFlags.Reserved) != 0 ||
            !hctx.CanHoldTag(held))
        {
            return -1;
        }

        thread.HoldTag = null;
        return held.Tag;
    }

    /// <summary>
    /// Completions of a bio of this queue that were refused because the bio had already completed
    /// (or was back in its pool). Every bio completes exactly once, so this stays 0; anything else
    /// is a block-layer bug that would otherwise go unseen (<c>kernel/debug/block/&lt;dev&gt;/double_completions</c>).
    /// </summary>
    public long DoubleCompletions => Interlocked.Read(ref _doubleCompletions) + Bios.RefusedCompletions;

    internal void CountDoubleCompletion() => Interlocked.Increment(ref _doubleCompletions);

    /// <summary>
    /// End-io call-backs (<see cref="IBioEndIo.OnBioComplete"/>) of this queue's bios that threw.
    /// Each was caught where the bio completed; the I/O counted as completed and nothing of the
    /// queue's state changed (a call-back's exception is never taken for a device error).
    /// </summary>
    public long EndIoFaults => Interlocked.Read(ref _endIoFaults);

    /// <summary>
    /// Raised, on the completion context, with the count so far and the exception, each time an
    /// end-io call-back of this queue's bios throws. A handler must not block; what it throws is
    /// ignored.
    /// </summary>
    public event Action<RequestQueue, long, Exception>? EndIoFaulted;

    internal void ReportEndIoFault(Exception ex)
    {
        var count = Interlocked.Increment(ref _endIoFaults);
        try
        {
            EndIoFaulted?.Invoke(this, count, ex);
        }
        catch (Exception)
        {
            // The report is best effort: a handler's own fault must not reach the completion path.
        }
    }
}
