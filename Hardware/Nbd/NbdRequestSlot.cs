using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Requests;

namespace ActorBlk.Hardware.Nbd;

/// <summary>
/// One in-flight NBD request of a connection: its header, its payload buffer (kept and reused
/// across requests, so the read and write paths allocate nothing) and its outcome. The slot is the
/// bio's end_io: the block layer's completion hands it to the connection's reply writer.
/// </summary>
internal sealed class NbdRequestSlot : IBioEndIo
{
    /// <summary>Buffers up to this size may stay with an idle slot (within the server's budget); larger ones are freed after the reply.</summary>
    internal const int KeepBytes = 1 << 20;

    /// <summary>The smallest buffer a slot allocates.</summary>
    internal const int MinimumBytes = 4096;

    private readonly NbdConnection _connection;
    private int _pending;
    private int _status;
    private IBlockDevice? _flushAfter;

    public NbdRequestSlot(NbdConnection connection) => _connection = connection;

    public ulong Cookie { get; private set; }

    public NbdCommand Command { get; private set; }

    public NbdCommandFlags Flags { get; private set; }

    public long Offset { get; private set; }

    public uint Length { get; private set; }

    /// <summary>The wire error of the reply, set before submission (refused) or at completion.</summary>
    public NbdError Error { get; set; }

    public AlignedBuffer? Buffer { get; private set; }

    public Memory<byte> Payload => Buffer is { } b ? b.Memory[..(int)Length] : default;

    public void Reset(ulong cookie, NbdCommand command, NbdCommandFlags flags, long offset, uint length)
    {
        Cookie = cookie;
        Command = command;
        Flags = flags;
        Offset = offset;
        Length = length;
        Error = NbdError.None;
        _status = 0;
        _flushAfter = null;
    }

    /// <summary>
    /// A block status reply's extents (their lengths, and whether each is data), gathered from the
    /// allocation map before the reply is queued to the writer; made at the slot's first block
    /// status and reused.
    /// </summary>
    public (uint Length, bool Data)[]? Extents { get; private set; }

    /// <summary>How many of <see cref="Extents"/> the reply carries.</summary>
    public int ExtentCount { get; set; }

    /// <summary>Gives the slot room for <paramref name="max"/> extents (kept for its later block status requests).</summary>
    public (uint Length, bool Data)[] ExtentsFor(int max)
    {
        if (Extents is null || Extents.Length < max)
        {
            Extents = new (uint, bool)[max];
        }

        ExtentCount = 0;
        return Extents;
    }

    /// <summary>Bytes of the buffer the slot holds (0 without one).</summary>
    public long BufferBytes => Buffer?.Length ?? 0;

    /// <summary>
    /// The buffer size for a payload of <paramref name="length"/> bytes: a power of two, at least a
    /// page, so a slot grows a few times, not per size. Small, because a connection has
    /// max-in-flight slots and each buffer is zeroed (page faults) when allocated: 4 KiB I/O should
    /// not cost 64 KiB per slot.
    /// </summary>
    public static int BufferSizeFor(uint length) =>
        Math.Max(MinimumBytes, (int)Math.Min(1L << 30, System.Numerics.BitOperations.RoundUpToPowerOf2(length)));

    /// <summary>Gives the slot a new buffer of <paramref name="size"/> bytes from <paramref name="device"/>'s memory (the old one must be released first).</summary>
    public void AllocateBuffer(IBlockDevice device, int size)
    {
        System.Diagnostics.Debug.Assert(Buffer is null, "the old buffer is released first");
        Buffer = device.AllocateBuffer(size);
    }

    /// <summary>Frees the buffer, if any.</summary>
    public void ReleaseBuffer()
    {
        ((IDisposable?)Buffer)?.Dispose();
        Buffer = null;
    }

    /// <summary>The request goes to the block layer as <paramref name="parts"/> bios; the reply waits for all.</summary>
    public void ExpectParts(int parts) => Volatile.Write(ref _pending, parts);

    /// <summary>
    /// Once every part completed without error, <paramref name="device"/> is flushed before the
    /// reply (set before the parts are submitted): a trim or write zeroes with
    /// <c>NBD_CMD_FLAG_FUA</c>, whose FUA the block layer's model keeps for writes only.
    /// </summary>
    public void FlushAfter(IBlockDevice device) => _flushAfter = device;

    /// <summary>A part that was never submitted (refused by the device's checks) counts as completed with <paramref name="error"/>.</summary>
    public void PartRefused(NbdError error)
    {
        Interlocked.CompareExchange(ref _status, (int)error, 0);
        if (Interlocked.Decrement(ref _pending) == 0)
        {
            FlushOrFinish();
        }
    }

    public void OnBioComplete(Bio bio, BlockStatus status)
    {
        // A trim the device cannot do (a file device on a file system without punch-hole) did
        // nothing, which a trim may do: it is advisory, and "the server SHOULD NOT return
        // NBD_ENOTSUP except ... in response to NBD_CMD_WRITE_ZEROES" with FAST_ZERO.
        if (status != BlockStatus.Ok && !(status == BlockStatus.NotSupported && bio.Op == BlockOp.Discard))
        {
            Interlocked.CompareExchange(ref _status, (int)NbdErrors.FromStatus(status), 0);
        }

        if (Interlocked.Decrement(ref _pending) == 0)
        {
            FlushOrFinish();
        }
    }

    // The last part is done: the reply, or first the flush a FUA trim or write zeroes asked for
    // (whose completion comes back here with nothing left to flush). It is submitted from the
    // thread pool: this runs on a completion context, which must not block (a submission may wait
    // for a tag that only completions give back).
    private void FlushOrFinish()
    {
        var device = _flushAfter;
        _flushAfter = null;
        if (device is null || Volatile.Read(ref _status) != 0)
        {
            Finish();
            return;
        }

        Volatile.Write(ref _pending, 1);
        ThreadPool.UnsafeQueueUserWorkItem(static s => s.slot.SubmitFlush(s.device), (slot: this, device), preferLocal: false);
    }

    private void SubmitFlush(IBlockDevice device) =>
        SubmitPart(device, BlockOp.Flush, 0, 0, default, RequestFlags.None);

    /// <summary>
    /// Submits one bio of this request. A refusal, a device gone or any other exception (a bug
    /// below, logged with its stack: EIO) counts the part as completed, so the slot always
    /// replies and the connection drains; nothing escapes (the flush runs as a thread-pool work
    /// item, where an escaping exception ends the process).
    /// </summary>
    public void SubmitPart(IBlockDevice device, BlockOp op, long offset, long length, Memory<byte> buffer, RequestFlags flags)
    {
        try
        {
            device.SubmitWithEndIo(op, offset, length, buffer, flags, IBlockDevice.AnyCpu, this);
        }
        catch (InvalidBlockRequestException ex)
        {
            PartRefused(NbdErrors.FromRefusal(ex.Reason));
        }
        catch (ObjectDisposedException)
        {
            PartRefused(NbdError.Shutdown);
        }
#pragma warning disable CA1031 // the part must count as completed, or the slot never replies and the connection never drains
        catch (Exception ex)
#pragma warning restore CA1031
        {
            _connection.LogFault($"submitting a {op.Name()}", ex);
            PartRefused(NbdError.Io);
        }
    }

    private void Finish()
    {
        Error = (NbdError)Volatile.Read(ref _status);
        _connection.Completed(this);
    }
}

/// <summary>How block-layer outcomes become NBD errors.</summary>
public static class NbdErrors
{
    /// <summary>The wire error for a block status (blk-mq-semantics §3.8: the status of the request).</summary>
    public static NbdError FromStatus(BlockStatus status) => status switch
    {
        BlockStatus.Ok => NbdError.None,
        BlockStatus.NoSpace => NbdError.NoSpace,
        BlockStatus.Invalid => NbdError.Invalid,
        BlockStatus.NotSupported => NbdError.NotSupported,
        BlockStatus.Offline => NbdError.Shutdown,
        BlockStatus.Resource or BlockStatus.Again => NbdError.NoMemory,
        _ => NbdError.Io,
    };

    /// <summary>The wire error for a request the device refused before submission.</summary>
    public static NbdError FromRefusal(InvalidRequestReason reason) => reason switch
    {
        InvalidRequestReason.ReadOnly => NbdError.Perm,
        InvalidRequestReason.NotSupported => NbdError.NotSupported,
        InvalidRequestReason.NotRegistered => NbdError.Shutdown,
        _ => NbdError.Invalid,
    };

    /// <summary>
    /// The status an NBD client reports for a wire error: the block status of that errno where the
    /// kernel's <c>errno_to_blk_status</c> has one, <see cref="BlockStatus.Offline"/> for
    /// <c>ESHUTDOWN</c> (the server is going away), <see cref="BlockStatus.IoError"/> otherwise,
    /// <c>EPERM</c> included (it read as EINVAL, an invalid request, through a re-export: an outside
    /// audit with nbdkit's error filter).
    /// </summary>
    public static BlockStatus ToStatus(NbdError error) => error switch
    {
        NbdError.None => BlockStatus.Ok,
        NbdError.NoSpace => BlockStatus.NoSpace,
        NbdError.Invalid or NbdError.Overflow => BlockStatus.Invalid,
        NbdError.NotSupported => BlockStatus.NotSupported,
        NbdError.Shutdown => BlockStatus.Offline,
        NbdError.NoMemory => BlockStatus.Resource,
        _ => BlockStatus.IoError,
    };
}
