using ActorBlk.Hardware.Requests;

namespace ActorBlk.Hardware.Devices;

/// <summary>Base of every error a block device reports; names the device.</summary>
public abstract class BlockDeviceException : Exception
{
    /// <summary>Creates the exception.</summary>
    protected BlockDeviceException(string device, string message, Exception? inner = null)
        : base(message, inner)
    {
        Device = device;
    }

    /// <summary>The device the error concerns.</summary>
    public string Device { get; }
}

/// <summary>An I/O completed with an error status: the device failed it, it timed out, or the device is gone.</summary>
public sealed class BlockIoException : BlockDeviceException
{
    /// <summary>Creates the exception.</summary>
    public BlockIoException(string device, BlockOp op, long offset, long length, BlockStatus status)
        : base(device, $"{device}: {op.Name()} of {length} bytes at offset {offset} failed: {status.Describe()} ({status}, errno {status.ToErrno()}).")
    {
        Op = op;
        Offset = offset;
        Length = length;
        Status = status;
    }

    /// <summary>The operation.</summary>
    public BlockOp Op { get; }

    /// <summary>Byte offset of the I/O.</summary>
    public long Offset { get; }

    /// <summary>Length of the I/O in bytes.</summary>
    public long Length { get; }

    /// <summary>The status the I/O completed with.</summary>
    public BlockStatus Status { get; }
}

/// <summary>Why a request was refused before it was submitted.</summary>
public enum InvalidRequestReason
{
    /// <summary>The range does not lie within the device (or the offset is negative).</summary>
    OutOfRange,

    /// <summary>Offset or length is not a multiple of the logical block size (or direct-I/O alignment).</summary>
    Misaligned,

    /// <summary>A data, discard or write-zeroes request of zero bytes.</summary>
    ZeroLength,

    /// <summary>A write, discard or write-zeroes on a read-only device.</summary>
    ReadOnly,

    /// <summary>The device does not support the operation (discard, write-zeroes, polling).</summary>
    NotSupported,

    /// <summary>
    /// A flag that callers may not set (tag reservation, for example), or one the operation does not
    /// take: FUA and PREFLUSH apply to writes (and flushes) only, as Linux's <c>submit_bio_noacct</c>.
    /// </summary>
    InvalidFlags,

    /// <summary>The device is allocated but not registered: nothing dispatches its I/O yet.</summary>
    NotRegistered,
}

/// <summary>
/// A request was refused before submission because it is malformed for this device. Nothing was
/// submitted and nothing changed on the device.
/// </summary>
public sealed class InvalidBlockRequestException : BlockDeviceException
{
    /// <summary>Creates the exception.</summary>
    public InvalidBlockRequestException(string device, InvalidRequestReason reason, BlockOp op, long offset, long length, string detail)
        : base(device, $"{device}: invalid {op.Name()} of {length} bytes at offset {offset}: {detail}")
    {
        Reason = reason;
        Op = op;
        Offset = offset;
        Length = length;
    }

    /// <summary>Why it was refused.</summary>
    public InvalidRequestReason Reason { get; }

    /// <summary>The operation.</summary>
    public BlockOp Op { get; }

    /// <summary>The requested byte offset.</summary>
    public long Offset { get; }

    /// <summary>The requested length in bytes.</summary>
    public long Length { get; }
}

/// <summary>Device options that cannot describe a device; names the offending option.</summary>
public sealed class DeviceOptionsException : ArgumentException
{
    private readonly string _text;

    /// <summary>Creates the exception.</summary>
    public DeviceOptionsException(string device, string option, string message)
        : base(Compose(device, option, message), option)
    {
        _text = Compose(device, option, message);
        Device = device;
        Option = option;
    }

    /// <summary>
    /// Creates the exception for an option that names something the device could not use when it
    /// was built (a stacked device's member that cannot be opened or did not appear):
    /// <paramref name="innerException"/> is why, and a caller may treat it as a failure rather than
    /// as options that are wrong.
    /// </summary>
    public DeviceOptionsException(string device, string option, string message, Exception? innerException)
        : base(Compose(device, option, message), option, innerException)
    {
        _text = Compose(device, option, message);
        Device = device;
        Option = option;
    }

    /// <summary>The device the options were for.</summary>
    public string Device { get; }

    /// <summary>The option name as in hocon.conf (null_blk and sysfs names: "hw_queue_depth", "bs", ...).</summary>
    public string Option { get; }

    /// <summary>
    /// One line: <c>device 'NAME': option 'KEY': why</c>. The option is named once, at the start,
    /// without the <c>(Parameter '...')</c> that <see cref="ArgumentException"/> appends, and a
    /// control character in a name or a value is written <c>\xNN</c>.
    /// </summary>
    public override string Message => _text;

    // A message taken from another ArgumentException (a validation the option's value failed)
    // loses what that exception appended: its "Actual value was ..." line and "(Parameter '...')",
    // which named the parameter a second and a third time, on a second line.
    private static string Compose(string device, string option, string message)
    {
        foreach (var appended in (ReadOnlySpan<string>)["\nActual value was ", "\r\nActual value was ", " (Parameter '"])
        {
            var at = message.IndexOf(appended, StringComparison.Ordinal);
            if (at > 0)
            {
                message = message[..at];
            }
        }

        // One line whatever a name or a value held: a control character is written \xNN (ControlCharacters).
        return ControlCharacters.Escape($"device '{device}': option '{option}': {message.TrimEnd()}");
    }
}

/// <summary>Why a backing file or block device could not be opened.</summary>
public enum OpenFailure
{
    /// <summary>The path does not exist (ENOENT) and no size was given to create it.</summary>
    NotFound,

    /// <summary>The caller may not open it (EACCES, EPERM), or the file system is read-only (EROFS).</summary>
    PermissionDenied,

    /// <summary>The path is a directory or another kind of file that cannot back a device.</summary>
    NotABlockTarget,

    /// <summary>The file system does not support direct I/O (EINVAL from open with O_DIRECT, as on tmpfs).</summary>
    DirectIoNotSupported,

    /// <summary>In use: a block device mounted or claimed (EBUSY from an exclusive open), or a file another device or process holds locked.</summary>
    Busy,

    /// <summary>The file is smaller than the size asked for, or smaller than one block.</summary>
    TooSmall,

    /// <summary>The file's size is not a whole number of logical blocks.</summary>
    Misaligned,

    /// <summary>Any other error of open, statx, ioctl or fallocate.</summary>
    Other,
}

/// <summary>
/// The backing file or block device of a device could not be opened or used: names the device,
/// the path, the cause and the errno.
/// </summary>
public sealed class BlockDeviceOpenException : BlockDeviceException
{
    /// <summary>Creates the exception.</summary>
    /// <param name="device">The device name.</param>
    /// <param name="path">The backing path.</param>
    /// <param name="cause">The kind of failure.</param>
    /// <param name="errno">The errno (positive), or 0 when no system call failed.</param>
    /// <param name="detail">What was being done and what went wrong.</param>
    public BlockDeviceOpenException(string device, string path, OpenFailure cause, int errno, string detail)
        : base(device, $"{device}: cannot use '{path}': {detail?.TrimEnd('.')}" + (errno != 0 ? $" (errno {errno})." : "."))
    {
        Path = path;
        Cause = cause;
        Errno = errno;
    }

    /// <summary>The backing path.</summary>
    public string Path { get; }

    /// <summary>The kind of failure.</summary>
    public OpenFailure Cause { get; }

    /// <summary>The errno of the failed call (positive), or 0.</summary>
    public int Errno { get; }
}

/// <summary>
/// A device cannot be destroyed because a stacked device is built on it (the kernel's EBUSY for a
/// disk device-mapper holds). Nothing changed.
/// </summary>
public sealed class DeviceBusyException : BlockDeviceException
{
    /// <summary>Creates the exception.</summary>
    public DeviceBusyException(string device, string holder)
        : base(device, $"{device} is in use by {holder} (EBUSY); remove {holder} first.")
    {
        Holder = holder;
    }

    /// <summary>The stacked device that holds it.</summary>
    public string Holder { get; }
}
