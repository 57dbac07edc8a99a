using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Queues;

namespace ActorBlk.Hardware.Drivers;

/// <summary>
/// A driver that knows which parts of its medium hold data and which are holes that read as
/// zeroes (what SEEK_DATA/SEEK_HOLE or NBD's <c>base:allocation</c> report). Optional: a driver
/// without it is taken to hold data everywhere.
/// </summary>
public interface IAllocationMap
{
    /// <summary>
    /// The allocation map of <paramref name="device"/>'s driver (a multi-queue driver's, or a
    /// bio-based queue's current target's), or null when it has none. Asked each time rather
    /// than kept: a stacked device's table can be swapped while it runs.
    /// </summary>
    /// <param name="device">The device.</param>
    static IAllocationMap? Of(IBlockDevice device)
    {
        ArgumentNullException.ThrowIfNull(device);
        var queue = device.Queue;
        return queue.Kind switch
        {
            QueueKind.MultiQueue => queue.Driver as IAllocationMap,
            QueueKind.BioBased => queue.BioDriver as IAllocationMap,
            _ => null,
        };
    }

    /// <summary>
    /// Describes the extent that starts at <paramref name="offset"/>: a run of bytes that are all
    /// allocated or all holes, at most <paramref name="maxLength"/> long.
    /// </summary>
    /// <param name="offset">Byte offset on the device.</param>
    /// <param name="maxLength">Longest extent to report (positive; the range lies on the device).</param>
    /// <param name="length">Length of the extent in bytes (1..<paramref name="maxLength"/>) when known.</param>
    /// <param name="allocated"><see langword="true"/> for data, <see langword="false"/> for a hole that reads as zeroes.</param>
    /// <returns><see langword="false"/> when this instance cannot tell (then every byte counts as data).</returns>
    bool TryGetExtent(long offset, long maxLength, out long length, out bool allocated);

    /// <summary>
    /// Describes the extent that starts at <paramref name="offset"/> as <see cref="TryGetExtent"/>
    /// does, for a map that may have to ask over the network (an NBD client's <c>base:allocation</c>):
    /// it never blocks a thread waiting for an answer. The default calls <see cref="TryGetExtent"/>
    /// and completes synchronously.
    /// </summary>
    /// <param name="offset">Byte offset on the device.</param>
    /// <param name="maxLength">Longest extent to report (positive; the range lies on the device).</param>
    /// <param name="cancellationToken">Gives the question up: the answer is then null.</param>
    /// <returns>The extent, or null when this instance cannot tell (then every byte counts as data).</returns>
    ValueTask<AllocationExtent?> GetExtentAsync(long offset, long maxLength, CancellationToken cancellationToken = default) =>
        ValueTask.FromResult<AllocationExtent?>(TryGetExtent(offset, maxLength, out var length, out var allocated) ? new AllocationExtent(length, allocated) : null);

    /// <summary>
    /// The checks of <see cref="TryGetExtent"/> a map makes: a range that is not empty and lies
    /// on a device of <paramref name="capacity"/> bytes.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">The range is empty or does not lie on the device.</exception>
    internal static void CheckRange(long offset, long maxLength, long capacity)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(offset);
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(offset, capacity);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(maxLength);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(maxLength, capacity - offset);
    }
}

/// <summary>One extent of an allocation map (<see cref="IAllocationMap.GetExtentAsync"/>).</summary>
/// <param name="Length">Length of the extent in bytes.</param>
/// <param name="Allocated"><see langword="true"/> for data, <see langword="false"/> for a hole that reads as zeroes.</param>
public readonly record struct AllocationExtent(long Length, bool Allocated);
