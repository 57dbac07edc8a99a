using ActorBlk.Actors.Tests.Support;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Interop;
using ActorBlk.Hardware.IoUring;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;
using ActorBlk.Testing;
using Akka.Actor;
using Xunit;
using Xunit.Abstractions;

namespace ActorBlk.Actors.Tests;

/// <summary>
/// Leak measurements read process-wide counters (<see cref="NativeAllocations"/>, <see cref="IoRing.LiveRings"/>):
/// a file device created by a spec running in parallel would move them, so these specs run alone.
/// </summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class ProcessCountersCollection
{
    /// <summary>The collection's name.</summary>
    public const string Name = "process-wide counters";
}

/// <summary>
/// The queue lifecycle (blk-mq-semantics §9-§10, issue 5 items 3-4): allocate -> initialise ->
/// register -> unregister -> dead; nothing per CPU or per hardware queue runs before registration;
/// and 1,000 register/unregister cycles leave no actor, queue, tag set or native buffer behind.
/// </summary>
[Collection(ProcessCountersCollection.Name)]
public sealed class LifecycleSpec : Akka.TestKit.Xunit2.TestKit
{
    public LifecycleSpec(ITestOutputHelper output)
        : base(Configs.Simulated, output: output)
    {
    }

    private BlockLayer Layer => BlockLayer.Get(Sys);

    private static DeviceOptions Options(string name, DispatchMode mode = DispatchMode.Ring) => new()
    {
        Name = name,
        Size = 8 << 20,
        MemoryBacked = true,
        SubmitQueues = 2,
        Dispatch = mode,
    };

    [Fact]
    public async Task A_token_cancelled_before_the_call_changes_nothing_and_one_cancelled_after_it_gets_the_outcome()
    {
        // An outside audit: a cancelled create threw, yet created the device (its name taken, the
        // caller with no handle), and a cancelled destroy threw, yet destroyed it.
        using var before = new CancellationTokenSource();
        await before.CancelAsync();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => Layer.CreateDeviceAsync(Options("cx0"), before.Token));
        Assert.False(Layer.TryGetDevice("cx0", out _));
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => Layer.CreateStackedDeviceAsync("cx1", before.Token));
        Assert.False(Layer.TryGetDevice("cx1", out _));

        using var after = new CancellationTokenSource();
        var creating = Layer.CreateDeviceAsync(Options("cx2"), after.Token);
        await after.CancelAsync();
        var device = await creating;
        Assert.True(Layer.TryGetDevice("cx2", out var found));
        Assert.Same(device, found);

        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => Layer.DestroyDeviceAsync("cx2", before.Token));
        Assert.True(Layer.TryGetDevice("cx2", out _));
        using var late = new CancellationTokenSource();
        var destroying = Layer.DestroyDeviceAsync("cx2", late.Token);
        await late.CancelAsync();
        Assert.Equal(0, await destroying);
        Assert.False(Layer.TryGetDevice("cx2", out _));

        // An embedding audit: a hotplug call cancelled after it was sent threw, yet the CPU changed.
        var online = (await Layer.SetCpuOnlineAsync(0, online: true)).Online;
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => Layer.SetCpuOnlineAsync(1, online: false, before.Token));
        Assert.Equal(online, (await Layer.SetCpuOnlineAsync(0, online: true)).Online);
        using var sent = new CancellationTokenSource();
        var hotplug = Layer.SetCpuOnlineAsync(1, online: false, sent.Token);
        await sent.CancelAsync();
        var changed = await hotplug;
        Assert.NotEqual(online, changed.Online);
        Assert.Equal(changed.Online, (await Layer.SetCpuOnlineAsync(0, online: true)).Online);
        await Layer.SetCpuOnlineAsync(1, online: true);
    }

    [Fact]
    public async Task Disposing_a_stale_handle_leaves_the_newer_device_of_its_name_alone()
    {
        // An outside audit: create, destroy by name, create again, then dispose the first handle:
        // the dispose destroyed the new device (by name), and on a device already gone it threw
        // KeyNotFoundException. A handle's dispose destroys its own device only, once.
        var old = await Layer.CreateDeviceAsync(Options("st0"));
        await Layer.DestroyDeviceAsync("st0");
        var current = await Layer.CreateDeviceAsync(Options("st0"));
        await current.WriteAsync(0, new byte[4096]);

        await old.DisposeAsync();
        Assert.True(Layer.TryGetDevice("st0", out var still));
        Assert.Same(current, still);
        await current.WriteAsync(4096, new byte[4096]);

        // Disposed after a destroy by name, and twice: nothing to do either time.
        await Layer.DestroyDeviceAsync("st0");
        await current.DisposeAsync();
        await current.DisposeAsync();
        Assert.False(Layer.TryGetDevice("st0", out _));

        // Its own device, still there: the dispose destroys it.
        var own = await Layer.CreateDeviceAsync(Options("st0", DispatchMode.Mailbox));
        await own.DisposeAsync();
        Assert.False(Layer.TryGetDevice("st0", out _));
    }

    [Theory]
    [InlineData(DispatchMode.Ring)]
    [InlineData(DispatchMode.Mailbox)]
    public async Task A_flush_is_checked_like_any_other_request(DispatchMode mode)
    {
        // An outside audit: flushes skipped the checks. A polled flush was accepted and, on a
        // device with poll queues, never completed (no cookie to poll with) holding a poll tag;
        // a flush on an unregistered or a destroyed device answered Ok.
        var device = await Layer.CreateDeviceAsync(Options($"fl{(int)mode}", mode) with { WriteCache = true, IoPoll = true, PollQueues = 1 });
        foreach (var flags in new[] { RequestFlags.Polled, RequestFlags.Reserved, (RequestFlags)0x4000 })
        {
            var refused = await Assert.ThrowsAsync<InvalidBlockRequestException>(async () => await device.ExecuteAsync(BlockOp.Flush, 0, 0, default, flags));
            Assert.Equal(InvalidRequestReason.InvalidFlags, refused.Reason);
            refused = Assert.Throws<InvalidBlockRequestException>(() => device.SubmitWithEndIo(BlockOp.Flush, 0, 0, default, flags, IBlockDevice.AnyCpu, new NeverCalled()));
            Assert.Equal(InvalidRequestReason.InvalidFlags, refused.Reason);
        }

        Assert.Equal(BlockStatus.Ok, await device.ExecuteAsync(BlockOp.Flush, 0, 0, default, RequestFlags.Sync));
        await device.FlushAsync();
        Assert.All(device.Queue.HardwareContexts, h => Assert.Equal(0, h.Tags.InUse));

        // Destroyed: Offline, as a read or a write, with or without a write cache.
        var plain = await Layer.CreateDeviceAsync(Options($"fm{(int)mode}", mode));
        foreach (var gone in new[] { device, plain })
        {
            await Layer.DestroyDeviceAsync(gone.Name);
            Assert.Equal(BlockStatus.Offline, (await Assert.ThrowsAsync<BlockIoException>(async () => await gone.FlushAsync())).Status);
            Assert.Equal(BlockStatus.Offline, await gone.ExecuteAsync(BlockOp.Flush, 0, 0, default));
        }

        // Allocated, never registered: NotRegistered, as a write.
        var allocated = await Layer.AllocateDeviceAsync(Options($"fa{(int)mode}", mode));
        Assert.Equal(InvalidRequestReason.NotRegistered, (await Assert.ThrowsAsync<InvalidBlockRequestException>(async () => await allocated.FlushAsync())).Reason);
        Assert.Equal(InvalidRequestReason.NotRegistered, (await Assert.ThrowsAsync<InvalidBlockRequestException>(async () => await allocated.ExecuteAsync(BlockOp.Flush, 0, 0, default))).Reason);
        await Layer.DestroyDeviceAsync(allocated.Name);
    }

    [Theory]
    [InlineData(DispatchMode.Ring)]
    [InlineData(DispatchMode.Mailbox)]
    public async Task Fua_and_preflush_are_refused_on_anything_but_a_write_or_a_flush(DispatchMode mode)
    {
        // An outside audit: FUA and PREFLUSH were taken on reads, discards and write-zeroes and
        // ignored (the file device runs fallocate with no sync after it, so a FUA write-zeroes was
        // acknowledged before it was durable). submit_bio_noacct fails them: writes only.
        var device = await Layer.CreateDeviceAsync(Options($"fu{(int)mode}", mode) with { WriteCache = true });
        var data = new byte[4096];
        Array.Fill(data, (byte)0x5a);
        await device.WriteAsync(0, data);
        var id = 0L;
        foreach (var op in new[] { BlockOp.Read, BlockOp.Discard, BlockOp.WriteZeroes })
        {
            foreach (var flags in new[] { RequestFlags.Fua, RequestFlags.PreFlush, RequestFlags.Fua | RequestFlags.PreFlush | RequestFlags.Sync })
            {
                var buffer = op == BlockOp.Read ? new byte[4096] : default(Memory<byte>);
                var refused = await Assert.ThrowsAsync<InvalidBlockRequestException>(async () => await device.ExecuteAsync(op, 0, 4096, buffer, flags));
                Assert.Equal(InvalidRequestReason.InvalidFlags, refused.Reason);
                Assert.Equal(op, refused.Op);
                Assert.Contains("FUA and PREFLUSH apply to writes only", refused.Message, StringComparison.Ordinal);
                refused = Assert.Throws<InvalidBlockRequestException>(() => device.SubmitWithEndIo(op, 0, 4096, buffer, flags, IBlockDevice.AnyCpu, new NeverCalled()));
                Assert.Equal(InvalidRequestReason.InvalidFlags, refused.Reason);

                // The cluster's way in: the same refusal, as a Rejected with the I/O's id.
                Layer.Guardian.Tell(new BlockLayer.Io(device.Name, ++id, op, 0, 4096, Flags: flags));
                var rejected = await ExpectMsgAsync<SoftwareContextProtocol.Rejected>();
                Assert.Equal(id, rejected.Id);
                Assert.Equal(InvalidRequestReason.InvalidFlags, rejected.Reason);
            }
        }

        // Nothing was submitted: the data is still there, and no tag is held.
        var back = new byte[4096];
        await device.ReadAsync(0, back);
        Assert.Equal(data, back);

        // A write and a flush still take both.
        Assert.Equal(BlockStatus.Ok, await device.ExecuteAsync(BlockOp.Write, 4096, 4096, data, RequestFlags.Fua));
        Assert.Equal(BlockStatus.Ok, await device.ExecuteAsync(BlockOp.Write, 8192, 4096, data, RequestFlags.PreFlush | RequestFlags.Fua));
        await device.WriteAsync(12288, data, RequestFlags.PreFlush);
        Assert.Equal(BlockStatus.Ok, await device.ExecuteAsync(BlockOp.Flush, 0, 0, default, RequestFlags.Fua | RequestFlags.PreFlush));
        Layer.Guardian.Tell(new BlockLayer.Io(device.Name, ++id, BlockOp.Write, 16384, 4096, data, RequestFlags.Fua));
        Assert.Equal(new SoftwareContextProtocol.Completed(id, BlockStatus.Ok, null), await ExpectMsgAsync<SoftwareContextProtocol.Completed>());
        await device.ReadAsync(4096, back);
        Assert.Equal(data, back);

        // The cluster's write completes in an end_io call-back that sends the Completed and
        // returns; its request's tag, held over the call-back, is freed after that (CompleteHolding).
        // The read since then may have completed on another CPU's context: await the tags.
        await AwaitConditionAsync(() => Task.FromResult(device.Queue.HardwareContexts.All(h => h.Tags.InUse == 0)), TimeSpan.FromSeconds(30), TimeSpan.FromMilliseconds(10));
        Assert.All(device.Queue.HardwareContexts, h => Assert.Equal(0, h.Tags.InUse));
        await Layer.DestroyDeviceAsync(device.Name);
    }

    [Fact]
    public async Task After_the_actor_system_terminated_the_layers_calls_fail_at_once()
    {
        // An outside audit: a create after shutdown failed with AskTimeoutException after 5 s, a
        // destroy with TimeoutException after 70 s. A system of its own, so the spec's stays up.
        var system = ActorSystem.Create("gone", Configs.Simulated);
        var layer = BlockLayer.Get(system);
        var device = await layer.CreateDeviceAsync(Options("td0"));
        await system.Terminate();

        await Assert.ThrowsAsync<ObjectDisposedException>(() => layer.CreateDeviceAsync(Options("td1")).WaitAsync(TimeSpan.FromSeconds(30)));
        await Assert.ThrowsAsync<ObjectDisposedException>(() => layer.DestroyDeviceAsync("td0").WaitAsync(TimeSpan.FromSeconds(30)));
        await Assert.ThrowsAsync<ObjectDisposedException>(() => layer.GetDeviceInfoAsync("td0").WaitAsync(TimeSpan.FromSeconds(30)));
        await Assert.ThrowsAsync<ObjectDisposedException>(() => layer.SetCpuOnlineAsync(1, false).WaitAsync(TimeSpan.FromSeconds(30)));
        await device.DisposeAsync().AsTask().WaitAsync(TimeSpan.FromSeconds(30));

        // A driver of the application's own is the layer's once handed over, and a create that
        // fails disposes it: an outside driver audit found it left undisposed here, and with a
        // cancelled token below, while a create refused for its options disposed it.
        var driver = new ScriptedDriver();
        await Assert.ThrowsAsync<ObjectDisposedException>(() => layer.CreateDeviceAsync(Options("td2"), driver).WaitAsync(TimeSpan.FromSeconds(30)));
        Assert.True(driver.Disposed);
    }

    // An outside driver audit: a driver with EagerHardwareContexts whose InitHardwareContext
    // throws fails its device's registration; the create failed, but the driver the layer owns
    // was never disposed.
    [Fact]
    public async Task A_driver_whose_device_fails_while_it_is_registered_is_disposed()
    {
        var driver = new ScriptedDriver(extra: ActorBlk.Hardware.Drivers.DriverFeatures.EagerHardwareContexts) { ThrowOnInit = new InvalidOperationException("driver bug in init_hctx") };
        await Assert.ThrowsAsync<InvalidOperationException>(() => Layer.CreateDeviceAsync(Options("eager0"), driver));
        Assert.True(driver.Disposed);

        var again = await Layer.CreateDeviceAsync(Options("eager0"));
        await Layer.DestroyDeviceAsync(again.Name);
    }

    [Fact]
    public async Task A_create_on_a_driver_of_the_applications_own_cancelled_before_it_is_sent_disposes_the_driver()
    {
        var driver = new ScriptedDriver();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => Layer.CreateDeviceAsync(Options("cx0"), driver, new CancellationToken(canceled: true)));
        Assert.True(driver.Disposed);
        Assert.DoesNotContain(Layer.Devices, d => d.Name == "cx0");
    }

    [Fact]
    public async Task An_allocated_device_runs_nothing_until_it_is_registered()
    {
        var before = await SettledActorCountAsync(-1);

        var device = await Layer.AllocateDeviceAsync(Options("lc0"));
        var queue = device.Queue;
        Assert.Equal(QueueKind.MultiQueue, queue.Kind);
        Assert.Equal(QueueState.Initialized, queue.State);
        Assert.False(queue.Usage.IsPerCpu);                       // §9 item 2: atomic mode until registered
        Assert.False(queue.IsStarted);                            // no dispatch loops
        Assert.Empty(device.Attributes.List());                   // no sysfs
        Assert.DoesNotContain(Layer.Devices, d => d.Name == "lc0");
        Assert.Equal(before, ActorCount());                       // no actor at all
        var refused = await Assert.ThrowsAsync<InvalidBlockRequestException>(async () => await device.WriteAsync(0, new byte[4096]));
        Assert.Equal(InvalidRequestReason.NotRegistered, refused.Reason);
        Assert.Equal(0, queue.Usage.Count);

        await Layer.RegisterDeviceAsync("lc0");
        Assert.Equal(QueueState.Registered, queue.State);
        Assert.True(queue.Usage.IsPerCpu);
        Assert.True(queue.IsStarted);
        Assert.Contains("block/lc0/queue/nr_requests", device.Attributes.List());
        Assert.True(ActorCount() > before);
        await device.WriteAsync(0, new byte[4096]);

        await Assert.ThrowsAsync<InvalidOperationException>(() => Layer.RegisterDeviceAsync("lc0"));
        await Assert.ThrowsAsync<KeyNotFoundException>(() => Layer.RegisterDeviceAsync("nosuch"));

        Assert.Equal(0, await Layer.DestroyDeviceAsync("lc0"));
        Assert.Equal(QueueState.Dead, queue.State);
        Assert.Equal(before, await SettledActorCountAsync(before));
        var late = await Assert.ThrowsAsync<BlockIoException>(async () => await device.WriteAsync(0, new byte[4096]));
        Assert.Equal(Hardware.Requests.BlockStatus.Offline, late.Status);
        Assert.Equal(0, queue.DoubleCompletions);
    }

    [Fact]
    public async Task An_allocated_device_is_destroyed_without_ever_starting()
    {
        var before = await SettledActorCountAsync(-1);
        var device = await Layer.AllocateDeviceAsync(Options("lc1") with { SharedTags = true, TagSetName = "host0" });

        Assert.Equal(0, await Layer.DestroyDeviceAsync("lc1"));
        Assert.Equal(QueueState.Dead, device.Queue.State);
        // The shared tag set's actor is stopped with the destroy and is gone soon after it (Akka
        // stops asynchronously; a loaded run counted it and its child still there).
        Assert.Equal(before, await SettledActorCountAsync(before));

        // The name is free again, and the shared tag set went with its last queue.
        var again = await Layer.CreateDeviceAsync(Options("lc1") with { SharedTags = true, TagSetName = "host0" });
        Assert.NotSame(device.Queue.TagSet, again.Queue.TagSet);
        await Layer.DestroyDeviceAsync("lc1");
    }

    [Fact]
    public async Task A_placeholder_is_neither_bio_based_nor_multi_queue_until_its_first_table()
    {
        var device = await Layer.CreateStackedDeviceAsync("dm-0");

        Assert.Equal(QueueKind.Placeholder, device.Queue.Kind);
        Assert.Equal(QueueState.Allocated, device.Queue.State);
        Assert.Equal(Hardware.Queues.RequestQueue.DefaultNrRequests, device.Queue.NrRequests);   // §10 item 1: nr_requests = 128
        Assert.Equal(InvalidRequestReason.NotRegistered,
            (await Assert.ThrowsAsync<InvalidBlockRequestException>(async () => await device.ReadAsync(0, new byte[512]))).Reason);
        Assert.Throws<InvalidOperationException>(() => device.Queue.TagSet);
        await Assert.ThrowsAsync<InvalidOperationException>(() => Layer.RegisterDeviceAsync("dm-0"));
        Assert.Equal(0, await Layer.DestroyDeviceAsync("dm-0"));
        Assert.Equal(QueueState.Dead, device.Queue.State);
    }

    [Theory]
    [InlineData(DispatchMode.Ring)]
    [InlineData(DispatchMode.Mailbox)]
    public async Task A_thousand_register_unregister_cycles_leave_nothing_behind(DispatchMode mode)
    {
        // One cycle first, so lazily created shared things (completion workers, pools) exist.
        await CycleAsync("warm", mode);
        var actors = await SettledActorCountAsync(-1);
        var nativeBytes = NativeAllocations.LiveBytes;
        var nativeBlocks = NativeAllocations.LiveBlocks;
        var rings = IoRing.LiveRings;

        var queues = new List<WeakReference>();
        for (var i = 0; i < 1000; i++)
        {
            var (queue, tags) = await CycleAsync($"cyc{i}", mode);
            queues.Add(queue);
            queues.Add(tags);
        }

        Assert.Equal(actors, await SettledActorCountAsync(actors));
        Assert.Equal(nativeBytes, NativeAllocations.LiveBytes);
        Assert.Equal(nativeBlocks, NativeAllocations.LiveBlocks);
        Assert.Equal(rings, IoRing.LiveRings);
        Assert.Empty(Layer.Devices);
        Assert.Empty(Layer.ListAttributes("block/"));

        // Every queue and tag set (with its preallocated requests) can be collected.
        await AwaitAssertAsync(() =>
        {
            GC.Collect();
            GC.WaitForPendingFinalizers();
            GC.Collect();
            Assert.Equal(0, queues.Count(q => q.IsAlive));
        }, TimeSpan.FromSeconds(30), TimeSpan.FromMilliseconds(200));
    }

    [Fact]
    public async Task File_devices_give_back_their_rings_and_native_buffers()
    {
        using var dir = new TempDirectory();
        var path = dir.CreateFile("disk.img", 4 << 20);
        var options = new DeviceOptions { Name = "fd", Driver = "file", Path = path, FixedBuffers = 1 << 20 };
        await using (var warm = await Layer.CreateDeviceAsync(options with { Name = "fd-warm" }))
        {
            await warm.WriteAsync(0, new byte[4096]);
        }

        await SettledActorCountAsync(-1);
        var nativeBytes = NativeAllocations.LiveBytes;
        var rings = IoRing.LiveRings;
        for (var i = 0; i < 50; i++)
        {
            var device = await Layer.CreateDeviceAsync(options with { Name = $"fd{i}" });
            using (var buffer = device.AllocateBuffer(4096))
            {
                await device.WriteAsync(i * 4096L, buffer.Memory);
                await device.ReadAsync(i * 4096L, buffer.Memory);
            }

            if (i % 2 == 0)
            {
                Assert.True(NativeAllocations.LiveBytes > nativeBytes);   // the registered-buffer arena is counted
            }

            await Layer.DestroyDeviceAsync(device.Name);
        }

        Assert.Equal(nativeBytes, NativeAllocations.LiveBytes);
        Assert.Equal(rings, IoRing.LiveRings);
    }

    private async Task<(WeakReference Queue, WeakReference Tags)> CycleAsync(string name, DispatchMode mode)
    {
        var device = await Layer.CreateDeviceAsync(Options(name, mode));
        await device.WriteAsync(0, new byte[4096]);
        await device.ReadAsync(0, new byte[4096]);
        var refs = (new WeakReference(device.Queue), new WeakReference(device.Queue.TagSet));
        Assert.Equal(0, await Layer.DestroyDeviceAsync(name));
        Assert.Equal(0, device.Queue.DoubleCompletions);
        return refs;
    }

    // Actors under /user/actorblk, counted through the actor tree.
    private int ActorCount() => Count(Layer.Guardian);

    private static int Count(IActorRef actor) =>
        1 + (actor is ActorRefWithCell cell ? cell.Children.Sum(Count) : 0);

    // Stopping is asynchronous: wait until the count is `expected` (or, with -1, stops changing).
    private async Task<int> SettledActorCountAsync(int expected)
    {
        var last = -2;
        await AwaitAssertAsync(() =>
        {
            var now = ActorCount();
            var settled = expected >= 0 ? now == expected : now == last;
            last = now;
            Assert.True(settled, $"{now} actors");
        }, TimeSpan.FromSeconds(30), TimeSpan.FromMilliseconds(50));
        return last;
    }

    private sealed class NeverCalled : IBioEndIo
    {
        public void OnBioComplete(Bio bio, BlockStatus status) => throw new InvalidOperationException("a refused request never completes");
    }
}
