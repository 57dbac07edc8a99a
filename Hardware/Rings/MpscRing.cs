using System.Numerics;
using System.Runtime.CompilerServices;

namespace ActorBlk.Hardware.Rings;

/// <summary>
/// A bounded, lock-free, multi-producer single-consumer ring of references: the submission ring
/// of a hardware queue. Any thread may publish; only the hardware queue's dispatcher consumes.
/// </summary>
/// <remarks>
/// <para>
/// Vyukov's bounded queue with a sequence number per slot. Slot <c>i</c> is free for position
/// <c>p</c> when its sequence equals <c>p</c>, and holds the item of position <c>p</c> when its
/// sequence equals <c>p + 1</c>. A producer claims positions with one compare-and-swap on the
/// tail (a batch of <c>n</c> in one CAS), writes the items and publishes each slot with a release
/// store of its sequence; the consumer reads a slot's sequence with an acquire load, takes the
/// item and frees the slot with a release store of <c>p + capacity</c>. Items are therefore
/// visible to the consumer before the slot is, and a slot is reusable only after the consumer
/// has finished reading it.
/// </para>
/// <para>
/// The capacity is a power of two, fixed at construction. A hardware queue sizes its ring to
/// at least its tag depth: every published request holds a tag, so the ring can never be full.
/// </para>
/// </remarks>
/// <typeparam name="T">The item type.</typeparam>
public sealed class MpscRing<T>
    where T : class
{
    private readonly Slot[] _slots;
    private readonly int _mask;
    private PaddedSequence _tail;  // next position to claim; written by producers (CAS)
    private PaddedSequence _head;  // next position to consume; written by the consumer only

    /// <summary>Creates a ring of <paramref name="capacity"/> slots.</summary>
    /// <exception cref="ArgumentOutOfRangeException">The capacity is not a power of two of at least 2.</exception>
    public MpscRing(int capacity)
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

    /// <summary>Approximate number of published, unconsumed items (exact when producers are quiet).</summary>
    public int Count => (int)Math.Max(0, _tail.ReadAcquire() - _head.ReadAcquire());

    /// <summary>True when no item is waiting (a racy snapshot when producers are active).</summary>
    public bool IsEmpty
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get
        {
            var head = _head.ReadAcquire();
            return Volatile.Read(ref _slots[(int)head & _mask].Sequence) != head + 1;
        }
    }

    /// <summary>Publishes one item. Returns false when the ring is full.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public bool TryPublish(T item)
    {
        while (true)
        {
            var pos = _tail.ReadAcquire();
            ref var slot = ref _slots[(int)pos & _mask];
            var seq = Volatile.Read(ref slot.Sequence);
            var diff = seq - pos;
            if (diff == 0)
            {
                if (_tail.CompareAndSet(pos, pos + 1))
                {
                    slot.Item = item;
                    // Release: the item is written before the slot is seen as full.
                    Volatile.Write(ref slot.Sequence, pos + 1);
                    return true;
                }
            }
            else if (diff < 0)
            {
                return false;
            }

            // Another producer took this position: reload the tail and try again.
        }
    }

    /// <summary>
    /// Publishes all of <paramref name="items"/> with one claim (all or nothing). Returns false,
    /// publishing nothing, when the ring has fewer free slots.
    /// </summary>
    public bool TryPublishBatch(ReadOnlySpan<T> items)
    {
        var n = items.Length;
        if (n == 0)
        {
            return true;
        }

        if (n > _slots.Length)
        {
            return false;
        }

        long pos;
        while (true)
        {
            pos = _tail.ReadAcquire();

            // The consumer frees slots in order, so when the last slot of the range is free for
            // its position, every earlier slot of the range is free too.
            var last = pos + n - 1;
            var seq = Volatile.Read(ref _slots[(int)last & _mask].Sequence);
            if (seq < last)
            {
                return false;
            }

            if (seq == last && _tail.CompareAndSet(pos, pos + n))
            {
                break;
            }
        }

        for (var i = 0; i < n; i++)
        {
            ref var slot = ref _slots[(int)(pos + i) & _mask];
            slot.Item = items[i];
            Volatile.Write(ref slot.Sequence, pos + i + 1);
        }

        return true;
    }

    /// <summary>Takes the oldest item. Consumer thread only.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public bool TryTake(out T item)
    {
        var head = _head.Plain;
        ref var slot = ref _slots[(int)head & _mask];

        // Acquire: the item written by the producer is visible once its sequence is.
        if (Volatile.Read(ref slot.Sequence) != head + 1)
        {
            item = null!;
            return false;
        }

        item = slot.Item!;
        slot.Item = null;

        // Release: the slot's contents are cleared before producers may reuse it.
        Volatile.Write(ref slot.Sequence, head + _slots.Length);
        _head.WriteRelease(head + 1);
        return true;
    }

    /// <summary>
    /// Takes up to <c>destination.Length</c> items into <paramref name="destination"/>, oldest
    /// first, stopping at the first position not yet published. Consumer thread only.
    /// </summary>
    /// <returns>The number of items taken.</returns>
    public int TakeBatch(Span<T> destination)
    {
        var head = _head.Plain;
        var n = 0;
        while (n < destination.Length)
        {
            ref var slot = ref _slots[(int)head & _mask];
            if (Volatile.Read(ref slot.Sequence) != head + 1)
            {
                break;
            }

            destination[n++] = slot.Item!;
            slot.Item = null;
            Volatile.Write(ref slot.Sequence, head + _slots.Length);
            head++;
        }

        if (n > 0)
        {
            _head.WriteRelease(head);
        }

        return n;
    }

    private struct Slot
    {
        public long Sequence;
        public T? Item;
    }
}
