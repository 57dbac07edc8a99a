using System.Diagnostics;
using System.Runtime.CompilerServices;
using ActorBlk.Hardware.Drivers;
using ActorBlk.Hardware.Requests;
using ActorBlk.Hardware.Topology;

namespace ActorBlk.Hardware.Queues;

/// <summary>
/// The dispatcher of one hardware queue in ring mode: a dedicated thread that drains the
/// submission ring in batches and calls the driver, spins briefly when idle and then parks until
/// a submitter or a completion wakes it.
/// </summary>
/// <remarks>
/// <para>
/// Lost wake-ups are excluded by a Dekker pair of full fences: the loop announces it is going to
/// sleep (<c>_sleeping = 1</c>, fence) and then looks for work once more; a submitter publishes
/// (fence) and then looks at <c>_sleeping</c>. At least one of them sees the other's write.
/// </para>
/// <para>
/// A submission made on the loop's own thread (an inline completion continuation submitting the
/// next I/O) skips the wake-up entirely: the loop is awake by definition.
/// </para>
/// <para>
/// When the driver attaches an <see cref="ICompletionReaper"/> (an io_uring per hardware queue),
/// the loop serves it: it reaps between rounds while work keeps coming, and when idle it sleeps in
/// the reaper's <see cref="ICompletionReaper.Wait"/>, which hands the round's submissions to the
/// kernel and waits for completions in the same system call; submitters wake it through
/// <see cref="ICompletionReaper.Wake"/>. There is no user-space spin: the kernel wakes the loop.
/// </para>
/// <para>
/// Direct issue (<c>blk_mq_try_issue_directly</c>, blk-mq-semantics §3.1 k and §3.5 item 27):
/// a submitter that finds the loop parked and the hardware queue not busy runs the round itself,
/// on its own thread, instead of waking the loop: the request reaches the driver (and, for a
/// driver that completes inline, its completion runs) with no thread hand-off. The round is the
/// loop's own (<see cref="HardwareContext.RunOnce"/>), so a stopped or quiesced queue dispatches
/// nothing and a refused request goes back to the dispatch list exactly as in the loop; whatever
/// the round leaves to do (a refusal, more work, a fault) is handed to the loop. Rounds are
/// mutually exclusive through an owner flag that the loop takes around each of its rounds too,
/// and a direct round counts as "in round" for <see cref="WaitIdleAsync"/>, so a quiesce waits
/// for it as <c>blk_mq_quiesce_queue</c> waits for <c>hctx_lock</c> sections. Not used for
/// hardware queues with an <see cref="ICompletionReaper"/> (the driver's ring belongs to the
/// loop's thread) or after <see cref="StopAsync"/>.
/// </para>
/// </remarks>
internal sealed class DispatchLoop
{
    /// <summary>Most requests handed to the driver per round.</summary>
    public const int BatchSize = 64;

    /// <summary>How many starts and completions a busy loop counts before it adds them to the disk statistics.</summary>
    internal const int StatsFlushEvery = 256;

    /// <summary>
    /// Most rounds the loop runs back to back inside one owned round (one handshake), while each
    /// leaves work for the next: requests its own completions resubmitted (see <see cref="RunRound"/>).
    /// </summary>
    internal const int ChainedRounds = 16;

    private readonly HardwareContext _hctx;
    private readonly IBlockDriver _driver;
    private readonly long _spinTicks;
    private readonly ManualResetEventSlim _wake = new(false, spinCount: 0);
    private readonly object _idleLock = new();
    private readonly TaskCompletionSource _exited = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private const int Idle = 0;
    private const int Armed = 1;
    private const int Running = 2;
    private const int Stopped = 3;

    private int _state = Idle;
    private TaskCompletionSource? _idleWaiter;
    private ICompletionReaper? _reaper;
    private int _sleeping;
    private int _kicked;
    private int _inRound;
    private volatile bool _stopping;
    private bool _threadStarted;

    // 1 while a round runs (the loop's or a direct one); the loop keeps it when it exits.
    private int _owner;

    // True while the owner runs a round (RunRound), written and read by that thread only.
    private bool _ownerInRound;

    // Set by the loop once the driver's InitHardwareContext ran and no reaper was attached.
    private volatile bool _directReady;
    private readonly bool _directIssue;
    private readonly Request[] _directScratch = new Request[BatchSize];
    private long _directRounds;
    private long _ownedRounds;

    // Whether a round is one accounting batch (BlockTime, DiskStats): not for drivers that may
    // block in QueueRq, where the round's time would go stale and its counts be seen late.
    private readonly bool _batchTime;

    public DispatchLoop(HardwareContext hctx, IBlockDriver driver, TimeSpan spin, bool directIssue = false)
    {
        _hctx = hctx;
        _driver = driver;
        _spinTicks = (long)(spin.TotalSeconds * Stopwatch.Frequency);
        _directIssue = directIssue;

        // A driver that may block in QueueRq would make a cached time stale within the round.
        _batchTime = (driver.Features & DriverFeatures.Blocking) == 0;
    }

    /// <summary>Rounds that ended with the loop going to sleep.</summary>
    public long Parks { get; private set; }

    /// <summary>Rounds run by submitters on their own threads (direct issue).</summary>
    public long DirectRounds => Volatile.Read(ref _directRounds);

    /// <summary>Times the loop took the dispatcher (one handshake each; a chain of rounds counts once).</summary>
    public long OwnedRounds => Volatile.Read(ref _ownedRounds);

    /// <summary>
    /// Arms the loop. Its thread starts with the first work for the hardware queue (a staged
    /// request or a kick), so a queue that is created and removed without I/O, or a hardware queue
    /// no submitter uses, costs no thread (kblockd likewise runs work only when there is some).
    /// </summary>
    public void Start() => Volatile.Write(ref _state, Armed);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Stage(Request rq) => Stage(rq, BlockThread.Current);

    /// <summary><see cref="Stage(Request)"/> for a caller that holds the calling thread's state.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Stage(Request rq, BlockThread thread)
    {
        if (!_hctx.Ring.TryPublish(rq))
        {
            ThrowRingFull();
        }

        // Published on the loop's own thread (an inline completion submitting the next I/O): the
        // loop is running and awake, and takes the request in its next round.
        if (thread.Loop == this)
        {
            return;
        }

        EnsureRunning();
        if (!TryIssueDirectly(thread))
        {
            Wake(thread);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void EnsureRunning()
    {
        if (Volatile.Read(ref _state) == Armed)
        {
            StartThread();
        }
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private void StartThread()
    {
        if (Interlocked.CompareExchange(ref _state, Running, Armed) != Armed)
        {
            return;
        }

        Volatile.Write(ref _threadStarted, true);
        new Thread(Run)
        {
            IsBackground = true,
            Name = $"actorblk/{_hctx.Queue.Name}/hctx{_hctx.Index}",
        }.Start();
    }

    public void StageBatch(ReadOnlySpan<Request> requests)
    {
        if (!_hctx.Ring.TryPublishBatch(requests))
        {
            foreach (var rq in requests)
            {
                if (!_hctx.Ring.TryPublish(rq))
                {
                    ThrowRingFull();
                }
            }
        }

        var thread = BlockThread.Current;
        EnsureRunning();
        if (!TryIssueDirectly(thread))
        {
            Wake(thread);
        }
    }

    public void Kick()
    {
        Volatile.Write(ref _kicked, 1);
        EnsureRunning();
        Wake(BlockThread.Current);
    }

    /// <summary>
    /// Runs the hardware queue (<c>blk_mq_run_hw_queue</c>): a kick, except that a loop whose
    /// thread never started and that has nothing pending is left armed, as the kernel's run
    /// returns at once when <c>blk_mq_hctx_has_pending</c> is false. Freezes, unquiesces and tag
    /// waits run every hardware queue of a device: a CPU hotplug event or an <c>nr_requests</c>
    /// write used to start the dispatch thread of every hardware queue of every device, I/O or not
    /// (an outside scale audit: one event took a node of 1,050 idle devices from 29 to 1,080
    /// threads, for good). Nothing is lost: work can reach an armed loop only through
    /// <see cref="Stage(Request, BlockThread)"/>, <see cref="StageBatch"/> or a requeue, each of
    /// which publishes before it starts the thread or looks here.
    /// </summary>
    public void RunQueue()
    {
        if (Volatile.Read(ref _state) == Armed)
        {
            // Pairs with the publish of a staged or requeued request: it is seen, or its
            // submitter starts the thread itself (Stage publishes, then EnsureRunning).
            Interlocked.MemoryBarrier();
            if (!HasPending)
            {
                return;
            }
        }

        Kick();
    }

    /// <summary>True when the queue's thread started (its first work, or a run with work pending).</summary>
    public bool ThreadStarted => Volatile.Read(ref _threadStarted);

    /// <summary>
    /// Completes when no round is in progress: at once when none is, otherwise when the current
    /// round ends (the quiesce wait, <c>blk_mq_wait_quiesce_done</c>).
    /// </summary>
    /// <remarks>
    /// The loop clears <c>_inRound</c> and then looks for a waiter; a waiter publishes itself and
    /// then looks at <c>_inRound</c> again. With a full fence between the write and the read on
    /// both sides (a Dekker pair, as for <c>_sleeping</c>), at least one of them sees the other:
    /// either the loop finds the waiter, or the waiter sees the round over and completes itself.
    /// Without the second look a waiter could read a stale "in round", register after the loop
    /// had looked, and wait for a round that never comes on an idle queue.
    /// </remarks>
    public Task WaitIdleAsync()
    {
        Task waiting;
        lock (_idleLock)
        {
            if (Volatile.Read(ref _inRound) == 0)
            {
                return Task.CompletedTask;
            }

            _idleWaiter ??= new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            waiting = _idleWaiter.Task;
        }

        // Pairs with the exchange that ends a round: the waiter is published before _inRound is read again.
        Interlocked.MemoryBarrier();
        if (Volatile.Read(ref _inRound) == 0)
        {
            SignalIdle();
        }

        return waiting;
    }

    public Task StopAsync()
    {
        _stopping = true;

        // A loop whose thread never started has nothing to stop, and never will start now.
        if (Interlocked.Exchange(ref _state, Stopped) != Running)
        {
            return Task.CompletedTask;
        }

        _wake.Set();
        Volatile.Read(ref _reaper)?.Wake();
        return _exited.Task;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void Wake(BlockThread thread)
    {
        if (thread.Loop == this)
        {
            return;
        }

        // Pairs with the fence in Park: the published slot is visible before _sleeping is read.
        Interlocked.MemoryBarrier();
        if (Volatile.Read(ref _sleeping) != 0)
        {
            if (_reaper is { } reaper)
            {
                reaper.Wake();
            }
            else
            {
                _wake.Set();
            }
        }
    }

    private bool HasWork =>
        _stopping || Volatile.Read(ref _kicked) != 0 || HasPending;

    // Requests waiting for a round: staged by a round, in the submission ring, or requeued.
    private bool HasPending => _hctx.OwnerStagedCount > 0 || !_hctx.Ring.IsEmpty || !_hctx.Requeued.IsEmpty;

    /// <summary>
    /// Stages a request on the hardware queue's own list when the calling thread is running a
    /// round of this loop (the loop's thread, or a submitter's direct round): a completion in the
    /// round that submits again. The next round takes it first, as the kernel issues such a
    /// request directly; it never waits in the ring, so it is not offered to mergers either. Only
    /// inside a round: a quiesce waits for the round to end, after which nothing is added until it
    /// is lifted, so teardown and reset drain the list as they drain the ring.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public bool TryStageOwned(Request rq, BlockThread thread) => thread.Loop == this && _ownerInRound && _hctx.TryStageOwned(rq);

    private void Run()
    {
        var thread = BlockThread.Current;
        thread.Loop = this;
        thread.IsLoopThread = true;

        // With the system's topology the thread is pinned to its queue's online CPUs (kblockd runs
        // hctx work on hctx->cpumask) and counts as the CPU it is on; with a simulated topology
        // it counts as the queue's home CPU, a label (Bind(-1) leaves the thread unbound).
        var pin = !_hctx.Queue.Topology.IsSimulated && CpuAffinity.IsSupported;
        var pinnedMask = pin ? PinToMask() : null;
        using var bind = CurrentCpu.Bind(pin ? -1 : _hctx.HomeCpu);
        var scratch = new Request[BatchSize];
        long rerunAt = 0;
        var stats = _hctx.Queue.Stats;
        var statsBatch = false;
        var initialised = false;
        try
        {
            // The loop's rounds account in one batch, flushed every StatsFlushEvery counts and
            // before the loop spins or sleeps (DiskStats.EnterBatch).
            statsBatch = _batchTime && stats.EnterBatch();
            while (!_stopping)
            {
                // A remap (CPU hotplug) gives the queue a new mask: follow it.
                if (pinnedMask is not null && !ReferenceEquals(pinnedMask, _hctx.CpuMask))
                {
                    pinnedMask = PinToMask();
                }

                Volatile.Write(ref _kicked, 0);

                DispatchDecision decision;
                if (!InitDriver(ref initialised))
                {
                    // The driver's InitHardwareContext threw: the queue is stopped and the fault
                    // goes to the supervisor; its reset starts the queue and the next pass tries
                    // again.
                    decision = DispatchDecision.Faulted;
                }
                else
                {
                    // A submitter may be running a direct round: the loop's round waits for it.
                    AcquireOwner();
                    Volatile.Write(ref _ownedRounds, _ownedRounds + 1);
                    try
                    {
                        decision = RunRound(scratch, direct: false);
                    }
                    finally
                    {
                        Volatile.Write(ref _owner, 0);
                    }
                }

                switch (decision)
                {
                    case DispatchDecision.RerunNow:
                        // Busy: hand this round's submissions over and collect what finished
                        // before taking more, so completions are not starved by a steady stream.
                        _reaper?.Reap();
                        if (statsBatch && stats.BatchPendingOn(thread) >= StatsFlushEvery)
                        {
                            stats.FlushBatch();
                        }

                        continue;
                    case DispatchDecision.RerunAfterDelay:
                        rerunAt = Environment.TickCount64 + (long)HardwareContext.ResourceDelay.TotalMilliseconds;
                        break;
                    case DispatchDecision.Faulted:
                        _hctx.Queue.Events?.OnDeviceError(_hctx, _hctx.LastFault ?? new BlockDeviceErrorException($"{_hctx}: the driver failed during dispatch."));
                        break;
                }

                if (rerunAt != 0 && Environment.TickCount64 >= rerunAt)
                {
                    rerunAt = 0;
                    continue;
                }

                // No round follows at once: what the rounds counted becomes visible now.
                stats.FlushBatch();
                Park(rerunAt);
            }
        }
        finally
        {
            stats.ExitBatch(statsBatch);

            // Kept for good: no direct round runs once the loop has exited (teardown drains the
            // rings after this, and the driver's context is gone).
            _directReady = false;
            AcquireOwner();
            try
            {
                if (initialised)
                {
                    _driver.ExitHardwareContext(_hctx);
                }
            }
            catch (Exception)
            {
                // A driver bug at teardown: the queue is going away either way, and an exception
                // here ended the loop's thread unhandled, aborting the process.
            }
            finally
            {
                thread.Loop = null;
                _exited.TrySetResult();
            }
        }
    }

    // Runs the driver's InitHardwareContext once, before the first round; false when it threw (a
    // driver bug, handled as a device error: the queue stops and the loop reports the fault).
    // Before, the exception ended the loop's thread unhandled and aborted the process. An offline
    // queue's rounds only fail requests, so they run without it.
    private bool InitDriver(ref bool initialised)
    {
        if (initialised || _hctx.Queue.IsOffline)
        {
            return true;
        }

        try
        {
            _driver.InitHardwareContext(_hctx);
        }
        catch (Exception ex)
        {
            _hctx.Fault(ex);
            return false;
        }

        initialised = true;

        // Published before the loop can first announce that it sleeps (a full fence in Park).
        Volatile.Write(ref _reaper, _hctx.Reaper);
        _directReady = _directIssue && _reaper is null;
        return true;
    }

    // One round with the quiesce handshake (the caller owns the dispatcher).
    [MethodImpl(MethodImplOptions.NoInlining)]
    private DispatchDecision RunRound(Request[] scratch, bool direct)
    {
        // Full fence: the round is announced before the quiesce flag is read in TakeBatch.
        Interlocked.Exchange(ref _inRound, 1);

        // The round's accounting reads the clock once (blk_time_get_ns with a plug's cached time).
        // A direct round's disk statistics are one batch; the loop's thread batches across its
        // rounds (see Run) and flushes before it parks.
        var outerTime = 0L;
        var statsBatch = false;
        var thread = BlockThread.Current;
        if (_batchTime)
        {
            outerTime = BlockTime.EnterBatch(thread);
            if (direct)
            {
                statsBatch = _hctx.Queue.Stats.EnterBatch();
            }
        }

        try
        {
            _ownerInRound = true;
            var decision = _hctx.RunOnce(_driver, scratch);
            if (!direct && _batchTime)
            {
                decision = ChainRounds(scratch, decision, thread);
            }

            return decision;
        }
        finally
        {
            _ownerInRound = false;
            if (_batchTime)
            {
                _hctx.Queue.Stats.ExitBatch(statsBatch);
                BlockTime.ExitBatch(thread, outerTime);
            }

            // Full fence: the round is over before a waiter is looked for (pairs with the
            // fence in WaitIdleAsync; a plain store could pass the read of _idleWaiter).
            Interlocked.Exchange(ref _inRound, 0);
            SignalIdle();
        }
    }

    // The loop's round goes on while work keeps coming: when a round leaves more to do (typically
    // the requests its own inline completions resubmitted from their end_io, as the bench's slots
    // do), the next round runs inside the same owned round, so the handshake (owner flag, the
    // quiesce announcement and the idle signal: three interlocked operations) is paid once per
    // ChainedRounds rounds instead of once per round, which at queue depth 1 is once per I/O. Each
    // chained round is a whole round: TakeBatch reads the quiesce and stop flags afresh (a quiesce
    // that started meanwhile waits for this owned round to end, as for a long round), and reads
    // the clock afresh (BlockTime), so no request is timed with a time from before it was
    // submitted. Not with a reaper (its submissions and completions are served between rounds),
    // nor once a stop, a kick or an idle waiter (a quiesce) is pending, nor once the disk
    // statistics' batch is due for a flush: the loop does those between rounds, as before.
    private DispatchDecision ChainRounds(Request[] scratch, DispatchDecision decision, BlockThread thread)
    {
        if (_reaper is not null)
        {
            return decision;
        }

        var stats = _hctx.Queue.Stats;
        for (var chained = 1; decision == DispatchDecision.RerunNow && chained < ChainedRounds; chained++)
        {
            if (_stopping || Volatile.Read(ref _kicked) != 0 || Volatile.Read(ref _idleWaiter) is not null ||
                stats.BatchPendingOn(thread) >= StatsFlushEvery)
            {
                break;
            }

            BlockTime.Invalidate(thread);
            decision = _hctx.RunOnce(_driver, scratch);
        }

        return decision;
    }

    private void AcquireOwner()
    {
        if (Interlocked.CompareExchange(ref _owner, 1, 0) == 0)
        {
            return;
        }

        // A direct round is short (one batch): wait it out.
        var spinner = default(SpinWait);
        do
        {
            spinner.SpinOnce();
        }
        while (Interlocked.CompareExchange(ref _owner, 1, 0) != 0);
    }

    /// <summary>
    /// Direct issue: when the loop is parked, the hardware queue is not busy and no other round
    /// runs, runs one round on the calling thread. False when the caller must wake the loop.
    /// </summary>
    private bool TryIssueDirectly(BlockThread thread)
    {
        // The loop's own thread, a loop that is awake (it will find the request), a busy queue
        // (kernel: direct issue only while dispatch_busy is 0), or a round already running.
        if (!_directReady || thread.Loop == this || _hctx.DispatchBusy != 0)
        {
            return false;
        }

        // Pairs with the fence in Park: the published request is visible before _sleeping is read.
        Interlocked.MemoryBarrier();
        if (Volatile.Read(ref _sleeping) == 0 || Interlocked.CompareExchange(ref _owner, 1, 0) != 0)
        {
            return false;
        }

        // The caller may be another queue's loop (a stacked driver submitting): restore its mark.
        var previous = thread.Loop;
        DispatchDecision decision;
        try
        {
            if (_stopping)
            {
                return false;
            }

            // A submission from inside this round (an inline completion submitting the next I/O)
            // only publishes: the round's end sees it (RerunNow) and hands it to the loop.
            thread.Loop = this;
            decision = RunRound(_directScratch, direct: true);
            _directRounds++;
        }
        finally
        {
            thread.Loop = previous;
            Volatile.Write(ref _owner, 0);
        }

        switch (decision)
        {
            case DispatchDecision.Idle:
            case DispatchDecision.WaitForCompletion:
                // Nothing left, or a completion reruns the queue (SCHED_RESTART). A submitter that
                // published while this round ran and found the owner taken woke the loop itself.
                return true;
            case DispatchDecision.Faulted:
                _hctx.Queue.Events?.OnDeviceError(_hctx, _hctx.LastFault ?? new BlockDeviceErrorException($"{_hctx}: the driver failed during dispatch."));
                return true;
            default:
                // More work, or a refusal to retry: the loop runs the hardware queue (item 27:
                // RESOURCE -> dispatch list and run the hctx).
                Kick();
                return true;
        }
    }

    private CpuSet PinToMask()
    {
        var mask = _hctx.CpuMask;
        var cpus = mask.Intersect(_hctx.Queue.Topology.Online);
        if (!cpus.IsEmpty)
        {
            CpuAffinity.TryPinCurrentThread(cpus, Thread.CurrentThread.Name ?? _hctx.ToString());
        }

        return mask;
    }

    private void Park(long rerunAt)
    {
        if (_reaper is { } reaper)
        {
            ParkInReaper(reaper, rerunAt);
            return;
        }

        var spinUntil = Stopwatch.GetTimestamp() + _spinTicks;
        while (Stopwatch.GetTimestamp() < spinUntil)
        {
            if (HasWork)
            {
                return;
            }

            Thread.SpinWait(8);
        }

        _wake.Reset();
        Interlocked.Exchange(ref _sleeping, 1);
        if (HasWork)
        {
            Volatile.Write(ref _sleeping, 0);
            return;
        }

        Parks++;
        var timeout = rerunAt == 0 ? Timeout.Infinite : (int)Math.Max(1, rerunAt - Environment.TickCount64);
        _wake.Wait(timeout);
        Volatile.Write(ref _sleeping, 0);
    }

    private void ParkInReaper(ICompletionReaper reaper, long rerunAt)
    {
        Interlocked.Exchange(ref _sleeping, 1);
        if (HasWork)
        {
            // Work arrived: do not sleep, but still submit and reap, so neither waits a round.
            Volatile.Write(ref _sleeping, 0);
            reaper.Reap();
            return;
        }

        Parks++;
        reaper.Wait(rerunAt == 0 ? Timeout.Infinite : (int)Math.Max(1, rerunAt - Environment.TickCount64));
        Volatile.Write(ref _sleeping, 0);
    }

    private void SignalIdle()
    {
        if (Volatile.Read(ref _idleWaiter) is null)
        {
            return;
        }

        TaskCompletionSource? waiter;
        lock (_idleLock)
        {
            waiter = _idleWaiter;
            _idleWaiter = null;
        }

        waiter?.TrySetResult();
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private void ThrowRingFull() =>
        throw new InvalidOperationException($"{_hctx}: the submission ring is full; it is sized to the tag depth, so this is a bug.");
}
