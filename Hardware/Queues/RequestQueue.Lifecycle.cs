using ActorBlk.Hardware.Requests;

namespace ActorBlk.Hardware.Queues;

// Lifecycle of a request queue: start, register, dying, shutdown, destroy, offline, and failing what is left.

public sealed partial class RequestQueue
{
    /// <summary>Starts the queue on a dispatch runtime (ring loops or actors).</summary>
    public void Start(IQueueRuntime runtime)
    {
        ArgumentNullException.ThrowIfNull(runtime);
        if (Kind != QueueKind.MultiQueue)
        {
            throw new InvalidOperationException($"Queue {Name} is {Kind.ToString().ToLowerInvariant()}; only a multi-queue queue has a dispatch runtime.");
        }

        if (Interlocked.CompareExchange(ref _runtime, runtime, null) is not null)
        {
            throw new InvalidOperationException($"Queue {Name} is already started.");
        }

        runtime.Attach(this);
        if ((_driver!.Features & Drivers.DriverFeatures.EagerHardwareContexts) != 0)
        {
            foreach (var hctx in _hctxs)
            {
                _driver.InitHardwareContext(hctx);
            }
        }

        _acceptsIo = true;
    }

    /// <summary>
    /// Registers the queue (<c>blk_register_queue</c>): the usage counter switches from atomic to
    /// per-CPU mode now that the queue is known to be a real device.
    /// </summary>
    public void Register()
    {
        if (Kind == QueueKind.Placeholder)
        {
            throw new InvalidOperationException($"Queue {Name} is a placeholder: initialise it as bio-based or multi-queue before registering it.");
        }

        if (Interlocked.Exchange(ref _registered, 1) == 0)
        {
            Usage.SwitchToPerCpu(Topology.PossibleCount);
            Attributes.Publish();
            BlockMetrics.Add(this);
            if (Kind == QueueKind.BioBased)
            {
                _acceptsIo = true;
            }
        }
    }

    /// <summary>Marks every hardware queue idle on the tag set (tag set unshared, or the queue leaving it).</summary>
    public void MarkAllIdle()
    {
        foreach (var hctx in _hctxs)
        {
            hctx.MarkIdle();
        }
    }

    /// <summary>
    /// Starts dying (<c>blk_queue_start_drain</c>): new entries fail with Offline and bios waiting
    /// to enter are woken so they fail too. Bios that already entered, including those waiting for
    /// a tag, still run: the drain waits for them.
    /// </summary>
    public void MarkDying()
    {
        Usage.MarkDying();
        FlushPlugs();
    }

    // True when task completes within timeout. The timer goes when the task completes: a bare
    // Task.Delay beside it kept one timer per destroyed queue alive for the whole drain timeout
    // (30 s by default; a leak audit counted 400 live timers after 400 quick destroys).
    internal static async Task<bool> CompletesWithinAsync(Task task, TimeSpan timeout, TimeProvider? time = null)
    {
        if (task.IsCompleted)
        {
            return true;
        }

        using var cancel = new CancellationTokenSource();
        var first = await Task.WhenAny(task, Task.Delay(timeout, time ?? TimeProvider.System, cancel.Token)).ConfigureAwait(false);
        await cancel.CancelAsync().ConfigureAwait(false);
        return first == task;
    }

    /// <summary>
    /// Tears the queue down (<c>blk_mq_destroy_queue</c>): marks it dying, waits up to
    /// <paramref name="drainTimeout"/> for every request to complete, then stops dispatch, tells the
    /// driver to abandon what it still holds (<see cref="Drivers.IBlockDriver.Abandon"/>) and fails
    /// whatever is left with <see cref="BlockStatus.Offline"/>, and leaves the tag set. Every request
    /// submitted before completes exactly once, whatever the driver does afterwards.
    /// </summary>
    /// <returns>The number of requests that had to be failed.</returns>
    public async Task<int> ShutdownAsync(TimeSpan drainTimeout)
    {
        // The attributes go first, as del_gendisk removes the disk's sysfs before the queue drains.
        Attributes.Withdraw();
        BlockMetrics.Remove(this);
        MarkDying();
        var drained = Usage.WaitDrainedAsync();
        var failed = 0;
        if (!await CompletesWithinAsync(drained, drainTimeout).ConfigureAwait(false))
        {
            _detached = true;
            if (IsStarted)
            {
                await Runtime.DetachAsync().ConfigureAwait(false);
            }

            // The driver is still alive (it is disposed later): told first, it stops writing into
            // the requests failed below, whose buffers are their callers' again (an NBD reply
            // arriving now was copied into a read that had completed with Offline).
            AbandonDriverRequests();
            failed = FailOutstanding(BlockStatus.Offline);
            WakeTagWaiters();

            // What still holds a reference now is on its way to fail (a woken tag waiter, a bio
            // travelling to its context): each finds the queue detached and fails with Offline
            // wherever it arrives. Teardown waits for them, but only so long, so that it finishes
            // in bounded time whatever the submitters or the thread pool do.
            await CompletesWithinAsync(drained, drainTimeout).ConfigureAwait(false);
        }
        else
        {
            _detached = true;
            if (IsStarted)
            {
                await Runtime.DetachAsync().ConfigureAwait(false);
            }
        }

        _tagSet?.RemoveQueue(this);
        if (_bioDriver is { } bioDriver)
        {
            bioDriver.Detach(this);
        }

        _dead = 1;
        return failed;
    }

    // IBlockDriver.Abandon before the requests the driver holds are failed. Teardown and going
    // offline must finish whatever the driver does: a throw is ignored.
    private void AbandonDriverRequests()
    {
        try
        {
            _driver?.Abandon();
        }
        catch (Exception)
        {
            // A driver of any provenance: nothing it throws may stop the teardown.
        }
    }

    /// <summary>
    /// Destroys a queue that was never registered (<c>blk_put_queue</c> on a probe that found no
    /// device): it only marks the queue dead, because nothing per CPU or per hardware queue was
    /// started for it; the caller still owns the driver.
    /// </summary>
    /// <exception cref="InvalidOperationException">The queue is registered; unregister it with <see cref="ShutdownAsync"/>.</exception>
    public void Destroy()
    {
        if (IsRegistered || IsStarted)
        {
            throw new InvalidOperationException($"Queue {Name} is registered; shut it down instead.");
        }

        Usage.MarkDying();
        _dead = 1;
    }

    /// <summary>
    /// Ends every request of this queue that holds a tag, staged or in flight, with
    /// <paramref name="status"/>. Dispatch must be stopped (runtime detached or every hardware queue
    /// stopped and idle). Completions racing with this are resolved exactly once: each request is
    /// claimed here, and its completion then runs apart on the thread pool, never on the caller's
    /// thread, as for <see cref="SetOffline"/> (a completion runs its submitter's code, and one
    /// that does not return would keep the others from failing and the caller from going on).
    /// </summary>
    /// <returns>How many requests this call claimed.</returns>
    public int FailOutstanding(BlockStatus status)
    {
        var failed = 0;
        foreach (var hctx in _hctxs)
        {
            foreach (var rq in hctx.DrainPending())
            {
                if (EndApartWithStatus(rq, status, rq.Generation))
                {
                    failed++;
                }
            }
        }

        return failed + FailInFlightApart(status);
    }

    // The requests of this queue the driver holds (started, not completed), over the tag maps of
    // its hardware queues (one map when tags are host-wide): blk_mq_tagset_busy_iter.
    private IEnumerable<Request> InFlightRequests()
    {
        foreach (var tags in _hctxs.Select(h => h.Tags).Distinct())
        {
            foreach (var rq in tags.Requests)
            {
                if (rq.Queue == this && rq.State == RequestState.InFlight)
                {
                    yield return rq;
                }
            }
        }
    }

    // The requests the driver holds, each with the generation it was in flight under, read in one
    // load before its queue is checked: with shared tags a request may be freed and started again
    // by another queue meanwhile, and a claim with the generation read later would fail that
    // other device's request (a review). The generation read first can only be older: its claim
    // then fails, and the request is the newer use's.
    private List<(Request Rq, uint Generation)> InFlightClaims()
    {
        var list = new List<(Request, uint)>();
        foreach (var tags in _hctxs.Select(h => h.Tags).Distinct())
        {
            foreach (var rq in tags.Requests)
            {
                if (rq.IsInFlight(out var generation) && rq.Queue == this)
                {
                    list.Add((rq, generation));
                }
            }
        }

        return list;
    }

    // Fails every request the driver holds, for a device that went away under live I/O
    // (SetOffline) and for teardown (FailOutstanding): every request the
    // driver holds is claimed here (completed exactly once: a reply racing this loses), and each
    // one's completion proper then runs as its own work item on the thread pool, as the kernel
    // completes each request of a dead device in its own softirq (blk_mq_complete_request from
    // nbd_clear_que). Ended inline one after another, the first completion ran its caller's code
    // on this thread before the others were even failed: a stacked device's continuation and what
    // the caller submits next, which over a leg that completes inline (a mirror degraded onto a
    // memory device, with a bench at QD8 resubmitting from end_io) is an I/O loop that never
    // returns while the caller keeps going. The other requests stayed in flight meanwhile, their
    // writes held until the remote queue's I/O timeout, and the caller's thread (the request
    // queue's actor) was held as long (an outside audit). Returns how many this call claimed.
    private int FailInFlightApart(BlockStatus status)
    {
        var claimed = new List<Request>();
        foreach (var (rq, generation) in InFlightClaims())
        {
            if (rq.TryComplete(generation))
            {
                rq.Status = status;
                claimed.Add(rq);
            }
        }

        EndApart(claimed);
        return claimed.Count;
    }

    // Bios waiting for a tag hold a queue reference but no request: after teardown they are woken
    // to find the queue detached and fail, so the drain can finish.
    private void WakeTagWaiters()
    {
        foreach (var tags in _hctxs.Select(h => h.Tags).Distinct())
        {
            tags.BitmapTags.WakeAll();
            tags.ReservedTags.WakeAll();
        }
    }

    /// <summary>True once the device went offline (<see cref="SetOffline"/>) or the queue was torn down.</summary>
    public bool IsOffline => _detached;

    /// <summary>
    /// The device is gone for good: the queue is marked dying, and every request that has not
    /// reached the driver fails with <see cref="BlockStatus.Offline"/> when dispatch takes it, as
    /// does every later submission and every bio waiting for a tag. With
    /// <paramref name="failInFlight"/> (a driver that abandoned its requests) the requests the
    /// driver holds fail too, the driver told first (<see cref="Drivers.IBlockDriver.Abandon"/>) so
    /// that it touches none of them again: each is claimed here and completes on the thread pool, each apart,
    /// never on the caller's thread (a completion runs its submitter's code); otherwise they
    /// complete when the driver answers.
    /// </summary>
    /// <returns>How many in-flight requests were failed.</returns>
    public int SetOffline(bool failInFlight)
    {
        MarkDying();
        _detached = true;
        var failed = 0;
        if (failInFlight)
        {
            // A driver with several channels may have lost one (which stopped writing into its
            // requests) while another still receives: told first, none writes into a request
            // failed here.
            AbandonDriverRequests();
            failed = FailInFlightApart(BlockStatus.Offline);
        }

        // Whatever waits in rings, dispatch lists or for a tag runs once more, to fail.
        if (IsStarted)
        {
            foreach (var hctx in _hctxs)
            {
                hctx.StartQueue();
            }
        }

        WakeTagWaiters();
        return failed;
    }

    /// <summary>Requests of this queue the driver holds now (started, not completed).</summary>
    public int InFlightCount => InFlightRequests().Count();
}
