using ActorBlk.Actors.Tests.Support;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers;
using ActorBlk.Hardware.Drivers.Stacking;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;
using Xunit;
using Xunit.Abstractions;

namespace ActorBlk.Actors.Tests;

/// <summary>
/// A plug never holds back an I/O the flow awaits (blk-mq-semantics §3.3: a task's plug is
/// flushed before it sleeps), and a freeze never waits on a plugged request (issue 16 item 1).
/// Every liveness check is bounded: a hang fails the test instead of hanging it.
/// </summary>
public abstract class PlugUnderEventsSpec : Akka.TestKit.Xunit2.TestKit
{
    private static readonly TimeSpan Generous = TimeSpan.FromSeconds(60);

    // AwaitConditionAsync polls every tenth of its limit unless told otherwise (seconds here).
    private static readonly TimeSpan Poll = TimeSpan.FromMilliseconds(10);

    protected PlugUnderEventsSpec(DispatchMode mode, ITestOutputHelper output, IrqMode irqMode = IrqMode.SoftIrq)
        : base(Configs.Simulated, output: output)
    {
        Mode = mode;
        Irq = irqMode;
    }

    protected DispatchMode Mode { get; }

    protected IrqMode Irq { get; }

    private BlockLayer Layer => BlockLayer.Get(Sys);

    private Task<IBlockDevice> Create(string name, int depth = 64) => Layer.CreateDeviceAsync(new DeviceOptions
    {
        Name = name,
        Dispatch = Mode,
        Size = 16 << 20,
        MemoryBacked = true,
        SubmitQueues = 2,
        PollQueues = 0,
        HwQueueDepth = depth,
        IrqMode = Irq,
    });

    private static async Task Bounded(Task work, string what)
    {
        var winner = await Task.WhenAny(work, Task.Delay(Generous));
        Assert.True(winner == work, $"{what} did not finish within {Generous.TotalSeconds} s");
        await work;
    }

    private static byte[] Pattern(int length, int seed)
    {
        var data = new byte[length];
        for (var i = 0; i < data.Length; i++)
        {
            data[i] = (byte)(seed + (i * 7));
        }

        return data;
    }

    [Fact]
    public async Task An_awaited_write_inside_a_plug_completes_and_later_io_too()
    {
        var device = await Create("pl0");
        async Task Work()
        {
            using (device.Plug())
            {
                await device.WriteAsync(0, Pattern(4096, 1));
                await device.WriteAsync(4096, Pattern(4096, 2));
            }

            var back = new byte[8192];
            await device.ReadAsync(0, back);
            Assert.Equal(Pattern(4096, 1), back[..4096]);
            Assert.Equal(Pattern(4096, 2), back[4096..]);
        }

        await Bounded(Task.Run(Work), "awaited plugged writes");
        Assert.Equal(0, device.Queue.Usage.Count);
    }

    [Fact]
    public async Task A_bio_submitted_before_the_flow_awaits_another_is_issued_by_that_await()
    {
        // An outside audit (mailbox dispatch, about half of 100 tries): a bio submitted with an
        // end-io, then an await of another bio of the same plug; the first one's request, built
        // by its software-context actor after the await's flush, joined the flushed plug and
        // stayed there until the plug was disposed, so waiting for it inside the plug hung. The
        // flow slept since it submitted the bio: its request is issued, as the kernel's plug
        // flush on schedule() issues everything the task submitted before it slept.
        var device = await Create("pl9");
        async Task Work()
        {
            for (var i = 0; i < 100; i++)
            {
                var first = new TaskCompletionSource<BlockStatus>(TaskCreationOptions.RunContinuationsAsynchronously);
                using (device.Plug())
                {
                    device.SubmitWithEndIo(BlockOp.Write, 0, 4096, Pattern(4096, i), RequestFlags.None, i % 2, new EndIo(first));
                    await device.WriteAsync(409_600, Pattern(4096, i + 1));
                    Assert.Equal(BlockStatus.Ok, await first.Task.WaitAsync(Generous));
                }
            }
        }

        await Bounded(Task.Run(Work), "a bio submitted before an await in the plug");

        // The last end_io call-back signals the flow while its request still holds the usage
        // reference: the completion drops it once the call-back returns (CompleteHolding, as
        // blk_mq_end_request frees after bio_endio), which may be just after the flow went on.
        await Bounded(AwaitConditionAsync(() => Task.FromResult(device.Queue.Usage.Count == 0), Generous, Poll), "the last usage reference");
        Assert.Equal(0, device.Queue.Usage.Count);
    }

    private sealed class EndIo(TaskCompletionSource<BlockStatus> done) : IBioEndIo
    {
        public void OnBioComplete(Bio bio, BlockStatus status) => done.TrySetResult(status);
    }

    [Fact]
    public async Task More_plugged_writes_than_tags_awaited_in_order_all_complete()
    {
        // An outside audit: with depth 4 and 20 writes started inside a plug, then awaited in order,
        // the flow hung after 4. Writes that waited for a tag were built later, as tags came back,
        // and went into the plug, which held their tags while the write the flow awaited waited for
        // one. A request built after a wait for a tag is now issued at once (the kernel's tag wait
        // sleeps, which flushes the plug). Depth 1 and a shared tag set are the tightest forms.
        foreach (var depth in new[] { 1, 4 })
        {
            var device = await Create($"tw{depth}", depth);
            async Task Work()
            {
                for (var round = 0; round < 20; round++)
                {
                    using var plug = device.Plug();
                    var writes = new List<ValueTask>();
                    for (var i = 0; i < 5 * depth; i++)
                    {
                        writes.Add(device.WriteAsync(i * 16384L, Pattern(4096, i)));
                    }

                    foreach (var w in writes)
                    {
                        await w;
                    }
                }
            }

            await Bounded(Task.Run(Work), $"plugged writes over {depth} tag(s)");
            await AwaitConditionAsync(() => Task.FromResult(device.Queue.HardwareContexts.All(h => h.Tags.InUse == 0)), Generous, Poll);
        }
    }

    [Fact]
    public async Task An_await_inside_a_plug_on_a_stacked_device_completes_and_a_reload_flushes_what_is_not_awaited()
    {
        // The stacked bio's members' requests went into the flow's plug while the stacked bio
        // itself was unplugged, so awaiting it flushed nothing: it waited for ever, and a table
        // reload (a freeze of the stacked queue) timed out waiting for it.
        await Create("st-m0");
        await Create("st-m1");
        await Layer.CreateStackedDeviceAsync("st0");
        var stacked = await Layer.LoadTableAsync("st0", StackTable.Linear("st-m0", "st-m1"));
        async Task Work()
        {
            using (stacked.Plug())
            {
                await stacked.WriteAsync(0, Pattern(4096, 3));
                var pending = stacked.WriteAsync(8192, Pattern(4096, 4)).AsTask();

                // Not awaited yet: the reload freezes the stacked queue, which flushes the plug.
                await Layer.LoadTableAsync("st0", StackTable.Linear("st-m0", "st-m1"));
                await pending;
            }

            var back = new byte[4096];
            await stacked.ReadAsync(8192, back);
            Assert.Equal(Pattern(4096, 4), back);
        }

        await Bounded(Task.Run(Work), "an await inside a plug on a stacked device");
    }

    [Fact]
    public async Task Nested_plugs_a_plug_over_two_devices_and_an_await_resuming_elsewhere_work()
    {
        var a = await Create("pl1a");
        var b = await Create("pl1b");
        async Task Work()
        {
            using (a.Plug())
            {
                var first = a.WriteAsync(0, Pattern(4096, 3));
                var second = b.WriteAsync(0, Pattern(4096, 4));
                using (b.Plug())
                {
                    await b.WriteAsync(8192, Pattern(4096, 5));
                }

                // Resume on another thread and keep using the same plug there.
                await Task.Yield();
                await Task.Run(async () => await a.WriteAsync(8192, Pattern(4096, 6)));
                await first;
                await second;
                await Task.WhenAll(a.WriteAsync(16384, Pattern(4096, 7)).AsTask(), b.WriteAsync(16384, Pattern(4096, 8)).AsTask());
            }
        }

        await Bounded(Task.Run(Work), "nested and multi-device plugs");
        var back = new byte[4096];
        await a.ReadAsync(8192, back);
        Assert.Equal(Pattern(4096, 6), back);
        await b.ReadAsync(16384, back);
        Assert.Equal(Pattern(4096, 8), back);
    }

    [Fact]
    public async Task A_freeze_does_not_wait_for_a_plugged_request_the_flow_has_not_awaited()
    {
        var device = await Create("pl2");
        using var plugged = new SemaphoreSlim(0);
        using var release = new SemaphoreSlim(0);
        var flow = Task.Run(async () =>
        {
            using (var plug = device.Plug())
            {
                var write = device.WriteAsync(0, Pattern(4096, 9));
                while (plug.Count == 0 && !write.IsCompleted)
                {
                    await Task.Yield();
                }

                plugged.Release();

                // The flow now waits on something that is not an I/O (the plug cannot see it).
                await release.WaitAsync();
                await write;
            }
        });

        await plugged.WaitAsync();
        await Bounded(device.Queue.FreezeAsync(), "a freeze with a plugged request");
        device.Queue.Unfreeze();
        release.Release();
        await Bounded(flow, "the plugged flow");
    }

    private async Task PluggedLoad(IBlockDevice device, int workers, int perWorker, Func<Task> events)
    {
        var size = device.Capacity;
        var done = 0L;
        using var stop = new CancellationTokenSource();

        async Task Worker(int w)
        {
            var random = new Random(w);
            var data = Pattern(8192, w);
            for (var i = 0; i < perWorker; i++)
            {
                var offset = random.NextInt64(size / 8192) * 8192;
                using (device.Plug())
                {
                    if (i % 3 == 0)
                    {
                        var first = device.WriteAsync(offset, data.AsMemory(0, 4096), cpu: w % 4);
                        await device.WriteAsync(offset + 4096, data.AsMemory(4096), cpu: w % 4);
                        await first;
                    }
                    else
                    {
                        await device.WriteAsync(offset, data, cpu: w % 4);
                    }
                }

                Interlocked.Increment(ref done);
            }
        }

        var load = Task.WhenAll(Enumerable.Range(0, workers).Select(w => Task.Run(() => Worker(w))));
        var churn = Task.Run(async () =>
        {
            while (!load.IsCompleted)
            {
                await events();

                // Events every few milliseconds, as in the report: back to back, a freeze loop
                // that never yields would starve the thawed bios instead of testing the plug.
                await Task.WhenAny(load, Task.Delay(2));
            }
        });

        await Bounded(load, $"plugged load under events ({Interlocked.Read(ref done)} I/Os done)");
        await Bounded(churn, "the event source");
        Assert.Equal(workers * perWorker, done);
        await Bounded(AwaitConditionAsync(() => Task.FromResult(device.Queue.Usage.Count == 0), Generous, Poll), "the drain");
        Assert.All(device.Queue.HardwareContexts, h => Assert.Equal(0, h.Tags.InUse));
    }

    [Fact]
    public async Task Plugged_awaited_io_survives_cpu_hotplug_under_load()
    {
        var device = await Create("pl3");
        var cpu = 0;
        await PluggedLoad(device, workers: 8, perWorker: 300, async () =>
        {
            var c = 1 + (cpu++ % 3);
            await Layer.SetCpuOnlineAsync(c, online: false);
            await Layer.SetCpuOnlineAsync(c, online: true);
        });
        await Bounded(Layer.DestroyDeviceAsync("pl3"), "destroy after hotplug");
    }

    [Fact]
    public async Task Plugged_awaited_io_survives_nr_requests_writes_under_load()
    {
        var device = await Create("pl4");
        var values = new[] { 4, 16, 64, 8 };
        var n = 0;
        await PluggedLoad(device, workers: 8, perWorker: 300, async () =>
            await device.Attributes.WriteAsync("block/pl4/queue/nr_requests", values[n++ % values.Length].ToString(System.Globalization.CultureInfo.InvariantCulture)));
    }

    [Fact]
    public async Task Plugged_awaited_io_survives_freezes_and_supervision_resets_under_load()
    {
        var device = await Create("pl5");
        var n = 0;
        await PluggedLoad(device, workers: 8, perWorker: 300, async () =>
        {
            if (n++ % 2 == 0)
            {
                await device.Queue.FreezeAsync();
                device.Queue.Unfreeze();
            }
            else
            {
                await device.Queue.QuiesceAsync();
                device.Queue.Unquiesce();
            }
        });
    }

    [Fact]
    public async Task Destroy_finishes_while_workers_await_plugged_io()
    {
        var device = await Create("pl6");
        var failures = 0L;
        var started = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);

        async Task Worker(int w)
        {
            var data = Pattern(4096, w);
            for (var i = 0; ; i++)
            {
                try
                {
                    using (device.Plug())
                    {
                        await device.WriteAsync((w * 64L + (i % 64)) * 4096, data, cpu: w % 4);
                    }
                }
                catch (BlockIoException)
                {
                    Interlocked.Increment(ref failures);
                    return;
                }
                catch (InvalidBlockRequestException)
                {
                    Interlocked.Increment(ref failures);
                    return;
                }

                if (i == 20)
                {
                    started.TrySetResult();
                }
            }
        }

        var load = Task.WhenAll(Enumerable.Range(0, 8).Select(w => Task.Run(() => Worker(w))));
        await started.Task;
        await Bounded(Layer.DestroyDeviceAsync("pl6"), "destroy under plugged load");
        await Bounded(load, "the workers after destroy");
        Assert.Equal(8, failures);
        Assert.Equal(QueueState.Dead, device.Queue.State);
    }
}

/// <summary>Plugs under events in ring dispatch.</summary>
public sealed class RingPlugUnderEventsSpec(ITestOutputHelper output) : PlugUnderEventsSpec(DispatchMode.Ring, output);

/// <summary>Plugs under events in mailbox dispatch.</summary>
public sealed class MailboxPlugUnderEventsSpec(ITestOutputHelper output) : PlugUnderEventsSpec(DispatchMode.Mailbox, output);

/// <summary>
/// Plugs under events in mailbox dispatch with timer completions (irqmode 2), which the CPU's
/// mailbox thread that armed them fires itself (<c>CpuTimerHost</c>): awaited plugged I/O, freezes
/// and hotplug while completions are armed on those threads.
/// </summary>
public sealed class MailboxTimerPlugUnderEventsSpec(ITestOutputHelper output) : PlugUnderEventsSpec(DispatchMode.Mailbox, output, IrqMode.Timer);
