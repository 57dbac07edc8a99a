using System.Runtime.CompilerServices;

namespace ActorBlk.Hardware.Tags;

/// <summary>
/// An <see cref="SBitmap"/> plus wait queues for allocators that find it full: the kernel's
/// <c>struct sbitmap_queue</c> (blk-mq-semantics §2.4).
/// </summary>
/// <remarks>
/// <para>
/// There are <see cref="WaitQueueCount"/> (8) wait queues. Freed bits are counted, and each time
/// <see cref="WakeBatch"/> more bits have been freed than waiters were woken for, a batch of that
/// many waiters is woken, scanning the wait queues from a rolling index for fairness
/// (<c>sbitmap_queue_wake_up</c>, the [6.2+] algorithm). Batching avoids a thundering herd: a
/// waiter is only woken once enough tags came back to make its retry likely to succeed.
/// </para>
/// <para>
/// <c>wake_batch = clamp(depth / 8, 1, 8)</c>; with <c>users</c> sharing the map,
/// <c>clamp(ceil(depth / users) / 8, 1, 8)</c> (<see cref="RecalculateWakeBatch"/>).
/// </para>
/// </remarks>
public sealed class SBitmapQueue
{
    /// <summary>Number of wait queues (<c>SBQ_WAIT_QUEUES</c>).</summary>
    public const int WaitQueueCount = 8;

    /// <summary>Upper bound of the wake batch (<c>SBQ_WAKE_BATCH</c>).</summary>
    public const int MaxWakeBatch = 8;

    private readonly WaitQueue[] _queues;
    private int _wakeBatch;
    private int _waitersActive;
    private int _completionCount;
    private int _wakeupCount;
    private int _wakeIndex;

    /// <summary>Creates a bitmap queue of <paramref name="depth"/> bits.</summary>
    public SBitmapQueue(int depth, int cpuCount, bool roundRobin = false, int? seed = null)
    {
        Bitmap = new SBitmap(depth, cpuCount, roundRobin: roundRobin, seed: seed);
        _queues = new WaitQueue[WaitQueueCount];
        for (var i = 0; i < WaitQueueCount; i++)
        {
            _queues[i] = new WaitQueue();
        }

        _wakeBatch = CalculateWakeBatch(depth);
    }

    /// <summary>The underlying bitmap.</summary>
    public SBitmap Bitmap { get; }

    /// <summary>Usable depth.</summary>
    public int Depth => Bitmap.Depth;

    /// <summary>Freed bits needed before a batch of waiters is woken.</summary>
    public int WakeBatch => Volatile.Read(ref _wakeBatch);

    /// <summary>Number of waiters currently queued (<c>ws_active</c>).</summary>
    public int WaitersActive => Volatile.Read(ref _waitersActive);

    /// <summary>The wait queue the next wake-up scan starts at.</summary>
    public int WakeIndex => Volatile.Read(ref _wakeIndex);

    /// <summary><c>clamp(depth / 8, 1, 8)</c>: depth 64 -> 8, 32 -> 4, 12 -> 1, 4 -> 1.</summary>
    public static int CalculateWakeBatch(int depth) => Math.Clamp(depth / WaitQueueCount, 1, MaxWakeBatch);

    /// <summary>
    /// <c>clamp(ceil(depth / users) / 8, 1, 8)</c>, the wake batch when <paramref name="users"/>
    /// queues share the map (depth 256, 10 users -> 3).
    /// </summary>
    public static int CalculateSharedWakeBatch(int depth, int users)
    {
        if (users <= 0)
        {
            users = 1;
        }

        return Math.Clamp(((depth + users - 1) / users) / WaitQueueCount, 1, MaxWakeBatch);
    }

    /// <summary>Claims a free bit; -1 when full.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public int TryGet(int cpu) => Bitmap.TryGet(cpu);

    /// <summary>
    /// Frees <paramref name="bit"/>, allocated for <paramref name="cpu"/>, and wakes a batch of
    /// waiters when enough bits have come back (<c>sbitmap_queue_clear</c>).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Clear(int bit, int cpu)
    {
        Bitmap.Clear(bit, cpu);

        // The clear above is an interlocked operation: a full barrier before reading ws_active,
        // pairing with the barrier a waiter executes between queueing itself and retrying.
        if (Volatile.Read(ref _waitersActive) != 0)
        {
            WakeUp(1);
        }
    }

    /// <summary>Recomputes the wake batch for <paramref name="users"/> sharing queues and wakes everyone.</summary>
    public void RecalculateWakeBatch(int users)
    {
        Volatile.Write(ref _wakeBatch, CalculateSharedWakeBatch(Depth, users));
    }

    /// <summary>Changes the usable depth (queue frozen) and wakes every waiter (blk-mq-semantics §2.6 item 30).</summary>
    public void Resize(int depth)
    {
        Bitmap.Resize(depth);
        Volatile.Write(ref _wakeBatch, CalculateWakeBatch(depth));
        WakeAll();
    }

    /// <summary>
    /// Queues <paramref name="waiter"/> on wait queue <paramref name="waitIndex"/> (0..7). The caller
    /// must retry its allocation afterwards (see <see cref="TryGetOrWait"/>).
    /// </summary>
    public void AddWaiter(TagWaiter waiter, int waitIndex)
    {
        ArgumentNullException.ThrowIfNull(waiter);
        var q = _queues[waitIndex & (WaitQueueCount - 1)];
        waiter.MarkWaiting();
        lock (q)
        {
            waiter.WaitQueueIndex = waitIndex & (WaitQueueCount - 1);
            waiter.WaitingOn = this;
            q.Append(waiter);
        }

        // Full barrier: the waiter is visible before the caller's retry reads the bitmap, and a
        // concurrent free that misses the retry sees ws_active != 0.
        Interlocked.Increment(ref _waitersActive);
    }

    /// <summary>
    /// Removes a waiter that got what it waited for on its own. Returns false when a waker already
    /// claimed it: <see cref="TagWaiter.OnTagAvailable"/> has been or will be called.
    /// </summary>
    public bool CancelWaiter(TagWaiter waiter)
    {
        ArgumentNullException.ThrowIfNull(waiter);
        if (!waiter.TryCancel())
        {
            return false;
        }

        var q = _queues[waiter.WaitQueueIndex];
        lock (q)
        {
            q.Remove(waiter);
        }

        waiter.WaitingOn = null;
        Interlocked.Decrement(ref _waitersActive);
        return true;
    }

    /// <summary>
    /// The kernel's wait loop in one step: try; queue the waiter; try again. Returns a bit, or -1
    /// when the waiter stays queued and will be called back.
    /// </summary>
    public int TryGetOrWait(int cpu, TagWaiter waiter, int waitIndex)
    {
        var bit = TryGet(cpu);
        if (bit >= 0)
        {
            return bit;
        }

        AddWaiter(waiter, waitIndex);
        bit = TryGet(cpu);
        if (bit < 0)
        {
            return -1;
        }

        if (CancelWaiter(waiter))
        {
            return bit;
        }

        // A waker claimed us between queueing and the retry; its call-back will retry, so give the
        // bit back rather than proceed twice.
        Clear(bit, cpu);
        return -1;
    }

    /// <summary>
    /// Counts one freed tag towards the wake batch (<c>sbitmap_queue_wake_up(bt, 1)</c>) for a
    /// waiter that was woken here and took no tag from this map: the wake-up stood for a freed
    /// tag, and without it the waiters left could wait for a free that never comes.
    /// </summary>
    public void CompensateWakeUp()
    {
        if (Volatile.Read(ref _waitersActive) != 0)
        {
            WakeUp(1);
        }
    }

    /// <summary>Wakes every waiter on every wait queue (<c>sbitmap_queue_wake_all</c>).</summary>
    public void WakeAll()
    {
        if (Volatile.Read(ref _waitersActive) == 0)
        {
            return;
        }

        TagWaiter? woken = null;
        for (var i = 0; i < WaitQueueCount; i++)
        {
            TakeFrom(_queues[i], int.MaxValue, ref woken);
        }

        Complete(woken);
    }

    // sbitmap_queue_wake_up: count the free; when wake_batch frees have accumulated beyond the
    // wake-ups already done, claim that batch and wake that many waiters.
    private void WakeUp(int nr)
    {
        var batch = Volatile.Read(ref _wakeBatch);
        Interlocked.Add(ref _completionCount, nr);
        var wakeups = Volatile.Read(ref _wakeupCount);
        while (true)
        {
            if (Volatile.Read(ref _completionCount) - wakeups < batch)
            {
                return;
            }

            var seen = Interlocked.CompareExchange(ref _wakeupCount, wakeups + batch, wakeups);
            if (seen == wakeups)
            {
                break;
            }

            wakeups = seen;
        }

        WakeNumber(batch);
    }

    // __sbitmap_queue_wake_up: scan the queues from wake_index, advancing it before each queue.
    private void WakeNumber(int nr)
    {
        if (Volatile.Read(ref _waitersActive) == 0)
        {
            return;
        }

        TagWaiter? woken = null;
        var start = Volatile.Read(ref _wakeIndex);
        var index = start;
        for (var i = 0; i < WaitQueueCount && nr > 0; i++)
        {
            var q = _queues[index];
            index = (index + 1) & (WaitQueueCount - 1);
            nr -= TakeFrom(q, nr, ref woken);
        }

        if (index != start)
        {
            Volatile.Write(ref _wakeIndex, index);
        }

        Complete(woken);
    }

    // Moves up to max waiters from q onto the woken chain (linked through NextWaiter once they
    // are off the queue), so waking allocates nothing.
    private int TakeFrom(WaitQueue q, int max, ref TagWaiter? chain)
    {
        var taken = 0;
        lock (q)
        {
            var w = q.Head;
            while (w is not null && taken < max)
            {
                var next = w.NextWaiter;
                if (w.TryMarkWoken())
                {
                    q.Remove(w);
                    w.NextWaiter = chain;
                    chain = w;
                    taken++;
                }

                w = next;
            }
        }

        if (taken > 0)
        {
            Interlocked.Add(ref _waitersActive, -taken);
        }

        return taken;
    }

    // Call-backs run outside every wait-queue lock. The chain is reversed (newest first), so it
    // is reversed again to wake in arrival order.
    private void Complete(TagWaiter? chain)
    {
        TagWaiter? ordered = null;
        while (chain is not null)
        {
            var next = chain.NextWaiter;
            chain.NextWaiter = ordered;
            ordered = chain;
            chain = next;
        }

        while (ordered is not null)
        {
            var next = ordered.NextWaiter;
            ordered.NextWaiter = null;
            ordered.WaitingOn = null;
            ordered.WokenBy = this;
            ordered.Reset();
            ordered.OnTagAvailable();
            ordered = next;
        }
    }

    // An intrusive FIFO of waiters (exclusive waits: woken in arrival order).
    private sealed class WaitQueue
    {
        public TagWaiter? Head { get; private set; }

        private TagWaiter? _tail;

        public void Append(TagWaiter w)
        {
            w.NextWaiter = null;
            w.PreviousWaiter = _tail;
            if (_tail is null)
            {
                Head = w;
            }
            else
            {
                _tail.NextWaiter = w;
            }

            _tail = w;
        }

        public void Remove(TagWaiter w)
        {
            if (w.PreviousWaiter is null)
            {
                if (Head == w)
                {
                    Head = w.NextWaiter;
                }
            }
            else
            {
                w.PreviousWaiter.NextWaiter = w.NextWaiter;
            }

            if (w.NextWaiter is null)
            {
                if (_tail == w)
                {
                    _tail = w.PreviousWaiter;
                }
            }
            else
            {
                w.NextWaiter.PreviousWaiter = w.PreviousWaiter;
            }

            w.NextWaiter = null;
            w.PreviousWaiter = null;
        }
    }
}
