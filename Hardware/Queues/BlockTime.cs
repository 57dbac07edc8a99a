using System.Diagnostics;
using System.Runtime.CompilerServices;

namespace ActorBlk.Hardware.Queues;

/// <summary>
/// The time I/O accounting reads (<c>blk_time_get_ns</c>, block/blk.h): the high-resolution
/// monotonic clock in <see cref="Stopwatch"/> ticks (<see cref="TimestampClock"/>: the CPU's time-stamp
/// counter where it is invariant), read at most once per completion batch.
/// Inside a batch (one dispatch round of a driver that does not block, one reap of an io_uring's completions)
/// the first read on the thread is kept and later reads return it, as the kernel keeps the time
/// in the task's plug (<c>plug-&gt;cur_ktime</c>) until the task sleeps. Outside a batch every
/// read is fresh.
/// </summary>
/// <remarks>
/// The first read of a batch happens after the batch's requests were taken (from the ring or the
/// completion queue), so every request it completes was submitted before that time: a latency
/// measured against it is never negative, only up to one batch's length longer for requests
/// started inside the batch. A batch costs one clock read instead of two per request; on a VM
/// with kvm-clock a <c>clock_gettime</c> costs about 30 ns (the time-stamp counter about 12 ns), close to a tenth of the whole null-device path.
/// </remarks>
public static class BlockTime
{
    /// <summary>Now, in <see cref="Stopwatch"/> ticks: the batch's time inside a batch, the clock otherwise.</summary>
    public static long Timestamp
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get => TimestampOn(BlockThread.Current);
    }

    /// <summary><see cref="Timestamp"/> for the calling thread, whose state the caller already holds.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static long TimestampOn(BlockThread thread)
    {
        // 0: no batch on this thread; -1: in a batch, not read yet; otherwise the batch's time.
        var cached = thread.Time;
        if (cached > 0)
        {
            return cached;
        }

        var now = TimestampClock.GetTimestamp();
        if (cached < 0)
        {
            thread.Time = now;
        }

        return now;
    }

    /// <summary>
    /// Starts a batch on this thread; returns the state to hand back to <see cref="ExitBatch(long)"/>.
    /// A nested batch (a stacked device's round inside another's) shares the outer one's time.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static long EnterBatch() => EnterBatch(BlockThread.Current);

    /// <summary><see cref="EnterBatch()"/> for a caller that holds the calling thread's state.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static long EnterBatch(BlockThread thread)
    {
        var outer = thread.Time;
        if (outer == 0)
        {
            thread.Time = -1;
        }

        return outer;
    }

    /// <summary>
    /// Forgets the batch's time after the thread blocked inside the batch (a synchronous transfer),
    /// so the next read is fresh again, as the kernel drops the plug's time when the task sleeps;
    /// also between the rounds a dispatch loop chains inside one owned round, each of which is its
    /// own batch.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void Invalidate() => Invalidate(BlockThread.Current);

    /// <summary><see cref="Invalidate()"/> for a caller that holds the calling thread's state.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void Invalidate(BlockThread thread)
    {
        if (thread.Time > 0)
        {
            thread.Time = -1;
        }
    }

    /// <summary>Ends a batch started by <see cref="EnterBatch()"/>: the next read outside it is fresh.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void ExitBatch(long outer) => BlockThread.Current.Time = outer;

    /// <summary><see cref="ExitBatch(long)"/> for a caller that holds the calling thread's state.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void ExitBatch(BlockThread thread, long outer) => thread.Time = outer;
}
