using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;

namespace ActorBlk.Hardware.Devices;

/// <summary>A polled I/O in flight: its cookie and its completion.</summary>
public readonly struct PolledIo
{
    internal PolledIo(Bio bio, ValueTask<BlockStatus> completion)
    {
        Bio = bio;
        Version = bio.Version;
        Completion = completion;
    }

    /// <summary>
    /// The poll cookie, <c>(hctx &lt;&lt; 16) | tag</c>, known once the request is built: at once in
    /// ring mode; in mailbox mode the software-context actor builds it, so it may still be
    /// <see cref="PollCookie.None"/> here (poll with <see cref="IBlockDevice.Poll(in PolledIo)"/>).
    /// </summary>
    public uint Cookie => Bio.Version == Version ? Bio.Cookie : PollCookie.None;

    /// <summary>Completes with the I/O's status.</summary>
    public ValueTask<BlockStatus> Completion { get; }

    internal Bio Bio { get; }

    internal short Version { get; }
}

/// <summary>
/// A block device as an application sees it: asynchronous reads, writes, flushes, discards and
/// write-zeroes at byte offsets, polled I/O and plugging.
/// </summary>
/// <remarks>
/// <para>
/// Offsets and lengths must be multiples of <see cref="LogicalBlockSize"/> and lie within
/// <see cref="Capacity"/>. A malformed request fails with <see cref="InvalidBlockRequestException"/>
/// before anything is submitted; an I/O the device fails throws <see cref="BlockIoException"/>
/// carrying the <see cref="BlockStatus"/>. <see cref="ExecuteAsync"/> returns the status instead
/// of throwing.
/// </para>
/// <para>
/// Unless the device was created with <c>completion = threadpool</c>, code after <c>await</c> runs
/// on the completion context (a dispatch loop or completion worker), like a kernel completion
/// call-back: it must not block. Every <c>cpu</c> parameter names the submitting CPU explicitly
/// (for tests and pinned workers); <see cref="AnyCpu"/> uses the CPU the caller runs on, and so
/// does any value that is not a possible CPU of the device's topology (below 0, or at least the
/// number of possible CPUs). An offline CPU is valid: its software context still takes the I/O.
/// </para>
/// </remarks>
public interface IBlockDevice : IAsyncDisposable
{
    /// <summary>Use the CPU the caller runs on.</summary>
    const int AnyCpu = -1;

    /// <summary>The device name.</summary>
    string Name { get; }

    /// <summary>Capacity in bytes.</summary>
    long Capacity { get; }

    /// <summary>Offsets and lengths are multiples of this.</summary>
    int LogicalBlockSize { get; }

    /// <summary>
    /// Buffers aligned to this many bytes reach the device without a copy (O_DIRECT's memory
    /// alignment for a file device; 1 for the null device). Others work, through a bounce buffer;
    /// <see cref="AlignedBuffer"/> allocates aligned memory.
    /// </summary>
    int MemoryAlignment { get; }

    /// <summary>
    /// A zero-filled buffer of <paramref name="length"/> bytes that this device takes without a
    /// copy: from its registered memory when it has some (a file device with
    /// <c>fixed_buffers</c>: io_uring then skips pinning pages on every I/O), otherwise freshly
    /// allocated memory aligned to a page and to <see cref="MemoryAlignment"/>. Dispose it when
    /// no I/O uses it any more. Meant for buffers kept and reused, not one per I/O.
    /// </summary>
    AlignedBuffer AllocateBuffer(int length);

    /// <summary>True when writes are refused.</summary>
    bool IsReadOnly { get; }

    /// <summary>How requests travel (ring or mailbox).</summary>
    DispatchMode Dispatch { get; }

    /// <summary>The request queue behind the device (data-plane state, statistics).</summary>
    RequestQueue Queue { get; }

    /// <summary>
    /// The device's sysfs-style attribute tree (<c>block/&lt;name&gt;/queue/...</c>, <c>block/&lt;name&gt;/mq/...</c>,
    /// <c>kernel/debug/block/&lt;name&gt;/...</c>): read and write settings and statistics by path.
    /// </summary>
    Sysfs.QueueAttributes Attributes { get; }

    /// <summary>Reads <c>buffer.Length</c> bytes at <paramref name="offset"/>.</summary>
    ValueTask ReadAsync(long offset, Memory<byte> buffer, int cpu = AnyCpu);

    /// <summary>Writes <paramref name="data"/> at <paramref name="offset"/>; <see cref="RequestFlags.Fua"/> makes it durable on completion.</summary>
    ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, RequestFlags flags = RequestFlags.None, int cpu = AnyCpu);

    /// <summary>Makes every write completed before it durable.</summary>
    ValueTask FlushAsync(int cpu = AnyCpu);

    /// <summary>Discards a range; it reads back as zeroes.</summary>
    ValueTask DiscardAsync(long offset, long length, int cpu = AnyCpu);

    /// <summary>Writes zeroes over a range.</summary>
    ValueTask WriteZeroesAsync(long offset, long length, int cpu = AnyCpu);

    /// <summary>
    /// Submits any operation and returns its status instead of throwing on I/O errors (malformed
    /// requests still throw). <paramref name="length"/> is the buffer's length for reads and writes.
    /// </summary>
    ValueTask<BlockStatus> ExecuteAsync(BlockOp op, long offset, long length, Memory<byte> buffer, RequestFlags flags = RequestFlags.None, int cpu = AnyCpu);

    /// <summary>
    /// Submits an operation whose completion calls <paramref name="endIo"/> on the completion
    /// context (a bio's end_io) instead of resolving a <c>ValueTask</c>: the lowest-overhead form,
    /// and the one to use when completions must become messages.
    /// </summary>
    /// <exception cref="InvalidBlockRequestException">The request is malformed; nothing was submitted.</exception>
    void SubmitWithEndIo(BlockOp op, long offset, long length, Memory<byte> buffer, RequestFlags flags, int cpu, IBioEndIo endIo);

    /// <summary>Submits a polled read or write (<c>REQ_POLLED</c>); complete it with <see cref="Poll(uint)"/>.</summary>
    PolledIo Submit(BlockOp op, long offset, Memory<byte> buffer, int cpu = AnyCpu);

    /// <summary>
    /// Polls until the request behind <paramref name="cookie"/> completed; 0 for a stale cookie or a
    /// non-pollable device. Flushes the calling flow's plug first (<c>bio_poll</c>). A driver's poll
    /// that throws ends the call with what was found so far: the throw is a device error for the
    /// device's supervisor, never the caller's exception.
    /// </summary>
    int Poll(uint cookie);

    /// <summary>
    /// Polls until <paramref name="io"/> completed (works in both dispatch modes). Flushes the
    /// calling flow's plug first; an I/O without a cookie of its own (merged into another polled
    /// request, not yet built, or split by <c>max_sectors_kb</c> and so no longer polled) is
    /// completed by reaping every poll queue. A driver's poll that throws does not end the call:
    /// the throw is a device error for the device's supervisor, and the I/O completes once, as the
    /// reset or the device's loss that follows decides.
    /// </summary>
    int Poll(in PolledIo io);

    /// <summary>Starts a plug on the calling flow: I/O is held back and issued in batches until it is disposed.</summary>
    BlockPlug Plug();
}
