using System.Globalization;

namespace ActorBlk.Hardware.Devices;

/// <summary>Sizes as people write them: plain bytes, or a number with a binary unit ("4k", "512m", "2g", "1GiB").</summary>
public static class ByteSize
{
    /// <summary>Parses <paramref name="text"/>; k, m, g and t are powers of 1024 (fio's and null_blk's convention).</summary>
    public static bool TryParse(string? text, out long bytes)
    {
        bytes = 0;
        var t = (text ?? string.Empty).Trim().ToLowerInvariant().Replace("ib", string.Empty, StringComparison.Ordinal).TrimEnd('b');
        var shift = 0;
        if (t.Length > 0 && char.IsLetter(t[^1]))
        {
            shift = t[^1] switch
            {
                'k' => 10,
                'm' => 20,
                'g' => 30,
                't' => 40,
                _ => -1,
            };
            t = t[..^1];
        }

        if (shift < 0 || !long.TryParse(t, NumberStyles.None, CultureInfo.InvariantCulture, out var value) || value > (long.MaxValue >> shift))
        {
            return false;
        }

        bytes = value << shift;
        return true;
    }
}
