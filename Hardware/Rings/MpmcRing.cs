using System.Numerics;
using System.Runtime.CompilerServices;

namespace ActorBlk.Hardware.Rings;

/// <summary>
/// A bounded, lock-free, multi-producer multi-consumer ring of references (Vyukov's bounded
/// queue). Used where both ends are shared, such as object pools that any thread takes from and
/// returns to.
/// </summary>
/// <remarks>
/// The per-slot sequence protocol is the one described on <see cref="MpscRing{T}"/>; consumers
/// additionally claim positions with a compare-and-swap on the head. Because positions only
/// grow, a slot can never be confused with an earlier use of itself (no ABA), which a
/// linked free list would have to guard against.
/// </remarks>
/// <typeparam name="T">The item type.</typeparam>
public sealed class MpmcRing<T>
    where T : class
{
    private readonly Slot[] _slots;
    private readonly int _mask;
    private PaddedSequence _tail;
    private PaddedSequence _head;

    /// <summary>Creates a ring of <paramref name="capacity"/> slots (a power of two, at least 2).</summary>
    public MpmcRing(int capacity)
    {
        if (capacity < 2 || !BitOperations.IsPow2(capacity))
        {
            throw new ArgumentOutOfRangeException(nameof(capacity), capacity, "The ring capacity must be a power of two of at least 2.");
        }

        _slots = new Slot[capacity];
        _mask = capacity - 1;
        for (var i = 0; i < capacity; i++)
        {
            _slots[i].Sequence = i;
        }
    }

    /// <summary>Number of slots.</summary>
    public int Capacity => _slots.Length;

    /// <summary>Approximate number of items held.</summary>
    public int Count => (int)Math.Max(0, _tail.ReadAcquire() - _head.ReadAcquire());

    /// <summary>Adds an item; false when full.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public bool TryAdd(T item)
    {
        while (true)
        {
            var pos = _tail.ReadAcquire();
            ref var slot = ref _slots[(int)pos & _mask];
            var diff = Volatile.Read(ref slot.Sequence) - pos;
            if (diff == 0)
            {
                if (_tail.CompareAndSet(pos, pos + 1))
                {
                    slot.Item = item;
                    Volatile.Write(ref slot.Sequence, pos + 1); // release: item before "full"
                    return true;
                }
            }
            else if (diff < 0)
            {
                return false;
            }
        }
    }

    /// <summary>Takes an item; false when empty.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public bool TryTake(out T item)
    {
        while (true)
        {
            var pos = _head.ReadAcquire();
            ref var slot = ref _slots[(int)pos & _mask];
            var diff = Volatile.Read(ref slot.Sequence) - (pos + 1);
            if (diff == 0)
            {
                if (_head.CompareAndSet(pos, pos + 1))
                {
                    item = slot.Item!;
                    slot.Item = null;
                    Volatile.Write(ref slot.Sequence, pos + _slots.Length); // release: emptied before reuse
                    return true;
                }
            }
            else if (diff < 0)
            {
                item = null!;
                return false;
            }
        }
    }

    private struct Slot
    {
        public long Sequence;
        public T? Item;
    }
}
