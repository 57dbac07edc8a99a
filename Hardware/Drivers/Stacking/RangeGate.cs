namespace ActorBlk.Hardware.Drivers.Stacking;

/// <summary>
/// Orders a mirror's writes with its copies (md raid1's barrier buckets, by byte range): any
/// number of writes may be in flight on a range together, but an exclusive holder (a resync
/// chunk copy, a read-error repair, a check) waits until the writes overlapping its range have
/// drained and keeps new overlapping writes waiting until it leaves. A pending exclusive holder
/// already holds back new writes, so a steady stream of writes cannot starve a copy.
/// </summary>
internal sealed class RangeGate
{
    private readonly object _lock = new();
    private readonly List<Holder> _writers = [];
    private readonly List<Holder> _exclusive = [];
    private readonly List<Holder> _waitingWriters = [];

    /// <summary>Writes holding the gate now.</summary>
    public int Writers
    {
        get
        {
            lock (_lock)
            {
                return _writers.Count;
            }
        }
    }

    /// <summary>Enters as a writer of [<paramref name="start"/>, <paramref name="end"/>); completes at once unless an exclusive holder overlaps.</summary>
    public ValueTask<Holder> EnterWriteAsync(long start, long end)
    {
        var holder = new Holder(start, end, exclusive: false);
        lock (_lock)
        {
            if (!Overlaps(_exclusive, holder))
            {
                _writers.Add(holder);
                return ValueTask.FromResult(holder);
            }

            holder.Waiter = new TaskCompletionSource<Holder>(TaskCreationOptions.RunContinuationsAsynchronously);
            _waitingWriters.Add(holder);
        }

        return new ValueTask<Holder>(holder.Waiter.Task);
    }

    /// <summary>Enters exclusively: completes when no write and no other exclusive holder overlaps.</summary>
    public Task<Holder> EnterExclusiveAsync(long start, long end)
    {
        var holder = new Holder(start, end, exclusive: true)
        {
            Waiter = new TaskCompletionSource<Holder>(TaskCreationOptions.RunContinuationsAsynchronously),
        };
        lock (_lock)
        {
            _exclusive.Add(holder);
            TryActivate(holder);
        }

        return holder.Waiter.Task;
    }

    /// <summary>Leaves the gate; waiters the holder kept out go on.</summary>
    public void Exit(Holder holder)
    {
        ArgumentNullException.ThrowIfNull(holder);
        lock (_lock)
        {
            if (holder.Exclusive)
            {
                _exclusive.Remove(holder);
                for (var i = 0; i < _waitingWriters.Count; i++)
                {
                    var w = _waitingWriters[i];
                    if (!Overlaps(_exclusive, w))
                    {
                        _waitingWriters.RemoveAt(i--);
                        _writers.Add(w);
                        w.Waiter!.TrySetResult(w);
                    }
                }
            }
            else
            {
                _writers.Remove(holder);
            }

            foreach (var e in _exclusive)
            {
                TryActivate(e);
            }
        }
    }

    private static bool Overlaps(List<Holder> holders, Holder h)
    {
        foreach (var o in holders)
        {
            if (!ReferenceEquals(o, h) && o.Start < h.End && h.Start < o.End)
            {
                return true;
            }
        }

        return false;
    }

    // Under the lock. Exclusive holders are served in arrival order among those that overlap.
    private void TryActivate(Holder e)
    {
        if (e.Active || Overlaps(_writers, e))
        {
            return;
        }

        foreach (var o in _exclusive)
        {
            if (ReferenceEquals(o, e))
            {
                break;
            }

            if (o.Start < e.End && e.Start < o.End)
            {
                return;
            }
        }

        e.Active = true;
        e.Waiter!.TrySetResult(e);
    }

    /// <summary>One holder of the gate.</summary>
    internal sealed class Holder(long start, long end, bool exclusive)
    {
        public long Start { get; } = start;

        public long End { get; } = end;

        public bool Exclusive { get; } = exclusive;

        public bool Active { get; set; }

        public TaskCompletionSource<Holder>? Waiter { get; set; }
    }
}
