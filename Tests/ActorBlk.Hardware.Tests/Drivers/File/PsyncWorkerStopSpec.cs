using System.Reflection;
using ActorBlk.Hardware.Drivers.File;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;
using ActorBlk.Testing;
using Xunit;

namespace ActorBlk.Hardware.Tests.Drivers.File;

/// <summary>
/// A request posted to a file engine's worker thread after the worker stopped completes at once
/// with <see cref="BlockStatus.Offline"/>, exactly once, and is no longer counted outstanding.
/// The io_uring engine's reaper can outlive the engine's 30 s drain limit (a disk that holds I/O
/// that long, the driver actor stopped first) and post a write-zeroes' zeroing fallback to the
/// worker its Dispose already stopped; before, the request sat in the worker's ring for ever,
/// counted outstanding, and <see cref="FileBlockDriver.Abandon"/> waited for it for ever. The
/// rule is the worker's, so it is shown on the psync engine's worker, stopped under it.
/// </summary>
public sealed class PsyncWorkerStopSpec : IDisposable
{
    private readonly TempDirectory _dir = new("actorblk-worker-stop");

    public void Dispose() => _dir.Dispose();

    // On the old code the write-zeroes stays pending after the round and the engine counts it
    // outstanding (the first assertion fails).
    [Fact]
    public async Task A_request_posted_after_the_worker_stopped_fails_Offline_at_once_and_is_not_outstanding()
    {
        using var driver = new FileBlockDriver(
            new FileBlockOptions { Path = _dir.File("stopped.img"), SizeBytes = 1 << 20, Engine = IoEngine.Psync, Direct = false },
            "stopped0");
        var (queue, runtime) = TestQueues.Create(driver, cpus: 2, depth: 8, options: new QueueOptions { MergePolicy = MergePolicy.Off }, name: "stopped0");
        var hctx = queue.HardwareContexts[0];
        driver.InitHardwareContext(hctx);
        try
        {
            var engine = Assert.IsType<PsyncEngine>(hctx.DriverData);

            // A request before the stop runs as ever.
            var before = TestQueues.Submit(queue, BlockOp.WriteZeroes, 0, 8).AsTask();
            runtime.RunRound();
            Assert.Equal(BlockStatus.Ok, await before.WaitAsync(TimeSpan.FromSeconds(30)));

            var worker = (PsyncWorker)typeof(PsyncEngine).GetField("_worker", BindingFlags.Instance | BindingFlags.NonPublic)!.GetValue(engine)!;
            worker.Dispose();
            worker.Dispose(); // idempotent

            var after = TestQueues.Submit(queue, BlockOp.WriteZeroes, 8, 8).AsTask();
            runtime.RunRound();

            // Completed on the posting thread, inside the round: nothing to wait for.
            Assert.True(after.IsCompleted);
            Assert.Equal(BlockStatus.Offline, await after);
            Assert.Equal(0, engine.Outstanding);
            Assert.Equal(0, worker.Outstanding);
            Assert.Equal(0, hctx.Tags.InUse);

            // Abandon counts it out: it returns at once.
            await Task.Run(driver.Abandon).WaitAsync(TimeSpan.FromSeconds(30));
        }
        finally
        {
            driver.ExitHardwareContext(hctx);
        }
    }
}
