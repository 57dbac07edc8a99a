using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers;
using ActorBlk.Hardware.Drivers.Stacking;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;
using ActorBlk.Hardware.Topology;
using ActorBlk.Testing;
using Xunit;

namespace ActorBlk.Hardware.Tests.Drivers;

/// <summary>
/// Linear and striped targets and the bio-based queue they drive (blk-mq-semantics §10), on
/// data-plane devices without a control plane.
/// </summary>
public sealed class StackTargetSpec : IAsyncLifetime
{
    private readonly RingDevices _devices = new(2);

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync() => await _devices.DisposeAsync();

    private BlockDevice Member(string name, long size) =>
        _devices.Create(new DeviceOptions { Name = name, Size = size, MemoryBacked = true }, CpuTopology.Simulated(2));

    [Fact]
    public void Linear_maps_offsets_through_the_extents_and_cuts_at_their_ends()
    {
        var a = Member("a", 1 << 20);
        var b = Member("b", 1 << 20);
        var target = new LinearTarget([new LinearExtent(a, 4096, 8192), new LinearExtent(b, 0, 16384)]);

        Assert.Equal(24576, target.Limits.CapacityBytes);
        Assert.Equal([new StackPiece(a, 4096 + 1024, 0, 4096)], target.Map(1024, 4096));
        Assert.Equal([new StackPiece(a, 4096 + 6144, 0, 2048), new StackPiece(b, 0, 2048, 4096)], target.Map(6144, 6144));
        Assert.Equal([new StackPiece(b, 8192, 0, 512)], target.Map(16384, 512));
    }

    [Fact]
    public void Striped_deals_chunks_over_the_stripes()
    {
        var s = new[] { Member("s0", 1 << 20), Member("s1", 1 << 20), Member("s2", (1 << 20) + 4096) };
        var target = new StripedTarget(s, 4096);

        // The smallest stripe's whole chunks times three.
        Assert.Equal(3L << 20, target.Limits.CapacityBytes);
        Assert.Equal(
            [new StackPiece(s[0], 4096 + 2048, 0, 2048), new StackPiece(s[1], 4096, 2048, 4096), new StackPiece(s[2], 4096, 6144, 1024)],
            target.Map(3 * 4096 + 2048, 7168));
    }

    // A member without write-zeroes (a null device that is not memory-backed) still reports fast
    // write-zeroes, its limits' default; a linear or striped device over it said fast zeroes too,
    // though it has no write-zeroes at all (a review). Fast only when every member has it and is fast.
    [Fact]
    public void Fast_write_zeroes_needs_every_member_to_have_write_zeroes()
    {
        var zeroing = Member("z0", 1 << 20);
        var other = Member("z1", 1 << 20);
        var none = _devices.Create(new DeviceOptions { Name = "n0", Size = 1 << 20 }, CpuTopology.Simulated(2));
        Assert.Equal(0, none.Queue.Limits.MaxWriteZeroesSectors);

        StackTarget[] without = [new LinearTarget([new LinearExtent(zeroing, 0, 8192), new LinearExtent(none, 0, 8192)]), new StripedTarget([zeroing, none], 4096)];
        Assert.All(without, t => Assert.Equal((0, false), (t.Limits.MaxWriteZeroesSectors, t.Limits.FastWriteZeroes)));

        StackTarget[] with = [new LinearTarget([new LinearExtent(zeroing, 0, 8192), new LinearExtent(other, 0, 8192)]), new StripedTarget([zeroing, other], 4096)];
        Assert.All(with, t => Assert.True(t.Limits.MaxWriteZeroesSectors > 0 && t.Limits.FastWriteZeroes));
    }

    [Fact]
    public void Bad_geometry_is_refused()
    {
        var a = Member("a", 1 << 20);
        var b = Member("b", 1 << 20);
        Assert.Throws<ArgumentException>(() => new LinearTarget([]));
        Assert.Throws<ArgumentException>(() => new LinearTarget([new LinearExtent(a, 1 << 20, 512)]));
        Assert.Throws<ArgumentException>(() => new LinearTarget([new LinearExtent(a, 100, 512)]));
        Assert.Throws<ArgumentException>(() => new StripedTarget([a, b], 3000));
        Assert.Throws<ArgumentException>(() => new StripedTarget([a, b], 256));
        Assert.Throws<ArgumentException>(() => new StripedTarget([a, a], 4096));
    }

    // A bio-based queue keeps the topology it was allocated on, so it leaves the offline-CPU rule
    // (semantics §8 item 3) to its members' queues, whose maps follow hotplug: here CPU 1 was
    // offline when the stacked queue was made and is online for its member, and NOWAIT I/O for it
    // goes through. (A guard written with the rule, found in reading: it would fail Again if the
    // stacked queue applied the rule with its old topology.)
    [Fact]
    public async Task A_bio_based_queue_leaves_the_offline_cpu_rule_to_its_members()
    {
        var a = Member("a", 1 << 20);
        var queue = RequestQueue.Allocate("dm-1", CpuTopology.Simulated(2).WithOnline(1, online: false));
        queue.InitializeBioBased(new LinearTarget([new LinearExtent(a, 0, 1 << 20)]));
        queue.Register();
        await using var device = new BlockDevice(queue, d => new ValueTask(d.Queue.ShutdownAsync(TimeSpan.FromSeconds(5))));
        Assert.Equal(BlockStatus.Ok, await device.ExecuteAsync(BlockOp.Write, 0, 4096, new byte[4096], RequestFlags.NoWait, cpu: 1));
    }

    // Linux accounts a dm or md device's own I/O (bio_start_io_acct / bio_end_io_acct), so its
    // stat file and iostat show it; a stacked device's stat stayed all zeros (an audit helper's
    // report). Each bio counts once, whole, though the target cuts it into pieces on two members.
    [Fact]
    public async Task A_bio_based_queue_accounts_each_bio_once_in_its_stat()
    {
        var a = Member("a", 1 << 20);
        var b = Member("b", 1 << 20);
        var queue = RequestQueue.Allocate("dm-2", CpuTopology.Simulated(2));
        queue.InitializeBioBased(new LinearTarget([new LinearExtent(a, 0, 1 << 20), new LinearExtent(b, 0, 1 << 20)]));
        queue.Register();
        await using var device = new BlockDevice(queue, d => new ValueTask(d.Queue.ShutdownAsync(TimeSpan.FromSeconds(5))));

        await device.WriteAsync((1 << 20) - 4096, new byte[8192]);   // across the members: two pieces
        await device.ReadAsync(0, new byte[4096]);
        await device.ReadAsync((1 << 20) - 4096, new byte[8192]);

        var stat = queue.Stats.Read();
        Assert.Equal((2UL, 24UL), (stat.ReadIos, stat.ReadSectors));
        Assert.Equal((1UL, 16UL), (stat.WriteIos, stat.WriteSectors));
        Assert.Equal(0UL, stat.InFlight);

        // The members count their own pieces, as dm's underlying disks do.
        Assert.Equal(2UL, a.Queue.Stats.Read().ReadIos);
        Assert.Equal(1UL, b.Queue.Stats.Read().WriteIos);
    }

    [Fact]
    public async Task A_bio_based_queue_holds_a_usage_reference_per_bio_and_its_type_is_fixed()
    {
        var a = Member("a", 1 << 20);
        var b = Member("b", 1 << 20);
        var queue = RequestQueue.Allocate("dm-0", CpuTopology.Simulated(2));
        Assert.Equal(QueueState.Allocated, queue.State);

        var target = new LinearTarget([new LinearExtent(a, 0, 1 << 20), new LinearExtent(b, 0, 1 << 20)]);
        queue.InitializeBioBased(target);
        Assert.Throws<InvalidOperationException>(() => queue.InitializeBioBased(target));
        Assert.Throws<InvalidOperationException>(() => queue.Start(new ActorBlk.Testing.ManualRuntime()));
        queue.Register();
        Assert.Equal(QueueState.Registered, queue.State);

        var device = new BlockDevice(queue, d => new ValueTask(d.Queue.ShutdownAsync(TimeSpan.FromSeconds(5))));
        var data = new byte[8192];
        new Random(7).NextBytes(data);
        await device.WriteAsync((1 << 20) - 4096, data);
        var back = new byte[8192];
        await device.ReadAsync((1 << 20) - 4096, back);
        Assert.Equal(data, back);
        Assert.Equal(0, queue.Usage.Count);

        // A freeze keeps new bios out until it ends.
        queue.Freeze();
        await queue.WaitFrozenAsync();
        var waiting = device.ReadAsync(0, back).AsTask();
        Assert.False(waiting.IsCompleted);
        queue.Unfreeze();
        await waiting;

        await device.DisposeAsync();
        Assert.Equal(QueueState.Dead, queue.State);
        Assert.Equal(BlockStatus.Offline, (await Assert.ThrowsAsync<BlockIoException>(async () => await device.ReadAsync(0, back))).Status);
    }

    // NBD block status of a linear device asks its members' maps: a memory-backed member's pages,
    // and data for a member that cannot tell (a null device that keeps no data). An extent never
    // crosses from one table extent into the next.
    [Fact]
    public async Task Linear_reports_its_members_allocation_through_the_table()
    {
        var a = Member("a", 1 << 20);
        var b = Member("b", 1 << 20);
        var none = _devices.Create(new DeviceOptions { Name = "n0", Size = 1 << 20 }, CpuTopology.Simulated(2));
        await a.WriteAsync(8192 + 4096, new byte[4096]);
        await b.WriteAsync(16384, new byte[4096]);
        var target = new LinearTarget([new LinearExtent(a, 8192, 65536), new LinearExtent(b, 0, 65536), new LinearExtent(none, 0, 16384)]);

        Assert.Equal(
            [(0L, 4096L, false), (4096L, 4096L, true), (8192L, 73728L, false), (81920L, 4096L, true), (86016L, 45056L, false), (131072L, 16384L, true)],
            Walk(target, 147456));
        Assert.Throws<ArgumentOutOfRangeException>(() => target.TryGetExtent(147456, 512, out _, out _));
        Assert.Throws<ArgumentOutOfRangeException>(() => target.TryGetExtent(0, 147456 + 512, out _, out _));
    }

    // A member finer than the linear device: an inner linear over a memory device at an offset of
    // 512 bytes reports 512-byte aligned extents; the outer device (4 KiB blocks, from its other
    // member) reports whole 4 KiB blocks, a block partly data counting as data.
    [Fact]
    public async Task Linear_rounds_a_finer_members_extents_to_its_own_blocks()
    {
        var a = Member("a", 1 << 20);
        await a.WriteAsync(8192, new byte[4096]);
        var innerQueue = RequestQueue.Allocate("dm-3", CpuTopology.Simulated(2));
        innerQueue.InitializeBioBased(new LinearTarget([new LinearExtent(a, 512, 65024)]));
        innerQueue.Register();
        await using var inner = new BlockDevice(innerQueue, d => new ValueTask(d.Queue.ShutdownAsync(TimeSpan.FromSeconds(5))));
        var wide = _devices.Create(new DeviceOptions { Name = "w0", Size = 1 << 20, BlockSize = 4096, MemoryBacked = true }, CpuTopology.Simulated(2));
        var outer = new LinearTarget([new LinearExtent(inner, 0, 61440), new LinearExtent(wide, 0, 4096)]);
        Assert.Equal(4096, outer.Limits.LogicalBlockSize);

        // a's page [8192, 12288) is the inner device's [7680, 11776): outer blocks 1 and 2.
        Assert.Equal([(0L, 7680L, false), (7680L, 4096L, true), (11776L, 53248L, false)], Walk((IAllocationMap)innerQueue.BioDriver!, 65024));
        Assert.Equal([(0L, 4096L, false), (4096L, 8192L, true), (12288L, 53248L, false)], Walk(outer, 65536));
    }

    // NBD block status of a striped device asks the stripe under each chunk at the offset
    // dm-stripe maps it to (chunk c on stripe c mod N at chunk c div N): data written to either
    // stripe shows where the device holds it, a stripe's data extent is cut at its chunk's end (the
    // next chunk is the other stripe's), and a hole goes on across chunks, 64 at most per question.
    // Before, a striped device answered one data extent.
    [Fact]
    public async Task Striped_reports_its_stripes_allocation_chunk_by_chunk()
    {
        const int chunk = 16384;
        const long capacity = 2 << 20;
        var s0 = Member("s0", 1 << 20);
        var s1 = Member("s1", 1 << 20);
        await s0.WriteAsync(4096, new byte[4096]);           // device chunk 0: [4096, 8192)
        await s1.WriteAsync(4096, new byte[4096]);           // s1's chunk 0, device chunk 1: [20480, 24576)
        await s0.WriteAsync(28672, new byte[8192]);          // across s0's chunks 1 and 2: device chunks 2 and 4
        var target = new StripedTarget([s0, s1], chunk);

        Assert.Equal(
            [
                (0L, 4096L, false), (4096L, 4096L, true), (8192L, 12288L, false), (20480L, 4096L, true), (24576L, 20480L, false),
                (45056L, 4096L, true), (49152L, 16384L, false), (65536L, 4096L, true), (69632L, capacity - 69632, false),
            ],
            Walk(target, capacity));

        // s0's data goes on past its chunk, but the device's next chunk is s1's.
        Assert.True(target.TryGetExtent(45056, capacity - 45056, out var length, out var data));
        Assert.Equal((4096L, true), (length, data));

        // A hole from the rest of s1's chunk 0 into s0's chunk 1, one answer.
        Assert.True(target.TryGetExtent(24576, capacity - 24576, out length, out data));
        Assert.Equal((20480L, false), (length, data));

        // The hole after the last data: the rest of chunk 4 and 63 more chunks, then a new question.
        Assert.True(target.TryGetExtent(69632, capacity - 69632, out length, out data));
        Assert.Equal(((4 + StripedTarget.MaxExtentChunks) * (long)chunk - 69632, false), (length, data));
        Assert.True(target.TryGetExtent(8192, 4096, out length, out data));
        Assert.Equal((4096L, false), (length, data));
        Assert.Throws<ArgumentOutOfRangeException>(() => target.TryGetExtent(capacity, 512, out _, out _));
        Assert.Throws<ArgumentOutOfRangeException>(() => target.TryGetExtent(0, capacity + 512, out _, out _));

        // A stripe that cannot tell (a null device that keeps no data) makes its chunks data.
        var none = _devices.Create(new DeviceOptions { Name = "n0", Size = 1 << 20 }, CpuTopology.Simulated(2));
        var mixed = new StripedTarget([s1, none], 8192);
        Assert.Equal([(0L, 4096L, false), (4096L, 12288L, true), (16384L, 8192L, false), (24576L, 8192L, true)], Walk(mixed, 32768));
    }

    // A stripe finer than the striped device: an inner linear over a memory device at an offset of
    // 512 bytes (512-byte blocks) and a memory device with 4 KiB blocks, which the striped device
    // takes. The inner stripe's 512-byte aligned extents become whole 4 KiB blocks, a block partly
    // data counting as data, as a linear device rounds them.
    [Fact]
    public async Task Striped_rounds_a_finer_stripes_extents_to_its_own_blocks()
    {
        var a = Member("a", 1 << 20);
        await a.WriteAsync(8192, new byte[4096]);           // the inner device's [7680, 11776)
        var innerQueue = RequestQueue.Allocate("dm-4", CpuTopology.Simulated(2));
        innerQueue.InitializeBioBased(new LinearTarget([new LinearExtent(a, 512, 65024)]));
        innerQueue.Register();
        await using var inner = new BlockDevice(innerQueue, d => new ValueTask(d.Queue.ShutdownAsync(TimeSpan.FromSeconds(5))));
        var wide = _devices.Create(new DeviceOptions { Name = "w0", Size = 1 << 20, BlockSize = 4096, MemoryBacked = true }, CpuTopology.Simulated(2));
        await wide.WriteAsync(8192, new byte[4096]);        // wide's chunk 1, device chunk 3: [24576, 28672)
        var target = new StripedTarget([inner, wide], 8192);
        Assert.Equal((4096, 2 * 57344L), (target.Limits.LogicalBlockSize, target.Limits.CapacityBytes));

        // Inner [7680, 8192) in device chunk 0 makes block [4096, 8192) data; inner [8192, 11776),
        // its chunk 1, is device chunk 2 from 16384: one block, rounded up.
        Assert.Equal(
            [(0L, 4096L, false), (4096L, 4096L, true), (8192L, 8192L, false), (16384L, 4096L, true), (20480L, 4096L, false), (24576L, 4096L, true), (28672L, 86016L, false)],
            Walk(target, 114688));
        Assert.True(target.TryGetExtent(0, 114688, out var length, out var data));
        Assert.Equal((4096L, false), (length, data));
        Assert.True(target.TryGetExtent(16384, 114688 - 16384, out length, out data));
        Assert.Equal((4096L, true), (length, data));
    }

    private static List<(long Offset, long Length, bool Data)> Walk(IAllocationMap map, long capacity)
    {
        var extents = new List<(long, long, bool)>();
        for (long offset = 0; offset < capacity;)
        {
            Assert.True(map.TryGetExtent(offset, capacity - offset, out var length, out var data));
            Assert.InRange(length, 1, capacity - offset);
            if (extents.Count > 0 && extents[^1].Item3 == data)
            {
                extents[^1] = (extents[^1].Item1, extents[^1].Item2 + length, data);
            }
            else
            {
                extents.Add((offset, length, data));
            }

            offset += length;
        }

        return extents;
    }
}
