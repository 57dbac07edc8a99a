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

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static long EnterBatch() => EnterBatch(BlockThread.Current);

    /// <summary>Starts a batch on the calling thread unless one runs; returns what <see cref="ExitBatch(long)"/> restores.</summary>
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

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void Invalidate() => Invalidate(BlockThread.Current);

    /// <summary>Makes the next read of the batch fresh (a new round of the same batch).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void Invalidate(BlockThread thread)
    {
        if (thread.Time > 0)
        {
            thread.Time = -1;
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void ExitBatch(long outer) => BlockThread.Current.Time = outer;

    /// <summary>Ends the batch <see cref="EnterBatch(BlockThread)"/> started.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void ExitBatch(BlockThread thread, long outer) => thread.Time = outer;
}
