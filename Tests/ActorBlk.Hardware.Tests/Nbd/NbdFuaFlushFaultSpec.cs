using System.Net;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Nbd;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;
using ActorBlk.Hardware.Topology;
using ActorBlk.Testing;
using Xunit;

namespace ActorBlk.Hardware.Tests.Nbd;

/// <summary>
/// The flush that follows a FUA trim or write zeroes is submitted from a thread-pool work item
/// (NbdRequestSlot.SubmitFlush): an exception other than the two it expected escaped that work
/// item, which ends the process (an unhandled exception on a thread-pool thread), and the slot
/// never replied.
/// </summary>
public sealed class NbdFuaFlushFaultSpec
{
    [Fact]
    public async Task A_submission_that_throws_unexpectedly_fails_its_request_and_the_connection_goes_on()
    {
        await using var devices = new RingDevices(2);
        var disk = devices.Create(new DeviceOptions { Name = "fuaflt0", Size = 1 << 20, MemoryBacked = true, WriteCache = true }, CpuTopology.Simulated(2));
        var device = new FlushThrows(disk);
        var logs = new List<string>();
        await using var server = NbdServer.Start(new NbdDeviceList([device]), new NbdServerOptions { Listen = new IPEndPoint(IPAddress.Loopback, 0) }, line =>
        {
            lock (logs)
            {
                logs.Add(line);
            }
        });
        var (client, _, _) = await RawNbdClient.OpenAsync(server.LocalEndPoint, "fuaflt0");
        await using var _client = client;

        await client.SendRequestAsync(NbdCommand.WriteZeroes, 1, 0, 8192, NbdCommandFlags.Fua);
        var reply = await client.ReadSimpleReplyAsync().WaitAsync(TimeSpan.FromSeconds(10));
        Assert.Equal(1ul, reply.Cookie);
        Assert.Equal(NbdError.Io, reply.Error);

        // A flush the client asks for is submitted by the connection's reader: the same fault
        // fails it alone (it ended the reader before, and the connection never drained).
        await client.SendRequestAsync(NbdCommand.Flush, 3, 0, 0, NbdCommandFlags.None);
        var flush = await client.ReadSimpleReplyAsync().WaitAsync(TimeSpan.FromSeconds(10));
        Assert.Equal((NbdError.Io, 3ul), (flush.Error, flush.Cookie));

        // The connection still serves.
        await client.SendRequestAsync(NbdCommand.Read, 2, 0, 4096, NbdCommandFlags.None);
        var read = await client.ReadSimpleReplyAsync(_ => 4096).WaitAsync(TimeSpan.FromSeconds(10));
        Assert.Equal((NbdError.None, 2ul), (read.Error, read.Cookie));
        lock (logs)
        {
            Assert.Contains(logs, l => l.Contains("flush", StringComparison.OrdinalIgnoreCase) && l.Contains(nameof(InvalidOperationException), StringComparison.Ordinal));
        }
    }

    // A device whose flush submission throws what no caller expects (a bug below it).
    private sealed class FlushThrows(IBlockDevice inner) : IBlockDevice
    {
        public string Name => inner.Name;
        public long Capacity => inner.Capacity;
        public int LogicalBlockSize => inner.LogicalBlockSize;
        public int MemoryAlignment => inner.MemoryAlignment;
        public bool IsReadOnly => inner.IsReadOnly;
        public DispatchMode Dispatch => inner.Dispatch;
        public RequestQueue Queue => inner.Queue;
        public ActorBlk.Hardware.Sysfs.QueueAttributes Attributes => inner.Attributes;
        public AlignedBuffer AllocateBuffer(int length) => inner.AllocateBuffer(length);
        public ValueTask ReadAsync(long offset, Memory<byte> buffer, int cpu = IBlockDevice.AnyCpu) => inner.ReadAsync(offset, buffer, cpu);
        public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, RequestFlags flags = RequestFlags.None, int cpu = IBlockDevice.AnyCpu) => inner.WriteAsync(offset, data, flags, cpu);
        public ValueTask FlushAsync(int cpu = IBlockDevice.AnyCpu) => inner.FlushAsync(cpu);
        public ValueTask DiscardAsync(long offset, long length, int cpu = IBlockDevice.AnyCpu) => inner.DiscardAsync(offset, length, cpu);
        public ValueTask WriteZeroesAsync(long offset, long length, int cpu = IBlockDevice.AnyCpu) => inner.WriteZeroesAsync(offset, length, cpu);
        public ValueTask<BlockStatus> ExecuteAsync(BlockOp op, long offset, long length, Memory<byte> buffer, RequestFlags flags = RequestFlags.None, int cpu = IBlockDevice.AnyCpu) =>
            inner.ExecuteAsync(op, offset, length, buffer, flags, cpu);

        public void SubmitWithEndIo(BlockOp op, long offset, long length, Memory<byte> buffer, RequestFlags flags, int cpu, IBioEndIo endIo)
        {
            if (op == BlockOp.Flush)
            {
                throw new InvalidOperationException("a member being removed");
            }

            inner.SubmitWithEndIo(op, offset, length, buffer, flags, cpu, endIo);
        }

        public PolledIo Submit(BlockOp op, long offset, Memory<byte> buffer, int cpu = IBlockDevice.AnyCpu) => inner.Submit(op, offset, buffer, cpu);
        public int Poll(uint cookie) => inner.Poll(cookie);
        public int Poll(in PolledIo io) => inner.Poll(in io);
        public BlockPlug Plug() => inner.Plug();
        public ValueTask DisposeAsync() => ValueTask.CompletedTask;
    }
}
