using ActorBlk.Hardware.Devices;

namespace ActorBlk.Hardware.Drivers.Stacking;

/// <summary>
/// A device-mapper style table for a stacked device, naming its members by device name:
/// <see cref="Linear"/> (extents one after another), <see cref="Striped"/> (chunks round-robin) or
/// <see cref="Mirror(string[])"/> (md raid1: every leg holds all of it).
/// </summary>
public abstract record StackTable
{
    /// <summary>The member devices the table names.</summary>
    public abstract IReadOnlyList<string> MemberNames { get; }

    /// <summary>A linear table: whole devices, one after another.</summary>
    public static StackTable Linear(params string[] devices) =>
        new LinearTable([.. devices.Select(d => new LinearTable.Extent(d, 0, null))]);

    /// <summary>A striped table of <paramref name="chunkBytes"/> chunks over <paramref name="devices"/>.</summary>
    public static StackTable Striped(int chunkBytes, params string[] devices) => new StripedTable(chunkBytes, devices);

    /// <summary>A mirror (raid1) over 2 or 3 legs with default options.</summary>
    public static StackTable Mirror(params string[] legs) => new MirrorTable(legs, new MirrorOptions());

    /// <summary>A mirror (raid1) over 2 or 3 legs.</summary>
    public static StackTable Mirror(MirrorOptions options, params string[] legs) => new MirrorTable(legs, options);

    /// <summary>The target over the resolved members (in the order of <see cref="MemberNames"/>).</summary>
    /// <exception cref="ArgumentException">The geometry is refused.</exception>
    /// <exception cref="InvalidOperationException">The target reads its members' metadata first: use <see cref="BuildAsync"/>.</exception>
    public abstract StackTarget Build(IReadOnlyList<IBlockDevice> members);

    /// <summary>
    /// Builds the target, reading the members' metadata first when the target keeps some (a
    /// mirror's superblocks); the others are built at once.
    /// </summary>
    /// <param name="name">The stacked device's name, for errors.</param>
    /// <param name="members">The resolved members.</param>
    /// <param name="cancellationToken">Stops the assembly.</param>
    /// <exception cref="ArgumentException">The geometry is refused.</exception>
    /// <exception cref="MirrorAssemblyException">A mirror's legs disagree.</exception>
    public virtual Task<StackTarget> BuildAsync(string name, IReadOnlyList<IBlockDevice> members, CancellationToken cancellationToken = default) =>
        Task.FromResult(Build(members));
}

/// <summary>A mirror table: <c>Legs</c> in role order.</summary>
public sealed record MirrorTable(IReadOnlyList<string> Legs, MirrorOptions Options) : StackTable
{
    /// <summary>The clock of the resync rate limit (the system's when null); tests pass a manual one.</summary>
    public TimeProvider? Time { get; init; }

    /// <inheritdoc />
    public override IReadOnlyList<string> MemberNames => Legs;

    /// <inheritdoc />
    public override StackTarget Build(IReadOnlyList<IBlockDevice> members) =>
        throw new InvalidOperationException("A mirror reads its legs' superblocks before it starts: build it with BuildAsync.");

    /// <inheritdoc />
    public override async Task<StackTarget> BuildAsync(string name, IReadOnlyList<IBlockDevice> members, CancellationToken cancellationToken = default) =>
        await MirrorTarget.AssembleAsync(name, members, Options, Time, cancellationToken).ConfigureAwait(false);
}

/// <summary>A linear table: each extent is <c>Length</c> bytes of a device from <c>Offset</c> (the whole rest when null).</summary>
public sealed record LinearTable(IReadOnlyList<LinearTable.Extent> Extents) : StackTable
{
    /// <inheritdoc />
    public override IReadOnlyList<string> MemberNames => [.. Extents.Select(e => e.Device)];

    /// <inheritdoc />
    public override StackTarget Build(IReadOnlyList<IBlockDevice> members)
    {
        ArgumentNullException.ThrowIfNull(members);
        return new LinearTarget([.. Extents.Select((e, i) => new LinearExtent(members[i], e.Offset, e.Length ?? members[i].Capacity - e.Offset))]);
    }

    /// <summary>One extent.</summary>
    public sealed record Extent(string Device, long Offset, long? Length);
}

/// <summary>A striped table.</summary>
public sealed record StripedTable(int ChunkBytes, IReadOnlyList<string> Devices) : StackTable
{
    /// <inheritdoc />
    public override IReadOnlyList<string> MemberNames => Devices;

    /// <inheritdoc />
    public override StackTarget Build(IReadOnlyList<IBlockDevice> members) => new StripedTarget(members, ChunkBytes);
}
