using System.Collections.Concurrent;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;

namespace ActorBlk.Hardware.Drivers;

/// <summary>How the null device completes requests (null_blk's <c>irqmode</c>).</summary>
public enum IrqMode
{
    /// <summary>0: inside QueueRq, in the dispatch context (<c>blk_mq_end_request</c>).</summary>
    None = 0,

    /// <summary>1 (default): through <c>blk_mq_complete_request</c>, so rq_affinity redirection applies.</summary>
    SoftIrq = 1,

    /// <summary>2: from a timer, <c>completion_nsec</c> after dispatch.</summary>
    Timer = 2,
}

/// <summary>Settings of the null device, named and defaulted like null_blk's module parameters (blk-mq-semantics §12).</summary>
public sealed record NullBlockOptions
{
    /// <summary>Default capacity: null_blk's <c>gb = 250</c>.</summary>
    public const long DefaultSizeBytes = 250L << 30;

    /// <summary>Capacity in bytes (<c>gb</c>, configfs <c>size</c>).</summary>
    public long SizeBytes { get; init; } = DefaultSizeBytes;

    /// <summary>Logical block size (<c>bs</c>, 512 by default; 512..4096).</summary>
    public int BlockSize { get; init; } = 512;

    /// <summary>Completion mode (<c>irqmode</c>).</summary>
    public IrqMode IrqMode { get; init; } = IrqMode.SoftIrq;

    /// <summary>Delay of timer completions in nanoseconds (<c>completion_nsec</c>, 10000).</summary>
    public long CompletionNsec { get; init; } = 10_000;

    /// <summary>Keep written data in RAM so reads return it (<c>memory_backed</c>).</summary>
    public bool MemoryBacked { get; init; }

    /// <summary>QueueRq may block (<c>blocking</c>); forced on when memory-backed, as null_blk does.</summary>
    public bool Blocking { get; init; }

    /// <summary>Support discard and write-zeroes (<c>discard</c>); needs <see cref="MemoryBacked"/>.</summary>
    public bool Discard { get; init; } = true;

    /// <summary>Poll queues exist (<c>poll_queues</c> &gt; 0): the driver implements polling.</summary>
    public bool Pollable { get; init; }

    /// <summary>Largest request in sectors (<c>max_sectors</c>; 0 = the block layer default).</summary>
    public int MaxSectors { get; init; }

    /// <summary>Advertise a volatile write cache, so flush and FUA reach the driver (<c>cache_size</c> &gt; 0).</summary>
    public bool WriteCache { get; init; }
}

/// <summary>
/// The null block device (null_blk): completes every request without touching a medium, unless
/// memory-backed, in which case data lives in RAM and reads return what was written. It measures
/// the block layer itself.
/// </summary>
/// <remarks>
/// Requests on poll queues are parked by QueueRq and completed only by <see cref="Poll"/>, in the
/// polling caller (null_blk's <c>null_poll</c>). The timeout handler completes a request with
/// <see cref="BlockStatus.Timeout"/>, as null_blk does for requests it lost on purpose.
/// </remarks>
public sealed class NullBlockDriver : IBlockDriver, IAllocationMap
{
    private readonly NullBlockOptions _options;
    private readonly MemoryStore? _store;
    private readonly CompletionTimer? _timer;
    private readonly TimeSpan _completionDelay;
    private readonly ConcurrentDictionary<int, ConcurrentQueue<(Request Request, uint Generation)>> _pollLists = new();

    /// <summary>Creates the device.</summary>
    /// <param name="options">null_blk-style settings.</param>
    /// <param name="name">Device name for thread names.</param>
    /// <exception cref="ArgumentException">An option is out of range.</exception>
    public NullBlockDriver(NullBlockOptions options, string name = "nullb")
    {
        ArgumentNullException.ThrowIfNull(options);
        if (options.BlockSize is < 512 or > 4096 || (options.BlockSize & (options.BlockSize - 1)) != 0)
        {
            throw new ArgumentOutOfRangeException(nameof(options), options.BlockSize, "bs must be a power of two from 512 to 4096.");
        }

        if (options.SizeBytes <= 0 || options.SizeBytes % options.BlockSize != 0)
        {
            throw new ArgumentOutOfRangeException(nameof(options), options.SizeBytes, $"size must be a positive multiple of bs ({options.BlockSize}).");
        }

        if (options.CompletionNsec < 0)
        {
            throw new ArgumentOutOfRangeException(nameof(options), options.CompletionNsec, "completion_nsec cannot be negative.");
        }

        _options = options;
        _store = options.MemoryBacked ? new MemoryStore(options.SizeBytes) : null;
        _completionDelay = TimeSpan.FromTicks(options.CompletionNsec / 100);
        if (options.IrqMode == IrqMode.Timer)
        {
            _timer = new CompletionTimer(name);
        }

        var discard = options.Discard && options.MemoryBacked;
        var maxSectors = options.MaxSectors > 0 ? options.MaxSectors : QueueLimits.DefaultMaxSectors;
        Limits = new QueueLimits
        {
            LogicalBlockSize = options.BlockSize,
            PhysicalBlockSize = options.BlockSize,
            CapacitySectors = options.SizeBytes >> Bio.SectorShift,
            MaxHardwareSectors = maxSectors,
            MaxSectors = maxSectors,
            MaxDiscardSectors = discard ? int.MaxValue >> Bio.SectorShift : 0,
            MaxWriteZeroesSectors = discard ? int.MaxValue >> Bio.SectorShift : 0,
            VolatileWriteCache = options.WriteCache,
            Fua = options.WriteCache,
        };

        Features = DriverFeatures.Resettable |
                   (options.Pollable ? DriverFeatures.Poll : 0) |
                   (options.Blocking || options.MemoryBacked ? DriverFeatures.Blocking : 0);
    }

    /// <inheritdoc />
    public string Kind => "null";

    /// <inheritdoc />
    public string Description =>
        $"null_blk, {_options.SizeBytes} bytes, irqmode {(int)_options.IrqMode}" +
        (_options.IrqMode == IrqMode.Timer ? $" ({_options.CompletionNsec} ns)" : string.Empty) +
        (_store is null ? ", data discarded" : ", memory-backed");

    /// <inheritdoc />
    public QueueLimits Limits { get; }

    /// <inheritdoc />
    public DriverFeatures Features { get; }

    /// <summary>The settings.</summary>
    public NullBlockOptions Options => _options;

    /// <summary>The RAM store of a memory-backed device.</summary>
    public MemoryStore? Store => _store;

    /// <inheritdoc />
    public BlockStatus QueueRq(HardwareContext hctx, Request request, bool last)
    {
        request.Start();
        var status = _store is null ? BlockStatus.Ok : Transfer(request);

        if (hctx.Type == Topology.HctxType.Poll)
        {
            request.Status = status;
            _pollLists.GetOrAdd(hctx.Index, static _ => new ConcurrentQueue<(Request, uint)>()).Enqueue((request, request.Generation));
            return BlockStatus.Ok;
        }

        switch (_options.IrqMode)
        {
            case IrqMode.None:
                request.End(status);
                break;
            case IrqMode.SoftIrq:
                request.Complete(status);
                break;
            default:
                _timer!.Schedule(request, request.Generation, status, _completionDelay);
                break;
        }

        return BlockStatus.Ok;
    }

    /// <inheritdoc />
    public int Poll(HardwareContext hctx)
    {
        if (!_pollLists.TryGetValue(hctx.Index, out var list))
        {
            return 0;
        }

        var found = 0;
        while (list.TryDequeue(out var parked))
        {
            if (parked.Request.Complete(parked.Request.Status, parked.Generation))
            {
                found++;
            }
        }

        return found;
    }

    /// <summary>
    /// Resets the device: requests parked for polling are forgotten (the block layer takes every
    /// in-flight request back), and timer completions still pending find their generation stale.
    /// </summary>
    public void Reset()
    {
        foreach (var list in _pollLists.Values)
        {
            list.Clear();
        }
    }

    /// <inheritdoc />
    public TimeoutAction Timeout(Request request)
    {
        request.Complete(BlockStatus.Timeout);
        return TimeoutAction.Done;
    }

    /// <summary>
    /// Reports allocation of a memory-backed device from its store (4 KiB pages); a device that
    /// keeps no data cannot tell, and returns <see langword="false"/>.
    /// </summary>
    /// <inheritdoc />
    public bool TryGetExtent(long offset, long maxLength, out long length, out bool allocated)
    {
        if (_store is null)
        {
            (length, allocated) = (0, true);
            return false;
        }

        length = _store.AllocationRun(offset, maxLength, out allocated);
        return true;
    }

    /// <inheritdoc />
    public void Dispose() => _timer?.Dispose();

    private BlockStatus Transfer(Request rq)
    {
        var store = _store!;
        switch (rq.Op)
        {
            case BlockOp.Read:
                foreach (var bio in rq.Bios)
                {
                    store.Read(bio.Offset, bio.Buffer.Span);
                }

                return BlockStatus.Ok;
            case BlockOp.Write:
                foreach (var bio in rq.Bios)
                {
                    store.Write(bio.Offset, bio.Buffer.Span);
                }

                return BlockStatus.Ok;
            case BlockOp.WriteZeroes when (rq.Flags & RequestFlags.NoUnmap) != 0:
                store.ZeroProvisioned(rq.Offset, rq.Bytes);
                return BlockStatus.Ok;
            case BlockOp.Discard:
            case BlockOp.WriteZeroes:
                store.Zero(rq.Offset, rq.Bytes);
                return BlockStatus.Ok;
            case BlockOp.Flush:
                return BlockStatus.Ok;
            default:
                return BlockStatus.NotSupported;
        }
    }
}
