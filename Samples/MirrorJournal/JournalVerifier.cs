using System.Security.Cryptography;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Requests;

namespace ActorBlk.Samples.MirrorJournal;

/// <summary>What reading the journal back from one leg found.</summary>
/// <param name="Leg">The leg's name.</param>
/// <param name="Good">Records that verified.</param>
/// <param name="Bad">Records that did not (wrong or missing).</param>
/// <param name="FirstProblem">The first bad record and what was wrong with it, or null.</param>
/// <param name="Sha256">SHA-256 of the journal's slots on this leg (equal on equal legs).</param>
public sealed record LegVerification(string Leg, long Good, long Bad, string? FirstProblem, string Sha256)
{
    /// <summary>True when every record verified.</summary>
    public bool Ok => Bad == 0 && FirstProblem is null;
}

/// <summary>
/// Reads the journal's slots straight from one leg of the mirror, past the mirror's metadata
/// area, and checks every record (README, "Mirrors", on-disk layout: leg byte = mirror byte + 64 KiB).
/// </summary>
public static class JournalVerifier
{
    /// <summary>Where the mirror's data starts on each leg: its first 64 KiB hold the superblock and the write-intent bitmap.</summary>
    public const long MirrorDataOffset = 64 << 10;

    private const int ChunkBytes = 64 << 10;

    /// <summary>Checks records 0 .. <paramref name="records"/> - 1 on <paramref name="leg"/>.</summary>
    public static async Task<LegVerification> VerifyAsync(IBlockDevice leg, long records, CancellationToken cancellationToken = default)
    {
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        var buffer = leg.AllocateBuffer(ChunkBytes);
        long good = 0, bad = 0;
        string? first = null;
        try
        {
            const int perChunk = ChunkBytes / JournalRecord.SlotBytes;
            for (long slot = 0; slot < records; slot += perChunk)
            {
                cancellationToken.ThrowIfCancellationRequested();
                var count = (int)Math.Min(perChunk, records - slot);
                var bytes = count * JournalRecord.SlotBytes;
                var status = await leg.ExecuteAsync(BlockOp.Read, MirrorDataOffset + (slot * JournalRecord.SlotBytes), bytes, buffer.Memory[..bytes]);
                if (status != BlockStatus.Ok)
                {
                    bad += records - slot;
                    first ??= $"reading record {slot} failed: {status.Describe()}";
                    break;
                }

                hash.AppendData(buffer.Memory.Span[..bytes]);
                for (var i = 0; i < count; i++)
                {
                    if (JournalRecord.Verify(buffer.Memory.Span.Slice(i * JournalRecord.SlotBytes, JournalRecord.SlotBytes), slot + i) is { } problem)
                    {
                        bad++;
                        first ??= $"record {slot + i}: {problem}";
                    }
                    else
                    {
                        good++;
                    }
                }
            }
        }
        finally
        {
            ((IDisposable)buffer).Dispose();
        }

        return new LegVerification(leg.Name, good, bad, first, Convert.ToHexString(hash.GetHashAndReset()));
    }
}
