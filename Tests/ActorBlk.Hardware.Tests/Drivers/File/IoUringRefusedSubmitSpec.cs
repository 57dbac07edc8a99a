using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers.File;
using ActorBlk.Hardware.Interop;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;
using ActorBlk.Hardware.Topology;
using ActorBlk.Testing;
using Xunit;

namespace ActorBlk.Hardware.Tests.Drivers.File;

/// <summary>
/// A submission the kernel refuses (<c>io_uring_enter</c> returning EAGAIN: short of memory, or
/// EBUSY: it wants completions reaped first) leaves its entries in the ring, and they still reach
/// the kernel without any further I/O, in both dispatch modes. The refusal is injected
/// (<see cref="IoUringEngine.InjectSubmitFailures"/>): the entries are published and the enter
/// fails, as the kernel's refusal leaves them.
/// </summary>
public sealed class IoUringRefusedSubmitSpec : IDisposable
{
    private static readonly TimeSpan Liveness = TimeSpan.FromSeconds(30);

    private readonly TempDirectory _dir = new("actorblk-refused-submit");
    private readonly BlockSoftIrq _softIrq = new(2);

    public void Dispose()
    {
        _softIrq.Dispose();
        _dir.Dispose();
    }

    // Found by a review: in mailbox dispatch the actor submits only in Queue and Commit, and the
    // reaper thread only waited, submitting nothing; a lone request whose submission was refused
    // stayed in the ring until the next I/O, which never came (its timeout re-arms for the file
    // device, so it waited for ever, and so did a teardown's Abandon). Now the reaper submits
    // what the actor's submission left, with its wait. On the old code the read never completes
    // here (the wait below times out).
    [Theory]
    [InlineData(LibC.EAGAIN)]
    [InlineData(LibC.EBUSY)]
    public async Task Mailbox_dispatch_a_lone_request_whose_submission_was_refused_completes_without_further_io(int errno)
    {
        using var driver = new FileBlockDriver(
            new FileBlockOptions { Path = _dir.File($"mailbox{errno}.img"), SizeBytes = 1 << 20, Engine = IoEngine.IoUring, Direct = false },
            $"refused{errno}");
        var (queue, runtime) = TestQueues.Create(driver, cpus: 2, depth: 8, options: new QueueOptions { MergePolicy = MergePolicy.Off }, name: $"refused{errno}", mode: DispatchMode.Mailbox);
        var hctx = queue.HardwareContexts[0];

        // As the driver actor does before its first batch.
        driver.InitHardwareContext(hctx);
        try
        {
            var engine = Assert.IsType<IoUringEngine>(hctx.DriverData);
            Assert.False(hctx.HasDispatchThread);
            Assert.Contains("reaped by its own thread", engine.Details, StringComparison.Ordinal);

            engine.InjectSubmitFailures(1, errno);
            var read = TestQueues.Submit(queue, BlockOp.Read, 0, 8).AsTask();

            // The actor's round: the request is prepared and its submission refused.
            Assert.Equal(DispatchDecision.Idle, runtime.RunRound());
            Assert.Equal(0, engine.InjectedSubmitFailures);
            Assert.Equal(0, engine.Submitted);

            // Nothing else is submitted, committed or dispatched from here on.
            Assert.Equal(BlockStatus.Ok, await read.WaitAsync(Liveness));
            Assert.Equal(1, engine.WaitSubmitted);
            Assert.Equal(0, engine.Submitted);
            Assert.Equal(0, engine.Outstanding);
            Assert.Equal(0, hctx.Tags.InUse);
        }
        finally
        {
            driver.ExitHardwareContext(hctx);
        }
    }

    // Ring dispatch already had no such gap (the loop's next reap or wait submits what is left,
    // and it always comes to one); this holds it, with the refusal repeated on the loop's wait
    // too, where the loop now waits a short while for completions instead of spinning.
    [Theory]
    [InlineData(LibC.EAGAIN)]
    [InlineData(LibC.EBUSY)]
    public async Task Ring_dispatch_a_lone_request_whose_submissions_were_refused_completes_without_further_io(int errno)
    {
        var device = DeviceBuilder.CreateRingDevice(
            new DeviceOptions
            {
                Name = $"refusedring{errno}",
                Driver = "file",
                Path = _dir.File($"ring{errno}.img"),
                Size = 1 << 20,
                Engine = IoEngine.IoUring,
                Direct = false,
                SubmitQueues = 1,
                HwQueueDepth = 8,
            },
            CpuTopology.Simulated(2),
            _softIrq);
        try
        {
            // The engine exists once the dispatch thread ran.
            await device.WriteAsync(0, new byte[4096]);
            var engine = Assert.IsType<IoUringEngine>(device.Queue.HardwareContexts[0].DriverData);

            engine.InjectSubmitFailures(3, errno);
            var read = device.ReadAsync(0, new byte[4096], cpu: 0).AsTask();

            await read.WaitAsync(Liveness);
            Assert.Equal(0, engine.InjectedSubmitFailures);
            Assert.Equal(0, device.Queue.HardwareContexts[0].Tags.InUse);
        }
        finally
        {
            await device.DisposeAsync();
        }
    }
}
