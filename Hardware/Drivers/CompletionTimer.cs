using System.Collections.Concurrent;
using System.Diagnostics;
using ActorBlk.Hardware.Requests;
using ActorBlk.Hardware.Topology;

namespace ActorBlk.Hardware.Drivers;

/// <summary>
/// Completes requests after a delay, on its own thread: the "interrupt" of null_blk's timer mode
/// (irqmode 2, <c>completion_nsec</c>) and of injected latency.
/// </summary>
/// <remarks>
/// <para>
/// Delays are microseconds, below what a sleeping thread can hit, so the thread spins while the
/// next completion is less than <see cref="SpinThreshold"/> away and sleeps otherwise; with nothing
/// scheduled it spins <see cref="IdleSpin"/> more and then parks. A spinning thread yields its CPU
/// every few pauses.
/// </para>
/// <para>
/// A scheduler publishes the entry to a lock-free intake queue and wakes the thread only when it
/// sleeps (a Dekker pair of full fences: the scheduler enqueues and then reads the sleeping flag;
/// the thread sets the flag and then looks at the intake once more). The thread alone moves
/// entries into its priority queue, so a dispatcher scheduling a batch never contends with the
/// spinning thread for a lock. Nothing is allocated per request once the queues have grown.
/// </para>
/// <para>
/// A completion runs as if on the CPU that scheduled it (the CPU a block-layer thread is bound
/// to, such as a mailbox driver actor on its hardware queue's CPU), as null_blk's hrtimer fires on
/// the CPU that armed it: rq_affinity and an end-io that submits again see that CPU.
/// </para>
/// </remarks>
public sealed class CompletionTimer : IDisposable
{
    /// <summary>Below this distance to the next due completion the thread spins instead of sleeping.</summary>
    public static readonly TimeSpan SpinThreshold = TimeSpan.FromMilliseconds(2);

    /// <summary>
    /// How long the thread spins with nothing scheduled before it parks. When the completions'
    /// end-ios hand the next I/O to another thread (mailbox dispatch), nothing is scheduled until
    /// that thread issues it, a few microseconds later; a parked timer thread would cost that
    /// thread a futex wake per burst and delay the burst by a wake-up.
    /// </summary>
    public static readonly TimeSpan IdleSpin = TimeSpan.FromMicroseconds(50);

    // Every this many pauses of a spin the thread yields its CPU (sched_yield), so a thread that
    // shares the CPU and was handed work (a pinned mailbox thread) runs instead of waiting for the
    // end of the time slice.
    private const int YieldEvery = 4;

    private readonly ConcurrentQueue<Incoming> _intake = new();
    private readonly PriorityQueue<Entry, long> _due = new();
    private readonly ManualResetEventSlim _wake = new(false, spinCount: 0);
    private readonly Thread _thread;
    private volatile bool _stopping;
    private int _sleeping;
    private long _scheduled;
    private long _fired;
    private int _pauses;

    /// <summary>Starts the timer thread.</summary>
    public CompletionTimer(string name)
    {
        _thread = new Thread(Run) { IsBackground = true, Name = $"actorblk-timer/{name}" };
        _thread.Start();
    }

    /// <summary>Completions delivered so far.</summary>
    public long Fired => Interlocked.Read(ref _fired);

    /// <summary>Number of completions waiting.</summary>
    public int Pending => (int)(Interlocked.Read(ref _scheduled) - Interlocked.Read(ref _fired));

    /// <summary>Completes <paramref name="rq"/> (incarnation <paramref name="generation"/>) with <paramref name="status"/> after <paramref name="delay"/>.</summary>
    public void Schedule(Request rq, uint generation, BlockStatus status, TimeSpan delay)
    {
        ArgumentNullException.ThrowIfNull(rq);
        var due = Stopwatch.GetTimestamp() + (long)(delay.TotalSeconds * Stopwatch.Frequency);
        Interlocked.Increment(ref _scheduled);
        var entry = new Entry(rq, generation, status, CurrentCpu.Bound);

        // Armed on a CPU's own thread (mailbox dispatch): that thread fires it, as null_blk's
        // hrtimer fires on the CPU that armed it, and this thread stays out of the request's way.
        if (CpuTimerHost.Current is { } host)
        {
            host.Add(this, entry, due);
            return;
        }

        _intake.Enqueue(new Incoming(entry, due));

        // Dekker pair with Park: the entry is visible before the flag is read.
        Interlocked.MemoryBarrier();
        if (Volatile.Read(ref _sleeping) != 0)
        {
            _wake.Set();
        }
    }

    /// <summary>Stops the thread; completions still pending are delivered first.</summary>
    public void Dispose()
    {
        _stopping = true;
        _wake.Set();
        if (Thread.CurrentThread != _thread)
        {
            _thread.Join();
        }

        _wake.Dispose();
    }

    private void Run()
    {
        var spinTicks = (long)(SpinThreshold.TotalSeconds * Stopwatch.Frequency);
        var idleSpinTicks = (long)(IdleSpin.TotalSeconds * Stopwatch.Frequency);
        var idleSince = 0L;
        while (true)
        {
            while (_intake.TryDequeue(out var incoming))
            {
                _due.Enqueue(incoming.Entry, incoming.Due);
            }

            var now = Stopwatch.GetTimestamp();
            if (_due.TryPeek(out var entry, out var due) && (due <= now || _stopping))
            {
                _due.Dequeue();
                idleSince = 0;
                Fire(entry);
                continue;
            }

            if (_due.Count == 0)
            {
                if (_stopping)
                {
                    if (_intake.IsEmpty)
                    {
                        return;
                    }

                    continue;
                }

                if (idleSince == 0)
                {
                    idleSince = now;
                }

                if (now - idleSince < idleSpinTicks)
                {
                    Pause();
                    continue;
                }

                idleSince = 0;
                Park(Timeout.InfiniteTimeSpan);
            }
            else if (due - now > spinTicks)
            {
                Park(TimeSpan.FromSeconds((double)(due - now - spinTicks) / Stopwatch.Frequency));
            }
            else
            {
                Pause();
            }
        }
    }

    private void Pause()
    {
        if (++_pauses % YieldEvery == 0)
        {
            Thread.Yield();
        }
        else
        {
            Thread.SpinWait(16);
        }
    }

    /// <summary>Fires an entry armed on a CPU's own thread (<see cref="CpuTimerHost"/>), on that thread.</summary>
    internal void FireHosted(Entry entry) => Fire(entry);

    private void Fire(Entry entry)
    {
        if (entry.Cpu >= 0)
        {
            using (CurrentCpu.Bind(entry.Cpu))
            {
                entry.Request.Complete(entry.Status, entry.Generation);
            }
        }
        else
        {
            entry.Request.Complete(entry.Status, entry.Generation);
        }

        Interlocked.Increment(ref _fired);
    }

    // Sleeps until a scheduler wakes the thread, Dispose, or the timeout.
    private void Park(TimeSpan timeout)
    {
        _wake.Reset();
        Interlocked.Exchange(ref _sleeping, 1);
        if (_intake.IsEmpty && !_stopping)
        {
            _wake.Wait(timeout);
        }

        Volatile.Write(ref _sleeping, 0);
    }

    /// <summary>A scheduled completion.</summary>
    internal readonly record struct Entry(Request Request, uint Generation, BlockStatus Status, int Cpu);

    private readonly record struct Incoming(Entry Entry, long Due);
}

/// <summary>
/// Timer completions fired by the thread of a CPU itself: a thread that hosts one (mailbox
/// dispatch's per-CPU thread, <see cref="Attach"/>) fires the completions armed on it between its
/// other work, as null_blk's hrtimer fires on the CPU that armed it, instead of handing them to the
/// timer's own thread and back. Used by that thread only; nothing is allocated per entry once the
/// queue has grown.
/// </summary>
internal sealed class CpuTimerHost
{
    [ThreadStatic]
    private static CpuTimerHost? t_current;

    private readonly PriorityQueue<(CompletionTimer Timer, CompletionTimer.Entry Entry), long> _due = new();

    /// <summary>The host of the calling thread, or null.</summary>
    public static CpuTimerHost? Current => t_current;

    /// <summary>Completions armed and not fired yet.</summary>
    public int Count => _due.Count;

    /// <summary>The timestamp (<see cref="Stopwatch"/>) of the next completion, or <see cref="long.MaxValue"/>.</summary>
    public long NextDue => _due.TryPeek(out _, out var due) ? due : long.MaxValue;

    /// <summary>Makes this the host of the calling thread: completions armed on it from now on are fired by it.</summary>
    public void Attach() => t_current = this;

    /// <summary>The calling thread hosts no timer any more (what is armed stays here until fired).</summary>
    public static void Detach() => t_current = null;

    /// <summary>Fires, oldest first, every completion due at <paramref name="now"/>, or every one when <paramref name="all"/>.</summary>
    /// <returns>The number fired.</returns>
    public int FireDue(long now, bool all = false)
    {
        var n = 0;
        while (_due.TryPeek(out var item, out var due) && (all || due <= now))
        {
            _due.Dequeue();
            n++;
            item.Timer.FireHosted(item.Entry);
        }

        return n;
    }

    internal void Add(CompletionTimer timer, CompletionTimer.Entry entry, long due) => _due.Enqueue((timer, entry), due);
}
