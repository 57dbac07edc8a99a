using System.CommandLine;
using System.CommandLine.Parsing;
using System.Globalization;

namespace ActorBlk.Host.Commands;

/// <summary>
/// An option's value with the word it was given as (or its default's), which <c>--help</c> shows
/// as the default: <c>randread</c>, <c>4k</c>, <c>1</c> rather than the parsed value's own text.
/// </summary>
/// <typeparam name="T">The parsed value's type.</typeparam>
/// <param name="Text">The word.</param>
/// <param name="Value">The parsed value.</param>
internal readonly record struct Word<T>(string Text, T Value)
{
    /// <inheritdoc/>
    public override string ToString() => Text;
}

/// <summary>
/// Typed System.CommandLine options in fio's conventions: <c>--name=value</c> or <c>--name value</c>,
/// booleans as <c>--flag</c>, <c>--flag=1</c> or <c>--flag=0</c>, sizes as <c>4k</c>, durations as
/// <c>10</c>, <c>10s</c>, <c>500ms</c>, <c>2m</c>. A value out of range is a parse error naming the
/// option (<c>option --iodepth: '0' is not a whole number from 1 to 65536.</c>), so the command exits
/// with the usage error code before anything runs.
/// </summary>
internal static class CliOptions
{
    private static readonly CultureInfo Inv = CultureInfo.InvariantCulture;

    /// <summary>A whole number from <paramref name="min"/> to <paramref name="max"/>.</summary>
    public static Option<int> Int(string name, int fallback, int min, int max, string description, params string[] aliases) => LastWins(new Option<int>(name, aliases)
    {
        Description = description,
        HelpName = "N",
        DefaultValueFactory = _ => fallback,
        CustomParser = r => ParseInt(r, min, max) ?? fallback,
    });

    /// <summary>A whole number from <paramref name="min"/> to <paramref name="max"/>, or null when not given.</summary>
    public static Option<int?> OptionalInt(string name, int min, int max, string description, string helpName = "N", params string[] aliases) => LastWins(new Option<int?>(name, aliases)
    {
        Description = description,
        HelpName = helpName,
        CustomParser = r => ParseInt(r, min, max),
    });

    /// <summary>A whole number of at least <paramref name="min"/>.</summary>
    public static Option<long> Long(string name, long fallback, long min, string description) => LastWins(new Option<long>(name)
    {
        Description = description,
        HelpName = "N",
        DefaultValueFactory = _ => fallback,
        CustomParser = r => Each(r, name, fallback, text =>
            long.TryParse(text, NumberStyles.AllowLeadingSign, Inv, out var v) && v >= min
                ? (v, null)
                : (fallback, $"option {name}: '{text}' is not a whole number of at least {min}.")),
    });

    /// <summary>A number from <paramref name="min"/> to <paramref name="max"/>.</summary>
    public static Option<double> Double(string name, double fallback, double min, double max, string description) => LastWins(new Option<double>(name)
    {
        Description = description,
        HelpName = "P",
        DefaultValueFactory = _ => fallback,
        CustomParser = r => Each(r, name, fallback, text =>
            double.TryParse(text, NumberStyles.Float, Inv, out var v) && v >= min && v <= max
                ? (v, null)
                : (fallback, $"option {name}: '{text}' is not a number from {min} to {max}.")),
    });

    /// <summary>
    /// fio's boolean: <c>--name</c> alone is 1; <c>--name=1</c>, <c>=0</c>, on/off, true/false, yes/no.
    /// Its type is not bool: System.CommandLine lets a bool option take only true or false as its
    /// value, and fio's spelling is 0 or 1.
    /// </summary>
    /// <remarks>
    /// Repeated, each value given is checked and the last occurrence wins; one given alone counts
    /// as 1 there too (<c>--direct=0 --direct</c> is 1), which <see cref="ValueOf(ParseResult, Option{Word{bool}})"/>
    /// finds from the order of the command line's tokens: an argument's tokens do not say where they stood.
    /// </remarks>
    public static Option<Word<bool>> Bool(string name, bool fallback, string description) => LastWins(new Option<Word<bool>>(name)
    {
        Description = description,
        HelpName = "0|1",
        // Given without a value, the option is not parsed but defaulted: the default is then 1.
        DefaultValueFactory = r => r.Parent is OptionResult { Implicit: false } ? Flag(true) : Flag(fallback),
        CustomParser = r => r.Tokens.Count == 0 ? Flag(true) : Each(r, name, Flag(fallback), text => text.ToLowerInvariant() switch
        {
            "1" or "on" or "true" or "yes" => (Flag(true), null),
            "0" or "off" or "false" or "no" => (Flag(false), null),
            _ => (Flag(fallback), $"option {name}: '{text}' is not 0 or 1."),
        }, bareAllowed: true),
    }, ArgumentArity.ZeroOrMore);

    /// <summary>The parsed value of a <see cref="Choice"/> or <see cref="Size"/> option.</summary>
    public static T ValueOf<T>(this ParseResult parse, Option<Word<T>> option) => parse.GetValue(option).Value;

    /// <summary>
    /// The parsed value of a <see cref="Bool"/> (or a <see cref="Choice"/> of two): the last
    /// occurrence's, 1 when that one has no value.
    /// </summary>
    public static bool ValueOf(this ParseResult parse, Option<Word<bool>> option)
    {
        ArgumentNullException.ThrowIfNull(parse);
        ArgumentNullException.ThrowIfNull(option);
        var value = parse.GetValue(option).Value;
        var tokens = parse.Tokens;
        for (var i = tokens.Count - 1; i >= 0; i--)
        {
            if (tokens[i].Type == TokenType.Option && (tokens[i].Value == option.Name || option.Aliases.Contains(tokens[i].Value)))
            {
                // The last occurrence: alone when no argument follows it.
                return i + 1 < tokens.Count && tokens[i + 1].Type == TokenType.Argument ? value : option.Arity.MinimumNumberOfValues == 0 || value;
            }
        }

        return value;
    }

    /// <summary>One of a fixed set of words, each naming a value; the words complete in the shell.</summary>
    public static Option<Word<T>> Choice<T>(string name, string fallback, IReadOnlyList<(string Word, T Value)> choices, string description, params string[] aliases)
    {
        var fallbackValue = choices.First(c => c.Word == fallback).Value;
        var words = choices.Select(c => c.Word).Distinct().ToList();
        var option = LastWins(new Option<Word<T>>(name, aliases)
        {
            Description = description,
            HelpName = string.Join('|', words),
            DefaultValueFactory = _ => new(fallback, fallbackValue),
            CustomParser = r => Each(r, name, new Word<T>(fallback, fallbackValue), text =>
            {
                foreach (var (word, value) in choices)
                {
                    if (word == text)
                    {
                        return (new(word, value), null);
                    }
                }

                return (new(fallback, fallbackValue), $"option {name}: '{text}' is not {string.Join(", ", words.Take(words.Count - 1))} or {words[^1]}.");
            }),
        });
        option.CompletionSources.Clear();
        option.CompletionSources.Add(choices.Select(c => c.Word).Distinct().ToArray());
        return option;
    }

    /// <summary>
    /// A comma-separated list of words from a fixed set, their values combined with
    /// <paramref name="combine"/> (fio's <c>--output-format=normal,json</c>); each word completes
    /// in the shell. A word not in the set, an empty one included (<c>json,</c>), is an error, as in fio.
    /// </summary>
    public static Option<Word<T>> ChoiceList<T>(string name, string fallback, IReadOnlyList<(string Word, T Value)> choices, Func<T, T, T> combine, string description, params string[] aliases)
    {
        ArgumentNullException.ThrowIfNull(combine);
        var fallbackValue = choices.First(c => c.Word == fallback).Value;
        var words = choices.Select(c => c.Word).Distinct().ToList();
        var option = LastWins(new Option<Word<T>>(name, aliases)
        {
            Description = description,
            HelpName = string.Join('|', words) + "[,...]",
            DefaultValueFactory = _ => new(fallback, fallbackValue),
            CustomParser = r => Each(r, name, new Word<T>(fallback, fallbackValue), text =>
            {
                T? value = default;
                var first = true;
                foreach (var piece in text.Split(','))
                {
                    var match = choices.FirstOrDefault(c => c.Word == piece);
                    if (match.Word is null)
                    {
                        return (new(fallback, fallbackValue), $"option {name}: '{text}' is not {string.Join(", ", words.Take(words.Count - 1))} or {words[^1]}, or a comma-separated list of them.");
                    }

                    value = first ? match.Value : combine(value!, match.Value);
                    first = false;
                }

                return (new(text, value!), null);
            }),
        });
        option.CompletionSources.Clear();
        option.CompletionSources.Add(words.ToArray());
        return option;
    }

    /// <summary>A string, or null when not given.</summary>
    public static Option<string?> Text(string name, string helpName, string description, params string[] aliases) => LastWins(new Option<string?>(name, aliases)
    {
        Description = description,
        HelpName = helpName,
        CustomParser = r => Each<string?>(r, name, null, text => (text, null)),
    });

    /// <summary>A string, <paramref name="fallback"/> when not given.</summary>
    public static Option<string> TextWithDefault(string name, string fallback, string helpName, string description) => LastWins(new Option<string>(name)
    {
        Description = description,
        HelpName = helpName,
        DefaultValueFactory = _ => fallback,
        CustomParser = r => Each(r, name, fallback, text => (text, null)),
    });

    /// <summary>
    /// fio's size: <c>4096</c>, <c>4k</c>, <c>1m</c>, <c>2g</c> (k = 1024), as <see cref="Sizes.Parse"/>
    /// reads it, or as <paramref name="parse"/> (given the option's name without dashes and the
    /// text) reads it when given. The value is read under fio's default <c>kb_base</c>; a command
    /// with <c>--kb_base</c> reads the text again (<see cref="Word{T}.Text"/>).
    /// </summary>
    public static Option<Word<long>> Size(string name, string fallback, string description, Func<string, string, long>? parse = null, string helpName = "SIZE")
    {
        var read = parse ?? ((option, text) => Sizes.Parse(option, text));
        return LastWins(new Option<Word<long>>(name)
        {
            Description = description,
            HelpName = helpName,
            DefaultValueFactory = _ => new(fallback, read(name.TrimStart('-'), fallback)),
            CustomParser = r => Each(r, name, default(Word<long>), text =>
            {
                try
                {
                    return (new(text, read(name.TrimStart('-'), text)), null);
                }
                catch (UsageException ex)
                {
                    return (default, ex.Message);
                }
            }),
        });
    }

    private static Word<bool> Flag(bool on) => new(on ? "1" : "0", on);

    /// <summary>fio's time: plain seconds, or a unit suffix (us, ms, s, m, h); null when not given.</summary>
    public static Option<TimeSpan?> Seconds(string name, string description) => LastWins(new Option<TimeSpan?>(name)
    {
        Description = description,
        HelpName = "SECONDS",
        CustomParser = r => Each(r, name, null, text => ParseDuration(text) is { } d ? (d, null)
            : ((TimeSpan?)null, IsLongerThanATimer(text)
                ? $"option {name}: '{text}' is longer than the longest wait, {(long)MaxDuration.TotalSeconds} s (49 days)."
                : $"option {name}: '{text}' is not a duration in seconds.")),
    });

    /// <summary>
    /// The longest duration <see cref="ParseDuration"/> takes: the longest wait a .NET timer has
    /// (2^32 - 2 ms, 49.7 days). Past it <c>--runtime=1e9</c> failed the run with an
    /// ArgumentOutOfRangeException and its stack, and <c>--runtime=1e30</c> aborted the process
    /// (an OverflowException while parsing, exit 134; an outside bad-input audit).
    /// </summary>
    public static readonly TimeSpan MaxDuration = TimeSpan.FromMilliseconds(uint.MaxValue - 1);

    private static bool IsLongerThanATimer(string text) => ParseDurationCore(text, unbounded: true) is { } d && d > MaxDuration;

    /// <summary>
    /// Parses fio's time: <c>10</c> (seconds), <c>10s</c>, <c>500ms</c>, <c>250us</c>, <c>2m</c>,
    /// <c>1h</c>; null when malformed, negative or longer than <see cref="MaxDuration"/>.
    /// </summary>
    public static TimeSpan? ParseDuration(string text) => ParseDurationCore(text, unbounded: false);

    private static TimeSpan? ParseDurationCore(string text, bool unbounded)
    {
        var t = text.Trim().ToLowerInvariant();
        var scale = 1.0;
        foreach (var (suffix, s) in new[] { ("usec", 1e-6), ("us", 1e-6), ("msec", 1e-3), ("ms", 1e-3), ("sec", 1.0), ("s", 1.0), ("m", 60.0), ("h", 3600.0), ("d", 86400.0) })
        {
            if (t.EndsWith(suffix, StringComparison.Ordinal))
            {
                scale = s;
                t = t[..^suffix.Length];
                break;
            }
        }

        if (!double.TryParse(t, NumberStyles.Float, Inv, out var v) || v < 0 || !double.IsFinite(v))
        {
            return null;
        }

        var seconds = v * scale;
        return seconds <= MaxDuration.TotalSeconds ? TimeSpan.FromSeconds(seconds)
            : unbounded ? TimeSpan.MaxValue
            : null;
    }

    private static int? ParseInt(ArgumentResult r, int min, int max)
    {
        var name = ((OptionResult)r.Parent!).Option.Name;
        return Each<int?>(r, name, null, text =>
            int.TryParse(text, NumberStyles.AllowLeadingSign, Inv, out var v) && v >= min && v <= max
                ? (v, null)
                : (null, $"option {name}: '{text}' is not a whole number from {min} to {max}."));
    }

    /// <summary>
    /// fio's rule for an option given more than once: the last occurrence wins (a harness appends
    /// its overrides to a base command line). Each occurrence takes one value (<c>--iodepth 2 4</c>
    /// stays an error: 4 is an unexpected argument).
    /// </summary>
    private static Option<T> LastWins<T>(Option<T> option, ArgumentArity? arity = null)
    {
        option.Arity = arity ?? ArgumentArity.OneOrMore;
        option.AllowMultipleArgumentsPerToken = false;
        return option;
    }

    /// <summary>
    /// For shell completion (the <c>[suggest]</c> directive): every option that takes its last
    /// value (<see cref="LastWins"/>) takes one, as before the rule. The completer offers an
    /// option's own values for as long as its arity allows more; with one, a word after the
    /// option's value completes to the command's options and sub-commands again.
    /// </summary>
    public static void OneValueEach(Command command)
    {
        ArgumentNullException.ThrowIfNull(command);
        foreach (var option in command.Options.Where(o => o.Arity.MaximumNumberOfValues > 1 && !o.AllowMultipleArgumentsPerToken))
        {
            option.Arity = option.Arity.MinimumNumberOfValues == 0 ? ArgumentArity.ZeroOrOne : ArgumentArity.ExactlyOne;
        }

        foreach (var sub in command.Subcommands)
        {
            OneValueEach(sub);
        }
    }

    /// <summary>
    /// Parses every value the option was given, in order, as fio does: the first that
    /// <paramref name="parse"/> refuses is the option's error (its message), else the last value
    /// is the option's. No value at all is an error too (a parse for completion can stop there),
    /// and so is an occurrence without one (<c>--iodepth=2 --iodepth</c>: the last occurrence has
    /// no value, so the earlier one would have won in silence) unless <paramref name="bareAllowed"/>
    /// (a boolean, which <see cref="ValueOf(ParseResult, Option{Word{bool}})"/> reads as 1 there).
    /// </summary>
    private static T Each<T>(ArgumentResult r, string name, T fallback, Func<string, (T Value, string? Error)> parse, bool bareAllowed = false)
    {
        if (r.Tokens.Count == 0 || (!bareAllowed && r.Parent is OptionResult { IdentifierTokenCount: var given } && given > r.Tokens.Count))
        {
            r.AddError($"option {name} needs a value.");
            return fallback;
        }

        var value = fallback;
        foreach (var token in r.Tokens)
        {
            (value, var error) = parse(token.Value);
            if (error is not null)
            {
                r.AddError(error);
                return fallback;
            }
        }

        return value;
    }
}
