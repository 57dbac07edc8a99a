using System.Buffers.Binary;
using ActorBlk.Hardware.Devices;

namespace ActorBlk.Hardware.Drivers.Stacking;

/// <summary>What a mirror knows about one of its legs (md's per-device state).</summary>
public enum MirrorLegState : byte
{
    /// <summary>No state recorded (a blank superblock slot).</summary>
    None = 0,

    /// <summary>Holds every acknowledged write: a source for reads and resync (md <c>in_sync</c>).</summary>
    InSync = 1,

    /// <summary>Failed: gets no I/O until it is re-added (md <c>faulty</c>).</summary>
    Faulty = 2,

    /// <summary>Gets every write and is being resynced; never read (md's recovering <c>spare</c>).</summary>
    Rebuilding = 3,
}

/// <summary>A mirror refused to start: its legs' metadata disagree, belong to another mirror, or leave no leg to read from.</summary>
public sealed class MirrorAssemblyException : BlockDeviceException
{
    /// <summary>Creates the exception.</summary>
    public MirrorAssemblyException(string device, string message)
        : base(device, message)
    {
    }
}

/// <summary>
/// A device refused as a mirror leg (a replacement, or a leg re-added) because it is smaller than
/// the mirror's data plus the metadata area: md's <c>bind_rdev_to_array</c> refuses such a disk
/// with ENOSPC, which a write of <c>md/new_dev</c> answers here too. An
/// <see cref="InvalidOperationException"/>, as the replacement's other refusals.
/// </summary>
public sealed class MirrorLegTooSmallException : InvalidOperationException
{
    /// <summary>Creates the exception.</summary>
    public MirrorLegTooSmallException(string message, string leg, long legBytes, long neededBytes)
        : base(message)
    {
        Leg = leg;
        LegBytes = legBytes;
        NeededBytes = neededBytes;
    }

    /// <summary>The device refused.</summary>
    public string Leg { get; }

    /// <summary>Its capacity in bytes.</summary>
    public long LegBytes { get; }

    /// <summary>The capacity a leg of this mirror needs: its data plus the metadata area.</summary>
    public long NeededBytes { get; }
}

/// <summary>
/// The metadata area at the start of every mirror leg, which is not part of the exported capacity
/// (md's version-1.2 superblock and internal bitmap play this part): a 4 KiB superblock at byte 0,
/// then the write-intent bitmap, one bit per region, up to <see cref="DataOffset"/>.
/// </summary>
/// <remarks>
/// Superblock layout, little-endian: magic "ABLKMIR1" (8), version (4), role (4), legs (4),
/// flags (4: bit 0 clean, set by an orderly stop), array id (16), generation (8), data offset (8), data bytes (8), region bytes (8),
/// then per role (3 slots of 16 bytes from byte 72): state (1), flags (1: bit 0 copied whole on
/// return), padding (6), last generation the role was known in sync (8; for a role being rebuilt,
/// the last at which it was known to hold every region the bitmap does not record: its
/// replacement or its recovery's last checkpoint, md's recovery_offset kept in the bitmap; for a
/// faulty role copied whole on return, the checkpoint that gave up its bitmap record); then per
/// role (3 of 8 bytes from byte 120) the last generation a role copied whole on return was known
/// in sync, before that checkpoint (0 for other roles); then per role (3 of 8 bytes from byte 144)
/// the recovery offset of a role being rebuilt from the bitmap while the bitmap cannot record its
/// progress (md's per-device <c>recovery_offset</c>): the data byte, a multiple of the region size,
/// below which it holds every region although their bits stay set for another role (0 for other
/// roles, and in a superblock written before the field); an FNV-1a 64 checksum of bytes 0..4087 at
/// byte 4088. A faulty role is copied whole on return once a checkpoint of another role's
/// recovery cleared bits it was owed: its last generation in sync is raised to that checkpoint (so
/// any copy of it, read by this code or by code that knows no flags, is older and copied whole),
/// and the generation it was really last in sync is kept beside it for the split-brain rule.
/// </remarks>
internal sealed class MirrorSuperblock
{
    /// <summary>Bytes of the superblock.</summary>
    public const int SuperblockBytes = 4096;

    /// <summary>Where the data area starts on every leg: 4 KiB superblock + 60 KiB bitmap.</summary>
    public const long DataOffset = 64 << 10;

    /// <summary>Bytes of one bitmap page, the unit the bitmap is written in.</summary>
    public const int BitmapPageBytes = 4096;

    /// <summary>Bitmap pages that fit between the superblock and the data.</summary>
    public const int MaxBitmapPages = (int)((DataOffset - SuperblockBytes) / BitmapPageBytes);

    /// <summary>Regions the bitmap can hold.</summary>
    public const long MaxRegions = (long)MaxBitmapPages * BitmapPageBytes * 8;

    /// <summary>Legs a superblock describes at most.</summary>
    public const int MaxLegs = 3;

    private const ulong Magic = 0x3152494D4B4C4241; // "ABLKMIR1"
    private const int Version = 1;
    private const int RoleTable = 72;
    private const int LastHeldTable = RoleTable + (MaxLegs * 16);
    private const int RecoveryOffsetTable = LastHeldTable + (MaxLegs * 8);
    private const int ChecksumAt = SuperblockBytes - 8;

    public Guid ArrayId { get; init; }

    public int Role { get; init; }

    public int Legs { get; init; }

    /// <summary>Written by an orderly stop with no write in flight; a start without it follows a crash.</summary>
    public bool Clean { get; init; }

    public long Generation { get; init; }

    public long DataBytes { get; init; }

    public long RegionBytes { get; init; }

    public MirrorLegState[] States { get; init; } = new MirrorLegState[MaxLegs];

    public long[] LastInSync { get; init; } = new long[MaxLegs];

    /// <summary>Per role: faulty, and its bitmap record given up by a checkpoint of another role's recovery; any device of it is copied whole.</summary>
    public bool[] WholeOnReturn { get; init; } = new bool[MaxLegs];

    /// <summary>Per role copied whole on return: the last generation it was known in sync before that (0 otherwise).</summary>
    public long[] LastHeld { get; init; } = new long[MaxLegs];

    /// <summary>Per role being rebuilt: the data byte below which it holds every region, whatever the bitmap says (0 otherwise).</summary>
    public long[] RecoveryOffset { get; init; } = new long[MaxLegs];

    /// <summary>Byte offset of bitmap page <paramref name="page"/> on a leg.</summary>
    public static long BitmapPageOffset(int page) => SuperblockBytes + ((long)page * BitmapPageBytes);

    public void Encode(Span<byte> block)
    {
        block[..SuperblockBytes].Clear();
        BinaryPrimitives.WriteUInt64LittleEndian(block, Magic);
        BinaryPrimitives.WriteInt32LittleEndian(block[8..], Version);
        BinaryPrimitives.WriteInt32LittleEndian(block[12..], Role);
        BinaryPrimitives.WriteInt32LittleEndian(block[16..], Legs);
        BinaryPrimitives.WriteInt32LittleEndian(block[20..], Clean ? 1 : 0);
        ArrayId.TryWriteBytes(block[24..40]);
        BinaryPrimitives.WriteInt64LittleEndian(block[40..], Generation);
        BinaryPrimitives.WriteInt64LittleEndian(block[48..], DataOffset);
        BinaryPrimitives.WriteInt64LittleEndian(block[56..], DataBytes);
        BinaryPrimitives.WriteInt64LittleEndian(block[64..], RegionBytes);
        for (var r = 0; r < Legs; r++)
        {
            block[RoleTable + (r * 16)] = (byte)States[r];
            block[RoleTable + (r * 16) + 1] = (byte)(WholeOnReturn[r] ? 1 : 0);
            BinaryPrimitives.WriteInt64LittleEndian(block[(RoleTable + (r * 16) + 8)..], LastInSync[r]);
            BinaryPrimitives.WriteInt64LittleEndian(block[(LastHeldTable + (r * 8))..], WholeOnReturn[r] ? LastHeld[r] : 0);
            BinaryPrimitives.WriteInt64LittleEndian(block[(RecoveryOffsetTable + (r * 8))..], States[r] == MirrorLegState.Rebuilding ? RecoveryOffset[r] : 0);
        }

        BinaryPrimitives.WriteUInt64LittleEndian(block[ChecksumAt..], Checksum(block[..ChecksumAt]));
    }

    /// <summary>Decodes a superblock; null for a blank or foreign block, or one whose checksum is wrong.</summary>
    public static MirrorSuperblock? TryDecode(ReadOnlySpan<byte> block)
    {
        if (block.Length < SuperblockBytes || BinaryPrimitives.ReadUInt64LittleEndian(block) != Magic
            || BinaryPrimitives.ReadInt32LittleEndian(block[8..]) != Version
            || BinaryPrimitives.ReadUInt64LittleEndian(block[ChecksumAt..]) != Checksum(block[..ChecksumAt]))
        {
            return null;
        }

        var legs = BinaryPrimitives.ReadInt32LittleEndian(block[16..]);
        var role = BinaryPrimitives.ReadInt32LittleEndian(block[12..]);
        if (legs is < 2 or > MaxLegs || role < 0 || role >= legs || BinaryPrimitives.ReadInt64LittleEndian(block[48..]) != DataOffset)
        {
            return null;
        }

        var states = new MirrorLegState[MaxLegs];
        var last = new long[MaxLegs];
        var whole = new bool[MaxLegs];
        var held = new long[MaxLegs];
        var offsets = new long[MaxLegs];
        for (var r = 0; r < legs; r++)
        {
            states[r] = (MirrorLegState)block[RoleTable + (r * 16)];
            last[r] = BinaryPrimitives.ReadInt64LittleEndian(block[(RoleTable + (r * 16) + 8)..]);
            whole[r] = (block[RoleTable + (r * 16) + 1] & 1) != 0;
            held[r] = whole[r] ? BinaryPrimitives.ReadInt64LittleEndian(block[(LastHeldTable + (r * 8))..]) : 0;
            offsets[r] = states[r] == MirrorLegState.Rebuilding ? Math.Max(0, BinaryPrimitives.ReadInt64LittleEndian(block[(RecoveryOffsetTable + (r * 8))..])) : 0;
        }

        return new MirrorSuperblock
        {
            Role = role,
            Legs = legs,
            Clean = (BinaryPrimitives.ReadInt32LittleEndian(block[20..]) & 1) != 0,
            ArrayId = new Guid(block[24..40]),
            Generation = BinaryPrimitives.ReadInt64LittleEndian(block[40..]),
            DataBytes = BinaryPrimitives.ReadInt64LittleEndian(block[56..]),
            RegionBytes = BinaryPrimitives.ReadInt64LittleEndian(block[64..]),
            States = states,
            LastInSync = last,
            WholeOnReturn = whole,
            LastHeld = held,
            RecoveryOffset = offsets,
        };
    }

    private static ulong Checksum(ReadOnlySpan<byte> bytes)
    {
        var hash = 14695981039346656037UL;
        foreach (var b in bytes)
        {
            hash = (hash ^ b) * 1099511628211UL;
        }

        return hash;
    }
}
