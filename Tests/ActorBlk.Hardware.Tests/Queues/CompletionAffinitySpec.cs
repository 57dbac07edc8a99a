using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;
using ActorBlk.Testing;
using ActorBlk.Hardware.Topology;
using Xunit;

namespace ActorBlk.Hardware.Tests.Queues;

/// <summary>
/// blk-mq-semantics §6 on a simulated 8-CPU, 2-socket machine: CPUs 0-3 share one last-level
/// cache, CPUs 4-7 the other.
/// </summary>
public sealed class CompletionAffinitySpec
{
    private static readonly CpuTopology TwoSockets = CpuTopology.Simulated(8, sockets: 2);

    private static (RequestQueue Queue, ManualRuntime Runtime, ScriptedDriver Driver) Create(CompletionAffinity affinity, CpuTopology? topology = null)
    {
        var driver = new ScriptedDriver(pollable: true);
        var (queue, runtime) = TestQueues.Create(driver, topology: topology ?? TwoSockets, pollQueues: 1,
            options: new QueueOptions { RqAffinity = affinity, IoPoll = true, MergePolicy = MergePolicy.Off });
        return (queue, runtime, driver);
    }

    private static Request DispatchOne(RequestQueue queue, ManualRuntime runtime, ScriptedDriver driver, int submitCpu)
    {
        TestQueues.Submit(queue, BlockOp.Read, 0, 8, submitCpu);
        runtime.RunRound();
        var rq = driver.InFlight.Single();
        driver.InFlight.Clear();
        return rq;
    }

    private static void CompleteOn(int cpu, Request rq)
    {
        using var bind = CurrentCpu.Bind(cpu);
        Assert.True(rq.Complete(BlockStatus.Ok));
    }

    [Fact]
    public void Default_is_1()
    {
        Assert.Equal(CompletionAffinity.CacheGroup, new QueueOptions().RqAffinity);
    }

    [Fact]
    public void Affinity_1_redirects_when_the_cpus_do_not_share_a_cache()
    {
        // §6 item 6: submit on CPU 3, completion on CPU 5 (other LLC) -> runs on CPU 3.
        var (queue, runtime, driver) = Create(CompletionAffinity.CacheGroup);
        CompleteOn(5, DispatchOne(queue, runtime, driver, submitCpu: 3));

        Assert.Equal([3], runtime.Redirected.Select(r => r.Cpu));
    }

    [Fact]
    public void Affinity_1_completes_in_place_within_a_cache_group()
    {
        var (queue, runtime, driver) = Create(CompletionAffinity.CacheGroup);
        CompleteOn(1, DispatchOne(queue, runtime, driver, submitCpu: 3));

        Assert.Empty(runtime.Redirected);
        Assert.Equal(1, queue.SoftwareContexts[3].CompletedSync);
    }

    [Fact]
    public void Affinity_2_always_redirects_to_the_submitting_cpu()
    {
        var (queue, runtime, driver) = Create(CompletionAffinity.SubmittingCpu);
        CompleteOn(1, DispatchOne(queue, runtime, driver, submitCpu: 3));

        Assert.Equal([3], runtime.Redirected.Select(r => r.Cpu));
    }

    [Fact]
    public void Affinity_2_does_not_redirect_when_already_there()
    {
        var (queue, runtime, driver) = Create(CompletionAffinity.SubmittingCpu);
        CompleteOn(3, DispatchOne(queue, runtime, driver, submitCpu: 3));

        Assert.Empty(runtime.Redirected);
    }

    [Fact]
    public void Affinity_0_completes_where_reaped()
    {
        var (queue, runtime, driver) = Create(CompletionAffinity.Anywhere);
        CompleteOn(5, DispatchOne(queue, runtime, driver, submitCpu: 3));

        Assert.Empty(runtime.Redirected);
    }

    [Fact]
    public void No_redirect_to_an_offline_submitter()
    {
        var (queue, runtime, driver) = Create(CompletionAffinity.SubmittingCpu);
        var rq = DispatchOne(queue, runtime, driver, submitCpu: 3);
        queue.TagSet.Remap(TwoSockets.WithOnline(3, online: false));

        CompleteOn(5, rq);

        Assert.Empty(runtime.Redirected);
    }

    [Fact]
    public void Polled_requests_complete_in_the_polling_caller_whatever_the_affinity()
    {
        // §15 "polled completion": always local.
        var (queue, runtime, _) = Create(CompletionAffinity.SubmittingCpu);
        var task = TestQueues.Submit(queue, BlockOp.Read, 0, 8, cpu: 3, flags: RequestFlags.Polled);
        runtime.RunRound(hctx: 1);

        using (CurrentCpu.Bind(6))
        {
            Assert.True(task.IsCompleted == false);
            Assert.Equal(1, queue.Driver.Poll(queue.HardwareContexts[1]));
        }

        Assert.True(task.IsCompletedSuccessfully);
        Assert.Empty(runtime.Redirected);
    }

    [Fact]
    public void A_completion_is_processed_exactly_once()
    {
        var (queue, runtime, driver) = Create(CompletionAffinity.CacheGroup);
        var rq = DispatchOne(queue, runtime, driver, submitCpu: 0);
        var generation = rq.Generation;

        Assert.True(rq.Complete(BlockStatus.Ok, generation));
        Assert.False(rq.Complete(BlockStatus.IoError, generation));
        Assert.False(rq.End(BlockStatus.IoError));
        Assert.Equal(1, queue.SoftwareContexts[0].CompletedSync);
    }
}
