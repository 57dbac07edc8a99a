using ActorBlk.Hardware.Requests;
using ActorBlk.Hardware.Topology;

namespace ActorBlk.Hardware.Queues;

// Completion of a request queue: ending requests exactly once.

public sealed partial class RequestQueue
{
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
        var won = rq.State == RequestState.InFlight ? rq.TryComplete(generation) : rq.TryCompleteUnstarted();
        if (!won)
        {
            return false;
        }

        rq.Status = status;
        EndRequest(rq);
        return true;
    }

    /// <summary>
    /// The completion proper, on the completion context (<c>__blk_mq_end_request</c>): frees the
    /// tag and the usage reference first, then completes every bio with the request's status,
    /// so a continuation that submits again finds the tag free. A request whose only bio has an
    /// end_io call-back keeps its usage reference over the call-back instead, for a resubmission
    /// from the call-back to take over (<see cref="CompleteHoldingUsage"/>).
    /// </summary>
    internal void EndRequest(Request rq)
    {
        ArgumentNullException.ThrowIfNull(rq);
        var status = rq.Status;
        var hctx = rq.Hctx!;
        var ctx = rq.Ctx!;
        var sync = IsSync(rq.Op, rq.Flags);
        var bios = rq.DetachBios();

        ctx.CountCompleted(sync);
        if (rq.StatStartNs != 0)
        {
            Stats.Done(rq.Op, rq.Sectors, rq.StatStartNs, status);
            rq.StatStartNs = 0;
        }

        hctx.ReleaseTag(rq, rq.Tag, ctx.Cpu);
        if (bios is { Next: null, EndIo: not null } && !Usage.IsFrozen)
        {
            hctx.RestartIfNeeded();
            CompleteHoldingUsage(bios, status, ctx.Cpu);
            return;
        }

        Usage.Exit(ctx.Cpu);
        hctx.RestartIfNeeded();

        while (bios is not null)
        {
            var next = bios.Next;
            bios.Next = null;
            bios.Complete(status);
            bios = next;
        }
    }

    // The queue whose usage reference the thread holds over an end_io call-back (see
    // CompleteHoldingUsage); Enter takes it over. Null when none is held or it was taken.
    [ThreadStatic]
    private static RequestQueue? t_heldUsage;

    /// <summary>
    /// Completes a request's only bio, which has an end_io call-back, holding the request's usage
    /// reference over the call-back: a bio the call-back submits to this queue on this thread (the
    /// next I/O of a loop such as the bench's, or fio's) takes the reference over in
    /// <see cref="Enter"/> instead of dropping it here and taking a new one there, two interlocked
    /// operations per I/O. The reference never lapses, so a freeze that started meanwhile counts it
    /// and waits for the new request, as for any request that entered before the gate closed; a
    /// submission while the gate is closed enters as usual. A reference not taken over is dropped
    /// when the call-back returns: later than before the call-back, as the kernel drops it
    /// (<c>blk_queue_exit</c> after <c>bio_endio</c>).
    /// </summary>
    private void CompleteHoldingUsage(Bio bio, BlockStatus status, int cpu)
    {
        var outer = t_heldUsage;
        t_heldUsage = this;
        try
        {
            bio.Complete(status);
        }
        finally
        {
            // A nested completion of this queue on this thread restores its own outer mark, so
            // the mark still names this queue exactly when this reference was not taken over.
            var taken = !ReferenceEquals(t_heldUsage, this);
            t_heldUsage = outer;
            if (!taken)
            {
                Usage.Exit(cpu);
            }
        }
    }

    /// <summary>
    /// Completions of a bio of this queue that were refused because the bio had already completed
    /// (or was back in its pool). Every bio completes exactly once, so this stays 0; anything else
    /// is a block-layer bug that would otherwise go unseen (<c>kernel/debug/block/&lt;dev&gt;/double_completions</c>).
    /// </summary>
    public long DoubleCompletions => Interlocked.Read(ref _doubleCompletions) + Bios.RefusedCompletions;

    internal void CountDoubleCompletion() => Interlocked.Increment(ref _doubleCompletions);
}
