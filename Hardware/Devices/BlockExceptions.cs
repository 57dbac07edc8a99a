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

    /// <summary>A flag that callers may not set (tag reservation, for example).</summary>
    InvalidFlags,
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
    /// <summary>Creates the exception.</summary>
    public DeviceOptionsException(string device, string option, string message)
        : base($"device '{device}': option '{option}': {message}", option)
    {
        Device = device;
        Option = option;
    }

    /// <summary>The device the options were for.</summary>
    public string Device { get; }

    /// <summary>The option name as in hocon.conf (null_blk and sysfs names: "hw_queue_depth", "bs", ...).</summary>
    public string Option { get; }
}
