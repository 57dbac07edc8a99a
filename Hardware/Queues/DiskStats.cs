using System.Diagnostics.CodeAnalysis;
using System.Globalization;
using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using ActorBlk.Hardware.Requests;

namespace ActorBlk.Hardware.Queues;

/// <summary>The four stat groups of <c>enum stat_group</c>: reads, writes, discards, flushes.</summary>
public enum StatGroup
{
    /// <summary>Reads.</summary>
    Read = 0,

    /// <summary>Writes (and write-zeroes).</summary>
    Write = 1,

    /// <summary>Discards.</summary>
    Discard = 2,

    /// <summary>Empty flushes.</summary>
    Flush = 3,
}

/// <summary>
/// One reading of a disk's I/O statistics: the 17 fields of <c>/sys/block/&lt;dev&gt;/stat</c>
/// (Documentation/block/stat.rst), sectors of 512 bytes and times in milliseconds.
/// </summary>
/// <param name="ReadIos">Field 1: reads completed.</param>
/// <param name="ReadMerges">Field 2: read bios merged into a request.</param>
/// <param name="ReadSectors">Field 3: sectors read.</param>
/// <param name="ReadTicks">Field 4: milliseconds reads spent from request allocation to completion, summed.</param>
/// <param name="WriteIos">Field 5: writes completed.</param>
/// <param name="WriteMerges">Field 6: write bios merged.</param>
/// <param name="WriteSectors">Field 7: sectors written.</param>
/// <param name="WriteTicks">Field 8: write milliseconds, summed.</param>
/// <param name="InFlight">Field 9: requests started and not completed, now.</param>
/// <param name="IoTicks">Field 10: milliseconds with at least one request in flight.</param>
/// <param name="TimeInQueue">Field 11: the weighted milliseconds (the sum of fields 4, 8, 15 and 17, as the kernel computes it since 5.0).</param>
/// <param name="DiscardIos">Field 12: discards completed.</param>
/// <param name="DiscardMerges">Field 13: discard bios merged.</param>
/// <param name="DiscardSectors">Field 14: sectors discarded.</param>
/// <param name="DiscardTicks">Field 15: discard milliseconds, summed.</param>
/// <param name="FlushIos">Field 16: flushes completed.</param>
/// <param name="FlushTicks">Field 17: flush milliseconds, summed.</param>
public readonly record struct DiskStatSample(
    ulong ReadIos, ulong ReadMerges, ulong ReadSectors, ulong ReadTicks,
    ulong WriteIos, ulong WriteMerges, ulong WriteSectors, ulong WriteTicks,
    ulong InFlight, ulong IoTicks, ulong TimeInQueue,
    ulong DiscardIos, ulong DiscardMerges, ulong DiscardSectors, ulong DiscardTicks,
    ulong FlushIos, ulong FlushTicks)
{
    /// <summary>The line of the <c>stat</c> file (<c>part_stat_show</c>: 17 fields of width 8).</summary>
    public string Format() => string.Create(CultureInfo.InvariantCulture,
        $"{ReadIos,8} {ReadMerges,8} {ReadSectors,8} {ReadTicks,8} {WriteIos,8} {WriteMerges,8} {WriteSectors,8} {WriteTicks,8} {InFlight,8} {IoTicks,8} {TimeInQueue,8} {DiscardIos,8} {DiscardMerges,8} {DiscardSectors,8} {DiscardTicks,8} {FlushIos,8} {FlushTicks,8}\n");

    /// <summary>
    /// Parses a <c>stat</c> line. Older kernels print 11 (before 4.18) or 15 (before 5.5) fields;
    /// the fields they lack read 0.
    /// </summary>
    /// <exception cref="FormatException">Fewer than 11 fields, or a field that is not an unsigned number.</exception>
    public static DiskStatSample Parse(string line)
    {
        ArgumentNullException.ThrowIfNull(line);
        var parts = line.Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries);
        if (parts.Length < 11)
        {
            throw new FormatException($"a stat line has 11, 15 or 17 fields, not {parts.Length}: '{line.Trim()}'");
        }

        var f = new ulong[17];
        for (var i = 0; i < Math.Min(17, parts.Length); i++)
        {
            if (!ulong.TryParse(parts[i], NumberStyles.None, CultureInfo.InvariantCulture, out f[i]))
            {
                throw new FormatException($"stat field {i + 1} '{parts[i]}' is not an unsigned number");
            }
        }

        return new DiskStatSample(f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8], f[9], f[10], f[11], f[12], f[13], f[14], f[15], f[16]);
    }
}

/// <summary>
/// The I/O accounting of one disk (<c>struct disk_stats</c>, blk-core.c <c>update_io_ticks</c>,
/// blk-mq.c <c>blk_account_io_start</c>/<c>blk_account_io_done</c>): per-CPU slots, each on its
/// own cache lines, written by the thread running on that processor and summed on read; nothing
/// allocated per I/O. The only shared word is the io_ticks stamp, written at most once per
/// millisecond.
/// </summary>
/// <remarks>
/// A request is accounted from its allocation (<c>start_time_ns</c>) to its completion, whatever
/// its status; in_flight is the number started and not yet done, split reads / writes as the
/// <c>inflight</c> file shows it (writes, discards and flushes are writes, <c>op_is_write</c>).
/// A slot is chosen by the processor the thread runs on; the adds are interlocked, so a thread
/// moved between the read of its processor id and the add cannot lose a count.
/// A dispatch loop of a driver that does not block accounts in batches (<see cref="EnterBatch"/>):
/// the starts and completions of its rounds are summed in the thread's own counters with plain
/// adds and added to a slot every <c>DispatchLoop.StatsFlushEvery</c> of them and whenever the
/// loop stops running rounds (before it spins or parks), so they cost a handful of interlocked
/// adds per flush instead of five per request. A reader can therefore miss the counts of the
/// last few rounds of a loop that is still busy, never those of an idle one; starts are added
/// before completions, so in_flight never reads low because of a batch's own completions (a start
/// still held in a loop's batch whose completion another thread counted at once, on a completion
/// worker, can make it read low until the batch is added). A direct round run by a submitter is
/// its own batch, flushed when it ends.
/// </remarks>
public sealed class DiskStats
{
    private const int Groups = 4;
    private readonly Slot[] _slots;
    private readonly int _mask;
    private readonly BlockClock _clock;
    private readonly long[] _errors = new long[32]; // by BlockStatus; the rare path, not per processor
    private long _stampNs; // update_io_ticks' bd_stamp, in ns; compared at millisecond granularity
    private long _ioTicksMs;
    private long _timeouts;
    private long _resets;
    private long _remaps;

    /// <summary>Creates the accounting of a disk, timed on <paramref name="clock"/>.</summary>
    /// <param name="clock">The clock requests are timed on.</param>
    /// <param name="device">The disk's name: the <c>device</c> tag of its metrics.</param>
    public DiskStats(BlockClock clock, string device = "")
    {
        ArgumentNullException.ThrowIfNull(clock);
        ArgumentNullException.ThrowIfNull(device);
        _clock = clock;
        Device = device;
        var slots = (int)BitOperations.RoundUpToPowerOf2((uint)Math.Max(1, Environment.ProcessorCount));
        _slots = new Slot[slots];
        _mask = slots - 1;
        _stampNs = clock.NowNanoseconds;
    }

    /// <summary>The disk's name.</summary>
    public string Device { get; }

    /// <summary>Requests that timed out (reported by the timeout handler).</summary>
    public long Timeouts => Interlocked.Read(ref _timeouts);

    /// <summary>Device resets.</summary>
    public long Resets => Interlocked.Read(ref _resets);

    /// <summary>Re-maps of the hardware queues to CPUs (CPU hotplug, <c>blk_mq_map_swqueue</c>).</summary>
    public long Remaps => Interlocked.Read(ref _remaps);

    /// <summary>Requests completed with <paramref name="status"/> (0 for <see cref="BlockStatus.Ok"/>, which is not counted as an error).</summary>
    public long Errors(BlockStatus status) => (uint)status < (uint)_errors.Length ? Interlocked.Read(ref _errors[(int)status]) : 0;

    /// <summary>Counts <paramref name="expired"/> timed-out requests.</summary>
    public void CountTimeouts(long expired) => Interlocked.Add(ref _timeouts, expired);

    /// <summary>Counts a device reset.</summary>
    public void CountReset() => Interlocked.Increment(ref _resets);

    /// <summary>Counts a re-map.</summary>
    public void CountRemap() => Interlocked.Increment(ref _remaps);

    /// <summary>The clock the accounting reads, in nanoseconds.</summary>
    public long NowNanoseconds => _clock.NowNanoseconds;

    /// <summary>The stat group of an operation (<c>op_stat_group</c>, with empty flushes in their own group).</summary>
    public static StatGroup GroupOf(BlockOp op) => op switch
    {
        BlockOp.Read => StatGroup.Read,
        BlockOp.Discard => StatGroup.Discard,
        BlockOp.Flush => StatGroup.Flush,
        _ => StatGroup.Write,
    };

    /// <summary><c>blk_account_io_start</c>: a request starts being accounted; returns its start time (ns, never 0).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public long Start(BlockOp op) => Start(op, BlockThread.Current);

    /// <summary><see cref="Start(BlockOp)"/> for a caller that holds the calling thread's state.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal long Start(BlockOp op, BlockThread thread)
    {
        var now = _clock.NowNanosecondsOn(thread);
        UpdateIoTicks(now, end: false);
        if (ReferenceEquals(thread.StatsOwner, this))
        {
            var batch = thread.StatsBatch!;
            batch.Pending++;
            if (op == BlockOp.Read)
            {
                batch.StartedRead++;
            }
            else
            {
                batch.StartedWrite++;
            }
        }
        else
        {
            ref var slot = ref Local();
            Interlocked.Increment(ref (op == BlockOp.Read ? ref slot.StartedRead : ref slot.StartedWrite));
        }

        return now == 0 ? 1 : now;
    }

    /// <summary>
    /// Makes the calling thread's accounting for this disk one batch until <see cref="ExitBatch"/>
    /// (a dispatch round, or a dispatch loop while it runs rounds back to back): counts go to the
    /// thread's counters and reach the slots at <see cref="FlushBatch"/> or <see cref="ExitBatch"/>.
    /// Returns false, and batches nothing, when the thread already batches (for this disk or for
    /// another one whose round called into this one); pass the result to <see cref="ExitBatch"/>.
    /// </summary>
    internal bool EnterBatch()
    {
        var thread = BlockThread.Current;
        if (thread.StatsOwner is not null)
        {
            return false;
        }

        thread.StatsBatch ??= new BatchCounters();
        thread.StatsOwner = this;
        return true;
    }

    /// <summary>Ends the batch <see cref="EnterBatch"/> started (when it returned true): adds its counts to a slot.</summary>
    internal void ExitBatch(bool entered)
    {
        if (!entered)
        {
            return;
        }

        FlushBatch();
        BlockThread.Current.StatsOwner = null;
    }

    /// <summary>The number of starts and completions the calling thread holds for this disk, not yet added to a slot.</summary>
    internal long BatchPending => BatchPendingOn(BlockThread.Current);

    /// <summary><see cref="BatchPending"/> for a caller that holds the calling thread's state.</summary>
    internal long BatchPendingOn(BlockThread thread) => ReferenceEquals(thread.StatsOwner, this) ? thread.StatsBatch!.Pending : 0;

    /// <summary>
    /// Adds the counts the calling thread holds in a batch, for whichever disk it batches, to that
    /// disk's slots: before a completion wakes an awaiter (which may read on any thread) or ends a
    /// piece of a split bio.
    /// </summary>
    internal static void FlushThreadBatch() => BlockThread.Current.StatsOwner?.FlushBatch();

    /// <summary>Adds the counts the calling thread holds for this disk to a slot (nothing when it holds none).</summary>
    internal void FlushBatch()
    {
        var thread = BlockThread.Current;
        if (!ReferenceEquals(thread.StatsOwner, this))
        {
            return;
        }

        var batch = thread.StatsBatch!;
        if (batch.Pending == 0)
        {
            return;
        }

        ref var slot = ref Local();

        // Starts first: a reader sums completions before starts, so in_flight cannot read low.
        AddIfAny(ref slot.StartedRead, ref batch.StartedRead);
        AddIfAny(ref slot.StartedWrite, ref batch.StartedWrite);
        for (var g = 0; g < Groups; g++)
        {
            AddIfAny(ref slot.Ios((StatGroup)g), ref batch.Ios[g]);
            AddIfAny(ref slot.Sectors((StatGroup)g), ref batch.Sectors[g]);
            AddIfAny(ref slot.Nanoseconds((StatGroup)g), ref batch.Nanoseconds[g]);
        }

        AddIfAny(ref slot.DoneRead, ref batch.DoneRead);
        AddIfAny(ref slot.DoneWrite, ref batch.DoneWrite);
        batch.Pending = 0;

        static void AddIfAny(ref long target, ref long count)
        {
            if (count != 0)
            {
                Interlocked.Add(ref target, count);
                count = 0;
            }
        }
    }

    /// <summary><c>blk_account_io_merge_bio</c>: a bio of <paramref name="op"/> merged into a request.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Merge(BlockOp op)
    {
        ref var slot = ref Local();
        Interlocked.Increment(ref slot.Merges(GroupOf(op)));
    }

    /// <summary>
    /// <c>blk_account_io_completion</c> and <c>blk_account_io_done</c>: a request of
    /// <paramref name="sectors"/> sectors started at <paramref name="startNs"/> (from <see cref="Start(BlockOp)"/>) is done.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Done(BlockOp op, int sectors, long startNs, BlockStatus status = BlockStatus.Ok) =>
        Done(op, sectors, startNs, BlockThread.Current, status);

    /// <summary><see cref="Done(BlockOp, int, long, BlockStatus)"/> for a caller that holds the calling thread's state.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal void Done(BlockOp op, int sectors, long startNs, BlockThread thread, BlockStatus status = BlockStatus.Ok)
    {
        var now = _clock.NowNanosecondsOn(thread);
        UpdateIoTicks(now, end: true);
        var group = GroupOf(op);
        var took = Math.Max(0, now - startNs); // never negative: a start stamp read on another CPU may be later
        if (ReferenceEquals(thread.StatsOwner, this))
        {
            var batch = thread.StatsBatch!;
            batch.Pending++;
            batch.Ios[(int)group]++;
            if (group != StatGroup.Flush)
            {
                batch.Sectors[(int)group] += sectors;
            }

            batch.Nanoseconds[(int)group] += took;
            if (op == BlockOp.Read)
            {
                batch.DoneRead++;
            }
            else
            {
                batch.DoneWrite++;
            }
        }
        else
        {
            ref var slot = ref Local();
            Interlocked.Increment(ref slot.Ios(group));
            if (group != StatGroup.Flush)
            {
                Interlocked.Add(ref slot.Sectors(group), sectors);
            }

            Interlocked.Add(ref slot.Nanoseconds(group), took);
            Interlocked.Increment(ref (op == BlockOp.Read ? ref slot.DoneRead : ref slot.DoneWrite));
        }

        if (status != BlockStatus.Ok && (uint)status < (uint)_errors.Length)
        {
            Interlocked.Increment(ref _errors[(int)status]);
        }

        // The latency histogram costs nothing unless someone listens (dotnet-counters, an exporter).
        if (BlockMetrics.Duration.Enabled)
        {
            BlockMetrics.RecordDuration(this, group, took);
        }
    }

    /// <summary>
    /// Requests in flight now, reads and writes (the <c>inflight</c> file). A reader whose own
    /// thread holds a batch of this disk's counts (code running inside a dispatch round: an
    /// awaiter's continuation, an end_io) adds it first, so it sees what its round counted.
    /// </summary>
    public (long Reads, long Writes) InFlight()
    {
        // An outside audit read `inflight` and `stat` from the continuation of its last write,
        // run inline in a direct-issue round, and saw every completion of that round missing
        // until the round ended.
        FlushBatch();
        long startedRead = 0, startedWrite = 0, doneRead = 0, doneWrite = 0;

        // Done counts first: a request that completes during the sum is then never counted done
        // without being counted started, and the difference cannot go below 0.
        foreach (ref var slot in _slots.AsSpan())
        {
            doneRead += Volatile.Read(ref slot.DoneRead);
            doneWrite += Volatile.Read(ref slot.DoneWrite);
        }

        foreach (ref var slot in _slots.AsSpan())
        {
            startedRead += Volatile.Read(ref slot.StartedRead);
            startedWrite += Volatile.Read(ref slot.StartedWrite);
        }

        return (Math.Max(0, startedRead - doneRead), Math.Max(0, startedWrite - doneWrite));
    }

    /// <summary>
    /// Sums the slots into the 17 fields (<c>part_stat_show</c>, which first brings io_ticks up to
    /// now when I/O is in flight), after the calling thread's own batch (see <see cref="InFlight"/>).
    /// </summary>
    public DiskStatSample Read()
    {
        var (reads, writes) = InFlight();
        var inFlight = reads + writes;
        if (inFlight > 0)
        {
            UpdateIoTicks(_clock.NowNanoseconds, end: true);
        }

        Span<long> ios = stackalloc long[Groups];
        Span<long> merges = stackalloc long[Groups];
        Span<long> sectors = stackalloc long[Groups];
        Span<long> ns = stackalloc long[Groups];
        foreach (ref var slot in _slots.AsSpan())
        {
            for (var g = 0; g < Groups; g++)
            {
                var group = (StatGroup)g;
                ios[g] += Volatile.Read(ref slot.Ios(group));
                merges[g] += Volatile.Read(ref slot.Merges(group));
                sectors[g] += Volatile.Read(ref slot.Sectors(group));
                ns[g] += Volatile.Read(ref slot.Nanoseconds(group));
            }
        }

        static ulong Ms(long nanoseconds) => (ulong)(nanoseconds / 1_000_000);
        return new DiskStatSample(
            (ulong)ios[0], (ulong)merges[0], (ulong)sectors[0], Ms(ns[0]),
            (ulong)ios[1], (ulong)merges[1], (ulong)sectors[1], Ms(ns[1]),
            (ulong)inFlight, (ulong)Interlocked.Read(ref _ioTicksMs), Ms(ns[0] + ns[1] + ns[2] + ns[3]),
            (ulong)ios[2], (ulong)merges[2], (ulong)sectors[2], Ms(ns[2]),
            (ulong)ios[3], Ms(ns[3]));
    }

    // update_io_ticks: when the clock has moved on (by a whole millisecond, the jiffy here) and this
    // caller wins the stamp, the time since the stamp counts as busy if a request was in flight.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void UpdateIoTicks(long nowNs, bool end)
    {
        var stamp = Volatile.Read(ref _stampNs);
        var nowMs = nowNs / 1_000_000;
        var stampMs = stamp / 1_000_000;
        if (nowMs > stampMs && Interlocked.CompareExchange(ref _stampNs, nowMs * 1_000_000, stamp) == stamp)
        {
            if (end || InFlightAny())
            {
                Interlocked.Add(ref _ioTicksMs, nowMs - stampMs);
            }
        }
    }

    private bool InFlightAny()
    {
        var (reads, writes) = InFlight();
        return reads + writes > 0;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private ref Slot Local() => ref _slots[Thread.GetCurrentProcessorId() & _mask];

    // One processor's counters: 128 bytes of padding either side keep neighbouring slots (and the
    // array header) off its cache lines, adjacent-line prefetch included.
    [StructLayout(LayoutKind.Explicit, Size = 384)]
    private struct Slot
    {
        [FieldOffset(128)] public long StartedRead;
        [FieldOffset(136)] public long StartedWrite;
        [FieldOffset(144)] public long DoneRead;
        [FieldOffset(152)] public long DoneWrite;
        [FieldOffset(160)] private long _ios0;
        [FieldOffset(192)] private long _merges0;
        [FieldOffset(224)] private long _sectors0;
        [FieldOffset(256)] private long _ns0;

        [UnscopedRef]
        public ref long Ios(StatGroup g) => ref Unsafe.Add(ref _ios0, (int)g);

        [UnscopedRef]
        public ref long Merges(StatGroup g) => ref Unsafe.Add(ref _merges0, (int)g);

        [UnscopedRef]
        public ref long Sectors(StatGroup g) => ref Unsafe.Add(ref _sectors0, (int)g);

        [UnscopedRef]
        public ref long Nanoseconds(StatGroup g) => ref Unsafe.Add(ref _ns0, (int)g);
    }

    // A round's counts, kept by its thread until the round ends.
    internal sealed class BatchCounters
    {
        public long StartedRead;
        public long StartedWrite;
        public long DoneRead;
        public long DoneWrite;
        public Groups4 Ios;
        public Groups4 Sectors;
        public Groups4 Nanoseconds;

        // Starts and completions counted since the last flush.
        public long Pending;
    }

    [InlineArray(Groups)]
    internal struct Groups4
    {
        private long _element;
    }
}
