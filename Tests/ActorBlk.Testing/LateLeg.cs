using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;
using ActorBlk.Hardware.Sysfs;

namespace ActorBlk.Testing;

/// <summary>
/// A mirror leg whose device is missing until <see cref="Appear"/> hands it one, raising
/// <see cref="Reconnected"/> (as a remote leg whose node is down until it returns); handed
/// another device later, it is that leg reconnected to another device (perhaps of another size
/// or other limits).
/// </summary>
public sealed class LateLeg(string name) : IReconnectingBlockDevice
{
    private IBlockDevice? _device;
    private int _incarnation;

    public event EventHandler? Reconnected;

    public event EventHandler? Disconnected
    {
        add { }
        remove { }
    }

    public int Incarnation => Volatile.Read(ref _incarnation);

    public bool IsMissing => Volatile.Read(ref _device) is null;

    public string Name => name;

    public long Capacity => _device?.Capacity ?? 0;

    public int LogicalBlockSize => _device?.LogicalBlockSize ?? 512;

    public int MemoryAlignment => _device?.MemoryAlignment ?? 512;

    public bool IsReadOnly => _device?.IsReadOnly ?? false;

    public DispatchMode Dispatch => Device.Dispatch;

    public RequestQueue Queue => Device.Queue;

    public QueueAttributes Attributes => Device.Attributes;

    private IBlockDevice Device => Volatile.Read(ref _device) ?? throw new InvalidOperationException($"{name} is missing");

    public void Appear(IBlockDevice device)
    {
        Volatile.Write(ref _device, device);
        Interlocked.Increment(ref _incarnation);
        Reconnected?.Invoke(this, EventArgs.Empty);
    }

    public AlignedBuffer AllocateBuffer(int length) => Device.AllocateBuffer(length);

    public ValueTask ReadAsync(long offset, Memory<byte> buffer, int cpu = IBlockDevice.AnyCpu) => Device.ReadAsync(offset, buffer, cpu);

    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, RequestFlags flags = RequestFlags.None, int cpu = IBlockDevice.AnyCpu) => Device.WriteAsync(offset, data, flags, cpu);

    public ValueTask FlushAsync(int cpu = IBlockDevice.AnyCpu) => Device.FlushAsync(cpu);

    public ValueTask DiscardAsync(long offset, long length, int cpu = IBlockDevice.AnyCpu) => Device.DiscardAsync(offset, length, cpu);

    public ValueTask WriteZeroesAsync(long offset, long length, int cpu = IBlockDevice.AnyCpu) => Device.WriteZeroesAsync(offset, length, cpu);

    public ValueTask<BlockStatus> ExecuteAsync(BlockOp op, long offset, long length, Memory<byte> buffer, RequestFlags flags = RequestFlags.None, int cpu = IBlockDevice.AnyCpu) =>
        Volatile.Read(ref _device) is { } device ? device.ExecuteAsync(op, offset, length, buffer, flags, cpu) : ValueTask.FromResult(BlockStatus.Offline);

    public void SubmitWithEndIo(BlockOp op, long offset, long length, Memory<byte> buffer, RequestFlags flags, int cpu, IBioEndIo endIo) =>
        Device.SubmitWithEndIo(op, offset, length, buffer, flags, cpu, endIo);

    public PolledIo Submit(BlockOp op, long offset, Memory<byte> buffer, int cpu = IBlockDevice.AnyCpu) => Device.Submit(op, offset, buffer, cpu);

    public int Poll(uint cookie) => Device.Poll(cookie);

    public int Poll(in PolledIo io) => Device.Poll(in io);

    public BlockPlug Plug() => Device.Plug();

    public ValueTask DisposeAsync() => ValueTask.CompletedTask;
}
