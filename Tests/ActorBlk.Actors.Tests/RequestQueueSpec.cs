using ActorBlk.Actors.Tests.Support;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Requests;
using Akka.Actor;
using Akka.TestKit;
using Xunit;
using Xunit.Abstractions;

namespace ActorBlk.Actors.Tests;

/// <summary>The request-queue actor's life cycle, with probes standing in for the tag set and topology actors.</summary>
public sealed class RequestQueueSpec : Akka.TestKit.Xunit2.TestKit
{
    private readonly TestProbe _tagSet;
    private readonly TestProbe _topology;
    private readonly BlockDevice _device;
    private readonly IActorRef _queue;

    public RequestQueueSpec(ITestOutputHelper output)
        : base(Configs.Simulated, output: output)
    {
        _tagSet = CreateTestProbe();
        _topology = CreateTestProbe();
        var options = new DeviceOptions { Name = "rq0", Size = 1 << 20, MemoryBacked = true };
        var layer = BlockLayer.Get(Sys);
        var driver = DeviceBuilder.CreateDriver(options);
        var queue = DeviceBuilder.CreateQueue(options, DeviceBuilder.CreateTagSet(options, driver, layer.Topology), driver);
        _device = new BlockDevice(queue);
        layer.Track(_device, options.Dispatch);
        _queue = ChildActorOf(RequestQueueProtocol.Props(_device, _tagSet.Ref, _topology.Ref, layer, options));
    }

    private async Task BecomeReady()
    {
        var join = await _tagSet.ExpectMsgAsync<TagSetProtocol.Join>();
        var register = await _topology.ExpectMsgAsync<CpuTopologyProtocol.Register>();
        Assert.Same(_device.Queue, join.Queue);
        Assert.Same(_device.Queue, register.Queue);
        _tagSet.Reply(new TagSetProtocol.Joined("rq0", false, 1));
        _topology.Reply(new CpuTopologyProtocol.Registered("rq0", 1));
        Assert.Equal("rq0", (await ExpectMsgAsync<RequestQueueProtocol.Ready>()).Name);
    }

    [Fact]
    public async Task Registers_with_its_tag_set_and_the_topology_then_reports_ready()
    {
        await BecomeReady();

        Assert.True(_device.Queue.IsRegistered);
        Assert.True(_device.Queue.Usage.IsPerCpu);
        _queue.Tell(RequestQueueProtocol.GetInfo.Instance);
        var info = await ExpectMsgAsync<RequestQueueProtocol.Info>();
        Assert.Equal("ring", info.Dispatch);
        Assert.Equal(1L << 20, info.Capacity);
    }

    [Fact]
    public async Task Io_sent_before_registration_completes_is_held_until_then()
    {
        _queue.Tell(new RequestQueueProtocol.Io(1, BlockOp.Write, 0, 512, new byte[512]));
        await ExpectNoMsgAsync(TimeSpan.FromMilliseconds(200));

        await BecomeReady();

        Assert.Equal(BlockStatus.Ok, (await ExpectMsgAsync<SoftwareContextProtocol.Completed>()).Status);
    }

    [Fact]
    public async Task Unregistering_leaves_topology_and_tag_set_then_stops()
    {
        await BecomeReady();
        Watch(_queue);
        await _device.WriteAsync(0, new byte[512]);

        _queue.Tell(RequestQueueProtocol.Unregister.Instance);
        _topology.Reply(await _topology.ExpectMsgAsync<CpuTopologyProtocol.Unregister>() is { } u ? new CpuTopologyProtocol.Unregistered(u.Queue.Name) : null!);
        var leave = await _tagSet.ExpectMsgAsync<TagSetProtocol.Leave>();
        _tagSet.Reply(new TagSetProtocol.Left("rq0", false, 0));

        Assert.Same(_device.Queue, leave.Queue);
        Assert.Equal(new RequestQueueProtocol.Unregistered("rq0", 0), await ExpectMsgAsync<RequestQueueProtocol.Unregistered>());
        await ExpectTerminatedAsync(_queue);
        Assert.True(_device.Queue.IsDying);
        Assert.Equal(BlockStatus.Offline, await _device.ExecuteAsync(BlockOp.Read, 0, 512, new byte[512]));
    }
}
