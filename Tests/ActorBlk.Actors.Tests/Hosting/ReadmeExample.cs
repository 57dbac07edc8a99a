using System.Text;
using ActorBlk.Actors.Hosting;
using ActorBlk.Hardware.Devices;
using Akka.Actor;
using Akka.Hosting;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;

namespace ActorBlk.Actors.Tests.Hosting;

/// <summary>The embedding example of README.md, verbatim between the markers (ReadmeSpec checks it).</summary>
public static class ReadmeExample
{
    public static async Task<string> RunAsync()
    {
        // begin README example
        using var host = Host.CreateDefaultBuilder()
            .ConfigureServices(services => services.AddAkka("actorblk", (builder, sp) => builder
                .WithActorBlk(new ActorBlkOptions
                {
                    Devices = { new DeviceOptions { Name = "nullb0", Size = 1L << 30, MemoryBacked = true } },
                })))
            .Build();
        await host.StartAsync();

        var blk = BlockLayer.Get(host.Services.GetRequiredService<ActorSystem>());
        if (!blk.TryGetDevice("nullb0", out var disk))
        {
            throw new InvalidOperationException("nullb0 was not created");
        }

        var block = new byte[disk.LogicalBlockSize];
        Encoding.UTF8.GetBytes("hello, block layer").CopyTo(block, 0);
        await disk.WriteAsync(offset: 0, block);
        var back = new byte[block.Length];
        await disk.ReadAsync(offset: 0, back);

        await host.StopAsync(); // drains and destroys the device
        // end README example
        return Encoding.UTF8.GetString(back).TrimEnd('\0');
    }
}
