namespace ActorBlk.Hardware;

/// <summary>
/// Control characters (Unicode category Cc: U+0000 to U+001F, U+007F to U+009F, tab and newline
/// among them) in a configured value. A name, a host name, an address, a URI, a size or a choice
/// never holds one, and where one gets through it forges log lines and breaks the columns of
/// <c>devices</c> and <c>iostat</c>; a file path may (Linux allows every byte but NUL), and so may
/// a secret. Messages show a refused value with each control character written <c>\xNN</c>, so the
/// message itself stays one line.
/// </summary>
public static class ControlCharacters
{
    /// <summary>The index of the first control character of <paramref name="text"/>, or -1 (also for null).</summary>
    public static int IndexIn(string? text)
    {
        if (text is null)
        {
            return -1;
        }

        for (var i = 0; i < text.Length; i++)
        {
            if (char.IsControl(text[i]))
            {
                return i;
            }
        }

        return -1;
    }

    /// <summary><paramref name="text"/> with each control character written <c>\xNN</c> (NbdProtocol's style for a client's export name).</summary>
    public static string Escape(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        if (IndexIn(text) < 0)
        {
            return text;
        }

        var builder = new System.Text.StringBuilder(text.Length + 8);
        foreach (var c in text)
        {
            if (char.IsControl(c))
            {
                builder.Append(System.Globalization.CultureInfo.InvariantCulture, $"\\x{(int)c:x2}");
            }
            else
            {
                builder.Append(c);
            }
        }

        return builder.ToString();
    }

    /// <summary>
    /// Why <paramref name="text"/> is refused for a key that never takes a control character
    /// (<c>'a\x0ab' holds a control character (U+000A), which this key never takes.</c>), or null
    /// when it holds none.
    /// </summary>
    public static string? Refusal(string? text) =>
        IndexIn(text) is var at and >= 0
            ? $"'{Escape(text!)}' holds a control character (U+{(int)text![at]:X4}), which this key never takes."
            : null;
}
