using System.Diagnostics;

namespace ActorBlk.Host.Bench;

/// <summary>
/// The clock a bench run times its I/Os and its measured window on, in <see cref="Stopwatch"/>
/// ticks (<see cref="Stopwatch.Frequency"/> per second). A run uses <see cref="System"/>; the
/// accounting specs drive a manual clock so the arithmetic is checked without wall time.
/// </summary>
internal abstract class BenchClock
{
    /// <summary>
    /// The high-resolution monotonic clock the block layer times I/O on (<see cref="ActorBlk.Hardware.Queues.TimestampClock"/>:
    /// the CPU's time-stamp counter where it is invariant, <see cref="Stopwatch.GetTimestamp"/> otherwise).
    /// </summary>
    public static BenchClock System { get; } = new StopwatchClock();

    /// <summary>Ticks since an arbitrary origin; never goes backwards.</summary>
    public abstract long Timestamp { get; }

    /// <summary>
    /// The time a completion or a submission is recorded at: inside a completion batch, the
    /// batch's time, read once per batch as fio reads it once per batch of reaped events
    /// (<c>io_u_queued_complete</c>) and as the kernel's <c>blk_time_get_ns</c> returns a plug's
    /// cached time; outside one, the time now. The system clock returns the block layer's batch
    /// time (<see cref="ActorBlk.Hardware.Queues.BlockTime"/>): it is never earlier than the
    /// submission of a request the batch completes, and it was read before any submission made in
    /// the batch (the next I/O of a slot, from the previous one's end_io), so a latency errs high,
    /// never low. Other clocks return their <see cref="Timestamp"/>.
    /// </summary>
    public virtual long BatchTimestamp => Timestamp;

    /// <summary>A duration in this clock's ticks.</summary>
    public static long Ticks(TimeSpan duration) => (long)(duration.TotalSeconds * Stopwatch.Frequency);

    /// <summary>A number of this clock's ticks as a duration.</summary>
    public static TimeSpan Duration(long ticks) => TimeSpan.FromSeconds((double)ticks / Stopwatch.Frequency);

    /// <summary>A number of this clock's ticks in nanoseconds.</summary>
    public static long Nanoseconds(long ticks) => (long)(ticks * (1e9 / Stopwatch.Frequency));

    private sealed class StopwatchClock : BenchClock
    {
        public override long Timestamp => ActorBlk.Hardware.Queues.TimestampClock.GetTimestamp();

        public override long BatchTimestamp => ActorBlk.Hardware.Queues.BlockTime.Timestamp;
    }
}
