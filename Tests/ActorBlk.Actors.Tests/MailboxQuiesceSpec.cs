using ActorBlk.Actors.Tests.Support;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Topology;
using ActorBlk.Testing;
using Akka.Actor;
using Xunit;
using Xunit.Abstractions;

namespace ActorBlk.Actors.Tests;

/// <summary>
/// A quiesce in mailbox dispatch (blk-mq-semantics §9 <c>blk_mq_quiesce_queue</c>) waits for the
/// round in progress by asking the hardware queue's dispatcher. An outside audit raced an
/// nr_requests write with supervision stopping the driver actor (the dispatcher) to reopen it: the
/// ask was never answered, failed after the drain timeout, and the quiesce depth it had raised was
/// never lowered, so the queue never dispatched again. A dead dispatcher runs no round; the wait
/// moves on to the dispatcher set in its place, and a quiesce that fails is not held.
/// </summary>
public sealed class MailboxQuiesceSpec(ITestOutputHelper output) : Akka.TestKit.Xunit2.TestKit(Configs.Simulated, output: output)
{
    private static readonly TimeSpan Liveness = TimeSpan.FromSeconds(30);

    private (MailboxRig Rig, Akka.TestKit.TestProbe Dispatcher) Rig()
    {
        var rig = new MailboxRig(new ScriptedDriver(), CpuTopology.Simulated(2), new QueueOptions { MergePolicy = MergePolicy.Off });
        var dispatcher = CreateTestProbe();
        rig.Start([.. Enumerable.Range(0, 2).Select(_ => CreateTestProbe().Ref)], [dispatcher.Ref]);
        return (rig, dispatcher);
    }

    [Fact]
    public async Task A_live_dispatcher_answers_the_wait()
    {
        var (rig, dispatcher) = Rig();
        var wait = rig.Runtime.WaitDispatchIdleAsync(rig.Queue.HardwareContexts[0]);
        await dispatcher.ExpectMsgAsync<HardwareQueue.WaitIdle>();
        Assert.False(wait.IsCompleted);
        dispatcher.Reply(HardwareQueue.DispatchIdle.Instance);
        await wait.WaitAsync(Liveness);
    }

    [Fact]
    public async Task A_dispatcher_that_dies_ends_the_wait_at_once()
    {
        // The rig's ask timeout is 5 s: before, the wait failed with AskTimeoutException then.
        var (rig, dispatcher) = Rig();
        var wait = rig.Runtime.WaitDispatchIdleAsync(rig.Queue.HardwareContexts[0]);
        await dispatcher.ExpectMsgAsync<HardwareQueue.WaitIdle>();
        Sys.Stop(dispatcher.Ref);
        await wait.WaitAsync(Liveness);

        // Already dead when asked: the same.
        await rig.Runtime.WaitDispatchIdleAsync(rig.Queue.HardwareContexts[0]).WaitAsync(Liveness);
    }

    [Fact]
    public async Task A_wait_on_a_dispatcher_that_died_moves_to_its_successor()
    {
        var (rig, dispatcher) = Rig();
        var wait = rig.Runtime.WaitDispatchIdleAsync(rig.Queue.HardwareContexts[0]);
        await dispatcher.ExpectMsgAsync<HardwareQueue.WaitIdle>();

        // Supervision sets the successor (the hardware-queue actor, or a reopened driver) and the
        // old one dies: the successor may be in a round, so it is asked in turn.
        var successor = CreateTestProbe();
        rig.Runtime.SetDispatcher(0, successor.Ref);
        await successor.ExpectMsgAsync<HardwareQueue.Run>();
        Sys.Stop(dispatcher.Ref);
        await successor.ExpectMsgAsync<HardwareQueue.WaitIdle>(Liveness);
        Assert.False(wait.IsCompleted);
        successor.Reply(HardwareQueue.DispatchIdle.Instance);
        await wait.WaitAsync(Liveness);
    }

    [Fact]
    public async Task A_quiesce_whose_wait_fails_is_not_held()
    {
        // The dispatcher never answers and never dies: the ask times out (5 s in the rig). The
        // failed quiesce lowers the depth it raised, so the queue dispatches again.
        var (rig, dispatcher) = Rig();
        await Assert.ThrowsAsync<AskTimeoutException>(() => rig.Queue.QuiesceAsync().WaitAsync(Liveness));
        Assert.False(rig.Queue.IsQuiesced);
    }
}
