using System.Diagnostics;
using System.Runtime.InteropServices;
using ActorBlk.Hardware.Interop;
using ActorBlk.Hardware.Queues;
using Xunit;

namespace ActorBlk.Hardware.Tests.Queues;

/// <summary>
/// The time-stamp counter clock (<see cref="TimestampClock"/>, fio's <c>clocksource=cpu</c>):
/// its calibration arithmetic on injected readings, fio's rule for when it may be used, and that
/// the clock in use never goes backwards and keeps the monotonic clock's scale.
/// </summary>
public sealed class TimestampClockSpec
{
    private const string Flags = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu tsc msr constant_tsc rep_good nopl nonstop_tsc cpuid\nbugs\t\t: sysret_ss_attrs\n";

    [Fact]
    public void Calibration_scales_counter_readings_to_nanoseconds_from_the_base()
    {
        // 2.5 GHz: 25,000,000 cycles in 10 ms.
        var c = TscCalibration.FromReadings(1_000_000, 7_000, 26_000_000, 10_007_000);
        Assert.NotNull(c);
        var cal = c.Value;
        Assert.Equal(2_500_000_000, cal.Hertz);
        Assert.Equal(7_000, cal.ToNanoseconds(1_000_000));
        Assert.InRange(cal.ToNanoseconds(26_000_000), 10_006_999, 10_007_001);
        Assert.InRange(cal.ToNanoseconds(1_001_000), 7_399, 7_401);

        // An hour later (9e12 cycles): the multiply does not overflow, and the fixed point's
        // rounding (one part in 2^32 of a nanosecond per cycle) stays under a microsecond.
        Assert.InRange(cal.ToNanoseconds(1_000_000 + 9_000_000_000_000), 7_000 + 3_600_000_000_000 - 1_000, 7_000 + 3_600_000_000_000 + 1_000);

        // A reading a few cycles before the origin (another CPU's counter) is the base, not a wrap.
        Assert.Equal(7_000, cal.ToNanoseconds(999_990));
    }

    [Fact]
    public void Calibration_keeps_a_rate_that_is_no_whole_number_of_cycles_per_nanosecond()
    {
        // 2,096,006,000 Hz over 20 ms (this VM's counter).
        var c = TscCalibration.FromReadings(0, 0, 41_920_120, 20_000_000)!.Value;
        Assert.Equal(2_096_006_000, c.Hertz);
        var oneSecond = c.ToNanoseconds(2_096_006_000);
        Assert.InRange(oneSecond, 999_999_999, 1_000_000_001);
    }

    [Theory]
    [InlineData(100UL, 0L, 200UL, 500_000L)] // shorter than the 1 ms minimum
    [InlineData(100UL, 0L, 100UL, 10_000_000L)] // the counter did not move
    [InlineData(200UL, 0L, 100UL, 10_000_000L)] // it went backwards
    [InlineData(0UL, 0L, 5_000UL, 10_000_000L)] // 500 kHz: implausible
    public void Calibration_refuses_readings_that_give_no_rate(ulong tsc0, long ns0, ulong tsc1, long ns1) =>
        Assert.Null(TscCalibration.FromReadings(tsc0, ns0, tsc1, ns1));

    [Fact]
    public void The_counter_serves_only_on_x86_64_Linux_with_an_invariant_counter()
    {
        Assert.Null(TimestampClock.TscUnsupportedReason(true, 1_000_000_000, Flags));
        Assert.Contains("nonstop_tsc", TimestampClock.TscUnsupportedReason(true, 1_000_000_000, Flags.Replace(" nonstop_tsc", string.Empty, StringComparison.Ordinal)), StringComparison.Ordinal);
        Assert.Contains("constant_tsc", TimestampClock.TscUnsupportedReason(true, 1_000_000_000, Flags.Replace(" constant_tsc", string.Empty, StringComparison.Ordinal)), StringComparison.Ordinal);
        Assert.NotNull(TimestampClock.TscUnsupportedReason(false, 1_000_000_000, Flags));
        Assert.NotNull(TimestampClock.TscUnsupportedReason(true, 10_000_000, Flags));
        Assert.NotNull(TimestampClock.TscUnsupportedReason(true, 1_000_000_000, null));
        Assert.NotNull(TimestampClock.TscUnsupportedReason(true, 1_000_000_000, "processor\t: 0\n"));

        // "constant_tsc" inside another flag's name does not count.
        Assert.NotNull(TimestampClock.TscUnsupportedReason(true, 1_000_000_000, "flags\t: xconstant_tsc nonstop_tsc\n"));
    }

    [Theory]
    [InlineData("auto", TimestampSource.Auto)]
    [InlineData("tsc", TimestampSource.Tsc)]
    [InlineData("cpu", TimestampSource.Tsc)]
    [InlineData("Monotonic", TimestampSource.Monotonic)]
    [InlineData("clock_gettime", TimestampSource.Monotonic)]
    public void Source_names_parse_with_fios_aliases(string text, TimestampSource expected)
    {
        Assert.True(TimestampClock.TryParse(text, out var source));
        Assert.Equal(expected, source);
        Assert.False(TimestampClock.TryParse("gettimeofday", out _));
    }

    [Fact]
    public void The_clock_never_goes_backwards_on_a_thread_and_keeps_the_monotonic_scale()
    {
        var previous = TimestampClock.GetTimestamp();
        for (var i = 0; i < 1_000_000; i++)
        {
            var now = TimestampClock.GetTimestamp();
            Assert.True(now >= previous, $"read {i}: {now} after {previous}");
            previous = now;
        }

        // Nanoseconds from the monotonic clock's origin: the two agree within a millisecond plus
        // the calibration's error, a few parts per million of the time since it was taken (at
        // most the process's age; 100 ppm leaves room), so a long test run does not fail it.
        var age = DateTime.Now - Process.GetCurrentProcess().StartTime;
        var slack = (Stopwatch.Frequency / 1000) + (long)(age.TotalSeconds * Stopwatch.Frequency * 100e-6);
        var monotonic = Stopwatch.GetTimestamp();
        var mine = TimestampClock.GetTimestamp();
        var (lo, hi) = (monotonic - slack, Stopwatch.GetTimestamp() + slack);
        Assert.InRange(mine, lo, hi);
    }

    [Fact]
    public void The_choice_is_fixed_by_the_first_read()
    {
        _ = TimestampClock.GetTimestamp();
        var active = TimestampClock.Source;
        var other = active == TimestampSource.Tsc ? TimestampSource.Monotonic : TimestampSource.Tsc;
        Assert.True(TimestampClock.Select(active));
        Assert.True(TimestampClock.Select(TimestampSource.Auto));
        Assert.False(TimestampClock.Select(other));
        Assert.Equal(active, TimestampClock.Source);
    }

    [Fact]
    public unsafe void On_an_invariant_counter_the_clock_reads_it()
    {
        var x64Linux = OperatingSystem.IsLinux() && RuntimeInformation.ProcessArchitecture == Architecture.X64;
        string? cpuinfo = null;
        if (x64Linux)
        {
            cpuinfo = File.ReadAllText("/proc/cpuinfo");
        }

        var reason = TimestampClock.TscUnsupportedReason(x64Linux, Stopwatch.Frequency, cpuinfo);
        var requested = Environment.GetEnvironmentVariable(TimestampClock.EnvironmentVariable);
        if (reason is not null || requested is "monotonic" or "clock_gettime")
        {
            Assert.Equal(TimestampSource.Monotonic, TimestampClock.Source);
            Assert.Equal(0, TimestampClock.TscHertz);
            return;
        }

        Assert.Equal(TimestampSource.Tsc, TimestampClock.Source);
        Assert.InRange(TimestampClock.TscHertz, 1_000_000, 100_000_000_000);
        var read = TscReader.Create(out var failure);
        Assert.Null(failure);
        var a = read();
        var b = read();
        Assert.True(b >= a);
    }
}
