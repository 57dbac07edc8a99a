using ActorBlk.Actors.Tests.Support;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;
using Xunit;
using Xunit.Abstractions;

namespace ActorBlk.Actors.Tests;

/// <summary>
/// A request that fails is logged at error level in the kernel's words (<c>blk_print_req_error</c>:
/// "I/O error, dev sda, sector 2048 op 0x1:(WRITE) ..."), rate-limited per device as
/// <c>printk_ratelimited</c> is (<c>RequestErrorLogSpec</c> checks the limit). An outside audit
/// served a file device on a full file system: the NBD clients got ENOSPC and EIO, and the node's
/// log said nothing. Both dispatch modes.
/// </summary>
public abstract class IoErrorLogSpec(DispatchMode mode, ITestOutputHelper output) : Akka.TestKit.Xunit2.TestKit(Configs.Simulated, output: output)
{
    [Fact]
    public async Task A_failed_write_is_logged_with_its_device_sector_and_operation()
    {
        var device = await BlockLayer.Get(Sys).CreateDeviceAsync(new DeviceOptions
        {
            Name = "errlog0",
            Dispatch = mode,
            Size = 8 << 20,
            MemoryBacked = true,
            Faults = new FaultInjectionOptions { ErrorRate = 1, Seed = 7 },
        });

        await EventFilter.Error(contains: "I/O error, dev errlog0, sector 8 op write flags None, 4096 bytes, hctx").ExpectOneAsync(async () =>
        {
            var status = await device.ExecuteAsync(BlockOp.Write, 4096, 4096, new byte[4096]);
            Assert.Equal(BlockStatus.IoError, status);
        });

        await BlockLayer.Get(Sys).DestroyDeviceAsync("errlog0");
    }
}

/// <summary><see cref="IoErrorLogSpec"/> with ring dispatch.</summary>
public sealed class RingIoErrorLogSpec(ITestOutputHelper output) : IoErrorLogSpec(DispatchMode.Ring, output);

/// <summary><see cref="IoErrorLogSpec"/> with mailbox dispatch.</summary>
public sealed class MailboxIoErrorLogSpec(ITestOutputHelper output) : IoErrorLogSpec(DispatchMode.Mailbox, output);
