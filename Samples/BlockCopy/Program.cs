using ActorBlk.Actors;
using ActorBlk.Actors.Hosting;
using ActorBlk.Hardware.Devices;
using ActorBlk.Samples.BlockCopy;
using System.Security.Cryptography;
using Akka.Actor;
using Akka.Hosting;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;

// usage: BlockCopy [FILE]   copies FILE (or 8 MiB of random data) onto a memory-backed null
// device served by an embedded ActorBlk block layer, then verifies it.
var builder = Host.CreateApplicationBuilder(args);
builder.Services.AddAkka("blockcopy", (akka, _) => akka
    .AddHocon("akka.loglevel = WARNING", HoconAddMode.Prepend)
    .WithActorBlk(new ActorBlkOptions
    {
        Devices = { new DeviceOptions { Name = "copy0", Size = 256L << 20, BlockSize = 4096, MemoryBacked = true, SubmitQueues = 2 } },
    }));

using var host = builder.Build();
await host.StartAsync();

var layer = BlockLayer.Get(host.Services.GetRequiredService<ActorSystem>());
layer.TryGetDevice("copy0", out var device);

Stream source = args.Length > 0 ? File.OpenRead(args[0]) : new MemoryStream(RandomNumberGenerator.GetBytes(8 << 20));
await using (source)
{
    var result = await new BlockCopier(device).CopyAsync(source);
    Console.WriteLine($"copied {result.Bytes} bytes in {result.Requests} writes onto {device.Name}: " +
                      (result.Verified ? $"verified (sha256 {result.SourceHash[..16]}...)" : "MISMATCH"));
    await host.StopAsync();
    return result.Verified ? 0 : 1;
}
