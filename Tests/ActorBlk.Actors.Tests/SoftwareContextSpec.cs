using ActorBlk.Actors.Tests.Support;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;
using ActorBlk.Hardware.Topology;
using ActorBlk.Testing;
using Akka.Actor;
using Akka.TestKit;
using Xunit;
using Xunit.Abstractions;

namespace ActorBlk.Actors.Tests;


/// <summary>The software-context actor, with a probe standing in for its hardware queue's dispatcher.</summary>
public sealed class SoftwareContextSpec : Akka.TestKit.Xunit2.TestKit
{
    private readonly MailboxRig _rig;
    private readonly TestProbe _hctx;

    public SoftwareContextSpec(ITestOutputHelper output)
        : base(Configs.Simulated, output: output)
    {
        _rig = new MailboxRig(new ScriptedDriver(), CpuTopology.Simulated(4, sockets: 2),
            new QueueOptions { MergePolicy = MergePolicy.Off, RqAffinity = CompletionAffinity.SubmittingCpu });
        _hctx = CreateTestProbe();
        var contexts = _rig.Queue.SoftwareContexts.Select(c => Sys.ActorOf(SoftwareContextProtocol.Props(c, _rig.Device), $"ctx-{c.Cpu}")).ToArray();
        _rig.Start(contexts, [_hctx.Ref]);
    }

    // Staging kicks the dispatcher once; the request waits in the hardware queue's ring, where the
    // spec takes it as the dispatcher would.
    private async Task<Request> ExpectStaged()
    {
        await _hctx.ExpectMsgAsync<HardwareQueue.Run>();
        var batch = new Request[1];
        Assert.Equal(1, _rig.Queue.HardwareContexts[0].TakeBatch(batch));
        return batch[0];
    }

    [Fact]
    public async Task A_request_sent_to_a_context_is_built_on_its_cpu_and_staged_on_its_hardware_queue()
    {
        _rig.Contexts[2].Tell(new SoftwareContextProtocol.Submit(7, BlockOp.Read, 4096, 4096));

        var rq = await ExpectStaged();

        Assert.Equal(8, rq.Sector);
        Assert.Equal(8, rq.Sectors);
        Assert.Equal(2, rq.Ctx!.Cpu);
        Assert.Equal(1, _rig.Queue.SoftwareContexts[2].DispatchedSync);
    }

    [Fact]
    public async Task The_completion_is_redirected_to_the_context_and_replied_to_the_sender()
    {
        var data = Enumerable.Range(0, 512).Select(i => (byte)i).ToArray();
        _rig.Contexts[3].Tell(new SoftwareContextProtocol.Submit(11, BlockOp.Write, 0, 512, data));
        var rq = await ExpectStaged();

        // The "device" completes it from CPU 0; rq_affinity 2 sends the completion to CPU 3's actor.
        rq.Start();
        using (CurrentCpu.Bind(0))
        {
            Assert.True(rq.Complete(BlockStatus.Ok));
        }

        var completed = await ExpectMsgAsync<SoftwareContextProtocol.Completed>();
        Assert.Equal(11, completed.Id);
        Assert.Equal(BlockStatus.Ok, completed.Status);
        Assert.Equal(1, _rig.Queue.SoftwareContexts[3].CompletedAsync);

        // The reply is sent from the bio's call-back; the request's usage reference is dropped
        // when the call-back returns, on the completing thread.
        await AwaitConditionAsync(() => Task.FromResult(_rig.Queue.Usage.Count == 0), TimeSpan.FromSeconds(60), TimeSpan.FromMilliseconds(10));
    }

    [Fact]
    public async Task A_read_reply_carries_the_data()
    {
        _rig.Contexts[1].Tell(new SoftwareContextProtocol.Submit(5, BlockOp.Read, 0, 1024));
        var rq = await ExpectStaged();
        foreach (var bio in rq.Bios)
        {
            bio.Buffer.Span.Fill(0xAB);
        }

        rq.Start();
        rq.End(BlockStatus.Ok);

        var completed = await ExpectMsgAsync<SoftwareContextProtocol.Completed>();
        Assert.Equal(1024, completed.Data!.Length);
        Assert.All(completed.Data, b => Assert.Equal(0xAB, b));
    }

    [Fact]
    public async Task A_failed_io_replies_its_status_without_data()
    {
        _rig.Contexts[0].Tell(new SoftwareContextProtocol.Submit(9, BlockOp.Read, 0, 512));
        var rq = await ExpectStaged();
        rq.Start();
        rq.End(BlockStatus.Medium);

        var completed = await ExpectMsgAsync<SoftwareContextProtocol.Completed>();
        Assert.Equal(BlockStatus.Medium, completed.Status);
        Assert.Null(completed.Data);
    }

    [Theory]
    [InlineData(100L, 512, InvalidRequestReason.Misaligned)]
    [InlineData(0L, 0, InvalidRequestReason.ZeroLength)]
    [InlineData(1L << 40, 512, InvalidRequestReason.OutOfRange)]
    public async Task A_malformed_request_is_rejected_and_nothing_is_staged(long offset, int length, InvalidRequestReason reason)
    {
        _rig.Contexts[0].Tell(new SoftwareContextProtocol.Submit(3, BlockOp.Read, offset, length));

        var rejected = await ExpectMsgAsync<SoftwareContextProtocol.Rejected>();
        Assert.Equal(3, rejected.Id);
        Assert.Equal(reason, rejected.Reason);
        await _hctx.ExpectNoMsgAsync(TimeSpan.FromMilliseconds(200));
    }

    [Fact]
    public async Task A_write_whose_data_does_not_match_its_length_is_rejected()
    {
        _rig.Contexts[0].Tell(new SoftwareContextProtocol.Submit(4, BlockOp.Write, 0, 1024, new byte[512]));

        Assert.Equal(InvalidRequestReason.OutOfRange, (await ExpectMsgAsync<SoftwareContextProtocol.Rejected>()).Reason);
    }

    [Fact]
    public async Task Stats_report_the_contexts_counters()
    {
        _rig.Contexts[2].Tell(new SoftwareContextProtocol.Submit(1, BlockOp.Read, 0, 512));
        await ExpectStaged();

        _rig.Contexts[2].Tell(SoftwareContextProtocol.GetStats.Instance);

        var stats = await ExpectMsgAsync<SoftwareContextProtocol.Stats>();
        Assert.Equal(2, stats.Cpu);
        Assert.Equal(1, stats.DispatchedSync);
        Assert.Equal(0, stats.CompletedSync);
    }
}
