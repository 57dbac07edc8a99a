namespace ActorBlk.Hardware.Queues;

/// <summary>What the retry rule did with a request taken back from the device.</summary>
public enum RetryOutcome
{
    /// <summary>Put back at the head of its hardware queue, to be dispatched again.</summary>
    Requeued,

    /// <summary>Out of retries (or fail-fast, or the queue is dying): completed with the error status.</summary>
    Failed,

    /// <summary>It had completed (or been taken back) already: nothing was done.</summary>
    AlreadyCompleted,
}
