using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers.File;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;
using ActorBlk.Hardware.Topology;
using ActorBlk.Testing;
using Xunit;

namespace ActorBlk.Hardware.Tests.Drivers.File;

/// <summary>
/// The one suite every I/O engine of the file device passes, on real files in a temp directory:
/// io_uring and psync, each with O_DIRECT and with buffered I/O (the four sealed classes below).
/// Ring dispatch here; the mailbox path is specified in the actor tests.
/// </summary>
public abstract class FileDeviceContract : IAsyncLifetime
{
    private const int Cell = 64 * 1024;

    private readonly TempDirectory _dir = new("actorblk-file");
    private readonly BlockSoftIrq _softIrq = new(4);
    private readonly List<BlockDevice> _devices = [];

    protected abstract IoEngine Engine { get; }

    protected abstract bool Direct { get; }

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync()
    {
        foreach (var device in _devices)
        {
            await device.DisposeAsync();
        }

        _softIrq.Dispose();
        _dir.Dispose();
    }

    private BlockDevice Create(string path, long? size, int queues = 2, int depth = 32)
    {
        var device = DeviceBuilder.CreateRingDevice(
            new DeviceOptions
            {
                Name = "file0",
                Driver = "file",
                Path = path,
                Size = size,
                Engine = Engine,
                Direct = Direct,
                SubmitQueues = queues,
                HwQueueDepth = depth,
            },
            CpuTopology.Simulated(4, sockets: 2),
            _softIrq);
        _devices.Add(device);
        return device;
    }

    private static byte[] Pattern(int length, int seed)
    {
        var data = new byte[length];
        new Random(seed).NextBytes(data);
        return data;
    }

    [Fact]
    public async Task The_engine_asked_for_serves_every_hardware_queue()
    {
        var device = Create(_dir.File("engine.img"), 1 << 20);
        await device.WriteAsync(0, Pattern(4096, 1));

        var driver = Assert.IsType<FileBlockDriver>(device.Queue.Driver);
        Assert.Equal(Engine, driver.Engine);
        Assert.Null(driver.FallbackReason);
        Assert.Contains(Engine == IoEngine.IoUring ? "hctx0: io_uring" : "hctx0: psync", driver.Description, StringComparison.Ordinal);
        Assert.Contains(Direct ? "O_DIRECT" : "buffered", driver.Description, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Random_writes_from_several_threads_read_back_and_survive_reopening()
    {
        // Four submitters, each owning a quarter of the device, keep eight writes in flight at a
        // time: random cells, random lengths, some from unaligned memory. A shadow copy records
        // what each byte must hold; no two writes in flight overlap, so the shadow is exact.
        const long size = 16L << 20;
        const int threads = 4;
        const int batches = 40;
        const int inFlight = 8;
        var path = _dir.File("integrity.img");
        var device = Create(path, size);
        var shadow = new byte[size];
        var quarter = size / threads;

        await Task.WhenAll(Enumerable.Range(0, threads).Select(t => Task.Run(async () =>
        {
            var random = new Random(100 + t);
            var cells = (int)(quarter / Cell);
            for (var batch = 0; batch < batches; batch++)
            {
                var picked = Enumerable.Range(0, cells).OrderBy(_ => random.Next()).Take(inFlight).ToArray();
                var writes = picked.Select(cell =>
                {
                    var length = random.Next(1, (Cell / 4096) + 1) * 4096;
                    var offset = (t * quarter) + ((long)cell * Cell) + (random.Next(0, ((Cell - length) / 512) + 1) * 512);
                    var data = Pattern(length, random.Next());
                    data.CopyTo(shadow.AsSpan((int)offset, length));

                    // Every third write comes from memory one byte off alignment: the bounce path.
                    ReadOnlyMemory<byte> source = data;
                    if (batch % 3 == 0)
                    {
                        var skewed = new byte[length + 1];
                        data.CopyTo(skewed, 1);
                        source = skewed.AsMemory(1, length);
                    }

                    return device.WriteAsync(offset, source, cpu: t).AsTask();
                }).ToArray();
                await Task.WhenAll(writes);
            }
        })));

        await VerifyAsync(device, shadow);
        await device.FlushAsync();
        await device.DisposeAsync();
        _devices.Remove(device);

        // The data is in the file: a new device over it (size from the file) reads it all back.
        var reopened = Create(path, size: null);
        Assert.Equal(size, reopened.Capacity);
        await VerifyAsync(reopened, shadow);
    }

    private static async Task VerifyAsync(BlockDevice device, byte[] shadow)
    {
        const int chunk = 256 * 1024;
        await Parallel.ForAsync(0, shadow.Length / chunk, new ParallelOptions { MaxDegreeOfParallelism = 4 }, async (i, _) =>
        {
            var back = new byte[chunk];
            await device.ReadAsync((long)i * chunk, back);
            Assert.True(back.AsSpan().SequenceEqual(shadow.AsSpan(i * chunk, chunk)), $"mismatch in the chunk at {(long)i * chunk}");
        });
    }

    [Fact]
    public async Task Merged_requests_move_every_segment()
    {
        // Sixteen adjacent plugged writes become one request of sixteen bios (a vectored write);
        // sixteen adjacent plugged reads into separate buffers, one vectored read.
        var device = Create(_dir.File("merge.img"), 4 << 20, queues: 1);
        var parts = Enumerable.Range(0, 16).Select(i => Pattern(4096, 500 + i)).ToArray();
        var mergedBefore = device.Queue.SoftwareContexts.Sum(c => c.Merged);
        using (device.Plug())
        {
            var writes = parts.Select((p, i) => device.WriteAsync(65536 + (i * 4096L), p, cpu: 0)).ToArray();
            foreach (var write in writes)
            {
                await write;
            }
        }

        var backs = Enumerable.Range(0, 16).Select(_ => new byte[4096]).ToArray();
        using (device.Plug())
        {
            var reads = backs.Select((b, i) => device.ReadAsync(65536 + (i * 4096L), b, cpu: 0)).ToArray();
            foreach (var read in reads)
            {
                await read;
            }
        }

        Assert.True(device.Queue.SoftwareContexts.Sum(c => c.Merged) - mergedBefore >= 2 * 15, "plugged adjacent bios were merged");
        for (var i = 0; i < parts.Length; i++)
        {
            Assert.Equal(parts[i], backs[i]);
        }
    }

    [Fact]
    public async Task Flush_fua_and_preflush_writes_complete_and_the_data_is_in_the_file()
    {
        var path = _dir.File("flush.img");
        var device = Create(path, 1 << 20);
        var a = Pattern(8192, 7);
        var b = Pattern(4096, 8);
        var c = Pattern(4096, 9);

        await device.WriteAsync(0, a);
        await device.FlushAsync();
        await device.WriteAsync(8192, b, RequestFlags.Fua);
        await device.WriteAsync(12288, c, RequestFlags.PreFlush | RequestFlags.Fua);

        // Read through a descriptor of our own: what the device wrote is in the file itself.
        using var file = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
        var back = new byte[16384];
        file.ReadExactly(back);
        Assert.Equal(a, back[..8192]);
        Assert.Equal(b, back[8192..12288]);
        Assert.Equal(c, back[12288..]);
    }

    [Fact]
    public async Task Discard_and_write_zeroes_read_back_as_zeroes()
    {
        var device = Create(_dir.File("zero.img"), 2 << 20);
        var data = Pattern(1 << 20, 11);
        await device.WriteAsync(0, data);

        await device.DiscardAsync(256 * 1024, 256 * 1024);

        // Not a whole file-system block at either end: the partial blocks are zeroed too.
        await device.WriteZeroesAsync(600 * 1024 + 512, 100 * 1024);

        var back = new byte[1 << 20];
        await device.ReadAsync(0, back);
        var expected = (byte[])data.Clone();
        Array.Clear(expected, 256 * 1024, 256 * 1024);
        Array.Clear(expected, (600 * 1024) + 512, 100 * 1024);
        Assert.Equal(expected, back);
    }

    [Fact]
    public async Task Unaligned_memory_is_bounced_both_ways()
    {
        var device = Create(_dir.File("bounce.img"), 1 << 20);
        var data = Pattern(12288, 12);
        var skewed = new byte[12288 + 3];
        data.CopyTo(skewed, 3);

        await device.WriteAsync(4096, skewed.AsMemory(3, 12288));
        var target = new byte[12288 + 5];
        await device.ReadAsync(4096, target.AsMemory(5, 12288));

        Assert.Equal(data, target[5..]);
        Assert.Equal(new byte[5], target[..5]);
    }

    [Fact]
    public async Task Aligned_buffers_go_to_the_device_as_they_are()
    {
        var device = Create(_dir.File("aligned.img"), 1 << 20);
        using var buffer = AlignedBuffer.For(device, 8192);
        Pattern(8192, 13).CopyTo(buffer.Memory);

        await device.WriteAsync(8192, buffer.Memory);
        using var back = AlignedBuffer.For(device, 8192);
        await device.ReadAsync(8192, back.Memory);

        Assert.True(back.Memory.Span.SequenceEqual(buffer.Memory.Span));
        Assert.True(back.Alignment >= device.MemoryAlignment);
    }

    [Fact]
    public async Task Registered_buffers_serve_io_and_io_uring_uses_its_fixed_opcodes()
    {
        var device = DeviceBuilder.CreateRingDevice(
            new DeviceOptions { Name = "fixed0", Driver = "file", Path = _dir.File("fixed.img"), Size = 1 << 20, Engine = Engine, Direct = Direct, FixedBuffers = 64 * 1024 },
            CpuTopology.Simulated(2), _softIrq);
        _devices.Add(device);
        using var buffer = device.AllocateBuffer(16384);
        using var back = device.AllocateBuffer(16384);
        Pattern(16384, 16).CopyTo(buffer.Memory);

        await device.WriteAsync(0, buffer.Memory);
        await device.ReadAsync(0, back.Memory);

        Assert.True(back.Memory.Span.SequenceEqual(buffer.Memory.Span));
        var engine = device.Queue.HardwareContexts[0].DriverData;
        if (Engine == IoEngine.IoUring)
        {
            // Both buffers are pieces of the registered memory: READ_FIXED and WRITE_FIXED.
            Assert.True(buffer.IsRegistered && back.IsRegistered);
            Assert.Equal(2, Assert.IsType<IoUringEngine>(engine).FixedIos);
            Assert.Contains("64 KiB of fixed buffers", device.Queue.Driver.Description, StringComparison.Ordinal);
        }
        else
        {
            // psync registers nothing: the buffers are plain aligned memory.
            Assert.False(buffer.IsRegistered);
        }

        // More than the registered memory holds: plain aligned memory, and I/O still works.
        using var big = device.AllocateBuffer(128 * 1024);
        Assert.False(big.IsRegistered);
        await device.ReadAsync(0, big.Memory);
        Assert.True(big.Memory.Span[..16384].SequenceEqual(buffer.Memory.Span));
    }

    [Fact]
    public async Task A_read_past_the_end_of_a_shrunken_file_fails_and_the_device_carries_on()
    {
        var path = _dir.File("shrunk.img");
        var device = Create(path, 1 << 20);
        await device.WriteAsync(0, Pattern(4096, 14));

        // Someone truncates the backing file behind the device's back.
        using (var file = new FileStream(path, FileMode.Open, FileAccess.Write, FileShare.ReadWrite))
        {
            file.SetLength(512 * 1024);
        }

        var error = await Assert.ThrowsAsync<BlockIoException>(async () => await device.ReadAsync(768 * 1024, new byte[4096]));
        Assert.Equal(BlockStatus.IoError, error.Status);
        Assert.Equal("file0", error.Device);

        var back = new byte[4096];
        await device.ReadAsync(0, back);
        Assert.Equal(Pattern(4096, 14), back);
    }

    [Fact]
    public async Task Misaligned_and_out_of_range_io_is_refused_before_submission()
    {
        var device = Create(_dir.File("bad.img"), 1 << 20);
        var lbs = device.LogicalBlockSize;

        var offset = await Assert.ThrowsAsync<InvalidBlockRequestException>(async () => await device.ReadAsync(100, new byte[lbs]));
        Assert.Equal(InvalidRequestReason.Misaligned, offset.Reason);
        Assert.Contains("file0", offset.Message, StringComparison.Ordinal);

        var length = await Assert.ThrowsAsync<InvalidBlockRequestException>(async () => await device.WriteAsync(0, new byte[lbs + 1]));
        Assert.Equal(InvalidRequestReason.Misaligned, length.Reason);

        var range = await Assert.ThrowsAsync<InvalidBlockRequestException>(async () => await device.ReadAsync(1 << 20, new byte[lbs]));
        Assert.Equal(InvalidRequestReason.OutOfRange, range.Reason);

        // Nothing was lost: the device serves the next request.
        await device.WriteAsync(0, Pattern(lbs, 15));
        var back = new byte[lbs];
        await device.ReadAsync(0, back);
        Assert.Equal(Pattern(lbs, 15), back);
        Assert.Equal(0, device.Queue.HardwareContexts.Sum(h => h.Tags.InUse));
    }

    [Fact]
    public async Task Many_requests_in_flight_on_every_queue_all_complete_once_and_free_their_tags()
    {
        var device = Create(_dir.File("depth.img"), 8 << 20, queues: 2, depth: 16);
        var completed = 0;
        var tasks = Enumerable.Range(0, 512).Select(async i =>
        {
            var buffer = new byte[4096];
            if (i % 2 == 0)
            {
                await device.WriteAsync(i * 4096L % (8 << 20), buffer, cpu: i % 4);
            }
            else
            {
                await device.ReadAsync(i * 4096L % (8 << 20), buffer, cpu: i % 4);
            }

            Interlocked.Increment(ref completed);
        });

        await Task.WhenAll(tasks);

        Assert.Equal(512, completed);
        Assert.All(device.Queue.HardwareContexts, h => Assert.Equal(0, h.Tags.InUse));
    }
}

/// <summary>io_uring with O_DIRECT.</summary>
public sealed class IoUringDirectFileDeviceSpec : FileDeviceContract
{
    protected override IoEngine Engine => IoEngine.IoUring;

    protected override bool Direct => true;
}

/// <summary>io_uring with buffered I/O.</summary>
public sealed class IoUringBufferedFileDeviceSpec : FileDeviceContract
{
    protected override IoEngine Engine => IoEngine.IoUring;

    protected override bool Direct => false;
}

/// <summary>psync with O_DIRECT.</summary>
public sealed class PsyncDirectFileDeviceSpec : FileDeviceContract
{
    protected override IoEngine Engine => IoEngine.Psync;

    protected override bool Direct => true;
}

/// <summary>psync with buffered I/O.</summary>
public sealed class PsyncBufferedFileDeviceSpec : FileDeviceContract
{
    protected override IoEngine Engine => IoEngine.Psync;

    protected override bool Direct => false;
}
