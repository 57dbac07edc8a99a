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
/// Reads one <c>actorblk.stacked-devices</c> entry: <c>name</c>, <c>type</c> (<c>linear</c> or
/// <c>striped</c>), <c>members</c> (device names, in order) and, for striped, <c>chunk</c> (a size,
/// a power of two, 64k by default). An unknown key is an error.
/// </summary>
public static class StackedDeviceConfig
{
    /// <summary>Every key an entry may have.</summary>
    public static readonly IReadOnlySet<string> Keys = new HashSet<string>(StringComparer.Ordinal) { "name", "type", "members", "chunk" };

    /// <summary>The chunk of a striped entry that names none.</summary>
    public const int DefaultChunkBytes = 64 << 10;

    /// <summary>Parses an entry.</summary>
    /// <exception cref="DeviceOptionsException">A key is unknown, or a value is missing, malformed or out of range.</exception>
    public static StackedDeviceOptions Parse(Config entry)
    {
        ArgumentNullException.ThrowIfNull(entry);
        var name = entry.HasPath("name") ? entry.GetString("name") : throw new DeviceOptionsException("(stacked)", "name", "every stacked device needs a name.");
        foreach (var key in entry.Root.GetObject().Items.Keys)
        {
            if (!Keys.Contains(key))
            {
                throw new DeviceOptionsException(name, key, $"unknown key (known: {string.Join(", ", Keys.Order())}).");
            }
        }

        var members = entry.HasPath("members") ? entry.GetStringList("members").ToArray() : [];
        if (members.Length == 0)
        {
            throw new DeviceOptionsException(name, "members", "a stacked device needs at least one member device.");
        }

        var type = entry.HasPath("type") ? entry.GetString("type") : null;
        switch (type)
        {
            case "linear":
                if (entry.HasPath("chunk"))
                {
                    throw new DeviceOptionsException(name, "chunk", "a linear device has no chunk size.");
                }

                return new StackedDeviceOptions(name, StackTable.Linear(members));
            case "striped":
                var chunk = entry.HasPath("chunk") ? DeviceConfig.ParseSize(name, entry.GetString("chunk"), "chunk") : DefaultChunkBytes;
                if (chunk is < 512 or > 1 << 30 || !BitOperations.IsPow2(chunk))
                {
                    throw new DeviceOptionsException(name, "chunk", $"{chunk} bytes is not a power of two from 512 bytes to 1 GiB.");
                }

                return new StackedDeviceOptions(name, StackTable.Striped((int)chunk, members));
            default:
                throw new DeviceOptionsException(name, "type", $"'{type}' is not linear or striped.");
        }
    }
}
