using ActorBlk.Hardware.Queues;

namespace ActorBlk.Hardware.Requests;

/// <summary>Outcome of trying to merge a bio into a request (<c>enum bio_merge_status</c>).</summary>
public enum MergeResult
{
    /// <summary>Not a candidate: different operation, not adjacent, or not mergeable.</summary>
    None,

    /// <summary>The bio was added to the request.</summary>
    Merged,

    /// <summary>Adjacent, but a size or segment limit forbids it; the request is marked no-merge.</summary>
    Failed,
}

/// <summary>
/// When a bio may join a request, and how (block/blk-merge.c, blk-mq-semantics §3.2): a
/// <em>back merge</em> when the request ends where the bio starts, a <em>front merge</em> when the
/// bio ends where the request starts, within the queue's size and segment limits.
/// </summary>
public static class MergeRules
{
    /// <summary>Flags that make a bio or request unmergeable (<c>REQ_NOMERGE_FLAGS</c>).</summary>
    public const RequestFlags NoMergeFlags = RequestFlags.NoMerge | RequestFlags.PreFlush | RequestFlags.Fua;

    /// <summary>True when <paramref name="bio"/> may be merged at all (<c>bio_mergeable</c>).</summary>
    public static bool IsMergeable(Bio bio) =>
        (bio.Flags & NoMergeFlags) == 0 && bio.Op is BlockOp.Read or BlockOp.Write or BlockOp.Discard;

    /// <summary>
    /// True when <paramref name="request"/> can take bios: not flush or write-zeroes, no no-merge
    /// flag (<c>rq_mergeable</c>). Whether it was started is the caller's business (see the staging lock).
    /// </summary>
    public static bool IsMergeable(Request request) =>
        (request.Flags & NoMergeFlags) == 0 && request.Op is BlockOp.Read or BlockOp.Write or BlockOp.Discard;

    /// <summary>
    /// A lock-free first look: could <paramref name="bio"/> be merged into <paramref name="request"/>
    /// at all (same operation, adjacent)? It reads the request without its staging lock, so a true
    /// answer must be confirmed by <see cref="TryMerge"/> under the lock; a false one is final for
    /// this attempt. It keeps the merge-window scan from taking a lock per candidate.
    /// </summary>
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveInlining)]
    public static bool MightMerge(Request request, Bio bio)
    {
        var sector = request.Sector;
        return request.Op == bio.Op && (sector + request.Sectors == bio.Sector || sector - bio.Sectors == bio.Sector);
    }

    /// <summary>
    /// Tries to merge <paramref name="bio"/> into <paramref name="request"/> (<c>blk_attempt_bio_merge</c>).
    /// The caller owns the request (it is in the caller's plug, or the caller holds its staging lock).
    /// </summary>
    public static MergeResult TryMerge(Request request, Bio bio, QueueLimits limits)
    {
        ArgumentNullException.ThrowIfNull(request);
        ArgumentNullException.ThrowIfNull(bio);
        ArgumentNullException.ThrowIfNull(limits);

        // blk_rq_merge_ok: same operation and compatible flags.
        if (request.Op != bio.Op || !IsMergeable(request) || !IsMergeable(bio) ||
            (request.Flags & RequestFlags.Polled) != (bio.Flags & RequestFlags.Polled))
        {
            return MergeResult.None;
        }

        bool back;
        if (request.Sector + request.Sectors == bio.Sector)
        {
            back = true;
        }
        else if (request.Sector - bio.Sectors == bio.Sector)
        {
            back = false;
        }
        else
        {
            return MergeResult.None;
        }

        // ll_back_merge_fn / ll_front_merge_fn: a limit refusal marks the request so it is not tried again.
        var maxSectors = request.Op == BlockOp.Discard ? limits.MaxDiscardSectors : limits.MaxSectors;
        var segments = request.Op == BlockOp.Discard ? 0 : 1;
        if ((long)request.Sectors + bio.Sectors > maxSectors || request.Segments + segments > limits.MaxSegments)
        {
            request.Flags |= RequestFlags.NoMerge;
            return MergeResult.Failed;
        }

        if (back)
        {
            request.BioTail!.Next = bio;
            request.BioTail = bio;
            bio.Next = null;
        }
        else
        {
            bio.Next = request.Bio;
            request.Bio = bio;
            request.Sector = bio.Sector;
        }

        bio.Request = request;
        request.Bytes += bio.Size;
        request.Segments += segments;
        return MergeResult.Merged;
    }
}
