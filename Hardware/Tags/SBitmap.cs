using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace ActorBlk.Hardware.Tags;

/// <summary>
/// A scalable bitmap of <see cref="Depth"/> bits spread over several cache lines, with a per-CPU
/// allocation hint and deferred clearing: the kernel's <c>struct sbitmap</c> (lib/sbitmap.c,
/// blk-mq-semantics §2.3).
/// </summary>
/// <remarks>
/// <para>
/// Each word lives in its own 64-byte cache line and carries two masks: <c>word</c> (allocated bits)
/// and <c>cleared</c> (bits freed but not yet folded back). A free only sets a bit in
/// <c>cleared</c>, so frees never contend with allocations on <c>word</c>; an allocator that finds
/// a word full folds <c>cleared</c> back with one exchange and retries.
/// </para>
/// <para>
/// Thread safety: <see cref="TryGet"/> and <see cref="Clear"/> may be called from any thread
/// concurrently; bits are claimed with an atomic compare-and-swap. <see cref="Resize"/> must only be
/// called while the owner guarantees no concurrent allocation (the queue is frozen).
/// </para>
/// </remarks>
public sealed class SBitmap
{
    /// <summary>Bits in a machine word (<c>BITS_PER_LONG</c>).</summary>
    public const int BitsPerLong = 64;

    private readonly Word[] _words;
    private readonly PaddedHint[] _hints;
    private readonly int _maxDepth;

    /// <summary>Creates a bitmap of <paramref name="depth"/> bits.</summary>
    /// <param name="depth">Number of bits (0 is allowed and never allocates).</param>
    /// <param name="cpuCount">Number of CPUs that keep an allocation hint (possible CPUs).</param>
    /// <param name="shift">log2(bits per word), or -1 for the kernel's default (<see cref="CalculateShift"/>).</param>
    /// <param name="roundRobin">Strict round-robin allocation (<c>BLK_MQ_F_TAG_RR</c>).</param>
    /// <param name="seed">Seed for the random initial hints; a fixed seed makes tests deterministic.</param>
    public SBitmap(int depth, int cpuCount, int shift = -1, bool roundRobin = false, int? seed = null)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(depth);
        ArgumentOutOfRangeException.ThrowIfLessThan(cpuCount, 1);
        if (shift < 0)
        {
            shift = CalculateShift(depth);
        }

        if (shift > 6)
        {
            throw new ArgumentOutOfRangeException(nameof(shift), shift, "A word holds at most 64 bits (shift <= 6).");
        }

        Shift = shift;
        RoundRobin = roundRobin;
        _maxDepth = depth;
        Depth = depth;
        _words = new Word[Math.Max(1, (depth + BitsPerWord - 1) >> shift)];
        MapCount = depth == 0 ? 0 : _words.Length;
        _hints = new PaddedHint[cpuCount];

        // Non-round-robin maps start every CPU at a random bit so CPUs spread over the words.
        var random = seed is { } s ? new Random(s) : Random.Shared;
        for (var cpu = 0; cpu < cpuCount; cpu++)
        {
            _hints[cpu].Value = depth == 0 || roundRobin ? 0 : random.Next(depth);
        }
    }

    /// <summary>Number of usable bits.</summary>
    public int Depth { get; private set; }

    /// <summary>log2 of the bits per word.</summary>
    public int Shift { get; }

    /// <summary>Bits per word (<c>1 &lt;&lt; Shift</c>).</summary>
    public int BitsPerWord => 1 << Shift;

    /// <summary>Number of words in use (<c>map_nr</c>).</summary>
    public int MapCount { get; private set; }

    /// <summary>True for strict round-robin allocation.</summary>
    public bool RoundRobin { get; }

    /// <summary>
    /// The kernel's default word size: start at 64 bits per word and, for depths of at least 4,
    /// halve while <c>(4 &lt;&lt; shift) &gt; depth</c>, so that even small maps spread over at least
    /// four cache lines (<c>sbitmap_calculate_shift</c>). Depth 64 -> 16 bits x 4 words; 128 -> 32 x 4;
    /// 1023 -> 64 x 16; 31 -> 4 x 8; 3 -> 64 x 1.
    /// </summary>
    public static int CalculateShift(int depth)
    {
        var shift = 6; // ilog2(BITS_PER_LONG)
        if (depth >= 4)
        {
            while ((4 << shift) > depth)
            {
                shift--;
            }
        }

        return shift;
    }

    /// <summary>The current allocation hint of <paramref name="cpu"/>.</summary>
    public int HintOf(int cpu) => Volatile.Read(ref _hints[cpu].Value);

    /// <summary>
    /// Claims a free bit, searching from <paramref name="cpu"/>'s hint: the hinted word from bit 0
    /// (round-robin: from the hinted bit), then the following words, wrapping.
    /// </summary>
    /// <returns>The bit number, or -1 when the map is full.</returns>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public int TryGet(int cpu)
    {
        ref var hintSlot = ref _hints[cpu].Value;
        var depth = Depth;
        var hint = hintSlot;
        if ((uint)hint >= (uint)depth)
        {
            hint = depth == 0 ? 0 : Random.Shared.Next(depth);
            hintSlot = hint;
        }

        var nr = Find(hint);

        // update_alloc_hint_after_get
        if (nr == -1)
        {
            hintSlot = 0;
        }
        else if (nr == hint || RoundRobin)
        {
            var next = nr + 1;
            hintSlot = next >= depth - 1 ? 0 : next;
        }

        return nr;
    }

    /// <summary>
    /// Frees <paramref name="bit"/> (deferred: recorded in the word's <c>cleared</c> mask) and, for
    /// non-round-robin maps, points <paramref name="cpu"/>'s hint at it so that CPU returns to the
    /// same cache line (<c>sbitmap_update_cpu_hint</c>).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Clear(int bit, int cpu)
    {
        ref var w = ref _words[bit >> Shift];
        var mask = 1UL << (bit & (BitsPerWord - 1));
        Interlocked.Or(ref w.Cleared, mask);
        if (!RoundRobin && bit < Depth && (uint)cpu < (uint)_hints.Length)
        {
            _hints[cpu].Value = bit;
        }
    }

    /// <summary>Frees <paramref name="bit"/> immediately in <c>word</c> (no hint update); used for rollbacks.</summary>
    public void ClearImmediate(int bit)
    {
        ref var w = ref _words[bit >> Shift];
        Interlocked.And(ref w.Bits, ~(1UL << (bit & (BitsPerWord - 1))));
    }

    /// <summary>True when <paramref name="bit"/> is currently allocated (set and not pending clear).</summary>
    public bool IsSet(int bit)
    {
        ref var w = ref _words[bit >> Shift];
        var mask = 1UL << (bit & (BitsPerWord - 1));
        return (Volatile.Read(ref w.Bits) & ~Volatile.Read(ref w.Cleared) & mask) != 0;
    }

    /// <summary>Number of allocated bits (a racy snapshot when allocations run concurrently).</summary>
    public int Weight()
    {
        var count = 0;
        for (var i = 0; i < MapCount; i++)
        {
            ref var w = ref _words[i];
            var bits = Volatile.Read(ref w.Bits) & ~Volatile.Read(ref w.Cleared) & WordMask(i);
            count += BitOperations.PopCount(bits);
        }

        return count;
    }

    /// <summary>Number of bits freed but not yet folded back into their word.</summary>
    public int ClearedWeight()
    {
        var count = 0;
        for (var i = 0; i < MapCount; i++)
        {
            count += BitOperations.PopCount(Volatile.Read(ref _words[i].Cleared) & WordMask(i));
        }

        return count;
    }

    /// <summary>
    /// Changes the usable depth without reallocating (only shrinking below the construction depth,
    /// or growing back up to it, is possible). Bits beyond the new depth stay as they are; callers
    /// resize only while no bit beyond the new depth is allocated.
    /// </summary>
    public void Resize(int depth)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(depth);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(depth, _maxDepth);
        for (var i = 0; i < _words.Length; i++)
        {
            FoldCleared(ref _words[i]);
        }

        Depth = depth;
        MapCount = depth == 0 ? 0 : (depth + BitsPerWord - 1) >> Shift;
    }

    /// <summary>Calls <paramref name="visitor"/> for every allocated bit, lowest first.</summary>
    public void ForEachSet(Action<int> visitor)
    {
        ArgumentNullException.ThrowIfNull(visitor);
        for (var i = 0; i < MapCount; i++)
        {
            ref var w = ref _words[i];
            var bits = Volatile.Read(ref w.Bits) & ~Volatile.Read(ref w.Cleared) & WordMask(i);
            while (bits != 0)
            {
                var b = BitOperations.TrailingZeroCount(bits);
                bits &= bits - 1;
                visitor((i << Shift) + b);
            }
        }
    }

    // sbitmap_find_bit: non-round-robin maps search the hinted word from bit 0, round-robin maps
    // from the hinted bit; then each following word from bit 0.
    private int Find(int hint)
    {
        var mapCount = MapCount;
        if (mapCount == 0)
        {
            return -1;
        }

        var index = hint >> Shift;
        var bitHint = RoundRobin ? hint & (BitsPerWord - 1) : 0;
        for (var i = 0; i < mapCount; i++)
        {
            var nr = FindInWord(index, bitHint, wrap: !RoundRobin);
            if (nr != -1)
            {
                return (index << Shift) + nr;
            }

            bitHint = 0;
            if (++index >= mapCount)
            {
                index = 0;
            }
        }

        return -1;
    }

    // sbitmap_find_bit_in_word: try the word; if it looks full, fold its cleared bits back and retry.
    private int FindInWord(int index, int bitHint, bool wrap)
    {
        ref var w = ref _words[index];
        var wordDepth = WordDepth(index);
        while (true)
        {
            var nr = GetInWord(ref w.Bits, wordDepth, bitHint, wrap);
            if (nr != -1)
            {
                return nr;
            }

            if (!FoldCleared(ref w))
            {
                return -1;
            }
        }
    }

    // __sbitmap_get_word: find the first zero bit from the hint (wrapping once if allowed) and
    // claim it with a CAS; a lost race continues after the contested bit.
    private static int GetInWord(ref ulong word, int depth, int hint, bool wrap)
    {
        var limitMask = depth >= 64 ? ulong.MaxValue : (1UL << depth) - 1;
        var start = hint;
        var wrapped = !wrap || hint == 0;
        while (true)
        {
            var current = Volatile.Read(ref word);
            var free = ~current & limitMask & (~0UL << start);
            if (free == 0)
            {
                if (wrapped)
                {
                    return -1;
                }

                wrapped = true;
                start = 0;
                continue;
            }

            var nr = BitOperations.TrailingZeroCount(free);
            var bit = 1UL << nr;
            if ((Interlocked.Or(ref word, bit) & bit) == 0)
            {
                return nr;
            }

            // Lost the race for this bit: continue after it.
            start = nr + 1;
            if (start >= depth)
            {
                if (wrapped)
                {
                    return -1;
                }

                wrapped = true;
                start = 0;
            }
        }
    }

    // sbitmap_deferred_clear: move the cleared mask into the word in one exchange.
    private static bool FoldCleared(ref Word w)
    {
        if (Volatile.Read(ref w.Cleared) == 0)
        {
            return false;
        }

        var mask = Interlocked.Exchange(ref w.Cleared, 0);
        Interlocked.And(ref w.Bits, ~mask);
        return true;
    }

    private int WordDepth(int index)
    {
        var perWord = BitsPerWord;
        var rest = Depth - (index << Shift);
        return rest >= perWord ? perWord : rest;
    }

    private ulong WordMask(int index)
    {
        var d = WordDepth(index);
        return d >= 64 ? ulong.MaxValue : (1UL << d) - 1;
    }

    // One word per cache line so concurrent allocators on different words do not share lines.
    [StructLayout(LayoutKind.Explicit, Size = 64)]
    private struct Word
    {
        [FieldOffset(0)]
        public ulong Bits;

        [FieldOffset(8)]
        public ulong Cleared;
    }

    // Per-CPU hints live on their own cache lines: each CPU writes its own hint on every allocation.
    [StructLayout(LayoutKind.Explicit, Size = 64)]
    private struct PaddedHint
    {
        [FieldOffset(0)]
        public int Value;
    }
}
