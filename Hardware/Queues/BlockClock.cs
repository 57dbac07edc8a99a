namespace ActorBlk.Hardware.Queues;

/// <summary>
/// The clock request deadlines are measured on, in milliseconds. The block layer only needs
/// millisecond precision for timeouts, so the system clock is the cheap coarse monotonic tick;
/// tests substitute a virtual clock that moves when they say so.
/// </summary>
public abstract class BlockClock
{
    /// <summary>
    /// The monotonic system clock: <see cref="TimestampClock"/> (the time-stamp counter where it
    /// is invariant, else <c>CLOCK_MONOTONIC</c>), read once per completion batch (<see cref="BlockTime"/>);
    /// milliseconds are its nanoseconds divided, so a request's deadline costs no clock read of its own inside a round.
    /// </summary>
    public static BlockClock System { get; } = new SystemClock();

    /// <summary>Milliseconds since an arbitrary origin; never goes backwards.</summary>
    public abstract long NowMilliseconds { get; }

    /// <summary>
    /// Nanoseconds since an arbitrary origin, for I/O accounting (<c>ktime_get_ns</c>); never goes
    /// backwards. The system clock reads the high-resolution timestamp, once per completion batch
    /// (<see cref="BlockTime"/>); another clock its milliseconds.
    /// </summary>
    public virtual long NowNanoseconds => NowMilliseconds * 1_000_000;

    /// <summary><see cref="NowNanoseconds"/> read by a caller that holds the calling thread's state.</summary>
    internal virtual long NowNanosecondsOn(BlockThread thread) => NowNanoseconds;

    private sealed class SystemClock : BlockClock
    {
        private static readonly double NanosecondsPerTick = 1e9 / global::System.Diagnostics.Stopwatch.Frequency;

        // Deadlines and the timeout scans read the same clock; inside a round the batch's time.
        public override long NowMilliseconds => NowNanoseconds / 1_000_000;

        // Linux's Stopwatch ticks are nanoseconds already: no conversion through a double then
        // (a static readonly the JIT folds, so the test costs nothing once the code is optimised).
        private static readonly bool TicksAreNanoseconds = global::System.Diagnostics.Stopwatch.Frequency == 1_000_000_000;

        public override long NowNanoseconds => NowNanosecondsOn(BlockThread.Current);

        internal override long NowNanosecondsOn(BlockThread thread) =>
            TicksAreNanoseconds ? BlockTime.TimestampOn(thread) : (long)(BlockTime.TimestampOn(thread) * NanosecondsPerTick);
    }
}

/// <summary>A clock that only moves when <see cref="Advance"/> is called: virtual time for tests.</summary>
public sealed class ManualBlockClock : BlockClock
{
    private long _now;

    /// <summary>Creates a clock reading <paramref name="start"/> milliseconds.</summary>
    public ManualBlockClock(long start = 0) => _now = start;

    /// <inheritdoc />
    public override long NowMilliseconds => Volatile.Read(ref _now);

    /// <summary>Moves the clock forward.</summary>
    public void Advance(TimeSpan by)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(by, TimeSpan.Zero);
        Interlocked.Add(ref _now, (long)by.TotalMilliseconds);
    }
}
