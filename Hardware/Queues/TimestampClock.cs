using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using ActorBlk.Hardware.Interop;

namespace ActorBlk.Hardware.Queues;

/// <summary>Which clock I/O timestamps are read from (fio's <c>clocksource</c>).</summary>
public enum TimestampSource
{
    /// <summary>The CPU's time-stamp counter where it is invariant (fio's rule), the monotonic clock otherwise.</summary>
    Auto,

    /// <summary>The CPU's time-stamp counter (<c>rdtsc</c>), calibrated against the monotonic clock; fio's <c>clocksource=cpu</c>.</summary>
    Tsc,

    /// <summary>The monotonic clock (<see cref="Stopwatch.GetTimestamp"/>, <c>clock_gettime(CLOCK_MONOTONIC)</c>); fio's <c>clocksource=clock_gettime</c>.</summary>
    Monotonic,
}

/// <summary>
/// The high-resolution clock the block layer's I/O accounting (<see cref="BlockTime"/>) and the
/// bench's latencies read, in <see cref="Stopwatch"/> ticks. By default it reads the CPU's
/// time-stamp counter where that is safe, as fio does: on x86-64 Linux whose
/// <c>/proc/cpuinfo</c> flags carry <c>constant_tsc</c> and <c>nonstop_tsc</c> (an invariant
/// counter, the same rate in every power state), calibrated once against the monotonic clock and
/// scaled to nanoseconds with a fixed-point multiply; everywhere else it is
/// <see cref="Stopwatch.GetTimestamp"/>.
/// </summary>
/// <remarks>
/// <para>
/// Why: on a VM whose kernel clock source is kvm-clock (or any clock the vDSO cannot read
/// cheaply) <c>clock_gettime</c> costs about 28 ns and <c>rdtsc</c> about 11 ns, and the null
/// device's path reads the clock twice per I/O. .NET has no <c>rdtsc</c> intrinsic, so the clock
/// maps one executable page holding <c>rdtsc; shl rdx, 32; or rax, rdx; ret</c> and calls it
/// through an unmanaged function pointer without a GC transition.
/// </para>
/// <para>
/// The source is chosen once, at the first read, from <see cref="Select"/> if it was called before,
/// else the environment variable <c>ACTORBLK_CLOCKSOURCE</c> (<c>auto</c>, <c>tsc</c> or
/// <c>monotonic</c>), else <see cref="TimestampSource.Auto"/>. The counter's nanoseconds start at the
/// monotonic clock's reading at calibration, so the two scales agree to a few microseconds per
/// second of drift at most; everything that compares timestamps (submission against completion,
/// a batch against a window) reads this one clock. Counters of different CPUs may differ by a
/// few cycles and <c>rdtsc</c> is not serialising, so a reader must clamp a negative difference
/// of two readings taken on different threads to zero (the disk statistics and the bench do).
/// Request deadlines and the timeout scans read it too, in milliseconds, through
/// <see cref="BlockClock.System"/>. Because the calibrated counter drifts from the monotonic clock
/// by parts per million, a timestamp of this clock must never be compared with one of
/// <see cref="Stopwatch"/>. The first read calibrates, which takes about 20 ms once per process.
/// </para>
/// </remarks>
public static class TimestampClock
{
    /// <summary>The environment variable that chooses the source when <see cref="Select"/> was not called.</summary>
    public const string EnvironmentVariable = "ACTORBLK_CLOCKSOURCE";

    private static int s_requested = -1;
    private static int s_started;

    /// <summary>Now, in <see cref="Stopwatch"/> ticks (nanoseconds where the counter is used).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static unsafe long GetTimestamp()
    {
        if (Active.UseTsc)
        {
            return TscCalibration.Scale(Active.Read(), Active.Origin, Active.Multiplier, Active.BaseNanoseconds);
        }

        return Stopwatch.GetTimestamp();
    }

    /// <summary>The source in use: <see cref="TimestampSource.Tsc"/> or <see cref="TimestampSource.Monotonic"/> (this fixes the choice if no read did yet).</summary>
    public static TimestampSource Source => Active.UseTsc ? TimestampSource.Tsc : TimestampSource.Monotonic;

    /// <summary>Why the counter is not used, when <see cref="Source"/> is monotonic (null when it is used, or was not asked for).</summary>
    public static string? FallbackReason => Active.Reason;

    /// <summary>The counter's calibrated rate in Hz, 0 when it is not used.</summary>
    public static long TscHertz => Active.Hertz;

    /// <summary>
    /// Chooses the source before the first read. Returns false when the clock was read already
    /// and runs on another source than <paramref name="source"/> asks for (<see cref="TimestampSource.Auto"/>
    /// accepts either); the choice then stands, as timestamps taken on one scale must not be
    /// compared with another's.
    /// </summary>
    public static bool Select(TimestampSource source)
    {
        if (!Enum.IsDefined(source))
        {
            throw new ArgumentOutOfRangeException(nameof(source), source, "Not a timestamp source.");
        }

        Volatile.Write(ref s_requested, (int)source);
        if (Volatile.Read(ref s_started) == 0)
        {
            return true;
        }

        return source switch
        {
            TimestampSource.Tsc => Active.UseTsc,
            TimestampSource.Monotonic => !Active.UseTsc,
            _ => true,
        };
    }

    /// <summary>Parses a source's name: <c>auto</c>, <c>tsc</c> (or fio's <c>cpu</c>), <c>monotonic</c> (or fio's <c>clock_gettime</c>).</summary>
    public static bool TryParse(string? text, out TimestampSource source)
    {
        switch (text?.Trim().ToLowerInvariant())
        {
            case "auto" or "":
                source = TimestampSource.Auto;
                return true;
            case "tsc" or "cpu":
                source = TimestampSource.Tsc;
                return true;
            case "monotonic" or "clock_gettime":
                source = TimestampSource.Monotonic;
                return true;
            default:
                source = TimestampSource.Auto;
                return false;
        }
    }

    /// <summary>
    /// Why the time-stamp counter cannot serve (null if it can): fio's rule, an x86-64 Linux
    /// whose <c>/proc/cpuinfo</c> flags name <c>constant_tsc</c> and <c>nonstop_tsc</c>, and
    /// <see cref="Stopwatch"/> ticks of one nanosecond.
    /// </summary>
    internal static string? TscUnsupportedReason(bool x64Linux, long stopwatchFrequency, string? cpuinfo)
    {
        if (!x64Linux)
        {
            return "not x86-64 Linux";
        }

        if (stopwatchFrequency != 1_000_000_000)
        {
            return $"Stopwatch ticks are not nanoseconds ({stopwatchFrequency} Hz)";
        }

        if (cpuinfo is null)
        {
            return "/proc/cpuinfo is unreadable";
        }

        var flags = cpuinfo.Split('\n').FirstOrDefault(l => l.StartsWith("flags", StringComparison.Ordinal));
        if (flags is null || flags.IndexOf(':', StringComparison.Ordinal) is var colon && colon < 0)
        {
            return "/proc/cpuinfo has no flags line";
        }

        var names = flags[(colon + 1)..].Split(' ', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        foreach (var needed in (string[])["constant_tsc", "nonstop_tsc"])
        {
            if (!names.Contains(needed, StringComparer.Ordinal))
            {
                return $"the CPU flags lack {needed}";
            }
        }

        return null;
    }

    private static TimestampSource Requested()
    {
        var requested = Volatile.Read(ref s_requested);
        if (requested >= 0)
        {
            return (TimestampSource)requested;
        }

        var text = Environment.GetEnvironmentVariable(EnvironmentVariable);
        return TryParse(text, out var source) ? source : TimestampSource.Auto;
    }

    // The chosen source, fixed at the first read; static readonly so the optimised code folds it.
    private static unsafe class Active
    {
        public static readonly bool UseTsc;
        public static readonly delegate* unmanaged[SuppressGCTransition]<ulong> Read;
        public static readonly ulong Origin;
        public static readonly ulong Multiplier;
        public static readonly long BaseNanoseconds;
        public static readonly long Hertz;
        public static readonly string? Reason;

#pragma warning disable CA1810 // the initialiser decides several fields together
        static Active()
#pragma warning restore CA1810
        {
            Volatile.Write(ref s_started, 1);
            var requested = Requested();
            if (requested == TimestampSource.Monotonic)
            {
                return;
            }

            string? cpuinfo;
            try
            {
                cpuinfo = OperatingSystem.IsLinux() ? File.ReadAllText("/proc/cpuinfo") : null;
            }
            catch (IOException)
            {
                cpuinfo = null;
            }
            catch (UnauthorizedAccessException)
            {
                cpuinfo = null;
            }

            var x64Linux = OperatingSystem.IsLinux() && RuntimeInformation.ProcessArchitecture == Architecture.X64;
            Reason = TscUnsupportedReason(x64Linux, Stopwatch.Frequency, cpuinfo);
            if (Reason is not null)
            {
                return;
            }

            var read = TscReader.Create(out var failure);
            if (read is null)
            {
                Reason = failure;
                return;
            }

            var calibration = TscCalibration.Measure(read, TimeSpan.FromMilliseconds(20));
            if (calibration is not { } c)
            {
                Reason = "the counter's calibration against the monotonic clock failed";
                return;
            }

            Read = read;
            Origin = c.Origin;
            Multiplier = c.Multiplier;
            BaseNanoseconds = c.BaseNanoseconds;
            Hertz = c.Hertz;
            UseTsc = true;
        }
    }
}

/// <summary>
/// The scale from time-stamp counter readings to nanoseconds: <c>ns = base + ((tsc - origin) * mult) &gt;&gt; 32</c>,
/// computed with one 64×64→128-bit multiply (the kernel's <c>mul_u64_u32_shr</c>), no division.
/// </summary>
/// <param name="Origin">The counter reading taken at <paramref name="BaseNanoseconds"/>.</param>
/// <param name="BaseNanoseconds">The monotonic clock at <paramref name="Origin"/>.</param>
/// <param name="Multiplier">Nanoseconds per counter cycle, times 2^32.</param>
/// <param name="Hertz">The counter's rate.</param>
internal readonly record struct TscCalibration(ulong Origin, long BaseNanoseconds, ulong Multiplier, long Hertz)
{
    /// <summary>Shortest interval a calibration accepts.</summary>
    public const long MinimumIntervalNanoseconds = 1_000_000;

    /// <summary>
    /// The scale from two simultaneous readings of the counter and the monotonic clock, or null
    /// when they cannot give one (too short an interval, a counter that did not advance, a rate
    /// outside 1 MHz to 100 GHz).
    /// </summary>
    public static TscCalibration? FromReadings(ulong tsc0, long ns0, ulong tsc1, long ns1)
    {
        var ns = ns1 - ns0;
        if (ns < MinimumIntervalNanoseconds || tsc1 <= tsc0)
        {
            return null;
        }

        var cycles = tsc1 - tsc0;
        var hertz = (long)((UInt128)cycles * 1_000_000_000 / (ulong)ns);
        if (hertz is < 1_000_000 or > 100_000_000_000)
        {
            return null;
        }

        var multiplier = (ulong)((((UInt128)(ulong)ns << 32) + (cycles / 2)) / cycles); // rounded to the nearest
        return new TscCalibration(tsc0, ns0, multiplier, hertz);
    }

    /// <summary>A counter reading in nanoseconds on this scale.</summary>
    public long ToNanoseconds(ulong tsc) => Scale(tsc, Origin, Multiplier, BaseNanoseconds);

    /// <summary>
    /// The conversion itself. A reading before the origin (another CPU's counter a few cycles
    /// behind the calibrating one's) counts as the origin, so no reading is earlier than the base.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static long Scale(ulong tsc, ulong origin, ulong multiplier, long baseNanoseconds)
    {
        var delta = (long)(tsc - origin);
        var high = Math.BigMul((ulong)Math.Max(delta, 0), multiplier, out var low);
        return baseNanoseconds + (long)((high << 32) | (low >> 32));
    }

    /// <summary>
    /// Calibrates <paramref name="read"/> against <see cref="Stopwatch.GetTimestamp"/> over
    /// <paramref name="interval"/>: at each end the reading bracketed most tightly by two
    /// monotonic reads of a few attempts, its time the middle of the bracket.
    /// </summary>
    public static unsafe TscCalibration? Measure(delegate* unmanaged[SuppressGCTransition]<ulong> read, TimeSpan interval)
    {
        var (tsc0, ns0) = Pair(read);
        Thread.Sleep(interval);
        var (tsc1, ns1) = Pair(read);
        return FromReadings(tsc0, ns0, tsc1, ns1);
    }

    private static unsafe (ulong Tsc, long Ns) Pair(delegate* unmanaged[SuppressGCTransition]<ulong> read)
    {
        var best = (Tsc: 0UL, Ns: 0L);
        var width = long.MaxValue;
        for (var i = 0; i < 16; i++)
        {
            var before = Stopwatch.GetTimestamp();
            var tsc = read();
            var after = Stopwatch.GetTimestamp();
            if (after - before < width)
            {
                width = after - before;
                best = (tsc, before + ((after - before) / 2));
            }
        }

        return best;
    }
}
