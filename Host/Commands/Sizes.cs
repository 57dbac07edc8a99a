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
    /// Parses a size as fio 3.33 reads one (parse.c <c>str_to_decimal</c> and
    /// <c>__get_mult_bytes</c>) under <paramref name="kbBase"/>, fio's <c>kb_base</c> (1024, its
    /// default, or 1000): a decimal number, or a hexadecimal one after <c>0x</c>, of bytes; a
    /// decimal one may end in a unit, any case: <c>b</c> (bytes), or <c>k</c>, <c>m</c>,
    /// <c>g</c>, <c>t</c>, <c>p</c>, alone or followed by <c>b</c> or <c>i</c>, powers of
    /// <paramref name="kbBase"/> (<c>4k</c>, <c>4kB</c>, <c>4Ki</c> are 4096 under 1024, 4000
    /// under 1000), or followed by <c>ib</c>, powers of the other base (<c>4KiB</c> is 4000 under
    /// 1024, fio's compatibility mode turning the prefixes round, and 4096 under 1000).
    /// fio has no exa (<c>e</c>) unit, and reads an unknown unit as bytes (<c>1e</c> is 1 byte);
    /// here it is refused, as is a size of more than 2^63 - 1 bytes, which fio wraps. fio's
    /// <c>z</c> (a number of zones, for <c>zonemode=zbd</c>) is refused, saying so.
    /// </summary>
    /// <exception cref="UsageException">Not such a size, naming <paramref name="option"/>.</exception>
    public static long Parse(string option, string text, int kbBase = 1024)
    {
        ArgumentNullException.ThrowIfNull(text);
        if (kbBase is not (1000 or 1024))
        {
            throw new ArgumentOutOfRangeException(nameof(kbBase), kbBase, "fio's kb_base is 1024 or 1000.");
        }

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

        // fio 3.33 parse.c __handle_option: a value ending in a lower-case z is a number of zones
        // for the options that take one (size, offset, offset_increment, io_size; used with
        // zonemode=zbd), and "'z' suffix isn't applicable" for any other.
        if (t.EndsWith('z'))
        {
            throw new UsageException(option is "size" or "offset" or "offset_increment"
                ? $"option --{option}: '{text}' is a number of zones (fio's z suffix, for zonemode=zbd); the bench's devices are not zoned."
                : $"option --{option}: the z (zones) suffix isn't applicable, as in fio.");
        }

        var other = kbBase == 1024 ? 1000 : 1024;
        var multiplier = unit switch
        {
            "" or "b" => BigInteger.One,
            _ when unit.Length is >= 1 and <= 3 && "kmgtp".IndexOf(unit[0], StringComparison.Ordinal) is var power and >= 0
                && unit[1..] is "" or "b" or "i" or "ib" =>
                BigInteger.Pow(unit[1..] == "ib" ? other : kbBase, power + 1),
            _ when unit[0] == 'e' => throw new UsageException($"option --{option}: '{text}' is not a size: fio has no e (exa) unit, its largest is p ({kbBase}^5), and would take '{text}' as {value}, the unit ignored."),
            _ => throw NotASize(option, text),
        };

        var bytes = value * multiplier;
        return bytes <= long.MaxValue
            ? (long)bytes
            : throw new UsageException($"option --{option}: '{text}' is more than 2^63 - 1 bytes ({long.MaxValue}), the largest size.");
    }

    /// <summary>
    /// True when <paramref name="text"/> (a size <see cref="Parse"/> took) has a unit that is a
    /// power of 1000 under <paramref name="kbBase"/>: <c>KiB</c> ... <c>PiB</c> under 1024,
    /// <c>k</c> ... <c>p</c> (<c>kB</c>, <c>Ki</c> ...) under 1000.
    /// </summary>
    public static bool HasDecimalUnit(string text, int kbBase)
    {
        ArgumentNullException.ThrowIfNull(text);
        var t = text.Trim().ToLowerInvariant();
        if (t.StartsWith("0x", StringComparison.Ordinal))
        {
            return false;
        }

        var unit = t.TrimStart("0123456789".ToCharArray());
        return unit.Length > 0 && "kmgtp".Contains(unit[0], StringComparison.Ordinal) && unit.EndsWith("ib", StringComparison.Ordinal) == (kbBase == 1024);
    }

    /// <summary>
    /// fio's percentage of a file's or device's size (parse.c <c>__get_mult_bytes</c>: a number
    /// followed by <c>%</c>, for <c>size</c>, <c>offset</c> and <c>offset_increment</c>): the whole number from 0 to 100 before the <c>%</c>
    /// (fio takes 0% as 100%, the whole file: filesetup.c applies a share only when it is neither),
    /// or null when <paramref name="text"/> does not end in <c>%</c>.
    /// </summary>
    /// <exception cref="UsageException">A percentage over 100, or not a whole number.</exception>
    public static int? ParsePercent(string option, string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        var t = text.Trim();
        if (!t.EndsWith('%'))
        {
            return null;
        }

        // fio reads a share over 100 as a size in bytes of nearly 2^64 (its percentage is stored
        // as -1 - N, recognised only from 0 to 100), and a fraction (50.5%) as 50 bytes.
        var digits = t[..^1];
        return digits.Length is > 0 and <= 3 && digits.All(char.IsAsciiDigit) && int.Parse(digits, CultureInfo.InvariantCulture) is var percent and <= 100
            ? percent
            : throw new UsageException($"option --{option}: '{text}' is not a share of the file's or device's size from 0% to 100%.");
    }

    /// <summary>
    /// fio's <c>bs</c> (parse.c <c>handle_option</c> for an option with three offsets): up to
    /// three sizes, for reads, writes and trims, separated by commas (or, without a comma, by
    /// <c>:</c> or <c>-</c>), each read as <see cref="Parse"/> reads it. The last value given fills
    /// the directions after it (<c>4k</c> is 4k for all three, <c>4k,8k</c> reads of 4k, writes
    /// and trims of 8k); an empty one leaves its direction as it was (<c>,8k</c> sets writes and
    /// trims alone, <c>8k,,16k</c> reads and trims, <c>8k,</c> reads alone), and values past
    /// the third are ignored, as in fio. Each direction's size and the value it was given as; null
    /// for a direction the text does not set.
    /// </summary>
    /// <exception cref="UsageException">A value that is not a size, or no value at all.</exception>
    public static ((long Bytes, string Text)? Read, (long Bytes, string Text)? Write, (long Bytes, string Text)? Trim) ParseSplit(string option, string text, int kbBase = 1024)
    {
        ArgumentNullException.ThrowIfNull(text);
        var rest = text.Trim();
        if (rest.StartsWith('-'))
        {
            throw NotASize(option, text);
        }

        var values = new (long, string)?[3];
        var any = false;
        for (var curr = 0; ; curr++)
        {
            // A trailing comma still separates (fio replaces it with a NUL and keeps it as the
            // separator): "8k," sets reads alone, as fio 3.33's job line shows, "(R) 8192B-8192B,
            // (W) 4096B-4096B". Dropping it made "8k," 8k for all three directions.
            var separator = rest.IndexOf(',', StringComparison.Ordinal);
            if (separator < 0)
            {
                separator = rest.IndexOf(':', StringComparison.Ordinal);
            }

            if (separator < 0)
            {
                separator = rest.IndexOf('-', StringComparison.Ordinal);
            }

            var more = separator >= 0;
            var piece = more ? rest[..separator] : rest;
            if (piece.Length > 0)
            {
                var value = Parse(option, piece, kbBase);
                any = true;
                for (var d = curr; d < 3 && (d == curr || !more); d++)
                {
                    values[d] = (value, piece);
                }
            }

            if (!more)
            {
                break;
            }

            rest = rest[(separator + 1)..];
        }

        return any ? (values[0], values[1], values[2]) : throw NotASize(option, text);
    }

    private static UsageException NotASize(string option, string text) =>
        new($"option --{option}: '{text}' is not a size (bytes, or a number with k, m, g, t or p: 4k, 1m, 2g).");
}
