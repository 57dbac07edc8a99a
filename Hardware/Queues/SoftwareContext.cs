using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using ActorBlk.Hardware.Requests;
using ActorBlk.Hardware.Topology;

namespace ActorBlk.Hardware.Queues;

/// <summary>
/// A software context (<c>struct blk_mq_ctx</c>): the per-CPU staging point of one request queue.
/// One exists for every possible CPU, online or not, for the queue's whole life
/// (blk-mq-semantics §1 item 1), so a CPU coming online needs no allocation and a request built on
/// a CPU that later goes offline still has its context.
/// </summary>
public sealed class SoftwareContext
{
    private readonly MergeWindow[] _windows = [new(), new(), new()];
    // Counted with interlocked adds by any thread.
    private Counters _counters;

    // Counted with plain adds by the one dispatch-loop thread that owns them (_owner), on a cache
    // line of their own.
    private Counters _owned;
    private object? _owner;

    internal SoftwareContext(RequestQueue queue, int cpu)
    {
        Queue = queue;
        Cpu = cpu;
    }

    /// <summary>The queue this context belongs to.</summary>
    public RequestQueue Queue { get; }

    /// <summary>The CPU of this context.</summary>
    public int Cpu { get; }

    /// <summary>Requests allocated on this context for synchronous I/O (reads, sync writes).</summary>
    public long DispatchedSync => Interlocked.Read(ref _counters.DispatchedSync) + Volatile.Read(ref _owned.DispatchedSync);

    /// <summary>Requests allocated on this context for asynchronous I/O.</summary>
    public long DispatchedAsync => Interlocked.Read(ref _counters.DispatchedAsync) + Volatile.Read(ref _owned.DispatchedAsync);

    /// <summary>Bios merged into an existing request on this context (plug or staging window).</summary>
    public long Merged => Interlocked.Read(ref _counters.Merged);

    /// <summary>Requests of this context completed, synchronous I/O.</summary>
    public long CompletedSync => Interlocked.Read(ref _counters.CompletedSync) + Volatile.Read(ref _owned.CompletedSync);

    /// <summary>Requests of this context completed, asynchronous I/O.</summary>
    public long CompletedAsync => Interlocked.Read(ref _counters.CompletedAsync) + Volatile.Read(ref _owned.CompletedAsync);

    /// <summary>The hardware queue serving requests of <paramref name="type"/> from this context.</summary>
    public HardwareContext HardwareQueue(HctxType type) => Queue.HardwareContexts[Queue.TagSet.Map.HardwareQueueFor(Cpu, type)];

    internal MergeWindow Window(HctxType type) => _windows[(int)type];

    // True when the calling thread counts this context with plain adds: it is a dispatch loop's
    // (BlockThread.IsLoopThread, set by each loop thread at its start; the thread's state is the
    // owner token) and owns the context's second set of counters, or takes them now (the first
    // loop thread to count here does, for the context's life; at low queue depth that thread
    // submits, through its completions' resubmissions, and completes nearly every request). The
    // owned counters have that one writer, so a plain add loses nothing; a reader adds both sets,
    // each exact.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private bool OwnedByThisThread(BlockThread token)
    {
        if (!token.IsLoopThread)
        {
            return false;
        }

        var owner = Volatile.Read(ref _owner);
        return ReferenceEquals(owner, token) || (owner is null && Interlocked.CompareExchange(ref _owner, token, null) is null);
    }

    internal void CountDispatched(bool sync, BlockThread thread)
    {
        if (sync)
        {
            Count(ref _owned.DispatchedSync, ref _counters.DispatchedSync, thread);
        }
        else
        {
            Count(ref _owned.DispatchedAsync, ref _counters.DispatchedAsync, thread);
        }
    }

    internal void CountMerged() => Interlocked.Increment(ref _counters.Merged);

    internal void CountCompleted(bool sync, BlockThread thread)
    {
        if (sync)
        {
            Count(ref _owned.CompletedSync, ref _counters.CompletedSync, thread);
        }
        else
        {
            Count(ref _owned.CompletedAsync, ref _counters.CompletedAsync, thread);
        }
    }

    // The owning loop thread adds to its own set with a plain add (it is the only writer there);
    // every other thread adds to the shared set with an interlocked add. Readers sum both.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void Count(ref long owned, ref long shared, BlockThread thread)
    {
        if (OwnedByThisThread(thread))
        {
            Volatile.Write(ref owned, owned + 1);
        }
        else
        {
            Interlocked.Increment(ref shared);
        }
    }

    /// <inheritdoc />
    public override string ToString() => $"ctx cpu{Cpu} of {Queue.Name}";

    // Counters of one context sit together, apart from other contexts' counters.
    [StructLayout(LayoutKind.Explicit, Size = 64)]
    private struct Counters
    {
        [FieldOffset(0)]
        public long DispatchedSync;

        [FieldOffset(8)]
        public long DispatchedAsync;

        [FieldOffset(16)]
        public long Merged;

        [FieldOffset(24)]
        public long CompletedSync;

        [FieldOffset(32)]
        public long CompletedAsync;
    }
}

/// <summary>
/// The most recent requests a software context staged for one hardware-queue type: the window
/// a new bio is merged against (<c>blk_bio_list_merge</c> scans at most the 8 newest).
/// </summary>
/// <remarks>
/// Adding never locks, nor uses an interlocked operation: the window is a hint, not a list a
/// request must stay on. Two submitters adding at once may both take the same slot (a plain
/// increment of the position can lose one of theirs), and a slot may be overwritten while a
/// merger reads it; either way some staged request is not examined, which only costs a merge
/// opportunity, as a full window does. A merger validates each candidate under the request's
/// own staging lock: still staged, still this context's, still this hardware queue's. Requests
/// already taken for dispatch are skipped.
/// </remarks>
internal sealed class MergeWindow
{
    /// <summary>How many of the newest staged requests are examined.</summary>
    public const int Size = 8;

    private readonly Request?[] _slots = new Request?[Size];
    private long _next;

    public void Add(Request rq)
    {
        // Not interlocked (see the remarks): a lost increment or a shared slot only hides a request from mergers.
        var slot = Volatile.Read(ref _next);
        Volatile.Write(ref _slots[slot & (Size - 1)], rq);
        Volatile.Write(ref _next, slot + 1);
    }

    /// <summary>Tries the newest staged requests, newest first; stops at the first merge or limit refusal.</summary>
    public MergeResult TryMerge(Bio bio, SoftwareContext ctx, HardwareContext hctx, QueueLimits limits)
    {
        var next = Volatile.Read(ref _next);
        for (var i = 1; i <= Size && next - i >= 0; i++)
        {
            var rq = Volatile.Read(ref _slots[(next - i) & (Size - 1)]);
            if (rq is null || !rq.IsStaged || !MergeRules.MightMerge(rq, bio) || !rq.TryBeginMerge())
            {
                continue;
            }

            MergeResult result;
            try
            {
                if (rq.Ctx != ctx || rq.Hctx != hctx || rq.Queue != ctx.Queue)
                {
                    continue;
                }

                result = MergeRules.TryMerge(rq, bio, limits);
            }
            finally
            {
                rq.EndMerge();
            }

            if (result != MergeResult.None)
            {
                return result;
            }
        }

        return MergeResult.None;
    }
}
