using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;
using ActorBlk.Hardware.Sysfs;

namespace ActorBlk.Actors.Clustering;

/// <summary>
/// A device of the cluster opened with <see cref="BlockLayer.OpenAsync(string, CancellationToken)"/>:
/// this node's own device, or a local request queue whose driver is the NBD client connected to
/// the owner's export (README, "Cluster"). Every call goes to that queue, so tags, merging,
/// plugging, timeouts, supervision, attributes and polling are those of a local device, with the
/// same exceptions. All handles of one remote device share the queue; closing the last destroys
/// it and releases its connections.
/// </summary>
/// <remarks>
/// Close a handle with <see cref="CloseAsync"/> (or <see cref="DisposeAsync"/>, the same); after
/// that every call throws <see cref="ObjectDisposedException"/>. Closing never destroys a device of
/// this node. When the owner node is lost or destroys the device, the queue goes offline (every
/// request fails with <see cref="BlockStatus.Offline"/>); when the device is published again (its
/// node came back) a new queue connects and the same handle works again, so
/// <see cref="Queue"/> and <see cref="Attributes"/> may change over the handle's life.
/// A handle opened for a mirror leg that had not appeared (<see cref="IsMissing"/>) has no queue
/// until the device appears: its I/O fails Offline, <see cref="Queue"/> throws, and
/// <see cref="Reconnected"/> is raised once its first queue connects.
/// </remarks>
public sealed class ClusterBlockDevice : IReconnectingBlockDevice
{
    private readonly RemoteDeviceTarget? _remote;
    private readonly IBlockDevice? _local;
    private readonly Func<ValueTask>? _close;
    private readonly string? _missingName;
    private readonly List<(EventHandler Handler, bool Reconnected)> _subscribed = [];
    private int _closed;

    internal ClusterBlockDevice(ClusterDevice device, IBlockDevice local)
    {
        Device = device;
        _local = local;
    }

    internal ClusterBlockDevice(ClusterDevice device, RemoteDeviceTarget remote, Func<ValueTask> close)
    {
        Device = device;
        _remote = remote;
        _close = close;
    }

    // A handle of a device that has not appeared yet: its target gets a queue when it does.
    internal ClusterBlockDevice(ClusterDevice device, RemoteDeviceTarget remote, string missingName, Func<ValueTask> close)
        : this(device, remote, close) => _missingName = missingName;

    /// <summary>
    /// The device as the registry published it when it was opened: its cluster id
    /// (<c>name@host:port</c>) and owner node. For a handle opened while the device was missing,
    /// only the name and node are known (size 0, 512-byte blocks, no NBD endpoint).
    /// </summary>
    public ClusterDevice Device { get; }

    /// <summary>True when the device lives on another node and this handle drives it over NBD.</summary>
    public bool IsRemote => _remote is not null;

    /// <inheritdoc />
    public int Incarnation => _remote?.Incarnation ?? 0;

    /// <inheritdoc />
    public bool IsMissing => _remote is { Device: null };

    /// <summary>
    /// Raised after a remote device's local queue was replaced by a new one connected to the
    /// owner's new incarnation (never for a device of this node). Raised on the node's
    /// remote-device actor: keep handlers short; one that throws is skipped. Closing the handle
    /// detaches its handlers (the queue, shared with the node's other handles, raises on).
    /// </summary>
    public event EventHandler? Reconnected
    {
        add => Subscribe(value, reconnected: true);
        remove => Unsubscribe(value, reconnected: true);
    }

    /// <summary>
    /// Raised when a remote device's local queue goes offline because its owner node was lost or
    /// the device left the registry or moved (never for a device of this node). Raised as
    /// <see cref="Reconnected"/>: one handler that throws is skipped.
    /// </summary>
    public event EventHandler? Disconnected
    {
        add => Subscribe(value, reconnected: false);
        remove => Unsubscribe(value, reconnected: false);
    }

    /// <summary>True once <see cref="CloseAsync"/> ran.</summary>
    public bool IsClosed => Volatile.Read(ref _closed) != 0;

    /// <summary>The device name on this node: the device's own name, or the local queue's (<c>name-host-port</c>) for a remote device.</summary>
    public string Name => CurrentOrMissing?.Name ?? _missingName ?? Device.Name;

    /// <inheritdoc />
    public long Capacity => CurrentOrMissing?.Capacity ?? 0;

    /// <inheritdoc />
    public int LogicalBlockSize => CurrentOrMissing?.LogicalBlockSize ?? Device.LogicalBlockSize;

    /// <inheritdoc />
    public int MemoryAlignment => CurrentOrMissing?.MemoryAlignment ?? Device.LogicalBlockSize;

    /// <summary>
    /// True when writes are refused: the local queue's own read-only state (for a remote device, what
    /// the owner's export advertised when it connected), or, for a remote device, the owner publishing
    /// the device read-only in the cluster's registry since (its <c>queue/read_only</c> set to 1: the
    /// NBD connection's flags never change, so the local queue alone would still count it writable).
    /// </summary>
    public bool IsReadOnly => CurrentOrMissing?.IsReadOnly == true || _remote is { PublishedReadOnly: true };

    /// <inheritdoc />
    public DispatchMode Dispatch => Current.Dispatch;

    /// <inheritdoc />
    public ActorBlk.Hardware.Queues.RequestQueue Queue => Current.Queue;

    /// <inheritdoc />
    public QueueAttributes Attributes => Current.Attributes;

    private IBlockDevice Current => CurrentOrMissing ?? throw new InvalidOperationException($"{Device.Id} has not appeared in the cluster yet: this handle has no queue until it does.");

    // Null while the device is missing.
    private IBlockDevice? CurrentOrMissing
    {
        get
        {
            ObjectDisposedException.ThrowIf(Volatile.Read(ref _closed) != 0, this);
            return _local ?? _remote!.Device;
        }
    }

    private ValueTask Missing(BlockOp op, long offset, long length) =>
        ValueTask.FromException(new BlockIoException(Name, op, offset, length, BlockStatus.Offline));

    /// <inheritdoc />
    public AlignedBuffer AllocateBuffer(int length) => Current.AllocateBuffer(length);

    /// <inheritdoc />
    public ValueTask ReadAsync(long offset, Memory<byte> buffer, int cpu = IBlockDevice.AnyCpu) =>
        CurrentOrMissing is { } device ? device.ReadAsync(offset, buffer, cpu) : Missing(BlockOp.Read, offset, buffer.Length);

    /// <inheritdoc />
    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, RequestFlags flags = RequestFlags.None, int cpu = IBlockDevice.AnyCpu) =>
        CurrentOrMissing is { } device ? device.WriteAsync(offset, data, flags, cpu) : Missing(BlockOp.Write, offset, data.Length);

    /// <inheritdoc />
    public ValueTask FlushAsync(int cpu = IBlockDevice.AnyCpu) =>
        CurrentOrMissing is { } device ? device.FlushAsync(cpu) : Missing(BlockOp.Flush, 0, 0);

    /// <inheritdoc />
    public ValueTask DiscardAsync(long offset, long length, int cpu = IBlockDevice.AnyCpu) =>
        CurrentOrMissing is { } device ? device.DiscardAsync(offset, length, cpu) : Missing(BlockOp.Discard, offset, length);

    /// <inheritdoc />
    public ValueTask WriteZeroesAsync(long offset, long length, int cpu = IBlockDevice.AnyCpu) =>
        CurrentOrMissing is { } device ? device.WriteZeroesAsync(offset, length, cpu) : Missing(BlockOp.WriteZeroes, offset, length);

    /// <inheritdoc />
    public ValueTask<BlockStatus> ExecuteAsync(BlockOp op, long offset, long length, Memory<byte> buffer, RequestFlags flags = RequestFlags.None, int cpu = IBlockDevice.AnyCpu) =>
        CurrentOrMissing is { } device ? device.ExecuteAsync(op, offset, length, buffer, flags, cpu) : ValueTask.FromResult(BlockStatus.Offline);

    /// <inheritdoc />
    public void SubmitWithEndIo(BlockOp op, long offset, long length, Memory<byte> buffer, RequestFlags flags, int cpu, IBioEndIo endIo) =>
        Current.SubmitWithEndIo(op, offset, length, buffer, flags, cpu, endIo);

    /// <inheritdoc />
    public PolledIo Submit(BlockOp op, long offset, Memory<byte> buffer, int cpu = IBlockDevice.AnyCpu) => Current.Submit(op, offset, buffer, cpu);

    /// <inheritdoc />
    public int Poll(uint cookie) => Current.Poll(cookie);

    /// <inheritdoc />
    public int Poll(in PolledIo io) => Current.Poll(in io);

    /// <inheritdoc />
    public BlockPlug Plug() => Current.Plug();

    /// <summary>
    /// Closes this handle. For a remote device, the last handle's close destroys the local queue
    /// (its in-flight I/O drains first) and closes its NBD connections before this completes.
    /// A device of this node is left as it is. Idempotent.
    /// </summary>
    public async ValueTask CloseAsync()
    {
        if (Interlocked.Exchange(ref _closed, 1) != 0 || _close is null)
        {
            return;
        }

        // The target is shared by every handle of the device on this node and outlives this one:
        // a closed handle's handlers heard its events, and stayed referenced, until the last closed.
        lock (_subscribed)
        {
            foreach (var (handler, reconnected) in _subscribed)
            {
                Detach(handler, reconnected);
            }

            _subscribed.Clear();
        }

        await _close().ConfigureAwait(false);
    }

    private void Subscribe(EventHandler? handler, bool reconnected)
    {
        if (_remote is null || handler is null)
        {
            return;
        }

        lock (_subscribed)
        {
            // A closed handle hears nothing more.
            if (IsClosed)
            {
                return;
            }

            _subscribed.Add((handler, reconnected));
            if (reconnected)
            {
                _remote.Reconnected += handler;
            }
            else
            {
                _remote.Disconnected += handler;
            }
        }
    }

    private void Unsubscribe(EventHandler? handler, bool reconnected)
    {
        if (_remote is null || handler is null)
        {
            return;
        }

        lock (_subscribed)
        {
            var at = _subscribed.LastIndexOf((handler, reconnected));
            if (at >= 0)
            {
                _subscribed.RemoveAt(at);
                Detach(handler, reconnected);
            }
        }
    }

    private void Detach(EventHandler handler, bool reconnected)
    {
        if (reconnected)
        {
            _remote!.Reconnected -= handler;
        }
        else
        {
            _remote!.Disconnected -= handler;
        }
    }

    /// <summary>The same as <see cref="CloseAsync"/>.</summary>
    public ValueTask DisposeAsync() => CloseAsync();

    /// <inheritdoc />
    public override string ToString() => IsRemote ? $"{Device.Id} (remote, {(_remote!.Device is { } queue ? $"local queue {queue.Name}" : "missing")})" : Device.Id;
}

/// <summary>
/// The local queue behind every handle of one remote device; replaced when the device reconnects
/// to a new incarnation of its owner. Null while the device is missing (a mirror started degraded
/// without it): the first queue connected is a "replacement" too, raising Reconnected.
/// </summary>
internal sealed class RemoteDeviceTarget(IBlockDevice? device)
{
    private IBlockDevice? _device = device;
    private int _incarnation;
    private bool _publishedReadOnly;

    public event EventHandler? Reconnected;

    public event EventHandler? Disconnected;

    public IBlockDevice? Device => Volatile.Read(ref _device);

    public int Incarnation => Volatile.Read(ref _incarnation);

    // What the owner publishes in the registry, followed by RemoteDevices at every check: a device
    // made read-only on its node after this queue connected (a mirror's re-add refuses it then).
    public bool PublishedReadOnly
    {
        get => Volatile.Read(ref _publishedReadOnly);
        set => Volatile.Write(ref _publishedReadOnly, value);
    }

    // The handles see the new queue before anyone hears of it.
    public void Replace(IBlockDevice device, object sender)
    {
        Volatile.Write(ref _device, device);
        Interlocked.Increment(ref _incarnation);
        Raise(Reconnected, sender);
    }

    // The queue was retired (owner lost, device gone or moved): its I/O fails Offline from now on.
    public void Disconnect(object sender) => Raise(Disconnected, sender);

    // Raised by the remote-device actor, each handler apart (Listeners): one that throws (an
    // application's bug) neither restarts that actor, losing what it tracks, nor keeps the
    // handlers after it (a mirror's leg among them) from hearing.
    private static void Raise(EventHandler? handlers, object sender) =>
        Hardware.Listeners.Raise(handlers, handler => handler(sender, EventArgs.Empty));
}
