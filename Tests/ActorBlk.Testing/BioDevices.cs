using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Topology;

namespace ActorBlk.Testing;

/// <summary>Bio-based devices for data-plane specs, without a control plane.</summary>
public static class BioDevices
{
    /// <summary>
    /// A registered bio-based device named <paramref name="name"/> on <paramref name="driver"/>
    /// (a stacked target, a fault or cache leg), over <paramref name="cpus"/> simulated CPUs;
    /// disposing it shuts its queue down (30 s to drain).
    /// </summary>
    public static BlockDevice Create(string name, IBioDriver driver, int cpus = 2)
    {
        var queue = RequestQueue.Allocate(name, CpuTopology.Simulated(cpus));
        queue.InitializeBioBased(driver);
        queue.Register();
        return new BlockDevice(queue, d => new ValueTask(d.Queue.ShutdownAsync(TimeSpan.FromSeconds(30))));
    }
}
