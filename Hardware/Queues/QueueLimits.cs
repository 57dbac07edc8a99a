using System.Numerics;
using ActorBlk.Hardware.Requests;

namespace ActorBlk.Hardware.Queues;

/// <summary>
/// The device's I/O limits (<c>struct queue_limits</c>): block sizes, capacity and the largest
/// request the layer will build. Merges and splits respect them.
/// </summary>
public sealed record QueueLimits
{
    /// <summary>Default upper bound of a request (<c>BLK_DEF_MAX_SECTORS_CAP</c>: 2560 sectors, 1280 KiB).</summary>
    public const int DefaultMaxSectors = 2560;

    /// <summary>Default number of segments per request (<c>BLK_MAX_SEGMENTS</c>).</summary>
    public const int DefaultMaxSegments = 128;

    /// <summary>Smallest addressable unit in bytes (512..4096, a power of two). Offsets and lengths must be multiples of it.</summary>
    public int LogicalBlockSize { get; init; } = 512;

    /// <summary>Smallest unit the device writes without read-modify-write, in bytes.</summary>
    public int PhysicalBlockSize { get; init; } = 512;

    /// <summary>Capacity in 512-byte sectors.</summary>
    public long CapacitySectors { get; init; }

    /// <summary>Largest request the hardware accepts, in sectors (<c>max_hw_sectors</c>).</summary>
    public int MaxHardwareSectors { get; init; } = DefaultMaxSectors;

    /// <summary>Largest request the layer builds, in sectors (<c>max_sectors</c>, at most <see cref="MaxHardwareSectors"/>).</summary>
    public int MaxSectors { get; init; } = DefaultMaxSectors;

    /// <summary>Most segments (bios) in one request (<c>max_segments</c>).</summary>
    public int MaxSegments { get; init; } = DefaultMaxSegments;

    /// <summary>
    /// Alignment in bytes that data buffers need to go to the device without a copy (the sysfs
    /// <c>dma_alignment</c> plus one; 1 means any address). Buffers that miss it still work: the
    /// driver bounces them through aligned memory.
    /// </summary>
    public int MemoryAlignment { get; init; } = 1;

    /// <summary>Largest discard in sectors; 0 means discard is not supported.</summary>
    public int MaxDiscardSectors { get; init; }

    /// <summary>Largest write-zeroes in sectors; 0 means it is not supported.</summary>
    public int MaxWriteZeroesSectors { get; init; }

    /// <summary>
    /// Write-zeroes is fast: the driver never zeroes by writing buffers of zeroes, and honours
    /// <see cref="RequestFlags.NoFallback"/> (NBD's <c>NBD_FLAG_SEND_FAST_ZERO</c> on an export of
    /// the device). True for the local drivers (an allocation-map or <c>fallocate</c> operation);
    /// an NBD client device has it only when its server advertised fast zero; a linear or striped
    /// device only when every member has write-zeroes and has it fast. Meaningless when
    /// <see cref="MaxWriteZeroesSectors"/> is 0.
    /// </summary>
    public bool FastWriteZeroes { get; init; } = true;

    /// <summary>The device has a volatile write cache, so flush and FUA mean something (<c>write_cache</c>).</summary>
    public bool VolatileWriteCache { get; init; }

    /// <summary>The device honours FUA writes natively.</summary>
    public bool Fua { get; init; }

    /// <summary>Capacity in bytes.</summary>
    public long CapacityBytes => CapacitySectors << Bio.SectorShift;

    /// <summary>Throws when the limits are inconsistent.</summary>
    /// <exception cref="ArgumentException">A limit is out of range.</exception>
    public void Validate()
    {
        if (LogicalBlockSize is < 512 or > 65536 || !BitOperations.IsPow2(LogicalBlockSize))
        {
            throw new ArgumentOutOfRangeException(nameof(LogicalBlockSize), LogicalBlockSize, "The logical block size must be a power of two from 512 to 65536.");
        }

        if (PhysicalBlockSize < LogicalBlockSize || !BitOperations.IsPow2(PhysicalBlockSize))
        {
            throw new ArgumentOutOfRangeException(nameof(PhysicalBlockSize), PhysicalBlockSize, "The physical block size must be a power of two not below the logical block size.");
        }

        if (CapacitySectors < 0 || (CapacitySectors << Bio.SectorShift) % LogicalBlockSize != 0)
        {
            throw new ArgumentOutOfRangeException(nameof(CapacitySectors), CapacitySectors, "The capacity must be a whole number of logical blocks.");
        }

        var lbsSectors = LogicalBlockSize >> Bio.SectorShift;
        if (MaxHardwareSectors < lbsSectors || MaxSectors < lbsSectors || MaxSectors > MaxHardwareSectors)
        {
            throw new ArgumentOutOfRangeException(nameof(MaxSectors), MaxSectors, "max_sectors must hold one logical block and not exceed max_hw_sectors.");
        }

        if (MemoryAlignment < 1 || !BitOperations.IsPow2(MemoryAlignment))
        {
            throw new ArgumentOutOfRangeException(nameof(MemoryAlignment), MemoryAlignment, "The memory alignment must be a power of two.");
        }

        if (MaxSegments < 1)
        {
            throw new ArgumentOutOfRangeException(nameof(MaxSegments), MaxSegments, "max_segments must be at least 1.");
        }
    }
}
