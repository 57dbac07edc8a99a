using System.Numerics;
using System.Runtime.CompilerServices;
using ActorBlk.Hardware.Requests;
using ActorBlk.Hardware.Tags;
using ActorBlk.Hardware.Topology;

namespace ActorBlk.Hardware.Queues;

// Submission of a request queue: submit_bio, entering, plugging, merging, splitting and issuing (blk-mq-semantics §3).

public sealed partial class RequestQueue
{
    /// <summary>
    /// Submits a prepared bio (<c>submit_bio</c>): strips flush semantics the device does not need,
    /// splits it to the request size limit, and runs the rest of the path in the bio's software context.
    /// </summary>
    public void Submit(Bio bio) => Submit(bio, BlockThread.Current);

    /// <summary><see cref="Submit(Bio)"/> for a caller that holds the calling thread's state.</summary>
    internal void Submit(Bio bio, BlockThread thread)
    {
        ArgumentNullException.ThrowIfNull(bio);
        bio.Queue = this;
        if (bio.Cpu < 0 || bio.Cpu >= _contexts.Length)
        {
            bio.Cpu = CurrentCpu.Resolve(Topology, thread);
        }

        var limits = _limits;
        if (!limits.VolatileWriteCache || _writeCacheDisabled)
        {
            // Without a volatile write cache there is nothing to flush: an empty flush completes at
            // once, as in submit_bio_noacct; on a device being removed, or gone, with Offline, as
            // any other I/O (an Ok there claimed durability of a device that no longer exists).
            if (bio.Op == BlockOp.Flush)
            {
                bio.Complete(IsDying ? BlockStatus.Offline : BlockStatus.Ok);
                return;
            }

            bio.Flags &= ~(RequestFlags.PreFlush | RequestFlags.Fua);
        }

        // A bio-based queue hands the whole bio to its driver, holding a usage reference until the
        // driver ends it, so freezes and teardown drain bio-based I/O as they drain requests.
        if (_bioDriver is { } bioDriver)
        {
            // The bio keeps the flow's plug: its members' requests go into that plug, so awaiting
            // the bio, and freezing or removing this queue, must flush it (else an await inside a
            // plug on a stacked device waited for ever).
            bio.Plug?.TrackStacked(this);
            if (Enter(bio, thread))
            {
                SubmitToBioDriver(bioDriver, bio);
            }

            return;
        }

        var max = MaxSectorsFor(bio.Op, limits);
        if (bio.Sectors > max && max > 0)
        {
            Split(bio, max, thread);
            return;
        }

        // The submitter takes the queue reference (bio_queue_enter in submit_bio_noacct), so a bio
        // still travelling to its software context is drained by a freeze or a teardown like one
        // already staged, in either dispatch mode.
        if (Enter(bio, thread))
        {
            Runtime.Submit(_contexts[bio.Cpu], bio);
        }
    }

    // A bio-based queue's driver takes the bio whole; its accounting starts here, once
    // (bio_start_io_acct, as dm's and md's submit_bio do), and ends in EndBio. An empty flush is
    // not accounted, as md_flush_request and dm's __send_empty_flush return before it.
    private void SubmitToBioDriver(Drivers.IBioDriver driver, Bio bio)
    {
        if (bio.StatStartNs == 0 && bio.Op != BlockOp.Flush)
        {
            bio.StatStartNs = Stats.Start(bio.Op);
        }

        driver.SubmitBio(this, bio);
    }

    /// <summary>
    /// Ends a bio of a bio-based queue (<c>bio_endio</c> from its driver): drops the usage reference
    /// it held and completes it. Later calls for the same bio are ignored.
    /// </summary>
    public void EndBio(Bio bio, BlockStatus status)
    {
        ArgumentNullException.ThrowIfNull(bio);
        if (bio.StatStartNs != 0)
        {
            // bio_end_io_acct: the disk's stat and iostat count the stacked device's own I/O, as
            // Linux counts a dm or md device's (they stayed all zeros).
            Stats.Done(bio.Op, bio.Sectors, bio.StatStartNs, status);
            bio.StatStartNs = 0;
        }

        if (bio.Entered)
        {
            bio.Entered = false;
            Usage.Exit(bio.Cpu);
        }

        bio.Complete(status);
    }

    /// <summary>
    /// The bio's hardware queue is inactive: every CPU mapped to it is offline (semantics §8 items
    /// 2-3). As blk_mq_get_tag gives back a tag obtained there, a NOWAIT bio fails with
    /// <see cref="BlockStatus.Again"/>, and any other moves to the software context of an online
    /// CPU whose hardware queue is active (the calling thread's CPU if it is one, as the kernel's
    /// allocator retries on the CPU the task moved to), keeping its usage reference (the counter
    /// is a sum over CPUs). Whichever way the bio came here: a caller naming an offline CPU, a
    /// thread bound to one, a bio resumed after a freeze that remapped the queue or after waiting
    /// for a tag. False (the bio goes on here) only when no such CPU exists.
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private bool MovedOffInactive(Bio bio, HctxType type)
    {
        if ((bio.Flags & RequestFlags.NoWait) != 0)
        {
            FailEntered(bio, BlockStatus.Again);
            return true;
        }

        var map = TagSet.Map;
        var online = map.Topology.Online;
        var cpu = CurrentCpu.Resolve(map.Topology, BlockThread.Current);
        if (!online.Contains(cpu) || _hctxs[map.HardwareQueueFor(cpu, type)].IsInactive)
        {
            cpu = -1;
            for (var c = online.First; c >= 0; c = online.Next(c))
            {
                if (c < _contexts.Length && !_hctxs[map.HardwareQueueFor(c, type)].IsInactive)
                {
                    cpu = c;
                    break;
                }
            }
        }

        if (cpu < 0 || cpu >= _contexts.Length || cpu == bio.Cpu)
        {
            return false;
        }

        bio.Cpu = cpu;
        Runtime.Submit(_contexts[cpu], bio);
        return true;
    }

    private InvalidOperationException NotMultiQueue() =>
        new($"Queue {Name} is {Kind.ToString().ToLowerInvariant()}, not multi-queue: it has no tag set, driver or hardware queues.");

    // Takes the bio's usage reference, or completes it (Again, Offline), or parks it until the
    // queue thaws. Returns true when the bio may proceed.
    private bool Enter(Bio bio) => Enter(bio, BlockThread.Current);

    private bool Enter(Bio bio, BlockThread thread)
    {
        // Read before the bio may be parked: once it waits, a thaw on another thread may resume and
        // complete it, and a completed bio belongs to its pool again.
        var plug = bio.Plug;

        // Submitted from an end_io call-back of this queue that holds its request's reference
        // while the queue is open: take that reference over (CompleteHolding).
        if (ReferenceEquals(thread.HoldUsage, this) && !Usage.IsFrozen)
        {
            thread.HoldUsage = null;
            bio.Entered = true;
            return true;
        }

        var result = Usage.TryEnter(bio.Cpu);
        if (result == EnterResult.Frozen && (bio.Flags & RequestFlags.NoWait) == 0)
        {
            // Only off the fast path: marked before it can be queued, since a thaw on another
            // thread may resume it at once, and its request must then skip the plug (see
            // Bio.Parked). Put back unless it waits.
            var wasParked = bio.Parked;
            bio.Parked = true;
            result = Usage.EnterOrWait(bio.Cpu, bio);
            if (result != EnterResult.Waiting)
            {
                bio.Parked = wasParked;
            }
        }

        switch (result)
        {
            case EnterResult.Entered:
                bio.Entered = true;
                return true;
            case EnterResult.Waiting:
                // Like a task that sleeps: flush its plug so plugged requests can drain the freeze.
                // Read nothing of the bio after this: a thaw may have resumed it already.
                plug?.FlushBeforeWait();
                return false;
            case EnterResult.Frozen:
                bio.Complete(BlockStatus.Again);
                return false;
            default:
                // A dying queue fails the bio on the thread pool, not inline: a caller that
                // resubmits at once after every error would otherwise spin on its thread (the
                // failure completes synchronously, so its await never yields) and a storm of them
                // starves the threads teardown itself needs. Deferred, each retry is one queued
                // work item (the bio itself: nothing is allocated) and teardown keeps its turn.
                if (!bio.FailureDeferred)
                {
                    bio.FailureDeferred = true;
                    ThreadPool.UnsafeQueueUserWorkItem(bio, preferLocal: false);
                    return false;
                }

                bio.Complete(BlockStatus.Offline);
                return false;
        }
    }

    /// <summary>
    /// The body of <c>blk_mq_submit_bio</c>, run in the bio's software context (the submitting
    /// thread in ring mode, the software-context actor in mailbox mode). Also the re-entry point of
    /// a bio that waited for a tag or for the queue to unfreeze.
    /// </summary>
    internal void SubmitBio(Bio bio)
    {
        ArgumentNullException.ThrowIfNull(bio);
        var thread = BlockThread.Current;

        // A bio woken from a tag wait goes straight back to the tag, and one that takes no tag
        // from the map that woke it hands the wake-up on (see TagWaiter.WokenBy).
        var wokenBy = bio.WokenBy;
        if (wokenBy is not null)
        {
            bio.WokenBy = null;
        }

        if (!bio.Entered)
        {
            // A bio resumed after waiting for the queue to thaw.
            if (!Enter(bio, thread))
            {
                return;
            }
        }
        else if (_detached)
        {
            // Entered before the queue died, but dispatch has been torn down since (a tag waiter
            // woken at teardown, or a bio still on its way to its context).
            wokenBy?.CompensateWakeUp();
            FailEntered(bio, BlockStatus.Offline);
            return;
        }

        var type = HctxType.Default;
        if ((bio.Flags & RequestFlags.Polled) != 0)
        {
            if (!_ioPoll)
            {
                wokenBy?.CompensateWakeUp();
                FailEntered(bio, BlockStatus.NotSupported);
                return;
            }

            type = HctxType.Poll;
        }
        else if (bio.Op == BlockOp.Read && TagSet.ReadQueues > 0)
        {
            type = HctxType.Read;
        }

        var ctx = _contexts[bio.Cpu];
        var hctx = _hctxs[TagSet.Map.HardwareQueueFor(bio.Cpu, type)];
        if (hctx.IsInactive)
        {
            // A woken bio moved to another CPU's queue takes its wake-up along: its next pass
            // takes a tag there and, if that is another map, hands the wake-up back (a NOWAIT bio,
            // the only kind failed here, never waits for a tag, so is never woken).
            bio.WokenBy = wokenBy;
            if (MovedOffInactive(bio, type))
            {
                return;
            }

            bio.WokenBy = null;
        }

        if (wokenBy is null && _mergePolicy != (int)MergePolicy.Off && MergeRules.IsMergeable(bio) && TryMergeBio(bio, ctx, hctx))
        {
            return;
        }

        var plug = bio.Plug; // read before the bio may be parked as a tag waiter (see Enter)
        // Submitted from an end_io call-back that holds its request's tag: take it over.
        var tag = TakeHeldTag(hctx, bio, thread);

        // Woken by another map (a remap moved the bio's CPU to another hardware queue) or not
        // allocating at all (the held tag): the wake-up goes back to the map that gave it.
        if (wokenBy is not null &&
            (tag >= 0 || !ReferenceEquals(wokenBy, (bio.Flags & RequestFlags.Reserved) != 0 ? hctx.Tags.ReservedTags : hctx.Tags.BitmapTags)))
        {
            wokenBy.CompensateWakeUp();
        }

        if (tag < 0)
        {
            tag = hctx.AllocateTag(bio, ctx.Cpu);
        }

        if (tag < 0)
        {
            if (tag == HardwareContext.TagWaiting)
            {
                // Read nothing of the bio after this: a tag freed meanwhile may have resumed it.
                plug?.FlushBeforeWait();
            }
            else
            {
                FailEntered(bio, BlockStatus.Again);
            }

            return;
        }

        var rq = hctx.Tags[tag];
        rq.InitFromBio(bio, this, ctx, hctx);
        rq.StatStartNs = Stats.Start(bio.Op, thread);
        ctx.CountDispatched(IsSync(bio.Op, bio.Flags), thread);
        if (type == HctxType.Poll)
        {
            bio.Cookie = rq.UniqueTag;
        }

        // A bio that waited (for a tag or a thaw) is issued at once, as blk_mq_get_tag's sleep
        // flushes the task's plug: held in the plug, its request would keep a tag that a bio the
        // flow awaits may be waiting for.
        if (plug is not null && !bio.Parked)
        {
            var sleeps = bio.PlugSleeps;
            if (plug.Add(rq))
            {
                FlushIfSleepingOrFrozen(plug, bio, sleeps);
                return;
            }
        }

        Issue(rq, thread);
    }

    /// <summary>
    /// After a request went into <paramref name="plug"/>: flush it at once when the flow already
    /// awaits the bio (the request was built after the flow went to sleep: by a software-context
    /// actor, or after a wait for a tag or a thaw) or when the queue is freezing or dying (the
    /// freeze flushed the queue's plugs already and must not wait for this one). The bio may
    /// belong to its pool again by now; reading its mark then only costs a needless flush.
    /// </summary>
    private void FlushIfSleepingOrFrozen(BlockPlug plug, Bio bio, long sleeps)
    {
        // Full fence after the add, pairing with Bio's await mark, the plug's sleep count and
        // Freeze's gate change. The flow slept since it submitted the bio when the count moved:
        // it awaited another bio of the plug (an outside audit, mailbox dispatch: a bio submitted
        // before an await of another, its request built after the await's flush, stayed plugged).
        Interlocked.MemoryBarrier();
        if (bio.IsAwaited || plug.Sleeps != sleeps || Usage.IsFrozen)
        {
            plug.Flush();
        }
    }

    /// <summary>Registers a plug that holds a request of this queue (until <see cref="UntrackPlug"/>).</summary>
    internal void TrackPlug(BlockPlug plug) => _plugs.TryAdd(plug, 0);

    /// <summary>Forgets a plug that was disposed.</summary>
    internal void UntrackPlug(BlockPlug plug) => _plugs.TryRemove(plug, out _);

    // A freeze or teardown hands every plugged request to its hardware queue, so the drain it
    // waits for never depends on a flow that has not awaited yet (blk_flush_plug from schedule).
    private void FlushPlugs()
    {
        if (_plugs.IsEmpty)
        {
            return;
        }

        foreach (var plug in _plugs.Keys)
        {
            plug.Flush();
        }
    }

    /// <summary>Continues a parked submission (tag or freeze wait ended).</summary>
    internal void ResumeSubmission(Bio bio)
    {
        if (_bioDriver is { } bioDriver)
        {
            if (bio.Entered || Enter(bio))
            {
                SubmitToBioDriver(bioDriver, bio);
            }

            return;
        }

        SubmitBio(bio);
    }

    /// <summary>A bio that waited for the queue to thaw tries again: through the runtime, or on the thread pool for a bio-based queue (it has none).</summary>
    internal void ResumeAfterFreeze(Bio bio)
    {
        if (_bioDriver is not null)
        {
            ThreadPool.UnsafeQueueUserWorkItem(bio, preferLocal: false);
            return;
        }

        Runtime.ResumeBio(bio);
    }

    /// <summary>Stages a request on its hardware queue, registering it in its context's merge window.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal void Issue(Request rq) => Issue(rq, BlockThread.Current);

    /// <summary><see cref="Issue(Request)"/> for a caller that holds the calling thread's state.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal void Issue(Request rq, BlockThread thread)
    {
        if (_detached)
        {
            EndRequestWithStatus(rq, BlockStatus.Offline, rq.Generation);
            return;
        }

        var hctx = rq.Hctx!;
        var runtime = Runtime;
        if (runtime.TryStageOwned(hctx, rq, thread))
        {
            return;
        }

        PrepareStaging(rq);
        runtime.Stage(hctx, rq, thread);
    }

    /// <summary>Stages a batch of requests of one hardware queue (a plug flush).</summary>
    internal void IssueBatch(HardwareContext hctx, ReadOnlySpan<Request> requests)
    {
        if (_detached)
        {
            // A plug flushed after teardown: nothing will dispatch these any more.
            foreach (var rq in requests)
            {
                EndRequestWithStatus(rq, BlockStatus.Offline, rq.Generation);
            }

            return;
        }

        foreach (var rq in requests)
        {
            PrepareStaging(rq);
        }

        Runtime.StageBatch(hctx, requests);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void PrepareStaging(Request rq)
    {
        if (_mergePolicy != (int)MergePolicy.Off && MergeRules.IsMergeable(rq))
        {
            rq.MarkStaged();
            rq.Ctx!.Window(rq.Hctx!.Type).Add(rq);
        }
    }

    private bool TryMergeBio(Bio bio, SoftwareContext ctx, HardwareContext hctx)
    {
        // Once merged, the bio belongs to its request: the request may be dispatched and completed
        // on another thread at once, and the bio returned to its pool and reused. Nothing below a
        // successful merge may touch it, so everything needed afterwards is read first.
        var cpu = bio.Cpu;
        var op = bio.Op;
        var plug = bio.Plug;
        var sleeps = bio.PlugSleeps;
        var merged = plug is not null && plug.TryMerge(bio, this);
        if (merged)
        {
            // Merged into a plugged request: the same rule as a request added to the plug.
            FlushIfSleepingOrFrozen(plug!, bio, sleeps);
        }

        // A staged request can only be waiting if the hardware queue's ring is not empty; checking
        // that first keeps the common case free of the window scan (list_empty_careful).
        if (!merged && !hctx.Ring.IsEmpty)
        {
            merged = ctx.Window(hctx.Type).TryMerge(bio, ctx, hctx, _limits) == MergeResult.Merged;
        }

        if (!merged)
        {
            return false;
        }

        // The request already holds a queue reference; the merged bio gives its own back.
        ctx.CountMerged();
        Stats.Merge(op);
        Usage.Exit(cpu);
        return true;
    }

    private void FailEntered(Bio bio, BlockStatus status)
    {
        bio.Entered = false;
        Usage.Exit(bio.Cpu);
        bio.Complete(status);
    }

    // bio_split_to_limits: pieces of at most max sectors, completing the parent when all are done.
    // A split bio is no longer polled (bio_split_rw's bio_clear_polled: "Bio splitting may cause
    // subtle trouble such as hang when doing sync iopoll"): the parent has no request and so no
    // cookie, and nobody would poll its pieces' requests; they complete like any other request
    // and the poller, seeing no cookie, waits for the parent (an outside audit: polled I/O larger
    // than max_sectors_kb hung its pollers, and a freeze behind them, until the I/O timeout).
    // Every field of the parent is read before the first piece goes: in ring mode the pieces may
    // complete inline, the last of them completes the parent, and a completed bio belongs to its pool again, where another
    // thread may rent it (an outside stress test saw pieces cut from someone else's bio). Each
    // piece takes its own usage reference, as a bio resubmitted by submit_bio_noacct does, so a
    // piece for a queue that is dying fails Offline here instead of being posted to a software
    // context that no longer runs (the parent then never completed in mailbox dispatch).
    private void Split(Bio parent, int maxSectors, BlockThread thread)
    {
        parent.Flags &= ~RequestFlags.Polled;
        var op = parent.Op;
        var flags = parent.Flags;
        var sector = parent.Sector;
        var size = parent.Size;
        var buffer = parent.Buffer;
        var cpu = parent.Cpu;
        var plug = parent.Plug;
        var plugSleeps = parent.PlugSleeps;
        var pieceBytes = maxSectors << Bio.SectorShift;
        var pieces = (size + pieceBytes - 1) / pieceBytes;
        parent.ExpectChildren(pieces);
        for (var offset = 0; offset < size; offset += pieceBytes)
        {
            var length = Math.Min(pieceBytes, size - offset);
            var child = Bios.Rent();
            child.Op = op;
            child.Flags = flags;
            child.Sector = sector + (offset >> Bio.SectorShift);
            child.Size = length;
            child.Buffer = op.HasData() ? buffer.Slice(offset, length) : default;
            child.Cpu = cpu;
            child.Plug = plug;
            child.PlugSleeps = plugSleeps;
            child.Queue = this;
            child.Parent = parent;
            if (Enter(child, thread))
            {
                Runtime.Submit(_contexts[cpu], child);
            }
        }
    }

    private static int MaxSectorsFor(BlockOp op, QueueLimits limits)
    {
        var lbsSectors = limits.LogicalBlockSize >> Bio.SectorShift;
        var max = op switch
        {
            BlockOp.Discard => limits.MaxDiscardSectors,
            BlockOp.WriteZeroes => limits.MaxWriteZeroesSectors,
            BlockOp.Flush => 0,
            _ => limits.MaxSectors,
        };
        // A power of two (QueueLimits.Validate): a mask, not a division per I/O.
        return BitOperations.IsPow2(lbsSectors) ? max & -lbsSectors : max / lbsSectors * lbsSectors;
    }

    /// <summary><c>op_is_sync</c>: reads, and writes marked sync, FUA or preflush.</summary>
    internal static bool IsSync(BlockOp op, RequestFlags flags) =>
        op == BlockOp.Read || (flags & (RequestFlags.Sync | RequestFlags.Fua | RequestFlags.PreFlush)) != 0;
}
