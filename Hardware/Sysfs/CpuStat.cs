using System.Globalization;

namespace ActorBlk.Hardware.Sysfs;

/// <summary>
/// One reading of the <c>cpu</c> line of <c>/proc/stat</c> (Documentation/filesystems/proc.rst,
/// "1.8 Miscellaneous kernel statistics in /proc/stat"): the time all the machine's CPUs spent in
/// each mode since boot, in USER_HZ ticks (jiffies). <see cref="Guest"/> and
/// <see cref="GuestNice"/> are already counted in <see cref="User"/> and <see cref="Nice"/>.
/// </summary>
/// <param name="User">Normal processes in user mode (guest time included).</param>
/// <param name="Nice">Niced processes in user mode (guest_nice time included).</param>
/// <param name="System">Processes in kernel mode.</param>
/// <param name="Idle">Idle.</param>
/// <param name="Iowait">Idle while I/O was outstanding.</param>
/// <param name="Irq">Servicing hardware interrupts.</param>
/// <param name="Softirq">Servicing softirqs.</param>
/// <param name="Steal">Stolen by the hypervisor for other guests.</param>
/// <param name="Guest">Running a virtual CPU for a guest.</param>
/// <param name="GuestNice">Running a niced guest.</param>
public readonly record struct CpuStatSample(
    ulong User, ulong Nice, ulong System, ulong Idle, ulong Iowait,
    ulong Irq, ulong Softirq, ulong Steal, ulong Guest, ulong GuestNice)
{
    /// <summary>Where the kernel publishes the figures.</summary>
    public const string ProcStat = "/proc/stat";

    /// <summary>
    /// The <c>cpu</c> line of <paramref name="path"/> as the kernel prints it, with its newline;
    /// null when the file cannot be read (a machine without <c>/proc</c>) or has no such line.
    /// </summary>
    public static string? ReadLine(string path = ProcStat)
    {
        ArgumentNullException.ThrowIfNull(path);
        try
        {
            // The cpu line is the first; the rest of the file (one line per CPU, and the
            // interrupt counts, long on a large machine) is not read.
            foreach (var line in File.ReadLines(path))
            {
                if (line.StartsWith("cpu ", StringComparison.Ordinal))
                {
                    return line + "\n";
                }
            }
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            // No /proc/stat (not Linux), or not readable: the figures are not published.
        }

        return null;
    }

    /// <summary>
    /// Parses a <c>cpu</c> line as sysstat's <c>read_stat_cpu</c> does: the fields after the name
    /// in order, those an older kernel does not print (steal before 2.6.11, guest before 2.6.24,
    /// guest_nice before 2.6.33) reading 0.
    /// </summary>
    /// <exception cref="FormatException">Not a <c>cpu</c> line, fewer than 4 fields, or a field that is not an unsigned number.</exception>
    public static CpuStatSample Parse(string line)
    {
        ArgumentNullException.ThrowIfNull(line);
        var parts = line.Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries);
        if (parts.Length < 5 || parts[0] != "cpu")
        {
            throw new FormatException($"not the cpu line of /proc/stat (cpu and at least 4 fields): '{line.Trim()}'");
        }

        var f = new ulong[10];
        for (var i = 0; i < Math.Min(10, parts.Length - 1); i++)
        {
            if (!ulong.TryParse(parts[i + 1], NumberStyles.None, CultureInfo.InvariantCulture, out f[i]))
            {
                throw new FormatException($"cpu field {i + 1} '{parts[i + 1]}' is not an unsigned number");
            }
        }

        return new CpuStatSample(f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8], f[9]);
    }
}
