using ActorBlk.Actors.Hosting;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers.Stacking;
using Akka.Actor;
using Akka.Hosting;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Xunit;

namespace ActorBlk.Actors.Tests.Hosting;

/// <summary>Embedding through Akka.Hosting, as an application does.</summary>
public sealed class HostingSpec
{
    // 4 KiB written to the stacked device at `offset` are read back from `member` at `memberOffset`.
    private static async Task AssertLandsOnAsync(IBlockDevice stacked, long offset, IBlockDevice member, long memberOffset)
    {
        var data = Enumerable.Range(0, 4096).Select(i => (byte)(i * 7)).ToArray();
        await stacked.WriteAsync(offset, data);
        var back = new byte[4096];
        await member.ReadAsync(memberOffset, back);
        Assert.Equal(data, back);
    }

    private static IHost Build(ActorBlkOptions options) => Host.CreateDefaultBuilder()
        .ConfigureServices(services => services.AddAkka("embedded", (builder, _) => builder
            .AddHocon("akka.loglevel = WARNING", HoconAddMode.Prepend)
            .WithActorBlk(options)))
        .Build();

    [Fact]
    public async Task WithActorBlk_creates_the_configured_devices_and_registers_the_block_layer()
    {
        var options = new ActorBlkOptions
        {
            Hocon = """
                actorblk.topology.source = simulated
                actorblk.devices = [ { name = fromhocon, size = 1m, memory_backed = on } ]
                """,
            Devices = { new DeviceOptions { Name = "typed", Size = 1 << 20, MemoryBacked = true, Dispatch = Hardware.Queues.DispatchMode.Mailbox } },
        };
        using var host = Build(options);
        await host.StartAsync();

        var system = host.Services.GetRequiredService<ActorSystem>();
        var layer = BlockLayer.Get(system);
        var registry = host.Services.GetRequiredService<ActorRegistry>();

        Assert.Equal(layer.Guardian, registry.Get<BlockLayer>());

        // The library's defaults reach the system's own settings: its scheduler is ActorBlk's.
        Assert.IsType<TimerQueueScheduler>(system.Scheduler);
        Assert.Equal(["fromhocon", "typed"], layer.Devices.Select(d => d.Name).Order());
        Assert.True(layer.TryGetDevice("typed", out var device));
        await device.WriteAsync(0, new byte[4096]);

        await host.StopAsync();
        Assert.True(device.Queue.IsDying);
        Assert.Empty(layer.Devices);
    }

    [Fact]
    public async Task Stacked_devices_of_the_configuration_are_built_on_its_devices_and_removed_first()
    {
        var options = new ActorBlkOptions
        {
            Hocon = """
                actorblk.topology.source = simulated
                actorblk.devices = [
                  { name = sda, size = 1m, memory_backed = on }
                  { name = sdb, size = 1m, memory_backed = on, dispatch = mailbox }
                ]
                actorblk.stacked-devices = [
                  { name = md0, type = striped, chunk = 4k, members = [sda, sdb] }
                  { name = vg0, type = linear, members = [md0] }
                ]
                """,
        };
        using var host = Build(options);
        await host.StartAsync();

        var layer = BlockLayer.Get(host.Services.GetRequiredService<ActorSystem>());
        Assert.Equal(["md0", "sda", "sdb", "vg0"], layer.Devices.Select(d => d.Name).Order());
        Assert.True(layer.TryGetDevice("vg0", out var vg0));
        Assert.True(layer.TryGetDevice("sdb", out var sdb));
        Assert.Equal(2 << 20, vg0.Capacity);

        // Chunk 1 of md0 is sdb's first 4 KiB.
        await AssertLandsOnAsync(vg0, 4096, sdb, 0);

        await host.StopAsync();
        Assert.Empty(layer.Devices);
    }

    [Fact]
    public async Task A_mirror_of_the_configuration_reads_its_legs_metadata_at_start_and_stops_clean()
    {
        var options = new ActorBlkOptions
        {
            Hocon = """
                actorblk.topology.source = simulated
                actorblk.devices = [
                  { name = sda, size = 1m, memory_backed = on }
                  { name = sdb, size = 1m, memory_backed = on, dispatch = mailbox }
                ]
                actorblk.stacked-devices = [
                  { name = md0, type = mirror, members = [sda, sdb], region = 64k }
                ]
                """,
        };
        using var host = Build(options);
        await host.StartAsync();

        var layer = BlockLayer.Get(host.Services.GetRequiredService<ActorSystem>());
        Assert.True(layer.TryGetDevice("md0", out var md0));
        Assert.True(layer.TryGetDevice("sdb", out var sdb));
        Assert.Equal((1 << 20) - Hardware.Drivers.Stacking.MirrorSuperblock.DataOffset, md0.Capacity);
        Assert.Equal("65536\n", layer.ReadAttribute("block/md0/md/bitmap/chunksize"));

        // A new mirror copies its first leg to the second; then byte 0 of md0 is byte 65536 of each leg.
        var mirror = (Hardware.Drivers.Stacking.MirrorTarget)md0.Queue.BioDriver!;
        await mirror.SyncIdle.WaitAsync(TimeSpan.FromSeconds(60));
        await AssertLandsOnAsync(md0, 0, sdb, Hardware.Drivers.Stacking.MirrorSuperblock.DataOffset);

        await host.StopAsync();
        Assert.Empty(layer.Devices);
    }

    [Fact]
    public async Task Typed_stacked_devices_may_stack_over_typed_and_configured_devices()
    {
        var options = new ActorBlkOptions
        {
            Hocon = """
                actorblk.topology.source = simulated
                actorblk.devices = [ { name = sda, size = 1m, memory_backed = on } ]
                """,
            Devices = { new DeviceOptions { Name = "sdb", Size = 2 << 20, MemoryBacked = true } },
            StackedDevices =
            {
                new StackedDeviceOptions("vg0", StackTable.Linear("sdb", "sda")),
                new StackedDeviceOptions("vg1", StackTable.Linear("vg0")),
            },
        };
        using var host = Build(options);
        await host.StartAsync();

        var layer = BlockLayer.Get(host.Services.GetRequiredService<ActorSystem>());
        Assert.True(layer.TryGetDevice("vg1", out var vg1));
        Assert.True(layer.TryGetDevice("sda", out var sda));
        Assert.Equal(3 << 20, vg1.Capacity);

        // Past sdb's 2 MiB, the linear table continues at sda's first byte.
        await AssertLandsOnAsync(vg1, 2 << 20, sda, 0);

        await host.StopAsync();
        Assert.Empty(layer.Devices);
    }

    [Fact]
    public async Task A_typed_stacked_device_over_no_such_device_fails_the_start()
    {
        var options = new ActorBlkOptions
        {
            Hocon = "actorblk.topology.source = simulated",
            Devices = { new DeviceOptions { Name = "sda", Size = 1 << 20, MemoryBacked = true } },
            StackedDevices = { new StackedDeviceOptions("vg0", StackTable.Linear("sda", "sdz")) },
        };
        using var host = Build(options);

        var refused = await Assert.ThrowsAsync<DeviceOptionsException>(() => host.StartAsync());
        Assert.Contains("sdz", refused.Message, StringComparison.Ordinal);
        await host.StopAsync();
    }

    [Fact]
    public async Task The_readme_example_runs()
    {
        var data = await ReadmeExample.RunAsync();

        Assert.Equal("hello, block layer", data);
    }
}
