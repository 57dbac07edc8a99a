using ActorBlk.Hardware.Requests;

namespace ActorBlk.Hardware.Queues;

/// <summary>How requests travel between the stages of a queue.</summary>
public enum DispatchMode
{
    /// <summary>
    /// Submitters stage requests into each hardware queue's lock-free ring; a dedicated dispatch
    /// loop per hardware queue drains it. No message and no allocation per I/O. The default.
    /// </summary>
    Ring,

    /// <summary>Every request travels as messages: software-context actor, hardware-queue actor, driver actor, completion.</summary>
    Mailbox,

    /// <summary>A bio-based device: bios go to its bio driver on the submitting thread (no requests, no queues).</summary>
    Bio,
}

/// <summary>
/// The one seam where ring and mailbox dispatch differ: how a bio reaches its software context,
/// how requests reach a hardware queue's dispatcher, how a dispatcher is woken, and how a
/// redirected completion reaches its target context. Everything else (tags, merging, dispatch
/// rules, completion) is the same code in both modes.
/// </summary>
public interface IQueueRuntime
{
    /// <summary>The dispatch mode this runtime implements.</summary>
    DispatchMode Mode { get; }

    /// <summary>Starts serving <paramref name="queue"/>: dispatchers for its hardware queues.</summary>
    void Attach(RequestQueue queue);

    /// <summary>Runs <see cref="RequestQueue.SubmitBio"/> for <paramref name="bio"/> in the context of <paramref name="ctx"/>.</summary>
    void Submit(SoftwareContext ctx, Bio bio);

    /// <summary>Continues a submission that waited for a tag or a frozen queue, off the waking thread.</summary>
    void ResumeBio(Bio bio);

    /// <summary>Hands one staged request to its hardware queue's dispatcher.</summary>
    void Stage(HardwareContext hctx, Request request);

    /// <summary><see cref="Stage(HardwareContext, Request)"/> for a caller that holds the calling thread's state.</summary>
    internal void Stage(HardwareContext hctx, Request request, BlockThread thread) => Stage(hctx, request);

    /// <summary>
    /// Stages <paramref name="request"/> for the next round of <paramref name="hctx"/> when the
    /// calling thread is running a round of that hardware queue itself (a completion in the round
    /// submitting again) and nothing waits in its ring: the request goes to the dispatcher's own
    /// list and is dispatched next, like the kernel's direct issue, with no ring publish and no
    /// merge window. False when the request must be staged through <see cref="Stage(HardwareContext, Request)"/>.
    /// </summary>
    bool TryStageOwned(HardwareContext hctx, Request request) => false;

    /// <summary><see cref="TryStageOwned(HardwareContext, Request)"/> for a caller that holds the calling thread's state.</summary>
    internal bool TryStageOwned(HardwareContext hctx, Request request, BlockThread thread) => TryStageOwned(hctx, request);

    /// <summary>Hands a batch of staged requests to one hardware queue's dispatcher with one wake-up.</summary>
    void StageBatch(HardwareContext hctx, ReadOnlySpan<Request> requests);

    /// <summary>Asks the dispatcher of <paramref name="hctx"/> to run (asynchronously).</summary>
    void Kick(HardwareContext hctx);

    /// <summary>Runs <see cref="RequestQueue.EndRequest"/> for a redirected completion on <paramref name="target"/>'s CPU.</summary>
    void DeliverCompletion(SoftwareContext target, Request request);

    /// <summary>
    /// True when the calling thread may run the completion of a request submitted through
    /// <paramref name="target"/> in place, once rq_affinity found no reason to redirect it. False
    /// when the thread is foreign to the runtime's CPUs (a timer or reaper thread completing for a
    /// mailbox-dispatched queue): the completion then goes to <paramref name="target"/>'s CPU through
    /// <see cref="DeliverCompletion"/>, as the kernel's interrupt would run it on a CPU of its own.
    /// Ring dispatch, whose threads count as the CPU they run on, always answers true.
    /// </summary>
    bool CompletesInPlace(SoftwareContext target) => true;

    /// <summary>Completes when no dispatch round of <paramref name="hctx"/> is in progress (for quiesce).</summary>
    Task WaitDispatchIdleAsync(HardwareContext hctx);

    /// <summary>Stops serving the queue; dispatchers exit after their current round.</summary>
    Task DetachAsync();
}

/// <summary>Data-plane facts the control plane is told about, lazily and never once per I/O.</summary>
public interface IQueueEvents
{
    /// <summary>
    /// A driver failed: a dispatch round's QueueRq, CommitRqs or InitHardwareContext threw (the
    /// hardware queue stopped and awaits a reset), or its Poll did (reported once until the reset
    /// or reopen ends), or the driver reported its device lost.
    /// </summary>
    void OnDeviceError(HardwareContext hctx, Exception error);

    /// <summary>A request was aborted (<see cref="RequestQueue.AbortRequest"/>): scan <paramref name="hctx"/> for timeouts now.</summary>
    void OnAbort(HardwareContext hctx);

    /// <summary>
    /// A request ended with an error (<c>blk_update_request</c>'s <c>blk_print_req_error</c>), at
    /// most <see cref="RequestErrorLog.DefaultBurst"/> per device in each
    /// <see cref="RequestErrorLog.DefaultIntervalMs"/> ms, as <c>printk_ratelimited</c> lets them
    /// through; <paramref name="suppressed"/> counts those held back since the last one reported.
    /// Not for <see cref="BlockStatus.Offline"/>: the device's loss or removal is reported once
    /// instead (the kernel is silent once the disk is dead, <c>GD_DEAD</c>). Called on the
    /// completing thread: it must not block. An exception it throws is dropped; the request
    /// completes all the same.
    /// </summary>
    void OnRequestError(in RequestError error, int suppressed)
    {
    }

    /// <summary>
    /// Something an operator should see that is no device error and no request's failure: an NBD
    /// server's reason for an error it answered (the human-readable message of an error chunk),
    /// logged as a warning. The driver rate-limits it and makes it one line (control characters
    /// escaped). Called on the driver's thread: it must not block. An exception it throws is dropped.
    /// </summary>
    void OnDriverWarning(HardwareContext hctx, string message)
    {
    }
}
