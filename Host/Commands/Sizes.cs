using System.Globalization;
using ActorBlk.Hardware.Devices;

namespace ActorBlk.Host.Commands;

/// <summary>Human-readable sizes and rates with binary units, as fio prints them.</summary>
internal static class Sizes
{
    private static readonly string[] Units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];

    public static string Format(double bytes)
    {
        var unit = 0;
        while (bytes >= 1024 && unit < Units.Length - 1)
        {
            bytes /= 1024;
            unit++;
        }

        return bytes.ToString(unit == 0 ? "0" : "0.##", CultureInfo.InvariantCulture) + Units[unit];
    }

    /// <summary>Parses fio-style sizes: "4k", "1m", "1g", "4096" (k = 1024).</summary>
    public static long Parse(string option, string text) =>
        ByteSize.TryParse(text, out var bytes) ? bytes : throw new UsageException($"option --{option}: '{text}' is not a size (e.g. 4k, 1m, 2g).");
}
