using ActorBlk.Actors.Tests.Support;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;
using ActorBlk.Testing;
using Akka.Configuration;
using Xunit;
using Xunit.Abstractions;

namespace ActorBlk.Actors.Tests;

/// <summary>
/// The block layer's promise under faults (blk-mq-semantics §3.5, §5): 100,000 mixed requests from
/// several submitting threads against a device injecting every fault there is — I/O errors,
/// Resource/DeviceResource refusals, lost completions (timeouts and retries), latency spikes and a
/// crash every so many requests (a reset, or a gone device reopened) — and still every request
/// completes exactly once (counted per request in its end-io call-back, with no second completion
/// refused by the queue), every tag is free at the end, and what was written successfully reads back.
/// </summary>
public abstract class FaultInvariantSpec : Akka.TestKit.Xunit2.TestKit
{
    private const int Submitters = 4;
    private const int PerSubmitter = 25_000;
    private const int Slots = 8;
    private const int BlocksPerSlot = 16;
    private const int BlockSize = 4096;
    private const int Unknown = -1;

    // Liveness bound only: a lost completion would otherwise hang the run.
    private static readonly TimeSpan Liveness = TimeSpan.FromMinutes(5);

    // Enough resets and reopens allowed that the crashes and timeout bursts of the run never give the device up.
    private static readonly Config Tolerant = ConfigurationFactory.ParseString("""
        actorblk.supervision {
          max-resets = 1000
          max-reopens = 1000
          reopen-backoff-min = 20ms
          reopen-backoff-max = 100ms
          reopen-attempts = 5
        }
        """).WithFallback(Configs.Simulated);

    protected FaultInvariantSpec(DispatchMode mode, ITestOutputHelper output)
        : base(Tolerant, output: output)
    {
        Mode = mode;
    }

    protected DispatchMode Mode { get; }

    private static FaultInjectionOptions Faults(bool gone) => new()
    {
        ErrorRate = 0.01,
        ResourceRate = 0.02,
        TimeoutRate = 0.0005,
        LatencyRate = 0.0005,
        Latency = TimeSpan.FromMilliseconds(1),
        CrashAfter = 20_000,
        CrashIsGone = gone,
        ReopenFailures = gone ? 1 : 0,
        Seed = 7,
    };

    // Version 0 is the never-written block: zeroes. Version n > 0 is a pattern of the block and n.
    private static void Fill(Span<byte> block, int block1, int version)
    {
        if (version == 0)
        {
            block.Clear();
            return;
        }

        var seed = HashCode.Combine(block1, version);
        for (var i = 0; i < block.Length; i += 4)
        {
            BitConverter.TryWriteBytes(block[i..], seed + i);
        }
    }

    // file: the faults over the file driver's io_uring engine, whose crashes restart the driver
    // with requests still in the kernel (an engine that lost count of them waited 30 s for each
    // at its stop and then unmapped its ring under its reaper thread: an access violation).
    [Theory]
    [InlineData(false, false)]
    [InlineData(true, false)]
    [InlineData(false, true)]
    public async Task Every_request_completes_exactly_once_and_successful_writes_read_back(bool gone, bool file)
    {
        using var dir = file ? new TempDirectory() : null;
        var device = await BlockLayer.Get(Sys).CreateDeviceAsync(new DeviceOptions
        {
            Name = gone ? "faulty-gone" : file ? "faulty-file" : "faulty",
            Dispatch = Mode,
            Size = 8 << 20,
            BlockSize = 4096,
            MemoryBacked = !file,
            Driver = file ? "file" : "null",
            Path = dir?.File("faulty.img"),
            SubmitQueues = 2,
            HwQueueDepth = 32,
            IoTimeoutMs = 50,
            Faults = Faults(gone),
            NoMerges = MergePolicy.Off,
        });
        var faulty = Assert.IsType<FaultInjectionDriver>(device.Queue.Driver);

        // Each slot (one request outstanding at a time) owns its blocks, so its shadow of what
        // they hold is exact: zeroes at first, then the version last written successfully, or
        // unknown after a failed write (a failed write may or may not have reached the medium).
        var versions = new int[Submitters * Slots * BlocksPerSlot];
        var statuses = new long[Enum.GetValues<BlockStatus>().Max(s => (int)s) + 1];
        var expected = Submitters * Slots * (PerSubmitter / Slots);
        var ledger = new CompletionLedger(expected);
        long mismatches = 0;

        async Task Slot(int submitter, int slot)
        {
            var random = new Random(HashCode.Combine(submitter, slot));
            var buffer = new byte[BlockSize];
            var first = ((submitter * Slots) + slot) * BlocksPerSlot;
            for (var i = 0; i < PerSubmitter / Slots; i++)
            {
                var block = first + random.Next(BlocksPerSlot);
                var roll = random.Next(100);
                var op = roll < 50 ? BlockOp.Write : roll < 95 ? BlockOp.Read : BlockOp.Flush;
                var version = i + 1;
                if (op == BlockOp.Write)
                {
                    Fill(buffer, block, version);
                }

                // Counted in the end-io call-back, per request: a second completion or a missing
                // one shows in the ledger, not only in a task that completes once or hangs.
                var status = op == BlockOp.Flush
                    ? await ledger.Submit(device, op, 0, 0, Memory<byte>.Empty, cpu: submitter)
                    : await ledger.Submit(device, op, (long)block * BlockSize, BlockSize, buffer, cpu: submitter);
                Interlocked.Increment(ref statuses[(int)status]);

                if (op == BlockOp.Write)
                {
                    versions[block] = status == BlockStatus.Ok ? version : Unknown;
                }
                else if (op == BlockOp.Read && status == BlockStatus.Ok && versions[block] != Unknown && !Holds(buffer, block, versions[block]))
                {
                    Interlocked.Increment(ref mismatches);
                }
            }
        }

        var work = Enumerable.Range(0, Submitters)
            .SelectMany(s => Enumerable.Range(0, Slots).Select(slot => Task.Run(() => Slot(s, slot))))
            .ToArray();
        var all = Task.WhenAll(work);
        var finished = await Task.WhenAny(all, Task.Delay(Liveness)) == all;

        // Exactly once: every request's end-io ran once (none missing, none twice), no bio
        // completion was refused as a second one, and nothing is held anywhere.
        Assert.Equal(0, ledger.Missing);
        Assert.True(finished, "the load did not finish");
        await all;
        Assert.Equal(expected, ledger.Submitted);
        Assert.Equal(0, ledger.Duplicated);
        Assert.Equal(ledger.Submitted, ledger.Completed);
        Assert.Equal(0, device.Queue.DoubleCompletions);
        Assert.Equal("0\n", device.Attributes.Read($"kernel/debug/block/{device.Name}/double_completions"));
        var submitted = ledger.Submitted;
        Assert.Equal(submitted, statuses.Sum());
        await AwaitConditionAsync(() => Task.FromResult(device.Queue.Usage.Count == 0), TimeSpan.FromSeconds(60), TimeSpan.FromMilliseconds(10));
        Assert.All(device.Queue.HardwareContexts, h => Assert.Equal(0, h.Tags.InUse));
        Assert.Equal(0, device.Queue.InFlightCount);
        Assert.Equal(0, mismatches);

        // Every fault happened, and the failures are the statuses the faults explain.
        Assert.True(faulty.Injected.Errors > 0 && faulty.Injected.Resource > 0 && faulty.Injected.Lost > 0);
        Assert.True(faulty.Injected.Stalls > 0 && faulty.Injected.Crashes > 0);
        Assert.True(statuses[(int)BlockStatus.Ok] > submitted * 9 / 10);
        Assert.Equal(submitted, statuses[(int)BlockStatus.Ok] + statuses[(int)BlockStatus.IoError] + statuses[(int)BlockStatus.Timeout]);

        // Successful writes read back after the storm, block by block.
        var back = new byte[BlockSize];
        for (var block = 0; block < versions.Length; block++)
        {
            if (versions[block] == Unknown)
            {
                continue;
            }

            Assert.Equal(BlockStatus.Ok, await ReadUntilOk(device, block, back));
            Assert.True(Holds(back, block, versions[block]), $"block {block} does not hold version {versions[block]}");
        }
    }

    // A verification read can itself hit an injected fault; it is simply read again.
    private static async Task<BlockStatus> ReadUntilOk(IBlockDevice device, int block, byte[] buffer)
    {
        var status = BlockStatus.IoError;
        for (var attempt = 0; attempt < 50 && status != BlockStatus.Ok; attempt++)
        {
            status = await device.ExecuteAsync(BlockOp.Read, (long)block * BlockSize, BlockSize, buffer);
        }

        return status;
    }

    private static bool Holds(byte[] buffer, int block, int version)
    {
        var expected = new byte[BlockSize];
        Fill(expected, block, version);
        return buffer.AsSpan().SequenceEqual(expected);
    }
}

/// <summary>The invariant under faults in ring dispatch.</summary>
public sealed class RingFaultInvariantSpec(ITestOutputHelper output) : FaultInvariantSpec(DispatchMode.Ring, output);

/// <summary>The invariant under faults in mailbox dispatch.</summary>
[RunsLong(40)]
public sealed class MailboxFaultInvariantSpec(ITestOutputHelper output) : FaultInvariantSpec(DispatchMode.Mailbox, output);
