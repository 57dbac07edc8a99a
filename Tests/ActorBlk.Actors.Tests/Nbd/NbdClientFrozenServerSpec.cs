using ActorBlk.Actors.Tests.Support;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Requests;
using ActorBlk.Testing;
using Akka.Actor;
using Akka.Configuration;
using Xunit;
using Xunit.Abstractions;

namespace ActorBlk.Actors.Tests.Nbd;

/// <summary>
/// The NBD client driver under supervision against a <see cref="FakeNbdServer"/> that freezes
/// (takes requests and answers none, and greets no new connection) for longer than io_timeout,
/// then resumes. Virtual time drives the timeout scans and the reopen back-off.
/// </summary>
public sealed class NbdClientFrozenServerSpec : Akka.TestKit.Xunit2.TestKit
{
    private const int Reads = 4;

    private static readonly TimeSpan Liveness = TimeSpan.FromSeconds(30);

    private static readonly Config Frozen = ConfigurationFactory.ParseString("""
        actorblk.supervision {
          reopen-backoff-min = 100ms
          reopen-backoff-max = 1s
          reopen-attempts = 3
          max-reopens = 3
        }
        """).WithFallback(Configs.VirtualTime);

    public NbdClientFrozenServerSpec(ITestOutputHelper output)
        : base(Frozen, output: output)
    {
    }

    private VirtualScheduler Scheduler => (VirtualScheduler)Sys.Scheduler;

    private async Task<RequestQueueProtocol.Info> InfoOf(string device) =>
        await Sys.ActorSelection($"/user/actorblk/dev-{device}-*").Ask<RequestQueueProtocol.Info>(RequestQueueProtocol.GetInfo.Instance, Liveness);

    // Advances virtual time in steps until the condition holds (timers re-arm as they fire).
    private Task AdvanceUntil(Func<bool> condition, int stepMs) => AwaitConditionAsync(() =>
    {
        if (!condition())
        {
            Scheduler.Advance(TimeSpan.FromMilliseconds(stepMs));
        }

        return Task.FromResult(condition());
    }, Liveness, TimeSpan.FromMilliseconds(10));

    // Suspected from the audit of commit 113fae4 (nbdkit stopped for longer than io_timeout): the
    // first timeouts kill the connection and reset the device, and the reset's reconnect waits for
    // the frozen server. Meanwhile the requests it will take back expired every io_timeout again,
    // and were counted: the reset they asked for waited behind the running one, and the loss of
    // the killed connection, reported once the reset had begun, could too. When the server
    // resumed, the device was reset (or stopped and reopened) a second time at once, closing its
    // healthy fresh connection. The kernel's nbd requeues such requests to the new socket and
    // blames only the socket a request went out on. Now: one recovery, one new connection, every
    // read completed once with the resumed server's data, every tag freed.
    [Fact]
    public async Task A_server_frozen_for_longer_than_io_timeout_costs_one_recovery_and_every_read_completes_once()
    {
        var held = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var resume = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var server = new FakeNbdServer(_ => FakeNbdExport.Default, async s =>
        {
            if (s.Index > 0)
            {
                await s.ServeAsync(0x5A);
                return;
            }

            // Frozen: the first connection takes the reads and answers none.
            for (var i = 0; i < Reads; i++)
            {
                await s.ReadRequestAsync();
            }

            held.TrySetResult();
            while (await s.ReadRequestAsync() is not null)
            {
            }
        })
        {
            // Frozen too for a new connection, until it resumes.
            Greeting = i => i == 0 ? Task.CompletedTask : resume.Task,
        };

        var layer = BlockLayer.Get(Sys);
        var device = await layer.CreateDeviceAsync(new DeviceOptions { Name = "frozen0", Driver = "nbd", Uri = server.Uri(), IoTimeoutMs = 1000, ResetAfterTimeouts = 2, TimeoutWindowMs = 60_000 });
        try
        {
            var buffers = Enumerable.Range(0, Reads).Select(_ => new byte[4096]).ToArray();
            var reads = buffers.Select((b, i) => device.ExecuteAsync(BlockOp.Read, i * 65536L, 4096, b).AsTask()).ToArray();
            await held.Task.WaitAsync(Liveness);

            // The reads time out: the connection is killed and the device recovers (a reset, or a
            // reopen if the loss is seen first), whose reconnect waits for the frozen server.
            await AdvanceUntil(() => server.Accepted == 2, stepMs: 100);

            // Several timeout periods pass while it waits: the held reads expire again and again.
            var before = (await InfoOf("frozen0")).Timeouts;
            await AdvanceUntil(() => InfoOf("frozen0").Result.Timeouts >= before + (2 * Reads), stepMs: 250);

            // Virtual time stands still from here: a second recovery that waits for a reopen's
            // back-off holds the reads (the old code, as often as not).
            resume.SetResult();
            await AwaitConditionAsync(() => Task.FromResult(reads.All(r => r.IsCompleted)), Liveness, TimeSpan.FromMilliseconds(10),
                "the reads did not complete once the server resumed: the device was stopped again after its recovery, and waits for a reopen");
            Assert.All(await Task.WhenAll(reads), s => Assert.Equal(BlockStatus.Ok, s));
            Assert.All(buffers, b => Assert.All(b, x => Assert.Equal(0x5A, x)));

            // Whatever the driver actor was told during the recovery has been handled once it
            // answers (a second reset quiesces the queue at once), and a read after that runs
            // once any such reset has ended.
            var driverActor = await Sys.ActorSelection("/user/actorblk/dev-frozen0-*/driver-0").ResolveOne(Liveness);
            var probe = CreateTestProbe();
            probe.Watch(driverActor);
            driverActor.Tell(HardwareQueue.WaitIdle.Instance, probe.Ref);
            Assert.IsType<HardwareQueue.DispatchIdle>(await probe.ExpectMsgAsync<object>(Liveness));
            var after = new byte[4096];
            Assert.Equal(BlockStatus.Ok, await device.ExecuteAsync(BlockOp.Read, 1 << 20, 4096, after).AsTask().WaitAsync(Liveness));

            // One new connection: the fresh one was not closed by a second reset or a reopen.
            Assert.Equal(2, server.Accepted);
            var info = await InfoOf("frozen0");
            Assert.True(info.Resets <= 1, $"{info.Resets} resets");
            Assert.Equal("online", info.Health);
            Assert.Equal(0L, device.Queue.DoubleCompletions);
            await AwaitConditionAsync(() => Task.FromResult(device.Queue.HardwareContexts.All(h => h.Tags.InUse == 0)), Liveness, TimeSpan.FromMilliseconds(10));
            Assert.Empty(server.Faults);
        }
        finally
        {
            await layer.DestroyDeviceAsync("frozen0");
        }
    }
}
