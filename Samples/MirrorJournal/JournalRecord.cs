using System.Buffers.Binary;
using System.Numerics;

namespace ActorBlk.Samples.MirrorJournal;

/// <summary>
/// One journal record in a fixed 4 KiB slot: record <c>n</c> lives in slot <c>n</c>, so the
/// journal is append-only and a reader knows where each record must be.
/// </summary>
/// <remarks>
/// Layout (little endian): magic <c>AJRN</c> (4 bytes), payload length (4), sequence number (8),
/// append time in UTC ticks (8), CRC-32C of bytes 0..24 and of the payload (4), zero (4), then
/// the payload (bytes that follow from the sequence number) and zeroes to the end of the slot.
/// </remarks>
public static class JournalRecord
{
    /// <summary>Bytes per slot: one record per 4 KiB block.</summary>
    public const int SlotBytes = 4096;

    /// <summary>Bytes of the header in front of the payload.</summary>
    public const int HeaderBytes = 32;

    /// <summary>Largest payload.</summary>
    public const int MaxPayload = SlotBytes - HeaderBytes;

    private const uint Magic = 0x4E524A41; // "AJRN"
    private const int MinPayload = 16;

    /// <summary>The payload length of record <paramref name="sequence"/> (16 to 4064 bytes, varied).</summary>
    public static int PayloadLength(long sequence) => MinPayload + (int)((ulong)(sequence * 2654435761L) % (MaxPayload - MinPayload + 1));

    /// <summary>Writes record <paramref name="sequence"/> into <paramref name="slot"/> (a whole slot).</summary>
    public static void Encode(Span<byte> slot, long sequence, DateTime appendedUtc)
    {
        var length = PayloadLength(sequence);
        slot.Clear();
        BinaryPrimitives.WriteUInt32LittleEndian(slot, Magic);
        BinaryPrimitives.WriteInt32LittleEndian(slot[4..], length);
        BinaryPrimitives.WriteInt64LittleEndian(slot[8..], sequence);
        BinaryPrimitives.WriteInt64LittleEndian(slot[16..], appendedUtc.Ticks);
        FillPayload(slot.Slice(HeaderBytes, length), sequence);
        BinaryPrimitives.WriteUInt32LittleEndian(slot[24..], Checksum(slot, length));
    }

    /// <summary>
    /// Checks that <paramref name="slot"/> holds record <paramref name="sequence"/> intact: magic,
    /// sequence, length, checksum, the payload's bytes and zeroes after it. Returns null when it
    /// does, else what is wrong.
    /// </summary>
    public static string? Verify(ReadOnlySpan<byte> slot, long sequence)
    {
        if (BinaryPrimitives.ReadUInt32LittleEndian(slot) != Magic)
        {
            return slot[..HeaderBytes].IndexOfAnyExcept((byte)0) < 0 ? "empty slot" : "no record header";
        }

        var seq = BinaryPrimitives.ReadInt64LittleEndian(slot[8..]);
        if (seq != sequence)
        {
            return $"holds sequence number {seq}";
        }

        var length = BinaryPrimitives.ReadInt32LittleEndian(slot[4..]);
        if (length != PayloadLength(sequence))
        {
            return $"payload length {length}, expected {PayloadLength(sequence)}";
        }

        if (BinaryPrimitives.ReadUInt32LittleEndian(slot[24..]) != Checksum(slot, length))
        {
            return "checksum mismatch";
        }

        Span<byte> expected = stackalloc byte[length];
        FillPayload(expected, sequence);
        if (!slot.Slice(HeaderBytes, length).SequenceEqual(expected) || slot[(HeaderBytes + length)..].IndexOfAnyExcept((byte)0) >= 0)
        {
            return "payload differs from what was appended";
        }

        return null;
    }

    // CRC-32C (Castagnoli, as ext4 and iSCSI use) of the header before the checksum field and of the payload.
    private static uint Checksum(ReadOnlySpan<byte> slot, int length)
    {
        var crc = Crc32C(uint.MaxValue, slot[..24]);
        return ~Crc32C(crc, slot.Slice(HeaderBytes, length));
    }

    private static uint Crc32C(uint crc, ReadOnlySpan<byte> data)
    {
        while (data.Length >= 8)
        {
            crc = BitOperations.Crc32C(crc, BinaryPrimitives.ReadUInt64LittleEndian(data));
            data = data[8..];
        }

        foreach (var b in data)
        {
            crc = BitOperations.Crc32C(crc, b);
        }

        return crc;
    }

    // The payload is a function of the sequence number (xorshift64), so a reader can check every byte.
    private static void FillPayload(Span<byte> payload, long sequence)
    {
        var x = (ulong)sequence * 0x9E3779B97F4A7C15UL + 0x2545F4914F6CDD1DUL;
        for (var i = 0; i < payload.Length; i++)
        {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            payload[i] = (byte)x;
        }
    }
}
