using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;
using ActorBlk.Hardware.Topology;
using ActorBlk.Testing;
using Xunit;

namespace ActorBlk.Hardware.Tests.Devices;

/// <summary>A memory-backed null device on ring dispatch, end to end, with real dispatch threads.</summary>
public sealed class RingDeviceSpec : IAsyncLifetime
{
    private readonly RingDevices _devices = new(8);

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync() => await _devices.DisposeAsync();

    private BlockDevice Create(DeviceOptions? options = null, int cpus = 4) => _devices.Create(
        options ?? new DeviceOptions { Name = "ring0", Size = 64 << 20, MemoryBacked = true, SubmitQueues = 2 },
        CpuTopology.Simulated(cpus, sockets: cpus >= 4 ? 2 : 1));

    private static byte[] Pattern(int length, int seed)
    {
        var data = new byte[length];
        new Random(seed).NextBytes(data);
        return data;
    }

    [Theory]
    [InlineData(IrqMode.None)]
    [InlineData(IrqMode.SoftIrq)]
    [InlineData(IrqMode.Timer)]
    public async Task Writes_read_back_in_every_irq_mode(IrqMode mode)
    {
        var device = Create(new DeviceOptions { Name = "irq", Size = 16 << 20, MemoryBacked = true, IrqMode = mode, SubmitQueues = 2 });
        var data = Pattern(8192, 1);

        await device.WriteAsync(4096, data, cpu: 1);
        var back = new byte[8192];
        await device.ReadAsync(4096, back, cpu: 3);

        Assert.Equal(data, back);
    }

    [Fact]
    public async Task Discard_and_write_zeroes_read_back_as_zeroes()
    {
        var device = Create();
        await device.WriteAsync(0, Pattern(65536, 2));

        await device.DiscardAsync(0, 16384);
        await device.WriteZeroesAsync(32768, 4096);
        await device.FlushAsync();

        var back = new byte[65536];
        await device.ReadAsync(0, back);
        Assert.All(back[..16384], b => Assert.Equal(0, b));
        Assert.All(back[32768..36864], b => Assert.Equal(0, b));
        Assert.Equal(Pattern(65536, 2)[16384..32768], back[16384..32768]);
    }

    [Fact]
    public async Task An_unwritten_range_reads_as_zeroes()
    {
        var device = Create();
        var back = Pattern(4096, 3);

        await device.ReadAsync(1 << 20, back);

        Assert.All(back, b => Assert.Equal(0, b));
    }

    [Fact]
    public async Task A_write_larger_than_max_sectors_is_split_and_reads_back()
    {
        var device = Create(new DeviceOptions { Name = "split", Size = 16 << 20, MemoryBacked = true, MaxSectorsKb = 8 });
        var data = Pattern(40960, 4);

        await device.WriteAsync(0, data);
        var back = new byte[40960];
        await device.ReadAsync(0, back);

        Assert.Equal(data, back);
        Assert.True(device.Queue.HardwareContexts.Sum(h => h.QueuedCount) >= 10);
    }

    [Theory]
    [InlineData(-512L, 512, InvalidRequestReason.OutOfRange)]
    [InlineData(100L, 512, InvalidRequestReason.Misaligned)]
    [InlineData(0L, 100, InvalidRequestReason.Misaligned)]
    [InlineData(0L, 0, InvalidRequestReason.ZeroLength)]
    [InlineData((64L << 20) - 512, 1024, InvalidRequestReason.OutOfRange)]
    [InlineData(64L << 20, 512, InvalidRequestReason.OutOfRange)]
    public async Task Bad_input_is_a_typed_error_and_submits_nothing(long offset, int length, InvalidRequestReason reason)
    {
        var device = Create();

        var ex = await Assert.ThrowsAsync<InvalidBlockRequestException>(() => device.WriteAsync(offset, new byte[length]).AsTask());

        Assert.Equal(reason, ex.Reason);
        Assert.Equal("ring0", ex.Device);
        Assert.Equal(0, device.Queue.HardwareContexts.Sum(h => h.QueuedCount));
    }

    [Fact]
    public async Task A_read_only_device_refuses_writes_discards_and_write_zeroes()
    {
        var device = Create(new DeviceOptions { Name = "ro", Size = 1 << 20, MemoryBacked = true, ReadOnly = true });

        Assert.Equal(InvalidRequestReason.ReadOnly, (await Assert.ThrowsAsync<InvalidBlockRequestException>(() => device.WriteAsync(0, new byte[512]).AsTask())).Reason);
        Assert.Equal(InvalidRequestReason.ReadOnly, (await Assert.ThrowsAsync<InvalidBlockRequestException>(() => device.DiscardAsync(0, 512).AsTask())).Reason);
        Assert.Equal(InvalidRequestReason.ReadOnly, (await Assert.ThrowsAsync<InvalidBlockRequestException>(() => device.WriteZeroesAsync(0, 512).AsTask())).Reason);
        await device.ReadAsync(0, new byte[512]);
    }

    [Fact]
    public async Task Discard_on_a_device_without_it_is_not_supported()
    {
        var device = Create(new DeviceOptions { Name = "nodiscard", Size = 1 << 20 });

        var ex = await Assert.ThrowsAsync<InvalidBlockRequestException>(() => device.DiscardAsync(0, 512).AsTask());

        Assert.Equal(InvalidRequestReason.NotSupported, ex.Reason);
    }

    [Fact]
    public async Task Execute_returns_the_status_instead_of_throwing()
    {
        var device = Create();
        var buffer = new byte[4096];

        Assert.Equal(BlockStatus.Ok, await device.ExecuteAsync(BlockOp.Write, 0, 4096, buffer));
        Assert.Equal(BlockStatus.Ok, await device.ExecuteAsync(BlockOp.Flush, 0, 0, default));
        await Assert.ThrowsAsync<InvalidBlockRequestException>(() => device.ExecuteAsync(BlockOp.Read, 0, 8192, buffer).AsTask());
    }

    [Fact]
    public async Task Concurrent_submitters_each_read_back_their_own_data_and_every_tag_is_freed()
    {
        var device = Create(new DeviceOptions { Name = "conc", Size = 64 << 20, MemoryBacked = true, SubmitQueues = 2, HwQueueDepth = 16 });
        const int perWorker = 400;
        var workers = Enumerable.Range(0, 4).Select(w => Task.Run(async () =>
        {
            var rng = new Random(w);
            for (var i = 0; i < perWorker; i++)
            {
                var block = (w * perWorker) + i;
                var data = Pattern(4096, block);
                await device.WriteAsync(block * 4096L, data, cpu: rng.Next(4));
                var back = new byte[4096];
                await device.ReadAsync(block * 4096L, back, cpu: rng.Next(4));
                Assert.Equal(data, back);
            }
        })).ToArray();

        await Task.WhenAll(workers);

        Assert.All(device.Queue.HardwareContexts, h => Assert.Equal(0, h.Tags.InUse));
        Assert.Equal(0, device.Queue.Usage.Count);
        Assert.Equal(4 * perWorker * 2, device.Queue.SoftwareContexts.Sum(c => c.CompletedSync + c.CompletedAsync));
    }

    [Fact]
    public async Task Waiting_for_tags_never_loses_a_request()
    {
        var device = Create(new DeviceOptions { Name = "tight", Size = 16 << 20, HwQueueDepth = 2, IrqMode = IrqMode.Timer, CompletionNsec = 50_000 });
        var tasks = Enumerable.Range(0, 200).Select(i => device.ExecuteAsync(BlockOp.Read, (i % 64) * 4096L, 4096, new byte[4096]).AsTask()).ToArray();

        var results = await Task.WhenAll(tasks);

        Assert.All(results, s => Assert.Equal(BlockStatus.Ok, s));
        Assert.Equal(0, device.Queue.HardwareContexts[0].Tags.InUse);
    }

    [Fact]
    public async Task Redirected_completions_run_on_the_submitting_cpu()
    {
        var device = Create(new DeviceOptions { Name = "affinity", Size = 1 << 20, RqAffinity = CompletionAffinity.SubmittingCpu, IrqMode = IrqMode.SoftIrq }, cpus: 4);

        Assert.Equal(3, await CompletionCpu(device, submitCpu: 3));
    }

    // Submits a read whose end-io call-back records the CPU the completion context is bound to.
    private static Task<int> CompletionCpu(BlockDevice device, int submitCpu)
    {
        var recorder = new CpuRecorder();
        var bio = device.Queue.Bios.Rent();
        bio.Op = BlockOp.Read;
        bio.Size = 512;
        bio.Buffer = new byte[512];
        bio.Cpu = submitCpu;
        bio.EndIo = recorder;
        device.Queue.Submit(bio);
        return recorder.Cpu.Task;
    }

    private sealed class CpuRecorder : IBioEndIo
    {
        public TaskCompletionSource<int> Cpu { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public void OnBioComplete(Bio bio, BlockStatus status) => Cpu.SetResult(CurrentCpu.Bound);
    }

    [Fact]
    public async Task Polled_io_completes_through_poll()
    {
        var device = Create(new DeviceOptions { Name = "poll", Size = 1 << 20, IoPoll = true, MemoryBacked = true });
        var data = Pattern(4096, 9);
        await device.WriteAsync(0, data);
        var back = new byte[4096];

        var io = device.Submit(BlockOp.Read, 0, back, cpu: 0);
        Assert.NotEqual(PollCookie.None, io.Cookie);
        var found = device.Poll(io.Cookie);

        Assert.True(found >= 1);
        Assert.Equal(BlockStatus.Ok, await io.Completion);
        Assert.Equal(data, back);
    }

    [Fact]
    public void Polled_io_on_a_device_without_poll_queues_is_refused()
    {
        var device = Create(new DeviceOptions { Name = "nopoll", Size = 1 << 20 });

        var ex = Assert.Throws<InvalidBlockRequestException>(() => device.Submit(BlockOp.Read, 0, new byte[512]));

        Assert.Equal(InvalidRequestReason.NotSupported, ex.Reason);
        Assert.Equal(0, device.Poll(0));
    }

    [Fact]
    public async Task A_frozen_device_holds_submissions_until_it_thaws()
    {
        var device = Create();
        await device.Queue.FreezeAsync();

        var pending = device.ReadAsync(0, new byte[512]).AsTask();
        var again = await device.ExecuteAsync(BlockOp.Read, 0, 512, new byte[512], RequestFlags.NoWait);

        Assert.Equal(BlockStatus.Again, again);
        Assert.False(pending.IsCompleted);
        device.Queue.Unfreeze();
        await pending;
    }

    [Fact]
    public async Task Disposing_drains_and_later_io_fails_offline()
    {
        var device = Create();
        var inflight = Enumerable.Range(0, 50).Select(i => device.WriteAsync(i * 4096L, new byte[4096]).AsTask()).ToArray();

        await device.DisposeAsync();

        await Task.WhenAll(inflight);
        var status = await device.ExecuteAsync(BlockOp.Read, 0, 512, new byte[512]);
        Assert.Equal(BlockStatus.Offline, status);
        Assert.DoesNotContain(device.Queue, device.Queue.TagSet.Queues);
    }
}
