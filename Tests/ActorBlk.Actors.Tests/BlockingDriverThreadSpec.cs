using ActorBlk.Actors.Tests.Support;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Queues;
using Akka.Actor;
using Xunit;
using Xunit.Abstractions;

namespace ActorBlk.Actors.Tests;

/// <summary>
/// Where a blocking driver's actors run (README, "Mailbox dispatch" and "Ring dispatch"): on a
/// thread of their own (<c>actorblk.blocking-driver-dispatcher</c>) in mailbox dispatch, where the
/// actor calls QueueRq; on the default dispatcher in ring dispatch, where the dispatch loops call
/// it and the actor only supervises. An outside scale audit: 1,000 memory-backed null devices of
/// 4 hardware queues in ring dispatch held 4,000 pinned threads from their creation on.
/// </summary>
public sealed class BlockingDriverThreadSpec : Akka.TestKit.Xunit2.TestKit
{
    public BlockingDriverThreadSpec(ITestOutputHelper output)
        : base(Configs.Simulated, output: output)
    {
    }

    [Theory]
    [InlineData(DispatchMode.Ring, false)]
    [InlineData(DispatchMode.Mailbox, true)]
    public async Task A_blocking_driver_has_threads_of_its_own_only_in_mailbox_dispatch(DispatchMode dispatch, bool pinned)
    {
        var name = $"blk{dispatch.ToString().ToLowerInvariant()}";
        var device = await BlockLayer.Get(Sys).CreateDeviceAsync(new DeviceOptions
        {
            Name = name, Size = 16 << 20, MemoryBacked = true, SubmitQueues = 4, Dispatch = dispatch,
        });
        Assert.Equal(4, device.Queue.HardwareContexts.Count);

        for (var i = 0; i < 4; i++)
        {
            var driver = await Sys.ActorSelection($"/user/actorblk/dev-{name}-*/driver-{i}").ResolveOne(TimeSpan.FromSeconds(30));
            var cell = (ActorCell)((ActorRefWithCell)driver).Underlying;
            Assert.Equal(pinned, cell.Dispatcher.Id == ActorBlkSettings.BlockingDriverDispatcher);
        }

        // The device works either way (an I/O that fails throws).
        var data = new byte[4096];
        data.AsSpan().Fill(0x5a);
        await device.WriteAsync(8192, data);
        var back = new byte[4096];
        await device.ReadAsync(8192, back);
        Assert.Equal(data, back);
        await BlockLayer.Get(Sys).DestroyDeviceAsync(name);
    }
}
