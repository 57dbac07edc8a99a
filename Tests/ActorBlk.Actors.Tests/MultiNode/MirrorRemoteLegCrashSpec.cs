using System.Collections.Concurrent;
using System.Diagnostics;
using ActorBlk.Actors.Clustering;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers.Stacking;
using ActorBlk.Hardware.Requests;
using Akka.Actor;
using Akka.Event;
using Xunit;
using Xunit.Abstractions;

namespace ActorBlk.Actors.Tests.MultiNode;

/// <summary>
/// A mirror over a local leg and a remote one under I/O at queue depth 8, each write submitted from
/// the completion of the last (as the bench and fio do), when the remote leg's node crashes.
/// </summary>
[Collection(MirrorClusterCollection.Name)]
public sealed class MirrorRemoteLegCrashSpec : Akka.TestKit.Xunit2.TestKit
{
    private const int Block = 4096;

    private const long LegBytes = (16L << 20) + MirrorSuperblock.DataOffset;

    // Far below the remote leg's I/O timeout (30 s): a write held until that timeout fails this.
    private static readonly TimeSpan Liveness = TimeSpan.FromSeconds(15);

    private static readonly TimeSpan Setup = TimeSpan.FromSeconds(90);

    // Node a's warnings and errors (the remote queue's device error, reopen attempts, offline;
    // the mirror's faulty leg) and the spec's own steps, with times: written to the test output,
    // so a failure shows how long each step took (a failure once kept no log at all).
    private readonly Timeline _timeline = new();
    private readonly ITestOutputHelper _output;

    public MirrorRemoteLegCrashSpec(ITestOutputHelper output)
        : base(Support.Configs.Simulated, output: output)
    {
        _output = output;
    }

    private static DeviceOptions Memory(string name) => new() { Name = name, Size = LegBytes, MemoryBacked = true, PollQueues = 0 };

    // Found from outside (actorblk bench, QD8 randwrite on md0 over a local leg and vol-b on
    // another node, that node killed): once reopening the remote leg was given up, mirror writes
    // were held about 30 s and the remote queue's actor as long. Going offline failed the
    // requests in flight one after another on the actor's thread, and the first completion ran
    // the caller's I/O loop there (the mirror ends the write on the memory leg, which completes
    // the next write inline, and so on), so the other seven were not failed until it stopped.
    [Fact]
    public async Task Writes_at_queue_depth_8_go_on_degraded_when_the_remote_legs_node_crashes()
    {
        var a = ClusterNode.Start("a");
        await using var _a = a;
        var tap = a.System.ActorOf(Props.Create(() => new LogTap(_timeline)));
        a.System.EventStream.Subscribe(tap, typeof(Warning));
        a.System.EventStream.Subscribe(tap, typeof(Error));
        var c = ClusterNode.Start("c");
        await a.JoinAsync(a, Setup);
        await c.JoinAsync(a, Setup);
        c.ExportNbd();
        a.ExportNbd();
        await c.Layer.CreateDeviceAsync(Memory("volb"));
        await a.Layer.CreateDeviceAsync(Memory("lega"));
        await a.Layer.CreateStackedDeviceAsync("md0");
        var md0 = await a.Layer.LoadTableAsync("md0", StackTable.Mirror(new MirrorOptions { RegionBytes = 256 << 10 }, "lega", $"volb@{c.Name}"));
        var mirror = (MirrorTarget)md0.Queue.BioDriver!;
        var remote = (ClusterBlockDevice)mirror.Legs[1];
        await mirror.SyncIdle.WaitAsync(Setup);
        var queue = remote.Queue;
        mirror.LegFailed += (leg, inSync, legs) => _timeline.Add($"md0: leg {leg} failed, {inSync} of {legs} in sync");

        var blocks = (int)(md0.Capacity / Block);
        var slots = Enumerable.Range(0, 8).Select(i => new Slot(md0, blocks, i)).ToArray();
        foreach (var slot in slots)
        {
            slot.SubmitNext();
        }

        try
        {
            await AwaitConditionAsync(() => Task.FromResult(slots.Sum(s => s.Completed) > 500), Setup, TimeSpan.FromMilliseconds(10));
            _timeline.Add($"crashing c after {slots.Sum(s => s.Completed)} writes");
            var crashed = Stopwatch.StartNew();
            await c.CrashAsync();
            _timeline.Add("c crashed");

            // The remote leg's queue gives the device up (reopening fails) and goes offline.
            await AwaitConditionAsync(() => Task.FromResult(queue.IsOffline && mirror.LegState(1) == MirrorLegState.Faulty), Setup, TimeSpan.FromMilliseconds(10));

            // No write stays held: each slot completes more writes, on the local leg.
            var seen = slots.Select(s => s.Completed).ToArray();
            var offlineAfter = crashed.Elapsed;
            _timeline.Add($"remote queue offline and leg faulty; writes completed {string.Join(",", seen)}");
            var progressed = await Task.Run(async () =>
            {
                var until = DateTime.UtcNow + Liveness;
                while (DateTime.UtcNow < until)
                {
                    if (slots.Select((s, i) => s.Completed > seen[i] + 20).All(x => x))
                    {
                        return true;
                    }

                    await Task.Delay(10);
                }

                return false;
            });
            _timeline.Add($"liveness window ended (progressed: {progressed})");
            Assert.True(progressed, $"writes held {Liveness.TotalSeconds} s after the leg was failed ({offlineAfter.TotalSeconds:0.0} s after the crash): completed {string.Join(",", slots.Select(s => s.Completed))} (at offline {string.Join(",", seen)}); remote in flight {queue.InFlightCount}, remote tags {queue.HardwareContexts.Sum(h => h.Tags.InUse)}, md0 degraded {mirror.Degraded}");
        }
        finally
        {
            foreach (var slot in slots)
            {
                slot.Stop();
            }

            foreach (var line in _timeline.Lines)
            {
                _output.WriteLine(line);
            }
        }

        await Task.WhenAll(slots.Select(s => s.Stopped)).WaitAsync(Setup);
        Assert.Equal(0L, slots.Sum(s => s.Failures));
        Assert.Equal(MirrorLegState.InSync, mirror.LegState(0));
        Assert.Equal(0L, md0.Queue.DoubleCompletions);

        // Each request of the lost leg completed once, and none keeps its tag.
        Assert.Equal(0L, queue.DoubleCompletions);
        Assert.Equal(0, queue.InFlightCount);
        Assert.Equal(0, queue.HardwareContexts.Sum(h => h.Tags.InUse));
        await a.Layer.DestroyDeviceAsync("md0");
        await a.Layer.DestroyDeviceAsync("lega");
    }

    private sealed class Timeline
    {
        private readonly Stopwatch _clock = Stopwatch.StartNew();
        private readonly ConcurrentQueue<string> _lines = new();

        public IEnumerable<string> Lines => _lines;

        public void Add(string line) => _lines.Enqueue($"{_clock.Elapsed.TotalSeconds,7:0.000} s  {line}");
    }

    private sealed class LogTap : ReceiveActor
    {
        public LogTap(Timeline timeline) => Receive<LogEvent>(e => timeline.Add($"{e.LogLevel()} {e.LogSource}: {e.Message}"));
    }

    // One iodepth entry of a fio-like job, as the bench's slots are: its end_io call-back records
    // the write and submits the next one on the completing thread; one that completes inside a
    // submission on this thread (a leg that completes inline) is submitted once that returns, so
    // the stack does not grow with every write, in the order they completed (first in, first out,
    // as the kernel's current->bio_list and the bench: a stack once kept seven slots whose
    // completions had landed on a thread under the eighth, whose every write completed inline on
    // the degraded mirror, and this spec failed on its own trampoline).
    private sealed class Slot(IBlockDevice device, int blocks, int seed) : IBioEndIo
    {
        [ThreadStatic]
        private static bool t_inSubmit;

        [ThreadStatic]
        private static Slot? t_pending;

        [ThreadStatic]
        private static Slot? t_pendingTail;

        private readonly byte[] _data = new byte[Block];
        private readonly Random _random = new(seed);
        private readonly TaskCompletionSource _stopped = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private Slot? _nextPending;
        private long _completed;
        private long _failures;
        private volatile bool _stop;

        public long Completed => Interlocked.Read(ref _completed);

        public long Failures => Interlocked.Read(ref _failures);

        public Task Stopped => _stopped.Task;

        public void Stop() => _stop = true;

        public void SubmitNext()
        {
            var slot = this;
            while (slot is not null)
            {
                slot.SubmitOne();
                slot = t_pending;
                if (slot is not null)
                {
                    t_pending = slot._nextPending;
                    if (t_pending is null)
                    {
                        t_pendingTail = null;
                    }

                    slot._nextPending = null;
                }
            }
        }

        public void OnBioComplete(Bio bio, BlockStatus status)
        {
            if (status != BlockStatus.Ok)
            {
                Interlocked.Increment(ref _failures);
            }

            Interlocked.Increment(ref _completed);
            if (t_inSubmit)
            {
                if (t_pendingTail is { } tail)
                {
                    tail._nextPending = this;
                }
                else
                {
                    t_pending = this;
                }

                t_pendingTail = this;
                return;
            }

            SubmitNext();
        }

        private void SubmitOne()
        {
            if (_stop)
            {
                _stopped.TrySetResult();
                return;
            }

            t_inSubmit = true;
            try
            {
                device.SubmitWithEndIo(BlockOp.Write, (long)_random.Next(blocks) * Block, Block, _data, RequestFlags.None, IBlockDevice.AnyCpu, this);
            }
            finally
            {
                t_inSubmit = false;
            }
        }
    }
}
