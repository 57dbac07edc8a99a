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
    public static Option<int> Int(string name, int fallback, int min, int max, string description, params string[] aliases) => new(name, aliases)
    {
        Description = description,
        HelpName = "N",
        DefaultValueFactory = _ => fallback,
        CustomParser = r => ParseInt(r, min, max) ?? fallback,
    };

    /// <summary>A whole number from <paramref name="min"/> to <paramref name="max"/>, or null when not given.</summary>
    public static Option<int?> OptionalInt(string name, int min, int max, string description, string helpName = "N", params string[] aliases) => new(name, aliases)
    {
        Description = description,
        HelpName = helpName,
        CustomParser = r => ParseInt(r, min, max),
    };

    /// <summary>A whole number of at least <paramref name="min"/>.</summary>
    public static Option<long> Long(string name, long fallback, long min, string description) => new(name)
    {
        Description = description,
        HelpName = "N",
        DefaultValueFactory = _ => fallback,
        CustomParser = r =>
        {
            if (Value(r, name) is not { } text)
            {
                return fallback;
            }

            if (!long.TryParse(text, NumberStyles.AllowLeadingSign, Inv, out var v) || v < min)
            {
                r.AddError($"option {name}: '{text}' is not a whole number of at least {min}.");
                return fallback;
            }

            return v;
        },
    };

    /// <summary>A number from <paramref name="min"/> to <paramref name="max"/>.</summary>
    public static Option<double> Double(string name, double fallback, double min, double max, string description) => new(name)
    {
        Description = description,
        HelpName = "P",
        DefaultValueFactory = _ => fallback,
        CustomParser = r =>
        {
            if (Value(r, name) is not { } text)
            {
                return fallback;
            }

            if (!double.TryParse(text, NumberStyles.Float, Inv, out var v) || v < min || v > max)
            {
                r.AddError($"option {name}: '{text}' is not a number from {min} to {max}.");
                return fallback;
            }

            return v;
        },
    };

    /// <summary>
    /// fio's boolean: <c>--name</c> alone is 1; <c>--name=1</c>, <c>=0</c>, on/off, true/false, yes/no.
    /// Its type is not bool: System.CommandLine lets a bool option take only true or false as its
    /// value, and fio's spelling is 0 or 1.
    /// </summary>
    public static Option<Word<bool>> Bool(string name, bool fallback, string description) => new(name)
    {
        Description = description,
        HelpName = "0|1",
        Arity = ArgumentArity.ZeroOrOne,
        // Given without a value, the option is not parsed but defaulted: the default is then 1.
        DefaultValueFactory = r => r.Parent is OptionResult { Implicit: false } ? Flag(true) : Flag(fallback),
        CustomParser = r =>
        {
            if (r.Tokens.Count == 0)
            {
                return Flag(true);
            }

            var text = r.Tokens[0].Value;
            switch (text.ToLowerInvariant())
            {
                case "1" or "on" or "true" or "yes":
                    return Flag(true);
                case "0" or "off" or "false" or "no":
                    return Flag(false);
                default:
                    r.AddError($"option {name}: '{text}' is not 0 or 1.");
                    return Flag(fallback);
            }
        },
    };

    /// <summary>The parsed value of a <see cref="Bool"/>, <see cref="Choice"/> or <see cref="Size"/> option.</summary>
    public static T ValueOf<T>(this ParseResult parse, Option<Word<T>> option) => parse.GetValue(option).Value;

    /// <summary>One of a fixed set of words, each naming a value; the words complete in the shell.</summary>
    public static Option<Word<T>> Choice<T>(string name, string fallback, IReadOnlyList<(string Word, T Value)> choices, string description, params string[] aliases)
    {
        var fallbackValue = choices.First(c => c.Word == fallback).Value;
        var option = new Option<Word<T>>(name, aliases)
        {
            Description = description,
            HelpName = string.Join('|', choices.Select(c => c.Word).Distinct()),
            DefaultValueFactory = _ => new(fallback, fallbackValue),
            CustomParser = r =>
            {
                if (Value(r, name) is not { } text)
                {
                    return new(fallback, fallbackValue);
                }

                foreach (var (word, value) in choices)
                {
                    if (word == text)
                    {
                        return new(word, value);
                    }
                }

                var words = choices.Select(c => c.Word).Distinct().ToList();
                r.AddError($"option {name}: '{text}' is not {string.Join(", ", words.Take(words.Count - 1))} or {words[^1]}.");
                return new(fallback, fallbackValue);
            },
        };
        option.CompletionSources.Clear();
        option.CompletionSources.Add(choices.Select(c => c.Word).Distinct().ToArray());
        return option;
    }

    /// <summary>A string, or null when not given.</summary>
    public static Option<string?> Text(string name, string helpName, string description, params string[] aliases) => new(name, aliases)
    {
        Description = description,
        HelpName = helpName,
    };

    /// <summary>fio's size: <c>4096</c>, <c>4k</c>, <c>1m</c>, <c>2g</c> (k = 1024).</summary>
    public static Option<Word<long>> Size(string name, string fallback, string description) => new(name)
    {
        Description = description,
        HelpName = "SIZE",
        DefaultValueFactory = _ => new(fallback, Sizes.Parse(name.TrimStart('-'), fallback)),
        CustomParser = r =>
        {
            try
            {
                return Value(r, name) is { } text ? new(text, Sizes.Parse(name.TrimStart('-'), text)) : default;
            }
            catch (UsageException ex)
            {
                r.AddError(ex.Message);
                return default;
            }
        },
    };

    private static Word<bool> Flag(bool on) => new(on ? "1" : "0", on);

    /// <summary>fio's time: plain seconds, or a unit suffix (us, ms, s, m, h); null when not given.</summary>
    public static Option<TimeSpan?> Seconds(string name, string description) => new(name)
    {
        Description = description,
        HelpName = "SECONDS",
        CustomParser = r =>
        {
            if (Value(r, name) is not { } text)
            {
                return null;
            }

            if (ParseDuration(text) is { } d)
            {
                return d;
            }

            r.AddError($"option {name}: '{text}' is not a duration in seconds.");
            return null;
        },
    };

    /// <summary>Parses fio's time: <c>10</c> (seconds), <c>10s</c>, <c>500ms</c>, <c>250us</c>, <c>2m</c>, <c>1h</c>; null when malformed or negative.</summary>
    public static TimeSpan? ParseDuration(string text)
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

        return double.TryParse(t, NumberStyles.Float, Inv, out var v) && v >= 0 && double.IsFinite(v) ? TimeSpan.FromSeconds(v * scale) : null;
    }

    private static int? ParseInt(ArgumentResult r, int min, int max)
    {
        var name = ((OptionResult)r.Parent!).Option.Name;
        if (Value(r, name) is not { } text)
        {
            return null;
        }

        if (!int.TryParse(text, NumberStyles.AllowLeadingSign, Inv, out var v) || v < min || v > max)
        {
            r.AddError($"option {name}: '{text}' is not a whole number from {min} to {max}.");
            return null;
        }

        return v;
    }

    // The option's value, or null with an error when it has none (a parse for completion can stop there).
    private static string? Value(ArgumentResult r, string name)
    {
        if (r.Tokens.Count == 0)
        {
            r.AddError($"option {name} needs a value.");
            return null;
        }

        return r.Tokens[0].Value;
    }
}
