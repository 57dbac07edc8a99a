using System.Runtime.CompilerServices;
using ActorBlk.Hardware.Queues;

namespace ActorBlk.Hardware.Topology;

/// <summary>
/// Which CPU the calling thread counts as running on. Threads the block layer binds (completion
/// workers; dispatch loops with a simulated topology or a one-CPU mask; actors for one message)
/// count as that CPU. Other threads use the processor they are on: with a topology read from the
/// system that is the real CPU (<c>sched_getcpu</c>); with a simulated one it is the processor id
/// folded into the simulated CPUs, a label.
/// </summary>
public static class CurrentCpu
{
    /// <summary>The CPU this thread is bound to, or -1.</summary>
    public static int Bound => BlockThread.Current.BoundCpu - 1;

    /// <summary>
    /// Binds the calling thread to <paramref name="cpu"/> until the returned scope is disposed;
    /// a dispatch loop does this for its whole life, an actor for the duration of one message.
    /// </summary>
    public static Scope Bind(int cpu)
    {
        var thread = BlockThread.Current;
        var previous = thread.BoundCpu;
        thread.BoundCpu = cpu + 1;
        return new Scope(previous);
    }

    /// <summary>
    /// The current CPU within <paramref name="topology"/>: the bound CPU if any; otherwise the
    /// processor id, reduced into the possible CPUs and moved to the next online one when the
    /// (simulated) topology has it offline.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static int Resolve(CpuTopology topology) => Resolve(topology, BlockThread.Current);

    /// <summary><see cref="Resolve(CpuTopology)"/> for a caller that holds the calling thread's state.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static int Resolve(CpuTopology topology, BlockThread thread)
    {
        var bound = thread.BoundCpu;
        if (bound != 0)
        {
            return bound - 1;
        }

        // .NET's processor id is a per-thread cache refreshed now and then; the real topology asks
        // the kernel (a vDSO call) so that rq_affinity compares CPUs the threads are really on.
        var id = topology.IsSimulated ? Thread.GetCurrentProcessorId() : RealProcessor();
        var count = topology.PossibleCount;
        if ((uint)id >= (uint)count)
        {
            id %= count;
        }

        return topology.Online.Contains(id) ? id : NextOnline(topology, id);
    }

    private static int RealProcessor()
    {
        var id = CpuAffinity.CurrentProcessor();
        return id >= 0 ? id : Thread.GetCurrentProcessorId();
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static int NextOnline(CpuTopology topology, int id)
    {
        var next = topology.Online.Next(id);
        return next >= 0 ? next : topology.Online.First;
    }

    /// <summary>Restores the previous binding when disposed.</summary>
    public readonly struct Scope : IDisposable
    {
        private readonly int _previous;

        internal Scope(int previous) => _previous = previous;

        /// <inheritdoc />
        public void Dispose() => BlockThread.Current.BoundCpu = _previous;
    }
}
