using ActorBlk.Actors.Clustering;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers.Stacking;

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

    /// <summary>How long <see cref="LoadTableAsync"/> waits for a member on another node to appear in the registry (<c>actorblk.cluster.registry.member-wait</c>).</summary>
    internal TimeSpan MemberWait { get; }

    // The members of a table that live on other nodes, opened (README, "Mirrors"). A member that is
    // a device of this node is left to the guardian, which resolves it by name.
    private async Task<IReadOnlyDictionary<string, ClusterBlockDevice>> OpenMembersAsync(string name, StackTable table, CancellationToken cancellationToken)
    {
        var opened = new Dictionary<string, ClusterBlockDevice>(StringComparer.Ordinal);
        try
        {
            foreach (var member in table.MemberNames.Distinct(StringComparer.Ordinal))
            {
                var qualified = member.Contains('@', StringComparison.Ordinal);
                if ((!qualified && TryGetDevice(member, out _)) || !ClusterDevices.IsEnabled)
                {
                    continue;
                }

                opened[member] = await OpenMemberAsync(name, member, cancellationToken).ConfigureAwait(false);
            }

            return opened;
        }
        catch
        {
            foreach (var handle in opened.Values)
            {
                await handle.CloseAsync().ConfigureAwait(false);
            }

            throw;
        }
    }

    private async Task<ClusterBlockDevice> OpenMemberAsync(string stacked, string member, CancellationToken cancellationToken)
    {
        using var wait = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        wait.CancelAfter(MemberWait);
        var at = member.IndexOf('@', StringComparison.Ordinal);
        while (true)
        {
            var seen = ClusterDevices.Snapshot;
            try
            {
                return await _opener.OpenAsync(member, null, cancellationToken).ConfigureAwait(false);
            }
            catch (ClusterDeviceNotFoundException ex)
            {
                // The registry may not show it yet (this node or the owner just joined), or not its
                // NBD export yet: wait for a newer snapshot that shows it exported, never spinning on
                // the one that was just refused.
                try
                {
                    await ClusterDevices.WaitForAsync(
                        s => !ReferenceEquals(s, seen) && s.Any(d => (at >= 0 ? d.Id == member : d.Name == member) && d.NbdEndpoint.Length > 0),
                        wait.Token).ConfigureAwait(false);
                }
                catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
                {
                    throw new DeviceOptionsException(stacked, "members", $"member '{member}' is not a device of this node and did not appear in the cluster's registry within {MemberWait.TotalSeconds:0.#} s: {ex.Message}", ex);
                }
            }
            catch (AmbiguousClusterDeviceException ex)
            {
                throw new DeviceOptionsException(stacked, "members", ex.Message);
            }
            catch (BlockDeviceOpenException ex)
            {
                throw new DeviceOptionsException(stacked, "members", $"member '{member}' cannot be opened: {ex.Message}", ex);
            }
        }
    }

    /// <summary>True when <paramref name="name"/> is this node's local queue of another node's device (not published, not exported).</summary>
    internal bool IsImported(string name) => _opener.IsImported(name);
}
