using System.Collections.Concurrent;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;
using ActorBlk.Hardware.Topology;
using ActorBlk.Host.Bench;
using Xunit;

namespace ActorBlk.Host.Tests;

/// <summary>
/// The bench's slots whose I/O completes inside another slot's submission on the same thread go
/// on in the order they completed (the kernel's <c>current->bio_list</c> is first in, first out).
/// Found from a mirror degraded onto a memory leg: every write of one slot completed inline, and
/// the slots whose completions had landed on its thread before it were never submitted again
/// while it ran (a stack put the last completion on top each time).
/// </summary>
public sealed class BenchInlineCompletionSpec
{
    private const int Block = 4096;

    [Fact]
    public async Task A_slot_that_always_completes_inline_does_not_starve_one_that_completed_on_its_thread()
    {
        var driver = new ReorderingDriver(64L << 20);
        var queue = RequestQueue.Allocate("reorder0", CpuTopology.Simulated(2));
        queue.InitializeBioBased(driver);
        queue.Register();
        await using var device = new BlockDevice(queue, d => new ValueTask(d.Queue.ShutdownAsync(TimeSpan.FromSeconds(30))));

        const int ios = 2048;
        var options = new BenchOptions { Pattern = IoPattern.RandWrite, IoDepth = 2, Size = (long)ios * Block, BlockSize = Block };
        var run = new BenchRun(options, device, CpuSet.Of(0, 1));
        var result = await run.RunAsync().WaitAsync(TimeSpan.FromSeconds(60));

        Assert.Equal(ios, result.Completed);
        Assert.Equal(2, driver.PerSlot.Count);

        // First in, first out, the two alternate (about 1,024 each); a stack served the one on top
        // until the run's size was used up, and the other submitted twice in all.
        var fewest = driver.PerSlot.Values.Min();
        Assert.True(fewest >= ios / 4, $"one slot submitted {fewest} of {ios} I/Os: {string.Join(", ", driver.PerSlot.Values)}");
    }

    // A time-based run waits for its jobs to start before the JIT warm-up (the command line's
    // default) and the ramp. Found by a review: a job started its slots one after another, each
    // going on with its next I/O, and on a device whose every I/O completes inside its submission
    // the first slot's loop never returned, so the job never counted as started, the window never
    // opened and the run never ended (`actorblk bench` over a mirror of irqmode=0 legs with
    // --runtime spun for ever and ignored SIGTERM). Every slot's first I/O now goes out first.
    [Fact]
    public async Task A_timed_run_with_a_warm_up_and_a_ramp_starts_every_slot_and_ends_on_a_device_that_completes_inline()
    {
        var driver = new ReorderingDriver(64L << 20) { HoldFirst = false };
        var queue = RequestQueue.Allocate("inline0", CpuTopology.Simulated(2));
        queue.InitializeBioBased(driver);
        queue.Register();
        await using var device = new BlockDevice(queue, d => new ValueTask(d.Queue.ShutdownAsync(TimeSpan.FromSeconds(30))));

        var options = new BenchOptions
        {
            Pattern = IoPattern.RandWrite, IoDepth = 4, BlockSize = Block, Size = 64L << 20,
            Runtime = TimeSpan.FromMilliseconds(300), JitWarmup = TimeSpan.FromMilliseconds(100), RampTime = TimeSpan.FromMilliseconds(100),
        };
        var run = new BenchRun(options, device, CpuSet.Of(0, 1));

        // The liveness bound of the await, not a timing claim: the old code never returned.
        var result = await run.RunAsync().WaitAsync(TimeSpan.FromSeconds(60));

        Assert.Equal(result.Submitted, result.Completed);
        Assert.Equal(0, result.Errors);
        Assert.Equal(4, driver.PerSlot.Count);
        Assert.All(driver.PerSlot.Values, n => Assert.True(n > 1, $"a slot submitted {n} I/O(s): {string.Join(", ", driver.PerSlot.Values)}"));
    }

    // Completes every bio inline, in its submission, except the first: that one is held until the
    // third submission, which ends it and then itself, both on the submitting thread.
    private sealed class ReorderingDriver(long bytes) : IBioDriver
    {
        private Bio? _held;
        private int _submissions;

        /// <summary>Submissions per slot (a slot's buffer is its own).</summary>
        public ConcurrentDictionary<Memory<byte>, int> PerSlot { get; } = new();

        public QueueLimits Limits { get; } = new() { LogicalBlockSize = Block, PhysicalBlockSize = Block, CapacitySectors = bytes >> Bio.SectorShift };

        public string Description => "completes inline, the first bio late";

        /// <summary>False: the first bio completes inline too, as every other.</summary>
        public bool HoldFirst { get; init; } = true;

        public void SubmitBio(RequestQueue queue, Bio bio)
        {
            PerSlot.AddOrUpdate(bio.Buffer, 1, static (_, n) => n + 1);
            switch (HoldFirst ? Interlocked.Increment(ref _submissions) : 0)
            {
                case 1:
                    _held = bio;
                    return;
                case 3:
                    queue.EndBio(Interlocked.Exchange(ref _held, null)!, BlockStatus.Ok);
                    break;
            }

            queue.EndBio(bio, BlockStatus.Ok);
        }

        public void Detach(RequestQueue queue)
        {
        }

        public void Dispose()
        {
        }
    }
}
