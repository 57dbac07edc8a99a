using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace ActorBlk.Hardware.Queues;

/// <summary>Something waiting for a frozen queue to thaw (or die).</summary>
public interface IFreezeWaiter
{
    /// <summary>Called, without locks held, when the queue unfroze or started dying; the waiter retries its entry.</summary>
    void OnUnfrozen();
}

/// <summary>Result of an attempt to enter a queue.</summary>
public enum EnterResult
{
    /// <summary>Entered: the caller holds a reference and must <see cref="QueueUsageCounter.Exit"/>.</summary>
    Entered,

    /// <summary>The queue is frozen; a no-wait caller gets <c>EAGAIN</c>.</summary>
    Frozen,

    /// <summary>The queue is dying; the caller gets <c>ENODEV</c>.</summary>
    Dying,

    /// <summary>The caller was queued and will be called back when the queue unfreezes or dies.</summary>
    Waiting,
}

/// <summary>
/// The queue usage counter (<c>q_usage_counter</c>, blk-mq-semantics §9): every allocated request
/// and every bio-based submission holds a reference; freezing stops new entries and lets the
/// count drain to zero; a dying queue refuses entry for good.
/// </summary>
/// <remarks>
/// <para>
/// The counter starts in <em>atomic</em> mode (one shared counter) and switches to <em>per-CPU</em>
/// mode (one padded stripe per CPU) when the queue is registered. The kernel does the same because
/// SCSI probing creates and destroys many queues for LUNs that do not exist, and a per-CPU counter
/// is costlier to set up and tear down; here an unregistered queue does not even allocate its stripes.
/// </para>
/// <para>
/// Entering increments first and checks the gate afterwards; freezing closes the gate first and
/// sums afterwards. Both steps are separated by full fences, so either the entering thread sees the
/// closed gate and backs out, or the freezer's sum includes it: no request slips past a freeze.
/// A request may enter on one stripe and leave on another; the sum stays exact once quiet.
/// </para>
/// </remarks>
public sealed class QueueUsageCounter
{
    private const int GateOpen = 0;
    private const int GateFrozen = 1;
    private const int GateDying = 2;

    private readonly object _lock = new();
    private readonly List<IFreezeWaiter> _waiters = [];
    private Stripe[]? _stripes;
    private long _atomic;
    private int _gate;
    private int _freezeDepth;
    private TaskCompletionSource? _drained;

    /// <summary>True once the counter runs per-CPU (after registration).</summary>
    public bool IsPerCpu => Volatile.Read(ref _stripes) is not null;

    /// <summary>Current nesting depth of freezes.</summary>
    public int FreezeDepth => Volatile.Read(ref _freezeDepth);

    /// <summary>True while frozen (or dying).</summary>
    public bool IsFrozen => Volatile.Read(ref _gate) != GateOpen;

    /// <summary>True once the queue started dying.</summary>
    public bool IsDying => Volatile.Read(ref _gate) == GateDying;

    /// <summary>The number of references held (exact when no entry or exit is in progress).</summary>
    public long Count => Sum();

    /// <summary>Number of callers waiting for the queue to unfreeze.</summary>
    public int WaiterCount
    {
        get
        {
            lock (_lock)
            {
                return _waiters.Count;
            }
        }
    }

    /// <summary>Switches to per-CPU mode (<c>percpu_ref_switch_to_percpu</c>), as registration does.</summary>
    public void SwitchToPerCpu(int cpuCount)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(cpuCount, 1);
        Interlocked.CompareExchange(ref _stripes, new Stripe[cpuCount], null);
    }

    /// <summary>Tries to take a live reference without waiting (<c>percpu_ref_tryget_live</c>).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public EnterResult TryEnter(int cpu)
    {
        // A dying queue never opens again: refuse without touching the counter, so callers that
        // resubmit at once after every error cannot keep the count from ever reading zero (the
        // drain teardown waits for) nor contend on the counter and the drain lock.
        if (Volatile.Read(ref _gate) == GateDying)
        {
            return EnterResult.Dying;
        }

        Add(cpu, 1);

        // The increment above is a full fence: it is visible before the gate is read.
        var gate = Volatile.Read(ref _gate);
        if (gate == GateOpen)
        {
            return EnterResult.Entered;
        }

        Exit(cpu);
        return gate == GateDying ? EnterResult.Dying : EnterResult.Frozen;
    }

    /// <summary>
    /// Enters, or queues <paramref name="waiter"/> to be called back when the queue unfreezes
    /// (<c>blk_queue_enter</c> without NOWAIT). Never blocks.
    /// </summary>
    public EnterResult EnterOrWait(int cpu, IFreezeWaiter waiter)
    {
        ArgumentNullException.ThrowIfNull(waiter);
        while (true)
        {
            var result = TryEnter(cpu);
            if (result != EnterResult.Frozen)
            {
                return result;
            }

            lock (_lock)
            {
                // The gate only changes under the lock, so a waiter queued here cannot miss the thaw.
                var gate = Volatile.Read(ref _gate);
                if (gate == GateDying)
                {
                    return EnterResult.Dying;
                }

                if (gate == GateFrozen)
                {
                    _waiters.Add(waiter);
                    return EnterResult.Waiting;
                }
            }
        }
    }

    /// <summary>Drops a reference (<c>blk_queue_exit</c>).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Exit(int cpu)
    {
        Add(cpu, -1);
        if (Volatile.Read(ref _gate) != GateOpen)
        {
            SignalIfDrained();
        }
    }

    /// <summary>
    /// Starts a freeze (<c>blk_freeze_queue_start</c>): new entries fail or wait. Freezes nest;
    /// each needs its own <see cref="Unfreeze"/>.
    /// </summary>
    /// <returns>True when this call moved the depth from 0 to 1.</returns>
    public bool Freeze()
    {
        lock (_lock)
        {
            if (++_freezeDepth != 1)
            {
                return false;
            }

            if (Volatile.Read(ref _gate) == GateOpen)
            {
                Interlocked.Exchange(ref _gate, GateFrozen);
            }

            return true;
        }
    }

    /// <summary>Completes when every reference has been dropped (<c>blk_mq_freeze_queue_wait</c>).</summary>
    /// <exception cref="InvalidOperationException">The queue is not frozen, so it could never drain.</exception>
    public Task WaitDrainedAsync()
    {
        lock (_lock)
        {
            if (Volatile.Read(ref _gate) == GateOpen)
            {
                throw new InvalidOperationException("Waiting for a drain needs a frozen queue.");
            }

            if (Sum() == 0)
            {
                return Task.CompletedTask;
            }

            _drained ??= new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            return _drained.Task;
        }
    }

    /// <summary>
    /// Ends one freeze; on the last one the queue is live again and every waiter is called back.
    /// </summary>
    /// <returns>True when this call thawed the queue.</returns>
    /// <exception cref="InvalidOperationException">More unfreezes than freezes.</exception>
    public bool Unfreeze()
    {
        IFreezeWaiter[] waiters;
        lock (_lock)
        {
            if (_freezeDepth == 0)
            {
                throw new InvalidOperationException("Unfreeze without a matching freeze.");
            }

            if (--_freezeDepth != 0 || Volatile.Read(ref _gate) == GateDying)
            {
                return false;
            }

            Interlocked.Exchange(ref _gate, GateOpen);
            waiters = TakeWaiters();
        }

        foreach (var w in waiters)
        {
            w.OnUnfrozen();
        }

        return true;
    }

    /// <summary>
    /// Marks the queue dying (<c>blk_queue_start_drain</c>): entry fails for good and every waiter
    /// is called back so it can fail too. Idempotent.
    /// </summary>
    public void MarkDying()
    {
        IFreezeWaiter[] waiters;
        lock (_lock)
        {
            if (Volatile.Read(ref _gate) == GateDying)
            {
                return;
            }

            Interlocked.Exchange(ref _gate, GateDying);
            _freezeDepth++;
            waiters = TakeWaiters();
        }

        foreach (var w in waiters)
        {
            w.OnUnfrozen();
        }

        SignalIfDrained();
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void Add(int cpu, long delta)
    {
        var stripes = Volatile.Read(ref _stripes);
        if (stripes is null)
        {
            Interlocked.Add(ref _atomic, delta);
        }
        else
        {
            // One stripe per CPU: the index is the CPU, without a division, unless it is out of range.
            var index = (uint)cpu;
            if (index >= (uint)stripes.Length)
            {
                index %= (uint)stripes.Length;
            }

            Interlocked.Add(ref stripes[index].Value, delta);
        }
    }

    private long Sum()
    {
        var total = Interlocked.Read(ref _atomic);
        var stripes = Volatile.Read(ref _stripes);
        if (stripes is not null)
        {
            for (var i = 0; i < stripes.Length; i++)
            {
                total += Interlocked.Read(ref stripes[i].Value);
            }
        }

        return total;
    }

    private void SignalIfDrained()
    {
        TaskCompletionSource? done = null;
        lock (_lock)
        {
            if (_drained is not null && Sum() == 0)
            {
                done = _drained;
                _drained = null;
            }
        }

        done?.TrySetResult();
    }

    private IFreezeWaiter[] TakeWaiters()
    {
        var waiters = _waiters.ToArray();
        _waiters.Clear();
        return waiters;
    }

    [StructLayout(LayoutKind.Explicit, Size = 64)]
    private struct Stripe
    {
        [FieldOffset(0)]
        public long Value;
    }
}
