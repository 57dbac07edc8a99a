using ActorBlk.Hardware.Requests;

namespace ActorBlk.Hardware.Queues;

/// <summary>
/// Ring dispatch (<see cref="DispatchMode.Ring"/>): the submitting thread runs the software-context
/// work itself and stages requests into each hardware queue's lock-free ring; one
/// <see cref="DispatchLoop"/> thread per hardware queue drains it; redirected completions go
/// through <see cref="BlockSoftIrq"/>. No message and no allocation per I/O.
/// </summary>
public sealed class RingRuntime : IQueueRuntime
{
    /// <summary>How long an idle dispatch loop spins before it parks, by default.</summary>
    public static readonly TimeSpan DefaultSpin = TimeSpan.FromMicroseconds(20);

    private readonly BlockSoftIrq _softIrq;
    private readonly TimeSpan _spin;
    private readonly bool _directIssue;
    private DispatchLoop[] _loops = [];

    /// <summary>Creates a ring runtime delivering redirected completions through <paramref name="softIrq"/>.</summary>
    /// <param name="softIrq">The per-CPU completion workers (shared by all queues).</param>
    /// <param name="spin">How long idle dispatch loops spin before parking.</param>
    /// <param name="directIssue">
    /// Let a submitter that finds its hardware queue's loop parked and the queue not busy run the
    /// dispatch round on its own thread (<c>blk_mq_try_issue_directly</c>; see <see cref="DispatchLoop"/>).
    /// </param>
    public RingRuntime(BlockSoftIrq softIrq, TimeSpan? spin = null, bool directIssue = true)
    {
        ArgumentNullException.ThrowIfNull(softIrq);
        _softIrq = softIrq;
        _spin = spin ?? DefaultSpin;
        _directIssue = directIssue;
    }

    /// <inheritdoc />
    public DispatchMode Mode => DispatchMode.Ring;

    /// <summary>Times the dispatch loops went to sleep (a measure of idleness).</summary>
    public long Parks => _loops.Sum(l => l.Parks);

    /// <summary>Dispatch rounds that submitters ran on their own threads (direct issue).</summary>
    public long DirectRounds => _loops.Sum(l => l.DirectRounds);

    /// <summary>Times the dispatch loops took their dispatcher, each for one round or a chain of them.</summary>
    internal long OwnedRounds => _loops.Sum(l => l.OwnedRounds);

    /// <inheritdoc />
    public void Attach(RequestQueue queue)
    {
        ArgumentNullException.ThrowIfNull(queue);
        var loops = new DispatchLoop[queue.HardwareContexts.Count];
        for (var i = 0; i < loops.Length; i++)
        {
            loops[i] = new DispatchLoop(queue.HardwareContexts[i], queue.Driver, _spin, _directIssue);
        }

        _loops = loops;
        foreach (var loop in loops)
        {
            loop.Start();
        }
    }

    /// <inheritdoc />
    public void Submit(SoftwareContext ctx, Bio bio) => ctx.Queue.SubmitBio(bio);

    /// <inheritdoc />
    public void ResumeBio(Bio bio) => ThreadPool.UnsafeQueueUserWorkItem(bio, preferLocal: false);

    /// <inheritdoc />
    public void Stage(HardwareContext hctx, Request request) => _loops[hctx.Index].Stage(request);

    /// <inheritdoc cref="IQueueRuntime.Stage(HardwareContext, Request)"/>
    void IQueueRuntime.Stage(HardwareContext hctx, Request request, BlockThread thread) => _loops[hctx.Index].Stage(request, thread);

    /// <inheritdoc />
    public bool TryStageOwned(HardwareContext hctx, Request request) => _loops[hctx.Index].TryStageOwned(request, BlockThread.Current);

    /// <inheritdoc cref="IQueueRuntime.TryStageOwned(HardwareContext, Request)"/>
    bool IQueueRuntime.TryStageOwned(HardwareContext hctx, Request request, BlockThread thread) => _loops[hctx.Index].TryStageOwned(request, thread);

    /// <inheritdoc />
    public void StageBatch(HardwareContext hctx, ReadOnlySpan<Request> requests) => _loops[hctx.Index].StageBatch(requests);

    /// <inheritdoc />
    public void Kick(HardwareContext hctx) => _loops[hctx.Index].RunQueue();

    /// <summary>How many of the hardware queues' dispatch loops started their thread (a loop starts it with its first work).</summary>
    public int StartedThreads => _loops.Count(l => l.ThreadStarted);

    /// <inheritdoc />
    public void DeliverCompletion(SoftwareContext target, Request request) => _softIrq.Raise(target.Cpu, request);

    /// <inheritdoc />
    public Task WaitDispatchIdleAsync(HardwareContext hctx) => _loops[hctx.Index].WaitIdleAsync();

    /// <inheritdoc />
    public Task DetachAsync() => Task.WhenAll(_loops.Select(l => l.StopAsync()));
}
