namespace ActorBlk.Testing;

/// <summary>
/// Recognisable 4 KiB blocks for data checks: the data of version <c>version</c> of block
/// <c>block</c>, random bytes seeded by the pair, so every (block, version) has its own bytes and
/// the same pair gives the same bytes again within one test process (<see cref="HashCode"/> is
/// seeded per process). A block read back in the wrong place, or an older version, differs.
/// </summary>
public static class BlockStamp
{
    /// <summary>A stamp's length: 4096 bytes.</summary>
    public const int Length = 4096;

    /// <summary>The random bytes of version <paramref name="version"/> of block <paramref name="block"/>.</summary>
    public static byte[] Of(long block, int version)
    {
        var data = new byte[Length];
        new Random(HashCode.Combine(block, version)).NextBytes(data);
        return data;
    }

    /// <summary>
    /// <see cref="Of"/>, labelled: <paramref name="label"/> in its first 8 bytes and
    /// <paramref name="version"/> in the next 4 (native byte order, <see cref="BitConverter"/>),
    /// so a dump shows which block and version it is. A label that is never 0 (block + 1) with a
    /// version that is never 0 makes a stamp that is never all zeros.
    /// </summary>
    public static byte[] Labelled(long block, int version, long label)
    {
        var data = Of(block, version);
        BitConverter.TryWriteBytes(data, label);
        BitConverter.TryWriteBytes(data.AsSpan(8), version);
        return data;
    }
}
