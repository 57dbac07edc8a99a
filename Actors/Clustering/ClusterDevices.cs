
namespace ActorBlk.Actors.Clustering;

/// <summary>
/// The devices of the whole cluster, as this node's registry sees them
/// (<see cref="BlockLayer.ClusterDevices"/>): a snapshot, name resolution, and a way to watch
/// changes. Every node publishes its registered devices in a replicated map (Akka.DistributedData);
/// an entry changes with its device's state and disappears when the device is removed or its node
/// leaves or is downed. The view is eventually consistent: a change made on another node shows here
/// after a gossip round or two.
/// </summary>
public sealed class ClusterDevices
{
    private readonly object _gate = new();
    private ClusterDevice[] _snapshot = [];
    private string[] _unverified = [];
    private Action<IReadOnlyList<ClusterDevice>>? _watchers;

    internal ClusterDevices(bool enabled) => IsEnabled = enabled;

    // The registry's list of nodes whose entries fail the signature check.
    internal void SetUnverified(string[] nodes) => Volatile.Write(ref _unverified, nodes);

    // The registry's entries this node believes (ClusterNodeDevices.KeyOf: node and uid), devices
    // or none: a device missing from the snapshot whose owner's entry is still here was withdrawn
    // by its owner; one whose whole entry went was pruned with its node (downed, or removed).
    private HashSet<string> _entries = new(StringComparer.Ordinal);

    // Entries that said their node's block layer failed (ClusterNodeDevices.Failed), one key per
    // failed incarnation: a device gone with such a node was lost, whether the check comes while
    // the withdrawn entry stands or after it was pruned with the leaving node. The most recent
    // MaxFailedKept are kept (a node failing at every start under a supervisor adds one each time).
    private HashSet<string> _failed = new(StringComparer.Ordinal);
    private readonly Queue<string> _failedOrder = new();

    internal const int MaxFailedKept = 1024;

    // Called by the registry actor only (one writer); read by any thread.
    internal void SetEntries(HashSet<string> keys, IEnumerable<string> failed)
    {
        var known = Volatile.Read(ref _failed);
        var added = failed.Where(k => !known.Contains(k)).ToArray();
        if (added.Length > 0)
        {
            var next = new HashSet<string>(known, StringComparer.Ordinal);
            foreach (var key in added)
            {
                next.Add(key);
                _failedOrder.Enqueue(key);
            }

            while (_failedOrder.Count > MaxFailedKept)
            {
                next.Remove(_failedOrder.Dequeue());
            }

            // Before the entries: a reader that sees the new entries sees the failure too.
            Volatile.Write(ref _failed, next);
        }

        Volatile.Write(ref _entries, keys);
    }

    internal bool HasEntry(string node, long uid) => Volatile.Read(ref _entries).Contains(ClusterNodeDevices.KeyOf(node, uid));

    internal bool HasFailed(string node, long uid) => Volatile.Read(ref _failed).Contains(ClusterNodeDevices.KeyOf(node, uid));

    /// <summary>False when the actor system is not a cluster member (its provider is not <c>cluster</c>): the snapshot stays empty.</summary>
    public bool IsEnabled { get; }

    /// <summary>Every device of the cluster, this node's included, sorted by name then node.</summary>
    public IReadOnlyList<ClusterDevice> Snapshot => Volatile.Read(ref _snapshot);

    /// <summary>
    /// The nodes (<c>host:port</c>, sorted) whose registry entries this node ignores because they
    /// are not signed with its admin secret (<c>actorblk.remote.admin-secret</c>): their devices are
    /// missing from <see cref="Snapshot"/>. Not empty, this node's secret most likely differs from
    /// theirs. Always empty on a node without a secret (it believes every entry).
    /// </summary>
    public IReadOnlyList<string> UnverifiedNodes => Volatile.Read(ref _unverified);

    /// <summary>
    /// The device addressed by <paramref name="name"/>: <c>name@host:port</c> names one device of one
    /// node; a plain <c>name</c> is accepted when exactly one node has a device of that name.
    /// </summary>
    /// <exception cref="ClusterDeviceNotFoundException">No device matches.</exception>
    /// <exception cref="AmbiguousClusterDeviceException">A plain name matches devices on several nodes.</exception>
    public ClusterDevice Resolve(string name) => Resolve(Snapshot, name);

    /// <summary>
    /// Calls <paramref name="onChange"/> with the new snapshot after every change (on the registry's
    /// thread: return quickly) until the returned handle is disposed.
    /// </summary>
    public IDisposable Watch(Action<IReadOnlyList<ClusterDevice>> onChange)
    {
        ArgumentNullException.ThrowIfNull(onChange);
        lock (_gate)
        {
            _watchers += onChange;
        }

        return new Unwatch(this, onChange);
    }

    /// <summary>Completes with the first snapshot (the current one included) that satisfies <paramref name="condition"/>.</summary>
    public async Task<IReadOnlyList<ClusterDevice>> WaitForAsync(Func<IReadOnlyList<ClusterDevice>, bool> condition, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(condition);
        var done = new TaskCompletionSource<IReadOnlyList<ClusterDevice>>(TaskCreationOptions.RunContinuationsAsynchronously);
        using var watch = Watch(s =>
        {
            if (condition(s))
            {
                done.TrySetResult(s);
            }
        });
        var now = Snapshot;
        if (condition(now))
        {
            return now;
        }

        await using var registration = cancellationToken.Register(() => done.TrySetCanceled(cancellationToken)).ConfigureAwait(false);
        return await done.Task.ConfigureAwait(false);
    }

    /// <summary>
    /// The registry's entries as a node shows them (<see cref="ListClusterDevices"/>): a live
    /// device of a node in <paramref name="unreachableNodes"/> (<c>host:port</c>) reads
    /// <see cref="ClusterDeviceStates.Unreachable"/>; everything else as published.
    /// </summary>
    internal static ClusterDevice[] AsSeenFrom(IReadOnlyList<ClusterDevice> devices, IReadOnlyCollection<string> unreachableNodes)
    {
        ArgumentNullException.ThrowIfNull(devices);
        ArgumentNullException.ThrowIfNull(unreachableNodes);
        return unreachableNodes.Count == 0
            ? [.. devices]
            : [.. devices.Select(d => d.State == ClusterDeviceStates.Live && unreachableNodes.Contains(d.Node) ? d with { State = ClusterDeviceStates.Unreachable } : d)];
    }

    internal static ClusterDevice Resolve(IReadOnlyList<ClusterDevice> devices, string name)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(name);
        var at = name.IndexOf('@', StringComparison.Ordinal);
        if (at >= 0)
        {
            var match = devices.FirstOrDefault(d => string.Equals(d.Id, name, StringComparison.Ordinal));
            return match ?? throw new ClusterDeviceNotFoundException($"no device {name[..at]} on node {name[(at + 1)..]} in the cluster.");
        }

        var matches = devices.Where(d => string.Equals(d.Name, name, StringComparison.Ordinal)).ToArray();
        return matches.Length switch
        {
            1 => matches[0],
            0 => throw new ClusterDeviceNotFoundException($"no device named {name} in the cluster."),
            _ => throw new AmbiguousClusterDeviceException(
                $"{matches.Length} nodes have a device named {name}: address one as {string.Join(" or ", matches.Select(m => m.Id))}.", matches),
        };
    }

    internal void Publish(ClusterDevice[] snapshot)
    {
        Action<IReadOnlyList<ClusterDevice>>? watchers;
        lock (_gate)
        {
            Volatile.Write(ref _snapshot, snapshot);
            watchers = _watchers;
        }

        watchers?.Invoke(snapshot);
    }

    private sealed class Unwatch(ClusterDevices owner, Action<IReadOnlyList<ClusterDevice>> onChange) : IDisposable
    {
        public void Dispose()
        {
            lock (owner._gate)
            {
                owner._watchers -= onChange;
            }
        }
    }
}
