namespace ActorBlk.Hardware.Queues;

/// <summary>Fair-share accounting of one hardware queue, or of a whole request queue with host-wide tags.</summary>
internal sealed class TagShareAccount
{
    /// <summary>1 while marked active (<c>BLK_MQ_S_TAG_ACTIVE</c> / <c>QUEUE_FLAG_HCTX_ACTIVE</c>).</summary>
    public int Active;

    /// <summary>Requests holding a tag while the set is shared (<c>nr_active</c>).</summary>
    public int NrActive;

    /// <summary>The highest <see cref="NrActive"/> since the last reset (a statistic for benchmarks).</summary>
    public int PeakActive;

    /// <summary>Active -> idle transitions (a statistic).</summary>
    public long IdleTransitions;
}
