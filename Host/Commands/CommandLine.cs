using System.Globalization;

namespace ActorBlk.Host.Commands;

/// <summary>A command-line option was missing, unknown or malformed.</summary>
public sealed class UsageException(string message) : Exception(message);

/// <summary>
/// Options in fio's style: <c>--name=value</c> or <c>--name value</c>, <c>--flag</c> for booleans.
/// Every option must be consumed; an unknown one is an error naming it.
/// </summary>
internal sealed class CommandLine
{
    private readonly Dictionary<string, string?> _options = new(StringComparer.Ordinal);
    private readonly HashSet<string> _used = new(StringComparer.Ordinal);

    public CommandLine(IEnumerable<string> args)
    {
        var list = args.ToList();
        for (var i = 0; i < list.Count; i++)
        {
            var arg = list[i];
            if (!arg.StartsWith("--", StringComparison.Ordinal) || arg.Length == 2)
            {
                Positional.Add(arg);
                continue;
            }

            var eq = arg.IndexOf('=', StringComparison.Ordinal);
            string name;
            string? value;
            if (eq > 0)
            {
                name = arg[2..eq];
                value = arg[(eq + 1)..];
            }
            else
            {
                name = arg[2..];
                value = i + 1 < list.Count && !list[i + 1].StartsWith("--", StringComparison.Ordinal) ? list[++i] : null;
            }

            if (!_options.TryAdd(name, value))
            {
                throw new UsageException($"option --{name} is given twice.");
            }
        }
    }

    public List<string> Positional { get; } = [];

    public bool Has(string name)
    {
        _used.Add(name);
        return _options.ContainsKey(name);
    }

    public string? String(string name, string? fallback = null)
    {
        _used.Add(name);
        return _options.TryGetValue(name, out var v) ? v ?? throw new UsageException($"option --{name} needs a value.") : fallback;
    }

    public int Int(string name, int fallback, int min = int.MinValue, int max = int.MaxValue)
    {
        var text = String(name);
        if (text is null)
        {
            return fallback;
        }

        if (!int.TryParse(text, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out var v) || v < min || v > max)
        {
            throw new UsageException($"option --{name}: '{text}' is not a whole number from {min} to {max}.");
        }

        return v;
    }

    public long Long(string name, long fallback, long min = long.MinValue)
    {
        var text = String(name);
        if (text is null)
        {
            return fallback;
        }

        if (!long.TryParse(text, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out var v) || v < min)
        {
            throw new UsageException($"option --{name}: '{text}' is not a whole number of at least {min}.");
        }

        return v;
    }

    public double Double(string name, double fallback, double min, double max)
    {
        var text = String(name);
        if (text is null)
        {
            return fallback;
        }

        if (!double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out var v) || v < min || v > max)
        {
            throw new UsageException($"option --{name}: '{text}' is not a number from {min} to {max}.");
        }

        return v;
    }

    /// <summary>A boolean: <c>--name</c>, <c>--name=1</c>, <c>--name=0</c> (fio's convention), on/off, true/false.</summary>
    public bool Bool(string name, bool fallback)
    {
        _used.Add(name);
        if (!_options.TryGetValue(name, out var text))
        {
            return fallback;
        }

        return (text ?? "1").ToLowerInvariant() switch
        {
            "1" or "on" or "true" or "yes" => true,
            "0" or "off" or "false" or "no" => false,
            _ => throw new UsageException($"option --{name}: '{text}' is not 0 or 1."),
        };
    }

    /// <summary>Throws for any option nobody asked for (a typo must not be ignored).</summary>
    public void RejectUnknown()
    {
        var unknown = _options.Keys.Where(k => !_used.Contains(k)).ToList();
        if (unknown.Count > 0)
        {
            throw new UsageException($"unknown option{(unknown.Count > 1 ? "s" : string.Empty)}: {string.Join(", ", unknown.Select(u => "--" + u))}.");
        }
    }
}
