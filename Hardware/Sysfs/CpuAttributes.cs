using System.Globalization;
using ActorBlk.Hardware.Topology;

namespace ActorBlk.Hardware.Sysfs;

/// <summary>
/// The CPU part of the tree, as under <c>/sys/devices/system/cpu</c>: <c>possible</c>,
/// <c>present</c> and <c>online</c> (cpulists, read-only) and <c>cpu&lt;N&gt;/online</c> for each
/// present CPU (0 or 1; writing it is a hotplug event).
/// </summary>
public static class CpuAttributes
{
    /// <summary>The directory, relative to the tree's root.</summary>
    public const string Root = "devices/system/cpu/";

    /// <summary>True for paths under <see cref="Root"/>.</summary>
    public static bool Owns(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        return path.StartsWith(Root, StringComparison.Ordinal);
    }

    /// <summary>The paths for <paramref name="topology"/>.</summary>
    public static IEnumerable<string> List(CpuTopology topology)
    {
        ArgumentNullException.ThrowIfNull(topology);
        yield return Root + "online";
        yield return Root + "possible";
        yield return Root + "present";
        foreach (var cpu in topology.Present)
        {
            yield return Root + "cpu" + cpu.ToString(CultureInfo.InvariantCulture) + "/online";
        }
    }

    /// <summary>Reads one of the paths.</summary>
    /// <exception cref="AttributeException">ENOENT: no such path.</exception>
    public static string Read(CpuTopology topology, string path)
    {
        ArgumentNullException.ThrowIfNull(topology);
        return path switch
        {
            Root + "online" => topology.Online.ToCpuListString() + "\n",
            Root + "possible" => topology.Possible.ToCpuListString() + "\n",
            Root + "present" => topology.Present.ToCpuListString() + "\n",
            _ => (topology.IsOnline(CpuOf(topology, path)) ? "1" : "0") + "\n",
        };
    }

    /// <summary>
    /// Checks a write of <c>cpu&lt;N&gt;/online</c> and returns the event it asks for, or null for
    /// an empty value (zero bytes), which is taken and asks for nothing (<c>sysfs_kf_write</c>).
    /// </summary>
    /// <exception cref="AttributeException">ENOENT (no such path), EACCES (a read-only list, an empty value too) or EINVAL (not a boolean).</exception>
    public static (int Cpu, bool Online)? ParseWrite(CpuTopology topology, string path, string value)
    {
        ArgumentNullException.ThrowIfNull(topology);
        ArgumentNullException.ThrowIfNull(value);
        if (path is Root + "online" or Root + "possible" or Root + "present")
        {
            throw new AttributeException(path, AttributeErrno.EACCES, "the attribute is read-only");
        }

        var cpu = CpuOf(topology, path);
        if (value.Length == 0)
        {
            // sysfs_kf_write returns 0 for a write of no bytes before online_store sees it (it was EINVAL).
            return null;
        }

        // kstrtobool (online_store): only the first character counts, 1, y, t (true) or e (enabled)
        // true and 0, n, f (false) or d (disabled) false, in either case, or the first two for o/O:
        // on and off in any case. So "yes", "No\n", "OFF", "10", "true" and "disabled" are taken, as
        // the current kernel takes them (lib/kstrtox.c; e/d since commit ae5b3500856f); only "1", "y", "Y", "on" and their
        // opposites were, then t/f and e/d were still EINVAL (outside bad-input audits).
        var text = value.EndsWith('\n') ? value[..^1] : value;
        var second = text.Length > 1 ? char.ToLowerInvariant(text[1]) : '\0';
        return (text.Length > 0 ? text[0] : '\0') switch
        {
            '1' or 'y' or 'Y' or 't' or 'T' or 'e' or 'E' => (cpu, true),
            '0' or 'n' or 'N' or 'f' or 'F' or 'd' or 'D' => (cpu, false),
            'o' or 'O' when second == 'n' => (cpu, true),
            'o' or 'O' when second == 'f' => (cpu, false),
            _ => throw new AttributeException(path, AttributeErrno.EINVAL, $"'{text}' is not 0 or 1 (kstrtobool: 1, y, t, e, on, 0, n, f, d or off)"),
        };
    }

    /// <summary>True when <paramref name="path"/> (relative to the tree's root, no trailing slash) is one of the files for <paramref name="topology"/>.</summary>
    internal static bool IsFile(CpuTopology topology, string path) =>
        path is Root + "online" or Root + "possible" or Root + "present"
        || (Owns(path) && path.AsSpan(Root.Length) is var rest && rest.EndsWith("/online", StringComparison.Ordinal) && PresentCpu(topology, rest[..^"/online".Length]) >= 0);

    /// <summary>
    /// True when <paramref name="path"/> (relative to the tree's root, no trailing slash) is a
    /// directory of the CPU part: <c>devices</c>, <c>devices/system</c>, <c>devices/system/cpu</c>
    /// or <c>devices/system/cpu/cpu&lt;N&gt;</c> of a present CPU.
    /// </summary>
    internal static bool IsDirectory(CpuTopology topology, string path) =>
        (path.Length > 0 && path.Length < Root.Length && Root[path.Length] == '/' && Root.StartsWith(path, StringComparison.Ordinal))
        || (Owns(path) && PresentCpu(topology, path.AsSpan(Root.Length)) >= 0);

    private static int CpuOf(CpuTopology topology, string path)
    {
        var rest = path[Root.Length..];
        if (rest.EndsWith("/online", StringComparison.Ordinal) && PresentCpu(topology, rest.AsSpan(0, rest.Length - "/online".Length)) is >= 0 and var cpu)
        {
            return cpu;
        }

        throw new AttributeException(path, AttributeErrno.ENOENT, "no such attribute");
    }

    // The CPU a directory name (cpu<N>) stands for, or -1. Only the name the directory has: cpu1,
    // not cpu01 or cpu0001 (which int.TryParse reads as 1, so a path no listing shows was read and
    // written as CPU 1's; an outside CLI fuzzing audit), and only for a present CPU.
    private static int PresentCpu(CpuTopology topology, ReadOnlySpan<char> name) =>
        name.StartsWith("cpu", StringComparison.Ordinal) && name[3..] is var digits
        && int.TryParse(digits, NumberStyles.None, CultureInfo.InvariantCulture, out var cpu)
        && digits.SequenceEqual(cpu.ToString(CultureInfo.InvariantCulture))
        && topology.Present.Contains(cpu)
            ? cpu
            : -1;
}
