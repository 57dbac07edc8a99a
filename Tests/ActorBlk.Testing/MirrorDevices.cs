using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers.Stacking;
using ActorBlk.Hardware.Topology;

namespace ActorBlk.Testing;

/// <summary>
/// The devices of a mirror spec on data-plane devices, without a control plane: memory-backed
/// ring devices as legs (bare, or each behind a <see cref="FaultyLeg"/>) and the bio-based
/// devices stacked over them (the fault legs, the mirror served as a device). Disposing it
/// disposes the stacked devices, the last created first, then the ring devices.
/// </summary>
public sealed class MirrorDevices : IAsyncDisposable
{
    /// <summary>The legs' size unless a spec gives another: 4 MiB.</summary>
    public const long DefaultLegBytes = 4L << 20;

    private readonly RingDevices _rings = new(2);
    private readonly List<BlockDevice> _stacked = [];
    private readonly long _legBytes;

    /// <summary>A fixture whose legs hold <paramref name="legBytes"/> bytes unless told otherwise.</summary>
    public MirrorDevices(long legBytes = DefaultLegBytes) => _legBytes = legBytes;

    /// <summary>
    /// A ring device as <paramref name="options"/> say, on 2 simulated CPUs, disposed with the
    /// fixture after every stacked device.
    /// </summary>
    public BlockDevice Ring(DeviceOptions options) => _rings.Create(options, CpuTopology.Simulated(2));

    /// <summary>
    /// A bare leg: a memory-backed ring device named <paramref name="name"/> with a write cache
    /// (flushes and FUA writes reach it) of <paramref name="size"/> bytes (the fixture's leg size
    /// when not given), advertising discard unless <paramref name="discard"/> is false.
    /// </summary>
    public BlockDevice Disk(string name, long? size = null, bool discard = true) =>
        Ring(new DeviceOptions { Name = name, Size = size ?? _legBytes, MemoryBacked = true, WriteCache = true, Discard = discard });

    /// <summary>
    /// A leg that fails on command: a <see cref="FaultyLeg"/> named <paramref name="name"/> over
    /// a memory-backed ring device named <paramref name="name"/>-disk of <paramref name="size"/>
    /// bytes (the fixture's leg size when not given), with a write cache unless
    /// <paramref name="writeCache"/> is false. Its <see cref="FaultyLeg.CountFrom"/> is the
    /// mirror's data area (<see cref="MirrorSuperblock.DataOffset"/>), so its data counters count
    /// data only, not metadata.
    /// </summary>
    public (BlockDevice Device, FaultyLeg Faults) Leg(string name, long? size = null, bool writeCache = true)
    {
        var inner = Ring(new DeviceOptions { Name = name + "-disk", Size = size ?? _legBytes, MemoryBacked = true, WriteCache = writeCache });
        var (device, faults) = FaultyLeg.Create(name, inner);
        faults.CountFrom = MirrorSuperblock.DataOffset;
        Add(device);
        return (device, faults);
    }

    /// <summary>
    /// <paramref name="target"/> (a mirror) served as a registered bio-based device named
    /// <paramref name="name"/> (<see cref="BioDevices.Create"/>), disposed with the fixture.
    /// </summary>
    public BlockDevice Serve(MirrorTarget target, string name = "md0") => Add(BioDevices.Create(name, target));

    /// <summary>Disposes <paramref name="device"/> (a stacked device) with the fixture, before every device added earlier; returns it.</summary>
    public BlockDevice Add(BlockDevice device)
    {
        _stacked.Add(device);
        return device;
    }

    /// <summary>Disposes <paramref name="device"/> (a stacked device) now, and no more with the fixture.</summary>
    public ValueTask RemoveAsync(BlockDevice device)
    {
        ArgumentNullException.ThrowIfNull(device);
        _stacked.Remove(device);
        return device.DisposeAsync();
    }

    /// <summary>
    /// Reads <paramref name="length"/> bytes (one <see cref="BlockStamp.Length"/> block unless
    /// told) of a leg's data straight from the leg, at <paramref name="offset"/> in the mirror's
    /// offsets (the leg's <see cref="MirrorSuperblock.DataOffset"/> + <paramref name="offset"/>).
    /// </summary>
    public static async Task<byte[]> ReadDataAsync(IBlockDevice leg, long offset, int length = BlockStamp.Length)
    {
        ArgumentNullException.ThrowIfNull(leg);
        var buffer = new byte[length];
        await leg.ReadAsync(MirrorSuperblock.DataOffset + offset, buffer).ConfigureAwait(false);
        return buffer;
    }

    /// <summary>
    /// Reads <paramref name="length"/> bytes of <paramref name="device"/> from
    /// <paramref name="offset"/> (say, a whole leg's data area) in reads of 1 MiB at most, one at a
    /// time, each failing with a <see cref="TimeoutException"/> after <paramref name="bound"/>.
    /// </summary>
    public static async Task<byte[]> ReadAllAsync(IBlockDevice device, long offset, long length, TimeSpan bound)
    {
        ArgumentNullException.ThrowIfNull(device);
        var all = new byte[length];
        const int Chunk = 1 << 20;
        for (long done = 0; done < length; done += Chunk)
        {
            await device.ReadAsync(offset + done, all.AsMemory((int)done, (int)Math.Min(Chunk, length - done))).AsTask().WaitAsync(bound).ConfigureAwait(false);
        }

        return all;
    }

    /// <inheritdoc />
    public async ValueTask DisposeAsync()
    {
        for (var i = _stacked.Count - 1; i >= 0; i--)
        {
            await _stacked[i].DisposeAsync().ConfigureAwait(false);
        }

        await _rings.DisposeAsync().ConfigureAwait(false);
    }
}
