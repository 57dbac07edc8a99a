namespace ActorBlk.Hardware.Sysfs;

/// <summary>The errno a sysfs operation fails with, as the kernel returns it to <c>read(2)</c> and <c>write(2)</c>.</summary>
public enum AttributeErrno
{
    /// <summary>No such attribute (or the device is going away).</summary>
    ENOENT,

    /// <summary>The value is refused: not a number, out of range, or against the attribute's rule.</summary>
    EINVAL,

    /// <summary>The attribute is read-only (a write), or write-only (a read: md's <c>md/new_dev</c>).</summary>
    EACCES,

    /// <summary>The change is refused in the current state (taking the last online CPU offline).</summary>
    EBUSY,

    /// <summary>No such device: the name written names no device that can be opened (md's <c>md/new_dev</c>, as the kernel's open of a device number that has none).</summary>
    ENXIO,

    /// <summary>A number too large (or too small) for the attribute's type, as <c>kstrtoint</c> and <c>kstrtouint</c> return it (<c>io_poll_delay</c>, md's <c>sync_speed_min</c>).</summary>
    ERANGE,

    /// <summary>The path names a directory of the tree, not an attribute (a read or a write, as <c>open(2)</c> of a sysfs directory).</summary>
    EISDIR,

    /// <summary>The path goes through an attribute as if it were a directory (<c>block/nullb0/size/</c>, <c>block/nullb0/size/x</c>), as a path walk that meets a file.</summary>
    ENOTDIR,

    /// <summary>No room: a device too small for what it must hold (md's <c>md/new_dev</c> naming a device smaller than the mirror's legs, as <c>bind_rdev_to_array</c>).</summary>
    ENOSPC,
}

/// <summary>A refused attribute read or write; nothing changed.</summary>
public sealed class AttributeException : Exception
{
    /// <summary>Creates the exception.</summary>
    public AttributeException(string path, AttributeErrno errno, string reason)
        : base($"{path}: {reason} ({errno})")
    {
        Path = path;
        Errno = errno;
        Reason = reason;
    }

    /// <summary>Creates the exception (for serializers and tools).</summary>
    public AttributeException()
        : this(string.Empty, AttributeErrno.ENOENT, "no such attribute")
    {
    }

    /// <summary>Creates the exception (for serializers and tools).</summary>
    public AttributeException(string message)
        : this(string.Empty, AttributeErrno.EINVAL, message)
    {
    }

    /// <summary>Creates the exception (for serializers and tools).</summary>
    public AttributeException(string message, Exception innerException)
        : base(message, innerException)
    {
        Path = string.Empty;
        Reason = message;
    }

    /// <summary>The attribute path.</summary>
    public string Path { get; }

    /// <summary>The errno.</summary>
    public AttributeErrno Errno { get; }

    /// <summary>Why, in words.</summary>
    public string Reason { get; }
}
