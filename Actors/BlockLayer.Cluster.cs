using ActorBlk.Actors.Clustering;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers.Stacking;
using Akka.Event;

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

    /// <summary>
    /// <c>actorblk.cluster.registry.tls-ca</c>: the CA that other nodes' NBD certificates are
    /// verified against when an open names none of its own (a template's <c>TlsCa</c>); null for
    /// the system trust store.
    /// </summary>
    internal string? RemoteTlsCa { get; }

    // The members of a table that live on other nodes, opened (README, "Mirrors"). A member that is
    // a device of this node is left to the guardian, which resolves it by name. A mirror that starts
    // degraded gets a missing member as a handle without a queue, connected when it appears.
    private async Task<IReadOnlyDictionary<string, ClusterBlockDevice>> OpenMembersAsync(string name, StackTable table, CancellationToken cancellationToken)
    {
        var degraded = table is MirrorTable { Options.StartDegraded: true };
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

                opened[member] = await OpenMemberAsync(name, member, degraded, cancellationToken).ConfigureAwait(false);
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

    private async Task<ClusterBlockDevice> OpenMemberAsync(string stacked, string member, bool degraded, CancellationToken cancellationToken)
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
                    var why = $"member '{member}' is not a device of this node and did not appear in the cluster's registry within {MemberWait.TotalSeconds:0.#} s: {ex.Message}";
                    return degraded
                        ? await OpenMissingMemberAsync(stacked, member, why, cancellationToken).ConfigureAwait(false)
                        : throw new DeviceOptionsException(stacked, "members", why, ex);
                }
            }
            catch (AmbiguousClusterDeviceException ex)
            {
                throw new DeviceOptionsException(stacked, "members", ex.Message);
            }
            catch (BlockDeviceOpenException ex)
            {
                var why = $"member '{member}' cannot be opened: {ex.Message}";
                return degraded
                    ? await OpenMissingMemberAsync(stacked, member, why, cancellationToken).ConfigureAwait(false)
                    : throw new DeviceOptionsException(stacked, "members", why, ex);
            }
        }
    }

    // start-degraded: the member is missing, so the mirror starts without it and re-adds it when
    // its device appears. Only a member whose node is known (name@host:port, or a plain name the
    // registry shows on exactly one other node) can be waited for; another stays refused.
    private async Task<ClusterBlockDevice> OpenMissingMemberAsync(string stacked, string member, string why, CancellationToken cancellationToken)
    {
        var id = member;
        if (!member.Contains('@', StringComparison.Ordinal))
        {
            var self = DeviceRegistryActor.NodeName(Akka.Cluster.Cluster.Get(System).SelfAddress);
            var others = ClusterDevices.Snapshot.Where(d => d.Name == member && d.Node != self).ToArray();
            if (others.Length != 1)
            {
                throw new DeviceOptionsException(stacked, "members", $"{why} (start-degraded waits only for a member whose node is known: name it name@host:port)");
            }

            id = others[0].Id;
        }

        ClusterBlockDevice handle;
        try
        {
            handle = await _opener.OpenMissingAsync(id, cancellationToken).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is ClusterDeviceNotFoundException or BlockDeviceOpenException)
        {
            // A BlockDeviceOpenException: the handle joined an open of the same device in flight,
            // whose build failed.
            throw new DeviceOptionsException(stacked, "members", $"{why} ({ex.Message})", ex);
        }

        System.Log.Warning("{0}: {1}; start-degraded: the mirror starts without it (its slot faulty) and re-adds it when it appears", stacked, why);
        return handle;
    }

    /// <summary>True when <paramref name="name"/> is this node's local queue of another node's device (not published, not exported).</summary>
    internal bool IsImported(string name) => _opener.IsImported(name);

    /// <summary>The cluster id (<c>name@host:port</c>) of the other node's device whose local queue here is <paramref name="name"/>, or null.</summary>
    internal string? ImportedId(string name) => _opener.ImportedId(name);
}
