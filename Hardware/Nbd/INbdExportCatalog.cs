using ActorBlk.Hardware.Devices;

namespace ActorBlk.Hardware.Nbd;

/// <summary>The devices an <see cref="NbdServer"/> exports, looked up at every negotiation (devices come and go).</summary>
public interface INbdExportCatalog
{
    /// <summary>The exported devices in listing order; the first is the default export (empty name).</summary>
    IReadOnlyList<IBlockDevice> Exports { get; }

    /// <summary>Finds the device exported as <paramref name="name"/>; the empty name is the default export.</summary>
    bool TryGetExport(string name, out IBlockDevice device);
}

/// <summary>A fixed list of devices, each exported under its own name.</summary>
/// <param name="devices">The devices; the first is the default export.</param>
public sealed class NbdDeviceList(IReadOnlyList<IBlockDevice> devices) : INbdExportCatalog
{
    /// <inheritdoc />
    public IReadOnlyList<IBlockDevice> Exports { get; } = devices ?? throw new ArgumentNullException(nameof(devices));

    /// <inheritdoc />
    public bool TryGetExport(string name, out IBlockDevice device)
    {
        foreach (var d in Exports)
        {
            if (name.Length == 0 || d.Name == name)
            {
                device = d;
                return true;
            }
        }

        device = null!;
        return false;
    }
}
