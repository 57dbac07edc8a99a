using ActorBlk.Hardware.Queues;
using Akka.Actor;

namespace ActorBlk.Actors;

/// <summary>Request deadlines on the actor system scheduler's clock, so TestKit virtual time moves them.</summary>
internal sealed class SchedulerBlockClock(IScheduler scheduler) : BlockClock
{
    public override long NowMilliseconds => (long)scheduler.MonotonicClock.TotalMilliseconds;
}
