using System.Runtime.InteropServices;

namespace ActorBlk.Host.Bench;

/// <summary>
/// The process's context switches and page faults (<c>getrusage(RUSAGE_SELF)</c>), for fio's
/// <c>ctx</c>, <c>majf</c> and <c>minf</c>. fio reads its job thread's (<c>RUSAGE_THREAD</c>); a
/// bench job is not one thread (its I/O completes on the device's dispatch loop), so these count
/// every thread of the process.
/// </summary>
internal static partial class ResourceUsage
{
    private const int RusageSelf = 0;

    /// <summary>Counts at one moment.</summary>
    /// <param name="ContextSwitches">Voluntary and involuntary context switches.</param>
    /// <param name="MajorFaults">Page faults that needed I/O.</param>
    /// <param name="MinorFaults">Page faults that did not.</param>
    internal readonly record struct Snapshot(long ContextSwitches, long MajorFaults, long MinorFaults)
    {
        public static Snapshot operator -(Snapshot a, Snapshot b) =>
            new(a.ContextSwitches - b.ContextSwitches, a.MajorFaults - b.MajorFaults, a.MinorFaults - b.MinorFaults);
    }

    /// <summary>The counts now; zeros where the call is not available.</summary>
    public static Snapshot Now() =>
        OperatingSystem.IsLinux() && GetRUsage(RusageSelf, out var u) == 0
            ? new Snapshot(u.NvCsw + u.NivCsw, u.MajFlt, u.MinFlt)
            : default;

    // struct rusage on 64-bit Linux: two timevals, then fourteen longs.
    [StructLayout(LayoutKind.Sequential)]
    private struct RUsage
    {
        public long UtimeSec;
        public long UtimeUsec;
        public long StimeSec;
        public long StimeUsec;
        public long MaxRss;
        public long IxRss;
        public long IdRss;
        public long IsRss;
        public long MinFlt;
        public long MajFlt;
        public long NSwap;
        public long InBlock;
        public long OuBlock;
        public long MsgSnd;
        public long MsgRcv;
        public long NSignals;
        public long NvCsw;
        public long NivCsw;
    }

    [LibraryImport("libc", EntryPoint = "getrusage")]
    private static partial int GetRUsage(int who, out RUsage usage);
}
