using System.Runtime.CompilerServices;
using ActorBlk.Hardware.Requests;

namespace ActorBlk.Hardware.Queues;

/// <summary>
/// The block layer's state of one thread, in one object: what the kernel keeps in the task
/// (<c>current-&gt;plug</c>'s cached time, the CPU a worker is bound to) and the per-thread caches
/// of the hot path (the end_io hold, the dispatch loop running a round here, the disk-statistics
/// batch, the bio cache).
/// </summary>
/// <remarks>
/// A <see cref="ThreadStaticAttribute"/> field costs a call into the C library's TLS lookup
/// (<c>__tls_get_addr</c>) on Linux, and the runtime's own registers are clobbered around it. One
/// I/O used to make about fifteen such lookups, one per field and site; with every field here a
/// hot function makes one and hands the object to what it calls.
/// </remarks>
internal sealed class BlockThread
{
    [ThreadStatic]
    private static BlockThread? t_current;

    /// <summary>
    /// <see cref="BlockTime"/>'s batch time: 0 outside a batch, -1 inside one before the time was
    /// read, otherwise the batch's time.
    /// </summary>
    internal long Time;

    /// <summary><see cref="Topology.CurrentCpu"/>'s binding: the CPU id + 1, 0 when not bound.</summary>
    internal int BoundCpu;

    /// <summary>True on a dispatch loop's thread (the owner token of a software context's counters).</summary>
    internal bool IsLoopThread;

    /// <summary>The queue whose usage reference an end_io call-back on this thread holds (<see cref="RequestQueue"/>'s hold).</summary>
    internal RequestQueue? HoldUsage;

    /// <summary>The request whose tag an end_io call-back on this thread holds.</summary>
    internal Request? HoldTag;

    /// <summary>
    /// True while a timeout scan runs a driver's handler on this thread: a request the handler
    /// completes has its completion proper queued on the thread pool (<see cref="RequestQueue"/>'s
    /// EndRequest), so one caller's end_io cannot hold up the handlers of the other expired requests.
    /// </summary>
    internal bool EndApart;

    /// <summary>The dispatch loop running a round on this thread, if any.</summary>
    internal DispatchLoop? Loop;

    /// <summary>The disk whose statistics this thread batches now, if any.</summary>
    internal DiskStats? StatsOwner;

    /// <summary>The thread's statistics batch (one per thread that ever ran a round, reused by every disk).</summary>
    internal DiskStats.BatchCounters? StatsBatch;

    /// <summary>The pool of <see cref="PoolCached"/>.</summary>
    internal BioPool? PoolOwner;

    /// <summary>A one-entry bio cache: the bio returned last on this thread.</summary>
    internal Bio? PoolCached;

    private BlockThread()
    {
    }

    /// <summary>The calling thread's state, created on its first use.</summary>
    internal static BlockThread Current
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get => t_current ?? Create();
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static BlockThread Create() => t_current = new BlockThread();
}
