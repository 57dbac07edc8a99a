using System.Diagnostics;
using ActorBlk.Hardware.Interop;
using ActorBlk.Hardware.Queues;
using BenchmarkDotNet.Attributes;

namespace ActorBlk.Benchmarks;

/// <summary>
/// One clock read: the monotonic clock (<c>clock_gettime</c> through <see cref="Stopwatch"/>),
/// the raw time-stamp counter with and without an <c>lfence</c>, and <see cref="TimestampClock"/>
/// (the counter scaled to nanoseconds, where it is used).
/// </summary>
public unsafe class ClockBenchmarks
{
    private const int Reads = 64;
    private delegate* unmanaged[SuppressGCTransition]<ulong> _plain;
    private delegate* unmanaged[SuppressGCTransition]<ulong> _fenced;

    [GlobalSetup]
    public void Setup()
    {
        _plain = TscReader.Create(out _);
        _fenced = TscReader.CreateFenced(out _);
        Console.WriteLine($"// TimestampClock: {TimestampClock.Source} {TimestampClock.TscHertz} Hz {TimestampClock.FallbackReason}");
    }

    [Benchmark(Baseline = true, OperationsPerInvoke = Reads, Description = "Stopwatch.GetTimestamp")]
    public long Monotonic()
    {
        long sum = 0;
        for (var i = 0; i < Reads; i++)
        {
            sum += Stopwatch.GetTimestamp();
        }

        return sum;
    }

    [Benchmark(OperationsPerInvoke = Reads, Description = "rdtsc")]
    public ulong Rdtsc()
    {
        ulong sum = 0;
        var read = _plain;
        for (var i = 0; i < Reads; i++)
        {
            sum += read();
        }

        return sum;
    }

    [Benchmark(OperationsPerInvoke = Reads, Description = "lfence; rdtsc")]
    public ulong FencedRdtsc()
    {
        ulong sum = 0;
        var read = _fenced;
        for (var i = 0; i < Reads; i++)
        {
            sum += read();
        }

        return sum;
    }

    [Benchmark(OperationsPerInvoke = Reads, Description = "TimestampClock.GetTimestamp")]
    public long Scaled()
    {
        long sum = 0;
        for (var i = 0; i < Reads; i++)
        {
            sum += TimestampClock.GetTimestamp();
        }

        return sum;
    }
}
