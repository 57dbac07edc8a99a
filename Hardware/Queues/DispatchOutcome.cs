using ActorBlk.Hardware.Requests;

namespace ActorBlk.Hardware.Queues;

/// <summary>The result of handing one batch to the driver (<c>blk_mq_dispatch_rq_list</c>).</summary>
/// <param name="Queued">Requests the driver accepted.</param>
/// <param name="Processed">Requests consumed: accepted or ended with an error status.</param>
/// <param name="LastStatus">Status of the last QueueRq call.</param>
/// <param name="Fault">The exception a driver threw, if any.</param>
public readonly record struct DispatchOutcome(int Queued, int Processed, BlockStatus LastStatus, Exception? Fault);
