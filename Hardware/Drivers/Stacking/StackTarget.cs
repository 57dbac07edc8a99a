using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;

namespace ActorBlk.Hardware.Drivers.Stacking;

/// <summary>One piece of a bio on a member device: where it goes and which part of the bio it is.</summary>
/// <param name="Member">The member device.</param>
/// <param name="MemberOffset">Byte offset on the member.</param>
/// <param name="BioOffset">Byte offset within the bio.</param>
/// <param name="Length">Bytes.</param>
public readonly record struct StackPiece(IBlockDevice Member, long MemberOffset, int BioOffset, int Length);

/// <summary>
/// A bio-based stacking target over other ActorBlk devices, as device-mapper's linear and striped
/// targets: a bio is cut at member boundaries into pieces, each piece is submitted to its member,
/// and the bio ends when every piece has (with the first error, if any). A flush goes to every member.
/// </summary>
public abstract class StackTarget : IBioDriver
{
    private readonly IBlockDevice[] _members;

    /// <summary>Creates the target over <paramref name="members"/> (distinct devices).</summary>
    /// <param name="members">The member devices.</param>
    /// <param name="capacityBytes">The stacked device's capacity.</param>
    /// <param name="fastZeroes">
    /// Whether the target can offer fast write-zeroes when every member does (false for a mirror:
    /// one leg may refuse a fast zero another carried out, which would leave the legs different).
    /// </param>
    protected StackTarget(IReadOnlyList<IBlockDevice> members, long capacityBytes, bool fastZeroes = true)
    {
        ArgumentNullException.ThrowIfNull(members);
        if (members.Count == 0)
        {
            throw new ArgumentException("A stacking target needs at least one member device.", nameof(members));
        }

        _members = [.. members.Distinct()];

        // A member with no device yet (a mirror's missing leg) has no limits yet, and the target's
        // are never recomputed: they are set as a member may need when it appears (a volatile
        // write cache, so flushes are sent; no FUA, no discard, no write-zeroes; buffers aligned to
        // a page), so a returning leg rarely has weaker ones (MirrorTarget refuses one that has).
        IBlockDevice[] present = [.. _members.Where(m => m is not IReconnectingBlockDevice { IsMissing: true })];
        if (present.Length == 0)
        {
            throw new ArgumentException("A stacking target needs at least one member device that is present.", nameof(members));
        }

        var complete = present.Length == _members.Length;

        // Write-zeroes when every member has it, and fast only then: a member without it reported
        // fast (its limits' default) made a linear or striped device over it say fast zeroes too.
        var zeroes = complete && present.All(m => m.Queue.Limits.MaxWriteZeroesSectors > 0);
        var lbs = present.Max(m => m.LogicalBlockSize);
        var maxSectors = present.Min(m => m.Queue.Limits.MaxSectors);
        Limits = new QueueLimits
        {
            LogicalBlockSize = lbs,
            PhysicalBlockSize = Math.Max(lbs, present.Max(m => m.Queue.Limits.PhysicalBlockSize)),
            CapacitySectors = capacityBytes / lbs * lbs >> Bio.SectorShift,
            MaxHardwareSectors = Math.Max(maxSectors, QueueLimits.DefaultMaxSectors),
            MaxSectors = QueueLimits.DefaultMaxSectors,
            MemoryAlignment = Math.Max(present.Max(m => m.MemoryAlignment), complete ? 0 : AlignedBuffer.PageAlignment),
            MaxDiscardSectors = complete && present.All(m => m.Queue.Limits.MaxDiscardSectors > 0) ? int.MaxValue >> 1 : 0,
            MaxWriteZeroesSectors = zeroes ? int.MaxValue >> 1 : 0,
            FastWriteZeroes = zeroes && fastZeroes && present.All(m => m.Queue.Limits.FastWriteZeroes),
            VolatileWriteCache = !complete || present.Any(m => m.Queue.Limits.VolatileWriteCache),
            Fua = complete && present.All(m => m.Queue.Limits.Fua),
        };
    }

    /// <summary>The member devices.</summary>
    public IReadOnlyList<IBlockDevice> Members => _members;

    /// <summary>
    /// Puts <paramref name="replacement"/> where <paramref name="member"/> was (a mirror's leg
    /// replaced while it runs); the caller keeps I/O away from both while it does.
    /// </summary>
    protected void SwapMember(IBlockDevice member, IBlockDevice replacement)
    {
        var at = Array.IndexOf(_members, member);
        if (at < 0)
        {
            throw new ArgumentException($"{member.Name} is not a member.", nameof(member));
        }

        Volatile.Write(ref _members[at], replacement);
    }

    /// <inheritdoc />
    public QueueLimits Limits { get; }

    /// <inheritdoc />
    public abstract string Description { get; }

    /// <summary>
    /// True while a member is read-only: a write would reach it and fail, so the stacked device
    /// refuses writes up front (<c>ReadOnly</c>), as dm makes a table over a read-only device
    /// read-only. A mirror overrides this: a leg that cannot be written is refused at assembly, and
    /// one made read-only later fails its writes and is kicked like any failing leg.
    /// </summary>
    public virtual bool ReadOnly
    {
        get
        {
            // Read on every write's check: a loop, not LINQ.
            foreach (var member in _members)
            {
                if (member.IsReadOnly)
                {
                    return true;
                }
            }

            return false;
        }
    }

    /// <summary>The target's name in a table ("linear", "striped").</summary>
    public abstract string TargetType { get; }

    /// <summary>The pieces of the byte range [<paramref name="offset"/>, + <paramref name="length"/>), in order.</summary>
    public abstract IEnumerable<StackPiece> Map(long offset, int length);

    /// <inheritdoc />
    public virtual void SubmitBio(RequestQueue queue, Bio bio)
    {
        ArgumentNullException.ThrowIfNull(queue);
        ArgumentNullException.ThrowIfNull(bio);
        var io = new StackedIo(queue, bio);
        if (bio.Op == BlockOp.Flush)
        {
            foreach (var member in _members)
            {
                io.Submit(member, BlockOp.Flush, 0, 0, default, bio.Flags, bio.Cpu);
            }
        }
        else
        {
            foreach (var piece in Map(bio.Offset, bio.Size))
            {
                var buffer = bio.Op.HasData() ? bio.Buffer.Slice(piece.BioOffset, piece.Length) : default;
                io.Submit(piece.Member, bio.Op, piece.MemberOffset, piece.Length, buffer, bio.Flags, bio.Cpu);
            }
        }

        io.Submitted();
    }

    /// <inheritdoc />
    public void Detach(RequestQueue queue)
    {
    }

    /// <summary>
    /// The checks of <see cref="IAllocationMap.TryGetExtent"/> a linear, striped or mirror target's map
    /// makes: a range that is not empty and lies on this device.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">The range is empty or does not lie on the device.</exception>
    protected void CheckExtentRange(long offset, long maxLength) => IAllocationMap.CheckRange(offset, maxLength, Limits.CapacityBytes);

    /// <summary>
    /// The extent at <paramref name="offset"/> on this device as <paramref name="member"/>'s map
    /// (<see cref="IAllocationMap.Of"/>) reports it at <paramref name="memberOffset"/>, within
    /// the <paramref name="room"/> bytes that lie on that member, which end on one of this device's
    /// blocks or where the range asked about does. A member that cannot tell makes the piece data.
    /// The extent ends on this device's logical block size, which can be larger than the member's:
    /// a member's hole that ends inside a block leaves that block data, and a data extent that ends
    /// inside one takes the whole block.
    /// </summary>
    /// <param name="member">The member under <paramref name="offset"/>.</param>
    /// <param name="memberOffset">Where <paramref name="offset"/> lies on the member.</param>
    /// <param name="offset">Byte offset on this device.</param>
    /// <param name="room">Bytes from <paramref name="offset"/> that lie on the member (positive).</param>
    /// <returns>The extent's length (1 to <paramref name="room"/>) and whether it holds data.</returns>
    protected (long Length, bool Allocated) MemberExtent(IBlockDevice member, long memberOffset, long offset, long room)
    {
        ArgumentNullException.ThrowIfNull(member);
        return IAllocationMap.Of(member) is { } map && TryMemberExtent(map, memberOffset, offset, room, out var length, out var allocated)
            ? (length, allocated)
            : (room, true);
    }

    /// <summary>
    /// As <see cref="MemberExtent"/>, with a member's map already in hand, and
    /// <see langword="false"/> when that map cannot tell (a mirror then asks another leg).
    /// </summary>
    /// <param name="map">The member's map.</param>
    /// <param name="memberOffset">Where <paramref name="offset"/> lies on the member.</param>
    /// <param name="offset">Byte offset on this device.</param>
    /// <param name="room">Bytes from <paramref name="offset"/> that lie on the member (positive).</param>
    /// <param name="length">The extent's length (1 to <paramref name="room"/>).</param>
    /// <param name="allocated">Whether the extent holds data.</param>
    /// <returns><see langword="false"/> when the map cannot tell.</returns>
    protected bool TryMemberExtent(IAllocationMap map, long memberOffset, long offset, long room, out long length, out bool allocated)
    {
        ArgumentNullException.ThrowIfNull(map);
        var told = map.TryGetExtent(memberOffset, room, out length, out allocated);
        return Shape(told, offset, room, ref length, ref allocated);
    }

    /// <summary>
    /// As <see cref="MemberExtent"/>, asking the member's map without blocking
    /// (<see cref="IAllocationMap.GetExtentAsync"/>: a remote member's map asks over the network).
    /// </summary>
    /// <param name="member">The member under <paramref name="offset"/>.</param>
    /// <param name="memberOffset">Where <paramref name="offset"/> lies on the member.</param>
    /// <param name="offset">Byte offset on this device.</param>
    /// <param name="room">Bytes from <paramref name="offset"/> that lie on the member (positive).</param>
    /// <param name="cancellationToken">Gives the question up: the piece is then data.</param>
    /// <returns>The extent's length (1 to <paramref name="room"/>) and whether it holds data.</returns>
    protected async ValueTask<(long Length, bool Allocated)> MemberExtentAsync(IBlockDevice member, long memberOffset, long offset, long room, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(member);
        return IAllocationMap.Of(member) is { } map && await TryMemberExtentAsync(map, memberOffset, offset, room, cancellationToken).ConfigureAwait(false) is { } extent
            ? (extent.Length, extent.Allocated)
            : (room, true);
    }

    /// <summary>
    /// As <see cref="TryMemberExtent"/>, asking <paramref name="map"/> without blocking; null when
    /// that map cannot tell.
    /// </summary>
    /// <param name="map">The member's map.</param>
    /// <param name="memberOffset">Where <paramref name="offset"/> lies on the member.</param>
    /// <param name="offset">Byte offset on this device.</param>
    /// <param name="room">Bytes from <paramref name="offset"/> that lie on the member (positive).</param>
    /// <param name="cancellationToken">Gives the question up (null).</param>
    /// <returns>The extent (1 to <paramref name="room"/> bytes), or null when the map cannot tell.</returns>
    protected async ValueTask<AllocationExtent?> TryMemberExtentAsync(IAllocationMap map, long memberOffset, long offset, long room, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(map);
        var answer = await map.GetExtentAsync(memberOffset, room, cancellationToken).ConfigureAwait(false);
        var (length, allocated) = answer is { } extent ? (extent.Length, extent.Allocated) : (0L, true);
        return Shape(answer is not null, offset, room, ref length, ref allocated) ? new AllocationExtent(length, allocated) : null;
    }

    // A member's answer made this device's extent: see TryMemberExtent.
    private bool Shape(bool told, long offset, long room, ref long length, ref bool allocated)
    {
        if (!told || length <= 0)
        {
            // Cannot tell, or an empty extent (a custom driver's map breaking its contract).
            (length, allocated) = (room, true);
            return false;
        }

        if (length >= room)
        {
            // To the end of the range or of the member's piece (a multiple of this device's block).
            length = room;
            return true;
        }

        var mask = (long)Limits.LogicalBlockSize - 1;
        var end = offset + length;
        if ((end & mask) == 0)
        {
            return true;
        }

        if (allocated || (end & ~mask) <= offset)
        {
            // Data through the end of its block; or a hole ending inside the block it started in,
            // which holds data after it.
            (length, allocated) = (Math.Min((end + mask) & ~mask, offset + room) - offset, true);
            return true;
        }

        length = (end & ~mask) - offset;
        return true;
    }

    /// <summary>The target owns nothing native; the members belong to the block layer.</summary>
    public virtual void Dispose() => GC.SuppressFinalize(this);

    // One bio in flight on the members: a count of its pieces plus one for the submission, so the
    // bio cannot end while pieces are still being submitted; the first error wins.
    private sealed class StackedIo(RequestQueue queue, Bio bio) : IBioEndIo, IStackedPiece
    {
        public Bio Upper => bio;

        private int _pending = 1;
        private int _status;

        public void Submit(IBlockDevice member, BlockOp op, long offset, long length, Memory<byte> buffer, RequestFlags flags, int cpu)
        {
            Interlocked.Increment(ref _pending);
            try
            {
                member.SubmitWithEndIo(op, offset, length, buffer, flags & ~RequestFlags.NoMerge, cpu, this);
            }
            catch (InvalidBlockRequestException ex)
            {
                Done(ex.Reason == InvalidRequestReason.NotSupported ? BlockStatus.NotSupported : BlockStatus.IoError);
            }
            catch (InvalidOperationException)
            {
                // A member that is being removed.
                Done(BlockStatus.Offline);
            }
        }

        public void Submitted() => Done(BlockStatus.Ok);

        public void OnBioComplete(Bio piece, BlockStatus status) => Done(status);

        private void Done(BlockStatus status)
        {
            if (status != BlockStatus.Ok)
            {
                Interlocked.CompareExchange(ref _status, (int)status, 0);
            }

            if (Interlocked.Decrement(ref _pending) == 0)
            {
                queue.EndBio(bio, (BlockStatus)Volatile.Read(ref _status));
            }
        }
    }
}

/// <summary>An extent of a linear table: <paramref name="Length"/> bytes of <paramref name="Device"/> from <paramref name="Offset"/>.</summary>
public sealed record LinearExtent(IBlockDevice Device, long Offset, long Length);

/// <summary>
/// dm-linear: the extents one after another. A bio that crosses from one extent into the next is
/// cut at the boundary. Its allocation map is its members' (<see cref="IAllocationMap"/>).
/// </summary>
public sealed class LinearTarget : StackTarget, IAllocationMap
{
    private readonly LinearExtent[] _extents;
    private readonly long[] _starts;

    /// <summary>Creates the target.</summary>
    /// <exception cref="ArgumentException">An extent is empty, misaligned or outside its device, or the extents add up to more than <see cref="long.MaxValue"/> bytes.</exception>
    public LinearTarget(IReadOnlyList<LinearExtent> extents)
        : base(Check(extents).Select(e => e.Device).ToArray(), Total(extents))
    {
        _extents = [.. extents];
        _starts = new long[_extents.Length];
        long start = 0;
        for (var i = 0; i < _extents.Length; i++)
        {
            _starts[i] = start;
            start += _extents[i].Length;
            if (_extents[i].Length % Limits.LogicalBlockSize != 0 || _extents[i].Offset % Limits.LogicalBlockSize != 0)
            {
                throw new ArgumentException($"extent {i} ({_extents[i].Device.Name}): offset and length must be multiples of the {Limits.LogicalBlockSize}-byte block size.", nameof(extents));
            }
        }
    }

    /// <summary>The extents.</summary>
    public IReadOnlyList<LinearExtent> Extents => _extents;

    /// <inheritdoc />
    public override string TargetType => "linear";

    /// <inheritdoc />
    public override string Description => "linear over " + string.Join(", ", _extents.Select(e => $"{e.Device.Name}+{e.Offset}:{e.Length}"));

    /// <inheritdoc />
    public override IEnumerable<StackPiece> Map(long offset, int length)
    {
        var i = Array.BinarySearch(_starts, offset);
        i = i >= 0 ? i : ~i - 1;
        var done = 0;
        while (done < length)
        {
            var extent = _extents[i];
            var within = offset + done - _starts[i];
            var piece = (int)Math.Min(length - done, extent.Length - within);
            yield return new StackPiece(extent.Device, extent.Offset + within, done, piece);
            done += piece;
            i++;
        }
    }

    /// <summary>
    /// Asks the member under <paramref name="offset"/> (its driver's map, a stacked member's
    /// target's), within that table extent: an extent never crosses into the next member. A
    /// member that cannot tell makes its piece data. Extents end on this device's logical block
    /// size, which can be larger than a member's: a member's hole that ends inside a block
    /// leaves that block data, and a data extent that ends inside one takes the whole block.
    /// </summary>
    /// <inheritdoc />
    /// <exception cref="ArgumentOutOfRangeException">The range is empty or does not lie on the device.</exception>
    public bool TryGetExtent(long offset, long maxLength, out long length, out bool allocated)
    {
        CheckExtentRange(offset, maxLength);
        var i = Array.BinarySearch(_starts, offset);
        i = i >= 0 ? i : ~i - 1;
        var extent = _extents[i];
        var within = offset - _starts[i];
        (length, allocated) = MemberExtent(extent.Device, extent.Offset + within, offset, Math.Min(maxLength, extent.Length - within));
        return true;
    }

    /// <summary>As <see cref="TryGetExtent"/>, asking the member's map without blocking (a remote member's over the network).</summary>
    /// <inheritdoc />
    /// <exception cref="ArgumentOutOfRangeException">The range is empty or does not lie on the device.</exception>
    public async ValueTask<AllocationExtent?> GetExtentAsync(long offset, long maxLength, CancellationToken cancellationToken = default)
    {
        CheckExtentRange(offset, maxLength);
        var i = Array.BinarySearch(_starts, offset);
        i = i >= 0 ? i : ~i - 1;
        var extent = _extents[i];
        var within = offset - _starts[i];
        var (length, allocated) = await MemberExtentAsync(extent.Device, extent.Offset + within, offset, Math.Min(maxLength, extent.Length - within), cancellationToken).ConfigureAwait(false);
        return new AllocationExtent(length, allocated);
    }

    private static IReadOnlyList<LinearExtent> Check(IReadOnlyList<LinearExtent> extents)
    {
        ArgumentNullException.ThrowIfNull(extents);
        if (extents.Count == 0)
        {
            throw new ArgumentException("A linear table needs at least one extent.", nameof(extents));
        }

        foreach (var e in extents)
        {
            if (e.Length <= 0 || e.Offset < 0 || e.Offset > e.Device.Capacity - e.Length)
            {
                throw new ArgumentException($"extent {e.Device.Name}+{e.Offset}:{e.Length} does not lie within the device's {e.Device.Capacity} bytes.", nameof(extents));
            }
        }

        return extents;
    }

    // The capacity, refused when the extents add up to more bytes than a long holds, as dm refuses
    // a table past LLONG_MAX >> SECTOR_SHIFT sectors ("Target too large"). Enumerable.Sum threw
    // OverflowException, which failed the guardian and stopped the node (an outside audit: a linear
    // table over two 4 EiB null devices).
    private static long Total(IReadOnlyList<LinearExtent> extents)
    {
        long total = 0;
        foreach (var e in extents)
        {
            if (e.Length > long.MaxValue - total)
            {
                throw new ArgumentException($"the extents add up to more than {long.MaxValue} bytes, the largest device.", nameof(extents));
            }

            total += e.Length;
        }

        return total;
    }
}

/// <summary>
/// dm-stripe: chunks of <see cref="ChunkBytes"/> dealt round-robin over the members (chunk c on
/// member c mod N at chunk c div N). A bio is cut at every chunk boundary it crosses. Its
/// allocation map is its members' (<see cref="IAllocationMap"/>), chunk by chunk.
/// </summary>
public sealed class StripedTarget : StackTarget, IAllocationMap
{
    /// <summary>
    /// How many chunks one <see cref="TryGetExtent"/> looks at: an extent that goes on past them
    /// (a hole over many chunks of every stripe) ends there, and the next question goes on from
    /// there. Each chunk is a question to a member's map (two lseeks on a file device).
    /// </summary>
    internal const int MaxExtentChunks = 64;

    private readonly IBlockDevice[] _stripes;

    /// <summary>Creates the target; the capacity is the smallest member's whole chunks times the stripe count.</summary>
    /// <exception cref="ArgumentException">No members, a member twice, or a chunk that is not a power of two of at least one block.</exception>
    public StripedTarget(IReadOnlyList<IBlockDevice> stripes, int chunkBytes)
        : base(stripes, Capacity(stripes, chunkBytes))
    {
        _stripes = [.. stripes];
        ChunkBytes = chunkBytes;
        if (chunkBytes < Limits.LogicalBlockSize)
        {
            throw new ArgumentException($"chunk of {chunkBytes} bytes is smaller than the {Limits.LogicalBlockSize}-byte block size.", nameof(chunkBytes));
        }
    }

    /// <summary>The chunk size in bytes.</summary>
    public int ChunkBytes { get; }

    /// <summary>The stripes in order.</summary>
    public IReadOnlyList<IBlockDevice> Stripes => _stripes;

    /// <inheritdoc />
    public override string TargetType => "striped";

    /// <inheritdoc />
    public override string Description => $"striped over {string.Join(", ", _stripes.Select(s => s.Name))}, {ChunkBytes}-byte chunks";

    /// <inheritdoc />
    public override IEnumerable<StackPiece> Map(long offset, int length)
    {
        var done = 0;
        while (done < length)
        {
            var at = offset + done;
            var chunk = at / ChunkBytes;
            var within = (int)(at % ChunkBytes);
            var piece = Math.Min(length - done, ChunkBytes - within);
            var member = _stripes[(int)(chunk % _stripes.Length)];
            yield return new StackPiece(member, chunk / _stripes.Length * ChunkBytes + within, done, piece);
            done += piece;
        }
    }

    /// <summary>
    /// Asks the stripe that holds the chunk under <paramref name="offset"/>, at the offset dm-stripe
    /// maps it to, up to the chunk's end; an extent that reaches it goes on into the next chunks
    /// (the next stripes) while they answer the same, up to <see cref="MaxExtentChunks"/> chunks.
    /// A stripe that cannot tell makes its piece data. Extents end on this device's logical block
    /// size, which can be larger than a stripe's, as a linear device's do.
    /// </summary>
    /// <inheritdoc />
    /// <exception cref="ArgumentOutOfRangeException">The range is empty or does not lie on the device.</exception>
    public bool TryGetExtent(long offset, long maxLength, out long length, out bool allocated)
    {
        CheckExtentRange(offset, maxLength);
        var end = offset + maxLength;
        (length, allocated) = ChunkExtent(offset, end);
        for (var chunks = 1; chunks < MaxExtentChunks; chunks++)
        {
            var next = offset + length;
            if (next == end || next % ChunkBytes != 0)
            {
                break;
            }

            var (more, same) = ChunkExtent(next, end);
            if (same != allocated)
            {
                break;
            }

            length += more;
        }

        return true;
    }

    /// <summary>As <see cref="TryGetExtent"/>, asking the stripes' maps without blocking (a remote stripe's over the network).</summary>
    /// <inheritdoc />
    /// <exception cref="ArgumentOutOfRangeException">The range is empty or does not lie on the device.</exception>
    public async ValueTask<AllocationExtent?> GetExtentAsync(long offset, long maxLength, CancellationToken cancellationToken = default)
    {
        CheckExtentRange(offset, maxLength);
        var end = offset + maxLength;
        var (length, allocated) = await ChunkExtentAsync(offset, end, cancellationToken).ConfigureAwait(false);
        for (var chunks = 1; chunks < MaxExtentChunks; chunks++)
        {
            var next = offset + length;
            if (next == end || next % ChunkBytes != 0)
            {
                break;
            }

            var (more, same) = await ChunkExtentAsync(next, end, cancellationToken).ConfigureAwait(false);
            if (same != allocated)
            {
                break;
            }

            length += more;
        }

        return new AllocationExtent(length, allocated);
    }

    private ValueTask<(long Length, bool Allocated)> ChunkExtentAsync(long at, long end, CancellationToken cancellationToken)
    {
        var chunk = at / ChunkBytes;
        var within = at % ChunkBytes;
        var member = _stripes[(int)(chunk % _stripes.Length)];
        return MemberExtentAsync(member, (chunk / _stripes.Length * ChunkBytes) + within, at, Math.Min(end - at, ChunkBytes - within), cancellationToken);
    }

    // The extent at `at` within its chunk (and before `end`), from the stripe that holds the chunk.
    private (long Length, bool Allocated) ChunkExtent(long at, long end)
    {
        var chunk = at / ChunkBytes;
        var within = at % ChunkBytes;
        var member = _stripes[(int)(chunk % _stripes.Length)];
        return MemberExtent(member, (chunk / _stripes.Length * ChunkBytes) + within, at, Math.Min(end - at, ChunkBytes - within));
    }

    private static long Capacity(IReadOnlyList<IBlockDevice> stripes, int chunkBytes)
    {
        ArgumentNullException.ThrowIfNull(stripes);
        if (stripes.Count == 0 || stripes.Distinct().Count() != stripes.Count)
        {
            throw new ArgumentException("A striped table needs distinct member devices.", nameof(stripes));
        }

        if (chunkBytes <= 0 || (chunkBytes & (chunkBytes - 1)) != 0)
        {
            throw new ArgumentException($"chunk of {chunkBytes} bytes is not a power of two.", nameof(chunkBytes));
        }

        var smallest = stripes.Min(s => s.Capacity);
        if (smallest < chunkBytes)
        {
            // A device of no capacity, every I/O out of range.
            throw new ArgumentException($"chunk of {chunkBytes} bytes is larger than the smallest member ({smallest} bytes): the device would hold nothing.", nameof(chunkBytes));
        }

        // A product past a long wrapped negative and failed the guardian, stopping the node (an
        // outside audit: two 4 EiB members); refused as dm refuses a table that large.
        var perStripe = smallest / chunkBytes * chunkBytes;
        if (perStripe > long.MaxValue / stripes.Count)
        {
            throw new ArgumentException($"{stripes.Count} stripes of {perStripe} bytes add up to more than {long.MaxValue} bytes, the largest device.", nameof(stripes));
        }

        return perStripe * stripes.Count;
    }
}
