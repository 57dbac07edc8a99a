using ActorBlk.Actors.Tests.Support;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers.File;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;
using ActorBlk.Testing;
using Akka.Actor;
using Akka.Configuration;
using Xunit;
using Xunit.Abstractions;

namespace ActorBlk.Actors.Tests;

/// <summary>
/// File devices created through <see cref="BlockLayer"/> from hocon, in ring and in mailbox
/// dispatch: in mailbox dispatch the driver actor submits to an io_uring that a reaper thread of
/// its own completes, in ring dispatch the dispatch loop owns the ring.
/// </summary>
public abstract class FileDeviceSpec : Akka.TestKit.Xunit2.TestKit
{
    private readonly TempDirectory _dir;

    protected FileDeviceSpec(DispatchMode mode, ITestOutputHelper output)
        : base(Configs.Simulated, output: output)
    {
        Mode = mode;
        _dir = new TempDirectory("actorblk-actors");
    }

    protected DispatchMode Mode { get; }

    private BlockLayer Layer => BlockLayer.Get(Sys);

    protected override void AfterAll()
    {
        base.AfterAll();
        _dir.Dispose();
    }

    private async Task<IBlockDevice> Create(string name, string extra = "")
    {
        var path = _dir.File($"{name}.img");
        var entry = ConfigurationFactory.ParseString(
            $"name = {name}, driver = file, path = \"{path}\", size = 8m, submit_queues = 2, hw_queue_depth = 16, dispatch = {Mode.ToString().ToLowerInvariant()} {extra}");
        return await Layer.CreateDeviceAsync(DeviceConfig.Parse(entry));
    }

    private static byte[] Pattern(int length, int seed)
    {
        var data = new byte[length];
        new Random(seed).NextBytes(data);
        return data;
    }

    [Theory]
    [InlineData("io_uring")]
    [InlineData("psync")]
    public async Task Concurrent_writes_read_back_in_both_engines(string engine)
    {
        var device = await Create($"f-{engine.Replace('_', '-')}", $", engine = {engine}");
        var driver = Assert.IsType<FileBlockDriver>(device.Queue.Driver);
        Assert.Equal(engine == "psync" ? IoEngine.Psync : IoEngine.IoUring, driver.Engine);

        // 64 writes of 16 KiB from four CPUs at once, each to its own place; then read them all.
        var writes = Enumerable.Range(0, 64).Select(i => device.WriteAsync(i * 65536L, Pattern(16384, i), cpu: i % 4).AsTask());
        await Task.WhenAll(writes);
        await device.FlushAsync();
        for (var i = 0; i < 64; i++)
        {
            var back = new byte[16384];
            await device.ReadAsync(i * 65536L, back, cpu: (i + 1) % 4);
            Assert.Equal(Pattern(16384, i), back);
        }

        await device.DiscardAsync(0, 65536);
        var zeroes = new byte[16384];
        await device.ReadAsync(0, zeroes);
        Assert.Equal(new byte[16384], zeroes);

        Assert.All(device.Queue.HardwareContexts, h => Assert.Equal(0, h.Tags.InUse));
        if (engine == "io_uring")
        {
            var where = Mode == DispatchMode.Ring ? "reaped by the dispatch thread" : "reaped by its own thread";
            Assert.Contains(where, driver.Description, StringComparison.Ordinal);
        }
    }

    [Fact]
    public async Task A_backing_file_that_cannot_be_opened_is_a_typed_refusal_and_the_layer_carries_on()
    {
        var missing = new DeviceOptions { Name = "ghost", Driver = "file", Path = _dir.File("nowhere/ghost.img"), Dispatch = Mode };

        var error = await Assert.ThrowsAsync<BlockDeviceOpenException>(() => Layer.CreateDeviceAsync(missing));
        Assert.Equal(OpenFailure.NotFound, error.Cause);
        Assert.Equal("ghost", error.Device);

        var reply = await Layer.Guardian.Ask<BlockLayer.DeviceList>(BlockLayer.ListDevices.Instance, TimeSpan.FromSeconds(30));
        Assert.DoesNotContain(reply.Devices, d => d.Name == "ghost");

        // The name is free and the layer creates devices as before.
        var device = await Create("ghost");
        await device.WriteAsync(0, new byte[4096]);
    }

    [Fact]
    public async Task A_destroyed_device_with_fixed_buffers_still_allocates_plain_aligned_buffers()
    {
        // An application's handle outlives the device: its I/O fails Offline, and AllocateBuffer
        // falls back to plain aligned memory as when the registered memory is used up. It threw
        // the disposed arena's ObjectDisposedException (an outside audit).
        var device = await Create("arena", ", fixed_buffers = 1m");
        using var kept = device.AllocateBuffer(4096);
        Assert.True(kept.IsRegistered);
        await device.WriteAsync(0, kept.Memory);
        await Layer.DestroyDeviceAsync("arena");

        using var later = device.AllocateBuffer(8192);
        Assert.False(later.IsRegistered);
        Assert.Equal(8192, later.Length);
        Assert.Equal(0, later.Alignment % device.MemoryAlignment);
        var failed = await Assert.ThrowsAsync<BlockIoException>(() => device.WriteAsync(0, later.Memory).AsTask());
        Assert.Equal(BlockStatus.Offline, failed.Status);
    }

    [Fact]
    public async Task Destroying_a_file_device_closes_it_and_the_file_can_be_served_again()
    {
        var device = await Create("again");
        await device.WriteAsync(4096, Pattern(4096, 99));
        await Layer.DestroyDeviceAsync("again");

        var reopened = await Create("again");
        var back = new byte[4096];
        await reopened.ReadAsync(4096, back);
        Assert.Equal(Pattern(4096, 99), back);
    }
}

/// <summary>File devices on ring dispatch.</summary>
public sealed class RingFileDeviceSpec(ITestOutputHelper output) : FileDeviceSpec(DispatchMode.Ring, output);

/// <summary>File devices on mailbox dispatch.</summary>
public sealed class MailboxFileDeviceSpec(ITestOutputHelper output) : FileDeviceSpec(DispatchMode.Mailbox, output);
