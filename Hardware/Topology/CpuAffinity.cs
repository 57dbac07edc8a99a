using ActorBlk.Hardware.Interop;

namespace ActorBlk.Hardware.Topology;

/// <summary>
/// Where threads actually run: pins the calling thread to a CPU set (<c>sched_setaffinity</c>),
/// reads a thread's set back (<c>sched_getaffinity</c>) and names the CPU the thread is on
/// (<c>sched_getcpu</c>). Only meaningful with a topology read from the system; with a simulated
/// one CPU ids are labels and nothing is pinned.
/// </summary>
/// <remarks>
/// A pin that fails (a CPU outside the process's cpuset, a kernel without the call) is not an
/// error: the thread keeps running where the scheduler puts it, <see cref="PinFailed"/> is raised
/// so the control plane can log it, and <see cref="Failures"/> counts it.
/// </remarks>
public static class CpuAffinity
{
    // 1024 CPUs, glibc's CPU_SETSIZE; the kernel accepts any multiple of the word size at least
    // as large as its own nr_cpu_ids.
    private const int MaskWords = 16;

    private static long s_failures;

    /// <summary>Raised once per failed pin with a one-line reason (thread name, CPUs, errno text).</summary>
    public static event Action<string>? PinFailed;

    /// <summary>True where threads can be pinned (Linux).</summary>
    public static bool IsSupported { get; } = OperatingSystem.IsLinux();

    /// <summary>Pins that failed in this process.</summary>
    public static long Failures => Interlocked.Read(ref s_failures);

    /// <summary>
    /// Pins the calling thread to <paramref name="cpus"/>. Returns false, counts the failure and
    /// raises <see cref="PinFailed"/> when the kernel refuses or the platform has no affinity.
    /// </summary>
    /// <param name="cpus">The CPUs the thread may run on; ids below 1024.</param>
    /// <param name="who">The thread, for the failure message.</param>
    public static unsafe bool TryPinCurrentThread(CpuSet cpus, string who)
    {
        ArgumentNullException.ThrowIfNull(cpus);
        string reason;
        if (!IsSupported)
        {
            reason = "thread affinity is Linux only";
        }
        else if (cpus.IsEmpty || cpus.Last >= MaskWords * 64)
        {
            reason = $"CPU set {cpus} cannot be pinned (empty, or a CPU id of 1024 or more)";
        }
        else
        {
            var mask = stackalloc ulong[MaskWords];
            new Span<ulong>(mask, MaskWords).Clear();
            foreach (var cpu in cpus)
            {
                mask[cpu >> 6] |= 1UL << (cpu & 63);
            }

            if (LibC.SchedSetAffinity(0, MaskWords * sizeof(ulong), mask) == 0)
            {
                return true;
            }

            reason = LibC.Describe(LibC.LastErrno);
        }

        Interlocked.Increment(ref s_failures);
        PinFailed?.Invoke($"{who}: could not pin to CPUs {cpus.ToCpuListString()}: {reason}; it runs where the scheduler puts it.");
        return false;
    }

    /// <summary>The CPUs the calling thread may run on, or null where that cannot be read.</summary>
    public static unsafe CpuSet? OfCurrentThread()
    {
        if (!IsSupported)
        {
            return null;
        }

        var mask = stackalloc ulong[MaskWords];
        new Span<ulong>(mask, MaskWords).Clear();
        if (LibC.SchedGetAffinity(0, MaskWords * sizeof(ulong), mask) != 0)
        {
            return null;
        }

        var cpus = new List<int>();
        for (var w = 0; w < MaskWords; w++)
        {
            for (var bits = mask[w]; bits != 0; bits &= bits - 1)
            {
                cpus.Add((w * 64) + System.Numerics.BitOperations.TrailingZeroCount(bits));
            }
        }

        return CpuSet.Of(cpus);
    }

    /// <summary>The CPU the calling thread runs on now (<c>sched_getcpu</c>), or -1 where unknown.</summary>
    public static int CurrentProcessor() => IsSupported ? LibC.SchedGetCpu() : -1;
}
