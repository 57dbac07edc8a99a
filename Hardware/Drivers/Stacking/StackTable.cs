using ActorBlk.Hardware.Devices;

namespace ActorBlk.Hardware.Drivers.Stacking;

/// <summary>
/// A device-mapper style table for a stacked device, naming its members by device name:
/// <see cref="Linear"/> (extents one after another) or <see cref="Striped"/> (chunks round-robin).
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

    /// <summary>The target over the resolved members (in the order of <see cref="MemberNames"/>).</summary>
    /// <exception cref="ArgumentException">The geometry is refused.</exception>
    public abstract StackTarget Build(IReadOnlyList<IBlockDevice> members);
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
