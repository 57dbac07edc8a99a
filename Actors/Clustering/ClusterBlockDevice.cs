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
/// </remarks>
public sealed class ClusterBlockDevice : IReconnectingBlockDevice
{
    private readonly RemoteDeviceTarget? _remote;
    private readonly IBlockDevice? _local;
    private readonly Func<ValueTask>? _close;
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

    /// <summary>The device as the registry published it when it was opened: its cluster id (<c>name@host:port</c>) and owner node.</summary>
    public ClusterDevice Device { get; }

    /// <summary>True when the device lives on another node and this handle drives it over NBD.</summary>
    public bool IsRemote => _remote is not null;

    /// <inheritdoc />
    public int Incarnation => _remote?.Incarnation ?? 0;

    /// <summary>
    /// Raised after a remote device's local queue was replaced by a new one connected to the
    /// owner's new incarnation (never for a device of this node).
    /// </summary>
    public event EventHandler? Reconnected
    {
        add
        {
            if (_remote is not null)
            {
                _remote.Reconnected += value;
            }
        }

        remove
        {
            if (_remote is not null)
            {
                _remote.Reconnected -= value;
            }
        }
    }

    /// <summary>True once <see cref="CloseAsync"/> ran.</summary>
    public bool IsClosed => Volatile.Read(ref _closed) != 0;

    /// <summary>The device name on this node: the device's own name, or the local queue's (<c>name-host-port</c>) for a remote device.</summary>
    public string Name => Current.Name;

    /// <inheritdoc />
    public long Capacity => Current.Capacity;

    /// <inheritdoc />
    public int LogicalBlockSize => Current.LogicalBlockSize;

    /// <inheritdoc />
    public int MemoryAlignment => Current.MemoryAlignment;

    /// <inheritdoc />
    public bool IsReadOnly => Current.IsReadOnly;

    /// <inheritdoc />
    public DispatchMode Dispatch => Current.Dispatch;

    /// <inheritdoc />
    public ActorBlk.Hardware.Queues.RequestQueue Queue => Current.Queue;

    /// <inheritdoc />
    public QueueAttributes Attributes => Current.Attributes;

    private IBlockDevice Current
    {
        get
        {
            ObjectDisposedException.ThrowIf(Volatile.Read(ref _closed) != 0, this);
            return _local ?? _remote!.Device;
        }
    }

    /// <inheritdoc />
    public AlignedBuffer AllocateBuffer(int length) => Current.AllocateBuffer(length);

    /// <inheritdoc />
    public ValueTask ReadAsync(long offset, Memory<byte> buffer, int cpu = IBlockDevice.AnyCpu) => Current.ReadAsync(offset, buffer, cpu);

    /// <inheritdoc />
    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, RequestFlags flags = RequestFlags.None, int cpu = IBlockDevice.AnyCpu) =>
        Current.WriteAsync(offset, data, flags, cpu);

    /// <inheritdoc />
    public ValueTask FlushAsync(int cpu = IBlockDevice.AnyCpu) => Current.FlushAsync(cpu);

    /// <inheritdoc />
    public ValueTask DiscardAsync(long offset, long length, int cpu = IBlockDevice.AnyCpu) => Current.DiscardAsync(offset, length, cpu);

    /// <inheritdoc />
    public ValueTask WriteZeroesAsync(long offset, long length, int cpu = IBlockDevice.AnyCpu) => Current.WriteZeroesAsync(offset, length, cpu);

    /// <inheritdoc />
    public ValueTask<BlockStatus> ExecuteAsync(BlockOp op, long offset, long length, Memory<byte> buffer, RequestFlags flags = RequestFlags.None, int cpu = IBlockDevice.AnyCpu) =>
        Current.ExecuteAsync(op, offset, length, buffer, flags, cpu);

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

        await _close().ConfigureAwait(false);
    }

    /// <summary>The same as <see cref="CloseAsync"/>.</summary>
    public ValueTask DisposeAsync() => CloseAsync();

    /// <inheritdoc />
    public override string ToString() => IsRemote ? $"{Device.Id} (remote, local queue {_remote!.Device.Name})" : Device.Id;
}

/// <summary>The local queue behind every handle of one remote device; replaced when the device reconnects to a new incarnation of its owner.</summary>
internal sealed class RemoteDeviceTarget(IBlockDevice device)
{
    private IBlockDevice _device = device;
    private int _incarnation;

    public event EventHandler? Reconnected;

    public IBlockDevice Device => Volatile.Read(ref _device);

    public int Incarnation => Volatile.Read(ref _incarnation);

    // The handles see the new queue before anyone hears of it.
    public void Replace(IBlockDevice device, object sender)
    {
        Volatile.Write(ref _device, device);
        Interlocked.Increment(ref _incarnation);
        Reconnected?.Invoke(sender, EventArgs.Empty);
    }
}
