using ActorBlk.Hardware.Requests;
using ActorBlk.Hardware.Topology;

namespace ActorBlk.Hardware.Queues;

/// <summary>
/// Per-CPU completion lists, each drained by one worker thread bound to its CPU: the user-space
/// stand-in for the kernel's per-CPU <c>blk_cpu_done</c> list and <c>BLOCK_SOFTIRQ</c>
/// (blk-mq-semantics §6 item 5).
/// </summary>
/// <remarks>
/// A completion redirected to CPU <c>s</c> is pushed onto <c>s</c>'s lock-free list; only when the
/// list was empty is the worker woken (one "IPI" per batch). The worker takes the whole list at
/// once, reverses it to arrival order and ends each request with the thread bound to <c>s</c>. The
/// list is pushed with a compare-and-swap and emptied with one exchange, so it needs no lock and is
/// free of ABA. Workers start on first use; all queues of a process share them, as CPUs are shared.
/// With a topology read from the system each worker is pinned to its CPU (<c>sched_setaffinity</c>),
/// so a redirected completion really runs there; with a simulated topology the CPU is a label.
/// </remarks>
public sealed class BlockSoftIrq : IDisposable
{
    private readonly CpuQueue?[] _cpus;
    private readonly object _startLock = new();
    private readonly bool _pin;
    private volatile bool _disposed;

    /// <summary>Creates the completion lists for <paramref name="cpuCount"/> possible CPUs; the workers are not pinned.</summary>
    public BlockSoftIrq(int cpuCount)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(cpuCount, 1);
        _cpus = new CpuQueue?[cpuCount];
    }

    /// <summary>
    /// Creates the completion lists for the possible CPUs of <paramref name="topology"/>; when it
    /// was read from the system, each worker is pinned to its CPU.
    /// </summary>
    public BlockSoftIrq(CpuTopology topology)
        : this((topology ?? throw new ArgumentNullException(nameof(topology))).PossibleCount) =>
        _pin = !topology.IsSimulated && CpuAffinity.IsSupported;

    /// <summary>True when each worker is pinned to its CPU.</summary>
    public bool PinsWorkers => _pin;

    /// <summary>Number of CPUs whose worker has started.</summary>
    public int ActiveWorkers => _cpus.Count(c => c is not null);

    /// <summary>Total completions processed by the workers.</summary>
    public long Processed => _cpus.Sum(c => c?.Processed ?? 0);

    /// <summary>Queues <paramref name="rq"/> for completion on <paramref name="cpu"/>.</summary>
    public void Raise(int cpu, Request rq)
    {
        ArgumentNullException.ThrowIfNull(rq);
        var q = _cpus[cpu] ?? Start(cpu);
        q.Push(rq);
    }

    /// <summary>Stops the workers after they drained what was queued.</summary>
    public void Dispose()
    {
        _disposed = true;
        foreach (var q in _cpus)
        {
            q?.Stop();
        }
    }

    private CpuQueue Start(int cpu)
    {
        lock (_startLock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            return _cpus[cpu] ??= new CpuQueue(cpu, _pin);
        }
    }

    private sealed class CpuQueue
    {
        private readonly int _cpu;
        private readonly bool _pin;
        private readonly Thread _thread;
        private readonly ManualResetEventSlim _wake = new(false, spinCount: 0);
        private Request? _head;
        private volatile bool _stopping;
        private long _processed;

        public CpuQueue(int cpu, bool pin)
        {
            _cpu = cpu;
            _pin = pin;
            _thread = new Thread(Run) { IsBackground = true, Name = $"actorblk-softirq/{cpu}" };
            _thread.Start();
        }

        public long Processed => Interlocked.Read(ref _processed);

        public void Push(Request rq)
        {
            Request? old;
            do
            {
                old = Volatile.Read(ref _head);
                rq.NextInList = old;
            }
            while (Interlocked.CompareExchange(ref _head, rq, old) != old);

            // Only the push onto an empty list needs to wake the worker (one "IPI" per batch).
            if (old is null)
            {
                _wake.Set();
            }
        }

        public void Stop()
        {
            _stopping = true;
            _wake.Set();
            if (Thread.CurrentThread != _thread)
            {
                _thread.Join();
            }
        }

        private void Run()
        {
            if (_pin)
            {
                CpuAffinity.TryPinCurrentThread(CpuSet.Of(_cpu), _thread.Name!);
            }

            using var bind = CurrentCpu.Bind(_cpu);
            while (true)
            {
                _wake.Reset();
                var list = Interlocked.Exchange(ref _head, null);
                if (list is null)
                {
                    if (_stopping)
                    {
                        return;
                    }

                    _wake.Wait();
                    continue;
                }

                // The list is newest-first; reverse it to complete in arrival order.
                Request? ordered = null;
                while (list is not null)
                {
                    var next = list.NextInList;
                    list.NextInList = ordered;
                    ordered = list;
                    list = next;
                }

                while (ordered is not null)
                {
                    var next = ordered.NextInList;
                    ordered.NextInList = null;
                    ordered.Queue!.EndRequest(ordered);
                    Interlocked.Increment(ref _processed);
                    ordered = next;
                }
            }
        }
    }
}
