using ActorBlk.Actors;
using ActorBlk.Actors.Hosting;
using ActorBlk.Hardware.Devices;
using ActorBlk.Samples.BlockCopy;
using System.Security.Cryptography;
using Akka.Actor;
using Akka.Hosting;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

// usage: BlockCopy [FILE]   copies FILE (or 8 MiB of random data) onto a memory-backed null
// device served by an embedded ActorBlk block layer, then verifies it.
const string Usage = "usage: BlockCopy [FILE]\n  copies FILE (at most 256 MiB; 8 MiB of random data without one) onto a memory-backed\n  null device of an embedded ActorBlk block layer, then reads it back and verifies it.";
const long DeviceSize = 256L << 20;
if (args.Length > 1 || args is ["-h" or "--help" or "-?"])
{
    (args.Length > 1 ? Console.Error : Console.Out).WriteLine(Usage);
    return args.Length > 1 ? 2 : 0;
}

if (args is [var path] && (!File.Exists(path) || new FileInfo(path).Length > DeviceSize))
{
    Console.Error.WriteLine(File.Exists(path)
        ? $"BlockCopy: {path} is larger than the device ({DeviceSize >> 20} MiB)."
        : Directory.Exists(path) ? $"BlockCopy: {path} is a directory, not a file." : $"BlockCopy: {path}: no such file.");
    Console.Error.WriteLine(Usage);
    return 2;
}

var builder = Host.CreateApplicationBuilder(args);

// The report is the program's output: no "Application started. Press Ctrl+C" lines in it.
builder.Logging.AddFilter("Microsoft.Hosting.Lifetime", LogLevel.Warning);
builder.Services.AddAkka("blockcopy", (akka, _) => akka
    .AddHocon("akka.loglevel = WARNING", HoconAddMode.Prepend)
    .WithActorBlk(new ActorBlkOptions
    {
        Devices = { new DeviceOptions { Name = "copy0", Size = DeviceSize, BlockSize = 4096, MemoryBacked = true, SubmitQueues = 2 } },
    }));

using var host = builder.Build();
await host.StartAsync();

var layer = BlockLayer.Get(host.Services.GetRequiredService<ActorSystem>());
var device = layer.TryGetDevice("copy0", out var copy0) ? copy0 : throw new InvalidOperationException("copy0 was not created");

// Ctrl-C (or SIGTERM) stops the host, and with it the device: the copy stops between chunks
// first and says so, rather than meeting the device gone under a write.
using var stop = CancellationTokenSource.CreateLinkedTokenSource(
    host.Services.GetRequiredService<IHostApplicationLifetime>().ApplicationStopping, layer.Stopping);
var stopping = stop.Token;
Stream source = args.Length > 0 ? File.OpenRead(args[0]) : new MemoryStream(RandomNumberGenerator.GetBytes(8 << 20));
await using (source)
{
    try
    {
        var result = await new BlockCopier(device).CopyAsync(source, cancellationToken: stopping);
        Console.WriteLine($"copied {result.Bytes} bytes in {result.Requests} writes onto {device.Name}: " +
                          (result.Verified ? $"verified (sha256 {result.SourceHash[..16]}...)" : "MISMATCH"));
        await host.StopAsync();
        return result.Verified ? 0 : 1;
    }
    catch (Exception ex) when (stopping.IsCancellationRequested && ex is OperationCanceledException or BlockIoException)
    {
        Console.Error.WriteLine("BlockCopy: stopped (Ctrl-C or SIGTERM) before the copy was verified.");
        await host.StopAsync(CancellationToken.None);
        return 130;
    }
}
