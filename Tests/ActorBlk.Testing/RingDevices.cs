using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Topology;

namespace ActorBlk.Testing;

/// <summary>
/// Ring-dispatch devices without a control plane for data-plane specs: one set of per-CPU
/// completion workers, and every device created disposed (drained) with it.
/// </summary>
public sealed class RingDevices : IAsyncDisposable
{
    private readonly BlockSoftIrq _softIrq;
    private readonly List<BlockDevice> _devices = [];

    /// <summary>Creates the pool with completion workers for <paramref name="cpus"/> CPUs.</summary>
    public RingDevices(int cpus) => _softIrq = new BlockSoftIrq(cpus);

    /// <summary>A registered ring device on <paramref name="topology"/>.</summary>
    public BlockDevice Create(DeviceOptions options, CpuTopology topology)
    {
        var device = DeviceBuilder.CreateRingDevice(options, topology, _softIrq);
        _devices.Add(device);
        return device;
    }

    /// <inheritdoc />
    public async ValueTask DisposeAsync()
    {
        foreach (var d in _devices)
        {
            await d.DisposeAsync().ConfigureAwait(false);
        }

        _softIrq.Dispose();
    }
}
