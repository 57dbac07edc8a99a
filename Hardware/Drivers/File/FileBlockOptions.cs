namespace ActorBlk.Hardware.Drivers.File;

/// <summary>How the file device moves data.</summary>
public enum IoEngine
{
    /// <summary>
    /// io_uring through raw system calls: one ring per hardware queue, submissions batched per
    /// dispatch round, completions reaped in batches. Falls back to <see cref="Psync"/> (and says
    /// why) where the kernel has no usable io_uring.
    /// </summary>
    IoUring,

    /// <summary>Synchronous pread/pwrite on one dedicated thread per hardware queue.</summary>
    Psync,
}

/// <summary>Settings of the file device (<c>driver = file</c>).</summary>
public sealed record FileBlockOptions
{
    /// <summary>The backing regular file or block device.</summary>
    public required string Path { get; init; }

    /// <summary>
    /// Capacity in bytes. Required to create a file that does not exist; for an existing file or
    /// device, a size at most its length serves that prefix; null serves all of it.
    /// </summary>
    public long? SizeBytes { get; init; }

    /// <summary>Logical block size asked for; raised to the direct-I/O alignment of the backing store.</summary>
    public int BlockSize { get; init; } = 512;

    /// <summary>O_DIRECT (the default): bypass the page cache.</summary>
    public bool Direct { get; init; } = true;

    /// <summary>The I/O engine.</summary>
    public IoEngine Engine { get; init; } = IoEngine.IoUring;

    /// <summary>Open read-only.</summary>
    public bool ReadOnly { get; init; }

    /// <summary>Support discard and write-zeroes.</summary>
    public bool Discard { get; init; } = true;

    /// <summary>
    /// io_uring: hand prepared entries to the kernel as soon as this many are waiting (fio's
    /// <c>iodepth_batch_submit</c>; 1 submits each request alone, as fio does by default); 0
    /// submits once per dispatch round. Null (the default, <c>submit_batch = auto</c>) adapts:
    /// a batch is half of the requests the kernel already holds, 1 to 16. See the README for why
    /// small batches win on virtualised disks.
    /// </summary>
    public int? SubmitBatch { get; init; }

    /// <summary>
    /// Bytes of registered memory (io_uring fixed buffers, fio's <c>fixedbufs</c>): buffers from
    /// <see cref="Devices.IBlockDevice.AllocateBuffer"/> come from it, and the kernel skips pinning
    /// their pages on every I/O. 0 (the default) registers nothing; at most 1 GiB.
    /// </summary>
    public long FixedBuffers { get; init; }

    /// <summary>Largest request in sectors (0 = the block layer default).</summary>
    public int MaxSectors { get; init; }
}
