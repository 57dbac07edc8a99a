using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace ActorBlk.Hardware.Rings;

/// <summary>
/// A 64-bit sequence alone in its own 128-byte region, so that a producer's cursor and a
/// consumer's cursor never share a cache line (and the adjacent-line prefetcher does not pair
/// them either). The Disruptor's <c>Sequence</c> layout.
/// </summary>
[StructLayout(LayoutKind.Explicit, Size = 128)]
internal struct PaddedSequence
{
    [FieldOffset(64)]
    private long _value;

    /// <summary>Plain read; only for the thread that owns the sequence.</summary>
    public readonly long Plain => _value;

    /// <summary>Acquire read: later reads cannot move before it.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public readonly long ReadAcquire() => Volatile.Read(in _value);

    /// <summary>Release write: earlier writes (the slot contents) are visible before the new value.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void WriteRelease(long value) => Volatile.Write(ref _value, value);

    /// <summary>Full-fence compare-and-swap.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public bool CompareAndSet(long expected, long value) => Interlocked.CompareExchange(ref _value, value, expected) == expected;
}
