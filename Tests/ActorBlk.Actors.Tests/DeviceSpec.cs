using ActorBlk.Actors.Tests.Support;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;
using ActorBlk.Hardware.Topology;
using Akka.Actor;
using Xunit;
using Xunit.Abstractions;

namespace ActorBlk.Actors.Tests;

/// <summary>
/// Devices created through <see cref="BlockLayer"/>, end to end. The same suite runs in ring and in
/// mailbox dispatch, and holds both to the same results: data read back, statuses, completions,
/// and every tag free at the end.
/// </summary>
public abstract class DeviceSpec : Akka.TestKit.Xunit2.TestKit
{
    protected DeviceSpec(DispatchMode mode, ITestOutputHelper output)
        : base(Configs.Simulated, output: output)
    {
        Mode = mode;
    }

    protected DispatchMode Mode { get; }

    protected BlockLayer Layer => BlockLayer.Get(Sys);

    private async Task<IBlockDevice> Create(DeviceOptions? options = null)
    {
        var o = (options ?? new DeviceOptions { Name = "nullb0", Size = 64 << 20, MemoryBacked = true, SubmitQueues = 2 }) with { Dispatch = Mode };
        return await Layer.CreateDeviceAsync(o);
    }

    private static byte[] Pattern(int length, int seed)
    {
        var data = new byte[length];
        new Random(seed).NextBytes(data);
        return data;
    }

    private static void AssertQuiet(IBlockDevice device)
    {
        Assert.All(device.Queue.HardwareContexts, h => Assert.Equal(0, h.Tags.InUse));
        Assert.Equal(0, device.Queue.Usage.Count);
    }

    [Fact]
    public async Task Every_operation_reads_back_as_written()
    {
        var device = await Create();
        var data = Pattern(65536, 1);

        await device.WriteAsync(0, data);
        await device.FlushAsync();
        await device.DiscardAsync(0, 8192);
        await device.WriteZeroesAsync(16384, 4096);
        var back = new byte[65536];
        await device.ReadAsync(0, back);

        var expected = (byte[])data.Clone();
        Array.Clear(expected, 0, 8192);
        Array.Clear(expected, 16384, 4096);
        Assert.Equal(expected, back);
        Assert.Equal(Mode, device.Dispatch);
        AssertQuiet(device);
    }

    [Theory]
    [InlineData(IrqMode.None)]
    [InlineData(IrqMode.SoftIrq)]
    [InlineData(IrqMode.Timer)]
    public async Task Every_irq_mode_completes_with_correct_data(IrqMode irqmode)
    {
        var device = await Create(new DeviceOptions { Name = "irq", Size = 8 << 20, MemoryBacked = true, IrqMode = irqmode, SubmitQueues = 2 });
        var data = Pattern(8192, 2);

        await device.WriteAsync(8192, data, cpu: 3);
        var back = new byte[8192];
        await device.ReadAsync(8192, back, cpu: 0);

        Assert.Equal(data, back);
        AssertQuiet(device);
    }

    [Fact]
    public async Task Concurrent_submitters_on_every_cpu_each_read_back_their_data()
    {
        var device = await Create(new DeviceOptions { Name = "busy", Size = 32 << 20, MemoryBacked = true, SubmitQueues = 2, HwQueueDepth = 8 });
        const int perWorker = 100;

        await Task.WhenAll(Enumerable.Range(0, 4).Select(w => Task.Run(async () =>
        {
            for (var i = 0; i < perWorker; i++)
            {
                var block = (w * perWorker) + i;
                var data = Pattern(4096, block);
                await device.WriteAsync(block * 4096L, data, cpu: (w + i) % 4);
                var back = new byte[4096];
                await device.ReadAsync(block * 4096L, back, cpu: (w + (2 * i)) % 4);
                Assert.Equal(data, back);
            }
        })));

        Assert.Equal(800, device.Queue.SoftwareContexts.Sum(c => c.CompletedSync + c.CompletedAsync));
        AssertQuiet(device);
    }

    [Theory]
    [InlineData(100L, 512, InvalidRequestReason.Misaligned)]
    [InlineData(0L, 0, InvalidRequestReason.ZeroLength)]
    [InlineData(-512L, 512, InvalidRequestReason.OutOfRange)]
    [InlineData(64L << 20, 4096, InvalidRequestReason.OutOfRange)]
    public async Task Bad_input_is_a_typed_error_and_changes_nothing(long offset, int length, InvalidRequestReason reason)
    {
        var device = await Create();

        var ex = await Assert.ThrowsAsync<InvalidBlockRequestException>(() => device.WriteAsync(offset, new byte[length]).AsTask());

        Assert.Equal(reason, ex.Reason);
        Assert.Equal(0, device.Queue.HardwareContexts.Sum(h => h.QueuedCount));
    }

    [Fact]
    public async Task Writes_to_a_read_only_device_are_refused()
    {
        var device = await Create(new DeviceOptions { Name = "ro", Size = 1 << 20, ReadOnly = true });

        var ex = await Assert.ThrowsAsync<InvalidBlockRequestException>(() => device.WriteAsync(0, new byte[512]).AsTask());

        Assert.Equal(InvalidRequestReason.ReadOnly, ex.Reason);
    }

    [Fact]
    public async Task Adjacent_bios_staged_on_one_context_merge_into_one_request()
    {
        var device = await Create(new DeviceOptions { Name = "merge", Size = 1 << 20, MemoryBacked = true });
        var hctx = device.Queue.HardwareContexts[0];
        await device.Queue.QuiesceAsync();

        var writes = new List<Task> { device.WriteAsync(0, Pattern(4096, 10), cpu: 1).AsTask() };
        await AwaitConditionAsync(() => Task.FromResult(hctx.PendingCount == 1), null, TimeSpan.FromMilliseconds(10));
        for (var i = 1; i < 4; i++)
        {
            writes.Add(device.WriteAsync(i * 4096L, Pattern(4096, 10 + i), cpu: 1).AsTask());
        }

        await AwaitConditionAsync(() => Task.FromResult(device.Queue.SoftwareContexts[1].Merged == 3), null, TimeSpan.FromMilliseconds(10));
        device.Queue.Unquiesce();
        await Task.WhenAll(writes);

        Assert.Equal(1, hctx.QueuedCount);
        var back = new byte[16384];
        await device.ReadAsync(0, back);
        Assert.Equal(Enumerable.Range(0, 4).SelectMany(i => Pattern(4096, 10 + i)), back);
        AssertQuiet(device);
    }

    [Fact]
    public async Task Heavy_merging_traffic_leaves_no_reference_behind()
    {
        // Many submitters over a small region: bios keep merging into requests that complete on
        // other threads at once. A merged bio must never be touched after it was handed over, or a
        // reused bio double-counts its queue reference and the drain below never finishes.
        var device = await Create(new DeviceOptions { Name = "churn", Size = 1 << 20, IrqMode = IrqMode.None });

        // Whether the churn below merges depends on timing, so one merge is made certain first:
        // two adjacent reads staged on one context of a quiesced queue (blk-mq-semantics §3.2).
        var hctx = device.Queue.HardwareContexts[0];
        await device.Queue.QuiesceAsync();
        var first = device.ReadAsync(0, new byte[4096], cpu: 1).AsTask();
        await AwaitConditionAsync(() => Task.FromResult(hctx.PendingCount == 1), null, TimeSpan.FromMilliseconds(10));
        var second = device.ReadAsync(4096, new byte[4096], cpu: 1).AsTask();
        await AwaitConditionAsync(() => Task.FromResult(device.Queue.SoftwareContexts[1].Merged == 1), null, TimeSpan.FromMilliseconds(10));
        device.Queue.Unquiesce();
        await Task.WhenAll(first, second);

        await Task.WhenAll(Enumerable.Range(0, 16).Select(w => Task.Run(async () =>
        {
            var buffer = new byte[4096];
            var rng = new Random(w);
            for (var i = 0; i < 3000; i++)
            {
                Assert.Equal(BlockStatus.Ok, await device.ExecuteAsync(BlockOp.Read, rng.Next(0, 64) * 4096L, 4096, buffer));
            }
        })));

        Assert.True(device.Queue.SoftwareContexts.Sum(c => c.Merged) > 0);
        AssertQuiet(device);
        Assert.Equal(0, await Layer.DestroyDeviceAsync("churn"));
    }

    [Fact]
    public async Task A_plug_batches_requests_until_disposed()
    {
        var device = await Create(new DeviceOptions { Name = "plug", Size = 1 << 20, MemoryBacked = true, NoMerges = MergePolicy.Off });
        var writes = new List<ValueTask>();
        using (var plug = device.Plug())
        {
            for (var i = 0; i < 5; i++)
            {
                writes.Add(device.WriteAsync(i * 8192L, Pattern(512, i), cpu: 0));
            }

            // In mailbox dispatch the software-context actors build the requests, so they reach the plug asynchronously.
            await AwaitConditionAsync(() => Task.FromResult(plug.Count == 5), null, TimeSpan.FromMilliseconds(10));
            Assert.All(writes, w => Assert.False(w.IsCompleted));
        }

        foreach (var write in writes)
        {
            await write;
        }

        AssertQuiet(device);
    }

    [Fact]
    public async Task Completions_with_rq_affinity_2_run_on_the_submitting_cpu()
    {
        var device = (BlockDevice)await Create(new DeviceOptions { Name = "aff", Size = 1 << 20, RqAffinity = CompletionAffinity.SubmittingCpu });
        var recorder = new CpuRecorder();

        device.SubmitWithEndIo(BlockOp.Read, 0, 512, new byte[512], RequestFlags.None, cpu: 3, recorder);

        Assert.Equal(3, await recorder.Cpu.Task);
    }

    [Fact]
    public async Task Io_sent_by_name_to_the_guardian_completes_with_its_data()
    {
        await Create();
        var data = Pattern(4096, 5);

        Layer.Guardian.Tell(new BlockLayer.Io("nullb0", 1, BlockOp.Write, 4096, 4096, data));
        Assert.Equal(new SoftwareContextProtocol.Completed(1, BlockStatus.Ok, null), await ExpectMsgAsync<SoftwareContextProtocol.Completed>());
        Layer.Guardian.Tell(new BlockLayer.Io("nullb0", 2, BlockOp.Read, 4096, 4096, Cpu: 2));
        var read = await ExpectMsgAsync<SoftwareContextProtocol.Completed>();

        Assert.Equal(2, read.Id);
        Assert.Equal(data, read.Data);
        Layer.Guardian.Tell(new BlockLayer.Io("nullb0", 3, BlockOp.Read, 7, 4096));
        Assert.Equal(InvalidRequestReason.Misaligned, (await ExpectMsgAsync<SoftwareContextProtocol.Rejected>()).Reason);
        Layer.Guardian.Tell(new BlockLayer.Io("nope", 4, BlockOp.Read, 0, 4096));
        Assert.Equal("nope", (await ExpectMsgAsync<BlockLayer.NoSuchDevice>()).Name);
    }

    [Fact]
    public async Task The_guardian_lists_devices()
    {
        await Create();

        Layer.Guardian.Tell(BlockLayer.ListDevices.Instance);

        var list = await ExpectMsgAsync<BlockLayer.DeviceList>();
        var summary = Assert.Single(list.Devices);
        Assert.Equal("nullb0", summary.Name);
        Assert.Equal("null", summary.Driver);
        Assert.Equal(Mode.ToString().ToLowerInvariant(), summary.Dispatch);
    }

    [Fact]
    public async Task Destroying_drains_in_flight_io_and_later_io_fails_offline()
    {
        var device = await Create(new DeviceOptions { Name = "gone", Size = 8 << 20, IrqMode = IrqMode.Timer, CompletionNsec = 200_000 });
        var ledger = new Testing.CompletionLedger(40);
        var inflight = Enumerable.Range(0, 40).Select(i => ledger.Submit(device, BlockOp.Read, i * 4096L, 4096, new byte[4096])).ToArray();

        Assert.Equal(0, await Layer.DestroyDeviceAsync("gone"));

        // Teardown drained every request: each end-io ran once (counted in the call-back, per
        // request), and no bio completion was refused as a second one.
        Assert.All(await Task.WhenAll(inflight), s => Assert.Equal(BlockStatus.Ok, s));
        Assert.Equal(0, ledger.Missing);
        Assert.Equal(0, ledger.Duplicated);
        Assert.Equal(40, ledger.Completed);
        Assert.Equal(0, device.Queue.DoubleCompletions);
        Assert.Equal(BlockStatus.Offline, await device.ExecuteAsync(BlockOp.Read, 0, 4096, new byte[4096]));
        Assert.Equal(0, device.Queue.DoubleCompletions);
        Assert.False(Layer.TryGetDevice("gone", out _));
        var again = await Create(new DeviceOptions { Name = "gone", Size = 1 << 20 });
        Assert.Equal("gone", again.Name);
    }

    // An outside stress test: after a destroy, an I/O larger than max_sectors_kb was split and
    // its pieces posted to software contexts that no longer ran, so in mailbox dispatch it never
    // completed (11 of 12). Each piece now takes its usage reference, and fails Offline.
    [Fact]
    public async Task A_split_io_on_a_destroyed_device_fails_offline()
    {
        var device = await Create(new DeviceOptions { Name = "split0", Size = 8 << 20, MemoryBacked = true, MaxSectorsKb = 4, SubmitQueues = 2 });
        await device.WriteAsync(0, Pattern(65536, 3));
        Assert.Equal(0, await Layer.DestroyDeviceAsync("split0"));

        foreach (var op in new[] { BlockOp.Write, BlockOp.Read })
        {
            var io = device.ExecuteAsync(op, 0, 65536, new byte[65536]).AsTask();
            Assert.Equal(BlockStatus.Offline, await io.WaitAsync(TimeSpan.FromSeconds(30)));
        }

        Assert.Equal(0, device.Queue.DoubleCompletions);
    }

    [Fact]
    public async Task Disposing_the_device_destroys_it()
    {
        var device = await Create();

        await device.DisposeAsync();

        Assert.Empty(Layer.Devices);
        await Assert.ThrowsAsync<KeyNotFoundException>(() => Layer.DestroyDeviceAsync("nullb0"));
    }

    [Fact]
    public async Task A_taken_name_or_invalid_options_are_refused()
    {
        await Create();

        var taken = await Assert.ThrowsAsync<DeviceOptionsException>(() => Create(new DeviceOptions { Name = "nullb0" }));
        Assert.Equal("name", taken.Option);
        var invalid = await Assert.ThrowsAsync<DeviceOptionsException>(() => Create(new DeviceOptions { Name = "bad", HwQueueDepth = 0 }));
        Assert.Equal("hw_queue_depth", invalid.Option);

        // Every enumeration is checked, not only those read from HOCON (an outside audit got the
        // device for an unknown completion mode, and an ArgumentOutOfRangeException from inside
        // the CPU map for an unknown algorithm).
        var completion = await Assert.ThrowsAsync<DeviceOptionsException>(() => Create(new DeviceOptions { Name = "bad", Completion = (CompletionContinuation)9 }));
        Assert.Equal("completion", completion.Option);
        var cpuMap = await Assert.ThrowsAsync<DeviceOptionsException>(() => Create(new DeviceOptions { Name = "bad", CpuMapAlgorithm = (CpuMapAlgorithm)9 }));
        Assert.Equal("cpu_map", cpuMap.Option);
        Assert.Single(Layer.Devices);
    }

    [Fact]
    public async Task Devices_with_shared_tags_share_one_tag_set()
    {
        var a = await Create(new DeviceOptions { Name = "sa", Size = 1 << 20, SharedTags = true, HwQueueDepth = 128 });
        var b = await Create(new DeviceOptions { Name = "sb", Size = 1 << 20, SharedTags = true });

        Assert.Same(a.Queue.TagSet, b.Queue.TagSet);
        Assert.True(a.Queue.TagSet.IsShared);
        Assert.Equal(128, b.Queue.TagSet.QueueDepth);

        await Layer.DestroyDeviceAsync("sb");
        Assert.False(a.Queue.TagSet.IsShared);
    }

    [Fact]
    public async Task The_device_that_creates_a_shared_set_decides_its_fair_share()
    {
        // §2.5 item 27: "a framework should make it switchable". README claimed the switch; only
        // the data plane's TagSetOptions had it (an outside audit): tag_fairness = off, and the
        // devices that join the set take it as it is, as they take its depth.
        var a = await Create(new DeviceOptions { Name = "fa", Size = 1 << 20, SharedTags = true, TagSetName = "unfair", TagFairness = false });
        var b = await Create(new DeviceOptions { Name = "fb", Size = 1 << 20, SharedTags = true, TagSetName = "unfair" });
        var c = await Create(new DeviceOptions { Name = "fc", Size = 1 << 20, SharedTags = true, TagSetName = "fair" });

        Assert.Same(a.Queue.TagSet, b.Queue.TagSet);
        Assert.False(b.Queue.TagSet.FairSharing);
        Assert.True(c.Queue.TagSet.FairSharing);
    }

    [Fact]
    public async Task The_synchronous_create_returns_a_registered_device()
    {
        var device = Layer.CreateDevice(new DeviceOptions { Name = "sync", Size = 1 << 20, Dispatch = Mode });

        Assert.True(device.Queue.IsRegistered);
        Assert.True(device.Queue.Usage.IsPerCpu);
        await device.ReadAsync(0, new byte[512]);
    }

    private sealed class CpuRecorder : IBioEndIo
    {
        public TaskCompletionSource<int> Cpu { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public void OnBioComplete(Bio bio, BlockStatus status) => Cpu.SetResult(CurrentCpu.Bound);
    }
}

/// <summary>The device suite on ring dispatch.</summary>
public sealed class RingDeviceSpec(ITestOutputHelper output) : DeviceSpec(DispatchMode.Ring, output);

/// <summary>The device suite on mailbox dispatch.</summary>
public sealed class MailboxDeviceSpec(ITestOutputHelper output) : DeviceSpec(DispatchMode.Mailbox, output);
