using ActorBlk.Hardware.Devices;

namespace ActorBlk.Hardware.Drivers.Stacking;

// The mirror's allocation map (NBD block status, base:allocation): the holes of a leg whose bytes
// are the ones a read returns. In-sync legs hold the same bytes, so any of them tells, and the
// first that keeps a map is asked (a local file leg rather than a remote one, which cannot tell);
// a leg being rebuilt is never asked. After a crash, in-sync legs may differ where the resync has
// not been yet, and reads there come from the lowest in-sync leg (FirstInSync), so that leg alone
// is asked until the resync ends. Holes read as zeroes on every kind of leg, and a region one leg
// has as a hole and another as written zeroes reads the same from both.
public sealed partial class MirrorTarget : IAllocationMap
{
    /// <summary>
    /// Describes the extent at <paramref name="offset"/> as an in-sync leg's map reports it (the
    /// first in-sync leg with a map; after a crash, until the resync ends, the leg reads come from).
    /// Nothing can tell when no such leg keeps a map, or the mirror has failed: the range is then
    /// data, which is always safe.
    /// </summary>
    /// <inheritdoc />
    /// <exception cref="ArgumentOutOfRangeException">The range is empty or does not lie on the device.</exception>
    public bool TryGetExtent(long offset, long maxLength, out long length, out bool allocated)
    {
        CheckExtentRange(offset, maxLength);
        (length, allocated) = (maxLength, true);
        if (Volatile.Read(ref _failed))
        {
            return false;
        }

        var onlyFirst = Volatile.Read(ref _resyncAfterCrash);
        for (var leg = 0; leg < _legs.Length; leg++)
        {
            if (InSyncLeg(leg) is not { } device)
            {
                continue;
            }

            try
            {
                if (IAllocationMap.Of(device) is { } map
                    && TryMemberExtent(map, MirrorSuperblock.DataOffset + offset, offset, maxLength, out length, out allocated))
                {
                    return true;
                }
            }
            catch (Exception)
            {
                // The leg changed under us (removed, or replaced meanwhile), or a custom driver's
                // map threw: ask the next.
            }

            (length, allocated) = (maxLength, true);
            if (onlyFirst)
            {
                return false;
            }
        }

        return false;
    }

    /// <summary>
    /// As <see cref="TryGetExtent"/>, asking the legs' maps without blocking: an in-sync remote leg
    /// (an NBD client's <c>base:allocation</c>) answers over the network, so a mirror whose in-sync
    /// legs are remote reports holes too. A leg that cannot tell, or whose map throws, passes the
    /// question to the next (after a crash, until the resync ends, only the leg reads come from is asked).
    /// </summary>
    /// <inheritdoc />
    /// <exception cref="ArgumentOutOfRangeException">The range is empty or does not lie on the device.</exception>
    public async ValueTask<AllocationExtent?> GetExtentAsync(long offset, long maxLength, CancellationToken cancellationToken = default)
    {
        CheckExtentRange(offset, maxLength);
        if (Volatile.Read(ref _failed))
        {
            return null;
        }

        var onlyFirst = Volatile.Read(ref _resyncAfterCrash);
        for (var leg = 0; leg < _legs.Length; leg++)
        {
            if (InSyncLeg(leg) is not { } device)
            {
                continue;
            }

            try
            {
                if (IAllocationMap.Of(device) is { } map
                    && await TryMemberExtentAsync(map, MirrorSuperblock.DataOffset + offset, offset, maxLength, cancellationToken).ConfigureAwait(false) is { } extent)
                {
                    // Still in sync after the wait: a leg that failed or was replaced meanwhile
                    // may no longer hold the bytes reads return.
                    if (ReferenceEquals(InSyncLeg(leg), device))
                    {
                        return extent;
                    }
                }
            }
            catch (Exception ex) when (ex is not OperationCanceledException || !cancellationToken.IsCancellationRequested)
            {
                // The leg changed under us (removed, or replaced meanwhile), or a custom driver's
                // map threw: ask the next.
            }

            if (onlyFirst)
            {
                return null;
            }
        }

        return null;
    }

    // The device in slot leg when that leg is in sync, else null. State and device are read
    // together: a faulty leg's slot can be given another device (ReplaceLegAsync), which is rebuilding.
    private IBlockDevice? InSyncLeg(int leg)
    {
        lock (_lock)
        {
            return _state[leg] == MirrorLegState.InSync ? _legs[leg] : null;
        }
    }
}
