using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;

namespace ActorBlk.Hardware.Drivers.Stacking;

// Replacing a faulty leg by another device while the mirror runs: md's `mdadm --remove` of the
// faulty member, then `--add` of a new one into the empty slot, which becomes a spare, gets a
// superblock of this array and is recovered whole from the in-sync legs.
public sealed partial class MirrorTarget
{
    private readonly SemaphoreSlim _replaceLock = new(1, 1);

    // Set while a leg is being replaced: bios that arrive wait for it to end (md suspends the
    // array around a hot-add the same way, mddev_suspend), and the replacement waits for the bios
    // already in the mirror to end (_userIo back to 0), so none of them meets the other device.
    private Suspension? _suspended;

    /// <summary>
    /// The block layer's replacement of the leg in a slot by a member named as a table names it
    /// (slot, member; it ends when the device is in the slot): installed with the table, so that
    /// <c>md/new_dev</c> resolves, claims and holds the member as the block layer's
    /// <c>ReplaceMirrorLegAsync</c> does. Without it (a mirror built outside a block layer) the
    /// mirror has no <c>md/new_dev</c>.
    /// </summary>
    internal Func<int, string, Task>? LegReplacer { get; set; }

    /// <summary>
    /// Replaces the faulty leg <paramref name="leg"/> by <paramref name="device"/> while the mirror
    /// runs (md's <c>--remove</c> of the faulty member, then <c>--add</c> of a new one): user I/O
    /// is held back until the bios and the resync chunk in flight have ended, the device takes the
    /// slot, the slot becomes rebuilding (a spare) with every region of the bitmap dirty, and its
    /// superblock (this array's, this slot, rebuilding) and the others' are written. I/O then
    /// goes on, and a recovery copies the whole data area to the device from the in-sync legs,
    /// under the sync speed limits; the slot is in sync when it ends. A restart before that finds
    /// the slot rebuilding and copies the regions not yet copied.
    /// </summary>
    /// <returns>The device that was in the slot: nothing reaches it from the mirror any more, and the caller closes it.</returns>
    /// <exception cref="InvalidOperationException">The slot is not faulty (a re-add took the old device back meanwhile), the mirror has failed or stopped, the device is a leg of this mirror already or missing, or it cannot carry the mirror: read-only, smaller than the mirror's data and metadata (then a <see cref="MirrorLegTooSmallException"/>), of another block size, or with weaker limits than the mirror advertises.</exception>
    public async Task<IBlockDevice> ReplaceLegAsync(int leg, IBlockDevice device)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(leg);
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(leg, _legs.Length);
        ArgumentNullException.ThrowIfNull(device);
        await _replaceLock.WaitAsync().ConfigureAwait(false);
        try
        {
            CheckReplaceable(leg, device);

            // Hold new bios back and wait for those in flight, then for the resync's chunk (its
            // copy may still be writing to the old device), then for a metadata write.
            var suspension = new Suspension();
            Volatile.Write(ref _suspended, suspension);
            Interlocked.MemoryBarrier();
            RangeGate.Holder? held = null;
            var locked = false;
            IBlockDevice old;
            MirrorLegTakenBack takenBack;
            try
            {
                if (Interlocked.Read(ref _userIo) != 0)
                {
                    await suspension.Drained.Task.ConfigureAwait(false);
                }

                held = await _gate.EnterExclusiveAsync(0, DataBytes).ConfigureAwait(false);
                await _metaLock.WaitAsync().ConfigureAwait(false);
                locked = true;
                lock (_lock)
                {
                    // A re-add may have taken the old device back meanwhile, or the mirror failed.
                    CheckReplaceable(leg, device);
                    old = _legs[leg];
                    Unwatch(leg);
                    _legs[leg] = device;
                    SwapMember(old, device);
                    _state[leg] = MirrorLegState.Rebuilding;
                    _legEpoch[leg]++;
                    _missingAtStart[leg] = false;
                    _wholeOnReturn[leg] = false;
                    _recoveryOffset[leg] = 0;
                    _legWritten[leg] = 0;
                    Interlocked.Exchange(ref _correctedReads[leg], 0);

                    // Nothing of the array is on the device: every region is owed to it.
                    SetAllBits();
                    _generation++;

                    // The slot's history starts again here: a device in this slot whose superblock
                    // is older than this generation (the old device, named by a table after a
                    // restart) is not this one, and is copied whole rather than from the bitmap.
                    _lastInSync[leg] = _generation;
                    Watch(leg);
                    takenBack = new MirrorLegTakenBack(device.Name, MirrorLegReturn.Replacement, DirtyRegionsLocked());
                }

                _metaLock.Release();
                locked = false;

                // The slot's new state on the in-sync legs, then the new device's superblock
                // (PersistAsync writes the in-sync legs first), before any bio reaches the device.
                await PersistAsync(superblocks: true).ConfigureAwait(false);
            }
            finally
            {
                if (locked)
                {
                    _metaLock.Release();
                }

                if (held is not null)
                {
                    _gate.Exit(held);
                }

                Volatile.Write(ref _suspended, null);
                suspension.Resumed.TrySetResult();
            }

            Notify(LegTakenBack, takenBack);
            KickSync();
            return old;
        }
        finally
        {
            _replaceLock.Release();
        }
    }

    // The slot must be faulty and the device fit to carry the mirror, as for a re-add.
    private void CheckReplaceable(int leg, IBlockDevice device)
    {
        lock (_lock)
        {
            if (_failed || _stop.IsCancellationRequested)
            {
                throw new InvalidOperationException($"{_name}: the mirror has {(_failed ? "failed" : "stopped")}; no leg can be replaced.");
            }

            if (_state[leg] != MirrorLegState.Faulty)
            {
                throw new InvalidOperationException($"{_name}: leg {_legs[leg].Name} (slot {leg}) is {State(_state[leg])}, not faulty: only a faulty leg is replaced (fail it first).");
            }

            var at = Array.IndexOf(_legs, device);
            if (at >= 0)
            {
                throw new InvalidOperationException(at == leg
                    ? $"{_name}: {device.Name} is the faulty leg of slot {leg} itself: re-add it instead."
                    : $"{_name}: {device.Name} is leg {at} of this mirror already.");
            }
        }

        if (device is IReconnectingBlockDevice { IsMissing: true })
        {
            throw new InvalidOperationException($"{_name}: {device.Name} is missing (its device has not appeared).");
        }

        CheckFits(device, "replace a leg");
    }

    // A bio arriving while a leg is replaced: submitted when the replacement ends.
    private async Task SubmitAfterAsync(Suspension suspension, RequestQueue queue, Bio bio)
    {
        await suspension.Resumed.Task.ConfigureAwait(false);
        SubmitBio(queue, bio);
    }

    // A bio of the mirror has ended (or has gone to wait for a replacement to end).
    private void LeaveUserIo()
    {
        if (Interlocked.Decrement(ref _userIo) == 0 && Volatile.Read(ref _suspended) is { } suspension)
        {
            suspension.Drained.TrySetResult();
        }
    }

    private sealed class Suspension
    {
        public TaskCompletionSource Drained { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public TaskCompletionSource Resumed { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
    }
}
