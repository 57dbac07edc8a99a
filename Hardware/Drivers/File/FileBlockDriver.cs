using System.Numerics;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.IoUring;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;

namespace ActorBlk.Hardware.Drivers.File;

/// <summary>
/// The file device: a block device backed by a regular file or a Linux block device, with
/// O_DIRECT by default and io_uring (or psync) underneath. Reads, writes, flush (fdatasync),
/// FUA writes (RWF_DSYNC), pre-flush writes (a linked fdatasync), discard (punch hole, or
/// BLKDISCARD on a block device) and write-zeroes (punch hole, zero range with REQ_NOUNMAP, or
/// BLKZEROOUT). A regular file's holes are reported through <see cref="IAllocationMap"/> (NBD
/// block status).
/// </summary>
/// <remarks>
/// <para>
/// Each hardware queue gets its own engine, created on that queue's dispatcher: with io_uring
/// and ring dispatch, a ring submitted to and reaped by the dispatch thread itself. When
/// io_uring was asked for but the kernel refuses it, the psync engine serves instead and
/// <see cref="FallbackReason"/> says why; the control plane logs it at start.
/// </para>
/// <para>
/// Timeouts: a request the kernel still holds cannot be completed early without handing its
/// buffer back while the device may still write to it, so <see cref="Timeout"/> re-arms the
/// timer (as the kernel does for a driver without a handler) and the request completes when the
/// device answers. For the same reason <see cref="Abandon"/> (a removal past its drain timeout)
/// returns only once the kernel answered every request it holds, so the requests the block
/// layer then fails are none of the kernel's.
/// </para>
/// </remarks>
public sealed class FileBlockDriver : IBlockDriver, IAllocationMap
{
    private readonly FileTarget _target;
    private readonly BufferArena? _arena;
    private readonly Lock _enginesLock = new();
    // Each hardware queue's engine, and how it was described when it started.
    private readonly Dictionary<int, (FileEngine Engine, string Description)> _engines = [];
    // Engines replaced (a hardware queue initialised again: a restarted driver actor) while they
    // still held requests: their reaper outlived the drain limit. Abandon waits for them too.
    private readonly List<FileEngine> _retired = [];
    private string? _fallbackReason;

    // Set once lseek said the file system has no SEEK_DATA/SEEK_HOLE: it is not asked again.
    private int _seekUnsupported;

    /// <summary>
    /// Extends the regular file at <paramref name="path"/> to <paramref name="size"/> bytes when
    /// it is smaller, as fio lays out a job's file smaller than the job's size: its bytes are kept
    /// and the added range allocated. A larger file is never shrunk; a block device, a missing
    /// path or anything else is left alone. For a caller that opens the file afterwards with its
    /// size (<c>actorblk bench --size</c>).
    /// </summary>
    /// <param name="path">The file.</param>
    /// <param name="size">The size it must have at least, in bytes.</param>
    /// <param name="name">The device name, for errors.</param>
    /// <returns>The size the file had, or null when it was left alone.</returns>
    /// <exception cref="BlockDeviceOpenException">
    /// It cannot be extended (not writable, a read-only file system, in use, too little free
    /// space, past the largest file); it is left at its old size.
    /// </exception>
    public static long? ExtendFile(string path, long size, string name = "file0")
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(path);
        return FileTarget.Extend(name, path, size);
    }

    /// <summary>Opens the backing store and discovers its geometry.</summary>
    /// <param name="options">The file device settings.</param>
    /// <param name="name">The device name, for errors and thread names.</param>
    /// <exception cref="ArgumentException">An option is out of range.</exception>
    /// <exception cref="BlockDeviceOpenException">The backing store cannot be opened or used.</exception>
    public FileBlockDriver(FileBlockOptions options, string name = "file0")
        : this(options, name, null)
    {
    }

    /// <summary>Opens the backing store, judging io_uring by <paramref name="support"/> (tests) or by this kernel's probe.</summary>
    internal FileBlockDriver(FileBlockOptions options, string name, IoUringSupport? support)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentException.ThrowIfNullOrWhiteSpace(options.Path, nameof(options));
        if (options.BlockSize is < 512 or > 4096 || !BitOperations.IsPow2(options.BlockSize))
        {
            throw new ArgumentOutOfRangeException(nameof(options), options.BlockSize, "bs must be a power of two from 512 to 4096.");
        }

        if (options.SizeBytes is <= 0)
        {
            throw new ArgumentOutOfRangeException(nameof(options), options.SizeBytes, "size must be positive.");
        }

        if (options.SubmitBatch is < 0)
        {
            throw new ArgumentOutOfRangeException(nameof(options), options.SubmitBatch, "submit_batch cannot be negative.");
        }

        if (options.FixedBuffers is < 0 or > BufferArena.MaxBytes)
        {
            throw new ArgumentOutOfRangeException(nameof(options), options.FixedBuffers, $"fixed_buffers must be 0 to {BufferArena.MaxBytes} bytes.");
        }

        if (options.MaxSectors < 0)
        {
            throw new ArgumentOutOfRangeException(nameof(options), options.MaxSectors, "max_sectors cannot be negative.");
        }

        Options = options;
        Name = name;
        RequestedEngine = options.Engine;
        if (options.Engine == IoEngine.IoUring && (support ?? IoUringSupport.Current) is { Available: false } unavailable)
        {
            _fallbackReason = unavailable.Summary;
        }

        _target = FileTarget.Open(name, options);
        if (options.FixedBuffers > 0 && Engine == IoEngine.IoUring)
        {
            _arena = new BufferArena(options.FixedBuffers);
        }

        var maxSectors = Math.Max(
            _target.LogicalBlockSize >> Bio.SectorShift,
            options.MaxSectors > 0 ? options.MaxSectors : QueueLimits.DefaultMaxSectors);
        var discard = options.Discard && !options.ReadOnly;
        Limits = new QueueLimits
        {
            LogicalBlockSize = _target.LogicalBlockSize,
            PhysicalBlockSize = _target.PhysicalBlockSize,
            CapacitySectors = _target.CapacityBytes >> Bio.SectorShift,
            MaxHardwareSectors = maxSectors,
            MaxSectors = maxSectors,
            MemoryAlignment = _target.MemoryAlignment,
            MaxDiscardSectors = discard ? int.MaxValue >> Bio.SectorShift : 0,
            MaxWriteZeroesSectors = discard ? int.MaxValue >> Bio.SectorShift : 0,

            // A file zeroes with fallocate; a block device with BLKZEROOUT, which the kernel may
            // carry out by writing zeroes (no BLKDEV_ZERO_NOFALLBACK there), so it is not fast.
            FastWriteZeroes = !_target.IsBlockDevice,

            // The page cache (buffered) or the disk's cache (direct) is volatile until fdatasync.
            VolatileWriteCache = !options.ReadOnly,
            Fua = !options.ReadOnly,
        };
    }

    /// <inheritdoc />
    public string Kind => "file";

    /// <summary>The device name.</summary>
    public string Name { get; }

    /// <summary>The settings.</summary>
    public FileBlockOptions Options { get; }

    /// <inheritdoc />
    public QueueLimits Limits { get; }

    /// <inheritdoc />
    public DriverFeatures Features => DriverFeatures.None;

    /// <summary>True when the backing store is a block device.</summary>
    public bool IsBlockDevice => _target.IsBlockDevice;

    /// <summary>True when this driver created the backing file.</summary>
    public bool CreatedFile => _target.Created;

    /// <summary>The engine the configuration asked for.</summary>
    public IoEngine RequestedEngine { get; }

    /// <summary>The engine serving the device: io_uring, or psync when asked for or when io_uring is unavailable.</summary>
    public IoEngine Engine => RequestedEngine == IoEngine.Psync || FallbackReason is not null ? IoEngine.Psync : IoEngine.IoUring;

    /// <summary>
    /// The engine serving <paramref name="hctx"/> ("io_uring" or "psync"), or null while it has
    /// none: its dispatch has not started (the engine is set up then) or it was torn down. A
    /// queue whose ring could not be set up says "psync" even when others of the device say "io_uring".
    /// </summary>
    public string? EngineOf(HardwareContext hctx) => (hctx?.DriverData as FileEngine)?.Name;

    /// <summary>Why psync serves although io_uring was asked for; null when it does not.</summary>
    public string? FallbackReason => Volatile.Read(ref _fallbackReason);

    /// <inheritdoc />
    public bool ReadOnly => _target.ReadOnly;

    /// <summary>
    /// fallocate calls of write-zeroes that the file system refused (EOPNOTSUPP: tmpfs's zero
    /// range, ramfs's every mode): each mode is refused once, then not asked for again.
    /// </summary>
    internal long ZeroModeRefusals => _target.ZeroModeRefusals;

    /// <summary>One line for the start-up log: backing store, mode, engine and its set-up.</summary>
    public string Description
    {
        get
        {
            string engines;
            lock (_enginesLock)
            {
                engines = _engines.Count == 0
                    ? Engine == IoEngine.IoUring ? "io_uring" : $"psync ({FallbackReason ?? "chosen by configuration"})"
                    : string.Join("; ", _engines.OrderBy(e => e.Key).Select(e => $"hctx{e.Key}: {e.Value.Description}"));
            }

            return $"{_target} ({(_target.Direct ? "O_DIRECT" : "buffered")}{(_target.ReadOnly ? ", read-only" : string.Empty)}, " +
                   $"{_target.CapacityBytes} bytes, logical block {_target.LogicalBlockSize}, physical block {_target.PhysicalBlockSize}, " +
                   $"memory alignment {_target.MemoryAlignment}), engine {engines}";
        }
    }

    /// <inheritdoc />
    public void InitHardwareContext(HardwareContext hctx)
    {
        ArgumentNullException.ThrowIfNull(hctx);
        FileEngine? engine = null;
        if (Engine == IoEngine.IoUring)
        {
            var uring = IoUringEngine.TryCreate(_target, hctx, Options.SubmitBatch, _arena, out var failure);
            if (uring is null)
            {
                Interlocked.CompareExchange(ref _fallbackReason, failure, null);
            }
            else
            {
                engine = uring;
                if (hctx.HasDispatchThread)
                {
                    hctx.Reaper = uring;
                }
            }
        }

        engine ??= new PsyncEngine(_target, hctx, FallbackReason);
        hctx.DriverData = engine;
        lock (_enginesLock)
        {
            _retired.RemoveAll(e => e.Outstanding == 0);
            if (_engines.TryGetValue(hctx.Index, out var previous) && previous.Engine.Outstanding > 0)
            {
                // Before, the new engine took its place and Abandon no longer saw the requests
                // the kernel still held for the old one: their buffers could go back to their
                // callers while the kernel still wrote them.
                _retired.Add(previous.Engine);
            }

            _engines[hctx.Index] = (engine, $"{engine.Name} ({engine.Details})");
        }
    }

    /// <inheritdoc />
    public void ExitHardwareContext(HardwareContext hctx)
    {
        ArgumentNullException.ThrowIfNull(hctx);
        if (hctx.DriverData is FileEngine engine)
        {
            hctx.Reaper = null;
            hctx.DriverData = null;
            engine.Dispose();
        }
    }

    /// <inheritdoc />
    public BlockStatus QueueRq(HardwareContext hctx, Request request, bool last)
    {
        ArgumentNullException.ThrowIfNull(hctx);
        ArgumentNullException.ThrowIfNull(request);
        var engine = (FileEngine)hctx.DriverData!;
        request.Start();
        return engine.Queue(request, last);
    }

    /// <inheritdoc />
    public void CommitRqs(HardwareContext hctx) => (hctx?.DriverData as FileEngine)?.Commit();

    /// <inheritdoc />
    public TimeoutAction Timeout(Request request) => TimeoutAction.ResetTimer;

    /// <inheritdoc />
    /// <remarks>
    /// A request the kernel holds cannot be abandoned: the kernel reads a write's buffer and fills
    /// a read's when the disk gets to it, whatever this process does, and failing the request
    /// would hand that buffer back to its caller first. So this waits, on the calling thread,
    /// until no engine holds a request, as the kernel's <c>blk_mq_destroy_queue</c> waits for
    /// every request of a slow disk (the loop device's too); the requests complete with the
    /// disk's answer meanwhile. Before, the block layer failed them with
    /// <see cref="BlockStatus.Offline"/> at the drain timeout (mailbox dispatch) or 30 s later
    /// (ring dispatch), and the kernel's late reads overwrote buffers their callers had reused
    /// (an outside slow-disk audit, with the disk throttled to 1 IOPS). The requests of an
    /// io_uring whose ring broke (reported as a device error) are not waited for: nothing can reap
    /// their answers any more, and the wait would never end. Nor is a zeroing fallback posted
    /// after its engine's worker stopped: it fails with <see cref="BlockStatus.Offline"/> at once.
    /// An engine replaced by a new one for the same hardware queue (a restarted driver actor) is
    /// waited for as long as it holds requests.
    /// </remarks>
    public void Abandon()
    {
        FileEngine[] engines;
        lock (_enginesLock)
        {
            engines = [.. _engines.Values.Select(e => e.Engine), .. _retired];
        }

        var delay = 1;
        while (engines.Any(e => e.Outstanding > 0))
        {
            Thread.Sleep(delay);
            delay = Math.Min(delay * 2, 50);
        }
    }

    /// <inheritdoc />
    /// <remarks>
    /// Once the driver is disposed (the device destroyed, perhaps while this runs) its arena is
    /// gone: null, so the caller gets plain aligned memory, as when the arena is used up. The
    /// arena's <see cref="ObjectDisposedException"/> reached the application before.
    /// </remarks>
    public AlignedBuffer? AllocateBuffer(int length)
    {
        try
        {
            return _arena?.TryAllocate(length);
        }
        catch (ObjectDisposedException)
        {
            return null;
        }
    }

    /// <summary>
    /// Reports the holes of a regular file with <c>lseek(SEEK_DATA)</c> and <c>lseek(SEEK_HOLE)</c>,
    /// as qemu-nbd and nbdkit's file plugin do (<see cref="SeekHoleMap"/>): in whole logical
    /// blocks, a block partly allocated counting as data. Device offsets are file offsets (the
    /// device is the file's first <see cref="QueueLimits.CapacitySectors"/> sectors), so nothing
    /// past the device is reported. Cannot tell (every byte data) for a block device, on a file
    /// system without SEEK_HOLE (EINVAL: not asked again), past the end of a file cut since it was
    /// opened (reads there fail), after an error and once disposed.
    /// </summary>
    /// <remarks>
    /// Racy by nature, as qemu's answer is: a write in flight may fill a hole just reported as
    /// one. A write that completed before the question shows as data (Linux allocates a direct
    /// write's blocks before it completes; a buffered write is dirty in the page cache, which
    /// SEEK_DATA counts). A range zeroed with <c>FALLOC_FL_ZERO_RANGE</c> (a write-zeroes with
    /// <c>REQ_NOUNMAP</c>, NBD's NO_HOLE; one without punches a hole) or preallocated with
    /// <c>fallocate</c> (a file the device created) is unwritten on most file systems and
    /// reported as a hole: it reads as zeroes, which is what a client acts on. Once its pages
    /// are in the page cache (a buffered read of the file), ext4 reports it as data.
    /// </remarks>
    /// <inheritdoc />
    /// <exception cref="ArgumentOutOfRangeException">The range is empty or does not lie on the device.</exception>
    public bool TryGetExtent(long offset, long maxLength, out long length, out bool allocated)
    {
        IAllocationMap.CheckRange(offset, maxLength, _target.CapacityBytes);
        (length, allocated) = (0, true);
        if (_target.IsBlockDevice || Volatile.Read(ref _seekUnsupported) != 0)
        {
            return false;
        }

        switch (SeekHoleMap.Find(_target, offset, offset + maxLength, _target.LogicalBlockSize, out length, out allocated))
        {
            case SeekHoleAnswer.Extent:
                return true;
            case SeekHoleAnswer.Unsupported:
                Volatile.Write(ref _seekUnsupported, 1);
                break;
        }

        (length, allocated) = (0, true);
        return false;
    }

    /// <inheritdoc />
    public void Dispose()
    {
        _target.Dispose();
        _arena?.Dispose();
    }
}
