using ActorBlk.Actors.Tests.Support;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers;
using Akka.Actor;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;
using Xunit;
using Xunit.Abstractions;

namespace ActorBlk.Actors.Tests;

/// <summary>
/// <c>queue/nr_requests</c> written under load (issue 16 item 12, blk-mq-semantics §2.6 items
/// 29-30): every tag waiter is woken when the depth changes, so random reads and writes checked
/// against a shadow copy all complete; and at shutdown every outstanding I/O completes with an
/// error whatever state the queue is in (frozen, quiesced, waiting for tags).
/// </summary>
public abstract class DepthChangeSpec : Akka.TestKit.Xunit2.TestKit
{
    private static readonly TimeSpan Generous = TimeSpan.FromSeconds(60);

    // AwaitConditionAsync polls every tenth of its limit unless told otherwise (seconds here).
    private static readonly TimeSpan Poll = TimeSpan.FromMilliseconds(10);

    protected DepthChangeSpec(DispatchMode mode, ITestOutputHelper output)
        : base(Configs.Simulated, output: output)
    {
        Mode = mode;
    }

    protected DispatchMode Mode { get; }

    private BlockLayer Layer => BlockLayer.Get(Sys);

    private Task<IBlockDevice> Create(string name, int depth = 64) => Layer.CreateDeviceAsync(new DeviceOptions
    {
        Name = name,
        Dispatch = Mode,
        Size = 8 << 20,
        MemoryBacked = true,
        SubmitQueues = 2,
        PollQueues = 0,
        HwQueueDepth = depth,
    });

    private static async Task Bounded(Task work, string what, Func<string>? state = null)
    {
        var winner = await Task.WhenAny(work, Task.Delay(Generous));
        Assert.True(winner == work, $"{what} did not finish within {Generous.TotalSeconds} s{(state is null ? string.Empty : "; " + state())}");
        await work;
    }

    // What a hang looks like from outside: freeze and quiesce state, and per hardware queue the
    // pending requests, tags in use and tag waiters.
    private static string QueueState(IBlockDevice device)
    {
        var q = device.Queue;
        var hctxs = string.Join("; ", q.HardwareContexts.Select(h =>
            $"hctx{h.Index}: pending {h.PendingCount}, tags in use {h.Tags.InUse}, tag waiters {h.Tags.BitmapTags.WaitersActive}, depth {h.Tags.BitmapTags.Depth}, wake batch {h.Tags.BitmapTags.WakeBatch}, stopped {h.IsStopped}, restart {h.NeedsRestart}"));
        return $"queue: nr_requests {q.NrRequests}, usage {q.Usage.Count}, frozen {q.Usage.IsFrozen} (depth {q.Usage.FreezeDepth}, {q.Usage.WaiterCount} waiting for the thaw), quiesced {q.IsQuiesced}; {hctxs}";
    }

    // Run by each mode's class. In ring dispatch this hung (issue 16 item 12) with the queue frozen
    // and quiesced, no tag in use, no tag waiter and every worker waiting for the thaw: the
    // nr_requests writer's quiesce wait (blk-mq-semantics §2.6 item 29 freezes and quiesces;
    // §3.6 item 30, no ->queue_rq running on return: blk_mq_wait_quiesce_done) missed
    // the end of the dispatch loop's round, so the queue was never unquiesced nor thawed. Fixed
    // by the Dekker pair in DispatchLoop.WaitIdleAsync (DispatchLoopParkSpec covers the race).
    protected async Task DepthChangesRacingTagWaiters()
    {
        var device = await Create("dc0");
        const int workers = 8;
        const int perWorker = 1_500;
        const int block = 4096;
        var slots = (int)(device.Capacity / (128 * 1024));
        var shadow = new byte[device.Capacity];
        var done = 0L;

        // Each worker owns its slots, so the shadow copy is exact without locking.
        async Task Worker(int w)
        {
            var random = new Random(w);
            var buffer = new byte[128 * 1024];
            var back = new byte[128 * 1024];
            for (var i = 0; i < perWorker; i++)
            {
                var slot = (random.Next(slots / workers) * workers) + w;
                var length = random.Next(1, 33) * block;
                var offset = (long)slot * buffer.Length;
                if (random.Next(2) == 0)
                {
                    random.NextBytes(buffer.AsSpan(0, length));
                    await device.WriteAsync(offset, buffer.AsMemory(0, length), cpu: w % 4);
                    buffer.AsSpan(0, length).CopyTo(shadow.AsSpan((int)offset, length));
                }
                else
                {
                    await device.ReadAsync(offset, back.AsMemory(0, length), cpu: w % 4);
                    Assert.True(back.AsSpan(0, length).SequenceEqual(shadow.AsSpan((int)offset, length)), $"worker {w} read {offset}+{length} differs from what it wrote");
                }

                Interlocked.Increment(ref done);
            }
        }

        var load = Task.WhenAll(Enumerable.Range(0, workers).Select(w => Task.Run(() => Worker(w))));
        var writes = 0;
        var churn = Task.Run(async () =>
        {
            var values = new[] { "4", "16", "64", "2" };
            while (!load.IsCompleted)
            {
                await device.Attributes.WriteAsync("block/dc0/queue/nr_requests", values[writes++ % values.Length]);
                await Task.WhenAny(load, Task.Delay(5));
            }
        });

        await Bounded(load, $"the load of {workers * perWorker} I/Os under nr_requests writes", () => $"{Interlocked.Read(ref done)} done, {Volatile.Read(ref writes)} writes; {QueueState(device)}");
        await Bounded(churn, "the nr_requests writer", () => QueueState(device));
        Assert.True(writes > 1);
        Assert.Equal(0, device.Queue.Usage.Count);
        Assert.All(device.Queue.HardwareContexts, h => Assert.Equal(0, h.Tags.InUse));
        Assert.All(device.Queue.HardwareContexts, h => Assert.Equal(0, h.Tags.BitmapTags.WaitersActive));
    }

    [Fact]
    public async Task Shrinking_the_depth_wakes_waiters_held_back_by_a_larger_batch()
    {
        // Many waiters on a deep queue; the depth drops to 4 while they wait: all must run.
        var device = await Create("dc1", depth: 64);
        await device.Queue.QuiesceAsync();
        var ios = Enumerable.Range(0, 200).Select(i => device.WriteAsync(i % 1024 * 4096L, new byte[4096], cpu: i % 4).AsTask()).ToArray();
        await AwaitConditionAsync(() => Task.FromResult(device.Queue.HardwareContexts.Sum(h => h.Tags.BitmapTags.WaitersActive) > 0), Generous, Poll);
        var resize = device.Attributes.WriteAsync("block/dc1/queue/nr_requests", "4").AsTask();
        device.Queue.Unquiesce();
        await Bounded(resize, "the resize");
        await Bounded(Task.WhenAll(ios), "the waiters");
        Assert.Equal("4", device.Attributes.Read("block/dc1/queue/nr_requests").Trim());
    }

    [Fact]
    public async Task Shutdown_during_a_hotplug_that_waits_on_a_device_that_never_drains_fails_every_io()
    {
        // An outside audit: a write held for an hour by a device, a CPU going offline (its remap
        // waits for that device to drain), then the host stops. The remap never ended, so the
        // devices' removal, queued behind it, never ran: the write never completed and the other
        // device kept serving after the stop. Now the remap stops waiting when the node stops.
        var stuck = await Layer.CreateDeviceAsync(new DeviceOptions
        {
            Name = "dc-stuck", Dispatch = Mode, Size = 16 << 20, MemoryBacked = true, SubmitQueues = 2, PollQueues = 0,
            IrqMode = IrqMode.Timer, CompletionNsec = 3_600_000_000_000, IoTimeoutMs = 600_000,
        });
        var good = await Create("dc-good");
        var held = stuck.WriteAsync(0, new byte[4096]).AsTask();
        await AwaitConditionAsync(() => Task.FromResult(stuck.Queue.InFlightCount > 0), Generous, Poll);
        var hotplug = Layer.SetCpuOnlineAsync(1, online: false);
        await AwaitConditionAsync(() => Task.FromResult(stuck.Queue.Usage.IsFrozen), Generous, Poll);
        var waiting = good.WriteAsync(0, new byte[4096]).AsTask();

        await Bounded(CoordinatedShutdown.Get(Sys).Run(CoordinatedShutdown.ClrExitReason.Instance), "the shutdown");
        await Bounded(held.ContinueWith(_ => { }, TaskScheduler.Default), "the held write");
        Assert.Equal(BlockStatus.Offline, Assert.IsType<BlockIoException>(held.Exception!.InnerException).Status);
        await Bounded(waiting.ContinueWith(_ => { }, TaskScheduler.Default), "the other device's write");
        await Bounded(hotplug.ContinueWith(_ => { }, TaskScheduler.Default), "the hotplug event");
        // It fails as calls to a stopped layer do, not as if its caller had cancelled it (an
        // embedding audit got a TaskCanceledException, and an ERROR line with a stack trace).
        Assert.IsType<ObjectDisposedException>(hotplug.Exception!.InnerException);
        Assert.Empty(Layer.Devices);
    }

    [Fact]
    public async Task A_device_error_while_the_device_is_removed_behind_a_hotplug_resets_it_and_nothing_hangs()
    {
        // An outside audit (crash faults, CPU hotplug and destroys under load): a round that
        // faulted while its device was being removed stopped its hardware queue, and the removal
        // dropped the device error, so nothing reset the device and started the queue again. The
        // stopped queue could not drain, the hotplug re-map that had frozen it waited for ever, and
        // the removal (queued behind the re-map at the topology) with it: destroy, hotplug and
        // I/O all hung. Here: two writes staged on a quiesced queue, a re-map that waits for them,
        // the removal, then the queue runs and its second request crashes the device.
        var device = await Layer.CreateDeviceAsync(new DeviceOptions
        {
            Name = "dc-crash", Dispatch = Mode, Size = 8 << 20, MemoryBacked = true, SubmitQueues = 1, PollQueues = 0,
            NoMerges = MergePolicy.Off, // two requests, not one merged: the second is the one that crashes
            Faults = new FaultInjectionOptions { CrashAfter = 2, Seed = 5 },
        });
        var queue = device.Queue;
        await queue.QuiesceAsync();
        var writes = Enumerable.Range(0, 2).Select(i => device.WriteAsync(i * (1L << 20), Enumerable.Repeat((byte)(i + 1), 4096).ToArray()).AsTask()).ToArray();
        await AwaitConditionAsync(() => Task.FromResult(queue.HardwareContexts.Sum(h => h.Tags.InUse) == 2), Generous, Poll);
        var hotplug = Layer.SetCpuOnlineAsync(3, online: false);
        await AwaitConditionAsync(() => Task.FromResult(queue.Usage.IsFrozen), Generous, Poll);
        var destroy = Layer.DestroyDeviceAsync("dc-crash");
        await Layer.GetDeviceInfoAsync("dc-crash"); // answered after the removal began (one sender, in order)

        queue.Unquiesce();
        await Bounded(Task.WhenAll(writes), "the writes", () => QueueState(device));
        await Bounded(hotplug, "the hotplug event", () => QueueState(device));
        Assert.Equal(0, await destroy.WaitAsync(Generous));
        Assert.Equal(1, queue.Stats.Resets);
        await Layer.SetCpuOnlineAsync(3, online: true);
    }

    [Fact]
    public async Task Shutdown_with_a_frozen_quiesced_queue_and_tag_waiters_fails_every_io()
    {
        var device = await Create("dc2", depth: 4);
        var queue = device.Queue;

        // Tags all taken by staged requests that cannot dispatch, waiters behind them, and a freeze
        // that therefore never drains: then the layer shuts down.
        await queue.QuiesceAsync();
        var ios = Enumerable.Range(0, 64).Select(i => device.WriteAsync(i * 4096L, new byte[4096], cpu: i % 4).AsTask()).ToArray();
        await AwaitConditionAsync(() => Task.FromResult(queue.HardwareContexts.Sum(h => h.Tags.BitmapTags.WaitersActive) > 0), Generous, Poll);
        queue.Freeze();
        var late = device.WriteAsync(0, new byte[4096]).AsTask();

        await Bounded(Sys.Terminate(), "the actor system's termination");
        foreach (var io in ios.Append(late))
        {
            await Bounded(io.ContinueWith(_ => { }, TaskScheduler.Default), "an outstanding I/O");
            Assert.True(io.IsFaulted, "an outstanding I/O succeeded on a queue that never dispatched");
            var error = Assert.IsType<BlockIoException>(io.Exception!.InnerException);
            Assert.Equal(BlockStatus.Offline, error.Status);
        }
    }
}

/// <summary>Depth changes in ring dispatch.</summary>
public sealed class RingDepthChangeSpec(ITestOutputHelper output) : DepthChangeSpec(DispatchMode.Ring, output)
{
    [Fact]
    public Task Depth_changes_racing_tag_waiters_lose_no_waiter_and_no_data() => DepthChangesRacingTagWaiters();
}

/// <summary>Depth changes in mailbox dispatch.</summary>
public sealed class MailboxDepthChangeSpec(ITestOutputHelper output) : DepthChangeSpec(DispatchMode.Mailbox, output)
{
    [Fact]
    public Task Depth_changes_racing_tag_waiters_lose_no_waiter_and_no_data() => DepthChangesRacingTagWaiters();
}
