using System.Globalization;
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
public sealed class MirrorTarget : StackTarget, IAttributeSource
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
    private readonly int[] _inflight;
    private readonly long[] _correctedReads;
    private readonly Guid _arrayId;
    private long _generation;
    private long _persistedGeneration = -1;
    private bool _failed;

    // The write-intent bitmap: one bit per region, written in 4 KiB pages. A page's version counts
    // its changes; persisted is the version last written to the legs.
    private readonly ulong[] _bits;
    private readonly ulong[] _touched;
    private readonly int[] _regionWrites;
    private readonly long[] _pageVersion;
    private readonly long[] _pagePersisted;

    // Background sync (recover or check), under _lock.
    private Task _sync = Task.CompletedTask;
    private bool _syncAgain;
    private string _syncAction = "idle";
    private long _syncDone;
    private long _syncTotal;
    private long _syncSpeedKiB;
    private bool _checkRequested;
    private CancellationTokenSource? _checkStop;
    private long _userIo;
    private int _readRotor;

    private MirrorTarget(string name, IReadOnlyList<IBlockDevice> legs, MirrorOptions options, long dataBytes, long regionBytes, Guid arrayId, TimeProvider time)
        : base(legs, dataBytes)
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
        _inflight = new int[_legs.Length];
        _correctedReads = new long[_legs.Length];
        _bits = new ulong[(Regions + 63) / 64];
        _touched = new ulong[_bits.Length];
        _regionWrites = new int[Regions];
        var pages = (int)(((Regions + 7) / 8 + MirrorSuperblock.BitmapPageBytes - 1) / MirrorSuperblock.BitmapPageBytes);
        _pageVersion = new long[pages];
        _pagePersisted = new long[pages];
        SyncSpeedMinKiB = options.SyncSpeedMinKiB;
        SyncSpeedMaxKiB = options.SyncSpeedMaxKiB;
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

    /// <summary>Lower resync rate limit in KiB/s: below it, resync does not yield to user I/O (md <c>sync_speed_min</c>).</summary>
    public long SyncSpeedMinKiB { get; set; }

    /// <summary>Upper resync rate limit in KiB/s (md <c>sync_speed_max</c>).</summary>
    public long SyncSpeedMaxKiB { get; set; }

    /// <summary>The sync running: <c>idle</c>, <c>recover</c> (rebuilding legs) or <c>check</c>.</summary>
    public string SyncAction
    {
        get
        {
            lock (_lock)
            {
                return _syncAction;
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
    public override string Description => $"mirror over {string.Join(", ", _legs.Select(l => l.Name))}, {RegionBytes >> 10} KiB regions";

    /// <summary>The state of leg <paramref name="leg"/>.</summary>
    public MirrorLegState LegState(int leg)
    {
        lock (_lock)
        {
            return _state[leg];
        }
    }

    /// <summary>Read errors of leg <paramref name="leg"/> corrected from another leg (md's per-device <c>errors</c>).</summary>
    public long CorrectedReadErrors(int leg) => Interlocked.Read(ref _correctedReads[leg]);

    /// <summary>Regions whose bit is set in the write-intent bitmap.</summary>
    public int DirtyRegions()
    {
        lock (_lock)
        {
            return _bits.Sum(w => System.Numerics.BitOperations.PopCount(w));
        }
    }

    /// <summary>
    /// Reads the legs' superblocks and starts the mirror (md's assemble): legs whose generation is
    /// the newest are the sources; an older leg the newest ones recorded as faulty is re-added and
    /// resynced for the bitmap's dirty regions; a blank leg is resynced whole. All legs blank make
    /// a new mirror whose first leg is the source (every leg in sync with
    /// <see cref="MirrorOptions.AssumeClean"/>).
    /// </summary>
    /// <exception cref="ArgumentException">Fewer than 2 or more than 3 legs, a leg twice, or legs of different block sizes or too small.</exception>
    /// <exception cref="MirrorAssemblyException">The legs belong to different mirrors, were written apart (none is clearly newest), or none is in sync.</exception>
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

        var lbs = legs[0].LogicalBlockSize;
        if (legs.Any(l => l.LogicalBlockSize != lbs) || MirrorSuperblock.SuperblockBytes % lbs != 0)
        {
            throw new ArgumentException($"mirror legs must share one logical block size of at most 4096 bytes ({string.Join(", ", legs.Select(l => $"{l.Name}: {l.LogicalBlockSize}"))}).", nameof(legs));
        }

        var smallest = legs.Min(l => l.Capacity);
        if (smallest < MirrorSuperblock.DataOffset + SyncChunkBytes)
        {
            throw new ArgumentException($"mirror legs must hold more than the {MirrorSuperblock.DataOffset >> 10} KiB metadata area and one {SyncChunkBytes >> 10} KiB chunk (smallest: {smallest} bytes).", nameof(legs));
        }

        // Superblocks; a leg that cannot be read starts faulty.
        var blocks = new MirrorSuperblock?[legs.Count];
        var unreadable = new bool[legs.Count];
        using (var buffer = new AlignedBuffer(MirrorSuperblock.SuperblockBytes, Math.Max(AlignedBuffer.PageAlignment, legs.Max(l => l.MemoryAlignment))))
        {
            for (var i = 0; i < legs.Count; i++)
            {
                cancellationToken.ThrowIfCancellationRequested();
                var status = await SafeIo(legs[i], BlockOp.Read, 0, MirrorSuperblock.SuperblockBytes, buffer.Memory, RequestFlags.Sync).ConfigureAwait(false);
                unreadable[i] = status != BlockStatus.Ok;
                blocks[i] = status == BlockStatus.Ok ? MirrorSuperblock.TryDecode(buffer.Memory.Span) : null;
            }
        }

        var plan = Plan(name, legs, blocks, unreadable);
        var existing = plan.Reference;
        var dataBytes = existing?.DataBytes ?? (smallest - MirrorSuperblock.DataOffset) / lbs * lbs;
        if (dataBytes > smallest - MirrorSuperblock.DataOffset)
        {
            throw new MirrorAssemblyException(name, $"the mirror holds {dataBytes} bytes but leg {legs.First(l => l.Capacity - MirrorSuperblock.DataOffset < dataBytes).Name} is too small for them.");
        }

        var regionBytes = existing?.RegionBytes ?? options.RegionBytes;
        while ((dataBytes + regionBytes - 1) / regionBytes > MirrorSuperblock.MaxRegions)
        {
            regionBytes *= 2;
        }

        var target = new MirrorTarget(name, legs, options, dataBytes, regionBytes, existing?.ArrayId ?? Guid.NewGuid(), time ?? TimeProvider.System);
        await target.StartAsync(plan, existing is null && options.AssumeClean).ConfigureAwait(false);
        return target;
    }

    /// <summary>
    /// Re-adds a faulty leg (md <c>--re-add</c>): it becomes rebuilding, gets every write from now
    /// on, and is resynced in the background: for the bitmap's dirty regions when its superblock
    /// is this mirror's, whole otherwise.
    /// </summary>
    /// <exception cref="InvalidOperationException">The leg is not faulty, or the mirror has failed.</exception>
    public async Task ReAddAsync(int leg)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(leg);
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(leg, _legs.Length);
        MirrorSuperblock? sb;
        using (var buffer = new AlignedBuffer(MirrorSuperblock.SuperblockBytes, Math.Max(AlignedBuffer.PageAlignment, _legs[leg].MemoryAlignment)))
        {
            var status = await SafeIo(_legs[leg], BlockOp.Read, 0, MirrorSuperblock.SuperblockBytes, buffer.Memory, RequestFlags.Sync).ConfigureAwait(false);
            if (status != BlockStatus.Ok)
            {
                throw new BlockIoException(_legs[leg].Name, BlockOp.Read, 0, MirrorSuperblock.SuperblockBytes, status);
            }

            sb = MirrorSuperblock.TryDecode(buffer.Memory.Span);
        }

        lock (_lock)
        {
            if (_failed || _state[leg] != MirrorLegState.Faulty)
            {
                throw new InvalidOperationException($"{_name}: leg {_legs[leg].Name} is {(_failed ? "gone with the whole mirror" : _state[leg].ToString().ToLowerInvariant())}, not faulty.");
            }

            // Known: the bitmap has every write it missed since it was last in sync. Unknown: all of it.
            if (sb is null || sb.ArrayId != _arrayId || sb.Generation > _generation)
            {
                SetAllBits();
            }

            _state[leg] = MirrorLegState.Rebuilding;
            _generation++;
        }

        await PersistAsync(superblocks: true).ConfigureAwait(false);
        KickSync();
    }

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
    public Task CheckAsync()
    {
        lock (_lock)
        {
            if (_failed || _state.Any(s => s != MirrorLegState.InSync) || !_sync.IsCompleted)
            {
                throw new InvalidOperationException($"{_name}: check needs every leg in sync and no sync running (sync_action: {_syncAction}).");
            }

            _checkRequested = true;
            _checkStop = CancellationTokenSource.CreateLinkedTokenSource(_stop.Token);
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
        if (Volatile.Read(ref _failed))
        {
            queue.EndBio(bio, BlockStatus.Offline);
            return;
        }

        Interlocked.Increment(ref _userIo);
        _ = bio.Op switch
        {
            BlockOp.Read => ReadAsync(queue, bio),
            BlockOp.Write or BlockOp.Flush or BlockOp.Discard or BlockOp.WriteZeroes => WriteAsync(queue, bio),
            _ => End(queue, bio, BlockStatus.NotSupported),
        };
    }

    /// <inheritdoc />
    public override void Dispose()
    {
        _stop.Cancel();
        base.Dispose();
    }

    /// <summary>
    /// Stops the background sync, waits for its last chunk and, when every leg is in sync and no
    /// write is in flight, clears the bitmap on the legs (md's clean stop), so the next start
    /// resyncs nothing. Call it after the last I/O and before the legs go away.
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
            if (_failed || _state.Any(s => s != MirrorLegState.InSync))
            {
                return;
            }

            ClearBitsOfIdleRegions();
        }

        await PersistAsync(superblocks: false).ConfigureAwait(false);
    }

    /// <inheritdoc />
    public void AddAttributes(string deviceDirectory, AttributeAdder add)
    {
        ArgumentNullException.ThrowIfNull(add);
        var md = deviceDirectory + "md/";
        add(md + "level", () => "raid1\n", null);
        add(md + "raid_disks", () => Line(_legs.Length), null);
        add(md + "degraded", () => Line(Degraded), null);
        add(md + "sync_action", () => SyncAction + "\n", async (path, text) =>
        {
            switch (text.Trim())
            {
                case "check":
                    try
                    {
                        _ = CheckAsync();
                    }
                    catch (InvalidOperationException ex)
                    {
                        throw new AttributeException(path, AttributeErrno.EBUSY, ex.Message);
                    }

                    break;
                case "idle":
                    CancellationTokenSource? stop;
                    lock (_lock)
                    {
                        stop = _syncAction == "check" ? _checkStop : null;
                    }

                    if (stop is not null)
                    {
                        await stop.CancelAsync().ConfigureAwait(false);
                    }

                    break;
                default:
                    throw new AttributeException(path, AttributeErrno.EINVAL, $"'{text.Trim()}' is not check or idle");
            }
        });
        add(md + "sync_completed", () =>
        {
            var (done, total) = SyncProgress;
            return total == 0 ? "none\n" : $"{done >> Bio.SectorShift} / {total >> Bio.SectorShift}\n";
        }, null);
        add(md + "sync_speed", () => SyncAction == "idle" ? "none\n" : Line(Interlocked.Read(ref _syncSpeedKiB)), null);
        add(md + "sync_speed_min", () => Line(SyncSpeedMinKiB), (path, text) => SetSpeed(path, text, min: true));
        add(md + "sync_speed_max", () => Line(SyncSpeedMaxKiB), (path, text) => SetSpeed(path, text, min: false));
        add(md + "mismatch_cnt", () => Line(MismatchSectors), null);
        add(md + "events", () => Line(Generation), null);
        add(md + "bitmap/chunksize", () => Line(RegionBytes), null);
        for (var i = 0; i < _legs.Length; i++)
        {
            var leg = i;
            var dir = $"{md}dev-{_legs[i].Name}/";
            add(dir + "state", () => LegState(leg) switch
            {
                MirrorLegState.InSync => "in_sync\n",
                MirrorLegState.Rebuilding => "spare\n",
                _ => "faulty\n",
            }, async (path, text) =>
            {
                try
                {
                    switch (text.Trim())
                    {
                        case "faulty":
                            await FailLegAsync(leg).ConfigureAwait(false);
                            break;
                        case "re-add":
                            await ReAddAsync(leg).ConfigureAwait(false);
                            break;
                        default:
                            throw new AttributeException(path, AttributeErrno.EINVAL, $"'{text.Trim()}' is not faulty or re-add");
                    }
                }
                catch (InvalidOperationException ex)
                {
                    throw new AttributeException(path, AttributeErrno.EBUSY, ex.Message);
                }
                catch (BlockIoException ex)
                {
                    throw new AttributeException(path, AttributeErrno.EBUSY, ex.Message);
                }
            });
            add(dir + "errors", () => Line(CorrectedReadErrors(leg)), null);
            add(dir + "slot", () => Line(leg), null);
        }
    }

    // ------------------------------------------------------------------ assembly

    private sealed record AssemblyPlan(MirrorSuperblock? Reference, MirrorLegState[] States, long[] LastInSync, long Generation, bool FullResync);

    // Decides each leg's part from the superblocks, or refuses (md's super_1_validate / analyse_sbs).
    private static AssemblyPlan Plan(string name, IReadOnlyList<IBlockDevice> legs, MirrorSuperblock?[] blocks, bool[] unreadable)
    {
        var n = legs.Count;
        var states = new MirrorLegState[n];
        var last = new long[n];
        var known = Enumerable.Range(0, n).Where(i => blocks[i] is not null).ToArray();
        if (known.Length == 0)
        {
            if (unreadable.Any(u => u))
            {
                throw new MirrorAssemblyException(name, $"leg(s) {string.Join(", ", Enumerable.Range(0, n).Where(i => unreadable[i]).Select(i => legs[i].Name))} cannot be read and no leg holds mirror metadata.");
            }

            return new AssemblyPlan(null, states, last, 0, true);
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
            // apart from it (a split brain): refuse rather than pick one.
            if (sb.States[i] == MirrorLegState.InSync && sources.Any(s => sb.States[s] == MirrorLegState.Faulty))
            {
                throw new MirrorAssemblyException(name, $"leg {legs[i].Name} (generation {sb.Generation}) was written while it counted {string.Join(", ", sources.Where(s => sb.States[s] == MirrorLegState.Faulty).Select(s => legs[s].Name))} faulty, "
                    + $"and that leg went on without it up to generation {newest}: the legs were written apart and none is clearly newest.");
            }

            // Recorded faulty or rebuilding by the newest legs: the bitmap holds every region it
            // missed. Otherwise (they think it in sync but it is behind, as after a crash between
            // superblock writes) no bitmap covers it: copy it whole.
            states[i] = MirrorLegState.Rebuilding;
            full |= reference.States[i] is not (MirrorLegState.Faulty or MirrorLegState.Rebuilding);
        }

        return new AssemblyPlan(reference, states, last, newest, full);
    }

    private async Task StartAsync(AssemblyPlan plan, bool assumeClean)
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

            // Every leg in sync yet bits set: the mirror stopped with writes in flight (a crash), so
            // the legs may differ in those regions. As md's resync after an unclean shutdown, the
            // first leg is the source and the others are rebuilt for those regions.
            if (_state.All(s => s == MirrorLegState.InSync) && _bits.Any(w => w != 0))
            {
                for (var i = 1; i < _state.Length; i++)
                {
                    _state[i] = MirrorLegState.Rebuilding;
                }
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

            MirrorLegState[] atStart;
            lock (_lock)
            {
                atStart = [.. _state];
            }

            // Every leg that is in sync or rebuilding gets the write at once.
            var pending = new ValueTask<BlockStatus>[_legs.Length];
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

            Interlocked.Decrement(ref _userIo);
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
            while (true)
            {
                var leg = PickReadLeg(tried);
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
            Interlocked.Decrement(ref _userIo);
            queue.EndBio(bio, status != BlockStatus.Ok && Volatile.Read(ref _failed) ? BlockStatus.Offline : status);
        }
    }

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

    private static Task End(RequestQueue queue, Bio bio, BlockStatus status)
    {
        queue.EndBio(bio, status);
        return Task.CompletedTask;
    }

    private ValueTask<BlockStatus> LegIo(int leg, BlockOp op, long offset, long length, Memory<byte> buffer, RequestFlags flags, int cpu) =>
        SafeIo(_legs[leg], op, op == BlockOp.Flush ? 0 : MirrorSuperblock.DataOffset + offset, op == BlockOp.Flush ? 0 : length, buffer, flags, cpu, _inflight, leg);

    // One I/O on a leg as a status: a leg that refuses it or is being removed answers with a status too.
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

    // ------------------------------------------------------------------ leg failure and metadata

    // Marks a leg faulty and writes the new state to the legs left; completes when that is on them.
    // The last leg in sync failing fails the mirror: every I/O then ends Offline.
    private Task FailLeg(int leg)
    {
        lock (_lock)
        {
            if (_state[leg] == MirrorLegState.Faulty)
            {
                // Another I/O failed it first; this one waits until that is on the legs too.
                return _failed ? Task.CompletedTask : PersistAsync(superblocks: true);
            }

            if (_state[leg] == MirrorLegState.InSync)
            {
                _lastInSync[leg] = _generation;
            }

            _state[leg] = MirrorLegState.Faulty;
            if (_state.Any(s => s == MirrorLegState.InSync))
            {
                _generation++;
                return PersistAsync(superblocks: true);
            }

            Volatile.Write(ref _failed, true);
        }

        // Outside the lock: cancelling runs the sync's continuations.
        _stop.Cancel();
        return Task.CompletedTask;
    }

    private void SetAllBits()
    {
        for (var r = 0; r < Regions; r++)
        {
            _bits[r >> 6] |= 1UL << (r & 63);
        }

        BumpPages();
    }

    private void BumpPages()
    {
        for (var p = 0; p < _pageVersion.Length; p++)
        {
            _pageVersion[p]++;
        }
    }

    // Counts a write in its regions, sets their bits and returns once the pages holding them are
    // on every in-sync leg.
    private Task MarkDirtyAsync(long offset, int length)
    {
        var (first, last) = RegionsOf(offset, length);
        var firstPage = first / (MirrorSuperblock.BitmapPageBytes * 8);
        var lastPage = last / (MirrorSuperblock.BitmapPageBytes * 8);
        var clean = true;
        lock (_lock)
        {
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

        return clean ? Task.CompletedTask : PersistAsync(superblocks: false);
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
                    if ((_bits[r >> 6] & bit) != 0 && _regionWrites[r] == 0 && (_touched[r >> 6] & bit) == 0)
                    {
                        _bits[r >> 6] &= ~bit;
                        _pageVersion[r / (MirrorSuperblock.BitmapPageBytes * 8)]++;
                        changed = true;
                    }
                }
            }

            Array.Clear(_touched);
        }

        return changed ? PersistAsync(superblocks: false) : Task.CompletedTask;
    }

    // With every leg in sync, the bits of regions no write is in flight on are owed to nobody. Under the lock.
    private void ClearBitsOfIdleRegions()
    {
        for (var r = 0; r < Regions; r++)
        {
            var bit = 1UL << (r & 63);
            if ((_bits[r >> 6] & bit) != 0 && _regionWrites[r] == 0)
            {
                _bits[r >> 6] &= ~bit;
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
        List<int>? failed = null;
        try
        {
            MirrorLegState[] states;
            long generation;
            long[] last;
            var dirtyPages = new List<(int Page, long Version, byte[] Bytes)>();
            lock (_lock)
            {
                // Nothing to do when the newest state and every bitmap page are on the legs already.
                if (_failed || (_persistedGeneration == _generation && _pageVersion.AsSpan().SequenceEqual(_pagePersisted)))
                {
                    return;
                }

                states = [.. _state];
                generation = _generation;
                last = [.. _lastInSync];
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

            using var buffer = new AlignedBuffer(MirrorSuperblock.SuperblockBytes, Math.Max(AlignedBuffer.PageAlignment, _legs.Max(l => l.MemoryAlignment)));
            for (var i = 0; i < _legs.Length; i++)
            {
                if (states[i] == MirrorLegState.Faulty)
                {
                    continue;
                }

                var ok = true;
                if (states[i] == MirrorLegState.InSync)
                {
                    foreach (var (page, _, bytes) in dirtyPages)
                    {
                        bytes.CopyTo(buffer.Memory.Span);
                        ok &= await SafeIo(_legs[i], BlockOp.Write, MirrorSuperblock.BitmapPageOffset(page), MirrorSuperblock.BitmapPageBytes, buffer.Memory,
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
                        Generation = generation,
                        DataBytes = DataBytes,
                        RegionBytes = RegionBytes,
                        States = [.. states, .. new MirrorLegState[MirrorSuperblock.MaxLegs - states.Length]],
                        LastInSync = [.. last, .. new long[MirrorSuperblock.MaxLegs - last.Length]],
                    }.Encode(buffer.Memory.Span);
                    ok = await SafeIo(_legs[i], BlockOp.Write, 0, MirrorSuperblock.SuperblockBytes, buffer.Memory, RequestFlags.Fua | RequestFlags.Sync).ConfigureAwait(false) == BlockStatus.Ok;
                }

                if (!ok)
                {
                    (failed ??= []).Add(i);
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
        finally
        {
            _metaLock.Release();
        }

        foreach (var leg in failed ?? [])
        {
            await FailLeg(leg).ConfigureAwait(false);
        }
    }

    // ------------------------------------------------------------------ resync and check

    private void KickSync()
    {
        lock (_lock)
        {
            if (_failed || _stop.IsCancellationRequested || !_state.Any(s => s == MirrorLegState.Rebuilding))
            {
                return;
            }

            if (!_sync.IsCompleted)
            {
                _syncAgain = true;
                return;
            }

            _sync = Task.Run(SyncLoopAsync);
        }
    }

    private async Task SyncLoopAsync()
    {
        try
        {
            while (true)
            {
                bool check;
                lock (_lock)
                {
                    _syncAgain = false;
                    check = _checkRequested;
                    _checkRequested = false;
                    if (_failed || _stop.IsCancellationRequested || (!check && !_state.Any(s => s == MirrorLegState.Rebuilding)))
                    {
                        _syncAction = "idle";
                        _syncDone = _syncTotal = 0;
                        return;
                    }

                    _syncAction = check ? "check" : "recover";
                }

                var finished = true;
                if (check)
                {
                    await CheckPassAsync(_checkStop!.Token).ConfigureAwait(false);
                }
                else
                {
                    finished = await RecoverPassAsync(_stop.Token).ConfigureAwait(false);
                }

                lock (_lock)
                {
                    // A recover that found no leg to copy from stops; a re-add starts it again.
                    if (!_syncAgain && (check || !finished || !_state.Any(s => s == MirrorLegState.Rebuilding)))
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
    }

    // md's recovery: copy each dirty region from an in-sync leg to the rebuilding legs, a chunk at
    // a time with the chunk held against writes, so no write can land between the read and the copy.
    private async Task<bool> RecoverPassAsync(CancellationToken ct)
    {
        int[] targets;
        var dirty = new List<int>();
        lock (_lock)
        {
            targets = [.. Enumerable.Range(0, _legs.Length).Where(i => _state[i] == MirrorLegState.Rebuilding)];
            for (var r = 0; r < Regions; r++)
            {
                if ((_bits[r >> 6] & (1UL << (r & 63))) != 0)
                {
                    dirty.Add(r);
                }
            }

            _syncDone = 0;
            _syncTotal = dirty.Sum(r => RegionLength(r));
        }

        var throttle = new Throttle(this);
        using var buffer = new AlignedBuffer(SyncChunkBytes, Math.Max(AlignedBuffer.PageAlignment, _legs.Max(l => l.MemoryAlignment)));
        foreach (var r in dirty)
        {
            var start = r * RegionBytes;
            var end = start + RegionLength(r);
            for (var at = start; at < end; at += SyncChunkBytes)
            {
                ct.ThrowIfCancellationRequested();
                targets = [.. targets.Where(t => LegState(t) == MirrorLegState.Rebuilding)];
                if (targets.Length == 0)
                {
                    return true;
                }

                var length = (int)Math.Min(SyncChunkBytes, end - at);
                if (!await CopyChunkAsync(targets, at, buffer.Memory[..length]).ConfigureAwait(false))
                {
                    return false;
                }

                lock (_lock)
                {
                    _syncDone += length;
                }

                await throttle.AfterAsync(length, ct).ConfigureAwait(false);
            }

            // A region counts as copied only if a leg got all of it.
            targets = [.. targets.Where(t => LegState(t) == MirrorLegState.Rebuilding)];
            if (targets.Length == 0)
            {
                return true;
            }

            Interlocked.Increment(ref _resyncedRegions);
            lock (_lock)
            {
                // With no faulty leg the region's bit is owed to nobody any more.
                if (!_state.Any(s => s == MirrorLegState.Faulty))
                {
                    _bits[r >> 6] &= ~(1UL << (r & 63));
                    _pageVersion[r / (MirrorSuperblock.BitmapPageBytes * 8)]++;
                }
            }
        }

        lock (_lock)
        {
            var done = false;
            foreach (var t in targets)
            {
                if (_state[t] == MirrorLegState.Rebuilding)
                {
                    _state[t] = MirrorLegState.InSync;
                    done = true;
                }
            }

            if (!done)
            {
                return true;
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
        return true;
    }

    private async Task<bool> CopyChunkAsync(int[] targets, long at, Memory<byte> chunk)
    {
        var held = await _gate.EnterExclusiveAsync(at, at + chunk.Length).ConfigureAwait(false);
        try
        {
            var tried = 0;
            while (true)
            {
                var source = PickReadLeg(tried);
                if (source < 0)
                {
                    // No leg to copy from: the rebuilding legs stay rebuilding.
                    return false;
                }

                tried |= 1 << source;
                var s = await LegIo(source, BlockOp.Read, at, chunk.Length, chunk, RequestFlags.Sync, IBlockDevice.AnyCpu).ConfigureAwait(false);
                if (s == BlockStatus.Ok)
                {
                    break;
                }

                if (s is BlockStatus.Offline or BlockStatus.Transport)
                {
                    await FailLeg(source).ConfigureAwait(false);
                }
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
        finally
        {
            _gate.Exit(held);
        }
    }

    private async Task CheckPassAsync(CancellationToken ct)
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

    private ValueTask SetSpeed(string path, string text, bool min)
    {
        if (!long.TryParse(text.Trim(), NumberStyles.None, CultureInfo.InvariantCulture, out var kib) || kib <= 0)
        {
            throw new AttributeException(path, AttributeErrno.EINVAL, $"'{text.Trim()}' is not a rate in KiB/s");
        }

        if (min)
        {
            SyncSpeedMinKiB = kib;
        }
        else
        {
            SyncSpeedMaxKiB = kib;
        }

        return ValueTask.CompletedTask;
    }

    private static string Line(long value) => value.ToString(CultureInfo.InvariantCulture) + "\n";

    // md's sync throttle: never above sync_speed_max; above sync_speed_min only while no user I/O
    // is in flight on the mirror. Rates are averaged over the pass; the clock is the mirror's
    // TimeProvider, so tests move it by hand.
    private sealed class Throttle(MirrorTarget mirror)
    {
        private readonly long _start = mirror._time.GetTimestamp();
        private long _bytes;

        public async ValueTask AfterAsync(int bytes, CancellationToken ct)
        {
            _bytes += bytes;
            var elapsed = mirror._time.GetElapsedTime(_start);
            var busy = Interlocked.Read(ref mirror._userIo) > 0;
            var limit = Math.Max(1, busy ? mirror.SyncSpeedMinKiB : mirror.SyncSpeedMaxKiB);
            var due = TimeSpan.FromSeconds(_bytes / 1024.0 / limit);
            Interlocked.Exchange(ref mirror._syncSpeedKiB, (long)(_bytes / 1024.0 / Math.Max(elapsed.TotalSeconds, due.TotalSeconds)));
            if (due > elapsed)
            {
                await Task.Delay(due - elapsed, mirror._time, ct).ConfigureAwait(false);
            }
        }
    }
}

/// <summary>Options of a mirror (md's create-time and sysfs settings).</summary>
public sealed record MirrorOptions
{
    /// <summary>Default bytes per write-intent bitmap bit: 64 MiB, as mdadm chooses for large arrays.</summary>
    public const long DefaultRegionBytes = 64L << 20;

    /// <summary>Bytes of data per bitmap bit, a power of two from 64 KiB (fixed when the mirror is created; its legs' metadata wins afterwards).</summary>
    public long RegionBytes { get; init; } = DefaultRegionBytes;

    /// <summary>md's <c>sync_speed_min</c> in KiB/s (1000 by default).</summary>
    public long SyncSpeedMinKiB { get; init; } = 1000;

    /// <summary>md's <c>sync_speed_max</c> in KiB/s (200000 by default).</summary>
    public long SyncSpeedMaxKiB { get; init; } = 200_000;

    /// <summary>How often the bitmap daemon clears the bits of idle regions while every leg is in sync (md's <c>daemon_sleep</c>, 5 s).</summary>
    public TimeSpan BitmapDaemonInterval { get; init; } = TimeSpan.FromSeconds(5);

    /// <summary>For a new mirror: the legs are known to be equal (all zero), so no first resync (mdadm <c>--assume-clean</c>).</summary>
    public bool AssumeClean { get; init; }

    /// <summary>Checks the values.</summary>
    /// <exception cref="ArgumentException">A value is out of range.</exception>
    public void Validate()
    {
        if (RegionBytes < MirrorTarget.SyncChunkBytes || (RegionBytes & (RegionBytes - 1)) != 0)
        {
            throw new ArgumentException($"region of {RegionBytes} bytes is not a power of two of at least {MirrorTarget.SyncChunkBytes >> 10} KiB.", nameof(RegionBytes));
        }

        if (BitmapDaemonInterval <= TimeSpan.Zero)
        {
            throw new ArgumentException($"bitmap daemon interval {BitmapDaemonInterval} is not positive.", nameof(BitmapDaemonInterval));
        }

        if (SyncSpeedMinKiB <= 0 || SyncSpeedMaxKiB < SyncSpeedMinKiB)
        {
            throw new ArgumentException($"sync speeds must satisfy 0 < min ({SyncSpeedMinKiB}) <= max ({SyncSpeedMaxKiB}) KiB/s.", nameof(SyncSpeedMaxKiB));
        }
    }
}
