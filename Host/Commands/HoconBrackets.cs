using Akka.Configuration;

namespace ActorBlk.Host.Commands;

/// <summary>
/// Checks that the braces and brackets of a HOCON text pair up, outside strings and comments.
/// Akka's parser accepts a file whose last object is never closed (it ends the object at the end
/// of the text), so an unclosed brace used to surface as a later, unrelated complaint about a key
/// it had swallowed (an outside audit); this names the line of the bracket instead.
/// </summary>
internal static class HoconBrackets
{
    /// <summary>Throws when a closing bracket does not match, or an opened one is never closed.</summary>
    /// <exception cref="ConfigurationException">Names the line and the bracket.</exception>
    public static void Check(string text)
    {
        var open = new Stack<(char Bracket, int Line)>();
        var line = 1;
        for (var i = 0; i < text.Length; i++)
        {
            var c = text[i];
            switch (c)
            {
                case '\n':
                    line++;
                    break;
                case '#':
                    i = EndOfLine(text, i);
                    break;
                case '/' when i + 1 < text.Length && text[i + 1] == '/':
                    i = EndOfLine(text, i);
                    break;
                case '"':
                    i = EndOfString(text, i, ref line);
                    break;
                case '{' or '[':
                    open.Push((c, line));
                    break;
                case '}' or ']':
                    var expected = c == '}' ? '{' : '[';
                    if (open.Count == 0)
                    {
                        throw new ConfigurationException($"line {line}: '{c}' closes nothing.");
                    }

                    var (bracket, at) = open.Pop();
                    if (bracket != expected)
                    {
                        throw new ConfigurationException($"line {line}: '{c}' closes the '{bracket}' opened at line {at}.");
                    }

                    break;
            }
        }

        if (open.Count > 0)
        {
            var (bracket, at) = open.Pop();
            throw new ConfigurationException($"the '{bracket}' opened at line {at} is never closed.");
        }
    }

    // The index of the last character of the line (before its newline).
    private static int EndOfLine(string text, int i)
    {
        var end = text.IndexOf('\n', i);
        return end < 0 ? text.Length - 1 : end - 1;
    }

    // The index of a string's closing quote ("..." with escapes, or """..."""); counts its newlines.
    private static int EndOfString(string text, int i, ref int line)
    {
        if (string.CompareOrdinal(text, i, "\"\"\"", 0, 3) == 0)
        {
            var end = text.IndexOf("\"\"\"", i + 3, StringComparison.Ordinal);
            end = end < 0 ? text.Length - 1 : end + 2;
            // A triple-quoted string may end in more quotes ("""a"""" is a"): they belong to it.
            while (end + 1 < text.Length && text[end + 1] == '"')
            {
                end++;
            }

            line += Count(text, i, end);
            return end;
        }

        for (var j = i + 1; j < text.Length; j++)
        {
            switch (text[j])
            {
                case '\\':
                    j++;
                    break;
                case '"':
                    return j;
                case '\n':
                    // An unterminated string: the parser reports it; go on from the next line.
                    line++;
                    return j;
            }
        }

        return text.Length - 1;
    }

    private static int Count(string text, int from, int to)
    {
        var n = 0;
        for (var k = from; k <= to && k < text.Length; k++)
        {
            if (text[k] == '\n')
            {
                n++;
            }
        }

        return n;
    }
}
