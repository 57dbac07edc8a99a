using Akka.Configuration;

namespace ActorBlk.Host.Commands;

/// <summary>
/// Checks that the braces and brackets of a HOCON text pair up, outside strings and comments.
/// Akka's parser accepts a file whose last object is never closed (it ends the object at the end
/// of the text), so an unclosed brace used to surface as a later, unrelated complaint about a key
/// it had swallowed (an outside audit); this names the line of the bracket instead. The same pass
/// refuses a NUL character and an include Akka's parser does not read, naming where they stand.
/// </summary>
internal static class HoconBrackets
{
    /// <summary>
    /// How deep braces and brackets may nest. Akka's parser descends once per level on the thread's
    /// stack, and 30,000 nested '[' overflowed it: the runtime's "Stack overflow." and SIGABRT, not
    /// an error (an outside CLI fuzzing audit). A node's configuration nests a few levels.
    /// </summary>
    public const int MaxDepth = 64;

    /// <summary>
    /// Throws when the text holds a NUL character, a closing bracket does not match, an opened one is
    /// never closed, they nest more than <see cref="MaxDepth"/> deep, or an include is not
    /// <c>include "FILE"</c>.
    /// </summary>
    /// <exception cref="ConfigurationException">Names the line (and the column of a NUL) and what is wrong there.</exception>
    public static void Check(string text)
    {
        CheckNul(text);
        var open = new Stack<(char Bracket, int Line)>();
        var line = 1;
        var urlLine = 0; // a line where "x://" starts a comment: most likely an unquoted URL
        var keyStart = true; // where Akka's parser reads a key (and so an include): not in a value or a list
        var previous = '\0'; // the last character outside blanks, strings and comments
        for (var i = 0; i < text.Length; i++)
        {
            var c = text[i];
            if (char.IsWhiteSpace(c) && c != '\n')
            {
                continue;
            }

            if (keyStart && c == 'i' && (open.Count == 0 || open.Peek().Bracket == '{'))
            {
                CheckInclude(text, i, line);
            }

            keyStart = false;
            switch (c)
            {
                case '\n':
                    line++;

                    // A value ends at the end of its line, unless the line ends at its '=' or ':'.
                    keyStart = previous is not ('=' or ':');
                    continue;
                case '#':
                    // A comment runs to the end of its line, whose newline decides what comes next.
                    i = EndOfLine(text, i);
                    continue;
                case '/' when i + 1 < text.Length && text[i + 1] == '/':
                    if (urlLine == 0 && i > 0 && text[i - 1] == ':')
                    {
                        urlLine = line;
                    }

                    i = EndOfLine(text, i);
                    continue;
                case '"':
                    i = EndOfString(text, i, ref line);
                    break;
                case '$' when i + 2 < text.Length && text[i + 1] == '{' && text[i + 2] == '?':
                    // HOCON's optional substitution (${?NAME}, from Akka's JVM configurations, often
                    // for an environment variable): Akka.NET's parser reads it as a substitution of the
                    // whole file, which the cycle check then refused as "the substitution ${} refers
                    // to itself"; it reads no environment variables either.
                    throw new ConfigurationException($"line {line}: '${{?' is HOCON's optional substitution, which Akka.NET's parser does not read (nor environment variables): write the value itself, or use serve's options (--port, --hostname, --seed).");
                case '+' when i + 1 < text.Length && text[i + 1] == '=':
                    // HOCON's append (actorblk.devices += { ... } in an override file): Akka.NET's
                    // parser drops it without a word, so the device was never created.
                    throw new ConfigurationException($"line {line}: '+=' is HOCON's append, which Akka.NET's parser ignores (the value would be dropped): write the whole list.");
                case '{' or '[':
                    if (open.Count == MaxDepth)
                    {
                        throw new ConfigurationException($"line {line}: '{c}' opens a level deeper than {MaxDepth}: braces and brackets nest at most {MaxDepth} deep.");
                    }

                    open.Push((c, line));
                    keyStart = c == '{';
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

                    keyStart = c == '}';
                    break;
                case ',':
                    keyStart = true;
                    break;
            }

            previous = c;
        }

        if (open.Count > 0)
        {
            var (bracket, at) = open.Pop();
            throw new ConfigurationException($"the '{bracket}' opened at line {at} is never closed.{UrlHint(urlLine)}");
        }
    }

    // A NUL is never HOCON text (nor any text a person writes): a file holding one is binary or
    // damaged, and Akka's parser took it as part of a key or value (an outside CLI fuzzing audit).
    private static void CheckNul(string text)
    {
        var at = text.IndexOf('\0', StringComparison.Ordinal);
        if (at < 0)
        {
            return;
        }

        var lineStart = text.LastIndexOf('\n', at) + 1;
        var line = 1 + Count(text, 0, lineStart - 1);
        throw new ConfigurationException($"line {line}, column {at - lineStart + 1}: a NUL character (U+0000); a HOCON file is text and never holds one.");
    }

    // Akka.NET's parser reads one include, `include "FILE"` (the callback NodeConfig gives it loads
    // FILE relative to the including file). HOCON's url(...), file(...), classpath(...) and
    // required(...) it does not know: it took `include file("/etc/passwd")` for a key, swallowing
    // the keys that followed into it, and went on in silence (an outside CLI fuzzing audit). So an
    // unquoted `include` where a key starts, followed by a blank and then anything but a quoted
    // name, is refused; `include = 1` and `include { ... }` stay keys named include, as to Akka.
    private static void CheckInclude(string text, int i, int line)
    {
        const string Include = "include";
        var j = i + Include.Length;
        if (string.CompareOrdinal(text, i, Include, 0, Include.Length) != 0 || j >= text.Length
            || !(char.IsWhiteSpace(text[j]) || text[j] == '#' || (text[j] == '/' && j + 1 < text.Length && text[j + 1] == '/')))
        {
            return;
        }

        while (j < text.Length)
        {
            if (char.IsWhiteSpace(text[j]))
            {
                j++;
            }
            else if (text[j] == '#' || (text[j] == '/' && j + 1 < text.Length && text[j + 1] == '/'))
            {
                j = EndOfLine(text, j) + 1;
            }
            else
            {
                break;
            }
        }

        if (j < text.Length && text[j] is '"' or '=' or ':' or '{' or '.')
        {
            return;
        }

        var directive = text[i..(EndOfLine(text, i) + 1)].Trim();
        directive = directive.Length > 80 ? directive[..77] + "..." : directive;
        throw new ConfigurationException(
            $"line {line}: {directive}: only include \"FILE\" is read (FILE relative to this file; a missing one is an error, as required() makes it). " +
            "Akka.NET's HOCON parser does not know url(), file(), classpath() or required(), and took the line for a key.");
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
