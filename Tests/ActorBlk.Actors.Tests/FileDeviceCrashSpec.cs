using ActorBlk.Actors.Tests.Support;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;
using ActorBlk.Testing;
using Akka.Configuration;
using Xunit;
using Xunit.Abstractions;

namespace ActorBlk.Actors.Tests;

/// <summary>
/// A file device (io_uring engine) whose driver crashes under load in mailbox dispatch: each
/// reset and reopen stops the old engine while the kernel still holds requests. Resets once took
/// those back and requeued them, and the engine lost count of them (their completions came back
/// under an old generation and were not counted out), so its stop waited its whole 30 s drain
/// limit for each and then unmapped the ring under its still-running reaper thread: the process
/// died of an access violation. A reset takes nothing back from a file device now, and a reopen
/// waits for what the kernel holds (FaultInjectionDriverSpec). Every request must end once, and
/// the device must still work.
/// </summary>
public sealed class FileDeviceCrashSpec(ITestOutputHelper output) : Akka.TestKit.Xunit2.TestKit(Settings, output: output)
{
    private const int Writers = 8;
    private const int PerWriter = 1_500;
    private const int BlockSize = 4096;

    // A few resets, then reopens: the reopen is what stops the engine.
    private static readonly Config Settings = ConfigurationFactory.ParseString("""
        actorblk.supervision {
          max-resets = 2
          max-reopens = 1000
          reopen-backoff-min = 10ms
          reopen-backoff-max = 50ms
        }
        """).WithFallback(Configs.Simulated);

    [Fact]
    public async Task Crashes_of_a_file_device_in_mailbox_dispatch_end_every_request_once_and_the_device_goes_on()
    {
        using var dir = new TempDirectory();
        var blk = BlockLayer.Get(Sys);
        var device = await blk.CreateDeviceAsync(new DeviceOptions
        {
            Name = "crashy",
            Driver = "file",
            Path = dir.File("crashy.img"),
            Size = 16 << 20,
            Dispatch = DispatchMode.Mailbox,
            SubmitQueues = 2,
            HwQueueDepth = 16,
            Faults = new FaultInjectionOptions { CrashAfter = 300, Seed = 3 },
        });
        var faulty = Assert.IsType<FaultInjectionDriver>(device.Queue.Driver);

        var ledger = new CompletionLedger(Writers * PerWriter);
        async Task Writer(int w)
        {
            var buffer = new byte[BlockSize];
            Random.Shared.NextBytes(buffer);
            for (var i = 0; i < PerWriter; i++)
            {
                var block = (w * PerWriter) + i;
                await ledger.Submit(device, BlockOp.Write, (long)block % (device.Capacity / BlockSize) * BlockSize, BlockSize, buffer, cpu: w % 2);
            }
        }

        var all = Task.WhenAll(Enumerable.Range(0, Writers).Select(w => Task.Run(() => Writer(w))));
        var finished = await Task.WhenAny(all, Task.Delay(TimeSpan.FromMinutes(5))) == all;
        Assert.Equal(0, ledger.Missing);
        Assert.True(finished, "the load did not finish");
        await all;
        Assert.Equal(0, ledger.Duplicated);
        Assert.Equal(ledger.Submitted, ledger.Completed);
        Assert.True(faulty.Injected.Crashes > 2, $"only {faulty.Injected.Crashes} crashes");

        // The device still serves, and its removal does not wait on a lost count.
        var back = new byte[BlockSize];
        Assert.Equal(BlockStatus.Ok, await device.ExecuteAsync(BlockOp.Read, 0, BlockSize, back));
        await blk.DestroyDeviceAsync("crashy");
    }
}
