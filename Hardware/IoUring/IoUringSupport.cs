using ActorBlk.Hardware.Interop;

namespace ActorBlk.Hardware.IoUring;

/// <summary>
/// What this kernel's io_uring can do for ActorBlk, probed once per process with a small ring:
/// whether a ring can be created at all (ENOSYS: not built in; EPERM: disabled by the
/// <c>kernel.io_uring_disabled</c> sysctl or forbidden by seccomp), whether it has the features
/// the engine relies on, and which opcodes it supports.
/// </summary>
internal sealed class IoUringSupport
{
    /// <summary>Opcodes the file engine issues.</summary>
    public static readonly IReadOnlyList<IoUringOp> RequiredOps =
        [IoUringOp.Nop, IoUringOp.Read, IoUringOp.Write, IoUringOp.ReadV, IoUringOp.WriteV, IoUringOp.Fsync, IoUringOp.Fallocate];

    private static readonly Lazy<IoUringSupport> Probed = new(Probe);

    private IoUringSupport(bool available, int errno, string summary, IoUringSetupFlags flags, IoUringFeatures features)
    {
        Available = available;
        Errno = errno;
        Summary = summary;
        SetupFlags = flags;
        Features = features;
    }

    /// <summary>The probe of this process.</summary>
    public static IoUringSupport Current => Probed.Value;

    /// <summary>True when the io_uring engine can run here.</summary>
    public bool Available { get; }

    /// <summary>The errno that made it unavailable (positive), or 0.</summary>
    public int Errno { get; }

    /// <summary>What was found, in words: the reason it is unavailable, or the features it has.</summary>
    public string Summary { get; }

    /// <summary>Setup flags the kernel accepted for a single-issuer ring.</summary>
    public IoUringSetupFlags SetupFlags { get; }

    /// <summary>Features the kernel reported.</summary>
    public IoUringFeatures Features { get; }

    /// <summary>An "unavailable" result, for a failed setup (also used by tests of the engine choice).</summary>
    public static IoUringSupport Unavailable(int errno, string summary) => new(false, Math.Abs(errno), summary, 0, 0);

    /// <summary>Explains a failed <c>io_uring_setup</c>.</summary>
    public static string ExplainSetupFailure(int errno)
    {
        errno = Math.Abs(errno);
        return errno switch
        {
            LibC.ENOSYS => "io_uring_setup: the kernel has no io_uring (ENOSYS)",
            LibC.EPERM => $"io_uring_setup: not permitted (EPERM): io_uring is disabled by the kernel.io_uring_disabled sysctl ({DisabledSysctl()}) or by a seccomp filter",
            LibC.ENOMEM => "io_uring_setup: out of memory or locked-memory limit (ENOMEM)",
            _ => $"io_uring_setup: {LibC.Describe(errno)} (errno {errno})",
        };
    }

    private static IoUringSupport Probe()
    {
        var result = IoRing.TryCreate(8, IoUringSetupFlags.SingleIssuer | IoUringSetupFlags.DeferTaskRun | IoUringSetupFlags.CoopTaskRun, out var ring);
        if (result < 0 || ring is null)
        {
            return Unavailable(result, ExplainSetupFailure(result));
        }

        using (ring)
        {
            var missingFeatures = new List<string>();
            if ((ring.Features & IoUringFeatures.ExtArg) == 0)
            {
                missingFeatures.Add("EXT_ARG (timed waits, Linux 5.11)");
            }

            if ((ring.Features & IoUringFeatures.NoDrop) == 0)
            {
                missingFeatures.Add("NODROP (Linux 5.5)");
            }

            if (missingFeatures.Count > 0)
            {
                return Unavailable(LibC.ENOSYS, $"io_uring lacks {string.Join(" and ", missingFeatures)}");
            }

            var ops = ring.ProbeOps();
            var missingOps = RequiredOps.Where(op => !ops.Contains(op)).ToList();
            if (missingOps.Count > 0)
            {
                return Unavailable(LibC.ENOSYS, $"io_uring lacks the opcodes {string.Join(", ", missingOps)}");
            }

            return new IoUringSupport(true, 0, $"io_uring with setup flags {ring.Flags}", ring.Flags, ring.Features);
        }
    }

    private static string DisabledSysctl()
    {
        try
        {
            return "now " + System.IO.File.ReadAllText("/proc/sys/kernel/io_uring_disabled").Trim();
        }
        catch (IOException)
        {
            return "unreadable";
        }
        catch (UnauthorizedAccessException)
        {
            return "unreadable";
        }
    }
}
