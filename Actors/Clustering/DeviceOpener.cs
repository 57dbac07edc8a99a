using System.Collections.Concurrent;
using ActorBlk.Hardware.Devices;
using Akka.Actor;
using AkkaCluster = Akka.Cluster.Cluster;

namespace ActorBlk.Actors.Clustering;

/// <summary>
/// Resolves a device name of the cluster for <see cref="BlockLayer.OpenAsync(string, CancellationToken)"/>
/// and opens it: this node's device directly, another node's through <see cref="RemoteDeviceActor"/>.
/// </summary>
internal sealed class DeviceOpener
{
    private readonly BlockLayer _layer;
    private readonly IActorRef? _remote;

    // Local queues of remote devices (local name -> cluster id): neither published in the registry
    // nor exported over NBD, since the device is the owner's.
    private readonly ConcurrentDictionary<string, string> _imported = new(StringComparer.Ordinal);

    // Numbers each handle of another node's device, so its Close gives back its own reference.
    private long _lastHandle;

    public DeviceOpener(BlockLayer layer, TimeSpan checkInterval)
    {
        _layer = layer;
        if (layer.ClusterDevices.IsEnabled)
        {
            _remote = layer.System.ActorOf(RemoteDevices.Props(layer, _imported, checkInterval), RemoteDevices.ActorName);
        }
    }

    /// <summary>True when <paramref name="name"/> is the local queue of another node's device.</summary>
    public bool IsImported(string name) => _imported.ContainsKey(name);

    /// <summary>The cluster id of the other node's device whose local queue is <paramref name="name"/>, or null.</summary>
    public string? ImportedId(string name) => _imported.TryGetValue(name, out var id) ? id : null;

    public async Task<ClusterBlockDevice> OpenAsync(string name, DeviceOptions? template, CancellationToken cancellationToken)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(name);
        var target = Resolve(name);
        if (!IsOtherNode(target))
        {
            if (_layer.TryGetDevice(target.Name, out var local))
            {
                return new ClusterBlockDevice(target, local);
            }

            throw new ClusterDeviceNotFoundException($"no device named {target.Name} on this node ({target.Node}).");
        }

        if (_remote is null)
        {
            throw new ClusterDeviceNotFoundException($"{name} is not a device of this node, and this node is not a cluster member.");
        }

        if (target.NbdEndpoint.Length == 0)
        {
            target = await WaitForExportAsync(target, cancellationToken).ConfigureAwait(false);
        }

        var handle = Interlocked.Increment(ref _lastHandle);
        var opened = await AskOpenAsync(target.Id, handle, new RemoteDevices.Open(target, template, handle), cancellationToken).ConfigureAwait(false);
        return new ClusterBlockDevice(target, opened.Target, Closer(target.Id, handle));
    }

    /// <summary>
    /// A handle of <paramref name="id"/> (<c>name@host:port</c>, another node's) that has no queue
    /// until the registry shows the device live and exported (<see cref="ClusterBlockDevice.IsMissing"/>);
    /// it then connects and raises <see cref="ClusterBlockDevice.Reconnected"/>. A mirror started
    /// degraded holds its missing leg so.
    /// </summary>
    /// <exception cref="ClusterDeviceNotFoundException">This node is not a cluster member, or <paramref name="id"/> names no other node's device.</exception>
    public async Task<ClusterBlockDevice> OpenMissingAsync(string id, CancellationToken cancellationToken)
    {
        var at = id.IndexOf('@', StringComparison.Ordinal);
        if (_remote is null || at <= 0 || at == id.Length - 1 || id[(at + 1)..] == SelfNode)
        {
            throw new ClusterDeviceNotFoundException($"{id} does not name another node's device (name@host:port).");
        }

        var entry = new ClusterDevice(id[..at], id[(at + 1)..], 0, 0, 512, 1, false, ClusterDeviceStates.Live, string.Empty);
        var handle = Interlocked.Increment(ref _lastHandle);
        var opened = await AskOpenAsync(id, handle, new RemoteDevices.OpenMissing(entry, null, handle), cancellationToken).ConfigureAwait(false);
        return new ClusterBlockDevice(entry, opened.Target, RemoteDeviceActor.LocalName(entry), Closer(id, handle));
    }

    // An open whose ask is cancelled or times out may still be (or have been) taken by the actor,
    // which then holds a reference nobody will close: a Close of the same handle sent after it
    // (the same mailbox, in order) gives that reference back, whether the open was answered, still
    // waits or failed meanwhile (then it holds none, and the Close changes nothing).
    private async Task<RemoteDevices.Opened> AskOpenAsync(string id, long handle, object open, CancellationToken cancellationToken)
    {
        try
        {
            return await _remote!.Ask<RemoteDevices.Opened>(open, OpenTimeout, cancellationToken).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is OperationCanceledException or AskTimeoutException)
        {
            _remote!.Tell(new RemoteDevices.Close(id, handle));
            throw;
        }
    }

    private Func<ValueTask> Closer(string id, long handle)
    {
        var remote = _remote!;
        var system = _layer.System;
        return async () =>
        {
            // A node going down destroys its queues itself (and the actor may be gone already).
            if (CoordinatedShutdown.Get(system).ShutdownReason is null && !system.WhenTerminated.IsCompleted)
            {
                // The system may stop while the actor destroys the queue (or before it reads the
                // close): the queue goes with the node then, and the close ends with it rather than
                // after its whole timeout with Akka's AskTimeoutException (a cluster chaos audit).
                var closed = remote.Ask<RemoteDevices.Closed>(new RemoteDevices.Close(id, handle), CloseTimeout);
                if (await Task.WhenAny(closed, system.WhenTerminated).ConfigureAwait(false) != closed)
                {
                    _ = closed.ContinueWith(t => _ = t.Exception, CancellationToken.None, TaskContinuationOptions.OnlyOnFaulted | TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
                    return;
                }

                await closed.ConfigureAwait(false);
            }
        };
    }

    // A node publishes its devices as they register and its NBD export's address once the server
    // listens (`actorblk serve` starts it after the devices), so for a moment, seconds on a loaded
    // machine, a live device shows no export: an open then failed with "its node serves no NBD"
    // (an outside audit, 4 of 9 runs). Wait for the registry to show the export, as a mirror's
    // member on another node is waited for, up to member-wait.
    private async Task<ClusterDevice> WaitForExportAsync(ClusterDevice target, CancellationToken cancellationToken)
    {
        using var wait = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        wait.CancelAfter(_layer.MemberWait);
        try
        {
            bool Exported(ClusterDevice d) => d.Id == target.Id && d.NbdEndpoint.Length > 0;
            var snapshot = await _layer.ClusterDevices.WaitForAsync(s => s.Any(Exported), wait.Token).ConfigureAwait(false);
            return snapshot.First(Exported);
        }
        catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
        {
            throw new ClusterDeviceNotFoundException(
                $"{target.Id} has no NBD export: its node serves no NBD (actorblk.nbd.listen = off?), or did not publish one within {_layer.MemberWait.TotalSeconds:0.#} s (actorblk.cluster.registry.member-wait).");
        }
    }

    // Opening waits for the NBD connections (connect timeout) and the queue's registration.
    private TimeSpan OpenTimeout => _layer.Settings.DrainTimeout + TimeSpan.FromSeconds(30);

    // Closing the last handle destroys the queue (drain, then fail what is left, twice at most).
    private TimeSpan CloseTimeout => (2 * _layer.Settings.DrainTimeout) + TimeSpan.FromSeconds(30);

    private string? SelfNode => _layer.ClusterDevices.IsEnabled ? DeviceRegistryActor.NodeName(AkkaCluster.Get(_layer.System).SelfAddress) : null;

    private bool IsOtherNode(ClusterDevice device) => SelfNode is { } self && device.Node != self;

    // name@node names one device; a plain name must match exactly one device of the cluster, this
    // node's own devices counted even before the registry shows them.
    private ClusterDevice Resolve(string name)
    {
        var self = SelfNode;
        var snapshot = _layer.ClusterDevices.Snapshot;
        var at = name.IndexOf('@', StringComparison.Ordinal);
        if (at >= 0)
        {
            if (name[(at + 1)..] == self || (self is null && name[(at + 1)..].Length == 0))
            {
                return LocalEntry(name[..at]) ?? throw new ClusterDeviceNotFoundException($"no device {name[..at]} on node {name[(at + 1)..]} (this node).");
            }

            return ClusterDevices.Resolve(snapshot, name);
        }

        List<ClusterDevice> candidates = [.. snapshot.Where(d => d.Name == name && d.Node != self)];
        if (LocalEntry(name) is { } local)
        {
            candidates.Add(local);
        }

        return ClusterDevices.Resolve(candidates, name);
    }

    // This node's device of that name as the registry shows it (or would: the registry may lag).
    private ClusterDevice? LocalEntry(string name)
    {
        if (!_layer.TryGetDevice(name, out var device) || IsImported(name))
        {
            return null;
        }

        var self = SelfNode;
        return _layer.ClusterDevices.Snapshot.FirstOrDefault(d => d.Name == name && d.Node == self)
            ?? new ClusterDevice(name, self ?? "local", self is null ? 0 : AkkaCluster.Get(_layer.System).SelfUniqueAddress.Uid, device.Capacity,
                device.LogicalBlockSize, device.Queue.HardwareContexts.Count, device.IsReadOnly, ClusterDeviceStates.Live, string.Empty,
                device.Queue.DiskSeq);
    }
}
