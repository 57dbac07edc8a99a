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
    /// <summary>
    /// How deep braces and brackets may nest. Akka's parser descends once per level on the thread's
    /// stack, and 30,000 nested '[' overflowed it: the runtime's "Stack overflow." and SIGABRT, not
    /// an error (an outside CLI fuzzing audit). A node's configuration nests a few levels.
    /// </summary>
    public const int MaxDepth = 64;

    /// <summary>Throws when a closing bracket does not match, an opened one is never closed, or they nest more than <see cref="MaxDepth"/> deep.</summary>
    /// <exception cref="ConfigurationException">Names the line and the bracket.</exception>
    public static void Check(string text)
    {
        var open = new Stack<(char Bracket, int Line)>();
        var line = 1;
        var urlLine = 0; // a line where "x://" starts a comment: most likely an unquoted URL
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
                    if (urlLine == 0 && i > 0 && text[i - 1] == ':')
                    {
                        urlLine = line;
                    }

                    i = EndOfLine(text, i);
                    break;
                case '"':
                    i = EndOfString(text, i, ref line);
                    break;
                case '{' or '[':
                    if (open.Count == MaxDepth)
                    {
                        throw new ConfigurationException($"line {line}: '{c}' opens a level deeper than {MaxDepth}: braces and brackets nest at most {MaxDepth} deep.");
                    }

                    open.Push((c, line));
                    break;
                case '}' or ']':
                    var expected = c == '}' ? '{' : '[';
                    if (open.Count == 0)
                    {
                        throw new ConfigurationException($"line {line}: '{c}' closes nothing.{UrlHint(urlLine)}");
                    }

                    var (bracket, at) = open.Pop();
                    if (bracket != expected)
                    {
                        throw new ConfigurationException($"line {line}: '{c}' closes the '{bracket}' opened at line {at}.{UrlHint(urlLine)}");
                    }

                    break;
            }
        }

        if (open.Count > 0)
        {
            var (bracket, at) = open.Pop();
            throw new ConfigurationException($"the '{bracket}' opened at line {at} is never closed.{UrlHint(urlLine)}");
        }
    }

    // HOCON reads "//" as a comment outside quotes, so an unquoted URL hides the rest of its line.
    private static string UrlHint(int line) => line == 0
        ? string.Empty
        : $" (line {line} holds an unquoted URL: HOCON reads '//' as the start of a comment, so quote it, e.g. uri = \"nbd://host:10809/disk0\")";

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
            if (end < 0)
            {
                // Akka's parser took the rest of the file as the string, and the node started with
                // every key after it gone (an outside CLI fuzzing audit).
                throw new ConfigurationException($"the triple-quoted string opened at line {line} is never closed.");
            }

            end += 2;
            // A triple-quoted string may end in more quotes ("""a"""" is a"): they belong to it.
            while (end + 1 < text.Length && text[end + 1] == '"')
            {
                end++;
            }

            line += Count(text, i, end);
            return end;
        }

        // A quoted string may span lines (Akka's parser accepts it); one never closed is refused.
        var opened = line;
        for (var j = i + 1; j < text.Length; j++)
        {
            switch (text[j])
            {
                case '\\':
                    if (j + 1 < text.Length && text[j + 1] == '\n')
                    {
                        line++;
                    }

                    j++;
                    break;
                case '"':
                    return j;
                case '\n':
                    line++;
                    break;
            }
        }

        throw new ConfigurationException($"the string opened at line {opened} is never closed.");
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

    /// <summary>
    /// Throws when a substitution refers, directly or through others, to a value that contains it
    /// (<c>a = ${a}</c>, <c>a = ${b}</c> with <c>b = ${a}</c>, <c>a { b = ${a} }</c>): HOCON calls it
    /// a cycle, and Akka's parser keeps it, so the first reader of the configuration recursed until the
    /// stack overflowed (the runtime's "Stack overflow." and SIGABRT; an outside CLI fuzzing audit).
    /// The walk is iterative, so no configuration can overflow it.
    /// </summary>
    /// <exception cref="ConfigurationException">Names the substitution.</exception>
    public static void CheckCycles(Akka.Configuration.Hocon.HoconValue root)
    {
        ArgumentNullException.ThrowIfNull(root);

        // Depth first with colours: a node met again while it is still being walked (on the path)
        // closes a cycle; without substitutions the values form a tree and none is met twice.
        var onPath = new HashSet<object>(ReferenceEqualityComparer.Instance);
        var done = new HashSet<object>(ReferenceEqualityComparer.Instance);
        var stack = new Stack<(object Node, bool Leaving)>();
        var substitutions = new Stack<Akka.Configuration.Hocon.HoconSubstitution>(); // those on the path, innermost on top
        stack.Push((root, false));
        while (stack.Count > 0)
        {
            var (node, leaving) = stack.Pop();
            if (leaving)
            {
                onPath.Remove(node);
                done.Add(node);
                if (node is Akka.Configuration.Hocon.HoconSubstitution)
                {
                    substitutions.Pop();
                }

                continue;
            }

            if (done.Contains(node))
            {
                continue;
            }

            if (!onPath.Add(node))
            {
                // The innermost substitution on the path is the one that led back.
                throw new ConfigurationException(substitutions.TryPeek(out var cyclic)
                    ? $"the substitution ${{{cyclic.Path}}} refers to itself (a cycle of substitutions)."
                    : "a value contains itself (a cycle of substitutions).");
            }

            if (node is Akka.Configuration.Hocon.HoconSubstitution entered)
            {
                substitutions.Push(entered);
            }

            stack.Push((node, true));
            switch (node)
            {
                case Akka.Configuration.Hocon.HoconValue value:
                    foreach (var element in value.Values)
                    {
                        stack.Push((element, false));
                    }

                    break;
                case Akka.Configuration.Hocon.HoconObject obj:
                    foreach (var item in obj.Items.Values)
                    {
                        stack.Push((item, false));
                    }

                    break;
                case Akka.Configuration.Hocon.HoconArray array:
                    foreach (var item in array)
                    {
                        stack.Push((item, false));
                    }

                    break;
                case Akka.Configuration.Hocon.HoconSubstitution { ResolvedValue: { } resolved }:
                    stack.Push((resolved, false));
                    break;
            }
        }
    }
}
