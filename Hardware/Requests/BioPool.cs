using System.Numerics;
using System.Runtime.CompilerServices;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Rings;

namespace ActorBlk.Hardware.Requests;

/// <summary>
/// A bounded pool of <see cref="Bio"/>s (the kernel's <c>bio_set</c>): renting and returning
/// allocate nothing once the pool is warm. A miss allocates a new bio; a return to a full pool
/// lets the bio go to the garbage collector.
/// </summary>
public sealed class BioPool
{
    private readonly MpmcRing<Bio> _free;
    private long _allocated;
    private long _refused;

    /// <summary>Creates a pool holding up to <paramref name="capacity"/> idle bios (rounded up to a power of two).</summary>
    public BioPool(int capacity)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(capacity, 1);
        _free = new MpmcRing<Bio>((int)BitOperations.RoundUpToPowerOf2((uint)Math.Max(2, capacity)));
    }

    /// <summary>
    /// Completions refused on bios already back in this pool (they name no queue any more). Kept
    /// here rather than on the owning queue: a thread's cached bio keeps its pool reachable, and
    /// the pool must not keep a destroyed queue alive.
    /// </summary>
    internal long RefusedCompletions => Interlocked.Read(ref _refused);

    internal void CountRefusedCompletion() => Interlocked.Increment(ref _refused);

    /// <summary>Number of bios this pool has ever created (a warm pool stops growing).</summary>
    public long Allocated => Interlocked.Read(ref _allocated);

    /// <summary>Number of idle bios in the shared ring (not counting per-thread cached ones).</summary>
    public int Idle => _free.Count;

    /// <summary>Takes an idle bio, or creates one.</summary>
    public Bio Rent() => Rent(BlockThread.Current);

    // A one-entry cache per thread (BlockThread.PoolCached): with inline completions a bio is
    // returned and the next one rented on the same thread, so the common case needs no
    // compare-and-swap on the shared ring.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal Bio Rent(BlockThread thread)
    {
        if (thread.PoolOwner == this && thread.PoolCached is { } cached)
        {
            thread.PoolCached = null;
            cached.Revive();
            return cached;
        }

        if (_free.TryTake(out var bio))
        {
            bio.Revive();
            return bio;
        }

        Interlocked.Increment(ref _allocated);
        return new Bio(this);
    }

    /// <summary>Creates <paramref name="count"/> bios up front so the first I/Os do not allocate.</summary>
    public void Prefill(int count)
    {
        for (var i = 0; i < count; i++)
        {
            Interlocked.Increment(ref _allocated);
            if (!_free.TryAdd(new Bio(this)))
            {
                break;
            }
        }
    }

    internal void Return(Bio bio)
    {
        var thread = BlockThread.Current;
        if (thread.PoolCached is null)
        {
            thread.PoolOwner = this;
            thread.PoolCached = bio;
            return;
        }

        _free.TryAdd(bio);
    }
}
