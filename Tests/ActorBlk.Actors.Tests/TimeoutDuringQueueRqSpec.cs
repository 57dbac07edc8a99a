using ActorBlk.Actors.Tests.Support;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;
using Xunit;
using Xunit.Abstractions;

namespace ActorBlk.Actors.Tests;

/// <summary>
/// A request whose deadline passes while the <c>QueueRq</c> that started it still runs (a driver
/// that completes inside <c>QueueRq</c>, its thread preempted or blocked between the start and the
/// completion) is not handed to the timeout handler until that <c>QueueRq</c> returned
/// (blk-mq-semantics §5 item 5: the scan waits for the dispatch rounds in progress). Otherwise the
/// handler completes it, its tag, bio and buffer go to other I/O, and the driver then moves data
/// for that other I/O: a memory-backed null device under load wrote one block's data into another.
/// </summary>
public sealed class TimeoutDuringQueueRqSpec(ITestOutputHelper output) : Akka.TestKit.Xunit2.TestKit(Configs.Simulated, output: output)
{
    [Theory]
    [InlineData(DispatchMode.Ring)]
    [InlineData(DispatchMode.Mailbox)]
    public async Task The_timeout_handler_never_runs_while_QueueRq_of_its_request_does(DispatchMode mode)
    {
        var driver = new SlowInlineDriver(TimeSpan.FromMilliseconds(400));
        var device = await BlockLayer.Get(Sys).CreateDeviceAsync(new DeviceOptions
        {
            Name = $"slow-{mode}".ToLowerInvariant(),
            Dispatch = mode,
            Size = 1 << 20,
            BlockSize = 4096,
            IoTimeoutMs = 50,
        }, driver);

        var status = await device.ExecuteAsync(BlockOp.Write, 0, 4096, new byte[4096]).AsTask().WaitAsync(TimeSpan.FromSeconds(30));

        // Completed by the driver at the end of its QueueRq: the deadline had passed long before,
        // but the scan waited for the round, and then the request was no longer in flight.
        Assert.Equal(BlockStatus.Ok, status);
        Assert.Equal(0, driver.TimeoutsDuringQueueRq);
    }

    // Completes every request inside QueueRq, after holding it started for a while (a transfer
    // whose thread is preempted); its timeout handler completes with Timeout, as null_blk's does.
    private sealed class SlowInlineDriver(TimeSpan hold) : IBlockDriver
    {
        private int _inQueueRq;

        public int TimeoutsDuringQueueRq;

        public string Kind => "slow";

        public QueueLimits Limits { get; } = new()
        {
            LogicalBlockSize = 4096,
            PhysicalBlockSize = 4096,
            CapacitySectors = (1 << 20) >> Bio.SectorShift,
            MaxHardwareSectors = QueueLimits.DefaultMaxSectors,
            MaxSectors = QueueLimits.DefaultMaxSectors,
        };

        public DriverFeatures Features => DriverFeatures.Blocking;

        public BlockStatus QueueRq(HardwareContext hctx, Request request, bool last)
        {
            Volatile.Write(ref _inQueueRq, 1);
            request.Start();
            Thread.Sleep(hold);
            Volatile.Write(ref _inQueueRq, 0);
            request.Complete(BlockStatus.Ok);
            return BlockStatus.Ok;
        }

        public TimeoutAction Timeout(Request request)
        {
            if (Volatile.Read(ref _inQueueRq) != 0)
            {
                Interlocked.Increment(ref TimeoutsDuringQueueRq);
            }

            request.Complete(BlockStatus.Timeout);
            return TimeoutAction.Done;
        }

        public void Dispose()
        {
        }
    }
}
