using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;
using ActorBlk.Hardware.Tests.Nbd;
using ActorBlk.Testing;
using Xunit;

namespace ActorBlk.Hardware.Tests.Queues;

/// <summary>
/// A device that is gone for good (<see cref="RequestQueue.SetOffline"/> with the requests in
/// flight failed): each request's completion runs apart from the others and from the caller,
/// as the kernel completes each request of a dead device in its own softirq.
/// </summary>
public sealed class OfflineCompletionSpec
{
    private static readonly TimeSpan Liveness = TimeSpan.FromSeconds(60);

    // Found from outside (a mirror over a remote leg whose node was killed, a bench at QD8): the
    // requests in flight were failed one after another on the caller's thread (the request
    // queue's actor), and the first completion's call-back ran the caller's I/O loop there
    // without returning, so the others stayed in flight until the remote queue's I/O timeout and
    // the actor was held as long. Here each call-back waits until the spec lets it go: both must
    // have run, and SetOffline returned, before either is let go.
    [Fact]
    public async Task Going_offline_fails_every_request_in_flight_while_a_completion_call_back_has_not_returned()
    {
        using var release = new ManualResetEventSlim(false);
        var (queue, driver, first, second) = TwoHeldInFlight(release);

        try
        {
            var offline = Task.Run(() => queue.SetOffline(failInFlight: true));
            Assert.Equal(2, await offline.WaitAsync(Liveness));
            Assert.True(first.Entered.Wait(Liveness), "the first call-back did not run");
            Assert.True(second.Entered.Wait(Liveness), "the second call-back did not run");
        }
        finally
        {
            release.Set();
        }

        Assert.Equal(BlockStatus.Offline, await first.Done.WaitAsync(Liveness));
        Assert.Equal(BlockStatus.Offline, await second.Done.WaitAsync(Liveness));

        // Exactly once, and every tag back: the driver's late answers change nothing.
        foreach (var rq in driver.InFlight.ToArray())
        {
            Assert.False(queue.CompleteRequest(rq, BlockStatus.Ok, rq.Generation));
        }

        // The tag is held over the call-back (end_io hold) and freed when it returns.
        await Condition.EventuallyAsync(() => queue.HardwareContexts[0].Tags.InUse == 0, "every tag back");
        Assert.Equal(0, queue.InFlightCount);
        Assert.Equal(0L, queue.DoubleCompletions);
        Assert.Equal(1, first.Calls);
        Assert.Equal(1, second.Calls);
    }

    // The same hazard after a reset (ReclaimInFlight on the driver's actor): the requests out of
    // retries are failed apart too, the others requeued.
    [Fact]
    public async Task A_reset_fails_the_requests_out_of_retries_apart_while_a_call_back_has_not_returned()
    {
        using var release = new ManualResetEventSlim(false);
        var (queue, _, first, second) = TwoHeldInFlight(release);
        queue.MaxRetries = 0;

        try
        {
            var reclaim = Task.Run(() => queue.ReclaimInFlight(BlockStatus.IoError));
            Assert.Equal((0, 2), await reclaim.WaitAsync(Liveness));
            Assert.True(first.Entered.Wait(Liveness), "the first call-back did not run");
            Assert.True(second.Entered.Wait(Liveness), "the second call-back did not run");
        }
        finally
        {
            release.Set();
        }

        Assert.Equal(BlockStatus.IoError, await first.Done.WaitAsync(Liveness));
        Assert.Equal(BlockStatus.IoError, await second.Done.WaitAsync(Liveness));
        Assert.Equal(0, queue.InFlightCount);
        Assert.Equal(0L, queue.DoubleCompletions);
        Assert.Equal(1, first.Calls);
        Assert.Equal(1, second.Calls);
    }

    // The requests the driver never got (staged in the ring or on the dispatch list when the device
    // went offline) fail when dispatch takes them: before, Issue ended its batch in turn on the
    // dispatcher's thread (a dispatch loop, a direct round, a hardware queue's actor), and a
    // call-back that did not return kept the rest of the batch from failing. The first call-back is
    // still held when the second runs.
    [Fact]
    public async Task Dispatch_fails_the_requests_an_offline_device_never_got_apart_while_a_call_back_has_not_returned()
    {
        using var release = new ManualResetEventSlim(false);
        var driver = new ScriptedDriver();
        var (queue, runtime) = TestQueues.Create(driver, options: new QueueOptions { MergePolicy = MergePolicy.Off });
        var first = new HeldCallBack(release);
        var second = new HeldCallBack(release);
        first.Submit(queue, 0);
        second.Submit(queue, 64);
        Assert.Equal(0, queue.SetOffline(failInFlight: true));

        try
        {
            await Task.Run(() => runtime.RunRound()).WaitAsync(Liveness);
            Assert.True(first.Entered.Wait(Liveness), "the first call-back did not run");
            Assert.True(second.Entered.Wait(Liveness), "the second call-back did not run");
            Assert.False(first.Done.IsCompleted, "the second call-back ran only once the first had returned");
        }
        finally
        {
            release.Set();
        }

        Assert.Equal(BlockStatus.Offline, await first.Done.WaitAsync(Liveness));
        Assert.Equal(BlockStatus.Offline, await second.Done.WaitAsync(Liveness));
        Assert.Empty(driver.Calls);
        await Condition.EventuallyAsync(() => queue.HardwareContexts[0].Tags.InUse == 0, "every tag back");
        Assert.Equal(0L, queue.DoubleCompletions);
        Assert.Equal(1, first.Calls);
        Assert.Equal(1, second.Calls);
    }

    // Teardown (ShutdownAsync once the drain timed out) fails what is left apart too: one in flight
    // and one never dispatched, each call-back held. Before, FailOutstanding ended them in turn on
    // teardown's thread, so the second waited for the first call-back, and teardown with it.
    [Fact]
    public async Task Teardown_fails_what_is_left_apart_while_a_call_back_has_not_returned()
    {
        using var release = new ManualResetEventSlim(false);
        var driver = new ScriptedDriver();
        var (queue, runtime) = TestQueues.Create(driver, options: new QueueOptions { MergePolicy = MergePolicy.Off });
        var first = new HeldCallBack(release);
        var second = new HeldCallBack(release);
        first.Submit(queue, 0);
        runtime.RunRound();
        second.Submit(queue, 64);
        Assert.Equal(1, queue.InFlightCount);

        Task<int> shutdown;
        try
        {
            shutdown = Task.Run(() => queue.ShutdownAsync(TimeSpan.FromMilliseconds(50)));
            Assert.True(first.Entered.Wait(Liveness), "the first call-back did not run");
            Assert.True(second.Entered.Wait(Liveness), "the second call-back did not run");
            Assert.False(first.Done.IsCompleted || second.Done.IsCompleted, "one call-back ran only once the other had returned");
        }
        finally
        {
            release.Set();
        }

        Assert.Equal(2, await shutdown.WaitAsync(Liveness));
        Assert.Equal(BlockStatus.Offline, await first.Done.WaitAsync(Liveness));
        Assert.Equal(BlockStatus.Offline, await second.Done.WaitAsync(Liveness));
        Assert.Equal(0L, queue.DoubleCompletions);
        Assert.Equal(1, first.Calls);
        Assert.Equal(1, second.Calls);
    }

    // Two reads in flight, each with a call-back held until release is set.
    private static (RequestQueue Queue, ScriptedDriver Driver, HeldCallBack First, HeldCallBack Second) TwoHeldInFlight(ManualResetEventSlim release)
    {
        var driver = new ScriptedDriver();
        var (queue, runtime) = TestQueues.Create(driver);
        var first = new HeldCallBack(release);
        var second = new HeldCallBack(release);
        first.Submit(queue, 0);
        second.Submit(queue, 64);
        runtime.RunRound();
        Assert.Equal(2, queue.InFlightCount);
        return (queue, driver, first, second);
    }

    // An end_io call-back that does not return until released (a caller's I/O loop, say).
    internal sealed class HeldCallBack(ManualResetEventSlim release) : IBioEndIo
    {
        private int _calls;

        public ManualResetEventSlim Entered { get; } = new(false);

        public TaskCompletionSource<BlockStatus> Completion { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public Task<BlockStatus> Done => Completion.Task;

        public int Calls => Volatile.Read(ref _calls);

        public void Submit(RequestQueue queue, long sector)
        {
            var bio = queue.Bios.Rent();
            bio.Op = BlockOp.Read;
            bio.Sector = sector;
            bio.Size = 4096;
            bio.Buffer = new byte[4096];
            bio.Cpu = 0;
            bio.EndIo = this;
            queue.Submit(bio);
        }

        public void OnBioComplete(Bio bio, BlockStatus status)
        {
            Interlocked.Increment(ref _calls);
            Entered.Set();
            release.Wait(TimeSpan.FromSeconds(30));
            Completion.TrySetResult(status);
        }
    }
}
