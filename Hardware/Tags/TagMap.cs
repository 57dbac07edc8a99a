using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using ActorBlk.Hardware.Requests;

namespace ActorBlk.Hardware.Tags;

/// <summary>
/// One tag map (<c>struct blk_mq_tags</c>): reserved tags <c>0 .. NrReserved-1</c> in their own
/// bitmap, normal tags <c>NrReserved + bit</c>, and one preallocated <see cref="Request"/> per tag
/// with its driver payload (blk-mq-semantics §2.2, §4).
/// </summary>
/// <remarks>
/// A tag map serves one hardware queue index of a tag set, shared by every request queue of the
/// set; with host-wide tags one map serves all hardware queues.
/// </remarks>
public sealed class TagMap
{
    /// <summary>Payload elements start on cache lines of this size.</summary>
    public const int CacheLineSize = 64;

    private readonly Request[] _requests;
    private readonly byte[] _payloadSlab;
    private int _activeQueues;

    /// <summary>Creates a tag map and its requests.</summary>
    /// <param name="nrTags">Total tags, reserved included.</param>
    /// <param name="nrReserved">Reserved tags (must be below <paramref name="nrTags"/>).</param>
    /// <param name="cpuCount">Possible CPUs (allocation hints).</param>
    /// <param name="payloadSize">Driver payload bytes per request (<c>cmd_size</c>).</param>
    /// <param name="roundRobin">Round-robin allocation (<c>BLK_MQ_F_TAG_RR</c>).</param>
    /// <param name="seed">Seed for allocation hints (tests).</param>
    public TagMap(int nrTags, int nrReserved, int cpuCount, int payloadSize = 0, bool roundRobin = false, int? seed = null)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(nrTags, 1);
        ArgumentOutOfRangeException.ThrowIfNegative(nrReserved);
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(nrReserved, nrTags);
        ArgumentOutOfRangeException.ThrowIfNegative(payloadSize);

        NrTags = nrTags;
        NrReserved = nrReserved;
        BitmapTags = new SBitmapQueue(nrTags - nrReserved, cpuCount, roundRobin, seed);
        ReservedTags = new SBitmapQueue(nrReserved, cpuCount, roundRobin: false, seed);

        PayloadSize = payloadSize;
        PayloadStride = payloadSize == 0 ? 0 : (payloadSize + CacheLineSize - 1) & ~(CacheLineSize - 1);

        // One pinned slab for every payload; the first element is moved to a cache-line boundary.
        _payloadSlab = payloadSize == 0 ? [] : GC.AllocateArray<byte>((PayloadStride * nrTags) + CacheLineSize, pinned: true);
        var skew = payloadSize == 0 ? 0 : AlignmentSkew(_payloadSlab);

        _requests = new Request[nrTags];
        for (var tag = 0; tag < nrTags; tag++)
        {
            var payload = payloadSize == 0 ? Memory<byte>.Empty : _payloadSlab.AsMemory(skew + (tag * PayloadStride), payloadSize);
            _requests[tag] = new Request(this, tag, payload);
        }
    }

    /// <summary>Total tags, reserved included (<c>nr_tags</c>).</summary>
    public int NrTags { get; }

    /// <summary>Reserved tags (<c>nr_reserved_tags</c>).</summary>
    public int NrReserved { get; }

    /// <summary>Bitmap of the normal tags (depth <c>NrTags - NrReserved</c>, or less after an nr_requests change).</summary>
    public SBitmapQueue BitmapTags { get; }

    /// <summary>Bitmap of the reserved tags.</summary>
    public SBitmapQueue ReservedTags { get; }

    /// <summary>Driver payload bytes per request.</summary>
    public int PayloadSize { get; }

    /// <summary>Distance between two requests' payloads: the payload size rounded up to a cache line.</summary>
    public int PayloadStride { get; }

    /// <summary>Number of request queues (or hardware queues) currently active on this map (<c>active_queues</c>).</summary>
    public int ActiveQueues => Volatile.Read(ref _activeQueues);

    /// <summary>The preallocated request of <paramref name="tag"/> (<c>static_rqs[tag]</c>).</summary>
    public Request this[int tag] => _requests[tag];

    /// <summary>All preallocated requests, indexed by tag.</summary>
    public IReadOnlyList<Request> Requests => _requests;

    /// <summary>Number of tags currently allocated (reserved and normal).</summary>
    public int InUse => BitmapTags.Bitmap.Weight() + ReservedTags.Bitmap.Weight();

    /// <summary>Claims a normal tag without waiting; -1 when none is free.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public int TryGetNormal(int cpu)
    {
        var bit = BitmapTags.TryGet(cpu);
        return bit < 0 ? -1 : NrReserved + bit;
    }

    /// <summary>Claims a reserved tag without waiting; -1 when none is free (or none exist).</summary>
    public int TryGetReserved(int cpu) => ReservedTags.TryGet(cpu);

    /// <summary>Frees <paramref name="tag"/>, allocated on <paramref name="cpu"/>, waking waiters as their batch fills.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Free(int tag, int cpu)
    {
        if (tag >= NrReserved)
        {
            BitmapTags.Clear(tag - NrReserved, cpu);
        }
        else
        {
            ReservedTags.Clear(tag, cpu);
        }
    }

    /// <summary>True when <paramref name="tag"/> is allocated.</summary>
    public bool IsAllocated(int tag) => tag >= NrReserved ? BitmapTags.Bitmap.IsSet(tag - NrReserved) : ReservedTags.Bitmap.IsSet(tag);

    /// <summary>Marks one more queue active and recomputes the wake batch for the new number of users.</summary>
    internal int AddActiveQueue()
    {
        var users = Interlocked.Increment(ref _activeQueues);
        BitmapTags.RecalculateWakeBatch(users);
        return users;
    }

    /// <summary>Marks one queue idle, recomputes the wake batch and wakes every waiter (<c>__blk_mq_tag_idle</c>).</summary>
    internal int RemoveActiveQueue()
    {
        var users = Interlocked.Decrement(ref _activeQueues);
        BitmapTags.RecalculateWakeBatch(Math.Max(users, 1));
        BitmapTags.WakeAll();
        return users;
    }

    private static unsafe int AlignmentSkew(byte[] pinned)
    {
        var address = (nuint)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(pinned));
        var misalignment = (int)(address & (CacheLineSize - 1));
        return misalignment == 0 ? 0 : CacheLineSize - misalignment;
    }
}
