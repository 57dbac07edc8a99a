using System.Collections;
using System.Globalization;
using System.Numerics;
using System.Text;

namespace ActorBlk.Hardware.Topology;

/// <summary>
/// An immutable set of CPU ids (the kernel's <c>struct cpumask</c>), stored as a bitmap.
/// </summary>
/// <remarks>
/// Two textual forms are supported: the kernel's <em>cpulist</em> format used by
/// <c>/sys/devices/system/cpu/online</c> (<c>"0-3,5,7-8"</c>), and the block layer's
/// <c>mq/&lt;N&gt;/cpu_list</c> format (<c>"0, 1, 2, 3"</c>).
/// </remarks>
public sealed class CpuSet : IEquatable<CpuSet>, IReadOnlyCollection<int>
{
    private readonly ulong[] _words;

    /// <summary>The empty set.</summary>
    public static CpuSet Empty { get; } = new(Array.Empty<ulong>());

    private CpuSet(ulong[] words)
    {
        // Normalise: no trailing zero words, so equality and hashing are structural.
        var n = words.Length;
        while (n > 0 && words[n - 1] == 0)
        {
            n--;
        }

        _words = n == words.Length ? words : words.AsSpan(0, n).ToArray();
        var count = 0;
        foreach (var w in _words)
        {
            count += BitOperations.PopCount(w);
        }

        Count = count;
    }

    /// <summary>Number of CPUs in the set.</summary>
    public int Count { get; }

    /// <summary>True when the set holds no CPU.</summary>
    public bool IsEmpty => Count == 0;

    /// <summary>The lowest CPU id in the set, or -1 when empty (<c>cpumask_first</c>).</summary>
    public int First => Next(-1);

    /// <summary>The highest CPU id in the set, or -1 when empty.</summary>
    public int Last
    {
        get
        {
            for (var i = _words.Length - 1; i >= 0; i--)
            {
                if (_words[i] != 0)
                {
                    return (i * 64) + 63 - BitOperations.LeadingZeroCount(_words[i]);
                }
            }

            return -1;
        }
    }

    /// <summary>Creates a set holding the given CPU ids.</summary>
    /// <exception cref="ArgumentOutOfRangeException">A CPU id is negative.</exception>
    public static CpuSet Of(params IEnumerable<int> cpus)
    {
        ArgumentNullException.ThrowIfNull(cpus);
        var words = Array.Empty<ulong>();
        foreach (var cpu in cpus)
        {
            ArgumentOutOfRangeException.ThrowIfNegative(cpu);
            var w = cpu >> 6;
            if (w >= words.Length)
            {
                Array.Resize(ref words, w + 1);
            }

            words[w] |= 1UL << (cpu & 63);
        }

        return new CpuSet(words);
    }

    /// <summary>Creates the set <c>{0 .. count-1}</c>.</summary>
    public static CpuSet Range(int count) => Range(0, count);

    /// <summary>Creates the set <c>{first .. first+count-1}</c>.</summary>
    public static CpuSet Range(int first, int count)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(first);
        ArgumentOutOfRangeException.ThrowIfNegative(count);
        if (count == 0)
        {
            return Empty;
        }

        var words = new ulong[((first + count - 1) >> 6) + 1];
        for (var cpu = first; cpu < first + count; cpu++)
        {
            words[cpu >> 6] |= 1UL << (cpu & 63);
        }

        return new CpuSet(words);
    }

    /// <summary>
    /// Parses the kernel cpulist format (<c>"0-3,5"</c>); an empty or whitespace string is the
    /// empty set. Whitespace around items, as in <c>"0, 1, 2"</c>, is accepted too.
    /// </summary>
    /// <exception cref="FormatException">The text is not a cpulist.</exception>
    public static CpuSet Parse(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        if (!TryParse(text, out var set))
        {
            throw new FormatException($"'{text}' is not a CPU list (expected e.g. \"0-3,5\").");
        }

        return set;
    }

    /// <summary>Parses the kernel cpulist format without throwing.</summary>
    public static bool TryParse(string? text, out CpuSet set)
    {
        set = Empty;
        if (text is null)
        {
            return false;
        }

        var trimmed = text.Trim();
        if (trimmed.Length == 0)
        {
            return true;
        }

        var cpus = new List<int>();
        foreach (var raw in trimmed.Split(','))
        {
            var item = raw.Trim();
            var dash = item.IndexOf('-');
            if (dash < 0)
            {
                if (!int.TryParse(item, NumberStyles.None, CultureInfo.InvariantCulture, out var single))
                {
                    return false;
                }

                cpus.Add(single);
                continue;
            }

            if (!int.TryParse(item.AsSpan(0, dash), NumberStyles.None, CultureInfo.InvariantCulture, out var lo) ||
                !int.TryParse(item.AsSpan(dash + 1), NumberStyles.None, CultureInfo.InvariantCulture, out var hi) ||
                hi < lo || hi - lo > 1 << 20)
            {
                return false;
            }

            for (var c = lo; c <= hi; c++)
            {
                cpus.Add(c);
            }
        }

        set = Of(cpus);
        return true;
    }

    /// <summary>True when <paramref name="cpu"/> is in the set.</summary>
    public bool Contains(int cpu)
    {
        if (cpu < 0)
        {
            return false;
        }

        var w = cpu >> 6;
        return w < _words.Length && (_words[w] & (1UL << (cpu & 63))) != 0;
    }

    /// <summary>The lowest CPU id greater than <paramref name="cpu"/>, or -1 (<c>cpumask_next</c>).</summary>
    public int Next(int cpu)
    {
        var start = cpu + 1;
        if (start < 0)
        {
            start = 0;
        }

        for (var w = start >> 6; w < _words.Length; w++)
        {
            var bits = _words[w];
            if (w == start >> 6)
            {
                bits &= ~0UL << (start & 63);
            }

            if (bits != 0)
            {
                return (w * 64) + BitOperations.TrailingZeroCount(bits);
            }
        }

        return -1;
    }

    /// <summary>The set with <paramref name="cpu"/> added.</summary>
    public CpuSet With(int cpu)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(cpu);
        if (Contains(cpu))
        {
            return this;
        }

        var words = new ulong[Math.Max(_words.Length, (cpu >> 6) + 1)];
        _words.CopyTo(words, 0);
        words[cpu >> 6] |= 1UL << (cpu & 63);
        return new CpuSet(words);
    }

    /// <summary>The set with <paramref name="cpu"/> removed.</summary>
    public CpuSet Without(int cpu)
    {
        if (!Contains(cpu))
        {
            return this;
        }

        var words = (ulong[])_words.Clone();
        words[cpu >> 6] &= ~(1UL << (cpu & 63));
        return new CpuSet(words);
    }

    /// <summary>Set union (<c>cpumask_or</c>).</summary>
    public CpuSet Union(CpuSet other)
    {
        ArgumentNullException.ThrowIfNull(other);
        var words = new ulong[Math.Max(_words.Length, other._words.Length)];
        for (var i = 0; i < words.Length; i++)
        {
            words[i] = Word(i) | other.Word(i);
        }

        return new CpuSet(words);
    }

    /// <summary>Set intersection (<c>cpumask_and</c>).</summary>
    public CpuSet Intersect(CpuSet other)
    {
        ArgumentNullException.ThrowIfNull(other);
        var words = new ulong[Math.Min(_words.Length, other._words.Length)];
        for (var i = 0; i < words.Length; i++)
        {
            words[i] = _words[i] & other._words[i];
        }

        return new CpuSet(words);
    }

    /// <summary>Set difference (<c>cpumask_andnot</c>).</summary>
    public CpuSet Except(CpuSet other)
    {
        ArgumentNullException.ThrowIfNull(other);
        var words = (ulong[])_words.Clone();
        for (var i = 0; i < words.Length; i++)
        {
            words[i] &= ~other.Word(i);
        }

        return new CpuSet(words);
    }

    /// <summary>True when the two sets share at least one CPU (<c>cpumask_intersects</c>).</summary>
    public bool Intersects(CpuSet other)
    {
        ArgumentNullException.ThrowIfNull(other);
        var n = Math.Min(_words.Length, other._words.Length);
        for (var i = 0; i < n; i++)
        {
            if ((_words[i] & other._words[i]) != 0)
            {
                return true;
            }
        }

        return false;
    }

    /// <summary>Formats the set in the kernel cpulist form, e.g. <c>"0-3,5"</c>.</summary>
    public string ToCpuListString()
    {
        var sb = new StringBuilder();
        var cpu = First;
        while (cpu >= 0)
        {
            var end = cpu;
            while (Contains(end + 1))
            {
                end++;
            }

            if (sb.Length > 0)
            {
                sb.Append(',');
            }

            sb.Append(cpu.ToString(CultureInfo.InvariantCulture));
            if (end > cpu)
            {
                sb.Append('-').Append(end.ToString(CultureInfo.InvariantCulture));
            }

            cpu = Next(end);
        }

        return sb.ToString();
    }

    /// <summary>Formats the set as the block layer's <c>cpu_list</c> attribute does: <c>"0, 1, 2, 3"</c>.</summary>
    public string ToCommaSeparatedString() => string.Join(", ", this);

    /// <inheritdoc />
    public override string ToString() => "{" + ToCpuListString() + "}";

    /// <inheritdoc />
    public bool Equals(CpuSet? other) => other is not null && _words.AsSpan().SequenceEqual(other._words);

    /// <inheritdoc />
    public override bool Equals(object? obj) => Equals(obj as CpuSet);

    /// <inheritdoc />
    public override int GetHashCode()
    {
        var hash = default(HashCode);
        foreach (var w in _words)
        {
            hash.Add(w);
        }

        return hash.ToHashCode();
    }

    /// <inheritdoc />
    public IEnumerator<int> GetEnumerator()
    {
        for (var cpu = First; cpu >= 0; cpu = Next(cpu))
        {
            yield return cpu;
        }
    }

    IEnumerator IEnumerable.GetEnumerator() => GetEnumerator();

    private ulong Word(int i) => i < _words.Length ? _words[i] : 0;
}
