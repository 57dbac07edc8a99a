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
    /// so a continuation that submits again finds the tag free.
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

    /// <summary>
    /// Completions of a bio of this queue that were refused because the bio had already completed
    /// (or was back in its pool). Every bio completes exactly once, so this stays 0; anything else
    /// is a block-layer bug that would otherwise go unseen (<c>kernel/debug/block/&lt;dev&gt;/double_completions</c>).
    /// </summary>
    public long DoubleCompletions => Interlocked.Read(ref _doubleCompletions) + Bios.RefusedCompletions;

    internal void CountDoubleCompletion() => Interlocked.Increment(ref _doubleCompletions);
}
