using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;
using ActorBlk.Testing;
using Xunit;

namespace ActorBlk.Hardware.Tests.Queues;

/// <summary>
/// Accounting in batches, the cost cuts of the null path: a dispatch round reads the clock once
/// (<see cref="BlockTime"/>, <c>blk_time_get_ns</c> with a plug's cached time) and a dispatch
/// loop adds its disk statistics to the per-CPU slots in batches (<see cref="DiskStats.EnterBatch"/>),
/// never losing a count and never leaving one unseen once the loop is idle.
/// </summary>
public sealed class AccountingBatchSpec
{
    private static readonly TimeSpan Liveness = TimeSpan.FromSeconds(30);

    // A read from a thread that holds no batch (the batch lives in the test thread's state, so
    // the test itself must not hop threads).
    private static T OnAnotherThread<T>(Func<T> read)
    {
        T result = default!;
        var thread = new Thread(() => result = read());
        thread.Start();
        thread.Join();
        return result;
    }

    [Fact]
    public void A_batch_holds_its_counts_until_flushed_and_then_adds_every_one()
    {
        var stats = new DiskStats(new ManualBlockClock(1000));
        Assert.True(stats.EnterBatch());
        try
        {
            var read = stats.Start(BlockOp.Read);
            var write = stats.Start(BlockOp.Write);
            stats.Done(BlockOp.Read, 8, read);
            Assert.Equal(3, stats.BatchPending);

            // Held by the thread: another thread does not see them yet.
            Assert.Equal(0UL, OnAnotherThread(stats.Read).ReadIos);
            Assert.Equal((0L, 0L), OnAnotherThread(stats.InFlight));
            Assert.Equal(3, stats.BatchPending);

            // The batching thread's own read adds its batch first: code that runs inside a round
            // (an awaiter's continuation, an end_io) sees what the round counted.
            var s = stats.Read();
            Assert.Equal(0, stats.BatchPending);
            Assert.Equal(1UL, s.ReadIos);
            Assert.Equal(8UL, s.ReadSectors);
            Assert.Equal((0L, 1L), stats.InFlight());

            stats.Done(BlockOp.Write, 16, write, BlockStatus.IoError);
        }
        finally
        {
            stats.ExitBatch(true);
        }

        // Ending the batch adds what it still held; errors are counted at once, as before.
        var end = stats.Read();
        Assert.Equal(1UL, end.WriteIos);
        Assert.Equal(16UL, end.WriteSectors);
        Assert.Equal(1, stats.Errors(BlockStatus.IoError));
        Assert.Equal((0L, 0L), stats.InFlight());
        Assert.Equal(0, stats.BatchPending);
    }

    [Fact]
    public void A_thread_that_already_batches_counts_another_disk_at_once()
    {
        // A stacked device's round inside another device's round: only the outer disk batches.
        var outer = new DiskStats(new ManualBlockClock());
        var inner = new DiskStats(new ManualBlockClock());
        Assert.True(outer.EnterBatch());
        try
        {
            Assert.False(inner.EnterBatch());
            inner.Done(BlockOp.Read, 8, inner.Start(BlockOp.Read));
            inner.ExitBatch(false);
            Assert.Equal(1UL, inner.Read().ReadIos);
            Assert.Equal(0, inner.BatchPending);

            outer.Done(BlockOp.Read, 8, outer.Start(BlockOp.Read));
            Assert.Equal(0UL, OnAnotherThread(outer.Read).ReadIos);
            Assert.Equal(2, outer.BatchPending); // its start and its completion
        }
        finally
        {
            outer.ExitBatch(true);
        }

        Assert.Equal(1UL, outer.Read().ReadIos);
    }

    [Fact]
    public void A_batch_reads_the_clock_once_and_a_blocked_or_ended_batch_reads_it_afresh()
    {
        var outside = BlockTime.Timestamp;
        var state = BlockTime.EnterBatch();
        long first;
        try
        {
            first = BlockTime.Timestamp;
            Assert.True(first >= outside);

            // However far the clock moves, the batch keeps its time...
            SpinUntilAfter(first);
            Assert.Equal(first, BlockTime.Timestamp);

            // ...and a nested batch shares it.
            var nested = BlockTime.EnterBatch();
            Assert.Equal(first, BlockTime.Timestamp);
            BlockTime.ExitBatch(nested);
            Assert.Equal(first, BlockTime.Timestamp);

            // A thread that blocked inside the batch reads afresh, once.
            BlockTime.Invalidate();
            var second = BlockTime.Timestamp;
            Assert.True(second > first);
            SpinUntilAfter(second);
            Assert.Equal(second, BlockTime.Timestamp);
        }
        finally
        {
            BlockTime.ExitBatch(state);
        }

        // Outside a batch every read is fresh.
        var now = BlockTime.Timestamp;
        Assert.True(now > first);
        SpinUntilAfter(now);
        Assert.True(BlockTime.Timestamp > now);
    }

    [Fact]
    public async Task A_dispatch_loop_counts_every_request_once_it_is_idle_and_when_it_stops()
    {
        // 2,000 reads completed inline on the loop's thread, each resubmitting the next from its
        // completion (as the bench does), so the loop runs rounds back to back and batches its
        // counts; once it parks, and once it stopped, every one of them is in the statistics.
        using var softIrq = new BlockSoftIrq(4);
        var (queue, runtime, driver) = TestQueues.CreateLoop(softIrq, "batch0");
        const int Total = 2_000;
        const int Chains = 8;
        try
        {
            var chains = Enumerable.Range(0, Chains).Select(c => Chain(queue, c, Total / Chains)).ToArray();
            await Task.WhenAll(chains).WaitAsync(Liveness);
            var parks = runtime.Parks;
            runtime.Kick(queue.HardwareContexts[0]);
            Assert.True(SpinWait.SpinUntil(() => runtime.Parks > parks, Liveness), "the loop did not park");

            var idle = queue.Stats.Read();
            Assert.Equal((ulong)Total, idle.ReadIos);
            Assert.Equal((ulong)(Total * 8), idle.ReadSectors);
            Assert.Equal(0UL, idle.InFlight);
        }
        finally
        {
            await runtime.DetachAsync().WaitAsync(Liveness);
        }

        Assert.Equal((ulong)Total, queue.Stats.Read().ReadIos);
        Assert.Equal((0L, 0L), queue.Stats.InFlight());
        Assert.Equal(Total, driver.Calls.Count);
    }

    [Fact]
    public async Task An_awaiter_that_goes_on_on_another_thread_finds_the_io_it_awaited_counted()
    {
        // The awaiter's synchronization context takes its continuation to another thread. The
        // context reads stat from a third thread while the loop's round, which completed the read
        // and holds its count in the loop thread's batch, is still running (it waits in Post):
        // the count must be in the slots already. (Before the completion published its thread's
        // batch, that read found 0 until the round ended.)
        await OnLoopAsync("batch1", async queue =>
        {
            var context = new StatReadingContext(queue.Stats);
            var (status, _) = await AwaitOneRead(queue, context, readInContinuation: false);
            Assert.Equal(BlockStatus.Ok, status);
            Assert.Equal(1UL, context.SeenReadIos);
            Assert.Equal(1, context.Posts);
        });
    }

    [Fact]
    public async Task A_task_made_of_the_bio_wakes_its_awaiter_elsewhere_with_the_io_counted()
    {
        // AsTask registers on the bio with no context: the bio's own continuation runs inline on
        // the loop's thread, but it completes a Task whose awaiter's context takes the rest
        // elsewhere, as it does WhenAll, or an async helper's caller (a review of the first fix,
        // which published the batch only for awaiters it saw leave the thread, found this 0).
        await OnLoopAsync("batch2", async queue =>
        {
            var context = new StatReadingContext(queue.Stats);
            var (status, _) = await AwaitOneRead(queue, context, readInContinuation: false, asTask: true);
            Assert.Equal(BlockStatus.Ok, status);
            Assert.Equal(1UL, context.SeenReadIos);
            Assert.Equal(1, context.Posts);
        });
    }

    [Fact]
    public async Task An_inline_continuation_finds_the_io_counted_from_any_thread()
    {
        // No context: the continuation runs inside the loop's round, which is still going on;
        // its own read and a read from another thread both count the read it awaited.
        await OnLoopAsync("batch3", async queue =>
        {
            var (status, reads) = await AwaitOneRead(queue, context: null, readInContinuation: true);
            Assert.Equal(BlockStatus.Ok, status);
            Assert.Equal((1UL, 1UL), reads);
        });
    }

    // Runs body against a queue served by a real dispatch loop, detached afterwards.
    private static async Task OnLoopAsync(string name, Func<RequestQueue, Task> body)
    {
        using var softIrq = new BlockSoftIrq(4);
        var (queue, runtime, _) = TestQueues.CreateLoop(softIrq, name);
        try
        {
            await body(queue);
        }
        finally
        {
            await runtime.DetachAsync().WaitAsync(Liveness);
        }
    }

    // Submits one read whose ValueTask (or, with asTask, the Task made of it) is awaited through
    // a continuation registered before the submission (so the completion always finds it), under
    // context. With readInContinuation, the continuation reads ReadIos from another thread and
    // then on its own.
    private static async Task<(BlockStatus Status, (ulong Other, ulong Own) Reads)> AwaitOneRead(RequestQueue queue, SynchronizationContext? context, bool readInContinuation, bool asTask = false)
    {
        var bio = queue.Bios.Rent();
        bio.Op = BlockOp.Read;
        bio.Sector = 0;
        bio.Size = 4096;
        bio.Buffer = new byte[4096];
        bio.Cpu = 0;
        var resumed = new TaskCompletionSource<(BlockStatus, (ulong, ulong))>(TaskCreationOptions.RunContinuationsAsynchronously);
        var previous = SynchronizationContext.Current;
        SynchronizationContext.SetSynchronizationContext(context);
        try
        {
            // Both taken under the context: a ValueTask's awaiter captures it when registering,
            // and AsTask registers on the bio without it (the Task's awaiter captures it).
            if (asTask)
            {
                var awaiter = bio.AsStatusTask().AsTask().GetAwaiter();
                awaiter.OnCompleted(() => resumed.TrySetResult((awaiter.GetResult(), Reads())));
            }
            else
            {
                var awaiter = bio.AsStatusTask().GetAwaiter();
                awaiter.OnCompleted(() => resumed.TrySetResult((awaiter.GetResult(), Reads())));
            }
        }
        finally
        {
            SynchronizationContext.SetSynchronizationContext(previous);
        }

        queue.Submit(bio);
        return await resumed.Task.WaitAsync(Liveness);

        (ulong, ulong) Reads() => readInContinuation ? (OnAnotherThread(() => queue.Stats.Read().ReadIos), queue.Stats.Read().ReadIos) : (0UL, 0UL);
    }

    // A context that, when handed a continuation, first reads stat from a thread of its own
    // while the poster waits, then runs the continuation on the thread pool.
    private sealed class StatReadingContext(DiskStats stats) : SynchronizationContext
    {
        public ulong SeenReadIos;
        public int Posts;

        public override void Post(SendOrPostCallback d, object? state)
        {
            Posts++;
            SeenReadIos = OnAnotherThread(() => stats.Read().ReadIos);
            ThreadPool.QueueUserWorkItem(_ => d(state));
        }
    }

    [Fact]
    public async Task Chained_rounds_pay_one_handshake_and_time_no_completion_before_its_submission()
    {
        // Queue depth 1, each completion resubmitting from inside the round (the bench at QD1):
        // the loop chains its rounds, taking the dispatcher once per chain, and each chained
        // round reads the clock afresh, so every completion is timed after its submission.
        using var softIrq = new BlockSoftIrq(4);
        var (queue, runtime, driver) = TestQueues.CreateLoop(softIrq, "chain0");
        const int Total = 5_000;
        var endIo = new TimedEndIo(queue, Total);
        try
        {
            endIo.SubmitNext();
            await endIo.Done.WaitAsync(Liveness);
        }
        finally
        {
            await runtime.DetachAsync().WaitAsync(Liveness);
        }

        Assert.Equal(0, endIo.TimedBeforeSubmission);
        Assert.Equal(Total, driver.Calls.Count);
        var rounds = queue.HardwareContexts[0].RunCount;
        Assert.True(rounds >= Total, $"{rounds} rounds for {Total} requests at depth 1");
        Assert.True(runtime.OwnedRounds * 4 <= rounds, $"{runtime.OwnedRounds} handshakes for {rounds} rounds");
        Assert.Equal((ulong)Total, queue.Stats.Read().ReadIos);
    }

    [Fact]
    public async Task A_quiesce_stops_a_chain_of_rounds_and_nothing_is_dispatched_until_it_ends()
    {
        using var softIrq = new BlockSoftIrq(4);
        var (queue, runtime, driver) = TestQueues.CreateLoop(softIrq, "chain1");
        var endIo = new TimedEndIo(queue, int.MaxValue);
        try
        {
            endIo.SubmitNext();
            Assert.True(SpinWait.SpinUntil(() => Volatile.Read(ref endIo.Completed) >= 1_000, Liveness), "the chain did not run");

            // The quiesce returns once the chain's owned round has ended: from then on nothing
            // reaches the driver, however long the test looks.
            await queue.QuiesceAsync().WaitAsync(Liveness);
            var dispatched = Volatile.Read(ref endIo.Completed);
            for (var i = 0; i < 1_000; i++)
            {
                Thread.SpinWait(100);
                Assert.Equal(dispatched, Volatile.Read(ref endIo.Completed));
            }

            // The staged request waits; unquiesced, the chain goes on.
            endIo.StopAfter(dispatched + 100);
            queue.Unquiesce();
            await endIo.Done.WaitAsync(Liveness);
        }
        finally
        {
            await runtime.DetachAsync().WaitAsync(Liveness);
        }

        Assert.Equal(0, endIo.TimedBeforeSubmission);
        Assert.Equal(driver.Calls.Count, Volatile.Read(ref endIo.Completed));
    }

    // One in-flight read at a time; records whether a completion was timed (on the block layer's
    // batch clock, as the bench times it) before its submission (on the plain clock).
    private sealed class TimedEndIo(RequestQueue queue, int total) : IBioEndIo
    {
        private readonly TaskCompletionSource _done = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private readonly byte[] _buffer = new byte[4096];
        private long _submittedAt;
        private int _limit = total;
        public int Completed;
        public int TimedBeforeSubmission;

        public Task Done => _done.Task;

        public void StopAfter(int count) => Volatile.Write(ref _limit, count);

        public void SubmitNext()
        {
            if (Completed >= Volatile.Read(ref _limit))
            {
                _done.TrySetResult();
                return;
            }

            var bio = queue.Bios.Rent();
            bio.Op = BlockOp.Read;
            bio.Sector = (Completed % 1024) * 8;
            bio.Size = 4096;
            bio.Buffer = _buffer;
            bio.Cpu = 0;
            bio.EndIo = this;
            // The block layer's own clock (the TSC where it is reliable): another clock, even
            // the monotonic one it was calibrated against, drifts from it by parts per million.
            _submittedAt = TimestampClock.GetTimestamp();
            queue.Submit(bio);
        }

        public void OnBioComplete(Bio bio, BlockStatus status)
        {
            if (BlockTime.Timestamp < _submittedAt)
            {
                TimedBeforeSubmission++;
            }

            if (status != BlockStatus.Ok)
            {
                _done.TrySetException(new InvalidOperationException($"read failed: {status}"));
                return;
            }

            Volatile.Write(ref Completed, Completed + 1);
            SubmitNext();
        }
    }

    // One in-flight slot: each completion submits the next read from the completion context.
    private static Task Chain(RequestQueue queue, int index, int count) =>
        new ChainedReads(queue, count, _ => index * 8, cpu: index % 4).Start().Done;

    private static void SpinUntilAfter(long timestamp)
    {
        var spinner = default(SpinWait);
        while (TimestampClock.GetTimestamp() <= timestamp)
        {
            spinner.SpinOnce(sleep1Threshold: -1);
        }
    }
}
