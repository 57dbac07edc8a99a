using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Requests;

namespace ActorBlk.Hardware.Drivers.Stacking;

// Assembly: reading the legs' superblocks and deciding each leg's part (md's assemble).
public sealed partial class MirrorTarget
{
    /// <summary>
    /// Reads the legs' superblocks and starts the mirror (md's assemble): legs whose generation is
    /// the newest are the sources; an older leg the newest ones recorded as faulty is re-added and
    /// resynced for the bitmap's dirty regions; a blank leg is resynced whole. All legs blank make
    /// a new mirror whose first leg is the source (every leg in sync with
    /// <see cref="MirrorOptions.AssumeClean"/>). With <see cref="MirrorOptions.StartDegraded"/>, a leg
    /// whose device is missing (<see cref="IReconnectingBlockDevice.IsMissing"/>) starts faulty, its
    /// slot recorded so on the present legs, and is re-added by itself when its device appears; the
    /// present legs must hold the mirror's metadata (a missing leg never makes a new mirror).
    /// </summary>
    /// <exception cref="ArgumentException">Fewer than 2 or more than 3 legs, a leg twice, legs of different block sizes, a leg with no room for the metadata area and one sync chunk, or a leg missing without <see cref="MirrorOptions.StartDegraded"/> (every leg missing, even with it).</exception>
    /// <exception cref="MirrorAssemblyException">The legs belong to different mirrors, were written apart (none is clearly newest), none is in sync, a leg is missing and no present leg holds the mirror's metadata, or a present leg is smaller than the data its legs' metadata records plus the metadata area (named, with both sizes).</exception>
    public static async Task<MirrorTarget> AssembleAsync(string name, IReadOnlyList<IBlockDevice> legs, MirrorOptions? options = null, TimeProvider? time = null,
        CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(name);
        ArgumentNullException.ThrowIfNull(legs);
        options ??= new MirrorOptions();
        options.Validate();
        if (legs.Count is < 2 or > MirrorSuperblock.MaxLegs || legs.Distinct().Count() != legs.Count)
        {
            throw new ArgumentException($"A mirror needs 2 or 3 distinct legs, not {legs.Count}.", nameof(legs));
        }

        // A missing leg (its device has not appeared) is looked at no further: its incarnation is
        // read before whether it is missing, so a device appearing meanwhile is either taken as
        // present or seen as a reconnection after the start (WatchReconnects).
        var missingAt = new int[legs.Count];
        var missing = new bool[legs.Count];
        for (var i = 0; i < legs.Count; i++)
        {
            if (legs[i] is IReconnectingBlockDevice reconnecting)
            {
                missingAt[i] = reconnecting.Incarnation;
                missing[i] = reconnecting.IsMissing;
            }
        }

        if (missing.Any(m => m) && !options.StartDegraded)
        {
            throw new ArgumentException($"mirror leg {legs[Array.IndexOf(missing, true)].Name} is missing (its device has not appeared) and the mirror does not start degraded.", nameof(legs));
        }

        if (missing.All(m => m))
        {
            throw new ArgumentException("every mirror leg is missing: a mirror starts degraded with one present leg at least.", nameof(legs));
        }

        IBlockDevice[] present = [.. legs.Where((_, i) => !missing[i])];
        if (present.FirstOrDefault(l => l.IsReadOnly) is { } readOnly)
        {
            // md opens its members for writing and refuses one it cannot write; this mirror used to
            // start with the leg kicked out, degraded without saying why (an outside audit).
            throw new ArgumentException($"mirror leg {readOnly.Name} is read-only: a mirror writes every leg.", nameof(legs));
        }

        var lbs = present[0].LogicalBlockSize;
        if (present.Any(l => l.LogicalBlockSize != lbs) || MirrorSuperblock.SuperblockBytes % lbs != 0)
        {
            throw new ArgumentException($"mirror legs must share one logical block size of at most 4096 bytes ({string.Join(", ", present.Select(l => $"{l.Name}: {l.LogicalBlockSize}"))}).", nameof(legs));
        }

        // Named, with its size: the refusal used to give the smallest size only, and (below) the
        // mirror's size only, leaving the operator to find which leg was too small and by how much.
        var smallestLeg = present.MinBy(l => l.Capacity)!;
        var smallest = smallestLeg.Capacity;
        if (smallest < MirrorSuperblock.DataOffset + SyncChunkBytes)
        {
            throw new ArgumentException($"mirror leg {smallestLeg.Name} holds {smallest} bytes: a leg must hold at least the {MirrorSuperblock.DataOffset >> 10} KiB metadata area and one {SyncChunkBytes >> 10} KiB chunk ({MirrorSuperblock.DataOffset + SyncChunkBytes} bytes).", nameof(legs));
        }

        // Superblocks; a leg that cannot be read starts faulty.
        var blocks = new MirrorSuperblock?[legs.Count];
        var unreadable = new bool[legs.Count];
        using (var buffer = new AlignedBuffer(MirrorSuperblock.SuperblockBytes, Math.Max(AlignedBuffer.PageAlignment, present.Max(l => l.MemoryAlignment))))
        {
            for (var i = 0; i < legs.Count; i++)
            {
                cancellationToken.ThrowIfCancellationRequested();
                if (missing[i])
                {
                    continue;
                }

                var status = await SafeIo(legs[i], BlockOp.Read, 0, MirrorSuperblock.SuperblockBytes, buffer.Memory, RequestFlags.Sync).ConfigureAwait(false);
                unreadable[i] = status != BlockStatus.Ok;
                blocks[i] = status == BlockStatus.Ok ? MirrorSuperblock.TryDecode(buffer.Memory.Span) : null;
            }
        }

        var plan = Plan(name, legs, blocks, unreadable, missing);
        var existing = plan.Reference;
        var dataBytes = existing?.DataBytes ?? (smallest - MirrorSuperblock.DataOffset) / lbs * lbs;
        if (dataBytes > smallest - MirrorSuperblock.DataOffset)
        {
            // md's "disk too small" for a member smaller than the array it belongs to.
            var tooSmall = present.First(l => l.Capacity - MirrorSuperblock.DataOffset < dataBytes);
            throw new MirrorAssemblyException(name, $"leg {tooSmall.Name} holds {tooSmall.Capacity} bytes, fewer than the mirror's {dataBytes} bytes of data and {MirrorSuperblock.DataOffset >> 10} KiB of metadata: too small to assemble.");
        }

        var regionBytes = existing?.RegionBytes ?? options.RegionBytes;
        while ((dataBytes + regionBytes - 1) / regionBytes > MirrorSuperblock.MaxRegions)
        {
            regionBytes *= 2;
        }

        var target = new MirrorTarget(name, legs, options, dataBytes, regionBytes, existing?.ArrayId ?? Guid.NewGuid(), time ?? TimeProvider.System);
        await target.StartAsync(plan, existing is null && options.AssumeClean, [.. missingAt.Select((at, i) => missing[i] ? at : -1)]).ConfigureAwait(false);
        return target;
    }

    // ------------------------------------------------------------------ assembly

    // Written: per leg, the generation of its own superblock as read (0 when it has none, is missing or unreadable).
    // WholeOnReturn and LastHeld: per leg that starts faulty, as the newest legs record it (a leg they record faulty and copied whole on return).
    // RecoveryOffset: per leg resumed from the bitmap, the data byte below which the newest legs record it in step (0 for the others).
    private sealed record AssemblyPlan(MirrorSuperblock? Reference, MirrorLegState[] States, long[] LastInSync, long[] Written, long Generation, bool FullResync,
        bool[] WholeOnReturn, long[] LastHeld, long[] RecoveryOffset);

    // Decides each leg's part from the superblocks, or refuses (md's super_1_validate / analyse_sbs).
    private static AssemblyPlan Plan(string name, IReadOnlyList<IBlockDevice> legs, MirrorSuperblock?[] blocks, bool[] unreadable, bool[] missing)
    {
        var n = legs.Count;
        var states = new MirrorLegState[n];
        var last = new long[n];
        var known = Enumerable.Range(0, n).Where(i => blocks[i] is not null).ToArray();
        if (known.Length == 0)
        {
            if (missing.Any(m => m))
            {
                // md creates over a "missing" slot only when told to at create time: here a blank
                // present leg may as well be a replaced disk, and the missing leg the only copy.
                throw new MirrorAssemblyException(name, $"leg(s) {string.Join(", ", Enumerable.Range(0, n).Where(i => missing[i]).Select(i => legs[i].Name))} are missing and no present leg holds mirror metadata: "
                    + "a mirror does not start degraded as a new one (the missing leg may hold its only copy); create it with every leg present.");
            }

            if (unreadable.Any(u => u))
            {
                throw new MirrorAssemblyException(name, $"leg(s) {string.Join(", ", Enumerable.Range(0, n).Where(i => unreadable[i]).Select(i => legs[i].Name))} cannot be read and no leg holds mirror metadata.");
            }

            return new AssemblyPlan(null, states, last, new long[n], 0, true, new bool[n], new long[n], new long[n]);
        }

        var ids = known.Select(i => blocks[i]!.ArrayId).Distinct().ToArray();
        if (ids.Length > 1)
        {
            throw new MirrorAssemblyException(name, $"the legs belong to different mirrors ({string.Join(", ", known.Select(i => $"{legs[i].Name}: {blocks[i]!.ArrayId}"))}).");
        }

        foreach (var i in known)
        {
            if (blocks[i]!.Role != i || blocks[i]!.Legs != n)
            {
                throw new MirrorAssemblyException(name, $"leg {legs[i].Name} is leg {blocks[i]!.Role} of {blocks[i]!.Legs} in its metadata, but leg {i} of {n} in the table.");
            }
        }

        var newest = known.Max(i => blocks[i]!.Generation);
        var sources = known.Where(i => blocks[i]!.Generation == newest && blocks[i]!.States[i] == MirrorLegState.InSync).ToArray();
        if (sources.Length == 0)
        {
            throw new MirrorAssemblyException(name, $"no leg of the newest generation ({newest}) is in sync: nothing to read from.");
        }

        var reference = blocks[sources[0]]!;
        foreach (var s in sources.Skip(1))
        {
            if (!blocks[s]!.States.AsSpan(0, n).SequenceEqual(reference.States.AsSpan(0, n)))
            {
                throw new MirrorAssemblyException(name, $"legs {legs[sources[0]].Name} and {legs[s].Name} both have generation {newest} but disagree about the legs' states; none is clearly newest.");
            }
        }

        var full = false;
        for (var i = 0; i < n; i++)
        {
            last[i] = reference.LastInSync[i];
            if (sources.Contains(i))
            {
                states[i] = MirrorLegState.InSync;
                continue;
            }

            if (missing[i])
            {
                // Started without it (mdadm --run): faulty, whatever the newest metadata says of it.
                // Counted in sync or rebuilding by the newest legs, it was written with them up to
                // their generation: that is its last in sync here (a superblock of it newer than
                // that was written apart, WrittenApart); counted faulty, the generation it failed in.
                states[i] = MirrorLegState.Faulty;
                if (reference.States[i] != MirrorLegState.Faulty)
                {
                    last[i] = newest;
                }

                continue;
            }

            if (unreadable[i])
            {
                // Known faulty: start without it. Counted in sync by the newest readable legs: it
                // may be newer than all of them, so no source can be chosen.
                if (reference.States[i] == MirrorLegState.InSync)
                {
                    throw new MirrorAssemblyException(name, $"leg {legs[i].Name} cannot be read and the newest readable metadata (generation {newest}) counts it in sync: "
                        + "it may hold newer writes, so no leg is clearly newest.");
                }

                states[i] = MirrorLegState.Faulty;
                continue;
            }

            var sb = blocks[i];
            if (sb is null)
            {
                // A new or wiped leg: copied whole.
                states[i] = MirrorLegState.Rebuilding;
                full = true;
                continue;
            }

            // A leg that went on as a source while recording a newest source as faulty was written
            // apart from it (a split brain): refuse rather than pick one. Not so a leg the newest
            // legs record faulty (or rebuilding: its re-add's superblock did not reach it) whose
            // superblock is no newer than the last generation they counted it in sync at (for a
            // leg copied whole on return, the one before its slot's was raised): it failed in their
            // own history, after recording the other leg faulty with them, and that leg came back
            // after it failed (WrittenApart's rule at run time). It is a stale leg (below).
            if (sb.States[i] == MirrorLegState.InSync && sources.Any(s => sb.States[s] == MirrorLegState.Faulty)
                && !(reference.States[i] is MirrorLegState.Faulty or MirrorLegState.Rebuilding
                     && sb.Generation <= (reference.WholeOnReturn[i] ? reference.LastHeld[i] : reference.LastInSync[i])))
            {
                throw new MirrorAssemblyException(name, $"leg {legs[i].Name} (generation {sb.Generation}) was written while it counted {string.Join(", ", sources.Where(s => sb.States[s] == MirrorLegState.Faulty).Select(s => legs[s].Name))} faulty, "
                    + $"and that leg went on without it up to generation {newest}: the legs were written apart and none is clearly newest.");
            }

            // Recorded faulty or rebuilding by the newest legs: the bitmap holds every region it
            // missed since the slot was last in sync, if this device is the one that was: its
            // superblock is then at least that generation. An older one is another device, or an
            // older copy of it (the device the slot held before a replacement, named again by
            // the table after a restart), whose missed writes no bitmap covers (md refuses a
            // bitmap re-add below the bitmap's events_cleared). Otherwise (they think it in sync
            // but it is behind, as after a crash between superblock writes) no bitmap covers it
            // either: copy it whole.
            states[i] = MirrorLegState.Rebuilding;
            full |= reference.States[i] is not (MirrorLegState.Faulty or MirrorLegState.Rebuilding)
                || sb.Generation < reference.LastInSync[i];
        }

        // A leg they record faulty and copied whole on return stays so while it is out; taken back
        // here (present), it was made rebuilding above and is copied whole (its superblock is older
        // than its raised last generation in sync).
        var whole = new bool[n];
        var held = new long[n];
        for (var i = 0; i < n; i++)
        {
            if (states[i] == MirrorLegState.Faulty && reference.States[i] == MirrorLegState.Faulty && reference.WholeOnReturn[i])
            {
                whole[i] = true;
                held[i] = reference.LastHeld[i];
            }
        }

        // A leg they record rebuilding with a recovery offset, resumed from the bitmap (this device
        // took the checkpoint that recorded the offset: its superblock is at least its slot's last
        // generation in sync), holds every region below it: its recovery starts there. Copied
        // whole (any leg is: every bit set), it starts from the first region.
        var offsets = new long[n];
        for (var i = 0; i < n && !full; i++)
        {
            if (states[i] == MirrorLegState.Rebuilding && reference.States[i] == MirrorLegState.Rebuilding
                && blocks[i] is { } own && own.Generation >= reference.LastInSync[i])
            {
                offsets[i] = reference.RecoveryOffset[i];
            }
        }

        return new AssemblyPlan(reference, states, last, [.. blocks.Select(b => b?.Generation ?? 0)], newest, full, whole, held, offsets);
    }

    private async Task StartAsync(AssemblyPlan plan, bool assumeClean, int[] missingAt)
    {
        if (plan.Reference is { } reference)
        {
            // The bitmap of a newest in-sync leg.
            var source = Array.IndexOf(plan.States, MirrorLegState.InSync);
            var pages = _pageVersion.Length;
            using var buffer = new AlignedBuffer(pages * MirrorSuperblock.BitmapPageBytes, Math.Max(AlignedBuffer.PageAlignment, _legs[source].MemoryAlignment));
            var status = await SafeIo(_legs[source], BlockOp.Read, MirrorSuperblock.SuperblockBytes, buffer.Length, buffer.Memory, RequestFlags.Sync).ConfigureAwait(false);
            if (status != BlockStatus.Ok)
            {
                throw new MirrorAssemblyException(_name, $"the write-intent bitmap of {_legs[source].Name} cannot be read ({status}).");
            }

            var bytes = buffer.Memory.Span;
            for (var r = 0; r < Regions; r++)
            {
                if ((bytes[r >> 3] & (1 << (r & 7))) != 0)
                {
                    _bits[r >> 6] |= 1UL << (r & 63);
                }
            }
        }

        lock (_lock)
        {
            Array.Copy(plan.States, _state, _state.Length);
            Array.Copy(plan.LastInSync, _lastInSync, _lastInSync.Length);
            Array.Copy(plan.Written, _legWritten, _legWritten.Length);
            Array.Copy(plan.WholeOnReturn, _wholeOnReturn, _wholeOnReturn.Length);
            Array.Copy(plan.LastHeld, _lastHeld, _lastHeld.Length);
            for (var i = 0; i < _recoveryOffset.Length; i++)
            {
                _recoveryOffset[i] = plan.RecoveryOffset[i] >= DataBytes ? Regions : (int)(plan.RecoveryOffset[i] / RegionBytes);
            }

            for (var i = 0; i < _missingAtStart.Length; i++)
            {
                _missingAtStart[i] = missingAt[i] >= 0;
            }
            _generation = plan.Generation + 1;
            if (plan.Reference is null)
            {
                // A new mirror: the first leg is the source unless the caller vouches the legs are equal.
                for (var i = 0; i < _state.Length; i++)
                {
                    _state[i] = i == 0 || assumeClean ? MirrorLegState.InSync : MirrorLegState.Rebuilding;
                }
            }

            if ((plan.FullResync && _state.Any(s => s == MirrorLegState.Rebuilding)) || plan.Reference is null && !assumeClean)
            {
                SetAllBits();
            }

            // No clean stop and bits set: the mirror stopped with writes in flight (a crash), so the
            // in-sync legs may differ in those regions. As md's resync after an unclean shutdown,
            // they stay in sync (each holds every acknowledged write, so any of them can carry the
            // mirror if the others fail), those regions are read from the first in-sync leg only,
            // and the resync copies them from it to the others. With one leg in sync there is
            // nothing to make equal (md's raid1_run sets recovery_cp to MaxSector when one disk
            // works): a leg rebuilding is recovered ("recover") from the bitmap, which holds
            // those regions too.
            if (plan.Reference is { Clean: false } && _bits.Any(w => w != 0) && _state.Count(s => s == MirrorLegState.InSync) > 1)
            {
                _resyncAfterCrash = true;
                _crashPending = [.. _bits];
            }

            BumpPages();
        }

        await PersistAsync(superblocks: true).ConfigureAwait(false);
        lock (_lock)
        {
            if (_state.All(s => s != MirrorLegState.InSync))
            {
                throw new MirrorAssemblyException(_name, "every leg failed while the mirror started.");
            }
        }

        KickSync();
        _ = BitmapDaemonAsync();
        WatchReconnects(missingAt);
    }
}
