using System.Runtime.CompilerServices;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;
using ActorBlk.Hardware.Sysfs;

namespace ActorBlk.Hardware.Drivers.Stacking;

/// <summary>
/// md raid1 over 2 or 3 legs (any <see cref="IBlockDevice"/>, local or remote). Every leg starts
/// with a 64 KiB metadata area (<see cref="MirrorSuperblock"/>: generation, per-leg state and
/// the write-intent bitmap) that is not part of the exported capacity.
/// </summary>
/// <remarks>
/// <para>
/// Writes, FUA writes, flushes, discards and write-zeroes go to every leg that is in sync or
/// rebuilding and end when all have; a leg that fails one is marked faulty (its superblocks
/// updated) before the write is acknowledged, and the write succeeds while one leg that was in
/// sync at its start has it. Reads go to the in-sync leg with the fewest reads in flight; a read
/// error is retried on the next leg and the good data written back over the failing range
/// (md's <c>fix_read_error</c>). When no leg is in sync any more, every I/O fails with
/// <see cref="BlockStatus.Offline"/>.
/// </para>
/// <para>
/// While a leg is not in sync, each write first sets the bits of its regions in the write-intent
/// bitmap and writes the bitmap pages to the in-sync legs. A leg that returns (re-added, or found
/// stale at start) is resynced from an in-sync leg for the set regions only, in 64 KiB chunks,
/// each copied with the range held exclusively against writes, at a rate between
/// <see cref="MirrorOptions.SyncSpeedMinKiB"/> and <see cref="MirrorOptions.SyncSpeedMaxKiB"/>.
/// </para>
/// </remarks>
public sealed partial class MirrorTarget : StackTarget, IAttributeSource
{
    /// <summary>Bytes copied (or compared) per resync or check step, md's <c>RESYNC_BLOCK_SIZE</c>.</summary>
    public const int SyncChunkBytes = 64 << 10;

    private readonly IBlockDevice[] _legs;
    private readonly string _name;
    private readonly TimeProvider _time;
    private readonly object _lock = new();
    private readonly RangeGate _gate = new();
    private readonly SemaphoreSlim _metaLock = new(1, 1);
    private readonly CancellationTokenSource _stop = new();

    // Leg state, under _lock.
    private readonly MirrorLegState[] _state;
    private readonly long[] _lastInSync;

    // Per leg, under _lock: the generation of the last superblock this mirror wrote to it (or read
    // from it at assembly). A leg that fails is recorded last in sync at this generation, not at
    // the mirror's current one: a leg that failed the very write of a new generation (its node gone
    // during a clean stop) holds the one before, and a degraded start from it elsewhere bumps to
    // the number this mirror had recorded, so the split brain went unseen (an outside audit).
    private readonly long[] _legWritten;

    // Per leg: its device was missing when the mirror started (MirrorOptions.StartDegraded) and it
    // has not been taken back since. Only such a leg can have been written apart from this mirror
    // (README, "Mirrors"); cleared by its first re-add, after which it is an ordinary leg.
    private readonly bool[] _missingAtStart;

    // Per leg, under _lock: faulty, and its bitmap record given up so that another leg's recovery
    // could checkpoint (GiveUpFaultyLocked): any device of it is copied whole, its _lastInSync
    // raised to the generation that recorded this; _lastHeld keeps the generation it was really
    // last in sync, for the split-brain rule (WrittenApart). Persisted in the superblocks; cleared
    // when the slot is taken back or replaced.
    private readonly bool[] _wholeOnReturn;
    private readonly long[] _lastHeld;

    // Per leg, under _lock: md's recovery_offset, for a leg rebuilding from a bitmap that cannot
    // record its progress (the bitmap is also another leg's record of what it missed, so no bit is
    // cleared as this one catches up): the region below which the superblocks say it holds every
    // region, whatever its bits. Raised at a recovery checkpoint (RecoveryOffsetsLocked), after the
    // flush that makes the copies below it durable; lowered, and written before the write goes to
    // any leg, by a write below it (MarkDirtyAsync), so a write in flight at a crash is copied again.
    // A pass starts there for that leg. 0 for every other leg and once the leg fails or is in sync.
    private readonly int[] _recoveryOffset;
    private readonly int[] _inflight;

    // Bumped each time a leg goes faulty (under _lock): a recovery pass copies to, and at its end
    // declares in sync, only the legs that were rebuilding when it started and have not failed
    // since. A leg failed and re-added within one pass missed writes the pass never saw.
    private readonly long[] _legEpoch;
    private readonly long[] _correctedReads;
    private readonly Guid _arrayId;
    private long _generation;
    private long _persistedGeneration = -1;
    private bool _failed;
    private bool _clean;

    // The write-intent bitmap: one bit per region, written in 4 KiB pages. A page's version counts
    // its changes; persisted is the version last written to the legs.
    private readonly ulong[] _bits;
    private readonly ulong[] _touched;
    private readonly int[] _regionWrites;
    private readonly long[] _pageVersion;
    private readonly long[] _pagePersisted;

    // Durability of what the metadata declares (md writes its superblocks and bitmap pages with
    // REQ_PREFLUSH | REQ_FUA): the bits cleared in memory since the legs were last flushed, and
    // whether a leg was declared in sync or the mirror clean since. A persist that writes either
    // flushes every leg first; a leg that fails sets those bits again, as its volatile cache may
    // have lost the writes of their regions. Under _lock.
    private readonly ulong[] _clearedUnflushed;
    private bool _flushOwed;

    // Background sync (recover or check), under _lock.
    private Task _sync = Task.CompletedTask;
    private bool _syncAgain;
    private string _syncAction = "idle";
    private long _syncDone;
    private long _syncTotal;
    private long _syncSpeedKiB;

    // Regions the recovery or resync running has finished (SyncEnded), and its start (CurrentSync), under _lock.
    private int _passRegionsDone;
    private MirrorSyncStarted? _currentSync;
    private bool _checkRequested;
    private bool _repair;

    // The pass running, under _lock: its interrupt (md's MD_RECOVERY_INTR, which md_error sets on
    // every leg failure), and for a recovery the legs it copies to with their epochs at its start.
    // A leg failing interrupts a check or repair; a recovery, once no leg it copies to is left and
    // no crash resync it could still do (see PassHasTargets). Null between passes.
    private CancellationTokenSource? _passStop;
    private bool _passIsCheck;
    private int[] _passLegs = [];
    private long[] _passEpochs = [];

    // Under _lock: regions a recovery finished since its last checkpoint, whose bits it clears at
    // the next (CheckpointLocked), and the legs it copies to with their epochs at its start. Left
    // by a pass the mirror's stop ended, for StopAsync to checkpoint; a crash loses them (the bits
    // stay set: copied again).
    private readonly List<int> _copied = [];
    private int[] _copiedLegs = [];
    private long[] _copiedEpochs = [];

    // Under _lock: per leg of _copiedLegs, the region its copy started at (its recovery offset at
    // the pass's start), and the region after the last one the pass finished (RecoveryOffsetsLocked).
    private int[] _copiedStarts = [];
    private int _copiedThrough;

    // Set at a start after a crash (no clean stop, bits set): the in-sync legs are being made equal
    // again, md's "resync", as opposed to "recover" (rebuilding a leg that was out). The legs stay
    // in sync meanwhile, as in md: each holds every acknowledged write, and they may differ only in
    // the regions of _crashPending, where writes were in flight at the crash. Those are read from
    // the first in-sync leg only (md's choose_first) and copied from it to the others; a region
    // leaves the set once copied. Under _lock (read racily by reads: bits only ever clear).
    private bool _resyncAfterCrash;
    private ulong[] _crashPending = [];
    private CancellationTokenSource? _checkStop;

    // md's MD_RECOVERY_FROZEN, under _lock: set by sync_action "frozen", which stops the sync
    // running; no sync starts while it is set (a leg to rebuild waits, the mirror degraded), and
    // "idle", "recover", "resync", "check" or "repair" clears it. Not kept across a restart.
    private bool _frozen;
    private long _userIo;
    private int _readRotor;

    private MirrorTarget(string name, IReadOnlyList<IBlockDevice> legs, MirrorOptions options, long dataBytes, long regionBytes, Guid arrayId, TimeProvider time)
        : base(legs, dataBytes, fastZeroes: false)
    {
        _name = name;
        _legs = [.. legs];
        _time = time;
        Options = options;
        RegionBytes = regionBytes;
        DataBytes = Limits.CapacityBytes;
        Regions = (int)((DataBytes + regionBytes - 1) / regionBytes);
        _arrayId = arrayId;
        _state = new MirrorLegState[_legs.Length];
        _lastInSync = new long[_legs.Length];
        _legWritten = new long[_legs.Length];
        _missingAtStart = new bool[_legs.Length];
        _wholeOnReturn = new bool[_legs.Length];
        _lastHeld = new long[_legs.Length];
        _recoveryOffset = new int[_legs.Length];
        _inflight = new int[_legs.Length];
        _legEpoch = new long[_legs.Length];
        _correctedReads = new long[_legs.Length];
        _bits = new ulong[(Regions + 63) / 64];
        _touched = new ulong[_bits.Length];
        _clearedUnflushed = new ulong[_bits.Length];
        _regionWrites = new int[Regions];
        var pages = (int)(((Regions + 7) / 8 + MirrorSuperblock.BitmapPageBytes - 1) / MirrorSuperblock.BitmapPageBytes);
        _pageVersion = new long[pages];
        _pagePersisted = new long[pages];
    }

    /// <summary>The options the mirror was built with.</summary>
    public MirrorOptions Options { get; }

    /// <summary>The legs, in role order.</summary>
    public IReadOnlyList<IBlockDevice> Legs => _legs;

    /// <summary>Bytes the mirror exports (the smallest leg less the metadata area).</summary>
    public long DataBytes { get; }

    /// <summary>Bytes of data one bitmap bit stands for.</summary>
    public long RegionBytes { get; }

    /// <summary>Regions of the data area (bits of the bitmap).</summary>
    public int Regions { get; }

    /// <summary>The array's identity, the same in every leg's superblock.</summary>
    public Guid ArrayId => _arrayId;

    /// <summary>The generation (md's event count): bumped on every change of leg state and persisted in every leg that is not faulty.</summary>
    public long Generation
    {
        get
        {
            lock (_lock)
            {
                return _generation;
            }
        }
    }

    /// <summary>True when no leg is in sync any more: every I/O fails with Offline.</summary>
    public bool IsFailed => Volatile.Read(ref _failed);

    /// <summary>Legs that are not in sync (md's <c>degraded</c>).</summary>
    public int Degraded
    {
        get
        {
            lock (_lock)
            {
                return _state.Count(s => s != MirrorLegState.InSync);
            }
        }
    }

    /// <summary>Regions copied by resync since the mirror started.</summary>
    public long ResyncedRegions => Interlocked.Read(ref _resyncedRegions);

    private long _resyncedRegions;

    /// <summary>Sectors found different between legs by the last <c>check</c> (md's <c>mismatch_cnt</c>).</summary>
    public long MismatchSectors => Interlocked.Read(ref _mismatchSectors);

    private long _mismatchSectors;

    // Each limit as md keeps it: the mirror's own value once one was set ("local"), 0 for the
    // system's, which here is the options' (md's /proc/sys/dev/raid/speed_limit_min and _max).
    // One field each, so a read never sees a value and a flag from two different writes.
    private long _syncSpeedMinLocalKiB;
    private long _syncSpeedMaxLocalKiB;

    /// <summary>
    /// Lower resync rate limit in KiB/s: below it, resync does not yield to user I/O (md
    /// <c>sync_speed_min</c>). Setting it makes it this mirror's own (md's "local"); the
    /// attribute's <c>system</c>, or setting 0, takes back <see cref="MirrorOptions.SyncSpeedMinKiB"/>.
    /// </summary>
    public long SyncSpeedMinKiB
    {
        get => Volatile.Read(ref _syncSpeedMinLocalKiB) is var local and not 0 ? local : Options.SyncSpeedMinKiB;
        set => Volatile.Write(ref _syncSpeedMinLocalKiB, Math.Max(0, value));
    }

    /// <summary>
    /// Upper resync rate limit in KiB/s (md <c>sync_speed_max</c>). Setting it makes it this
    /// mirror's own (md's "local"); the attribute's <c>system</c>, or setting 0, takes back
    /// <see cref="MirrorOptions.SyncSpeedMaxKiB"/>.
    /// </summary>
    public long SyncSpeedMaxKiB
    {
        get => Volatile.Read(ref _syncSpeedMaxLocalKiB) is var local and not 0 ? local : Options.SyncSpeedMaxKiB;
        set => Volatile.Write(ref _syncSpeedMaxLocalKiB, Math.Max(0, value));
    }

    /// <summary>
    /// The sync running, as md's <c>sync_action</c> reads: <c>frozen</c> while syncs are held
    /// (whatever is owed), else <c>idle</c>, <c>resync</c> (making the legs equal after a crash),
    /// <c>recover</c> (rebuilding legs), <c>check</c> or <c>repair</c>.
    /// </summary>
    public string SyncAction
    {
        get
        {
            lock (_lock)
            {
                return _frozen ? "frozen" : _syncAction;
            }
        }
    }

    /// <summary>Bytes done and bytes to do of the sync running (0, 0 when idle).</summary>
    public (long Done, long Total) SyncProgress
    {
        get
        {
            lock (_lock)
            {
                return (_syncDone, _syncTotal);
            }
        }
    }

    /// <summary>Completes when no sync runs (and none is due to start).</summary>
    public Task SyncIdle
    {
        get
        {
            lock (_lock)
            {
                return _sync;
            }
        }
    }

    /// <inheritdoc />
    public override string TargetType => "mirror";

    /// <inheritdoc />
    public override bool ReadOnly => false;

    /// <inheritdoc />
    public override string Description => $"mirror over {string.Join(", ", _legs.Select(l => l.Name))}, {RegionBytes >> 10} KiB regions";

    /// <summary>The state of leg <paramref name="leg"/>.</summary>
    public MirrorLegState LegState(int leg)
    {
        lock (_lock)
        {
            return _state[leg];
        }
    }

    // md refuses a device too small for the array at --add or --re-add ("disk too small"); a leg
    // that came back (a reconnected remote device) may be another device now (an outside audit: a
    // leg restarted at half its size was re-added, then failed again on writes past its end).
    private void CheckFits(IBlockDevice leg, string action = "re-add")
    {
        if (leg.IsReadOnly)
        {
            throw new InvalidOperationException($"{_name}: leg {leg.Name} is read-only: a mirror writes every leg.");
        }

        if (leg.Capacity < MirrorSuperblock.DataOffset + DataBytes)
        {
            throw new MirrorLegTooSmallException(
                $"{_name}: leg {leg.Name} holds {leg.Capacity} bytes, fewer than the mirror's {DataBytes} bytes of data and {MirrorSuperblock.DataOffset >> 10} KiB of metadata: too small to {action}.",
                leg.Name, leg.Capacity, MirrorSuperblock.DataOffset + DataBytes);
        }

        if (leg.LogicalBlockSize != Limits.LogicalBlockSize)
        {
            throw new InvalidOperationException($"{_name}: leg {leg.Name} has {leg.LogicalBlockSize}-byte blocks, the mirror {Limits.LogicalBlockSize}-byte ones.");
        }

        // The mirror's limits were set from the legs present at its start and are never lowered:
        // a leg that cannot keep what the mirror advertises would break it (a discard or
        // write-zeroes refused on one leg, a FUA write or a flush not durable, a buffer misaligned).
        var limits = leg.Queue.Limits;
        var weaker = new List<string>();
        if (Limits.MaxDiscardSectors > 0 && limits.MaxDiscardSectors == 0)
        {
            weaker.Add("no discard");
        }

        if (Limits.MaxWriteZeroesSectors > 0 && limits.MaxWriteZeroesSectors == 0)
        {
            weaker.Add("no write-zeroes");
        }

        if (Limits.FastWriteZeroes && !limits.FastWriteZeroes)
        {
            weaker.Add("no fast write-zeroes");
        }

        if (Limits.Fua && !limits.Fua)
        {
            weaker.Add("no FUA");
        }

        if (!Limits.VolatileWriteCache && limits.VolatileWriteCache)
        {
            weaker.Add("a volatile write cache (the mirror advertises none)");
        }

        if (leg.MemoryAlignment > Limits.MemoryAlignment)
        {
            weaker.Add($"a {leg.MemoryAlignment}-byte memory alignment (the mirror's is {Limits.MemoryAlignment})");
        }

        if (weaker.Count > 0)
        {
            throw new InvalidOperationException($"{_name}: leg {leg.Name} has {string.Join(", ", weaker)}: weaker than the mirror's limits, set by the legs it started with.");
        }
    }

    /// <summary>
    /// Raised when a leg that reconnected could not be taken back by itself (its device is now too
    /// small, read-only, of another block size, of weaker limits, or failed again; or, for a leg missing at the
    /// start, blank, another mirror's or written apart from this one): the leg's name and why. The leg
    /// stays faulty until it reconnects once more or is re-added by hand.
    /// </summary>
    public event Action<string, string>? AutomaticReAddFailed;

    /// <summary>
    /// Raised when a leg becomes faulty (an I/O error, its device gone, a resync that could not
    /// read or write it, or an operator's <c>faulty</c>), once per failure: the leg's name, how
    /// many legs are still in sync (0: the mirror has failed and every I/O ends Offline) and how
    /// many it has. md logs the same ("Disk failure on ..., disabling device. Operation continuing
    /// on N devices").
    /// </summary>
    public event Action<string, int, int>? LegFailed;

    /// <summary>
    /// Raised when a faulty leg is taken back (re-added by hand, by itself after its remote device
    /// reconnected, or a new device taking its slot), once it is rebuilding: its name, how it came
    /// back and how many bitmap regions it owes. The recovery that copies them follows
    /// (<see cref="SyncStarted"/>). Raised outside the mirror's lock; an exception of a subscriber
    /// is dropped.
    /// </summary>
    public event Action<MirrorLegTakenBack>? LegTakenBack;

    /// <summary>
    /// Raised when a sync pass starts (md logs "md: recovery of RAID array md0"): its action, the
    /// legs it copies to (or compares) and the regions it is to do. Raised on the sync's thread,
    /// outside the mirror's lock; an exception of a subscriber is dropped.
    /// </summary>
    public event Action<MirrorSyncStarted>? SyncStarted;

    /// <summary>
    /// Raised when a sync pass ends, once for each <see cref="SyncStarted"/> (md logs "md: md0:
    /// recovery done." or "... interrupted."): its action, how it ended, the regions it finished and,
    /// for a check or repair, the mismatched sectors. Raised before <see cref="SyncIdle"/> completes,
    /// outside the mirror's lock; an exception of a subscriber is dropped.
    /// </summary>
    public event Action<MirrorSyncEnded>? SyncEnded;

    /// <summary>
    /// Raised when a background task of the mirror ended on an exception it does not expect (a
    /// bug, not a leg's failure, which the legs' states tell): which task (<c>sync</c>,
    /// <c>bitmap daemon</c>, <c>automatic re-add</c> or <c>leg failure</c>, the failing of a leg
    /// whose remote device went away) and the exception. The sync goes idle, what it had not copied still
    /// owed in the bitmap (a re-add or <c>sync_action recover</c> starts it again); the bitmap
    /// daemon stops, so bits of idle regions are no longer cleared (a crash resyncs more) until the
    /// mirror is assembled again. Before, such an exception ended the task unobserved, the sync
    /// still showing its action. Raised outside the mirror's lock; an exception of a subscriber is
    /// dropped.
    /// </summary>
    public event Action<string, Exception>? BackgroundFaulted;

    /// <summary>For specs: called at the start of each sync pass, on the sync's thread (a throw stands for a bug of the sync).</summary>
    internal Action? BeforeSyncPass { get; set; }

    /// <summary>
    /// The <see cref="SyncStarted"/> of the pass running, or null between passes: a pass may start
    /// while the mirror is assembled (a recovery of a leg rebuilding, a resync after a crash),
    /// before anyone could subscribe, so a subscriber reads this once it has subscribed.
    /// </summary>
    public MirrorSyncStarted? CurrentSync
    {
        get
        {
            lock (_lock)
            {
                return _currentSync;
            }
        }
    }

    // Tells each subscriber of a notification: one that throws is skipped, so neither the mirror's
    // sync, a re-add, nor the I/O completion that failed a leg breaks on a listener (nor do the
    // listeners after it miss it): Listeners.
    private static void Notify<T>(Action<T>? handlers, T value) => Listeners.Raise(handlers, handler => handler(value));

    /// <summary>Read errors of leg <paramref name="leg"/> corrected from another leg (md's per-device <c>errors</c>).</summary>
    public long CorrectedReadErrors(int leg) => Interlocked.Read(ref _correctedReads[leg]);

    /// <summary>Regions whose bit is set in the write-intent bitmap.</summary>
    public int DirtyRegions()
    {
        lock (_lock)
        {
            return DirtyRegionsLocked();
        }
    }

    // Under _lock.
    private int DirtyRegionsLocked() => _bits.Sum(w => System.Numerics.BitOperations.PopCount(w));

    /// <summary>
    /// Re-adds a faulty leg (md <c>--re-add</c>): it becomes rebuilding, gets every write from now
    /// on, and is resynced in the background: for the bitmap's dirty regions when its superblock
    /// is this mirror's, whole otherwise.
    /// </summary>
    /// <exception cref="InvalidOperationException">The leg is not faulty, the mirror has failed, or the leg (its device, perhaps reconnected to another) is read-only, too small for the mirror's data and metadata (then a <see cref="MirrorLegTooSmallException"/>), of another block size, or has weaker limits than the mirror advertises (no discard, no write-zeroes, no FUA, a volatile write cache where the mirror has none, a larger memory alignment).</exception>
    public Task ReAddAsync(int leg) => ReAddAsync(leg, automatic: false);

    // A leg missing at the start was checked by nobody: an automatic re-add (its device appeared)
    // refuses it when it is blank or another mirror's (copying over it would destroy whatever it
    // holds without anyone deciding so), and when it was written apart from this mirror (a split
    // brain, WrittenApart). A re-add by hand does all of these, copying the leg whole.
    // expected: the device the caller means (a reconnection's); a slot whose device was replaced meanwhile is refused.
    private async Task ReAddAsync(int leg, bool automatic, IBlockDevice? expected = null)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(leg);
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(leg, _legs.Length);
        IBlockDevice device;
        MirrorLegTakenBack takenBack;
        lock (_lock)
        {
            device = expected ?? _legs[leg];
        }

        MirrorSuperblock? sb;
        using (var buffer = new AlignedBuffer(MirrorSuperblock.SuperblockBytes, Math.Max(AlignedBuffer.PageAlignment, device.MemoryAlignment)))
        {
            var status = await SafeIo(device, BlockOp.Read, 0, MirrorSuperblock.SuperblockBytes, buffer.Memory, RequestFlags.Sync).ConfigureAwait(false);
            if (status != BlockStatus.Ok)
            {
                throw new BlockIoException(device.Name, BlockOp.Read, 0, MirrorSuperblock.SuperblockBytes, status);
            }

            sb = MirrorSuperblock.TryDecode(buffer.Memory.Span);
        }

        lock (_lock)
        {
            // The slot's device was replaced while its superblock was read: that superblock says
            // nothing of the device now in the slot (ReplaceLegAsync).
            if (!ReferenceEquals(_legs[leg], device))
            {
                throw new InvalidOperationException($"{_name}: leg {device.Name} (slot {leg}) was replaced by {_legs[leg].Name} meanwhile.");
            }

            // A rebuilding leg whose recovery stopped (no leg could be read from) is started again.
            if (!_failed && _state[leg] == MirrorLegState.Rebuilding)
            {
                if (!_sync.IsCompleted)
                {
                    throw new InvalidOperationException($"{_name}: leg {_legs[leg].Name} is rebuilding now (sync_action: {_syncAction}).");
                }

                KickSync();
                return;
            }

            if (_failed || _state[leg] != MirrorLegState.Faulty)
            {
                throw new InvalidOperationException($"{_name}: leg {_legs[leg].Name} is {(_failed ? "gone with the whole mirror" : _state[leg].ToString().ToLowerInvariant())}, not faulty.");
            }

            CheckFits(_legs[leg]);
            var ours = sb is not null && sb.ArrayId == _arrayId && sb.Legs == _legs.Length && sb.Role == leg;
            if (automatic && _missingAtStart[leg] && !ours)
            {
                throw new InvalidOperationException(sb is null
                    ? $"{_name}: leg {_legs[leg].Name} was missing when the mirror started and its device holds no mirror metadata (blank, or used otherwise): it is not copied over by itself; a re-add by hand does."
                    : $"{_name}: leg {_legs[leg].Name} was missing when the mirror started and its device belongs to another mirror ({sb.ArrayId}, leg {sb.Role} of {sb.Legs}): it is not copied over by itself; a re-add by hand does.");
            }

            var apart = ours && WrittenApart(leg, sb!);
            if (automatic && apart)
            {
                throw new InvalidOperationException($"{_name}: leg {_legs[leg].Name} (generation {sb!.Generation}) was written after generation {LastHeldInSync(leg)}, the last at which this mirror counted it in sync: "
                    + "it was written apart from this mirror (a split brain), so it is not taken back by itself; a re-add by hand copies over its writes.");
            }

            // Known: the bitmap has every write it missed since it was last in sync. Unknown, or
            // written apart (its writes are in no bitmap of this mirror, and diverged histories
            // reuse generation numbers), or older than the generation at which the slot was last
            // in sync (an older copy of the device, or the one a replacement took the slot from):
            // all of it.
            if (!ours || sb!.Generation > _generation || apart || sb.Generation < _lastInSync[leg])
            {
                SetAllBits();
            }

            _missingAtStart[leg] = false;
            _wholeOnReturn[leg] = false;
            _recoveryOffset[leg] = 0;
            _state[leg] = MirrorLegState.Rebuilding;
            _generation++;
            if (_legs[leg] is IReconnectingBlockDevice reconnecting && _takenAt.Length > leg)
            {
                _takenAt[leg] = reconnecting.Incarnation;
            }

            // Counted as the leg turns rebuilding, under the lock that makes it so: whoever sees
            // the leg rebuilding or back in sync (or hears LegTakenBack) sees the count. Counted
            // after this method returned, a recovery it started could be done first.
            if (automatic)
            {
                Interlocked.Increment(ref _autoReAdds);
            }

            takenBack = new MirrorLegTakenBack(_legs[leg].Name, automatic ? MirrorLegReturn.Reconnect : MirrorLegReturn.ReAdd, DirtyRegionsLocked());
        }

        // Before the recovery can start (a pass running goes on to the next, for this leg too).
        Notify(LegTakenBack, takenBack);
        await PersistAsync(superblocks: true).ConfigureAwait(false);
        KickSync();
    }

    // A leg missing at the start went on without this mirror when its own superblock counts itself
    // in sync at a generation newer than the last at which this mirror counted it in sync (a
    // degraded start from a stale leg while it ran elsewhere). Decided by generations only, and
    // only for a leg missing at the start: an ordinary faulty leg's superblock stops at the
    // generation it failed in. A leg that was rebuilding when it failed counts itself rebuilding.
    // For a leg copied whole on return, the generation it was last in sync before its slot's was
    // raised (else a copy that went on apart up to that raised number would pass as in step).
    private bool WrittenApart(int leg, MirrorSuperblock sb) =>
        _missingAtStart[leg] && sb.States[leg] == MirrorLegState.InSync && sb.Generation > LastHeldInSync(leg);

    // Under _lock: the last generation at which this mirror counted the leg's device in sync.
    private long LastHeldInSync(int leg) => _wholeOnReturn[leg] ? _lastHeld[leg] : _lastInSync[leg];

    /// <summary>Marks a leg faulty by hand (md's <c>echo faulty &gt; state</c>); the mirror goes on degraded.</summary>
    /// <exception cref="InvalidOperationException">It is the last leg in sync.</exception>
    public Task FailLegAsync(int leg)
    {
        lock (_lock)
        {
            if (_state[leg] == MirrorLegState.InSync && _state.Count(s => s == MirrorLegState.InSync) == 1)
            {
                throw new InvalidOperationException($"{_name}: {_legs[leg].Name} is the last leg in sync.");
            }
        }

        return FailLeg(leg);
    }

    /// <summary>
    /// Starts md's <c>check</c>: every chunk is read from all in-sync legs and compared;
    /// differing sectors are counted in <see cref="MismatchSectors"/> (nothing is repaired).
    /// </summary>
    /// <exception cref="InvalidOperationException">The mirror is degraded or a sync runs.</exception>
    public Task CheckAsync() => StartCheck(repair: false);

    /// <summary>
    /// Starts md's <c>repair</c>: a <see cref="CheckAsync"/> that also writes the first leg's copy
    /// of every differing block over the other legs' (md's <c>process_checks</c> takes the first
    /// readable copy as the good one). <see cref="MismatchSectors"/> counts what was rewritten.
    /// </summary>
    /// <exception cref="InvalidOperationException">The mirror is degraded or a sync runs.</exception>
    public Task RepairAsync() => StartCheck(repair: true);

    private Task StartCheck(bool repair)
    {
        var action = repair ? "repair" : "check";
        lock (_lock)
        {
            if (_failed || _state.Any(s => s != MirrorLegState.InSync) || _resyncAfterCrash || !_sync.IsCompleted)
            {
                throw new InvalidOperationException($"{_name}: {action} needs every leg in sync and no sync running (sync_action: {(_frozen ? "frozen" : _syncAction)}).");
            }

            // md's action_store clears MD_RECOVERY_FROZEN for a check or repair.
            _frozen = false;
            _checkRequested = true;
            _repair = repair;
            _checkStop = CancellationTokenSource.CreateLinkedTokenSource(_stop.Token);
            _syncAction = action;
            _sync = Task.Run(SyncLoopAsync);
            return _sync;
        }
    }

    /// <inheritdoc />
    public override IEnumerable<StackPiece> Map(long offset, int length)
    {
        var legs = new List<StackPiece>();
        lock (_lock)
        {
            for (var i = 0; i < _legs.Length; i++)
            {
                if (_state[i] != MirrorLegState.Faulty)
                {
                    legs.Add(new StackPiece(_legs[i], MirrorSuperblock.DataOffset + offset, 0, length));
                }
            }
        }

        return legs;
    }

    /// <inheritdoc />
    public override void SubmitBio(RequestQueue queue, Bio bio)
    {
        ArgumentNullException.ThrowIfNull(queue);
        ArgumentNullException.ThrowIfNull(bio);
        // A failed mirror, or one stopped (md's stopped array), takes no more I/O.
        if (Volatile.Read(ref _failed) || _stop.IsCancellationRequested)
        {
            queue.EndBio(bio, BlockStatus.Offline);
            return;
        }

        Interlocked.Increment(ref _userIo);
        if (Volatile.Read(ref _suspended) is { } suspension)
        {
            // A leg is being replaced: this bio waits until it is (ReplaceLegAsync), or, asked
            // not to wait, ends with Again, as md answers a suspended array (bio_wouldblock_error).
            LeaveUserIo();
            if ((bio.Flags & RequestFlags.NoWait) != 0)
            {
                queue.EndBio(bio, BlockStatus.Again);
                return;
            }

            _ = SubmitAfterAsync(suspension, queue, bio);
            return;
        }

        switch (bio.Op)
        {
            case BlockOp.Read:
                _ = ReadAsync(queue, bio);
                break;
            case BlockOp.Write or BlockOp.Flush or BlockOp.Discard or BlockOp.WriteZeroes:
                _ = WriteAsync(queue, bio);
                break;
            default:
                // Counted in like every bio, so counted out: a replacement waits for the count.
                LeaveUserIo();
                queue.EndBio(bio, BlockStatus.NotSupported);
                break;
        }
    }

    /// <inheritdoc />
    public override void Dispose()
    {
        // Stopped first, and unwatched under the lock a replacement swaps legs under: a swap that
        // lands meanwhile sees the stop and watches nothing more.
        _stop.Cancel();
        lock (_lock)
        {
            UnwatchReconnects();
        }

        base.Dispose();
    }

    /// <summary>
    /// Stops the background sync, waits for its last chunk, clears the bitmap when every leg is in
    /// sync, flushes every leg and writes the superblocks, marked clean when no write is in flight
    /// (md's clean stop), so the next start resyncs nothing it need not. Call it after the last I/O and before the legs go
    /// away; I/O submitted after it (or after <see cref="StackTarget.Dispose"/>) ends with Offline.
    /// </summary>
    public async Task StopAsync()
    {
        await _stop.CancelAsync().ConfigureAwait(false);
        try
        {
            await SyncIdle.ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
        }

        lock (_lock)
        {
            if (_failed)
            {
                return;
            }

            // The recovery's last checkpoint, of what it copied before the stop.
            CheckpointLocked();
            if (_state.All(s => s == MirrorLegState.InSync))
            {
                ClearBitsOfIdleRegions();
            }

            // Clean only with no write in flight and no resync after a crash left: then the in-sync
            // legs hold the same data.
            _clean = _regionWrites.All(w => w == 0) && !_resyncAfterCrash;

            // Every leg flushed before the stop's superblocks, clean or not, as md's stop flushes:
            // before, a stop that could not mark the mirror clean (a resync owed, a leg away, a
            // write in flight) wrote them unflushed, and writes acknowledged before it were lost
            // to a power loss after it (found by a randomized model check).
            _flushOwed = true;
            _generation++;
        }

        await PersistAsync(superblocks: true).ConfigureAwait(false);
    }

    // ------------------------------------------------------------------ I/O

    private async Task WriteAsync(RequestQueue queue, Bio bio)
    {
        var status = BlockStatus.IoError;
        RangeGate.Holder? held = null;
        var marked = false;
        try
        {
            var ranged = bio.Op != BlockOp.Flush;
            if (ranged)
            {
                held = await _gate.EnterWriteAsync(bio.Offset, bio.Offset + bio.Size).ConfigureAwait(false);
            }

            // md's write-intent bitmap: the regions' bits are on the in-sync legs before any leg
            // sees the write, so after a crash or a leg failure the bitmap covers every range the
            // legs may disagree on.
            if (ranged)
            {
                marked = true;
                await MarkDirtyAsync(bio.Offset, bio.Size).ConfigureAwait(false);
            }

            // The legs' states at the write's start and their pending I/Os, inline in the state
            // machine (at most MaxLegs), so a write allocates no arrays.
            // A leg failed in memory whose faulty state is on no leg yet holds the write back until
            // it is (md_write_start waits for MD_SB_CHANGE_PENDING): issued before, it reached the
            // legs left while their superblocks still counted the failed leg in sync, so a crash
            // then assembled both as sources and the resync copied the failed leg's older data
            // over the acknowledged write.
            var atStart = default(LegStates);
            while (true)
            {
                bool owed;
                lock (_lock)
                {
                    for (var i = 0; i < _legs.Length; i++)
                    {
                        atStart[i] = _state[i];
                    }

                    owed = _persistedGeneration < _generation && !_failed;
                }

                if (!owed)
                {
                    break;
                }

                await PersistAsync(superblocks: true).ConfigureAwait(false);
            }

            // Every leg that is in sync or rebuilding gets the write at once.
            var pending = default(LegIos);
            for (var i = 0; i < _legs.Length; i++)
            {
                if (atStart[i] != MirrorLegState.Faulty)
                {
                    pending[i] = LegIo(i, bio.Op, bio.Offset, bio.Size, bio.Op == BlockOp.Write ? bio.Buffer : default, bio.Flags, bio.Cpu);
                }
            }

            var good = 0;
            var first = BlockStatus.Ok;
            for (var i = 0; i < _legs.Length; i++)
            {
                if (atStart[i] == MirrorLegState.Faulty)
                {
                    continue;
                }

                var s = await pending[i].ConfigureAwait(false);
                if (s == BlockStatus.Ok)
                {
                    good += atStart[i] == MirrorLegState.InSync ? 1 : 0;
                }
                else if (s == BlockStatus.NotSupported)
                {
                    first = BlockStatus.NotSupported;
                }
                else
                {
                    first = first == BlockStatus.Ok ? s : first;
                    await FailLeg(i).ConfigureAwait(false);
                }
            }

            status = Volatile.Read(ref _failed) ? BlockStatus.Offline
                : first == BlockStatus.NotSupported ? BlockStatus.NotSupported
                : good > 0 ? BlockStatus.Ok
                : first == BlockStatus.Ok ? BlockStatus.IoError : first;
        }
        catch (Exception)
        {
            // Nothing below throws by design; if it did, the bio still ends once.
            status = Volatile.Read(ref _failed) ? BlockStatus.Offline : BlockStatus.IoError;
        }
        finally
        {
            if (marked)
            {
                LeaveRegions(bio.Offset, bio.Size);
            }

            if (held is not null)
            {
                _gate.Exit(held);
            }

            LeaveUserIo();
            queue.EndBio(bio, status);
        }
    }

    private async Task ReadAsync(RequestQueue queue, Bio bio)
    {
        var status = BlockStatus.Offline;
        List<int>? bad = null;
        try
        {
            var tried = 0;
            var first = Volatile.Read(ref _resyncAfterCrash) && CrashPending(bio.Offset, bio.Size);
            while (true)
            {
                var leg = first ? FirstInSync(tried) : PickReadLeg(tried);
                if (leg < 0)
                {
                    break;
                }

                tried |= 1 << leg;
                var s = await LegIo(leg, BlockOp.Read, bio.Offset, bio.Size, bio.Buffer, bio.Flags, bio.Cpu).ConfigureAwait(false);
                if (s == BlockStatus.Ok)
                {
                    if (bad is not null)
                    {
                        await FixReadErrorAsync(bad, leg, bio.Offset, bio.Size).ConfigureAwait(false);
                    }

                    status = BlockStatus.Ok;
                    break;
                }

                status = s;
                if (s is BlockStatus.Offline or BlockStatus.Transport)
                {
                    // The leg is gone, not a bad sector: nothing to repair.
                    await FailLeg(leg).ConfigureAwait(false);
                }
                else
                {
                    (bad ??= []).Add(leg);
                }
            }
        }
        catch (Exception)
        {
            status = BlockStatus.IoError;
        }
        finally
        {
            LeaveUserIo();
            queue.EndBio(bio, status != BlockStatus.Ok && Volatile.Read(ref _failed) ? BlockStatus.Offline : status);
        }
    }

    // The lowest in-sync leg not tried: the one copy read (and copied from) where in-sync legs may differ.
    private int FirstInSync(int tried)
    {
        for (var i = 0; i < _legs.Length; i++)
        {
            if ((tried & (1 << i)) == 0 && LegState(i) == MirrorLegState.InSync)
            {
                return i;
            }
        }

        return -1;
    }

    // True when a region of the range still waits for the resync after a crash.
    private bool CrashPending(long offset, int length)
    {
        var (first, last) = RegionsOf(offset, length);
        var pending = Volatile.Read(ref _crashPending);
        for (var r = first; r <= last && pending.Length > 0; r++)
        {
            if ((Volatile.Read(ref pending[r >> 6]) & (1UL << (r & 63))) != 0)
            {
                return true;
            }
        }

        return false;
    }

    // Under _lock.
    private bool CrashPendingRegion(int r) => _crashPending.Length > 0 && (_crashPending[r >> 6] & (1UL << (r & 63))) != 0;

    // Under _lock: a leg to rebuild, or in-sync legs to make equal after a crash.
    private bool HasRecoverWork() => _resyncAfterCrash || _state.Any(s => s == MirrorLegState.Rebuilding);

    // The in-sync leg with the fewest I/Os in flight; ties go round-robin so sequential reads spread too.
    private int PickReadLeg(int tried)
    {
        var best = -1;
        var from = (int)((uint)Interlocked.Increment(ref _readRotor) % (uint)_legs.Length);
        for (var k = 0; k < _legs.Length; k++)
        {
            var i = (from + k) % _legs.Length;

            // A racy read of one byte: a leg failing meanwhile fails the read, which then goes on.
            if ((tried & (1 << i)) != 0 || _state[i] != MirrorLegState.InSync)
            {
                continue;
            }

            if (best < 0 || Volatile.Read(ref _inflight[i]) < Volatile.Read(ref _inflight[best]))
            {
                best = i;
            }
        }

        return best;
    }

    // md's fix_read_error: with the range held against writes, read the good data again and write
    // it over the failing range of each leg that failed the read; a leg that fails that too is faulty.
    private async Task FixReadErrorAsync(List<int> bad, int good, long offset, int length)
    {
        var held = await _gate.EnterExclusiveAsync(offset, offset + length).ConfigureAwait(false);
        try
        {
            using var buffer = new AlignedBuffer(length, Math.Max(AlignedBuffer.PageAlignment, _legs.Max(l => l.MemoryAlignment)));
            if (await LegIo(good, BlockOp.Read, offset, length, buffer.Memory, RequestFlags.Sync, IBlockDevice.AnyCpu).ConfigureAwait(false) != BlockStatus.Ok)
            {
                return;
            }

            foreach (var leg in bad)
            {
                if (LegState(leg) != MirrorLegState.InSync)
                {
                    continue;
                }

                var s = await LegIo(leg, BlockOp.Write, offset, length, buffer.Memory, RequestFlags.Sync, IBlockDevice.AnyCpu).ConfigureAwait(false);
                if (s == BlockStatus.Ok)
                {
                    Interlocked.Increment(ref _correctedReads[leg]);
                }
                else
                {
                    await FailLeg(leg).ConfigureAwait(false);
                }
            }
        }
        finally
        {
            _gate.Exit(held);
        }
    }

    private ValueTask<BlockStatus> LegIo(int leg, BlockOp op, long offset, long length, Memory<byte> buffer, RequestFlags flags, int cpu) =>
        SafeIo(_legs[leg], op, op == BlockOp.Flush ? 0 : MirrorSuperblock.DataOffset + offset, op == BlockOp.Flush ? 0 : length, buffer, flags, cpu, _inflight, leg);

    // One I/O on a leg as a status: a leg that refuses it or is being removed answers with a status too.
    // Each caller awaits it once, so its state machine comes from a pool: a write to a remote leg,
    // which completes later on the connection's thread, allocates no box for it.
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    private static async ValueTask<BlockStatus> SafeIo(IBlockDevice leg, BlockOp op, long offset, long length, Memory<byte> buffer, RequestFlags flags,
        int cpu = IBlockDevice.AnyCpu, int[]? inflight = null, int index = 0)
    {
        if (inflight is not null)
        {
            Interlocked.Increment(ref inflight[index]);
        }

        try
        {
            return await leg.ExecuteAsync(op, offset, length, buffer, flags & ~(RequestFlags.NoMerge | RequestFlags.Polled | RequestFlags.NoWait), cpu).ConfigureAwait(false);
        }
        catch (InvalidBlockRequestException ex)
        {
            return ex.Reason == InvalidRequestReason.NotSupported ? BlockStatus.NotSupported : BlockStatus.IoError;
        }
        catch (InvalidOperationException)
        {
            return BlockStatus.Offline;
        }
        finally
        {
            if (inflight is not null)
            {
                Interlocked.Decrement(ref inflight[index]);
            }
        }
    }

    [InlineArray(MirrorSuperblock.MaxLegs)]
    private struct LegStates
    {
        private MirrorLegState _first;
    }

    [InlineArray(MirrorSuperblock.MaxLegs)]
    private struct LegIos
    {
        private ValueTask<BlockStatus> _first;
    }
}
