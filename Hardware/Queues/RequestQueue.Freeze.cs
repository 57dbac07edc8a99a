using ActorBlk.Hardware.Tags;
using ActorBlk.Hardware.Topology;

namespace ActorBlk.Hardware.Queues;

// Freeze and quiesce of a request queue, and the changes made under them: remapping and nr_requests.

public sealed partial class RequestQueue
{
    /// <summary>Starts a freeze (<c>blk_freeze_queue_start</c>) and runs every hardware queue so staged work drains.</summary>
    public void Freeze()
    {
        var first = Usage.Freeze();
        FlushPlugs();
        if (first && IsStarted)
        {
            foreach (var hctx in _hctxs)
            {
                Runtime.Kick(hctx);
            }
        }
    }

    /// <summary>Completes when a frozen queue has drained (<c>blk_mq_freeze_queue_wait</c>).</summary>
    public Task WaitFrozenAsync() => Usage.WaitDrainedAsync();

    /// <summary>Freezes and waits for the drain (<c>blk_mq_freeze_queue</c>).</summary>
    public Task FreezeAsync()
    {
        Freeze();
        return WaitFrozenAsync();
    }

    /// <summary>Ends one freeze (<c>blk_mq_unfreeze_queue</c>).</summary>
    public void Unfreeze() => Usage.Unfreeze();

    /// <summary>
    /// Quiesces the queue (<c>blk_mq_quiesce_queue</c>): requests are still built and staged, but none
    /// is dispatched; completes when no dispatch round is running any more.
    /// </summary>
    public async Task QuiesceAsync()
    {
        Interlocked.Increment(ref _quiesceDepth);
        if (!IsStarted)
        {
            return;
        }

        try
        {
            foreach (var hctx in _hctxs)
            {
                await Runtime.WaitDispatchIdleAsync(hctx).ConfigureAwait(false);
            }
        }
        catch
        {
            // A quiesce that failed is not held: the caller's Unquiesce would never come, and the
            // queue would never dispatch again.
            Unquiesce();
            throw;
        }
    }

    /// <summary>Ends one quiesce; at zero every hardware queue runs again.</summary>
    public void Unquiesce()
    {
        var depth = Interlocked.Decrement(ref _quiesceDepth);
        if (depth < 0)
        {
            Interlocked.Increment(ref _quiesceDepth);
            throw new InvalidOperationException($"Queue {Name}: unquiesce without a matching quiesce.");
        }

        if (depth == 0 && IsStarted)
        {
            foreach (var hctx in _hctxs)
            {
                Runtime.Kick(hctx);
            }
        }
    }

    /// <summary>
    /// Wires the hardware queues to a CPU map (<c>blk_mq_map_swqueue</c>). Only while frozen (or
    /// before the first I/O): no request may straddle two mappings.
    /// </summary>
    public void Remap(CpuMap map)
    {
        ArgumentNullException.ThrowIfNull(map);
        var online = map.Topology.Online;
        for (var i = 0; i < _hctxs.Length; i++)
        {
            var cpus = map.CpusOf(i);
            var contexts = new SoftwareContext[cpus.Count];
            var k = 0;
            foreach (var cpu in cpus)
            {
                contexts[k++] = _contexts[cpu];
            }

            _hctxs[i].Map(cpus, contexts, online, map.TypeOf(i));
        }

        // The tree follows the new mapping (mq/<N> for mapped queues, their cpu_list), published whole.
        if (IsRegistered && !IsDying)
        {
            Attributes.Publish();
        }

        Stats.CountRemap();
    }

    /// <summary>Changes <c>nr_requests</c>: the usable tags per hardware queue (queue frozen by the caller).</summary>
    internal void ResizeTags(int nrRequests)
    {
        foreach (var tags in _hctxs.Select(h => h.Tags).Distinct())
        {
            tags.BitmapTags.Resize(nrRequests - tags.NrReserved);
            tags.BitmapTags.WakeAll();
        }

        _nrRequests = nrRequests;
    }

    /// <summary>The smallest <c>nr_requests</c> (<c>BLKDEV_MIN_RQ</c>).</summary>
    public const int MinNrRequests = 4;

    /// <summary>
    /// Checks a write of <c>queue/nr_requests</c> (blk-mq-semantics §2.6 item 29) and returns the
    /// value that takes effect: values below 4 become 4; the value may not exceed the tag depth
    /// (there is no I/O scheduler) and must stay above the reserved tags.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">The value is refused (the kernel's -EINVAL).</exception>
    public int ValidateNrRequests(long value)
    {
        if (value is < 0 or > uint.MaxValue)
        {
            throw new ArgumentOutOfRangeException(nameof(value), value, "nr_requests: not an unsigned 32-bit number (EINVAL).");
        }

        var nr = (int)Math.Min(Math.Max(value, MinNrRequests), int.MaxValue);
        if (nr <= TagSet.ReservedTags)
        {
            throw new ArgumentOutOfRangeException(nameof(value), value, $"nr_requests: {nr} is not above the {TagSet.ReservedTags} reserved tags (EINVAL).");
        }

        if (nr > TagSet.QueueDepth)
        {
            // The clamped value is the one checked: "2 exceeds the tag depth 2" was false.
            var what = value < MinNrRequests ? $"{value} (raised to the minimum {MinNrRequests})" : $"{value}";
            throw new ArgumentOutOfRangeException(nameof(value), value, $"nr_requests: {what} exceeds the tag depth {TagSet.QueueDepth}; without an I/O scheduler tags cannot grow (EINVAL).");
        }

        return nr;
    }

    /// <summary>
    /// Writes <c>queue/nr_requests</c>: validates it (<see cref="ValidateNrRequests"/>), then with
    /// the queue frozen and quiesced shrinks or restores every hardware queue's normal tags to
    /// <c>nr - reserved</c> and wakes all tag waiters. Writing the current value does nothing, and
    /// is checked first, as the kernel's queue_requests_store does: on a device of fewer than 4
    /// tags the value read back may be written back, though a write below 4 becomes 4.
    /// </summary>
    /// <returns>The value in effect.</returns>
    /// <exception cref="ArgumentOutOfRangeException">The value is refused; nothing changed.</exception>
    public async Task<int> SetNrRequestsAsync(long value)
    {
        if (value == _nrRequests)
        {
            return _nrRequests;
        }

        var nr = ValidateNrRequests(value);
        if (nr == _nrRequests)
        {
            return nr;
        }

        await FreezeAsync().ConfigureAwait(false);
        try
        {
            await QuiesceAsync().ConfigureAwait(false);
            try
            {
                ResizeTags(nr);
            }
            finally
            {
                Unquiesce();
            }
        }
        finally
        {
            Unfreeze();
        }

        return nr;
    }
}
