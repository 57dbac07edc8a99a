using ActorBlk.Actors.Tests.Support;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;
using Xunit;
using Xunit.Abstractions;

namespace ActorBlk.Actors.Tests;

/// <summary>
/// A driver's note for the operator (<see cref="IQueueEvents.OnDriverWarning"/>: the NBD client
/// driver passes on an NBD server's error message this way, rate-limited by the driver) is logged
/// by the device's queue actor at warning level, with the device and the hardware queue. Both
/// dispatch modes: the note is raised on a dispatch loop's thread or inside the actor.
/// </summary>
public sealed class DriverWarningLogSpec(ITestOutputHelper output) : Akka.TestKit.Xunit2.TestKit(Configs.Simulated, output: output)
{
    [Theory]
    [InlineData(DispatchMode.Ring)]
    [InlineData(DispatchMode.Mailbox)]
    public async Task A_drivers_warning_is_logged_with_its_device_and_hardware_queue(DispatchMode mode)
    {
        var name = $"warn-{mode}".ToLowerInvariant();
        var device = await BlockLayer.Get(Sys).CreateDeviceAsync(new DeviceOptions
        {
            Name = name,
            Dispatch = mode,
            Size = 1 << 20,
            BlockSize = 4096,
            SubmitQueues = 1,
        }, new WarningDriver());

        await EventFilter.Warning(contains: $"{name} hctx 0: the server said \"no space\"").ExpectOneAsync(async () =>
            Assert.Equal(BlockStatus.Ok, await device.ExecuteAsync(BlockOp.Write, 0, 4096, new byte[4096]).AsTask().WaitAsync(TimeSpan.FromSeconds(30))));

        await BlockLayer.Get(Sys).DestroyDeviceAsync(name);
    }

    // Completes every request inside QueueRq after a note for the operator.
    private sealed class WarningDriver : IBlockDriver
    {
        public string Kind => "warning";

        public QueueLimits Limits { get; } = new()
        {
            LogicalBlockSize = 4096,
            PhysicalBlockSize = 4096,
            CapacitySectors = (1 << 20) >> Bio.SectorShift,
            MaxHardwareSectors = QueueLimits.DefaultMaxSectors,
            MaxSectors = QueueLimits.DefaultMaxSectors,
        };

        public DriverFeatures Features => DriverFeatures.None;

        public BlockStatus QueueRq(HardwareContext hctx, Request request, bool last)
        {
            request.Start();
            hctx.Queue.Events?.OnDriverWarning(hctx, "the server said \"no space\"");
            request.Complete(BlockStatus.Ok);
            return BlockStatus.Ok;
        }

        public TimeoutAction Timeout(Request request)
        {
            request.Complete(BlockStatus.Timeout);
            return TimeoutAction.Done;
        }

        public void Dispose()
        {
        }
    }
}
