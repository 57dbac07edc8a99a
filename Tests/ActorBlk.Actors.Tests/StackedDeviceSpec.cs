using ActorBlk.Actors.Tests.Support;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers;
using ActorBlk.Hardware.Drivers.Stacking;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;
using ActorBlk.Hardware.Sysfs;
using Xunit;
using Xunit.Abstractions;

namespace ActorBlk.Actors.Tests;

/// <summary>
/// Stacked devices built on two-phase initialisation (blk-mq-semantics §10, issue 5 item 5): a
/// placeholder made bio-based by its first table, linear and striped targets over ActorBlk
/// devices, bios cut at member boundaries, usage references held per bio.
/// </summary>
public sealed class StackedDeviceSpec : Akka.TestKit.Xunit2.TestKit
{
    private const int MiB = 1 << 20;

    public StackedDeviceSpec(ITestOutputHelper output)
        : base(Configs.Simulated, output: output)
    {
    }

    private BlockLayer Layer => BlockLayer.Get(Sys);

    private Task<IBlockDevice> Member(string name, long size = 4 * MiB, DispatchMode mode = DispatchMode.Ring) => Layer.CreateDeviceAsync(new DeviceOptions
    {
        Name = name,
        Size = size,
        MemoryBacked = true,
        Dispatch = mode,
    });

    private static byte[] Pattern(int length, int seed)
    {
        var data = new byte[length];
        new Random(seed).NextBytes(data);
        return data;
    }

    [Fact]
    public async Task A_stacked_device_over_a_read_only_member_is_read_only_while_the_member_is()
    {
        // dm makes a table over a read-only device read-only; this one used to load writable and
        // fail its writes with IoError at the member (an outside audit).
        await Member("roa", 1 * MiB);
        var b = await Member("rob", 1 * MiB);
        await Layer.WriteAttributeAsync("block/rob/queue/read_only", "1");
        var dm = await Layer.CreateStackedDeviceAsync("linear-ro");
        await Layer.LoadTableAsync("linear-ro", StackTable.Linear("roa", "rob"));

        Assert.True(dm.IsReadOnly);
        var refused = await Assert.ThrowsAsync<InvalidBlockRequestException>(() => dm.WriteAsync(0, new byte[4096]).AsTask());
        Assert.Equal(InvalidRequestReason.ReadOnly, refused.Reason);
        await dm.ReadAsync(0, new byte[4096]);
        Assert.Equal("1\n", Layer.ReadAttribute("block/linear-ro/queue/read_only"));
        var writable = await Assert.ThrowsAsync<AttributeException>(() => Layer.WriteAttributeAsync("block/linear-ro/queue/read_only", "0").AsTask());
        Assert.Equal(AttributeErrno.EINVAL, writable.Errno);
        Assert.Contains("linear", writable.Message, StringComparison.Ordinal);

        // The member made writable again: so is the stack, and writes reach both members.
        await Layer.WriteAttributeAsync("block/rob/queue/read_only", "0");
        Assert.False(dm.IsReadOnly);
        var data = Pattern(8192, 9);
        await dm.WriteAsync(MiB - 4096, data);
        var back = new byte[4096];
        await b.ReadAsync(0, back);
        Assert.Equal(data[4096..], back);
    }

    [Fact]
    public async Task A_linear_device_concatenates_its_members_and_cuts_bios_at_the_boundary()
    {
        var a = await Member("la", 1 * MiB);
        var b = await Member("lb", 2 * MiB, DispatchMode.Mailbox);
        var dm = await Layer.CreateStackedDeviceAsync("linear0");
        Assert.Same(dm, await Layer.LoadTableAsync("linear0", StackTable.Linear("la", "lb")));

        Assert.Equal(QueueKind.BioBased, dm.Queue.Kind);
        Assert.Equal(QueueState.Registered, dm.Queue.State);
        Assert.Equal(DispatchMode.Bio, dm.Dispatch);
        Assert.Equal(3 * MiB, dm.Capacity);

        // 64 KiB across the 1 MiB boundary: the first 16 KiB land at the end of la, the rest at the start of lb.
        var data = Pattern(64 << 10, 1);
        await dm.WriteAsync(MiB - (16 << 10), data);
        var onA = new byte[16 << 10];
        var onB = new byte[48 << 10];
        await a.ReadAsync(MiB - (16 << 10), onA);
        await b.ReadAsync(0, onB);
        Assert.Equal(data, onA.Concat(onB).ToArray());

        var back = new byte[64 << 10];
        await dm.ReadAsync(MiB - (16 << 10), back);
        Assert.Equal(data, back);
        await dm.FlushAsync();

        // Bad input is refused as for any device, and nothing reaches the members.
        await Assert.ThrowsAsync<InvalidBlockRequestException>(async () => await dm.ReadAsync(3 * MiB, new byte[512]));
        await Assert.ThrowsAsync<InvalidBlockRequestException>(async () => await dm.ReadAsync(100, new byte[512]));
        Assert.Equal("linear", (await Layer.GetDeviceInfoAsync("linear0")).Driver);

        // I/O that arrives as a message (as from a peer node) reaches the stacked device too.
        var block = Pattern(8192, 9);
        Layer.Guardian.Tell(new BlockLayer.Io("linear0", 1, BlockOp.Write, MiB - 4096, 8192, block), TestActor);
        Assert.Equal(BlockStatus.Ok, (await ExpectMsgAsync<SoftwareContextProtocol.Completed>()).Status);
        Layer.Guardian.Tell(new BlockLayer.Io("linear0", 2, BlockOp.Read, MiB - 4096, 8192), TestActor);
        Assert.Equal(block, (await ExpectMsgAsync<SoftwareContextProtocol.Completed>()).Data);
        Layer.Guardian.Tell(new BlockLayer.Io("linear0", 3, BlockOp.Read, 100, 512), TestActor);
        Assert.Equal(InvalidRequestReason.Misaligned, (await ExpectMsgAsync<SoftwareContextProtocol.Rejected>()).Reason);

        // FUA and PREFLUSH are for writes (and flushes) only, on a bio-based device as on any:
        // refused before anything reaches a member; a FUA write across the boundary still goes.
        var fuaRead = await Assert.ThrowsAsync<InvalidBlockRequestException>(async () => await dm.ExecuteAsync(BlockOp.Read, MiB - 4096, 8192, new byte[8192], RequestFlags.Fua));
        Assert.Equal(InvalidRequestReason.InvalidFlags, fuaRead.Reason);
        Layer.Guardian.Tell(new BlockLayer.Io("linear0", 4, BlockOp.Read, MiB - 4096, 8192, Flags: RequestFlags.PreFlush), TestActor);
        Assert.Equal(InvalidRequestReason.InvalidFlags, (await ExpectMsgAsync<SoftwareContextProtocol.Rejected>()).Reason);
        Assert.Equal(BlockStatus.Ok, await dm.ExecuteAsync(BlockOp.Write, MiB - 4096, 8192, block, RequestFlags.PreFlush | RequestFlags.Fua));
    }

    [Fact]
    public async Task A_striped_device_deals_chunks_round_robin()
    {
        var stripes = new[] { await Member("s0"), await Member("s1"), await Member("s2") };
        await Layer.CreateStackedDeviceAsync("stripe0");
        var dm = await Layer.LoadTableAsync("stripe0", StackTable.Striped(8192, "s0", "s1", "s2"));
        Assert.Equal(3 * 4 * MiB, dm.Capacity);

        // 10 chunks from chunk 1: chunk c is on stripe c % 3 at (c / 3) * chunk.
        var data = Pattern(10 * 8192, 2);
        await dm.WriteAsync(8192, data);
        for (var c = 1; c <= 10; c++)
        {
            var chunk = new byte[8192];
            await stripes[c % 3].ReadAsync(c / 3 * 8192L, chunk);
            Assert.Equal(data.AsSpan((c - 1) * 8192, 8192).ToArray(), chunk);
        }

        // A bio inside one chunk goes to one stripe only.
        var small = Pattern(4096, 3);
        await dm.WriteAsync(3 * 8192 + 2048, small);
        var onS0 = new byte[4096];
        await stripes[0].ReadAsync(8192 + 2048, onS0);
        Assert.Equal(small, onS0);
    }

    [Fact]
    public async Task The_first_table_fixes_the_type_and_a_later_one_swaps_the_target_frozen()
    {
        await Member("m0");
        await Member("m1");
        await Layer.CreateStackedDeviceAsync("swap0");
        var dm = await Layer.LoadTableAsync("swap0", StackTable.Linear("m0"));
        var data = Pattern(4096, 4);
        await dm.WriteAsync(0, data);

        // A second table (dm reload): suspend, swap, resume. m1 is blank, so the same read now sees zeroes.
        await Layer.LoadTableAsync("swap0", StackTable.Linear("m1"));
        var back = new byte[4096];
        await dm.ReadAsync(0, back);
        Assert.Equal(new byte[4096], back);
        Assert.Equal(QueueKind.BioBased, dm.Queue.Kind);

        // Tables naming unknown members, the device itself, or a bad chunk are refused; nothing changes.
        await Assert.ThrowsAsync<DeviceOptionsException>(() => Layer.LoadTableAsync("swap0", StackTable.Linear("nosuch")));
        await Assert.ThrowsAsync<DeviceOptionsException>(() => Layer.LoadTableAsync("swap0", StackTable.Linear("swap0")));
        var chunk = await Assert.ThrowsAsync<DeviceOptionsException>(() => Layer.LoadTableAsync("swap0", StackTable.Striped(3000, "m0", "m1")));
        Assert.Equal("device 'swap0': option 'table': chunk of 3000 bytes is not a power of two.", chunk.Message); // "(Parameter 'chunkBytes') (Parameter 'table')" before
        await Assert.ThrowsAsync<KeyNotFoundException>(() => Layer.LoadTableAsync("nosuch", StackTable.Linear("m0")));
        await Assert.ThrowsAsync<InvalidOperationException>(() => Layer.LoadTableAsync("m0", StackTable.Linear("m1")));
        await dm.ReadAsync(0, back);
        Assert.Equal(new byte[4096], back);
    }

    [Fact]
    public async Task A_table_that_would_close_a_cycle_through_other_stacked_devices_is_refused()
    {
        // cA over n, cB over cA, then cA reloaded over cB: accepted before, and the first I/O
        // recursed through the two tables until the stack overflowed and the process died.
        await Member("cyc-n");
        await Layer.CreateStackedDeviceAsync("cycA");
        await Layer.LoadTableAsync("cycA", StackTable.Linear("cyc-n"));
        await Layer.CreateStackedDeviceAsync("cycB");
        await Layer.LoadTableAsync("cycB", StackTable.Linear("cycA"));
        await Layer.CreateStackedDeviceAsync("cycC");
        await Layer.LoadTableAsync("cycC", StackTable.Linear("cycB"));

        var refused = await Assert.ThrowsAsync<DeviceOptionsException>(() => Layer.LoadTableAsync("cycA", StackTable.Linear("cycC")));
        Assert.Contains("cycle", refused.Message, StringComparison.Ordinal);

        // Nothing changed: the old table still serves.
        Assert.True(Layer.TryGetDevice("cycA", out var a));
        await a!.ReadAsync(0, new byte[4096]);
        Assert.True(Layer.TryGetDevice("cycC", out var c));
        await c!.ReadAsync(0, new byte[4096]);
    }

    // Linear("sda", "sda") and Striped(64k, "sda", "sdb", "sda") were accepted: two extents (or
    // stripes) over the same data, so a write through one silently overwrote the other. md and dm
    // refuse a device claimed twice (bd_claim: EBUSY); so does the table, on a first load and on a
    // reload, and nothing changes. Extents of one device that do not overlap (dm's segments) stay.
    [Fact]
    public async Task A_table_naming_a_member_twice_is_refused_and_nothing_changes()
    {
        await Member("dup0");
        await Member("dup1");
        var placeholder = await Layer.CreateStackedDeviceAsync("dupA");
        foreach (var table in new[] { StackTable.Linear("dup0", "dup0"), StackTable.Striped(4096, "dup0", "dup1", "dup0"), StackTable.Mirror("dup1", "dup1") })
        {
            var refused = await Assert.ThrowsAsync<DeviceOptionsException>(() => Layer.LoadTableAsync("dupA", table));
            Assert.Equal("table", refused.Option);
            Assert.Contains(table is MirrorTable ? "member 'dup1' is listed twice" : "member 'dup0' is listed twice", refused.Message, StringComparison.Ordinal);
            Assert.Equal(QueueKind.Placeholder, placeholder.Queue.Kind);
        }

        // A reload: the old table still serves, over the data it had.
        await Layer.CreateStackedDeviceAsync("dupB");
        var dm = await Layer.LoadTableAsync("dupB", StackTable.Linear("dup0", "dup1"));
        var target = dm.Queue.BioDriver;
        var data = Pattern(4096, 7);
        await dm.WriteAsync(4 * MiB, data);
        var reload = await Assert.ThrowsAsync<DeviceOptionsException>(() => Layer.LoadTableAsync("dupB", StackTable.Striped(4096, "dup1", "dup1")));
        Assert.Equal("table", reload.Option);
        Assert.Contains("'dup1'", reload.Message, StringComparison.Ordinal);
        Assert.Same(target, dm.Queue.BioDriver);
        Assert.Equal(8 * MiB, dm.Capacity);
        var back = new byte[4096];
        await dm.ReadAsync(4 * MiB, back);
        Assert.Equal(data, back);

        // Two extents of one device that do not overlap are two halves of it, not an alias.
        await Layer.CreateStackedDeviceAsync("dupC");
        var halves = await Layer.LoadTableAsync("dupC", new LinearTable([new LinearTable.Extent("dup0", 2 * MiB, null), new LinearTable.Extent("dup0", 0, 2 * MiB)]));
        Assert.Equal(4 * MiB, halves.Capacity);
        var overlapping = await Assert.ThrowsAsync<DeviceOptionsException>(() => Layer.LoadTableAsync("dupC",
            new LinearTable([new LinearTable.Extent("dup0", 0, 2 * MiB), new LinearTable.Extent("dup0", MiB, 2 * MiB)])));
        Assert.Equal("table", overlapping.Option);
    }

    [Fact]
    public async Task Bad_names_and_sizes_are_refused_and_the_node_goes_on()
    {
        // An outside audit stopped the node with both: "a/b" as a stacked device's name became an
        // illegal actor name, and a 2^56-byte memory-backed size overflowed the store's page
        // directory; either failed the guardian, and with it the node.
        foreach (var name in new[] { "a/b", ".", "..", "x y", new string('n', 33) })
        {
            var refused = await Assert.ThrowsAsync<DeviceOptionsException>(() => Layer.CreateStackedDeviceAsync(name));
            Assert.Equal("name", refused.Option);
            await Assert.ThrowsAsync<DeviceOptionsException>(() => Layer.CreateDeviceAsync(new DeviceOptions { Name = name, Size = 1 << 20 }));
        }

        var huge = await Assert.ThrowsAsync<DeviceOptionsException>(() => Layer.CreateDeviceAsync(new DeviceOptions { Name = "huge0", Size = 1L << 56, MemoryBacked = true }));
        Assert.Equal("size", huge.Option);

        Assert.Null(Layer.FailureReason);
        await Member("after0");
        Assert.True(Layer.TryGetDevice("after0", out var after));
        await after!.WriteAsync(0, new byte[4096]);

        // A table with a missing member name, a stripe chunk larger than the members (a device of
        // no capacity), and an operation that does not exist: typed refusals, nothing submitted.
        await Layer.CreateStackedDeviceAsync("bad-t");
        Assert.Equal("table", (await Assert.ThrowsAsync<DeviceOptionsException>(() => Layer.LoadTableAsync("bad-t", StackTable.Linear("after0", null!)))).Option);
        Assert.Equal("table", (await Assert.ThrowsAsync<DeviceOptionsException>(() => Layer.LoadTableAsync("bad-t", StackTable.Striped(1 << 30, "after0")))).Option);
        var op = await Assert.ThrowsAsync<InvalidBlockRequestException>(() => after.ExecuteAsync((BlockOp)99, 0, 4096, new byte[4096]).AsTask());
        Assert.Equal(InvalidRequestReason.NotSupported, op.Reason);
    }

    [Fact]
    public async Task A_table_larger_than_a_long_is_refused_and_the_node_goes_on()
    {
        // An outside audit stopped the node with either: a linear table over two 4 EiB null
        // devices overflowed the sum of its extents (OverflowException), a striped one wrapped its
        // capacity negative; both failed the guardian. dm refuses such a table ("Target too large").
        foreach (var name in new[] { "big0", "big1" })
        {
            await Layer.CreateDeviceAsync(new DeviceOptions { Name = name, Size = 1L << 62 });
        }

        await Layer.CreateStackedDeviceAsync("too-big");
        foreach (var table in new[] { StackTable.Linear("big0", "big1"), StackTable.Striped(64 << 10, "big0", "big1") })
        {
            var refused = await Assert.ThrowsAsync<DeviceOptionsException>(() => Layer.LoadTableAsync("too-big", table));
            Assert.Equal("table", refused.Option);
            Assert.Contains($"more than {long.MaxValue} bytes", refused.Message, StringComparison.Ordinal);
        }

        Assert.Null(Layer.FailureReason);

        // One member short of the limit still loads, and its last block is addressable.
        var one = await Layer.LoadTableAsync("too-big", StackTable.Linear("big1"));
        Assert.Equal(1L << 62, one.Capacity);
        await one.ReadAsync((1L << 62) - 4096, new byte[4096]);
        var past = await Assert.ThrowsAsync<InvalidBlockRequestException>(async () => await one.ReadAsync(long.MaxValue - 4095, new byte[4096]));
        Assert.Equal(InvalidRequestReason.OutOfRange, past.Reason);
    }

    [Fact]
    public async Task Members_are_held_until_the_stacked_device_goes()
    {
        await Member("h0");
        await Member("h1");
        await Layer.CreateStackedDeviceAsync("hold0");
        await Layer.LoadTableAsync("hold0", StackTable.Striped(4096, "h0", "h1"));

        var busy = await Assert.ThrowsAsync<DeviceBusyException>(() => Layer.DestroyDeviceAsync("h1"));
        Assert.Equal("hold0", busy.Holder);
        Assert.True(Layer.TryGetDevice("h1", out _));

        Assert.Equal(0, await Layer.DestroyDeviceAsync("hold0"));
        Assert.Equal(0, await Layer.DestroyDeviceAsync("h1"));
        Assert.Equal(0, await Layer.DestroyDeviceAsync("h0"));
    }

    [Fact]
    public async Task Every_bio_holds_a_usage_reference_so_freeze_and_removal_drain_it()
    {
        // A member that does not dispatch (quiesced: its requests are built and staged, then
        // held) keeps bios in flight on the stacked device until it runs again; its timer
        // completions of 200 ms keep the later read in flight during the removal.
        var slow = await Layer.CreateDeviceAsync(new DeviceOptions
        {
            Name = "slow0", Size = 4 * MiB, IrqMode = IrqMode.Timer, CompletionNsec = 200_000_000,
        });
        await Layer.CreateStackedDeviceAsync("drain0");
        var dm = await Layer.LoadTableAsync("drain0", StackTable.Linear("slow0"));

        await slow.Queue.QuiesceAsync();
        var reads = Enumerable.Range(0, 8).Select(i => dm.ReadAsync(i * 65536L, new byte[4096]).AsTask()).ToArray();
        Assert.Equal(8, dm.Queue.Usage.Count);

        // A freeze waits for the bios, as it waits for requests.
        dm.Queue.Freeze();
        var frozen = dm.Queue.WaitFrozenAsync();
        Assert.False(frozen.IsCompleted);
        Assert.All(reads, r => Assert.False(r.IsCompleted));
        slow.Queue.Unquiesce();
        await Task.WhenAll(reads);
        await frozen;
        Assert.Equal(0, dm.Queue.Usage.Count);
        dm.Queue.Unfreeze();

        // Removal drains what is in flight; later I/O fails with Offline.
        var inflight = dm.ReadAsync(0, new byte[4096]).AsTask();
        Assert.Equal(0, await Layer.DestroyDeviceAsync("drain0"));
        // The bio gave its usage reference back before it signalled its caller (as EndRequest
        // frees the tag and the reference first, so a continuation that resubmits finds them
        // free): the read has ended, and its caller's status may follow the destroy's answer.
        await inflight.WaitAsync(TimeSpan.FromSeconds(60));
        Assert.True(inflight.IsCompletedSuccessfully);
        Assert.Equal(QueueState.Dead, dm.Queue.State);
        var late = await Assert.ThrowsAsync<BlockIoException>(async () => await dm.ReadAsync(0, new byte[4096]));
        Assert.Equal(BlockStatus.Offline, late.Status);
        Assert.Equal(0, await Layer.DestroyDeviceAsync("slow0"));
    }

    [Fact]
    public async Task Shutdown_removes_stacked_devices_before_their_members_and_unregistered_ones_too()
    {
        var m0 = await Member("z0");
        var m1 = await Member("z1");
        await Layer.CreateStackedDeviceAsync("zl");
        var linear = await Layer.LoadTableAsync("zl", StackTable.Linear("z0", "z1"));
        await Layer.CreateStackedDeviceAsync("zz");
        var nested = await Layer.LoadTableAsync("zz", StackTable.Linear("zl"));
        var allocated = await Layer.AllocateDeviceAsync(new DeviceOptions { Name = "za", Size = MiB });
        await nested.WriteAsync(0, new byte[4096]);

        await Akka.Actor.CoordinatedShutdown.Get(Sys).Run(Akka.Actor.CoordinatedShutdown.ClrExitReason.Instance);

        Assert.All(new[] { m0, m1, linear, nested, allocated }, d => Assert.Equal(QueueState.Dead, d.Queue.State));
    }

    [Fact]
    public async Task Stacked_devices_have_queue_attributes_and_no_mq_directory()
    {
        await Member("a0");
        await Layer.CreateStackedDeviceAsync("attr0");
        await Layer.LoadTableAsync("attr0", StackTable.Linear("a0"));

        Assert.Equal("1280\n", Layer.ReadAttribute("block/attr0/queue/max_sectors_kb"));
        Assert.Empty(Layer.ListAttributes("block/attr0/mq/"));
        var refused = await Assert.ThrowsAsync<Hardware.Sysfs.AttributeException>(async () => await Layer.WriteAttributeAsync("block/attr0/queue/nr_requests", "32"));
        Assert.Equal(Hardware.Sysfs.AttributeErrno.EINVAL, refused.Errno);
    }
}
