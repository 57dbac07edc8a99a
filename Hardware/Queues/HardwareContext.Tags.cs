using System.Runtime.CompilerServices;
using ActorBlk.Hardware.Requests;

namespace ActorBlk.Hardware.Queues;

// Driver tags and fair-share accounting of a hardware queue (blk-mq-tag.c).

public sealed partial class HardwareContext
{
    /// <summary>Result codes of <see cref="AllocateTag"/> besides a tag number.</summary>
    internal const int NoTag = -1;

    /// <summary>The bio was queued as a tag waiter and will be called back.</summary>
    internal const int TagWaiting = -2;

    /// <summary>
    /// Gets a tag for <paramref name="bio"/> (<c>blk_mq_get_tag</c>): from the reserved or normal
    /// tags, within the fair share when the tag set is shared; a bio that may wait is queued as a
    /// waiter instead of failing.
    /// </summary>
    internal int AllocateTag(Bio bio, int cpu)
    {
        var reserved = (bio.Flags & RequestFlags.Reserved) != 0;
        var tag = TryAllocateTag(cpu, reserved);
        if (tag >= 0 || (bio.Flags & RequestFlags.NoWait) != 0)
        {
            return tag;
        }

        if (reserved && Tags.NrReserved == 0)
        {
            return NoTag;
        }

        // Waiting: push what is pending so completions can free tags, queue, and retry once.
        Queue.Runtime.Kick(this);
        var bt = reserved ? Tags.ReservedTags : Tags.BitmapTags;
        var waitIndex = reserved ? 0 : Interlocked.Increment(ref _waitIndex);

        // Marked before it can be woken: its request, built when it resumes, skips the plug.
        var wasParked = bio.Parked;
        bio.Parked = true;
        bt.AddWaiter(bio, waitIndex);
        tag = TryAllocateTag(cpu, reserved);
        if (tag < 0)
        {
            return TagWaiting;
        }

        if (bt.CancelWaiter(bio))
        {
            bio.Parked = wasParked; // it did not sleep this time (it may have before)
            return tag;
        }

        // A waker already claimed the bio: its call-back will retry, so hand the tag back.
        ReleaseTag(Tags[tag], tag, cpu);
        return TagWaiting;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private int TryAllocateTag(int cpu, bool reserved)
    {
        var set = Queue.TagSet;
        if (!set.IsShared)
        {
            return reserved ? Tags.TryGetReserved(cpu) : Tags.TryGetNormal(cpu);
        }

        int active;
        int tag;
        if (reserved)
        {
            tag = Tags.TryGetReserved(cpu);
            if (tag < 0)
            {
                return tag;
            }

            active = Interlocked.Increment(ref Account.NrActive);
        }
        else
        {
            // [cur] marks the queue active before trying, so a failed first allocation still counts.
            MarkBusy();

            // The fair-share check and nr_active's increment are one atomic step, so concurrent
            // submitters on this queue cannot both pass at limit - 1 and overshoot the share.
            active = TryTakeShare(set.FairSharing ? ShareLimit() : int.MaxValue);
            if (active == 0)
            {
                return NoTag;
            }

            tag = Tags.TryGetNormal(cpu);
            if (tag < 0)
            {
                Interlocked.Decrement(ref Account.NrActive);
                return tag;
            }
        }

        Tags[tag].CountsActive = true;
        int peak;
        while (active > (peak = Volatile.Read(ref Account.PeakActive)) &&
               Interlocked.CompareExchange(ref Account.PeakActive, active, peak) != peak)
        {
        }

        return tag;
    }

    // nr_active + 1 if that stays within the limit (and is then counted), else 0.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private int TryTakeShare(int limit)
    {
        var n = Volatile.Read(ref Account.NrActive);
        while (true)
        {
            if (n >= limit)
            {
                return 0;
            }

            var seen = Interlocked.CompareExchange(ref Account.NrActive, n + 1, n);
            if (seen == n)
            {
                return n + 1;
            }

            n = seen;
        }
    }

    // hctx_may_queue (blk-mq-semantics §2.5 item 26) as a limit: an active queue on a shared set
    // may hold at most max(ceil(depth / active_queues), 4) tags; otherwise it is unlimited
    // (hctx_may_queue's early returns).
    private int ShareLimit()
    {
        var depth = Tags.BitmapTags.Depth;
        if (depth == 1 || Volatile.Read(ref Account.Active) == 0)
        {
            return int.MaxValue;
        }

        var users = Tags.ActiveQueues;
        return users == 0 ? int.MaxValue : FairShare(depth, users);
    }

    /// <summary>The fair share: <c>max(ceil(depth / users), 4)</c>. 128 / 3 -> 43; 64 / 32 -> 4; 62 / 5 -> 13.</summary>
    public static int FairShare(int depth, int users) => Math.Max((depth + users - 1) / users, 4);

    /// <summary>Marks the queue active on its shared tags (<c>blk_mq_tag_busy</c>).</summary>
    internal void MarkBusy()
    {
        var account = Account;
        if (Volatile.Read(ref account.Active) == 0 && Interlocked.CompareExchange(ref account.Active, 1, 0) == 0)
        {
            Tags.AddActiveQueue();
        }
    }

    /// <summary>Marks the queue idle (<c>blk_mq_tag_idle</c>): gives up its share and wakes every waiter.</summary>
    /// <returns>True when the queue was active.</returns>
    public bool MarkIdle()
    {
        var account = Account;
        if (Interlocked.CompareExchange(ref account.Active, 0, 1) != 1)
        {
            return false;
        }

        Tags.RemoveActiveQueue();
        Interlocked.Increment(ref account.IdleTransitions);
        return true;
    }

    /// <summary>How many times the queue went idle on its shared tags (<see cref="MarkIdle"/>).</summary>
    public long IdleTransitions => Volatile.Read(ref Account.IdleTransitions);

    /// <summary>Frees a request's tag (<c>__blk_mq_free_request</c>) and reruns the queue when SCHED_RESTART is set.</summary>
    internal void ReleaseTag(Request rq, int tag, int cpu)
    {
        if (rq.CountsActive)
        {
            rq.CountsActive = false;
            Interlocked.Decrement(ref Account.NrActive);
        }

        rq.MarkIdle();
        Tags.Free(tag, cpu);
    }

    /// <summary>
    /// Whether a completion may hold <paramref name="rq"/>'s tag over its end_io call-back for a
    /// resubmission to take over (<c>RequestQueue.CompleteHolding</c>): a normal tag of this
    /// hardware queue's map, on a tag set that is not shared (no fair-share count to carry over),
    /// while nobody waits for a tag.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal bool CanHoldTag(Request rq) =>
        !rq.CountsActive &&
        ReferenceEquals(rq.Owner, Tags) &&
        rq.Tag >= Tags.NrReserved &&
        !Queue.TagSet.IsShared &&
        Tags.BitmapTags.WaitersActive == 0;

    /// <summary>A completion on this queue clears SCHED_RESTART and reruns it (<c>blk_mq_sched_restart</c>).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal void RestartIfNeeded()
    {
        if ((Volatile.Read(ref _state) & StateSchedRestart) != 0 &&
            (Interlocked.And(ref _state, ~StateSchedRestart) & StateSchedRestart) != 0)
        {
            Queue.Runtime.Kick(this);
        }
    }
}
