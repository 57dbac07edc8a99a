namespace ActorBlk.Hardware.Sysfs;

/// <summary>
/// The kernel's number parsers for attribute stores (lib/kstrtox.c, base 10): at least one decimal
/// digit, one optional trailing newline and nothing else. <c>kstrtoull</c> (and so <c>kstrtoul</c>
/// and <c>kstrtouint</c>) takes one leading <c>+</c>; <c>kstrtoll</c> (and <c>kstrtoint</c>) one
/// leading <c>+</c> or <c>-</c>. A number too large for the type is ERANGE, anything else that does
/// not parse EINVAL; the overflow is found first, as <c>_parse_integer</c> reads every digit before
/// <c>_kstrtoull</c> looks at what follows (<c>99999999999999999999x</c> is ERANGE).
/// </summary>
internal static class KernelNumbers
{
    /// <summary><c>kstrtoull(s, 10, &amp;v)</c>: null, or the errno it returns.</summary>
    public static AttributeErrno? ToUInt64(string text, out ulong value) =>
        Digits(text.StartsWith('+') ? text.AsSpan(1) : text.AsSpan(), out value);

    /// <summary><c>kstrtouint(s, 10, &amp;v)</c>: null, or the errno it returns (ERANGE above UINT_MAX).</summary>
    public static AttributeErrno? ToUInt32(string text, out uint value)
    {
        var errno = ToUInt64(text, out var wide);
        value = (uint)wide;
        return errno ?? (wide > uint.MaxValue ? AttributeErrno.ERANGE : null);
    }

    /// <summary><c>kstrtoint(s, 10, &amp;v)</c>: null, or the errno it returns (ERANGE outside INT_MIN..INT_MAX).</summary>
    public static AttributeErrno? ToInt32(string text, out int value)
    {
        value = 0;
        long wide;
        if (text.StartsWith('-'))
        {
            // kstrtoll: the digits after the '-' (no second sign), and ERANGE below LLONG_MIN.
            if (Digits(text.AsSpan(1), out var magnitude) is { } errno)
            {
                return errno;
            }

            if (magnitude > 1UL << 63)
            {
                return AttributeErrno.ERANGE;
            }

            wide = unchecked(-(long)magnitude);
        }
        else
        {
            if (ToUInt64(text, out var magnitude) is { } errno)
            {
                return errno;
            }

            if (magnitude > long.MaxValue)
            {
                return AttributeErrno.ERANGE;
            }

            wide = (long)magnitude;
        }

        if (wide is < int.MinValue or > int.MaxValue)
        {
            return AttributeErrno.ERANGE;
        }

        value = (int)wide;
        return null;
    }

    // _kstrtoull after its sign: the digits, ERANGE when they overflow 64 bits, EINVAL when there
    // are none or anything but one newline follows them.
    private static AttributeErrno? Digits(ReadOnlySpan<char> text, out ulong value)
    {
        value = 0;
        var i = 0;
        var overflow = false;
        for (; i < text.Length && char.IsAsciiDigit(text[i]); i++)
        {
            var digit = (ulong)(text[i] - '0');
            if (value > (ulong.MaxValue - digit) / 10)
            {
                overflow = true;
            }

            value = unchecked((value * 10) + digit);
        }

        if (overflow)
        {
            value = 0;
            return AttributeErrno.ERANGE;
        }

        if (i == 0)
        {
            return AttributeErrno.EINVAL;
        }

        if (i < text.Length && text[i] == '\n')
        {
            i++;
        }

        return i == text.Length ? null : AttributeErrno.EINVAL;
    }
}
