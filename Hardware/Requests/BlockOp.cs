namespace ActorBlk.Hardware.Requests;

/// <summary>A block operation (<c>enum req_op</c>), with the kernel's values.</summary>
public enum BlockOp : byte
{
    /// <summary>Read sectors into memory.</summary>
    Read = 0,

    /// <summary>Write sectors from memory.</summary>
    Write = 1,

    /// <summary>Make every write that completed before it durable (a cache flush).</summary>
    Flush = 2,

    /// <summary>Tell the device a range no longer holds data (trim/unmap); reads return zeroes after it here.</summary>
    Discard = 3,

    /// <summary>Write zeroes over a range without transferring a buffer.</summary>
    WriteZeroes = 9,
}

/// <summary>Request and bio flags (a subset of <c>REQ_*</c> and of the allocation flags).</summary>
[Flags]
public enum RequestFlags : ushort
{
    /// <summary>No flag.</summary>
    None = 0,

    /// <summary>
    /// Forced unit access: the write is durable when it completes (<c>REQ_FUA</c>). Writes (and
    /// flushes) only: a read, discard or write-zeroes with it is refused before submission.
    /// </summary>
    Fua = 1 << 0,

    /// <summary>
    /// Flush the cache before this request (<c>REQ_PREFLUSH</c>). Writes (and flushes) only: a
    /// read, discard or write-zeroes with it is refused before submission.
    /// </summary>
    PreFlush = 1 << 1,

    /// <summary>Synchronous I/O: someone waits for it (<c>REQ_SYNC</c>); reads are always synchronous.</summary>
    Sync = 1 << 2,

    /// <summary>Do not wait for a tag or a frozen queue: fail with <see cref="BlockStatus.Again"/> instead (<c>REQ_NOWAIT</c>).</summary>
    NoWait = 1 << 3,

    /// <summary>Completed by polling rather than interrupt (<c>REQ_POLLED</c>).</summary>
    Polled = 1 << 4,

    /// <summary>Never merge this request (<c>REQ_NOMERGE</c>); also set when a merge failed on a limit.</summary>
    NoMerge = 1 << 5,

    /// <summary>Fail fast on device errors instead of retrying (<c>REQ_FAILFAST_DEV</c>).</summary>
    FailFast = 1 << 6,

    /// <summary>Allocate from the reserved tags (<c>BLK_MQ_REQ_RESERVED</c>).</summary>
    Reserved = 1 << 7,

    /// <summary>
    /// Write-zeroes only: the range stays provisioned, no block is freed (<c>REQ_NOUNMAP</c>, NBD's
    /// <c>NBD_CMD_FLAG_NO_HOLE</c>). Without it a driver may free what it zeroes. Other operations ignore it.
    /// </summary>
    NoUnmap = 1 << 8,

    /// <summary>
    /// Write-zeroes only: fail with <see cref="BlockStatus.NotSupported"/> at once rather than zero
    /// slowly (<c>BLKDEV_ZERO_NOFALLBACK</c>, NBD's <c>NBD_CMD_FLAG_FAST_ZERO</c>). The local
    /// drivers' write-zeroes is always fast; the NBD client forwards it as FAST_ZERO. Other
    /// operations ignore it.
    /// </summary>
    NoFallback = 1 << 9,
}

/// <summary>Helpers over <see cref="BlockOp"/>.</summary>
public static class BlockOpExtensions
{
    /// <summary>True for operations that write to the medium.</summary>
    public static bool IsWrite(this BlockOp op) => op is BlockOp.Write or BlockOp.Discard or BlockOp.WriteZeroes;

    /// <summary>True for operations that move data through a caller's buffer.</summary>
    public static bool HasData(this BlockOp op) => op is BlockOp.Read or BlockOp.Write;

    /// <summary>The lower-case name fio and the kernel use ("read", "write", "flush", "discard", "write_zeroes").</summary>
    public static string Name(this BlockOp op) => op switch
    {
        BlockOp.Read => "read",
        BlockOp.Write => "write",
        BlockOp.Flush => "flush",
        BlockOp.Discard => "discard",
        BlockOp.WriteZeroes => "write_zeroes",
        _ => op.ToString().ToLowerInvariant(),
    };
}
