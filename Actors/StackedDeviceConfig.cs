using System.Numerics;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers.Stacking;
using Akka.Configuration;

namespace ActorBlk.Actors;

/// <summary>A stacked device of the configuration: its name and its table.</summary>
/// <param name="Name">The device name.</param>
/// <param name="Table">Its table, naming member devices created before it.</param>
public sealed record StackedDeviceOptions(string Name, StackTable Table);

/// <summary>
/// Reads one <c>actorblk.stacked-devices</c> entry: <c>name</c>, <c>type</c> (<c>linear</c>,
/// <c>striped</c> or <c>mirror</c>), <c>members</c> (device names, in order) and, for striped,
/// <c>chunk</c> (a size, a power of two, 64k by default); for mirror (2 or 3 legs) <c>region</c>
/// (bytes per write-intent bitmap bit, a power of two from 64k, 64m by default),
/// <c>sync-speed-min</c> and <c>sync-speed-max</c> (KiB/s, 1000 and 200000 by default) and
/// <c>assume-clean</c> (a new mirror's legs are equal: no first resync) and <c>start-degraded</c>
/// (a member on another node that does not appear within member-wait starts faulty instead of
/// refusing the table, <see cref="MirrorOptions.StartDegraded"/>). An unknown key is an error.
/// </summary>
public static class StackedDeviceConfig
{
    /// <summary>Every key an entry may have.</summary>
    public static readonly IReadOnlySet<string> Keys = new HashSet<string>(StringComparer.Ordinal) { "name", "type", "members", "chunk", "region", "sync-speed-min", "sync-speed-max", "assume-clean", "start-degraded" };

    /// <summary>The keys only a mirror entry may have.</summary>
    private static readonly string[] MirrorKeys = ["region", "sync-speed-min", "sync-speed-max", "assume-clean", "start-degraded"];

    /// <summary>The chunk of a striped entry that names none.</summary>
    public const int DefaultChunkBytes = 64 << 10;

    /// <summary>Parses an entry.</summary>
    /// <exception cref="DeviceOptionsException">A key is unknown, or a value is missing, malformed or out of range.</exception>
    public static StackedDeviceOptions Parse(Config entry)
    {
        ArgumentNullException.ThrowIfNull(entry);
        var items = entry.Root.GetObject().Items;
        var name = DeviceConfig.NameOf(entry, items) ?? throw new DeviceOptionsException("(stacked)", "name", "every stacked device needs a name.");
        foreach (var (key, value) in items)
        {
            if (!Keys.Contains(key))
            {
                throw new DeviceOptionsException(name, key, $"unknown key (known: {string.Join(", ", Keys.Order())}).");
            }

            // members is a list, every other key one value. Read otherwise, a list or a section is
            // null to Akka: `assume-clean = [on]` was refused as "'' is not on or off", `members =
            // disk0` as "needs at least one member" (an outside audit).
            // HOCON's null (and "null") is no value for any key (an audit: `type = null` read '',
            // `members = [a, null]` failed with a NullReferenceException).
            var why = DeviceConfig.IsNull(value) ? DeviceConfig.NullIsNoValue
                : key != "members" ? DeviceConfig.NotOneValue(value)
                : !DeviceConfig.IsUnresolved(value) && (value.IsObject() || value.IsString()) ? "a list of device names is expected ([a, b])."
                : value.IsArray() ? value.GetArray().Select((m, i) => m.IsString() && m.GetString() is not null ? null : $"member {i} is {(m.IsString() ? "null" : m.IsObject() ? "a section { ... }" : "a list [ ... ]")}, not a device name.").FirstOrDefault(w => w is not null)
                : null;

            // A control character is refused in every value, each member's included (DeviceConfig).
            why ??= key != "members" ? Hardware.ControlCharacters.Refusal(DeviceConfig.TextOf(value))
                : value.IsArray() ? value.GetArray().Select((m, i) => Hardware.ControlCharacters.Refusal(DeviceConfig.TextOf(m)) is { } r ? $"member {i}: {r}" : null).FirstOrDefault(w => w is not null)
                : null;
            if (why is not null)
            {
                throw new DeviceOptionsException(name, key, why);
            }
        }

        var members = entry.HasPath("members") ? entry.GetStringList("members").ToArray() : [];
        if (members.Length == 0)
        {
            throw new DeviceOptionsException(name, "members", "a stacked device needs at least one member device.");
        }

        var type = entry.HasPath("type") ? entry.GetString("type") : null;
        if (type != "mirror" && MirrorKeys.FirstOrDefault(entry.HasPath) is { } mirrorKey)
        {
            throw new DeviceOptionsException(name, mirrorKey, $"only a mirror has {mirrorKey}.");
        }

        switch (type)
        {
            case "linear":
                if (entry.HasPath("chunk"))
                {
                    throw new DeviceOptionsException(name, "chunk", "a linear device has no chunk size.");
                }

                CheckDistinct(name, members, "its extents would overlap on it");
                return new StackedDeviceOptions(name, StackTable.Linear(members));
            case "striped":
                var chunk = entry.HasPath("chunk") ? DeviceConfig.ParseSize(name, entry.GetString("chunk"), "chunk") : DefaultChunkBytes;
                if (chunk is < 512 or > 1 << 30 || !BitOperations.IsPow2(chunk))
                {
                    throw new DeviceOptionsException(name, "chunk", $"{chunk} bytes is not a power of two from 512 bytes to 1 GiB.");
                }

                CheckDistinct(name, members, "its stripes would share the device's data");
                return new StackedDeviceOptions(name, StackTable.Striped((int)chunk, members));
            case "mirror":
                return new StackedDeviceOptions(name, ParseMirror(name, entry, members));
            default:
                throw new DeviceOptionsException(name, "type", $"'{type}' is not linear, striped or mirror.");
        }
    }

    // A device listed twice would alias its own data (md refuses a device claimed twice: EBUSY).
    private static void CheckDistinct(string name, string[] members, string why)
    {
        if (members.GroupBy(m => m, StringComparer.Ordinal).FirstOrDefault(g => g.Count() > 1) is { } twice)
        {
            throw new DeviceOptionsException(name, "members", $"member '{twice.Key}' is listed twice: {why}, and a write to one would overwrite the other.");
        }
    }

    private static StackTable ParseMirror(string name, Config entry, string[] legs)
    {
        if (entry.HasPath("chunk"))
        {
            throw new DeviceOptionsException(name, "chunk", "a mirror has no chunk size (its bitmap has a region size).");
        }

        if (legs.Length is < 2 or > 3 || legs.Distinct().Count() != legs.Length)
        {
            throw new DeviceOptionsException(name, "members", $"a mirror needs 2 or 3 distinct legs, not [{string.Join(", ", legs)}].");
        }

        var defaults = new MirrorOptions();
        var region = entry.HasPath("region") ? DeviceConfig.ParseSize(name, entry.GetString("region"), "region") : defaults.RegionBytes;
        if (region < MirrorTarget.SyncChunkBytes || region > 1L << 40 || !BitOperations.IsPow2(region))
        {
            throw new DeviceOptionsException(name, "region", $"{region} bytes is not a power of two from 64 KiB to 1 TiB.");
        }

        var min = Speed(name, entry, "sync-speed-min", defaults.SyncSpeedMinKiB);
        var max = Speed(name, entry, "sync-speed-max", defaults.SyncSpeedMaxKiB);
        if (max < min)
        {
            throw new DeviceOptionsException(name, "sync-speed-max", $"{max} KiB/s is below sync-speed-min ({min} KiB/s).");
        }

        var clean = Switch(name, entry, "assume-clean");
        var degraded = Switch(name, entry, "start-degraded");
        return StackTable.Mirror(new MirrorOptions { RegionBytes = region, SyncSpeedMinKiB = min, SyncSpeedMaxKiB = max, AssumeClean = clean, StartDegraded = degraded }, legs);
    }

    // An on/off key, off when absent.
    private static bool Switch(string name, Config entry, string key) => entry.HasPath(key) && entry.GetString(key) switch
    {
        "on" or "true" or "yes" => true,
        "off" or "false" or "no" => false,
        var other => throw new DeviceOptionsException(name, key, $"'{other}' is not on or off."),
    };

    private static long Speed(string name, Config entry, string key, long fallback)
    {
        if (!entry.HasPath(key))
        {
            return fallback;
        }

        var text = entry.GetString(key);
        return long.TryParse(text, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var kib) && kib > 0
            ? kib
            : throw new DeviceOptionsException(name, key, $"'{text}' is not a rate in KiB/s (a whole number above 0).");
    }
}
