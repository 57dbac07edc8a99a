using System.Globalization;
using System.Numerics;

namespace ActorBlk.Host.Commands;

/// <summary>Human-readable sizes and rates with binary units, as fio prints them.</summary>
internal static class Sizes
{
    private static readonly string[] Units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];

    public static string Format(double bytes)
    {
        var unit = 0;
        while (bytes >= 1024 && unit < Units.Length - 1)
        {
            bytes /= 1024;
            unit++;
        }

        return bytes.ToString(unit == 0 ? "0" : "0.##", CultureInfo.InvariantCulture) + Units[unit];
    }

    /// <summary>
    /// Parses a size as fio 3.33 reads one with its default <c>kb_base=1024</c> (parse.c
    /// <c>str_to_decimal</c> and <c>__get_mult_bytes</c>): a decimal number, or a hexadecimal one
    /// after <c>0x</c>, of bytes; a decimal one may end in a unit, any case: <c>b</c> (bytes), or
    /// <c>k</c>, <c>m</c>, <c>g</c>, <c>t</c>, <c>p</c>, alone or followed by <c>b</c> or <c>i</c>,
    /// powers of 1024 (<c>4k</c>, <c>4kB</c>, <c>4Ki</c> are 4096), or followed by <c>ib</c>,
    /// powers of 1000 (<c>4KiB</c> is 4000: fio's compatibility mode turns the prefixes round).
    /// fio has no exa (<c>e</c>) unit, and reads an unknown unit as bytes (<c>1e</c> is 1 byte);
    /// here it is refused, as is a size of more than 2^63 - 1 bytes, which fio wraps.
    /// </summary>
    /// <exception cref="UsageException">Not such a size, naming <paramref name="option"/>.</exception>
    public static long Parse(string option, string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        var t = text.Trim();
        BigInteger value;
        var unit = string.Empty;
        if (t.StartsWith("0x", StringComparison.OrdinalIgnoreCase))
        {
            // fio reads a hexadecimal number whole and takes no unit after it (its unit is looked
            // for after the leading decimal digits, the 0, so 0x10k is 16).
            var digits = t[2..];
            if (digits.Length == 0 || !digits.All(char.IsAsciiHexDigit))
            {
                throw NotASize(option, text);
            }

            value = BigInteger.Parse("0" + digits, NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture);
        }
        else
        {
            var end = 0;
            while (end < t.Length && char.IsAsciiDigit(t[end]))
            {
                end++;
            }

            if (end == 0)
            {
                throw NotASize(option, text);
            }

            value = BigInteger.Parse(t[..end], NumberStyles.None, CultureInfo.InvariantCulture);
            unit = t[end..].ToLowerInvariant();
        }

        var multiplier = unit switch
        {
            "" or "b" => BigInteger.One,
            _ when unit.Length is >= 1 and <= 3 && "kmgtp".IndexOf(unit[0], StringComparison.Ordinal) is var power and >= 0
                && unit[1..] is "" or "b" or "i" or "ib" =>
                BigInteger.Pow(unit[1..] == "ib" ? 1000 : 1024, power + 1),
            _ when unit[0] == 'e' => throw new UsageException($"option --{option}: '{text}' is not a size: fio has no e (exa) unit, its largest is p (1024^5), and would take '{text}' as {value}, the unit ignored."),
            _ => throw NotASize(option, text),
        };

        var bytes = value * multiplier;
        return bytes <= long.MaxValue
            ? (long)bytes
            : throw new UsageException($"option --{option}: '{text}' is more than 2^63 - 1 bytes ({long.MaxValue}), the largest size.");
    }

    private static UsageException NotASize(string option, string text) =>
        new($"option --{option}: '{text}' is not a size (bytes, or a number with k, m, g, t or p: 4k, 1m, 2g).");
}
