using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;

namespace ActorBlk.Hardware.Devices;

/// <summary>
/// The <see cref="IBlockDevice"/> over a <see cref="RequestQueue"/>: validates requests, rents a
/// bio, submits it and hands back a <c>ValueTask</c> backed by the bio itself.
/// </summary>
public sealed class BlockDevice : IBlockDevice
{
    /// <summary>Most bytes one call moves (a bio's size is 32-bit, as in the kernel); split larger ranges.</summary>
    public const long MaxIoBytes = int.MaxValue & ~4095L;

    private const RequestFlags CallerFlags = RequestFlags.Fua | RequestFlags.PreFlush | RequestFlags.Sync | RequestFlags.NoWait | RequestFlags.FailFast | RequestFlags.NoMerge | RequestFlags.NoUnmap | RequestFlags.NoFallback;

    // The flags only a write takes (op_is_flush): submit_bio_noacct fails any other operation that
    // carries them with BLK_STS_IOERR. Our flush is its own operation; it may carry them, harmlessly.
    private const RequestFlags WriteOnlyFlags = RequestFlags.Fua | RequestFlags.PreFlush;

    private readonly Func<BlockDevice, ValueTask>? _dispose;
    private readonly bool _threadPoolContinuations;
    private int _disposed;

    /// <summary>Wraps a started queue.</summary>
    /// <param name="queue">The queue, started on its runtime.</param>
    /// <param name="dispose">Tears the device down when it is disposed (unregister, drain, stop).</param>
    public BlockDevice(RequestQueue queue, Func<BlockDevice, ValueTask>? dispose = null)
    {
        ArgumentNullException.ThrowIfNull(queue);
        Queue = queue;
        _dispose = dispose;
        _threadPoolContinuations = queue.Continuation == CompletionContinuation.ThreadPool;
    }

    /// <inheritdoc />
    public string Name => Queue.Name;

    /// <inheritdoc />
    public long Capacity => Queue.Limits.CapacityBytes;

    /// <inheritdoc />
    public int LogicalBlockSize => Queue.Limits.LogicalBlockSize;

    /// <inheritdoc />
    public int MemoryAlignment => Queue.Limits.MemoryAlignment;

    /// <inheritdoc />
    public AlignedBuffer AllocateBuffer(int length)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        return (Queue.Kind == QueueKind.MultiQueue ? Queue.Driver.AllocateBuffer(length) : null) ?? new AlignedBuffer(length, Math.Max(AlignedBuffer.PageAlignment, MemoryAlignment));
    }

    /// <inheritdoc />
    public bool IsReadOnly => Queue.ReadOnly;

    /// <inheritdoc />
    public DispatchMode Dispatch => Queue.Kind == QueueKind.BioBased ? DispatchMode.Bio : Queue.IsStarted ? Queue.Runtime.Mode : DispatchMode.Ring;

    /// <inheritdoc />
    public RequestQueue Queue { get; }

    /// <inheritdoc />
    public Sysfs.QueueAttributes Attributes => Queue.Attributes;

    /// <inheritdoc />
    public ValueTask ReadAsync(long offset, Memory<byte> buffer, int cpu = IBlockDevice.AnyCpu)
    {
        if (Check(BlockOp.Read, offset, buffer.Length, RequestFlags.None) is { } error)
        {
            return ValueTask.FromException(error);
        }

        var thread = BlockThread.Current;
        var bio = Prepare(thread, BlockOp.Read, offset, buffer.Length, buffer, RequestFlags.None, cpu);
        var task = bio.AsValueTask();
        Queue.Submit(bio, thread);
        return task;
    }

    /// <inheritdoc />
    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, RequestFlags flags = RequestFlags.None, int cpu = IBlockDevice.AnyCpu)
    {
        if (Check(BlockOp.Write, offset, data.Length, flags) is { } error)
        {
            return ValueTask.FromException(error);
        }

        // The block layer never writes into a write's buffer.
        var thread = BlockThread.Current;
        var bio = Prepare(thread, BlockOp.Write, offset, data.Length, MemoryMarshal.AsMemory(data), flags, cpu);
        var task = bio.AsValueTask();
        Queue.Submit(bio, thread);
        return task;
    }

    /// <inheritdoc />
    public ValueTask FlushAsync(int cpu = IBlockDevice.AnyCpu)
    {
        if (CheckFlush(RequestFlags.None) is { } error)
        {
            return ValueTask.FromException(error);
        }

        var thread = BlockThread.Current;
        var bio = Prepare(thread, BlockOp.Flush, 0, 0, default, RequestFlags.Sync, cpu);
        var task = bio.AsValueTask();
        Queue.Submit(bio, thread);
        return task;
    }

    /// <inheritdoc />
    public ValueTask DiscardAsync(long offset, long length, int cpu = IBlockDevice.AnyCpu) => RangeOp(BlockOp.Discard, offset, length, cpu);

    /// <inheritdoc />
    public ValueTask WriteZeroesAsync(long offset, long length, int cpu = IBlockDevice.AnyCpu) => RangeOp(BlockOp.WriteZeroes, offset, length, cpu);

    /// <inheritdoc />
    public ValueTask<BlockStatus> ExecuteAsync(BlockOp op, long offset, long length, Memory<byte> buffer, RequestFlags flags = RequestFlags.None, int cpu = IBlockDevice.AnyCpu)
    {
        if (op.HasData() && length != buffer.Length)
        {
            return ValueTask.FromException<BlockStatus>(Invalid(InvalidRequestReason.OutOfRange, op, offset, length, $"the buffer holds {buffer.Length} bytes, not {length}"));
        }

        if ((op == BlockOp.Flush ? CheckFlush(flags) : Check(op, offset, length, flags)) is { } error)
        {
            return ValueTask.FromException<BlockStatus>(error);
        }

        var thread = BlockThread.Current;
        var bio = Prepare(thread, op, op == BlockOp.Flush ? 0 : offset, op == BlockOp.Flush ? 0 : length, op.HasData() ? buffer : default, flags, cpu);
        var task = bio.AsStatusTask();
        Queue.Submit(bio, thread);
        return task;
    }

    /// <inheritdoc />
    public void SubmitWithEndIo(BlockOp op, long offset, long length, Memory<byte> buffer, RequestFlags flags, int cpu, IBioEndIo endIo)
    {
        ArgumentNullException.ThrowIfNull(endIo);
        if (op.HasData() && length != buffer.Length)
        {
            throw Invalid(InvalidRequestReason.OutOfRange, op, offset, length, $"the buffer holds {buffer.Length} bytes, not {length}");
        }

        if ((op == BlockOp.Flush ? CheckFlush(flags) : Check(op, offset, length, flags)) is { } error)
        {
            throw error;
        }

        var thread = BlockThread.Current;
        var bio = Prepare(thread, op, op == BlockOp.Flush ? 0 : offset, op == BlockOp.Flush ? 0 : length, op.HasData() ? buffer : default, flags, cpu);
        bio.EndIo = endIo;
        Queue.Submit(bio, thread);
    }

    /// <inheritdoc />
    public PolledIo Submit(BlockOp op, long offset, Memory<byte> buffer, int cpu = IBlockDevice.AnyCpu)
    {
        if (!op.HasData())
        {
            throw Invalid(InvalidRequestReason.NotSupported, op, offset, buffer.Length, "only reads and writes can be polled");
        }

        if (!Queue.CanPoll)
        {
            throw Invalid(InvalidRequestReason.NotSupported, op, offset, buffer.Length, "the device has no poll queues (io_poll is off)");
        }

        if (Check(op, offset, buffer.Length, RequestFlags.None) is { } error)
        {
            throw error;
        }

        var thread = BlockThread.Current;
        var bio = Prepare(thread, op, offset, buffer.Length, buffer, RequestFlags.Polled, cpu);
        var io = new PolledIo(bio, bio.AsStatusTask());
        Queue.Submit(bio, thread);
        return io;
    }

    /// <inheritdoc />
    public int Poll(uint cookie)
    {
        // bio_poll flushes the caller's plug first: a request still in it was never issued.
        BlockPlug.Current?.Flush();
        return Queue.Poll(cookie);
    }

    /// <inheritdoc />
    public int Poll(in PolledIo io)
    {
        if (!Queue.CanPoll || io.Bio is null)
        {
            return 0;
        }

        BlockPlug.Current?.Flush();
        var found = 0;
        var spin = default(SpinWait);
        // HasEnded, not io.Completion.IsCompleted: a flow that awaits the I/O while this one polls
        // may consume it and send its bio back to the pool at any moment, and the ValueTask's
        // status check then throws (its token is stale) where the I/O has simply ended.
        while (!io.Bio.HasEnded(io.Version))
        {
            var cookie = io.Cookie;
            if (cookie == PollCookie.None)
            {
                // No request of its own (yet): mailbox mode before the software-context actor built
                // it, a bio merged into another's request, or one split (no longer polled). After a
                // short spin (the usual wait for the actor), reap every poll queue, so a request
                // nobody else polls still completes.
                if (spin.Count < 16)
                {
                    spin.SpinOnce(sleep1Threshold: -1);
                    continue;
                }

                var n = Queue.PollAll();
                found += n;
                if (n == 0)
                {
                    spin.SpinOnce(sleep1Threshold: -1);
                }

                continue;
            }

            // Queue.Poll returns at once for a cookie that no longer names this bio's request (its
            // completion is on its way, or the request was taken back to be requeued): back off
            // as above rather than spin hot on the caller's core.
            var polled = Queue.Poll(cookie);
            found += polled;
            if (polled == 0)
            {
                spin.SpinOnce(sleep1Threshold: -1);
            }
        }

        return found;
    }

    /// <inheritdoc />
    public BlockPlug Plug() => BlockPlug.Start();

    /// <inheritdoc />
    public ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0 || _dispose is null)
        {
            return ValueTask.CompletedTask;
        }

        return _dispose(this);
    }

    /// <inheritdoc />
    public override string ToString() => Queue.Kind == QueueKind.MultiQueue
        ? $"{Name} ({Capacity} bytes, {LogicalBlockSize}-byte blocks, {Queue.TagSet.HardwareQueueCount} hw queues)"
        : $"{Name} ({Capacity} bytes, {LogicalBlockSize}-byte blocks, {Queue.Kind.ToString().ToLowerInvariant()})";

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private Bio Prepare(BlockThread thread, BlockOp op, long offset, long length, Memory<byte> buffer, RequestFlags flags, int cpu)
    {
        var bio = Queue.Bios.Rent(thread);
        bio.Op = op;
        bio.Flags = flags;
        bio.Sector = offset >> Bio.SectorShift;
        bio.Size = (int)length;
        bio.Buffer = buffer;
        bio.Cpu = cpu;
        // A pooled bio has no plug: store one only when the flow has one (most have none).
        if (BlockPlug.Current is { } plug)
        {
            bio.Plug = plug;
            bio.PlugSleeps = plug.Sleeps;
        }

        bio.RunContinuationsAsynchronously = _threadPoolContinuations;
        return bio;
    }

    private ValueTask RangeOp(BlockOp op, long offset, long length, int cpu)
    {
        if (Check(op, offset, length, RequestFlags.None) is { } error)
        {
            return ValueTask.FromException(error);
        }

        var thread = BlockThread.Current;
        var bio = Prepare(thread, op, offset, length, default, RequestFlags.None, cpu);
        var task = bio.AsValueTask();
        Queue.Submit(bio, thread);
        return task;
    }

    // Everything a request must satisfy before it may be submitted; null when it is well-formed.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private InvalidBlockRequestException? Check(BlockOp op, long offset, long length, RequestFlags flags)
    {
        var limits = Queue.Limits;
        var lbs = limits.LogicalBlockSize;
        if (((offset | length) & (lbs - 1)) == 0 && length > 0 && offset >= 0 && length <= MaxIoBytes &&
            offset <= limits.CapacityBytes - length && (flags & ~CallerFlags) == 0 &&
            ((flags & WriteOnlyFlags) == 0 || op == BlockOp.Write) &&
            (!op.IsWrite() || !Queue.ReadOnly) && Supported(op, limits, flags) && Queue.AcceptsIo)
        {
            return null;
        }

        return Diagnose(op, offset, length, flags, limits);
    }

    // A flush has no range, but the rest holds: reserved flags (Polled among them: a flush cannot
    // be polled, and a polled one held a poll queue's tag for ever) and an unregistered device
    // are refused, as for any other operation (an outside audit found flushes skipping both).
    private InvalidBlockRequestException? CheckFlush(RequestFlags flags) =>
        (flags & ~CallerFlags) == 0 && Queue.AcceptsIo ? null : Diagnose(BlockOp.Flush, 0, 0, flags, Queue.Limits);

    // A write-zeroes that may not fall back to zeroing slowly (NoFallback, NBD's FAST_ZERO) needs a
    // device whose zeroing is fast: else NotSupported at once, as BLKDEV_ZERO_NOFALLBACK gives
    // EOPNOTSUPP.
    private static bool Supported(BlockOp op, QueueLimits limits, RequestFlags flags) => op switch
    {
        BlockOp.Discard => limits.MaxDiscardSectors > 0,
        BlockOp.WriteZeroes => limits.MaxWriteZeroesSectors > 0 && (limits.FastWriteZeroes || (flags & RequestFlags.NoFallback) == 0),
        BlockOp.Read or BlockOp.Write or BlockOp.Flush => true,
        _ => false, // not an operation at all ((BlockOp)99): refused before submission
    };

    [MethodImpl(MethodImplOptions.NoInlining)]
    private InvalidBlockRequestException Diagnose(BlockOp op, long offset, long length, RequestFlags flags, QueueLimits limits)
    {
        var lbs = limits.LogicalBlockSize;
        if (!Queue.AcceptsIo)
        {
            return Invalid(InvalidRequestReason.NotRegistered, op, offset, length, "the device is not registered");
        }

        if ((flags & ~CallerFlags) != 0)
        {
            return Invalid(InvalidRequestReason.InvalidFlags, op, offset, length, $"flags {flags & ~CallerFlags} are reserved to the block layer");
        }

        // Before the operation's support, as in submit_bio_noacct. An undefined operation is
        // NotSupported below, whatever its flags.
        if ((flags & WriteOnlyFlags) != 0 && op is BlockOp.Read or BlockOp.Discard or BlockOp.WriteZeroes)
        {
            return Invalid(InvalidRequestReason.InvalidFlags, op, offset, length,
                $"flags {flags & WriteOnlyFlags}: FUA and PREFLUSH apply to writes only, as Linux's submit_bio_noacct refuses them on a {op.Name()}");
        }

        if (!Supported(op, limits, flags))
        {
            return Invalid(InvalidRequestReason.NotSupported, op, offset, length, limits.MaxWriteZeroesSectors > 0 && op == BlockOp.WriteZeroes
                ? "the device's write-zeroes is not fast (NoFallback)"
                : $"the device does not support {op.Name()}");
        }

        if (op.IsWrite() && Queue.ReadOnly)
        {
            return Invalid(InvalidRequestReason.ReadOnly, op, offset, length, "the device is read-only");
        }

        if (length == 0)
        {
            return Invalid(InvalidRequestReason.ZeroLength, op, offset, length, "the length is zero");
        }

        if (length < 0 || length > MaxIoBytes)
        {
            return Invalid(InvalidRequestReason.OutOfRange, op, offset, length, $"the length must be between 1 and {MaxIoBytes} bytes");
        }

        if (((offset | length) & (lbs - 1)) != 0)
        {
            return Invalid(InvalidRequestReason.Misaligned, op, offset, length, $"offset and length must be multiples of the {lbs}-byte logical block size");
        }

        return Invalid(InvalidRequestReason.OutOfRange, op, offset, length, $"the range lies outside the device's {limits.CapacityBytes} bytes");
    }

    private InvalidBlockRequestException Invalid(InvalidRequestReason reason, BlockOp op, long offset, long length, string detail) =>
        new(Name, reason, op, offset, length, detail);
}
