using System.Buffers;
using ActorBlk.Hardware.Queues;

namespace ActorBlk.Hardware.Requests;

/// <summary>
/// A plug (<c>struct blk_plug</c>, blk-mq-semantics §3.3): while it is active, requests built by
/// the current asynchronous flow are held back and later handed to their hardware queues in
/// batches, and new bios can merge into the last plugged request.
/// </summary>
/// <remarks>
/// <para>
/// The plug follows the async flow that started it (an <see cref="AsyncLocal{T}"/>), as the
/// kernel's plug follows a task. Nested plugs are ignored: only the outermost one collects.
/// </para>
/// <para>
/// The plug is flushed when it is disposed (<c>blk_finish_plug</c>); before it would hold more
/// than <see cref="MaxRequestCount"/> requests (twice that when it holds several queues'); when
/// the last plugged request is at least <see cref="FlushSize"/> bytes and merges are enabled; and
/// when the flow awaits an I/O that still sits in the plug, the counterpart of the kernel flushing
/// the plug of a task that goes to sleep.
/// </para>
/// <para>
/// A plug never holds back an I/O the flow already awaits: a request built after the await (by a
/// software-context actor in mailbox dispatch, or for a bio that waited for a tag or a thaw) is
/// flushed at once. And a freeze never waits on a plugged request: every queue knows the plugs
/// holding its requests and flushes them when it starts to freeze or to die, as the kernel's
/// plugs are flushed when their task sleeps (<c>blk_flush_plug</c> from <c>schedule</c>).
/// </para>
/// </remarks>
public sealed class BlockPlug : IDisposable
{
    /// <summary>Requests a plug holds before it flushes (<c>BLK_MAX_REQUEST_COUNT</c>).</summary>
    public const int MaxRequestCount = 32;

    /// <summary>A plugged request this large makes the next addition flush first (<c>BLK_PLUG_FLUSH_SIZE</c>).</summary>
    public const int FlushSize = 128 * 1024;

    private static readonly AsyncLocal<BlockPlug?> s_current = new();

    // Plugs started and not yet finished, in the whole process. While there are none, no flow can
    // have an unfinished plug, and Current skips the async-local lookup (the thread's execution
    // context, a TLS read, on every submission).
    private static int s_unfinished;

    private readonly object _lock = new();
    private readonly bool _nested;
    private Request? _head;
    private Request? _tail;
    private int _count;
    private bool _multipleQueues;
    private bool _finished;
    private long _flushes;
    private long _sleeps;

    // The queues this plug registered with (RequestQueue.TrackPlug), so a freeze of any of them
    // can flush it; usually one, so the first needs no list.
    private RequestQueue? _trackedQueue;
    private List<RequestQueue>? _moreTrackedQueues;

    private BlockPlug(bool nested) => _nested = nested;

    /// <summary>The plug active on the current flow, if any (a finished plug, which holds nothing, may read as none).</summary>
    public static BlockPlug? Current => Volatile.Read(ref s_unfinished) == 0 ? null : s_current.Value;

    /// <summary>Number of requests held.</summary>
    public int Count
    {
        get
        {
            lock (_lock)
            {
                return _count;
            }
        }
    }

    /// <summary>True when the plug holds requests of more than one queue (its limit doubles).</summary>
    public bool HasMultipleQueues => _multipleQueues;

    /// <summary>True for a plug started inside another: it collects nothing.</summary>
    public bool IsNested => _nested;

    /// <summary>How many times this plug has been flushed.</summary>
    public long FlushCount => Interlocked.Read(ref _flushes);

    /// <summary>The request limit now: 32, or 64 once several queues are plugged (<c>blk_plug_max_rq_count</c>).</summary>
    public int Limit => _multipleQueues ? MaxRequestCount * 2 : MaxRequestCount;

    /// <summary>Starts a plug on the current flow (<c>blk_start_plug</c>); inside an active plug it returns a nested, inert one.</summary>
    public static BlockPlug Start()
    {
        if (s_current.Value is { _finished: false })
        {
            return new BlockPlug(nested: true);
        }

        var plug = new BlockPlug(nested: false);
        Interlocked.Increment(ref s_unfinished);
        s_current.Value = plug;
        return plug;
    }

    /// <summary>Flushes the plug and ends it (<c>blk_finish_plug</c>).</summary>
    public void Dispose()
    {
        if (_nested)
        {
            return;
        }

        RequestQueue? tracked;
        List<RequestQueue>? more;
        bool first;
        lock (_lock)
        {
            first = !_finished;
            _finished = true;
            tracked = _trackedQueue;
            more = _moreTrackedQueues;
            _trackedQueue = null;
            _moreTrackedQueues = null;
        }

        // Finished from here on (Add and TryMerge refuse it), so it no longer counts as unfinished
        // even if the flush below throws.
        if (first)
        {
            Interlocked.Decrement(ref s_unfinished);
        }

        Flush();
        tracked?.UntrackPlug(this);
        if (more is not null)
        {
            foreach (var queue in more)
            {
                queue.UntrackPlug(this);
            }
        }

        if (s_current.Value == this)
        {
            s_current.Value = null;
        }
    }

    /// <summary>Hands every plugged request to its hardware queue, grouped per hardware queue.</summary>
    public void Flush()
    {
        Request? list;
        lock (_lock)
        {
            list = _head;
            _head = _tail = null;
            _count = 0;
            _multipleQueues = false;
        }

        if (list is null)
        {
            return;
        }

        Interlocked.Increment(ref _flushes);
        Issue(list);
    }

    /// <summary>
    /// Tries to merge <paramref name="bio"/> into a plugged request of <paramref name="queue"/>
    /// (<c>blk_attempt_plug_merge</c>): the last request if it belongs to that queue; with several
    /// queues plugged, the first request of that queue.
    /// </summary>
    internal bool TryMerge(Bio bio, RequestQueue queue)
    {
        lock (_lock)
        {
            if (_tail is null || _finished)
            {
                return false;
            }

            if (_tail.Queue == queue)
            {
                return MergeRules.TryMerge(_tail, bio, queue.Limits) == MergeResult.Merged;
            }

            if (!_multipleQueues)
            {
                return false;
            }

            for (var rq = _head; rq is not null; rq = rq.NextInList)
            {
                if (rq.Queue == queue)
                {
                    return MergeRules.TryMerge(rq, bio, queue.Limits) == MergeResult.Merged;
                }
            }

            return false;
        }
    }

    /// <summary>
    /// Adds a request (<c>blk_add_rq_to_plug</c>), flushing what is plugged first when the plug is
    /// full or its last request is large. Returns false when the plug has finished; the caller
    /// then issues the request itself.
    /// </summary>
    internal bool Add(Request rq)
    {
        Request? flushList = null;
        lock (_lock)
        {
            if (_finished)
            {
                return false;
            }

            var last = _tail;
            if (_count > 0 && (_count >= Limit || (rq.Queue!.MergePolicy != MergePolicy.Off && last!.Bytes >= FlushSize)))
            {
                flushList = _head;
                _head = _tail = null;
                _count = 0;
                _multipleQueues = false;
                last = null;
            }

            if (!_multipleQueues && last is not null && last.Queue != rq.Queue)
            {
                _multipleQueues = true;
            }

            Track(rq.Queue!);
            rq.Plug = this;
            rq.NextInList = null;
            if (_tail is null)
            {
                _head = rq;
            }
            else
            {
                _tail.NextInList = rq;
            }

            _tail = rq;
            _count++;
        }

        if (flushList is not null)
        {
            Interlocked.Increment(ref _flushes);
            Issue(flushList);
        }

        return true;
    }

    /// <summary>
    /// A bio of the flow went to a bio-based (stacked) queue, whose members' requests may come
    /// into this plug: the stacked queue's freezes and teardown must flush it too, since they wait
    /// for the stacked bio, which waits for those requests.
    /// </summary>
    internal void TrackStacked(RequestQueue queue)
    {
        lock (_lock)
        {
            if (!_finished)
            {
                Track(queue);
            }
        }
    }

    /// <summary>The flow is about to wait for a plugged I/O: flush so the wait can end.</summary>
    internal void FlushBeforeWait()
    {
        // The sleep is counted before the flush, with a full fence: a request of a bio submitted
        // before this sleep but built after this flush (by a software-context actor in mailbox
        // dispatch) sees the count moved on and is flushed by its builder.
        Interlocked.Increment(ref _sleeps);
        Flush();
    }

    /// <summary>
    /// How often the flow went to sleep on a bio of this plug (<see cref="FlushBeforeWait"/>). A bio
    /// records it when submitted: a request built for it after the count moved on belongs to a
    /// flow that already slept, as the kernel's plug flush on schedule() would have issued it.
    /// </summary>
    internal long Sleeps => Volatile.Read(ref _sleeps);

    // Under _lock: registers with the queue once for the plug's life, so the queue's freezes and
    // teardown can flush this plug from another thread.
    private void Track(RequestQueue queue)
    {
        if (_trackedQueue == queue)
        {
            return;
        }

        if (_trackedQueue is null)
        {
            _trackedQueue = queue;
        }
        else
        {
            _moreTrackedQueues ??= [];
            if (_moreTrackedQueues.Contains(queue))
            {
                return;
            }

            _moreTrackedQueues.Add(queue);
        }

        queue.TrackPlug(this);
    }

    // Runs of requests for the same hardware queue are staged with one publish each.
    private static void Issue(Request? list)
    {
        var batch = ArrayPool<Request>.Shared.Rent(MaxRequestCount * 2);
        try
        {
            var n = 0;
            HardwareContext? hctx = null;
            while (list is not null)
            {
                var next = list.NextInList;
                list.NextInList = null;
                list.Plug = null;
                if (n > 0 && (list.Hctx != hctx || n == batch.Length))
                {
                    hctx!.Queue.IssueBatch(hctx, batch.AsSpan(0, n));
                    n = 0;
                }

                hctx = list.Hctx;
                batch[n++] = list;
                list = next;
            }

            if (n > 0)
            {
                hctx!.Queue.IssueBatch(hctx, batch.AsSpan(0, n));
            }
        }
        finally
        {
            Array.Clear(batch);
            ArrayPool<Request>.Shared.Return(batch);
        }
    }
}
