using ActorBlk.Actors.Clustering;
using ActorBlk.Hardware.Devices;

namespace ActorBlk.Actors;

// Opening devices of the whole cluster (README, "Cluster"): the resolution and the local queues of
// other nodes' devices live in Clustering/DeviceOpener.cs and Clustering/RemoteDevices.cs.
public sealed partial class BlockLayer
{
    /// <summary>
    /// Opens a device of the cluster by name: <c>name@host:port</c>, or a plain <c>name</c> when
    /// exactly one node (this one included) has a device of that name. This node's device is
    /// returned as it is; another node's is a local request queue whose driver is the NBD client
    /// connected to the owner's export (README, "Cluster"), shared by every handle of that device
    /// on this node and destroyed, with its connections, when the last handle is closed
    /// (<see cref="ClusterBlockDevice.CloseAsync"/>).
    /// </summary>
    /// <exception cref="ClusterDeviceNotFoundException">No device of the cluster matches.</exception>
    /// <exception cref="AmbiguousClusterDeviceException">A plain name matches devices on several nodes; the message lists the <c>name@host:port</c> choices.</exception>
    /// <exception cref="BlockDeviceOpenException">The owner's NBD export cannot be reached or refuses the device.</exception>
    public Task<ClusterBlockDevice> OpenAsync(string name, CancellationToken cancellationToken = default) =>
        _opener.OpenAsync(name, null, cancellationToken);

    /// <summary>
    /// <see cref="OpenAsync(string, CancellationToken)"/> with the settings of the local queue of a
    /// remote device taken from <paramref name="template"/> (hw_queue_depth, io_timeout, dispatch,
    /// completion, nomerges, rq_affinity, read_only; <c>connections</c> when above 1, else one
    /// connection per hardware queue of the owner's device). Name, driver, URI and size are the
    /// device's own. The template of the first open of a device wins while it is open.
    /// </summary>
    public Task<ClusterBlockDevice> OpenAsync(string name, DeviceOptions? template, CancellationToken cancellationToken = default) =>
        _opener.OpenAsync(name, template, cancellationToken);

    /// <summary>True when <paramref name="name"/> is this node's local queue of another node's device (not published, not exported).</summary>
    internal bool IsImported(string name) => _opener.IsImported(name);
}
