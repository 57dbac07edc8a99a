namespace ActorBlk.Hardware.Requests;

/// <summary>
/// The outcome of a block request (<c>blk_status_t</c>), with the kernel's numeric values
/// (blk-mq-semantics §3.8 item 37).
/// </summary>
/// <remarks>
/// Values 0-13 are stable across kernel versions. Values from 14 follow the current tree; they
/// were renumbered when <c>BLK_STS_ZONE_RESOURCE</c> was removed.
/// </remarks>
public enum BlockStatus : byte
{
    /// <summary>Success.</summary>
    Ok = 0,

    /// <summary>Operation not supported (EOPNOTSUPP).</summary>
    NotSupported = 1,

    /// <summary>The request timed out (ETIMEDOUT).</summary>
    Timeout = 2,

    /// <summary>No space left (ENOSPC).</summary>
    NoSpace = 3,

    /// <summary>Transport error, e.g. a lost path (ENOLINK).</summary>
    Transport = 4,

    /// <summary>Critical target error (EREMOTEIO).</summary>
    Target = 5,

    /// <summary>Reservation conflict (EBADE); formerly NEXUS.</summary>
    ReservationConflict = 6,

    /// <summary>Medium error (ENODATA).</summary>
    Medium = 7,

    /// <summary>Protection-information error (EILSEQ).</summary>
    Protection = 8,

    /// <summary>
    /// Returned by a driver's QueueRq for a transient shortage of a system-wide resource: the
    /// request is requeued at the head and the queue rerun after 3 ms (ENOMEM).
    /// </summary>
    Resource = 9,

    /// <summary>I/O error; the catch-all (EIO).</summary>
    IoError = 10,

    /// <summary>Device-mapper requeue (internal).</summary>
    DmRequeue = 11,

    /// <summary>The operation would block: a no-wait submission found no tag or a frozen queue (EAGAIN).</summary>
    Again = 12,

    /// <summary>
    /// Returned by a driver's QueueRq for a device resource shortage that in-flight I/O will free:
    /// requeued at the head, rerun on the next completion of that hardware queue (EBUSY).
    /// </summary>
    DeviceResource = 13,

    /// <summary>Too many open zones (ETOOMANYREFS).</summary>
    ZoneOpenResource = 14,

    /// <summary>Too many active zones (EOVERFLOW).</summary>
    ZoneActiveResource = 15,

    /// <summary>The device is offline or going away (ENODEV).</summary>
    Offline = 16,

    /// <summary>A command duration limit was exceeded (ETIME).</summary>
    DurationLimit = 17,

    /// <summary>Invalid request (EINVAL).</summary>
    Invalid = 18,
}

/// <summary>Conversions between <see cref="BlockStatus"/> and errno values.</summary>
public static class BlockStatusExtensions
{
    /// <summary>True for <see cref="BlockStatus.Ok"/>.</summary>
    public static bool IsOk(this BlockStatus status) => status == BlockStatus.Ok;

    /// <summary>
    /// The negative errno the kernel reports for a status (<c>blk_status_to_errno</c>); unknown
    /// values map to -EIO.
    /// </summary>
    public static int ToErrno(this BlockStatus status) => status switch
    {
        BlockStatus.Ok => 0,
        BlockStatus.NotSupported => -95,        // EOPNOTSUPP
        BlockStatus.Timeout => -110,            // ETIMEDOUT
        BlockStatus.NoSpace => -28,             // ENOSPC
        BlockStatus.Transport => -67,           // ENOLINK
        BlockStatus.Target => -121,             // EREMOTEIO
        BlockStatus.ReservationConflict => -52, // EBADE
        BlockStatus.Medium => -61,              // ENODATA
        BlockStatus.Protection => -84,          // EILSEQ
        BlockStatus.Resource => -12,            // ENOMEM
        BlockStatus.DeviceResource => -16,      // EBUSY
        BlockStatus.Again => -11,               // EAGAIN
        BlockStatus.Offline => -19,             // ENODEV
        BlockStatus.ZoneOpenResource => -109,   // ETOOMANYREFS
        BlockStatus.ZoneActiveResource => -75,  // EOVERFLOW
        BlockStatus.DurationLimit => -62,       // ETIME
        BlockStatus.Invalid => -22,             // EINVAL
        _ => -5,                                // EIO
    };

    /// <summary>The status for a negative (or positive) errno (<c>errno_to_blk_status</c>); unknown -> IoError.</summary>
    public static BlockStatus FromErrno(int errno) => Math.Abs(errno) switch
    {
        0 => BlockStatus.Ok,
        95 => BlockStatus.NotSupported,
        110 => BlockStatus.Timeout,
        28 => BlockStatus.NoSpace,
        67 => BlockStatus.Transport,
        121 => BlockStatus.Target,
        52 => BlockStatus.ReservationConflict,
        61 => BlockStatus.Medium,
        84 => BlockStatus.Protection,
        12 => BlockStatus.Resource,
        16 => BlockStatus.DeviceResource,
        11 => BlockStatus.Again,
        19 => BlockStatus.Offline,
        109 => BlockStatus.ZoneOpenResource,
        75 => BlockStatus.ZoneActiveResource,
        62 => BlockStatus.DurationLimit,
        22 => BlockStatus.Invalid,
        _ => BlockStatus.IoError,
    };

    /// <summary>A short description, as the kernel prints in I/O error messages.</summary>
    public static string Describe(this BlockStatus status) => status switch
    {
        BlockStatus.Ok => "ok",
        BlockStatus.NotSupported => "operation not supported",
        BlockStatus.Timeout => "timeout",
        BlockStatus.NoSpace => "critical space allocation",
        BlockStatus.Transport => "recoverable transport",
        BlockStatus.Target => "critical target",
        BlockStatus.ReservationConflict => "reservation conflict",
        BlockStatus.Medium => "critical medium",
        BlockStatus.Protection => "protection",
        BlockStatus.Resource => "kernel resource",
        BlockStatus.DeviceResource => "device resource",
        BlockStatus.Again => "nonblocking retry",
        BlockStatus.Offline => "device offline",
        BlockStatus.ZoneOpenResource => "open zones exceeded",
        BlockStatus.ZoneActiveResource => "active zones exceeded",
        BlockStatus.DurationLimit => "duration limit exceeded",
        BlockStatus.Invalid => "invalid",
        BlockStatus.DmRequeue => "dm internal retry",
        _ => "I/O",
    };
}
