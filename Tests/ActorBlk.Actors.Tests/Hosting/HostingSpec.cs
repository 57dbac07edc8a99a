using ActorBlk.Actors.Hosting;
using ActorBlk.Hardware.Devices;
using Akka.Actor;
using Akka.Hosting;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Xunit;

namespace ActorBlk.Actors.Tests.Hosting;

/// <summary>Embedding through Akka.Hosting, as an application does.</summary>
public sealed class HostingSpec
{
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
        Assert.Equal(["fromhocon", "typed"], layer.Devices.Select(d => d.Name).Order());
        Assert.True(layer.TryGetDevice("typed", out var device));
        await device.WriteAsync(0, new byte[4096]);

        await host.StopAsync();
        Assert.True(device.Queue.IsDying);
        Assert.Empty(layer.Devices);
    }

    [Fact]
    public async Task The_readme_example_runs()
    {
        var data = await ReadmeExample.RunAsync();

        Assert.Equal("hello, block layer", data);
    }
}
