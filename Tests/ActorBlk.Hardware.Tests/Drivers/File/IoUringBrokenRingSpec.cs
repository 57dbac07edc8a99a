using System.Reflection;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers.File;
using ActorBlk.Hardware.IoUring;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;
using ActorBlk.Hardware.Topology;
using ActorBlk.Testing;
using Xunit;

namespace ActorBlk.Hardware.Tests.Drivers.File;

/// <summary>
/// A file device whose io_uring broke (an <c>io_uring_enter</c> error that is not transient) is
/// still torn down: the removal waits for the requests the kernel holds
/// (<see cref="FileBlockDriver.Abandon"/>), but not for those of a ring nothing can reap any more.
/// </summary>
public sealed class IoUringBrokenRingSpec : IDisposable
{
    private static readonly TimeSpan Liveness = TimeSpan.FromSeconds(30);

    private readonly TempDirectory _dir = new("actorblk-broken-ring");
    private readonly BlockSoftIrq _softIrq = new(2);

    public void Dispose()
    {
        _softIrq.Dispose();
        _dir.Dispose();
    }

    // Found by a review: the ring dispatch loop's exit (DrainOwned) gives up on a broken ring, and
    // so does the mailbox reaper, but the engine still counted the requests the ring held, and
    // Abandon, waiting for that count to reach zero, slept on the teardown's thread for ever: the
    // destroy never ended and the request never completed.
    [Fact]
    public async Task A_request_on_a_ring_that_broke_fails_with_Offline_at_teardown_instead_of_holding_it_for_ever()
    {
        var device = DeviceBuilder.CreateRingDevice(
            new DeviceOptions
            {
                Name = "broken0",
                Driver = "file",
                Path = _dir.File("broken.img"),
                Size = 1 << 20,
                Engine = IoEngine.IoUring,
                Direct = true,
                SubmitBatch = 0, // the round's request rides on the loop's wait
                SubmitQueues = 1,
                HwQueueDepth = 8,
            },
            CpuTopology.Simulated(2),
            _softIrq);
        var driver = device.Queue.Driver;
        try
        {
            // The engine exists once the dispatch thread ran.
            await device.WriteAsync(0, new byte[4096]);
            var engine = Assert.IsType<IoUringEngine>(device.Queue.HardwareContexts[0].DriverData);

            var errors = new DeviceErrors();
            device.Queue.Events = errors;
            Break(engine);

            var read = device.ReadAsync(0, new byte[4096], cpu: 0).AsTask();
            var error = await errors.First.WaitAsync(Liveness);
            Assert.IsType<IoUringException>(error);
            Assert.False(read.IsCompleted);

            await device.Queue.ShutdownAsync(TimeSpan.FromMilliseconds(100)).WaitAsync(Liveness);

            Assert.True(engine.Broken);
            Assert.Equal(0, engine.Outstanding);
            var failed = await Assert.ThrowsAsync<BlockIoException>(() => read.WaitAsync(Liveness));
            Assert.Equal(BlockStatus.Offline, failed.Status);
            Assert.Equal(0, device.Queue.HardwareContexts[0].Tags.InUse);
        }
        finally
        {
            driver.Dispose();
        }
    }

    // Every io_uring_enter of the dispatch thread now fails (EBADF, or EINVAL for a registered ring fd).
    private static void Break(IoUringEngine engine)
    {
        var ring = (IoRing)typeof(IoUringEngine).GetField("_ring", BindingFlags.Instance | BindingFlags.NonPublic)!.GetValue(engine)!;
        typeof(IoRing).GetField("_enterFd", BindingFlags.Instance | BindingFlags.NonPublic)!.SetValue(ring, -1);
    }

    private sealed class DeviceErrors : IQueueEvents
    {
        private readonly TaskCompletionSource<Exception> _first = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public Task<Exception> First => _first.Task;

        public void OnDeviceError(HardwareContext hctx, Exception error) => _first.TrySetResult(error);

        public void OnAbort(HardwareContext hctx)
        {
        }
    }
}
