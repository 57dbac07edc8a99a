using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;
using ActorBlk.Hardware.Tests.Nbd;
using ActorBlk.Hardware.Topology;
using ActorBlk.Testing;
using Xunit;

namespace ActorBlk.Hardware.Tests.Drivers;

/// <summary>
/// The fault-injecting driver, after null_blk's fault injection (blk-mq-semantics §12): each kind
/// of fault does what the block layer must survive, and a seed makes the faults repeat exactly.
/// </summary>
public sealed class FaultInjectionDriverSpec
{
    private static (RequestQueue Queue, ManualRuntime Runtime, ScriptedDriver Inner, FaultInjectionDriver Faulty) Create(FaultInjectionOptions options)
    {
        var inner = new ScriptedDriver { CompleteInline = true };
        var faulty = new FaultInjectionDriver(inner, options);
        var (queue, runtime) = TestQueues.Create(faulty, depth: 64, options: new QueueOptions { MergePolicy = MergePolicy.Off });
        return (queue, runtime, inner, faulty);
    }

    // Submits the requests one at a time and dispatches each until the queue has nothing staged;
    // the fate of each is its status, or null while it is in flight (its completion was lost).
    private static List<BlockStatus?> Run(RequestQueue queue, ManualRuntime runtime, int count)
    {
        var fates = new List<BlockStatus?>();
        for (var i = 0; i < count; i++)
        {
            var task = TestQueues.Submit(queue, i % 2 == 0 ? BlockOp.Read : BlockOp.Write, i * 8L % 4096, 8);
            while (queue.HardwareContexts[0].HasWork)
            {
                runtime.RunRound();
            }

            fates.Add(task.IsCompleted ? task.Result : null);
        }

        return fates;
    }

    private static FaultInjectionOptions Everything(int seed) =>
        new() { ErrorRate = 0.2, ResourceRate = 0.2, TimeoutRate = 0.1, LatencyRate = 0.05, Latency = TimeSpan.Zero, Seed = seed };

    [Fact]
    public void The_same_seed_injects_the_same_faults()
    {
        var (q1, rt1, _, f1) = Create(Everything(42));
        var (q2, rt2, _, f2) = Create(Everything(42));
        var (q3, rt3, _, _) = Create(Everything(43));

        var first = Run(q1, rt1, 40);
        var second = Run(q2, rt2, 40);
        var other = Run(q3, rt3, 40);

        Assert.Equal(first, second);
        Assert.NotEqual(first, other);
        Assert.Equal(f1.Injected.Errors, f2.Injected.Errors);
        Assert.Equal(f1.Injected.Resource, f2.Injected.Resource);
        Assert.Contains(first, s => s == BlockStatus.IoError);
        Assert.Contains(first, s => s is null);
        Assert.Contains(first, s => s == BlockStatus.Ok);
    }

    // The generator's seed was HashCode.Combine(seed, queue index), which .NET randomises per
    // process: a seed repeated its faults within one process only (the spec above), and a bench
    // run with --fault-seed=3 lost no completion about one run in 6,000, failing BenchSpec's
    // check that timeouts happened. Hardware queue 0 now draws from new Random(seed), the same
    // sequence in every process.
    [Fact]
    public void A_seed_gives_the_same_faults_in_every_process()
    {
        var (queue, runtime, _, _) = Create(new FaultInjectionOptions { ErrorRate = 0.5, Seed = 42 });
        var random = new Random(42);
        var expected = Enumerable.Range(0, 64).Select(_ => (BlockStatus?)(random.NextDouble() < 0.5 ? BlockStatus.IoError : BlockStatus.Ok)).ToList();

        Assert.Equal(expected, Run(queue, runtime, 64));
    }

    // Rates that add up to 1 in decimal were refused when binary rounding put their sum a hair
    // above it (0.2 + 0.4 + 0.3 + 0.1 = 1.0000000000000002; a review). A sum really above 1 still is.
    [Theory]
    [InlineData(0.2, 0.4, 0.3, 0.1, true)]
    [InlineData(0.7, 0.2, 0.0, 0.1, true)]
    [InlineData(0.3, 0.3, 0.3, 0.1, true)]
    [InlineData(0.5, 0.5, 0.0, 1e-6, false)]
    public void Rates_that_add_up_to_one_are_taken_despite_binary_rounding(double error, double resource, double timeout, double latency, bool valid)
    {
        var options = new FaultInjectionOptions { ErrorRate = error, ResourceRate = resource, TimeoutRate = timeout, LatencyRate = latency };

        if (valid)
        {
            options.Validate();
        }
        else
        {
            Assert.Contains("add up to more than 1", Assert.Throws<ArgumentOutOfRangeException>(options.Validate).Message, StringComparison.Ordinal);
        }
    }

    [Fact]
    public void Injected_errors_complete_with_an_io_error_without_reaching_the_device()
    {
        var (queue, runtime, inner, faulty) = Create(new FaultInjectionOptions { ErrorRate = 1 });

        Assert.All(Run(queue, runtime, 10), s => Assert.Equal(BlockStatus.IoError, s));
        Assert.Empty(inner.Calls);
        Assert.Equal(10, faulty.Injected.Errors);
        Assert.Equal(0, queue.HardwareContexts[0].Tags.InUse);
    }

    [Fact]
    public void Resource_refusals_are_dispatched_again_until_they_go_through()
    {
        var (queue, runtime, inner, faulty) = Create(new FaultInjectionOptions { ResourceRate = 0.5, Seed = 5 });

        Assert.All(Run(queue, runtime, 50), s => Assert.Equal(BlockStatus.Ok, s));
        Assert.Equal(50, inner.Calls.Count);
        Assert.True(faulty.Injected.Resource > 0);
        Assert.Equal(50 + faulty.Injected.Resource, faulty.Requests);
    }

    [Fact]
    public async Task A_lost_completion_times_out_and_is_retried_until_it_fails_with_timeout()
    {
        // §5: the timeout handler hands the request to the retry rule (5 retries by default).
        var (queue, runtime, _, faulty) = Create(new FaultInjectionOptions { TimeoutRate = 1 });
        var hctx = queue.HardwareContexts[0];
        var task = TestQueues.Submit(queue, BlockOp.Read, 0, 8);

        for (var attempt = 0; attempt <= RequestQueue.DefaultMaxRetries; attempt++)
        {
            runtime.RunRound();
            Assert.False(task.IsCompleted);
            var scan = hctx.ScanTimeouts(queue.Clock.NowMilliseconds + queue.IoTimeoutMs + 1, faulty);
            Assert.Equal(1, scan.Expired);
        }

        // Failed by the handler, it ends apart on the thread pool (HardwareContext's scan).
        Assert.Equal(BlockStatus.Timeout, await task.AsTask().WaitAsync(TimeSpan.FromSeconds(60)));
        Assert.Equal(RequestQueue.DefaultMaxRetries + 1, faulty.Injected.Lost);
        await Condition.EventuallyAsync(() => hctx.Tags.InUse == 0, "the tag back");
    }

    [Fact]
    public void Latency_spikes_stall_but_complete()
    {
        var (queue, runtime, inner, faulty) = Create(new FaultInjectionOptions { LatencyRate = 1, Latency = TimeSpan.FromMilliseconds(1) });

        Assert.All(Run(queue, runtime, 5), s => Assert.Equal(BlockStatus.Ok, s));
        Assert.Equal(5, faulty.Injected.Stalls);
        Assert.Equal(5, inner.Calls.Count);
        Assert.True(faulty.Features.HasFlag(DriverFeatures.Blocking));
    }

    [Fact]
    public void A_transient_crash_every_n_requests_is_a_device_error()
    {
        var (queue, runtime, _, faulty) = Create(new FaultInjectionOptions { CrashAfter = 3 });
        var hctx = queue.HardwareContexts[0];
        for (var i = 0; i < 3; i++)
        {
            TestQueues.Submit(queue, BlockOp.Read, i * 8L, 8);
        }

        Assert.Equal(DispatchDecision.Faulted, runtime.RunRound());
        var error = Assert.IsType<BlockDeviceErrorException>(hctx.LastFault);
        Assert.False(error.DeviceGone);
        Assert.Equal(1, faulty.Injected.Crashes);
        Assert.False(faulty.IsGone);

        // The request that hit the crash was left for the block layer: staged again, not lost.
        Assert.Equal(1, hctx.PendingCount);
    }

    [Fact]
    public void A_gone_device_refuses_everything_until_it_reopens_after_the_configured_failures()
    {
        var (queue, runtime, _, faulty) = Create(new FaultInjectionOptions { CrashAfter = 1, CrashIsGone = true, ReopenFailures = 2 });
        TestQueues.Submit(queue, BlockOp.Read, 0, 8);

        Assert.Equal(DispatchDecision.Faulted, runtime.RunRound());
        Assert.True(Assert.IsType<BlockDeviceErrorException>(queue.HardwareContexts[0].LastFault).DeviceGone);
        Assert.True(faulty.IsGone);

        Assert.Throws<BlockDeviceErrorException>(faulty.Reopen);
        Assert.Throws<BlockDeviceErrorException>(faulty.Reopen);
        faulty.Reopen();
        Assert.False(faulty.IsGone);
    }

    // A review: the wrapper said Resettable and Reopenable over any driver, so a crash injected
    // over the file device let the block layer take back requests whose entries the kernel still
    // held (requeued onto the same command, or failed and their buffers handed back). It is
    // resettable only when the wrapped driver is, and a reopen over one that is not waits until
    // the device answered what it was handed.
    [Fact]
    public void Over_a_driver_that_cannot_abandon_its_requests_a_reopen_waits_until_the_device_answered_them()
    {
        Assert.True(new FaultInjectionDriver(new ScriptedDriver(extra: DriverFeatures.Resettable), new FaultInjectionOptions { CrashAfter = 1 })
            .Features.HasFlag(DriverFeatures.Resettable));
        var inner = new ScriptedDriver();
        var faulty = new FaultInjectionDriver(inner, new FaultInjectionOptions { CrashAfter = 3, CrashIsGone = true })
        {
            InnerDrainLimit = TimeSpan.FromMilliseconds(50),
        };
        var (queue, runtime) = TestQueues.Create(faulty, depth: 64, options: new QueueOptions { MergePolicy = MergePolicy.Off });
        Assert.False(faulty.Features.HasFlag(DriverFeatures.Resettable));
        Assert.True(faulty.Features.HasFlag(DriverFeatures.Reopenable));

        var held = Enumerable.Range(0, 2).Select(i => TestQueues.Submit(queue, BlockOp.Write, i * 128L, 8)).ToArray();
        runtime.RunRound();
        var started = inner.InFlight.Select(rq => (Rq: rq, rq.Generation)).ToArray();
        Assert.Equal(2, started.Length);
        TestQueues.Submit(queue, BlockOp.Write, 1024, 8);
        Assert.Equal(DispatchDecision.Faulted, runtime.RunRound());
        Assert.True(faulty.IsGone);

        // The device still holds both: the reopen fails rather than let them be taken back.
        var error = Assert.Throws<BlockDeviceErrorException>(faulty.Reopen);
        Assert.True(error.DeviceGone);
        Assert.Contains("still holds 2 request(s)", error.Message);
        Assert.True(faulty.IsGone);
        Assert.Equal(0, inner.ResetCalls);

        // Once it answered them (each exactly once, under the generation it was started with),
        // the reopen goes through and takes nothing of theirs back.
        Assert.All(started, s => Assert.True(s.Rq.Complete(BlockStatus.Ok, s.Generation)));
        Assert.All(held, t => Assert.Equal(BlockStatus.Ok, t.Result));
        faulty.Reopen();
        Assert.False(faulty.IsGone);
        Assert.Equal((0, 0), queue.ReclaimInFlight(BlockStatus.IoError));
    }

    [Fact]
    public void A_reopen_waiting_for_the_wrapped_driver_gives_up_at_once_when_the_device_is_removed()
    {
        var inner = new ScriptedDriver();
        var faulty = new FaultInjectionDriver(inner, new FaultInjectionOptions { CrashAfter = 2, CrashIsGone = true });
        var (queue, runtime) = TestQueues.Create(faulty, depth: 64);
        TestQueues.Submit(queue, BlockOp.Write, 0, 8);
        runtime.RunRound();
        TestQueues.Submit(queue, BlockOp.Write, 1024, 8);
        Assert.Equal(DispatchDecision.Faulted, runtime.RunRound());

        faulty.CancelRecovery();

        var error = Assert.Throws<BlockDeviceErrorException>(faulty.Reopen);
        Assert.True(error.DeviceGone);
        Assert.Contains("being removed", error.Message);
        Assert.True(inner.RecoveryCancelled);
        Assert.Equal(1, inner.CompleteAll());
    }

    // NBD block status through fault injection: the wrapper hid the wrapped driver's allocation
    // map, so a memory-backed null device with any fault_* key answered one data extent. No fault
    // changes what a read that succeeds returns, so the map shows through.
    [Fact]
    public async Task The_wrapped_drivers_allocation_map_shows_through()
    {
        await using var devices = new RingDevices(2);
        var faults = new FaultInjectionOptions { ResourceRate = 0.2, LatencyRate = 0.1, Latency = TimeSpan.Zero };
        var device = devices.Create(new DeviceOptions { Name = "f0", Size = 1 << 20, MemoryBacked = true, Faults = faults }, CpuTopology.Simulated(2));
        await device.WriteAsync(8192, new byte[4096]);

        var map = IAllocationMap.Of(device);
        Assert.IsType<FaultInjectionDriver>(map);
        Assert.True(map.TryGetExtent(0, 1 << 20, out var length, out var data));
        Assert.Equal((8192L, false), (length, data));
        Assert.True(map.TryGetExtent(8192, (1 << 20) - 8192, out length, out data));
        Assert.Equal((4096L, true), (length, data));
    }

    // Faults that fail some reads (errors, lost completions, crashes) leave a hole reading as
    // zeroes whenever it reads at all: the map shows through. When no read can succeed (refusals,
    // errors and lost completions add up to 1, or a crash at every request) a hole does not read
    // as zeroes, it does not read: the device cannot tell, which is data.
    [Theory]
    [InlineData(0.2, 0.2, 0.1, 0, true)]
    [InlineData(0, 0, 0, 2, true)]
    [InlineData(0.99, 0, 0, 0, true)]
    [InlineData(1, 0, 0, 0, false)]
    [InlineData(0.5, 0.25, 0.25, 0, false)]
    [InlineData(0.6, 0.3, 0.1, 0, false)] // 0.3 + 0.6 + 0.1 = 0.9999999999999999 in binary
    [InlineData(0, 1, 0, 0, false)]
    [InlineData(0, 0, 1, 0, false)]
    [InlineData(0, 0, 0, 1, false)]
    public void The_allocation_map_is_hidden_only_when_no_read_can_succeed(double errorRate, double resourceRate, double timeoutRate, long crashAfter, bool shown)
    {
        var faults = new FaultInjectionOptions { ErrorRate = errorRate, ResourceRate = resourceRate, TimeoutRate = timeoutRate, CrashAfter = crashAfter };
        using var driver = DeviceBuilder.CreateDriver(new DeviceOptions { Name = "f1", Size = 1 << 20, MemoryBacked = true, Faults = faults });
        var faulty = Assert.IsType<FaultInjectionDriver>(driver);
        Assert.Equal(shown, faulty.ReadsCanSucceed);

        var map = Assert.IsAssignableFrom<IAllocationMap>(driver);
        Assert.Equal(shown, map.TryGetExtent(4096, 8192, out var length, out var data));
        if (shown)
        {
            Assert.Equal((8192L, false), (length, data));
        }
    }

    // Left by an earlier session: a device made gone by an injected crash (fault_gone) answered
    // its wrapped driver's holes, which read as zeroes, though no read of it could succeed until
    // it reopened; a client would skip them as zeroes instead of meeting the error. While it is
    // gone it cannot tell (data), and its map shows through again once it has reopened.
    [Fact]
    public void A_gone_device_hides_its_allocation_map_until_it_reopens()
    {
        var faults = new FaultInjectionOptions { CrashAfter = 2, CrashIsGone = true, ReopenFailures = 1 };
        var driver = DeviceBuilder.CreateDriver(new DeviceOptions { Name = "f2", Size = 1 << 20, MemoryBacked = true, Faults = faults });
        var faulty = Assert.IsType<FaultInjectionDriver>(driver);
        var (queue, runtime) = TestQueues.Create(faulty, depth: 64, options: new QueueOptions { MergePolicy = MergePolicy.Off });
        IAllocationMap map = faulty;
        Assert.True(map.TryGetExtent(4096, 8192, out var length, out var data));
        Assert.Equal((8192L, false), (length, data));

        TestQueues.Submit(queue, BlockOp.Read, 0, 8);
        TestQueues.Submit(queue, BlockOp.Read, 8, 8);
        Assert.Equal(DispatchDecision.Faulted, runtime.RunRound());
        Assert.True(faulty.IsGone);
        Assert.False(map.TryGetExtent(4096, 8192, out _, out data));
        Assert.True(data);

        Assert.Throws<BlockDeviceErrorException>(faulty.Reopen);
        Assert.False(map.TryGetExtent(4096, 8192, out _, out _));
        faulty.Reopen();
        Assert.False(faulty.IsGone);
        Assert.True(map.TryGetExtent(4096, 8192, out length, out data));
        Assert.Equal((8192L, false), (length, data));
    }

    [Theory]
    [InlineData(-0.1, 0, 0)]
    [InlineData(1.5, 0, 0)]
    [InlineData(double.NaN, 0, 0)]
    [InlineData(0.6, 0.6, 0)]
    [InlineData(0, 0, -1)]
    public void Bad_options_are_refused(double errorRate, double resourceRate, long crashAfter)
    {
        var options = new FaultInjectionOptions { ErrorRate = errorRate, ResourceRate = resourceRate, CrashAfter = crashAfter };

        Assert.Throws<ArgumentOutOfRangeException>(() => new FaultInjectionDriver(new ScriptedDriver(), options));
    }
}
