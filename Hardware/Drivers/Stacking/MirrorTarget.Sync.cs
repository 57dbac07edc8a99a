using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Requests;

namespace ActorBlk.Hardware.Drivers.Stacking;

// Background sync: recovery of rebuilding legs, check, and the rate limit.
public sealed partial class MirrorTarget
{
    // ------------------------------------------------------------------ resync and check

    private void KickSync()
    {
        lock (_lock)
        {
            if (_failed || _stop.IsCancellationRequested || _frozen || !HasRecoverWork())
            {
                return;
            }

            if (!_sync.IsCompleted)
            {
                _syncAgain = true;
                return;
            }

            _syncAction = RecoverName;
            _sync = Task.Run(SyncLoopAsync);
        }
    }

    // md's frozen_sync_thread: sets MD_RECOVERY_FROZEN, interrupts the sync running (a check or
    // repair as sync_action "idle" stops it, a recovery or resync at its next chunk or in its
    // throttle's wait) and returns once it has stopped.
    private async Task FreezeSyncAsync()
    {
        Task running;
        CancellationTokenSource? stop;
        lock (_lock)
        {
            _frozen = true;
            running = _sync;
            stop = running.IsCompleted ? null : _syncAction is "check" or "repair" ? _checkStop : _passStop;
        }

        if (stop is not null)
        {
            try
            {
                await stop.CancelAsync().ConfigureAwait(false);
            }
            catch (ObjectDisposedException)
            {
                // The pass ended meanwhile; the loop sees the freeze before the next one.
            }
        }

        await running.ConfigureAwait(false);
    }

    private async Task SyncLoopAsync()
    {
        try
        {
            while (true)
            {
                bool check;
                CancellationTokenSource interrupt;
                MirrorSyncStarted? started = null;
                string action;
                lock (_lock)
                {
                    _syncAgain = false;
                    check = _checkRequested;
                    _checkRequested = false;

                    // A leg that failed between the check's start and here would have interrupted it.
                    check &= _state.All(s => s == MirrorLegState.InSync);
                    if (_failed || _stop.IsCancellationRequested || _frozen || (!check && !HasRecoverWork()))
                    {
                        _syncAction = "idle";
                        _syncDone = _syncTotal = 0;
                        return;
                    }

                    _syncAction = check ? (_repair ? "repair" : "check") : RecoverName;

                    // A check is interrupted by any leg failing from now on; a recovery registers
                    // its interrupt with the legs it copies to (RecoverPassAsync).
                    interrupt = CancellationTokenSource.CreateLinkedTokenSource(check ? _checkStop!.Token : _stop.Token);
                    _passIsCheck = check;
                    _passLegs = [];
                    _passEpochs = [];
                    _passStop = check ? interrupt : null;
                    _passRegionsDone = 0;
                    action = _syncAction;
                    if (check)
                    {
                        started = new MirrorSyncStarted(_syncAction, [.. Enumerable.Range(0, _legs.Length).Where(i => _state[i] == MirrorLegState.InSync).Select(i => _legs[i].Name)], Regions);
                        _currentSync = started;
                    }
                }

                // A recovery tells its start once it knows its legs and regions (RecoverPassAsync).
                if (started is not null)
                {
                    Options.BeforeSyncStartedRaised?.Invoke(started);
                    Notify(SyncStarted, started);
                }

                MirrorSyncOutcome? outcome = null;
                try
                {
                    BeforeSyncPass?.Invoke();
                    if (check)
                    {
                        await CheckPassAsync(_repair, interrupt.Token).ConfigureAwait(false);
                        outcome = MirrorSyncOutcome.Done;
                    }
                    else
                    {
                        (action, outcome) = await RecoverPassAsync(interrupt).ConfigureAwait(false);
                    }
                }
                catch (OperationCanceledException) when (!_stop.IsCancellationRequested)
                {
                    // A check stopped by hand (sync_action idle) or by a leg failing (md_error
                    // interrupts it, and md starts no check again): a recovery asked for
                    // meanwhile (a re-add during the check) still runs.
                    outcome = _checkStop?.IsCancellationRequested == true ? MirrorSyncOutcome.Stopped : MirrorSyncOutcome.Interrupted;
                }
                finally
                {
                    MirrorSyncEnded ended;
                    lock (_lock)
                    {
                        _passStop = null;
                        _passLegs = [];
                        _passEpochs = [];
                        _currentSync = null;

                        // The mirror stopping (or failed: its last leg in sync went) ends the pass with an exception.
                        var how = outcome ?? (_failed ? MirrorSyncOutcome.Interrupted : MirrorSyncOutcome.Stopped);
                        var done = check ? (_syncDone >= DataBytes ? Regions : (int)(_syncDone / RegionBytes)) : _passRegionsDone;
                        ended = new MirrorSyncEnded(action, how, done, check ? Interlocked.Read(ref _mismatchSectors) : 0);
                    }

                    interrupt.Dispose();
                    Notify(SyncEnded, ended);
                }

                var finished = outcome != MirrorSyncOutcome.NoSource;

                lock (_lock)
                {
                    // A recover that found no leg to copy from stops; a re-add (of the rebuilding
                    // leg too) or sync_action "recover" starts it again.
                    if (_frozen || (!_syncAgain && (!finished || !HasRecoverWork())))
                    {
                        _syncAction = "idle";
                        _syncDone = _syncTotal = 0;
                        return;
                    }
                }
            }
        }
        catch (OperationCanceledException)
        {
            lock (_lock)
            {
                _syncAction = "idle";
                _syncDone = _syncTotal = 0;
            }
        }
        catch (Exception ex)
        {
            // A bug: the pass ended (SyncEnded told it), what it did not copy is still owed.
            lock (_lock)
            {
                _syncAction = "idle";
                _syncDone = _syncTotal = 0;
            }

            Listeners.Raise(BackgroundFaulted, handler => handler("sync", ex));
        }
    }

    // md's recovery and resync: copy each dirty region from the first in-sync leg to the legs that
    // are rebuilding and, after a crash, to the other in-sync legs for the regions that were being
    // written; a chunk at a time with the chunk held against writes, so no write can land between
    // the read and the copy. Returns false when no leg could be read from (the legs stay as they are).
    // A pass left with no leg to copy to (its rebuilding legs failed, and no crash resync it could
    // still do) stops at its next chunk, even in its throttle's wait (interrupt, set by MarkFaulty):
    // the regions it did not finish keep their bits, so a later re-add copies them.
    // Returns the pass's action (recover or resync) and how it ended.
    private async Task<(string Action, MirrorSyncOutcome Outcome)> RecoverPassAsync(CancellationTokenSource interrupt)
    {
        var ct = interrupt.Token;
        int[] rebuilding;
        long[] epochs;
        int[] starts;
        var dirty = new List<int>();
        MirrorSyncStarted started;
        lock (_lock)
        {
            // Only the legs rebuilding now get every region of this pass; one re-added later (or
            // failed and re-added meanwhile) waits for the next pass, which the re-add asks for,
            // and keeps every bit it needs until then (see Target). A resync owed after a crash
            // goes first, a pass of its own that copies the regions it owes to the in-sync legs
            // only (md_choose_sync_action prefers it to a recovery since md's commit "md: ensure
            // resync is prioritized over recovery"); the rebuilding legs keep their bits for the
            // recovery that follows it.
            rebuilding = _resyncAfterCrash ? [] : [.. Enumerable.Range(0, _legs.Length).Where(i => _state[i] == MirrorLegState.Rebuilding)];
            epochs = [.. rebuilding.Select(i => _legEpoch[i])];

            // A leg with a recovery offset holds every region below it: its copy starts there.
            starts = [.. rebuilding.Select(i => _recoveryOffset[i])];
            var from = starts.Length > 0 ? starts.Min() : 0;
            for (var r = 0; r < Regions; r++)
            {
                if (_resyncAfterCrash ? CrashPendingRegion(r) : r >= from && (_bits[r >> 6] & (1UL << (r & 63))) != 0)
                {
                    dirty.Add(r);
                }
            }

            _syncDone = 0;
            _syncTotal = dirty.Sum(r => RegionLength(r));
            _passLegs = rebuilding;
            _passEpochs = epochs;
            _passStop = interrupt;
            _copied.Clear();
            _copiedLegs = rebuilding;
            _copiedEpochs = epochs;
            _copiedStarts = starts;
            _copiedThrough = 0;

            // The legs copied to: the rebuilding ones and, after a crash, the in-sync legs but the first (the source).
            var source = Array.IndexOf(_state, MirrorLegState.InSync);
            var targets = Enumerable.Range(0, _legs.Length).Where(i => rebuilding.Contains(i) || (_resyncAfterCrash && i != source && _state[i] == MirrorLegState.InSync));
            started = new MirrorSyncStarted(RecoverName, [.. targets.Select(i => _legs[i].Name)], dirty.Count);
            _currentSync = started;
        }

        Options.BeforeSyncStartedRaised?.Invoke(started);
        Notify(SyncStarted, started);
        var interruptedPass = false;
        var frozen = false;

        // Under _lock: a leg this pass copies to, rebuilding since the pass started.
        bool Target(int leg)
        {
            var k = Array.IndexOf(rebuilding, leg);
            return k >= 0 && RebuildingSince(leg, epochs[k]);
        }

        // Under _lock: a leg this pass copies region r to (not below its recovery offset).
        bool TargetAt(int leg, int r)
        {
            var k = Array.IndexOf(rebuilding, leg);
            return k >= 0 && r >= starts[k] && RebuildingSince(leg, epochs[k]);
        }

        var checkpointEvery = Math.Max(1, Regions / 16);
        var checkpointRegion = -1;
        var checkpointAt = _time.GetTimestamp();
        var throttle = new Throttle(this);
        using var buffer = new AlignedBuffer(SyncChunkBytes, Math.Max(AlignedBuffer.PageAlignment, _legs.Max(l => l.MemoryAlignment)));
        foreach (var r in dirty)
        {
            lock (_lock)
            {
                // Nothing owed here any more (the legs to rebuild failed meanwhile): no copy, no wait.
                if (!CrashPendingRegion(r) && !rebuilding.Any(t => TargetAt(t, r)))
                {
                    continue;
                }
            }

            var start = r * RegionBytes;
            var end = start + RegionLength(r);
            var interrupted = false;
            var region = r;
            Func<int, bool> copyTo = t => TargetAt(t, region);
            for (var at = start; at < end; at += SyncChunkBytes)
            {
                // A stop ends the pass; an interrupt (no leg left to copy to: the condition
                // checked here) only this pass, which still records what it did.
                _stop.Token.ThrowIfCancellationRequested();
                lock (_lock)
                {
                    frozen = _frozen;
                    interrupted = frozen || !PassHasTargets();
                }

                if (interrupted)
                {
                    break;
                }

                var length = (int)Math.Min(SyncChunkBytes, end - at);
                if (!await CopyChunkAsync(r, copyTo, at, buffer.Memory[..length]).ConfigureAwait(false))
                {
                    await CheckpointAsync().ConfigureAwait(false);
                    return (started.Action, MirrorSyncOutcome.NoSource);
                }

                lock (_lock)
                {
                    _syncDone += length;
                }

                try
                {
                    await throttle.AfterAsync(length, ct).ConfigureAwait(false);
                }
                catch (OperationCanceledException) when (!_stop.IsCancellationRequested)
                {
                    lock (_lock)
                    {
                        frozen = _frozen;
                    }

                    interrupted = true;
                    break;
                }
            }

            if (interrupted && !frozen)
            {
                // The region's end is not reached: its bit stays for the legs that did not get it.
                interruptedPass = true;
                break;
            }

            if (frozen)
            {
                // Frozen (sync_action "frozen"): stopped as by hand, at a chunk's end or in the
                // throttle's wait after it. The regions it finished are checkpointed, the rest
                // are owed still; no leg is declared in sync and a crash still owes its resync:
                // the next pass (once unfrozen) goes on from there.
                await CheckpointAsync().ConfigureAwait(false);
                return (started.Action, MirrorSyncOutcome.Stopped);
            }

            lock (_lock)
            {
                _passRegionsDone++;
                _copiedThrough = r + 1;

                // Counted when a leg still rebuilding, or a second in-sync leg after a crash, got it.
                if (rebuilding.Any(copyTo)
                    || (CrashPendingRegion(r) && _state.Count(s => s == MirrorLegState.InSync) > 1))
                {
                    Interlocked.Increment(ref _resyncedRegions);
                }

                // Every leg left got the whole region: the crash no longer owes it.
                if (CrashPendingRegion(r))
                {
                    _crashPending[r >> 6] &= ~(1UL << (r & 63));
                }

                // With every leg in sync or copied by this pass, and no write in flight on it, the
                // region's bit is owed to nobody. A leg faulty, or rebuilding but not this pass's
                // (re-added after it started), keeps it: the bit is what its recovery copies. A
                // write in flight keeps it too: should it fail on a leg, that leg is faulty and
                // owed the region (outside audits found both losing acknowledged writes).
                // While the pass rebuilds legs, the bit is cleared at its next checkpoint, which
                // asks the same then (CheckpointLocked): the clearing of a bit a rebuilding leg
                // was owed is then always written with a generation that leg's superblock gets.
                if (rebuilding.Length > 0)
                {
                    _copied.Add(r);
                }
                else if (_regionWrites[r] == 0 && !CrashPendingRegion(r)
                    && Enumerable.Range(0, _legs.Length).All(i => _state[i] == MirrorLegState.InSync || Target(i)))
                {
                    _bits[r >> 6] &= ~(1UL << (r & 63));
                    _clearedUnflushed[r >> 6] |= 1UL << (r & 63);
                    _pageVersion[r / (MirrorSuperblock.BitmapPageBytes * 8)]++;
                }
            }

            // md's recovery checkpoint (md_do_sync records recovery_offset every 1/16 of the device
            // or 5 minutes): the regions copied since the last one go into the bitmap on the legs.
            if (rebuilding.Length > 0 && (r - checkpointRegion >= checkpointEvery || _time.GetElapsedTime(checkpointAt) >= RecoveryCheckpointInterval))
            {
                await CheckpointAsync().ConfigureAwait(false);
                checkpointRegion = r;
                checkpointAt = _time.GetTimestamp();
            }
        }

        MirrorSyncOutcome outcome;
        lock (_lock)
        {
            // Interrupted in a region, or between regions: every leg it copied to failed (the
            // regions left were skipped, owed to nobody the pass still had).
            outcome = interruptedPass || (rebuilding.Length > 0 && !rebuilding.Any(Target)) ? MirrorSyncOutcome.Interrupted : MirrorSyncOutcome.Done;

            // Not checkpointed: the legs copied to are in sync now (their bits then go with every
            // leg in sync), or failed (and are owed them).
            _copied.Clear();
            var changed = _resyncAfterCrash;
            _resyncAfterCrash = false;
            _crashPending = [];
            foreach (var t in rebuilding)
            {
                if (Target(t))
                {
                    _state[t] = MirrorLegState.InSync;
                    _recoveryOffset[t] = 0;
                    _flushOwed = true;
                    changed = true;
                }
            }

            if (!changed)
            {
                return (started.Action, outcome);
            }

            if (_state.All(s => s == MirrorLegState.InSync))
            {
                ClearBitsOfIdleRegions();
            }

            // Every page, so a leg now in sync holds the whole bitmap: after a restart it may be the one read.
            BumpPages();
            _generation++;
        }

        await PersistAsync(superblocks: true).ConfigureAwait(false);
        return (started.Action, outcome);
    }

    // md checkpoints a recovery at least this often (UPDATE_FREQUENCY), besides every 1/16 of the device.
    private static readonly TimeSpan RecoveryCheckpointInterval = TimeSpan.FromMinutes(5);

    private async Task CheckpointAsync()
    {
        bool any;
        bool gaveUp;
        lock (_lock)
        {
            gaveUp = GiveUpFaultyLocked();
        }

        // On every in-sync leg before any bit it was owed is cleared there (CheckpointLocked).
        if (gaveUp)
        {
            await PersistAsync(superblocks: true).ConfigureAwait(false);
        }

        lock (_lock)
        {
            any = CheckpointLocked();
        }

        if (any)
        {
            await PersistAsync(superblocks: true).ConfigureAwait(false);
        }
    }

    // Under _lock. md's recovery_offset, kept in the bitmap: the bits of the regions the recovery
    // copied since the last checkpoint are cleared (each with no write in flight on it and every leg
    // in sync or still rebuilding in this pass, as at a region's end), and the generation is bumped
    // with each leg still rebuilding recorded at it (its slot's LastInSync): the persist that follows
    // flushes every leg before it writes the cleared bits, then writes the superblocks, the in-sync
    // legs' first. A restart or re-add then copies only the regions still set, and only to a leg whose
    // superblock holds that generation: a leg that missed a checkpoint (it failed during it, or it
    // is an older copy of the device) is copied whole, as a leg older than its slot's LastInSync
    // always is. Where the bitmap cannot keep the progress (another leg's record), the legs' recovery
    // offsets are raised instead (RecoveryOffsetsLocked), with the same generation rule. True when a
    // bit was cleared or an offset raised (the caller persists).
    // A faulty leg owes nothing to the bitmap once it is copied whole on return and every in-sync
    // leg holds the superblock that says so (GiveUpFaultyLocked).
    private bool CheckpointLocked()
    {
        var targets = CopiedTargetsLocked();
        var cleared = false;
        foreach (var r in _copied)
        {
            var bit = 1UL << (r & 63);
            if ((_bits[r >> 6] & bit) != 0 && _regionWrites[r] == 0 && !CrashPendingRegion(r)
                && Enumerable.Range(0, _legs.Length).All(i => _state[i] == MirrorLegState.InSync || targets.Contains(i) || WholeOnReturnRecorded(i)))
            {
                _bits[r >> 6] &= ~bit;
                _clearedUnflushed[r >> 6] |= bit;
                _pageVersion[r / (MirrorSuperblock.BitmapPageBytes * 8)]++;
                cleared = true;
            }
        }

        _copied.Clear();
        if (_failed)
        {
            return cleared;
        }

        if (!RecoveryOffsetsLocked(targets) && !cleared)
        {
            return false;
        }

        _generation++;
        foreach (var t in targets)
        {
            _lastInSync[t] = _generation;
        }

        return true;
    }

    // Under _lock, at a checkpoint: md's recovery_offset, for the legs the bitmap cannot record the
    // progress of. While a leg is faulty (and not copied whole on return) or rebuilding outside the
    // pass, the bitmap is also its record of what it missed, so the checkpoint clears no bit (a
    // recovery from the bitmap with another leg faulty; one that copies a leg whole gives the
    // faulty leg's record up instead, GiveUpFaultyLocked). Each leg of the pass then has its offset
    // raised to the region below which it holds every region: its start and the regions the pass
    // finished (in order), short of any region with a write in flight (not durable by the flush
    // that follows; a write that starts later lowers it again itself, MarkDirtyAsync). Once a leg
    // has an offset it is kept up so, bits cleared or not. The caller bumps the generation and
    // records the legs at it (their slots' LastInSync): a leg that misses the superblock of that
    // checkpoint, or an older copy of it, is copied whole, as for a bitmap checkpoint; the persist
    // flushes every leg before it writes the superblocks. True when an offset was raised.
    private bool RecoveryOffsetsLocked(int[] targets)
    {
        if (targets.Length == 0)
        {
            return false;
        }

        var blocked = Enumerable.Range(0, _legs.Length).Any(i => _state[i] != MirrorLegState.InSync && !targets.Contains(i) && !WholeOnReturnRecorded(i));
        var inFlight = Array.FindIndex(_regionWrites, w => w != 0);
        var raised = false;
        for (var k = 0; k < _copiedLegs.Length; k++)
        {
            var t = _copiedLegs[k];
            if (!RebuildingSince(t, _copiedEpochs[k]) || (!blocked && _recoveryOffset[t] == 0))
            {
                continue;
            }

            var upTo = Math.Max(_copiedStarts[k], _copiedThrough);
            if (inFlight >= 0)
            {
                upTo = Math.Min(upTo, inFlight);
            }

            if (upTo > _recoveryOffset[t])
            {
                _recoveryOffset[t] = upTo;
                raised = true;
            }
        }

        _flushOwed |= raised;
        return raised;
    }

    // Under _lock. With a leg faulty, the bitmap is also the record of every region it missed, so
    // a checkpoint of another leg's recovery cannot clear bits without losing that record. md keeps
    // the two apart (recovery_offset is per device, and its bitmap clears nothing while the array
    // is degraded); here the faulty leg's record is given up instead, and the leg copied whole when
    // it returns, only when that costs it nothing: every bit is set (the recovery copies whole, a
    // new or replaced leg, so the faulty leg would be copied every region anyway). Its slot's last
    // generation in sync is raised to a new generation, which no device of it holds (a faulty leg
    // gets no superblock), so a re-add or an assembly copies it whole, even by code that knows no
    // flags; the generation it was really last in sync is kept for the split-brain rule. True when
    // a leg was given up (the caller persists the superblocks before the checkpoint clears bits).
    private bool GiveUpFaultyLocked()
    {
        if (_failed || _copied.Count == 0 || DirtyRegionsLocked() != Regions)
        {
            return false;
        }

        var targets = CopiedTargetsLocked();
        var faulty = Enumerable.Range(0, _legs.Length).Where(i => _state[i] == MirrorLegState.Faulty && !_wholeOnReturn[i]).ToArray();

        // Worth it only when the checkpoint then clears bits: a leg to copy to, and none rebuilding
        // outside this pass (whose record the bitmap also is).
        if (faulty.Length == 0 || targets.Length == 0
            || Enumerable.Range(0, _legs.Length).Any(i => _state[i] == MirrorLegState.Rebuilding && !targets.Contains(i)))
        {
            return false;
        }

        _generation++;
        foreach (var f in faulty)
        {
            _lastHeld[f] = _lastInSync[f];
            _lastInSync[f] = _generation;
            _wholeOnReturn[f] = true;
        }

        return true;
    }

    // Under _lock: the legs of the running pass (_copiedLegs) still rebuilding since it started.
    private int[] CopiedTargetsLocked() =>
        [.. Enumerable.Range(0, _copiedLegs.Length).Where(k => RebuildingSince(_copiedLegs[k], _copiedEpochs[k])).Select(k => _copiedLegs[k])];

    // Under _lock: the leg is faulty, copied whole on return, and every in-sync leg holds a
    // superblock that says so (written at or after the generation that recorded it).
    private bool WholeOnReturnRecorded(int leg) =>
        _state[leg] == MirrorLegState.Faulty && _wholeOnReturn[leg]
        && Enumerable.Range(0, _legs.Length).All(i => _state[i] != MirrorLegState.InSync || _legWritten[i] >= _lastInSync[leg]);

    // Times a source read that failed (a bad sector, not a lost leg) is tried again before the next
    // in-sync leg is tried as the source.
    private const int SourceReadAttempts = 3;

    // Copies one chunk of region r from the first in-sync leg to the legs that need it: the
    // rebuilding legs of the pass and, while the crash owes the region, the other in-sync legs.
    // False when no in-sync leg could be read.
    private async Task<bool> CopyChunkAsync(int region, Func<int, bool> target, long at, Memory<byte> chunk)
    {
        var held = await _gate.EnterExclusiveAsync(at, at + chunk.Length).ConfigureAwait(false);
        try
        {
            var tried = 0;
            while (true)
            {
                var source = FirstInSync(tried);
                if (source < 0)
                {
                    // No leg to copy from: the legs stay as they are.
                    return false;
                }

                List<int> targets;
                lock (_lock)
                {
                    var crash = CrashPendingRegion(region);
                    targets = [.. Enumerable.Range(0, _legs.Length).Where(t => t != source && (target(t) || (crash && _state[t] == MirrorLegState.InSync)))];
                }

                if (targets.Count == 0)
                {
                    return true;
                }

                var zeroable = TargetsZero(targets);
                if (zeroable && await SourceHoleAsync(source, at, chunk.Length).ConfigureAwait(false))
                {
                    await ZeroTargetsAsync(targets, at, chunk).ConfigureAwait(false);
                    return true;
                }

                var s = BlockStatus.IoError;
                for (var attempt = 0; attempt < SourceReadAttempts; attempt++)
                {
                    s = await LegIo(source, BlockOp.Read, at, chunk.Length, chunk, RequestFlags.Sync, IBlockDevice.AnyCpu).ConfigureAwait(false);
                    if (s is BlockStatus.Ok or BlockStatus.Offline or BlockStatus.Transport)
                    {
                        break;
                    }
                }

                if (s is BlockStatus.Offline or BlockStatus.Transport)
                {
                    await FailLeg(source).ConfigureAwait(false);
                    continue;
                }

                if (s != BlockStatus.Ok)
                {
                    // This leg cannot give the chunk; the next in-sync one may (and after a crash
                    // its copy then goes over this one's too).
                    tried |= 1 << source;
                    continue;
                }

                // A chunk read as zeroes (from a source that cannot show its holes, a remote leg, or
                // zeroes a file holds allocated) is zeroed on the targets as well, as qemu-img
                // convert detects zeroes: no payload to a remote target, no blocks on a file one.
                if (zeroable && !chunk.Span.ContainsAnyExcept((byte)0))
                {
                    await ZeroTargetsAsync(targets, at, chunk).ConfigureAwait(false);
                    return true;
                }

                var writes = targets.Select(t => LegIo(t, BlockOp.Write, at, chunk.Length, chunk, RequestFlags.Sync, IBlockDevice.AnyCpu)).ToArray();
                for (var i = 0; i < writes.Length; i++)
                {
                    if (await writes[i].ConfigureAwait(false) != BlockStatus.Ok)
                    {
                        await FailLeg(targets[i]).ConfigureAwait(false);
                    }
                }

                return true;
            }
        }
        finally
        {
            _gate.Exit(held);
        }
    }

    // True when the source leg's map (a file leg's holes) says the chunk is one hole, which reads
    // as zeroes: the copy then zeroes the targets instead of reading it and writing its zeroes, so a
    // rebuilt file leg keeps its source's holes of a chunk or more (a chunk holding any data is
    // copied whole), as qemu's mirror job skips holes with block status and write-zeroes; md copies
    // every byte. A leg that cannot tell is read, and what it gives is zeroed the same way if it is
    // all zeroes. Asked without blocking: a remote source (an NBD client leg) answers with
    // NBD_CMD_BLOCK_STATUS, so a recovery from it skips its holes instead of reading every chunk
    // across the network to find zeroes. The question is asked under the chunk's exclusive range,
    // which holds user I/O to the chunk, so an answer that has not come within
    // MirrorOptions.SourceMapPatience (5 s) is given up and the chunk read instead: a source that
    // takes block status questions and stays silent held user I/O to the chunk for the NBD
    // client's 30 s. The patience is real time, as the NBD client's own timeout: a network's
    // answer does not come faster on a manual clock.
    private async ValueTask<bool> SourceHoleAsync(int source, long at, int length)
    {
        try
        {
            if (IAllocationMap.Of(_legs[source]) is not { } map)
            {
                return false;
            }

            using var giveUp = new CancellationTokenSource();
            var question = map.GetExtentAsync(MirrorSuperblock.DataOffset + at, length, giveUp.Token);
            AllocationExtent? extent;
            if (question.IsCompleted)
            {
                // A local map (a file leg's) answers at once: no timer.
                extent = question.Result;
            }
            else
            {
                try
                {
                    // Past the patience a TimeoutException: read and copy (below).
                    extent = await question.AsTask().WaitAsync(Options.SourceMapPatience).ConfigureAwait(false);
                }
                finally
                {
                    // Gives an unanswered question up (the NBD client frees its slot).
                    await giveUp.CancelAsync().ConfigureAwait(false);
                }
            }

            return extent is { Allocated: false } hole && hole.Length >= length;
        }
        catch (Exception)
        {
            // The leg changed under us, a custom driver's map threw, or no answer came in time: read and copy.
            return false;
        }
    }

    // Every target takes write-zeroes. A handle closed meanwhile (a table swap disposing the old
    // mirror) answers false, and the copy's own writes then fail that leg as usual.
    private bool TargetsZero(List<int> targets)
    {
        try
        {
            return targets.All(t => _legs[t].Queue.Limits.MaxWriteZeroesSectors > 0);
        }
        catch (ObjectDisposedException)
        {
            return false;
        }
    }

    // The copy of a hole: a write-zeroes that may unmap on each target (a file leg punches a hole).
    // A target that turns out not to support it gets the zeroes written; one that fails either is
    // faulty, as for a failed copy write.
    private async Task ZeroTargetsAsync(List<int> targets, long at, Memory<byte> chunk)
    {
        var zeroes = targets.Select(t => LegIo(t, BlockOp.WriteZeroes, at, chunk.Length, default, RequestFlags.Sync, IBlockDevice.AnyCpu)).ToArray();
        var cleared = false;
        for (var i = 0; i < zeroes.Length; i++)
        {
            var s = await zeroes[i].ConfigureAwait(false);
            if (s == BlockStatus.NotSupported)
            {
                if (!cleared)
                {
                    chunk.Span.Clear();
                    cleared = true;
                }

                s = await LegIo(targets[i], BlockOp.Write, at, chunk.Length, chunk, RequestFlags.Sync, IBlockDevice.AnyCpu).ConfigureAwait(false);
            }

            if (s != BlockStatus.Ok)
            {
                await FailLeg(targets[i]).ConfigureAwait(false);
            }
        }
    }

    // Under _lock: the recovery running still has a leg to copy to: one it was started for, still
    // rebuilding since (not failed, nor failed and re-added), or, after a crash, a second in-sync
    // leg for the regions the crash still owes.
    private bool PassHasTargets()
    {
        for (var k = 0; k < _passLegs.Length; k++)
        {
            if (RebuildingSince(_passLegs[k], _passEpochs[k]))
            {
                return true;
            }
        }

        return _resyncAfterCrash && _crashPending.Any(w => w != 0) && _state.Count(s => s == MirrorLegState.InSync) > 1;
    }

    // Under _lock: the leg is rebuilding, and has not failed (nor failed and been re-added) since
    // its epoch was the one given, taken when a pass chose it as a leg to copy to.
    private bool RebuildingSince(int leg, long epoch) => _state[leg] == MirrorLegState.Rebuilding && _legEpoch[leg] == epoch;

    // Under _lock.
    private string RecoverName => _resyncAfterCrash ? "resync" : "recover";

    private async Task CheckPassAsync(bool repair, CancellationToken ct)
    {
        Interlocked.Exchange(ref _mismatchSectors, 0);
        lock (_lock)
        {
            _syncDone = 0;
            _syncTotal = DataBytes;
        }

        var throttle = new Throttle(this);
        var alignment = Math.Max(AlignedBuffer.PageAlignment, _legs.Max(l => l.MemoryAlignment));
        var buffers = _legs.Select(_ => new AlignedBuffer(SyncChunkBytes, alignment)).ToArray();
        try
        {
            for (long at = 0; at < DataBytes; at += SyncChunkBytes)
            {
                ct.ThrowIfCancellationRequested();
                var length = (int)Math.Min(SyncChunkBytes, DataBytes - at);
                var held = await _gate.EnterExclusiveAsync(at, at + length).ConfigureAwait(false);
                try
                {
                    var legs = Enumerable.Range(0, _legs.Length).Where(i => LegState(i) == MirrorLegState.InSync).ToArray();
                    var reads = legs.Select(i => LegIo(i, BlockOp.Read, at, length, buffers[i].Memory[..length], RequestFlags.Sync, IBlockDevice.AnyCpu)).ToArray();
                    var ok = new List<int>();
                    for (var k = 0; k < reads.Length; k++)
                    {
                        if (await reads[k].ConfigureAwait(false) == BlockStatus.Ok)
                        {
                            ok.Add(legs[k]);
                        }
                    }

                    Interlocked.Add(ref _mismatchSectors, CountMismatches(buffers, ok, length, Limits.LogicalBlockSize));
                    if (repair)
                    {
                        await RewriteMismatchesAsync(buffers, ok, at, length).ConfigureAwait(false);
                    }
                }
                finally
                {
                    _gate.Exit(held);
                }

                lock (_lock)
                {
                    _syncDone += length;
                }

                await throttle.AfterAsync(length, ct).ConfigureAwait(false);
            }
        }
        finally
        {
            foreach (var b in buffers)
            {
                ((IDisposable)b).Dispose();
            }
        }
    }

    // md's repair: each block in which a leg differs from the first readable leg is written over
    // from it, the range still held against writes. A leg that fails the write is faulty.
    private async Task RewriteMismatchesAsync(AlignedBuffer[] buffers, List<int> legs, long at, int length)
    {
        var block = Limits.LogicalBlockSize;
        for (var k = 1; k < legs.Count; k++)
        {
            var leg = legs[k];
            for (var b = 0; b < length; b += block)
            {
                if (buffers[leg].Memory.Span.Slice(b, block).SequenceEqual(buffers[legs[0]].Memory.Span.Slice(b, block)))
                {
                    continue;
                }

                // One write per run of differing blocks.
                var end = b + block;
                while (end < length && !buffers[leg].Memory.Span.Slice(end, block).SequenceEqual(buffers[legs[0]].Memory.Span.Slice(end, block)))
                {
                    end += block;
                }

                var status = await LegIo(leg, BlockOp.Write, at + b, end - b, buffers[legs[0]].Memory[b..end], RequestFlags.Sync, IBlockDevice.AnyCpu).ConfigureAwait(false);
                if (status != BlockStatus.Ok)
                {
                    await FailLeg(leg).ConfigureAwait(false);
                    break;
                }

                b = end - block;
            }
        }
    }

    // Sectors of the blocks in which the legs' copies differ.
    private static long CountMismatches(AlignedBuffer[] buffers, List<int> legs, int length, int block)
    {
        long sectors = 0;
        for (var b = 0; legs.Count > 1 && b < length; b += block)
        {
            var first = buffers[legs[0]].Memory.Span.Slice(b, block);
            for (var k = 1; k < legs.Count; k++)
            {
                if (!buffers[legs[k]].Memory.Span.Slice(b, block).SequenceEqual(first))
                {
                    sectors += block >> Bio.SectorShift;
                    break;
                }
            }
        }

        return sectors;
    }

    private long RegionLength(int r) => Math.Min(RegionBytes, DataBytes - (r * RegionBytes));

    // md's sync throttle: never above sync_speed_max; above sync_speed_min only while no user I/O
    // is in flight on the mirror. Rates are averaged since the limit last changed (the pass's
    // start, user I/O beginning or ending, a limit written); the clock is the mirror's
    // TimeProvider, so tests move it by hand.
    private sealed class Throttle(MirrorTarget mirror)
    {
        private long _start = mirror._time.GetTimestamp();
        private long _bytes;
        private long _limit;

        // When the previous chunk's wait ended, so this chunk's copy began.
        private long _chunkStart = mirror._time.GetTimestamp();

        public async ValueTask AfterAsync(int bytes, CancellationToken ct)
        {
            var busy = Interlocked.Read(ref mirror._userIo) > 0;
            var limit = Math.Max(1, busy ? mirror.SyncSpeedMinKiB : mirror.SyncSpeedMaxKiB);
            if (_limit != 0 && limit != _limit)
            {
                // A new limit starts a new average, from this chunk's start: the bytes copied
                // before, at another rate, do not count against it. Averaged over the whole pass, a
                // recovery that had run at sync_speed_max waited at the first user write until the
                // whole pass averaged sync_speed_min (1 GiB copied in 5 s was then held about 17
                // minutes). From the chunk's start, its copy time counts towards its share.
                _start = _chunkStart;
                _bytes = 0;
            }

            _limit = limit;
            _bytes += bytes;
            var elapsed = mirror._time.GetElapsedTime(_start);
            var due = TimeSpan.FromSeconds(_bytes / 1024.0 / limit);
            Interlocked.Exchange(ref mirror._syncSpeedKiB, (long)(_bytes / 1024.0 / Math.Max(elapsed.TotalSeconds, due.TotalSeconds)));
            if (due > elapsed)
            {
                await Task.Delay(due - elapsed, mirror._time, ct).ConfigureAwait(false);
            }

            _chunkStart = mirror._time.GetTimestamp();
        }
    }
}
