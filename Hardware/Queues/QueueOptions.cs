namespace ActorBlk.Hardware.Queues;

/// <summary>The <c>nomerges</c> attribute: which merges the queue attempts (blk-mq-semantics §3.2 item 4).</summary>
public enum MergePolicy
{
    /// <summary>0: every merge (plug, staging window, and a scheduler's extended lookups).</summary>
    All = 0,

    /// <summary>
    /// 1: only simple one-hit merges (<c>QUEUE_FLAG_NOXMERGES</c>). Extended lookups belong to an
    /// I/O scheduler; with none attached, as here, this behaves as 0, exactly as in the kernel.
    /// </summary>
    SimpleOnly = 1,

    /// <summary>2: no merge attempts at all (<c>QUEUE_FLAG_NOMERGES</c>).</summary>
    Off = 2,
}

/// <summary>The <c>rq_affinity</c> attribute: where completions run (blk-mq-semantics §6).</summary>
public enum CompletionAffinity
{
    /// <summary>0: where the completion was reaped.</summary>
    Anywhere = 0,

    /// <summary>1 (default): redirected to the submitting CPU when it does not share the reaping CPU's last-level cache.</summary>
    CacheGroup = 1,

    /// <summary>2: always on the exact submitting CPU.</summary>
    SubmittingCpu = 2,
}

/// <summary>Where the continuation of an awaited I/O runs.</summary>
public enum CompletionContinuation
{
    /// <summary>
    /// On the completion context itself (the dispatch loop, a CPU's completion worker, or the
    /// software-context actor), like a kernel completion call-back: fastest, but code after
    /// <c>await</c> must not block.
    /// </summary>
    Inline,

    /// <summary>Queued to the .NET thread pool: safe for any code, slower.</summary>
    ThreadPool,
}

/// <summary>Run-time settings of a request queue (the writable part of <c>queue/</c>).</summary>
public sealed record QueueOptions
{
    /// <summary>Which merges to attempt.</summary>
    public MergePolicy MergePolicy { get; init; } = MergePolicy.All;

    /// <summary>Completion affinity; 1 by default as in the kernel.</summary>
    public CompletionAffinity RqAffinity { get; init; } = CompletionAffinity.CacheGroup;

    /// <summary>Request timeout in milliseconds; 0 takes the tag set's timeout.</summary>
    public int IoTimeoutMs { get; init; }

    /// <summary>Polling enabled (needs poll queues and a driver that polls).</summary>
    public bool IoPoll { get; init; }

    /// <summary>The device refuses writes.</summary>
    public bool ReadOnly { get; init; }

    /// <summary>The device is rotational.</summary>
    public bool Rotational { get; init; }

    /// <summary>Where awaited I/O continues.</summary>
    public CompletionContinuation Continuation { get; init; } = CompletionContinuation.Inline;

    /// <summary>
    /// How many times a request taken back from the device (a reset, a timeout) is retried before
    /// it fails (the retry rule); 5 by default, as NVMe's <c>max_retries</c> and SCSI disks.
    /// </summary>
    public int MaxRetries { get; init; } = RequestQueue.DefaultMaxRetries;
}
