using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;
using ActorBlk.Hardware.Topology;
using ActorBlk.Testing;
using Xunit;

namespace ActorBlk.Hardware.Tests.Devices;

/// <summary>
/// Polled I/O that has no request of its own to poll (blk-mq-semantics §7 items 3 and 6): a bio
/// split by <c>max_sectors_kb</c>, one still in the caller's plug, one merged into another polled
/// bio's request. Each used to leave its poller spinning for ever (and a freeze behind it waiting
/// until the I/O timeout): an outside audit's polled load with attribute writes. Memory-backed null
/// device on ring dispatch, real dispatch threads.
/// </summary>
public sealed class PolledIoEdgeSpec : IAsyncLifetime
{
    // A liveness bound only: on the old code these polls never returned.
    private static readonly TimeSpan Deadline = TimeSpan.FromSeconds(60);

    private readonly RingDevices _devices = new(4);

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync() => await _devices.DisposeAsync();

    private BlockDevice Create(int maxSectorsKb = 0, MergePolicy merges = MergePolicy.All, CompletionContinuation completion = CompletionContinuation.Inline) => _devices.Create(
        new DeviceOptions { Name = "polled", Size = 4 << 20, IoPoll = true, MemoryBacked = true, MaxSectorsKb = maxSectorsKb, NoMerges = merges, Completion = completion },
        CpuTopology.Simulated(2));

    private static byte[] Pattern(int length, int seed)
    {
        var data = new byte[length];
        new Random(seed).NextBytes(data);
        return data;
    }

    private static async Task<BlockStatus> PollToEnd(BlockDevice device, PolledIo io)
    {
        await Task.Run(() => device.Poll(io)).WaitAsync(Deadline);
        return await io.Completion;
    }

    [Fact]
    public async Task A_polled_io_larger_than_max_sectors_kb_is_split_unpolled_and_completes_through_poll()
    {
        // bio_split_rw clears REQ_POLLED: the pieces complete like any request; the parent has no cookie.
        var device = Create(maxSectorsKb: 4);
        var data = Pattern(64 << 10, 1);

        var write = device.Submit(BlockOp.Write, 8192, data, cpu: 0);
        Assert.Equal(PollCookie.None, write.Cookie);
        Assert.Equal(BlockStatus.Ok, await PollToEnd(device, write));

        var back = new byte[data.Length];
        var read = device.Submit(BlockOp.Read, 8192, back, cpu: 1);
        Assert.Equal(BlockStatus.Ok, await PollToEnd(device, read));
        Assert.Equal(data, back);
        Assert.Equal(0, device.Queue.Usage.Count);
    }

    [Fact]
    public async Task Polling_inside_a_plug_flushes_the_plug_first()
    {
        // bio_poll flushes the caller's plug: the request in it was built (it has a cookie) but never issued.
        var device = Create(merges: MergePolicy.Off);
        var data = Pattern(4096, 2);

        BlockStatus status;
        using (device.Plug())
        {
            var io = device.Submit(BlockOp.Write, 0, data, cpu: 0);
            Assert.NotEqual(PollCookie.None, io.Cookie);
            // The flow's plug flows into the task (it is the flow's, an AsyncLocal).
            status = await PollToEnd(device, io);
        }

        Assert.Equal(BlockStatus.Ok, status);
        var back = new byte[4096];
        await device.ReadAsync(0, back);
        Assert.Equal(data, back);
    }

    [Fact]
    public async Task A_polled_io_merged_into_another_completes_when_it_is_polled_first()
    {
        var device = Create();
        var first = Pattern(4096, 3);
        var second = Pattern(4096, 4);

        PolledIo a, b;
        using (device.Plug())
        {
            a = device.Submit(BlockOp.Write, 0, first, cpu: 0);
            b = device.Submit(BlockOp.Write, 4096, second, cpu: 0);
            // The second bio went into the first's request (a back merge in the plug): it has no cookie.
            Assert.NotEqual(PollCookie.None, a.Cookie);
            Assert.Equal(PollCookie.None, b.Cookie);
        }

        // The plug is gone (its requests issued); only the second is polled, and it owns no request.
        Assert.Equal(BlockStatus.Ok, await PollToEnd(device, b));
        Assert.Equal(BlockStatus.Ok, await a.Completion);
        var back = new byte[8192];
        await device.ReadAsync(0, back);
        Assert.Equal(first.Concat(second).ToArray(), back);
    }

    [Fact]
    public async Task Polling_an_io_that_another_flow_awaits_ends_when_it_completes_and_never_throws()
    {
        // Hybrid polling: one flow awaits the I/O, another polls it until it is done. The awaiter
        // consumes the I/O on a thread-pool thread (completion = threadpool) and sends its bio back
        // to the pool. Poll(io) checked that the bio was still this I/O's, then asked the I/O's
        // ValueTask whether it had completed; a bio recycled between the two made that question
        // throw InvalidOperationException out of Poll (an outside chaos run: about one polled
        // I/O in a thousand). Each I/O here is polled until its awaiter has it.
        var device = Create(completion: CompletionContinuation.ThreadPool);
        var data = Pattern(4096, 5);
        await device.WriteAsync(0, data);
        var buffer = new byte[4096];
        var thrown = await Task.Run(async () =>
        {
            for (var i = 0; i < 1000; i++)
            {
                var io = device.Submit(BlockOp.Read, 0, buffer, cpu: i % 2);
                var awaited = io.Completion.AsTask();
                try
                {
                    while (!awaited.IsCompleted)
                    {
                        device.Poll(in io);
                    }
                }
                catch (InvalidOperationException ex)
                {
                    await awaited;
                    return $"I/O {i}: {ex.Message}";
                }

                Assert.Equal(BlockStatus.Ok, await awaited);
            }

            return null;
        }).WaitAsync(Deadline);

        Assert.Null(thrown);
        Assert.Equal(data, buffer);
        Assert.Equal(0, device.Queue.Usage.Count);
    }
}
