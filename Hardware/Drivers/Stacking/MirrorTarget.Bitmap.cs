using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Requests;

namespace ActorBlk.Hardware.Drivers.Stacking;

// Leg failure, the write-intent bitmap and the metadata writes.
public sealed partial class MirrorTarget
{
    // ------------------------------------------------------------------ leg failure and metadata

    // Marks a leg faulty and writes the new state to the legs left; completes when that is on them.
    // The last leg in sync failing fails the mirror: every I/O then ends Offline.
    // device: the device that failed, when the failure may come after a replacement of the leg
    // (a disconnection, a metadata write): the device now in the slot is not failed for it.
    private async Task FailLeg(int leg, IBlockDevice? device = null)
    {
        await MarkFaulty(leg, device).ConfigureAwait(false);
        TakeBack(leg);
    }

    private Task MarkFaulty(int leg, IBlockDevice? device)
    {
        Task persisted;
        int inSync;
        CancellationTokenSource? interrupt;
        lock (_lock)
        {
            if (device is not null && !ReferenceEquals(_legs[leg], device))
            {
                // Replaced meanwhile (ReplaceLegAsync): the old device's failure is not the new one's.
                return Task.CompletedTask;
            }

            if (_state[leg] == MirrorLegState.Faulty)
            {
                // Another I/O failed it first; this one waits until that is on the legs too.
                return _failed ? Task.CompletedTask : PersistAsync(superblocks: true);
            }

            if (_state[leg] == MirrorLegState.InSync)
            {
                _lastInSync[leg] = Math.Min(_generation, _legWritten[leg]);
            }

            _state[leg] = MirrorLegState.Faulty;
            _legEpoch[leg]++;

            // Its re-add copies every region whose bit is set (those below the offset too).
            _recoveryOffset[leg] = 0;

            // Its cache may have lost the writes of the regions cleared since the last flush.
            SetBitsAgain(_clearedUnflushed);
            Array.Clear(_clearedUnflushed);
            inSync = _state.Count(s => s == MirrorLegState.InSync);

            // md_error interrupts the sync running: a check or repair stops; a recovery stops once
            // it has no leg left to copy to (while one is left it goes on for it, as md's next
            // recovery would), and releases the range it holds at its next chunk.
            interrupt = _passStop is { } pass && (_passIsCheck || !PassHasTargets()) ? pass : null;
            if (inSync > 0)
            {
                _generation++;
                persisted = PersistAsync(superblocks: true);
            }
            else
            {
                Volatile.Write(ref _failed, true);
                persisted = Task.CompletedTask;
            }
        }

        // Outside the lock: the listeners log, and cancelling runs the sync's continuations.
        var name = _legs[leg].Name;
        Listeners.Raise(LegFailed, handler => handler(name, inSync, _legs.Length));
        if (inSync == 0)
        {
            _stop.Cancel();
        }
        else if (interrupt is not null)
        {
            try
            {
                // Not Cancel: the pass's awaits would go on here, on the thread that failed the leg
                // (a leg's completion, which must not block), with the pass's end and the next one.
                _ = interrupt.CancelAsync();
            }
            catch (ObjectDisposedException)
            {
                // The pass ended meanwhile.
            }
        }

        return persisted;
    }

    private void SetAllBits()
    {
        for (var r = 0; r < Regions; r++)
        {
            _bits[r >> 6] |= 1UL << (r & 63);
        }

        BumpPages();
    }

    // Under _lock: the bits of cleared (a copy of _clearedUnflushed) are set again.
    private void SetBitsAgain(ulong[] cleared)
    {
        for (var w = 0; w < cleared.Length; w++)
        {
            if (cleared[w] != 0)
            {
                _bits[w] |= cleared[w];
                _pageVersion[w * 64 / (MirrorSuperblock.BitmapPageBytes * 8)]++;
            }
        }
    }

    private void BumpPages()
    {
        for (var p = 0; p < _pageVersion.Length; p++)
        {
            _pageVersion[p]++;
        }
    }

    // Counts a write in its regions, sets their bits and returns once the pages holding them are
    // on every in-sync leg. A write below a rebuilding leg's recovery offset lowers the offset to
    // its first region and returns once the superblocks say so: should the mirror crash with the
    // write on one leg and not on the other, the restart copies that region again (its bit is set)
    // rather than count the rebuilding leg in step there. The next checkpoint raises it again.
    private Task MarkDirtyAsync(long offset, int length)
    {
        var (first, last) = RegionsOf(offset, length);
        var firstPage = first / (MirrorSuperblock.BitmapPageBytes * 8);
        var lastPage = last / (MirrorSuperblock.BitmapPageBytes * 8);
        var clean = true;
        var lowered = false;
        lock (_lock)
        {
            for (var i = 0; i < _legs.Length; i++)
            {
                if (_state[i] == MirrorLegState.Rebuilding && _recoveryOffset[i] > first)
                {
                    _recoveryOffset[i] = first;
                    lowered = true;
                }
            }

            if (lowered)
            {
                _generation++;
            }

            for (var r = first; r <= last; r++)
            {
                _regionWrites[r]++;
                _touched[r >> 6] |= 1UL << (r & 63);
                if ((_bits[r >> 6] & (1UL << (r & 63))) == 0)
                {
                    _bits[r >> 6] |= 1UL << (r & 63);
                    _pageVersion[r / (MirrorSuperblock.BitmapPageBytes * 8)]++;
                }
            }

            for (var p = firstPage; p <= lastPage; p++)
            {
                clean &= _pagePersisted[p] == _pageVersion[p];
            }
        }

        return lowered ? PersistAsync(superblocks: true) : clean ? Task.CompletedTask : PersistAsync(superblocks: false);
    }

    private void LeaveRegions(long offset, int length)
    {
        var (first, last) = RegionsOf(offset, length);
        lock (_lock)
        {
            for (var r = first; r <= last; r++)
            {
                _regionWrites[r]--;
            }
        }
    }

    private (int First, int Last) RegionsOf(long offset, int length) =>
        ((int)(offset / RegionBytes), (int)((offset + Math.Max(length, 1) - 1) / RegionBytes));

    // md's bitmap daemon: every interval, with every leg in sync, the bits of regions that had no
    // write in flight and none since the last pass are cleared and the pages written.
    private async Task BitmapDaemonAsync()
    {
        try
        {
            while (true)
            {
                await Task.Delay(Options.BitmapDaemonInterval, _time, _stop.Token).ConfigureAwait(false);
                await ClearIdleBitsAsync().ConfigureAwait(false);
            }
        }
        catch (OperationCanceledException)
        {
        }
        catch (Exception ex)
        {
            // A bug (a leg's failure is a status, not an exception): said, and the daemon stops.
            Listeners.Raise(BackgroundFaulted, handler => handler("bitmap daemon", ex));
        }
    }

    /// <summary>One pass of the bitmap daemon (md's <c>bitmap_daemon_work</c>).</summary>
    internal Task ClearIdleBitsAsync()
    {
        var changed = false;
        lock (_lock)
        {
            if (!_failed && _state.All(s => s == MirrorLegState.InSync))
            {
                for (var r = 0; r < Regions; r++)
                {
                    var bit = 1UL << (r & 63);
                    if ((_bits[r >> 6] & bit) != 0 && _regionWrites[r] == 0 && (_touched[r >> 6] & bit) == 0 && !CrashPendingRegion(r))
                    {
                        _bits[r >> 6] &= ~bit;
                        _clearedUnflushed[r >> 6] |= bit;
                        _pageVersion[r / (MirrorSuperblock.BitmapPageBytes * 8)]++;
                        changed = true;
                    }
                }
            }

            Array.Clear(_touched);
        }

        return changed ? PersistAsync(superblocks: false) : Task.CompletedTask;
    }

    // With every leg in sync, the bits of regions no write is in flight on (and no resync after a
    // crash still owes) are owed to nobody. Under the lock.
    private void ClearBitsOfIdleRegions()
    {
        for (var r = 0; r < Regions; r++)
        {
            var bit = 1UL << (r & 63);
            if ((_bits[r >> 6] & bit) != 0 && _regionWrites[r] == 0 && !CrashPendingRegion(r))
            {
                _bits[r >> 6] &= ~bit;
                _clearedUnflushed[r >> 6] |= bit;
            }
        }

        BumpPages();
    }

    // Writes the superblock (when asked) and every changed bitmap page to each leg that is not
    // faulty (bitmap pages to in-sync legs only). One writer at a time, always of the newest
    // state, so a later call never leaves older metadata behind an earlier one. A leg that fails
    // a metadata write is failed in turn.
    private async Task PersistAsync(bool superblocks)
    {
        await _metaLock.WaitAsync().ConfigureAwait(false);
        List<(int Leg, IBlockDevice Device)>? failed = null;
        try
        {
            MirrorLegState[] states;
            IBlockDevice[] legs;
            bool clean;
            long generation;
            long[] last;
            bool[] whole;
            long[] held;
            long[] offsets;
            ulong[]? cleared = null;
            var dirtyPages = new List<(int Page, long Version, byte[] Bytes)>();
            lock (_lock)
            {
                // Nothing to do when the newest state and every bitmap page are on the legs already.
                if (_failed || (_persistedGeneration == _generation && _pageVersion.AsSpan().SequenceEqual(_pagePersisted)))
                {
                    return;
                }

                // The legs with their states: a replacement (which holds _metaLock) changes neither meanwhile.
                states = [.. _state];
                legs = [.. _legs];
                clean = _clean;
                generation = _generation;
                last = [.. _lastInSync];
                whole = [.. _wholeOnReturn];
                held = [.. _lastHeld];
                offsets = [.. _recoveryOffset.Select(r => Math.Min(DataBytes, r * RegionBytes))];

                // Bits cleared, a leg declared in sync or the mirror clean: the metadata says the
                // legs hold those regions' writes, so every leg is flushed before it is written.
                if (_flushOwed || _clearedUnflushed.Any(w => w != 0))
                {
                    cleared = [.. _clearedUnflushed];
                    Array.Clear(_clearedUnflushed);
                    _flushOwed = false;
                }

                for (var p = 0; p < _pageVersion.Length; p++)
                {
                    if (_pagePersisted[p] != _pageVersion[p])
                    {
                        var bytes = new byte[MirrorSuperblock.BitmapPageBytes];
                        for (var b = 0; b < bytes.Length; b++)
                        {
                            var r = (p * MirrorSuperblock.BitmapPageBytes * 8) + (b * 8);
                            if (r >= Regions)
                            {
                                break;
                            }

                            bytes[b] = (byte)(_bits[r >> 6] >> (r & 63));
                        }

                        dirtyPages.Add((p, _pageVersion[p], bytes));
                    }
                }
            }

            if (cleared is not null && await FlushLegsAsync(states, legs).ConfigureAwait(false) is { } unflushed)
            {
                // Nothing is written: the bits are owed again, and the flush of the legs left is.
                failed = unflushed;
                lock (_lock)
                {
                    SetBitsAgain(cleared);
                    _flushOwed = true;
                }
            }
            else
            {
                using var buffer = new AlignedBuffer(MirrorSuperblock.SuperblockBytes, Math.Max(AlignedBuffer.PageAlignment, _legs.Max(l => l.MemoryAlignment)));

                // The in-sync legs first: a leg not in sync never holds a newer generation than they
                // do, so a crash between these writes leaves the newest generation on a leg to read
                // from (a re-added or new leg written first made the assembly refuse the mirror).
                // When no in-sync leg took the superblock (each failed it: the mirror fails), the
                // legs not in sync do not get it either: a rebuilding leg holding a generation no
                // in-sync leg has made every later assembly refuse the mirror.
                var inSyncWritten = false;
                foreach (var i in Enumerable.Range(0, _legs.Length).OrderBy(i => states[i] == MirrorLegState.InSync ? 0 : 1))
                {
                    if (states[i] == MirrorLegState.Faulty)
                    {
                        continue;
                    }

                    if (superblocks && !inSyncWritten && states[i] != MirrorLegState.InSync)
                    {
                        break;
                    }

                    var ok = true;
                    if (states[i] == MirrorLegState.InSync)
                    {
                        foreach (var (page, _, bytes) in dirtyPages)
                        {
                            bytes.CopyTo(buffer.Memory.Span);
                            ok &= await SafeIo(legs[i], BlockOp.Write, MirrorSuperblock.BitmapPageOffset(page), MirrorSuperblock.BitmapPageBytes, buffer.Memory,
                                RequestFlags.Fua | RequestFlags.Sync).ConfigureAwait(false) == BlockStatus.Ok;
                        }
                    }

                    if (superblocks && ok)
                    {
                        new MirrorSuperblock
                        {
                            ArrayId = _arrayId,
                            Role = i,
                            Legs = _legs.Length,
                            Clean = clean,
                            Generation = generation,
                            DataBytes = DataBytes,
                            RegionBytes = RegionBytes,
                            States = [.. states, .. new MirrorLegState[MirrorSuperblock.MaxLegs - states.Length]],
                            LastInSync = [.. last, .. new long[MirrorSuperblock.MaxLegs - last.Length]],
                            WholeOnReturn = [.. whole, .. new bool[MirrorSuperblock.MaxLegs - whole.Length]],
                            LastHeld = [.. held, .. new long[MirrorSuperblock.MaxLegs - held.Length]],
                            RecoveryOffset = [.. offsets, .. new long[MirrorSuperblock.MaxLegs - offsets.Length]],
                        }.Encode(buffer.Memory.Span);
                        ok = await SafeIo(legs[i], BlockOp.Write, 0, MirrorSuperblock.SuperblockBytes, buffer.Memory, RequestFlags.Fua | RequestFlags.Sync).ConfigureAwait(false) == BlockStatus.Ok;
                    }

                    if (!ok)
                    {
                        (failed ??= []).Add((i, legs[i]));
                    }
                    else if (superblocks)
                    {
                        inSyncWritten |= states[i] == MirrorLegState.InSync;

                        // At once, not after every leg: a leg that fails while a later leg's write is
                        // still pending (a remote leg may take its I/O timeout) holds this generation.
                        lock (_lock)
                        {
                            _legWritten[i] = Math.Max(_legWritten[i], generation);
                        }
                    }
                }

                lock (_lock)
                {
                    foreach (var (page, version, _) in dirtyPages)
                    {
                        _pagePersisted[page] = Math.Max(_pagePersisted[page], version);
                    }

                    if (superblocks)
                    {
                        _persistedGeneration = Math.Max(_persistedGeneration, generation);
                    }
                }
            }
        }
        finally
        {
            _metaLock.Release();
        }

        foreach (var (leg, device) in failed ?? [])
        {
            await FailLeg(leg, device).ConfigureAwait(false);
        }
    }

    // Flushes every leg not faulty in states, all at once; null when all did, else the legs that
    // failed the flush (a leg with nothing to flush answers NotSupported or Ok).
    private static async Task<List<(int Leg, IBlockDevice Device)>?> FlushLegsAsync(MirrorLegState[] states, IBlockDevice[] legs)
    {
        var flushes = new List<(int Leg, Task<BlockStatus> Flush)>();
        for (var i = 0; i < legs.Length; i++)
        {
            if (states[i] != MirrorLegState.Faulty)
            {
                flushes.Add((i, SafeIo(legs[i], BlockOp.Flush, 0, 0, default, RequestFlags.Sync).AsTask()));
            }
        }

        List<(int Leg, IBlockDevice Device)>? failed = null;
        foreach (var (leg, flush) in flushes)
        {
            if (await flush.ConfigureAwait(false) is not (BlockStatus.Ok or BlockStatus.NotSupported))
            {
                (failed ??= []).Add((leg, legs[leg]));
            }
        }

        return failed;
    }
}
