using ActorBlk.Actors.Tests.Support;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;
using ActorBlk.Testing;
using Akka.Actor;
using Akka.Configuration;
using Xunit;
using Xunit.Abstractions;

namespace ActorBlk.Actors.Tests;

/// <summary>
/// Supervision of the device-driver actor (blk-mq-semantics §3.5, §5): a transient device error
/// resets the device and retries what it held, up to max_retries; a device that is gone goes
/// offline, or is reopened with back-off when its driver can; timeouts that pile up reset the
/// device. Virtual time drives timeout scans and back-off. Both dispatch modes.
/// </summary>
public abstract class SupervisionSpec : Akka.TestKit.Xunit2.TestKit
{
    private static readonly Config Supervised = ConfigurationFactory.ParseString("""
        actorblk.supervision {
          max-resets = 3
          reset-window = 60s
          reopen-backoff-min = 100ms
          reopen-backoff-max = 1s
          reopen-attempts = 3
          max-reopens = 2
        }
        """).WithFallback(Configs.VirtualTime);

    protected SupervisionSpec(DispatchMode mode, ITestOutputHelper output)
        : base(Supervised, output: output)
    {
        Mode = mode;
    }

    protected DispatchMode Mode { get; }

    private protected BlockLayer Layer => BlockLayer.Get(Sys);

    private VirtualScheduler Scheduler => (VirtualScheduler)Sys.Scheduler;

    private protected async Task<IBlockDevice> Create(ScriptedDriver driver, string name, DeviceOptions? options = null) =>
        await Layer.CreateDeviceAsync((options ?? new DeviceOptions()) with { Name = name, Dispatch = Mode }, driver);

    private protected static DriverFeatures Resettable => DriverFeatures.Resettable;

    // The driver actor of hardware queue 0 (each hardware queue has its own).
    private protected ActorSelection DriverOf(string device) => Sys.ActorSelection($"/user/actorblk/dev-{device}-*/driver-0");

    private async Task<RequestQueueProtocol.Info> InfoOf(string device) =>
        await Sys.ActorSelection($"/user/actorblk/dev-{device}-*").Ask<RequestQueueProtocol.Info>(RequestQueueProtocol.GetInfo.Instance, TimeSpan.FromSeconds(30));

    private protected Task Until(Func<bool> condition) => AwaitConditionAsync(() => Task.FromResult(condition()), TimeSpan.FromSeconds(30), TimeSpan.FromMilliseconds(10));

    // Advances virtual time in steps until the condition holds (timers re-arm as they fire).
    private Task AdvanceUntil(Func<bool> condition, int stepMs = 50) => AwaitConditionAsync(() =>
    {
        if (condition())
        {
            return Task.FromResult(true);
        }

        Scheduler.Advance(TimeSpan.FromMilliseconds(stepMs));
        return Task.FromResult(condition());
    }, TimeSpan.FromSeconds(20), TimeSpan.FromMilliseconds(10));

    // Requests in these tests sit 64 KiB apart so the plug never merges them into one.
    private protected static void AssertTagsFree(IBlockDevice device) =>
        Assert.All(device.Queue.HardwareContexts, h => Assert.Equal(0, h.Tags.InUse));

    [Fact]
    public async Task A_transient_device_error_resets_the_device_and_retries_what_it_held()
    {
        var driver = new ScriptedDriver(extra: Resettable);
        var device = await Create(driver, "reset");
        var held = Enumerable.Range(0, 3).Select(i => device.ReadAsync(i * 65536L, new byte[512]).AsTask()).ToArray();
        await Until(() => driver.InFlight.Count == 3);

        driver.ThrowOnce = new BlockDeviceErrorException("controller fatal status");
        Task fourth = null!;
        await EventFilter.Error(contains: "supervisor: Restart after BlockDeviceErrorException").ExpectOneAsync(async () =>
        {
            fourth = device.ReadAsync(3 * 65536L, new byte[512]).AsTask();
            await Until(() => driver.ResetCalls == 1);
        });

        // The three the device held come back, with the one that hit the error.
        await Until(() => driver.InFlight.Count == 4);
        driver.CompleteAll();
        await Task.WhenAll([.. held, fourth]);

        var info = await InfoOf("reset");
        Assert.Equal(1, info.Resets);
        Assert.Equal("online", info.Health);
        Assert.Equal(1, info.DeviceErrors);
        AssertTagsFree(device);
    }

    // An outside driver audit: a driver whose InitHardwareContext throws (a bug) aborted the
    // process in ring dispatch (the exception ended the dispatch loop's thread unhandled), and in
    // mailbox dispatch lost the batch it was about to issue, already off the ring: its callers
    // waited for ever and its tags outlived the device. The throw is now a device error: the
    // device is reset, the next dispatch initialises the hardware queue again, and the I/O runs.
    [Fact]
    public async Task A_driver_whose_InitHardwareContext_throws_is_reset_and_its_IO_completes()
    {
        var driver = new ScriptedDriver(extra: Resettable) { CompleteInline = true, ThrowOnInit = new InvalidOperationException("driver bug in init_hctx") };
        var device = await Create(driver, "initfault", new DeviceOptions { SubmitQueues = 1 });

        await EventFilter.Error(contains: "supervisor: Restart after InvalidOperationException").ExpectOneAsync(async () =>
        {
            await device.ReadAsync(0, new byte[512]).AsTask().WaitAsync(TimeSpan.FromSeconds(30));
        });

        Assert.Equal(2, driver.InitHardwareContextCalls);
        Assert.Equal(1, driver.ResetCalls);
        Assert.Equal(0, device.Queue.DoubleCompletions);
        AssertTagsFree(device);
        Assert.Equal(0, await Layer.DestroyDeviceAsync("initfault"));
    }

    // A driver whose Poll threw handed its exception to the caller polling for its I/O, and no
    // one else saw it. It is a device error as a throw from QueueRq is: the poller goes on and
    // the supervisor resets the device; the request completes once, by a later poll (before the
    // reset, or retried after it).
    [Fact]
    public async Task A_driver_whose_Poll_throws_is_reset_and_the_polled_IO_completes()
    {
        var driver = new ScriptedDriver(pollable: true, extra: Resettable) { ThrowOnPollOnce = new InvalidOperationException("driver bug in poll") };
        var device = await Create(driver, "pollfault", new DeviceOptions { SubmitQueues = 1, PollQueues = 1, IoPoll = true });

        await EventFilter.Error(contains: "supervisor: Restart after InvalidOperationException").ExpectOneAsync(async () =>
        {
            var io = device.Submit(BlockOp.Read, 0, new byte[512]);
            await Task.Run(() => device.Poll(io)).WaitAsync(TimeSpan.FromSeconds(30));
            Assert.Equal(BlockStatus.Ok, await io.Completion.AsTask().WaitAsync(TimeSpan.FromSeconds(30)));
        });

        // The reset follows (the poll after the throw may have completed the request first); once
        // it has ended, a poll that throws again would be reported again.
        await Until(() => driver.ResetCalls == 1 && !device.Queue.HardwareContexts[^1].PollFaulted);
        Assert.Equal(1, (await InfoOf("pollfault")).Resets);
        Assert.Equal(0, device.Queue.DoubleCompletions);
        AssertTagsFree(device);
        Assert.Equal(0, await Layer.DestroyDeviceAsync("pollfault"));
    }

    // A Poll that always throws: each reset retries the request and the next poll throws again,
    // one report per reset however fast the caller spins, until max-resets gives the device up
    // and the request completes with Offline, once, its tag freed.
    [Fact]
    public async Task A_driver_whose_Poll_always_throws_is_given_up_and_the_polled_IO_completes_offline()
    {
        var driver = new ScriptedDriver(pollable: true, extra: Resettable) { ThrowOnPoll = new InvalidOperationException("broken poll") };
        var device = await Create(driver, "pollbroken", new DeviceOptions { SubmitQueues = 1, PollQueues = 1, IoPoll = true });

        var io = device.Submit(BlockOp.Read, 0, new byte[512]);
        await Task.Run(() => device.Poll(io)).WaitAsync(TimeSpan.FromSeconds(30));

        Assert.Equal(BlockStatus.Offline, await io.Completion.AsTask().WaitAsync(TimeSpan.FromSeconds(30)));
        var info = await InfoOf("pollbroken");
        Assert.Equal("offline", info.Health);
        Assert.Equal(3, info.Resets);
        Assert.Equal(4, info.DeviceErrors);
        Assert.Equal(0, device.Queue.DoubleCompletions);
        AssertTagsFree(device);
        Assert.Equal(0, await Layer.DestroyDeviceAsync("pollbroken"));
    }

    // The same audit: an ExitHardwareContext that throws at teardown aborted the process in ring
    // dispatch. The queue goes away either way; the destroy completes.
    [Fact]
    public async Task A_driver_whose_ExitHardwareContext_throws_is_still_destroyed()
    {
        var driver = new ScriptedDriver { CompleteInline = true, ThrowOnExit = new InvalidOperationException("driver bug in exit_hctx") };
        var device = await Create(driver, "exitfault", new DeviceOptions { SubmitQueues = 1 });
        await device.ReadAsync(0, new byte[512]);
        Assert.Equal(1, driver.InitHardwareContextCalls);

        Assert.Equal(0, await Layer.DestroyDeviceAsync("exitfault").WaitAsync(TimeSpan.FromSeconds(30)));
        AssertTagsFree(device);
    }

    // A review: fault injection said Resettable over any driver, so a crash injected over the file
    // device took back the requests the kernel still held (retried on the same command while the
    // old entry was pending, or failed with their buffers handed back). Over a driver that cannot
    // abandon its requests the crash is a reset that takes nothing back: the device answers them.
    [Fact]
    public async Task A_crash_injected_over_a_driver_that_cannot_abandon_its_requests_leaves_them_to_the_device()
    {
        var driver = new ScriptedDriver();
        var device = await Create(driver, "crash-held", new DeviceOptions { Faults = new FaultInjectionOptions { CrashAfter = 4 } });
        var held = Enumerable.Range(0, 3).Select(i => device.ExecuteAsync(BlockOp.Read, i * 65536L, 512, new byte[512]).AsTask()).ToArray();
        await Until(() => driver.InFlight.Count == 3);
        var started = driver.InFlight.Select(rq => (Rq: rq, rq.Generation)).ToArray();

        Task<BlockStatus> fourth = null!;
        await EventFilter.Error(contains: "supervisor: Restart after BlockDeviceErrorException").ExpectOneAsync(async () =>
        {
            fourth = device.ExecuteAsync(BlockOp.Read, 3 * 65536L, 512, new byte[512]).AsTask();
            await AwaitConditionAsync(async () => (await InfoOf("crash-held")).Resets == 1, TimeSpan.FromSeconds(30), TimeSpan.FromMilliseconds(10));
        });

        // The reset is done (counted after what it took back): the three are still the device's,
        // under the generation they were started with, and the driver was not told to drop them.
        Assert.All(started, s => Assert.True(s.Rq.State == RequestState.InFlight && s.Rq.Generation == s.Generation, $"{s.Rq} was taken back"));
        Assert.Equal(0, driver.ResetCalls);

        // The one that hit the crash is dispatched again; each completes once, as the device answers.
        await Until(() => driver.InFlight.Count == 4);
        Assert.All(started, s => Assert.True(s.Rq.Complete(BlockStatus.Ok, s.Generation)));
        driver.CompleteAll();
        Assert.All(await Task.WhenAll([.. held, fourth]), s => Assert.Equal(BlockStatus.Ok, s));
        var info = await InfoOf("crash-held");
        Assert.Equal(1, info.Resets);
        Assert.Equal("online", info.Health);
        AssertTagsFree(device);
    }

    [Fact]
    public async Task A_request_out_of_retries_fails_with_an_io_error()
    {
        var driver = new ScriptedDriver(extra: Resettable);
        var device = await Create(driver, "retries", new DeviceOptions { MaxRetries = 1 });
        var read = device.ExecuteAsync(BlockOp.Read, 0, 512, new byte[512]).AsTask();
        await Until(() => driver.InFlight.Count == 1);

        // First reset: retried (1 of 1). Second reset: out of retries.
        DriverOf("retries").Tell(new DeviceDriver.Fail(-1, new BlockDeviceErrorException("link down")));
        await Until(() => driver.ResetCalls == 1 && driver.InFlight.Count == 1);
        DriverOf("retries").Tell(new DeviceDriver.Fail(-1, new BlockDeviceErrorException("link down again")));

        Assert.Equal(BlockStatus.IoError, await read);
        await Until(() => driver.ResetCalls == 2);
        AssertTagsFree(device);
    }

    [Fact]
    public async Task A_fail_fast_request_is_not_retried()
    {
        var driver = new ScriptedDriver(extra: Resettable);
        var device = await Create(driver, "failfast");
        var read = device.ExecuteAsync(BlockOp.Read, 0, 512, new byte[512], RequestFlags.FailFast).AsTask();
        await Until(() => driver.InFlight.Count == 1);

        DriverOf("failfast").Tell(new DeviceDriver.Fail(-1, new BlockDeviceErrorException("transport reset")));

        Assert.Equal(BlockStatus.IoError, await read);
    }

    [Fact]
    public async Task A_device_that_is_gone_goes_offline_and_fails_everything_with_offline()
    {
        var driver = new ScriptedDriver(extra: Resettable);
        var device = await Create(driver, "gone");
        var held = Enumerable.Range(0, 2).Select(i => device.ExecuteAsync(BlockOp.Read, i * 65536L, 512, new byte[512]).AsTask()).ToArray();
        await Until(() => driver.InFlight.Count == 2);

        driver.ThrowOnce = new BlockDeviceErrorException("surprise removal", deviceGone: true);
        Task<BlockStatus> pending = null!;
        await EventFilter.Error(contains: "is offline").ExpectOneAsync(async () =>
        {
            pending = device.ExecuteAsync(BlockOp.Read, 4096, 512, new byte[512]).AsTask();
            await Until(() => device.Queue.IsDying);
        });

        Assert.All(await Task.WhenAll([.. held, pending]), s => Assert.Equal(BlockStatus.Offline, s));
        Assert.Equal(BlockStatus.Offline, await device.ExecuteAsync(BlockOp.Read, 8192, 512, new byte[512]));
        Assert.Equal("offline", (await InfoOf("gone")).Health);
        AssertTagsFree(device);

        // The device can still be destroyed, and its driver is disposed.
        await Layer.DestroyDeviceAsync("gone");
        Assert.True(driver.Disposed);
    }

    [Fact]
    public async Task A_gone_device_is_reopened_with_back_off_and_requests_wait_for_it()
    {
        var driver = new ScriptedDriver(extra: Resettable | DriverFeatures.Reopenable) { ReopenFailures = 2 };
        var device = await Create(driver, "reopen");
        var held = device.ReadAsync(0, new byte[512]).AsTask();
        await Until(() => driver.InFlight.Count == 1);

        driver.ThrowOnce = new BlockDeviceErrorException("cable pulled", deviceGone: true);
        var waiting = device.ReadAsync(512, new byte[512]).AsTask();

        // Attempts after 100 ms and 200 ms fail; the third, 400 ms later, succeeds.
        await EventFilter.Warning(contains: "reopen attempt").ExpectAsync(2, () => AdvanceUntil(() => driver.ReopenCalls == 3));
        await Until(() => driver.InFlight.Count == 2);
        Assert.False(waiting.IsCompleted && held.IsCompleted);
        driver.CompleteAll();
        await Task.WhenAll(held, waiting);

        Assert.Equal("online", (await InfoOf("reopen")).Health);
        Assert.False(device.Queue.IsDying);

        // The reopened device serves new I/O.
        var after = device.WriteAsync(0, new byte[512]).AsTask();
        await Until(() => driver.InFlight.Count == 1);
        driver.CompleteAll();
        await after;
    }

    // Found from outside: reopening ran on the request queue's actor, and an NBD server that
    // accepts and never answers holds a reopen for the connect timeout (10 s). Meanwhile the
    // device's info timed out, a destroy waited for the attempt and then the whole drain timeout,
    // and a node shutdown timed out its phase and left the waiting requests never completed. The
    // attempt now runs on the thread pool: the actor answers, a destroy fails the waiting requests
    // with Offline at once (each once, every tag freed), and the driver is disposed only after the
    // attempt returns.
    [Fact]
    public async Task A_reopen_that_hangs_holds_neither_the_device_info_nor_a_destroy()
    {
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var driver = new ScriptedDriver(extra: Resettable | DriverFeatures.Reopenable) { ReopenGate = gate.Task };
        var device = await Create(driver, "hang");
        var held = device.ExecuteAsync(BlockOp.Read, 0, 512, new byte[512]).AsTask();
        await Until(() => driver.InFlight.Count == 1);
        driver.ThrowOnce = new BlockDeviceErrorException("server frozen", deviceGone: true);
        var waiting = device.ExecuteAsync(BlockOp.Read, 512, 512, new byte[512]).AsTask();
        await AdvanceUntil(() => driver.ReopensBegun == 1);

        // The attempt hangs; the device still answers.
        Assert.Equal("reopening", (await InfoOf("hang")).Health);

        try
        {
            await Layer.DestroyDeviceAsync("hang").WaitAsync(TimeSpan.FromSeconds(30));
            Assert.Equal(BlockStatus.Offline, await held.WaitAsync(TimeSpan.FromSeconds(30)));
            Assert.Equal(BlockStatus.Offline, await waiting.WaitAsync(TimeSpan.FromSeconds(30)));
            Assert.Equal(0L, device.Queue.DoubleCompletions);
            AssertTagsFree(device);
            Assert.False(driver.Disposed);
        }
        finally
        {
            gate.SetResult();
        }

        await Until(() => driver.Disposed);
        Assert.False(driver.DisposedDuringReopen);
    }

    // An outside audit (devices served over NBD, SIGTERM while one was being reopened): the node's
    // stop let the reopen go on, the NBD server's stop (service-unbind) waited for the requests it
    // had passed on, which waited for the reopen, and only the destroy after the phase's timeout
    // failed them: serve took 5.9-7.9 s to exit. The requests now fail Offline as the node begins
    // to stop, before any device is torn down, each once.
    [Fact]
    public async Task A_node_that_begins_to_stop_fails_the_requests_waiting_for_a_reopen_at_once()
    {
        var driver = new ScriptedDriver(extra: Resettable | DriverFeatures.Reopenable) { ReopenFailures = 1000 };
        var device = await Create(driver, "stopreopen");
        var held = device.ExecuteAsync(BlockOp.Read, 0, 512, new byte[512]).AsTask();
        await Until(() => driver.InFlight.Count == 1);
        driver.ThrowOnce = new BlockDeviceErrorException("server gone", deviceGone: true);
        var waiting = device.ExecuteAsync(BlockOp.Read, 65536, 512, new byte[512]).AsTask();
        await AwaitConditionAsync(async () => (await InfoOf("stopreopen")).Health == "reopening", TimeSpan.FromSeconds(30), TimeSpan.FromMilliseconds(10));

        // Virtual time stands still: no reopen attempt runs, so only the stop can end the wait.
        // Seen between the shutdown's first phase and the teardown of the devices (service-stop).
        var seen = new TaskCompletionSource<BlockStatus[]>(TaskCreationOptions.RunContinuationsAsynchronously);
        var shutdown = CoordinatedShutdown.Get(Sys);
        shutdown.AddTask(CoordinatedShutdown.PhaseServiceUnbind, "spec-before-teardown", async () =>
        {
            try
            {
                seen.SetResult(await Task.WhenAll(held, waiting).WaitAsync(TimeSpan.FromSeconds(10)));
            }
            catch (TimeoutException ex)
            {
                seen.SetException(ex);
            }

            return Akka.Done.Instance;
        });
        await shutdown.Run(CoordinatedShutdown.ClrExitReason.Instance).WaitAsync(TimeSpan.FromSeconds(60));

        Assert.All(await seen.Task, status => Assert.Equal(BlockStatus.Offline, status));
        Assert.Equal(0, driver.ReopensBegun);
        Assert.Equal(0L, device.Queue.DoubleCompletions);
        AssertTagsFree(device);
    }

    // A device whose reset waits for the returned gate (a reconnect to a server that accepts and
    // never answers), begun with one read in flight and one that met the error, waiting for it.
    private async Task<(TaskCompletionSource Gate, ScriptedDriver Driver, IBlockDevice Device, Task<BlockStatus> Held, Task<BlockStatus> Failing)> ResetBegunAsync(string name)
    {
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var driver = new ScriptedDriver(extra: Resettable | DriverFeatures.Reopenable) { ResetGate = gate.Task, CancelsRecovery = true };
        var device = await Create(driver, name);
        var held = device.ExecuteAsync(BlockOp.Read, 0, 512, new byte[512]).AsTask();
        await Until(() => driver.InFlight.Count == 1);
        driver.ThrowOnce = new BlockDeviceErrorException("connection reset");
        var failing = device.ExecuteAsync(BlockOp.Read, 65536, 512, new byte[512]).AsTask();
        await Until(() => driver.ResetsBegun == 1);
        return (gate, driver, device, held, failing);
    }

    // A reset that hangs (the NBD driver reconnecting to a server that accepts and never answers,
    // for its connect timeout) held a destroy for as long: the driver actor was inside the reset,
    // the drain waited for the requests the reset would take back, and the queue could stop
    // neither. A destroy now gives the reset a grace of a second, then cancels the recovery
    // (IBlockDriver.CancelRecovery): the reset gives up as "device gone", and the requests it held
    // fail with Offline at once (not at the drain timeout), each once, every tag freed, counted
    // by the destroy, the driver disposed after the reset returned.
    [Fact]
    public async Task A_destroy_during_a_reset_that_hangs_cancels_it_after_a_grace_and_fails_what_it_held_at_once()
    {
        var (gate, driver, device, held, failing) = await ResetBegunAsync("stuckreset");

        try
        {
            Task<int> destroying = null!;
            await EventFilter.Warning(contains: "stuckreset: the device was lost while being removed").ExpectOneAsync(async () =>
            {
                destroying = Layer.DestroyDeviceAsync("stuckreset");
                await AdvanceUntil(() => driver.RecoveryCancelled, stepMs: 100);
                await Until(() => held.IsCompleted && failing.IsCompleted);
            });

            // The destroy counts the read the device held; the other, never started, fails Offline
            // from the dispatch list as every request of an offline queue does.
            Assert.Equal(1, await destroying.WaitAsync(TimeSpan.FromSeconds(60)));
            Assert.Equal(BlockStatus.Offline, await held);
            Assert.Equal(BlockStatus.Offline, await failing);
            Assert.Equal(0L, device.Queue.DoubleCompletions);
            AssertTagsFree(device);
            await Until(() => driver.Disposed);
            Assert.False(driver.DisposedDuringReset);
            Assert.Equal(0, driver.ResetCalls);
        }
        finally
        {
            gate.TrySetResult();
        }
    }

    // A review of the case above: a destroy that cancelled the recovery at once failed every
    // request with Offline, also those waiting for a reset against a server that answers, which
    // would have run within milliseconds. A reset that ends within the grace is not cancelled.
    [Fact]
    public async Task A_destroy_during_a_reset_that_ends_within_the_grace_lets_the_requests_waiting_for_it_run()
    {
        var (gate, driver, device, held, failing) = await ResetBegunAsync("quickreset");

        var destroying = Layer.DestroyDeviceAsync("quickreset");
        await Until(() => device.Queue.IsDying);
        Scheduler.Advance(RequestQueueActor.RecoveryGrace - TimeSpan.FromMilliseconds(100));
        gate.SetResult();

        // The read the reset took back fails with IoError, by the retry rule (RetryOrFail: a dying
        // queue retries nothing), as before this change. The one that met the error was never
        // started: it waits in the dispatch list and runs now.
        Assert.Equal(BlockStatus.IoError, await held.WaitAsync(TimeSpan.FromSeconds(30)));
        Assert.False(driver.RecoveryCancelled);
        await Until(() => driver.InFlight.Count == 1);
        driver.CompleteAll();
        Assert.Equal(0, await destroying.WaitAsync(TimeSpan.FromSeconds(60)));
        Assert.Equal(BlockStatus.Ok, await failing);
        Assert.Equal(1, driver.ResetCalls);
        AssertTagsFree(device);
    }

    // The same audit: requests waiting for a reopen kept timing out every io_timeout; the expiries
    // queued behind the blocked reopen were counted once it succeeded, against the fresh device,
    // which was reset at once (a reset toward max-resets). Timeouts while the device is being
    // reopened are not held against it, and a reopened device starts with a clean count.
    [Fact]
    public async Task Timeouts_while_a_device_is_reopened_do_not_reset_the_reopened_device()
    {
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var driver = new ScriptedDriver(extra: Resettable | DriverFeatures.Reopenable) { ReopenGate = gate.Task, TimeoutAnswer = TimeoutAction.ResetTimer };
        var device = await Create(driver, "slowback", new DeviceOptions { IoTimeoutMs = 1000, ResetAfterTimeouts = 2, TimeoutWindowMs = 60_000 });
        var reads = Enumerable.Range(0, 2).Select(i => device.ExecuteAsync(BlockOp.Read, i * 65536L, 512, new byte[512]).AsTask()).ToArray();
        await Until(() => driver.InFlight.Count == 2);
        driver.ThrowOnce = new BlockDeviceErrorException("server frozen", deviceGone: true);
        var waiting = device.ExecuteAsync(BlockOp.Read, 1 << 20, 512, new byte[512]).AsTask();
        await AdvanceUntil(() => driver.ReopensBegun == 1);

        // Several timeout periods pass while the attempt hangs.
        var before = (await InfoOf("slowback")).Timeouts;
        await AdvanceUntil(() => InfoOf("slowback").Result.Timeouts >= before + 4, stepMs: 500);

        gate.SetResult();
        await Until(() => driver.InFlight.Count == 3);
        driver.CompleteAll();
        Assert.All(await Task.WhenAll([.. reads, waiting]), s => Assert.Equal(BlockStatus.Ok, s));
        Assert.Equal(0, driver.ResetCalls);
        var info = await InfoOf("slowback");
        Assert.Equal((0, "online"), (info.Resets, info.Health));
    }

    [Fact]
    public async Task A_device_that_never_comes_back_is_given_up_after_its_reopen_attempts()
    {
        var driver = new ScriptedDriver(extra: Resettable | DriverFeatures.Reopenable) { ReopenFailures = -1 };
        var device = await Create(driver, "lost");
        driver.ThrowOnce = new BlockDeviceErrorException("gone for good", deviceGone: true);
        var read = device.ExecuteAsync(BlockOp.Read, 0, 512, new byte[512]).AsTask();

        await AdvanceUntil(() => device.Queue.IsDying);

        Assert.Equal(3, driver.ReopenCalls);
        Assert.Equal(BlockStatus.Offline, await read);
    }

    [Fact]
    public async Task Timeouts_that_pile_up_reset_the_device_and_the_timed_out_requests_are_retried()
    {
        var driver = new ScriptedDriver(extra: Resettable) { TimeoutAnswer = TimeoutAction.ResetTimer };
        var device = await Create(driver, "hung", new DeviceOptions { IoTimeoutMs = 1000, ResetAfterTimeouts = 2, TimeoutWindowMs = 10_000 });
        var reads = Enumerable.Range(0, 2).Select(i => device.ReadAsync(i * 65536L, new byte[512]).AsTask()).ToArray();
        await Until(() => driver.InFlight.Count == 2);

        await EventFilter.Error(contains: "Restart after DeviceTimeoutsException").ExpectOneAsync(() =>
            AdvanceUntil(() => driver.ResetCalls == 1, stepMs: 100));

        await Until(() => driver.InFlight.Count == 2);
        driver.CompleteAll();
        await Task.WhenAll(reads);
        var info = await InfoOf("hung");
        Assert.Equal(2, info.Timeouts);
        Assert.Equal(1, info.Resets);
    }

    // The reset counterpart of the reopen case above (an NBD server frozen for longer than
    // io_timeout: the timeouts reset the device, and the reset's reconnect waits for the server):
    // the requests the reset is about to take back kept expiring every io_timeout while it hung,
    // were counted against the device, and the reset they asked for waited in the driver actor's
    // mailbox behind the running one; once the server was back the device was reset a second
    // time at once, its fresh connection closed, the requests taken back and spending a retry
    // again. A reset does not ask for another while it runs (as the kernel's nvme_timeout re-arms
    // while its controller resets), and a reset device starts with a clean count.
    [Fact]
    public async Task Timeouts_while_a_device_is_reset_do_not_reset_it_again_once_it_is_back()
    {
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var driver = new ScriptedDriver(extra: Resettable | DriverFeatures.Reopenable) { ResetGate = gate.Task, TimeoutAnswer = TimeoutAction.ResetTimer };
        var device = await Create(driver, "slowreset", new DeviceOptions { IoTimeoutMs = 1000, ResetAfterTimeouts = 2, TimeoutWindowMs = 60_000 });
        var reads = Enumerable.Range(0, 2).Select(i => device.ExecuteAsync(BlockOp.Read, i * 65536L, 512, new byte[512]).AsTask()).ToArray();
        await Until(() => driver.InFlight.Count == 2);

        // The two time out: the device is reset, and the reset hangs.
        await AdvanceUntil(() => driver.ResetsBegun == 1, stepMs: 100);

        // Several timeout periods pass while it hangs. In ring dispatch the requests it holds
        // expire again and are counted; in mailbox dispatch a scan's second pass waits for the
        // hardware queue's dispatcher, the driver actor inside the reset, and counts nothing.
        var before = (await InfoOf("slowreset")).Timeouts;
        if (Mode == DispatchMode.Ring)
        {
            await AdvanceUntil(() => InfoOf("slowreset").Result.Timeouts >= before + 4, stepMs: 500);
        }
        else
        {
            for (var i = 0; i < 10; i++)
            {
                Scheduler.Advance(TimeSpan.FromMilliseconds(500));
            }
        }

        gate.SetResult();

        // Whatever the driver actor was told while it reset has been handled once it answers.
        await DriverOf("slowreset").Ask<HardwareQueue.DispatchIdle>(HardwareQueue.WaitIdle.Instance, TimeSpan.FromSeconds(30));
        await Until(() => driver.InFlight.Count == 2);
        driver.CompleteAll();
        Assert.All(await Task.WhenAll(reads), s => Assert.Equal(BlockStatus.Ok, s));

        // A read after them runs once any reset asked for meanwhile has ended (a reset quiesces
        // the queue, and its count reaches the queue's actor before it unquiesces).
        var after = device.ExecuteAsync(BlockOp.Read, 1 << 20, 512, new byte[512]).AsTask();
        await Until(() => driver.InFlight.Count == 1);
        driver.CompleteAll();
        Assert.Equal(BlockStatus.Ok, await after);

        Assert.Equal(1, driver.ResetCalls);
        var info = await InfoOf("slowreset");
        Assert.Equal((1, "online"), (info.Resets, info.Health));
        Assert.All(await Task.WhenAll(reads), s => Assert.Equal(BlockStatus.Ok, s));
        Assert.Equal(0L, device.Queue.DoubleCompletions);
        AssertTagsFree(device);
    }

    // A child that is not a driver actor (the hardware queue's, whose timeout scan met a driver
    // bug) is restarted without a reset and reports no end of one: taken for a reset, it left the
    // device "resetting" for good, so its timeouts never reset it and every device error was
    // dropped (a review). Only a driver actor's restart is a reset.
    [Fact]
    public async Task A_restarted_hardware_queue_actor_is_no_reset_and_later_timeouts_and_errors_still_reset_the_device()
    {
        var driver = new ScriptedDriver(extra: Resettable) { TimeoutAnswer = TimeoutAction.ResetTimer, ThrowOnTimeoutOnce = new InvalidOperationException("a driver bug in Timeout") };
        var device = await Create(driver, "notareset", new DeviceOptions { IoTimeoutMs = 1000, ResetAfterTimeouts = 1, TimeoutWindowMs = 60_000 });
        var read = device.ExecuteAsync(BlockOp.Read, 0, 512, new byte[512]).AsTask();
        await Until(() => driver.InFlight.Count == 1);

        // The first expiry throws in the driver (its actor is restarted); the request is re-armed,
        // and its next expiry counts and, with reset_after_timeouts = 1, resets the device. Before,
        // the request stayed marked timed out and was never looked at again, and once it was
        // re-armed no reset came all the same (18 timeouts, "resetting" for good).
        await AdvanceUntil(() => driver.ResetsBegun == 1, stepMs: 500);
        Assert.Null(driver.ThrowOnTimeoutOnce);
        await Until(() => driver.InFlight.Count == 1);
        driver.CompleteAll();
        Assert.Equal(BlockStatus.Ok, await read);
        await Until(() => InfoOf("notareset").Result.Resets == 1);

        // A transient device error resets it again (before, it was dropped as "during a reset").
        driver.ThrowOnce = new BlockDeviceErrorException("controller fatal status");
        var failed = device.ExecuteAsync(BlockOp.Read, 65536, 512, new byte[512]).AsTask();
        await Until(() => driver.ResetsBegun == 2);
        await Until(() => driver.InFlight.Count == 1);
        driver.CompleteAll();
        Assert.Equal(BlockStatus.Ok, await failed);
        await Until(() => InfoOf("notareset").Result.Resets == 2);
        Assert.Equal("online", (await InfoOf("notareset")).Health);
        Assert.Equal(0L, device.Queue.DoubleCompletions);
        AssertTagsFree(device);
    }

    // The other side of the case above: a driver whose Timeout throws at every expiry would keep
    // its request re-armed for ever, never completed. The hardware-queue actor's restarts count
    // toward max-resets with the driver actors' (README, "Supervision"), so past it (3 here) the
    // device is stopped as a gone one and, not reopenable, goes offline: the request completes,
    // once, with Offline, and its tag is free.
    [Fact]
    public async Task A_driver_whose_Timeout_always_throws_goes_offline_after_max_resets_and_its_request_completes_once()
    {
        var driver = new ScriptedDriver(extra: Resettable) { TimeoutAnswer = TimeoutAction.ResetTimer, ThrowOnTimeout = new InvalidOperationException("a driver bug in Timeout") };
        var device = await Create(driver, "brokentimeout", new DeviceOptions { IoTimeoutMs = 1000, ResetAfterTimeouts = 100, TimeoutWindowMs = 60_000 });
        var read = device.ExecuteAsync(BlockOp.Read, 0, 512, new byte[512]).AsTask();
        await Until(() => driver.InFlight.Count == 1);

        // Small steps: the scan that finds an expiry waits for the dispatcher to be idle, which
        // takes real time, and big steps would spread the restarts beyond reset-window.
        await AdvanceUntil(() => read.IsCompleted, stepMs: 20);

        Assert.Equal(BlockStatus.Offline, await read);
        Assert.Equal(4, driver.TimedOut.Count); // three restarts allowed, the fourth stops the device
        Assert.Equal(0, driver.ResetCalls);
        Assert.Equal("offline", (await InfoOf("brokentimeout")).Health);
        Assert.Equal(0L, device.Queue.DoubleCompletions);
        AssertTagsFree(device);
    }

    // A hardware-queue actor whose scan meets a driver bug (a Timeout that threw) while the device
    // is being reopened is restarted and lives on, as at any other time: it is the queue's timeout
    // scanner. The decider stopped every child once a driver actor had been stopped as gone
    // (_goneDecided), this one too, and nothing started it again: after the reopen the queue's
    // requests were never scanned for timeouts again (a review of the supervision change).
    [Fact]
    public async Task A_hardware_queue_actor_whose_Timeout_throws_during_a_reopen_lives_on_and_scans_after_it()
    {
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var driver = new ScriptedDriver(extra: Resettable | DriverFeatures.Reopenable) { ReopenGate = gate.Task, TimeoutAnswer = TimeoutAction.ResetTimer };
        var device = await Create(driver, "bugreopen", new DeviceOptions { IoTimeoutMs = 1000, ResetAfterTimeouts = 100, TimeoutWindowMs = 60_000 });
        var read = device.ExecuteAsync(BlockOp.Read, 0, 512, new byte[512]).AsTask();
        await Until(() => driver.InFlight.Count == 1);
        driver.ThrowOnce = new BlockDeviceErrorException("server frozen", deviceGone: true);
        var waiting = device.ExecuteAsync(BlockOp.Read, 1 << 20, 512, new byte[512]).AsTask();
        await AdvanceUntil(() => driver.ReopensBegun == 1);

        // The read the lost device held expires while the attempt hangs, and its Timeout throws.
        driver.ThrowOnTimeoutOnce = new InvalidOperationException("a driver bug in Timeout");
        await AdvanceUntil(() => driver.ThrowOnTimeoutOnce is null, stepMs: 100);

        gate.SetResult();
        await Until(() => driver.InFlight.Count == 2);
        Assert.Equal("online", (await InfoOf("bugreopen")).Health);

        // The reopened device holds both reads: their expiries are still seen.
        var before = driver.TimedOut.Count;
        await AdvanceUntil(() => driver.TimedOut.Count >= before + 2, stepMs: 100);
        driver.CompleteAll();
        Assert.All(await Task.WhenAll(read, waiting), s => Assert.Equal(BlockStatus.Ok, s));
        Assert.Equal(0L, device.Queue.DoubleCompletions);
        AssertTagsFree(device);
    }

    // The same outage, the other report: the timeout that began the reset had killed the NBD
    // connection, whose loss reached the supervisor once the reset was under way. Told to the
    // driver actor inside the reset, it waited in its mailbox and, once the device was back,
    // stopped it as gone: a reopen of a device the reset had just reconnected, one more stop
    // toward max-reopens. A failure reported during a reset is covered by it.
    [Fact]
    public async Task A_loss_reported_while_a_device_is_reset_is_covered_by_the_reset()
    {
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var driver = new ScriptedDriver(extra: Resettable | DriverFeatures.Reopenable) { ResetGate = gate.Task };
        var device = await Create(driver, "lostinreset");
        var driverActor = await DriverOf("lostinreset").ResolveOne(TimeSpan.FromSeconds(30));
        var held = device.ExecuteAsync(BlockOp.Read, 0, 512, new byte[512]).AsTask();
        await Until(() => driver.InFlight.Count == 1);
        driver.ThrowOnce = new BlockDeviceErrorException("connection reset");
        var failing = device.ExecuteAsync(BlockOp.Read, 65536, 512, new byte[512]).AsTask();
        await Until(() => driver.ResetsBegun == 1);

        // The loss, reported while the reset runs, and seen by the queue's actor before it ends.
        var errors = (await InfoOf("lostinreset")).DeviceErrors;
        device.Queue.Events!.OnDeviceError(device.Queue.HardwareContexts[0], new BlockDeviceErrorException("connection lost", deviceGone: true));
        await Until(() => InfoOf("lostinreset").Result.DeviceErrors == errors + 1);
        var probe = CreateTestProbe();
        probe.Watch(driverActor);
        gate.SetResult();

        // The driver actor answers after what it was told during the reset: it was not stopped.
        driverActor.Tell(HardwareQueue.WaitIdle.Instance, probe.Ref);
        Assert.IsType<HardwareQueue.DispatchIdle>(await probe.ExpectMsgAsync<object>(TimeSpan.FromSeconds(30)));

        await Until(() => driver.InFlight.Count == 2);
        driver.CompleteAll();
        Assert.Equal(BlockStatus.Ok, await held);
        Assert.Equal(BlockStatus.Ok, await failing);
        Assert.Equal((1, 0), (driver.ResetCalls, driver.ReopenCalls));
        var info = await InfoOf("lostinreset");
        Assert.Equal((1, "online"), (info.Resets, info.Health));
        Assert.Equal(0L, device.Queue.DoubleCompletions);
        AssertTagsFree(device);
    }

    [Fact]
    public async Task Timeouts_of_a_driver_a_reset_cannot_take_requests_back_from_re_arm_and_never_reset_it()
    {
        // The file driver's case: not Resettable (its I/O is in the kernel), ResetTimer on timeout.
        // Its timeouts are counted, but a reset would do nothing for them; it used to count them
        // into resets and the resets into max-resets (3 here) until the device went offline.
        var driver = new ScriptedDriver { TimeoutAnswer = TimeoutAction.ResetTimer };
        var device = await Create(driver, "slow", new DeviceOptions { IoTimeoutMs = 1000, ResetAfterTimeouts = 2, TimeoutWindowMs = 60_000 });
        var reads = Enumerable.Range(0, 2).Select(i => device.ReadAsync(i * 65536L, new byte[512]).AsTask()).ToArray();
        await Until(() => driver.InFlight.Count == 2);

        // Twelve expiries each (24 timeouts, 12 times reset_after_timeouts): no reset, still online.
        await AdvanceUntil(() => driver.TimedOut.Count >= 24, stepMs: 100);
        var info = await InfoOf("slow");
        Assert.Equal("online", info.Health);
        Assert.Equal(0, info.Resets);
        Assert.True(info.Timeouts >= 24);
        Assert.Equal(0, driver.ResetCalls);
        Assert.False(device.Queue.IsDying);

        // The slow I/O still completes, once.
        driver.CompleteAll();
        await Task.WhenAll(reads);
        AssertTagsFree(device);
    }

    [Fact]
    public async Task An_aborted_request_times_out_at_once_without_waiting_for_its_deadline()
    {
        // §5 item 8: blk_abort_request sets deadline = now and kicks the timeout work. Virtual
        // time does not move here: only the abort can make the scan find the request expired.
        var driver = new ScriptedDriver { TimeoutAnswer = TimeoutAction.Done };
        var device = await Create(driver, "abort", new DeviceOptions { IoTimeoutMs = 30_000 });
        var read = device.ReadAsync(0, new byte[512]).AsTask();
        await Until(() => driver.InFlight.Count == 1);

        Assert.True(device.Queue.AbortRequest(driver.InFlight[0]));
        await Until(() => driver.TimedOut.Count == 1);

        Assert.False(read.IsCompleted);
        driver.CompleteAll();
        await read;

        // A request that is no longer in flight is left alone.
        Assert.False(device.Queue.AbortRequest(driver.TimedOut[0]));
    }

    [Fact]
    public async Task A_device_gone_more_than_max_reopens_times_in_the_window_is_given_up()
    {
        // Reopened twice (max-reopens = 2); the third time it is gone within the minute it goes
        // offline instead of cycling through resets and reopens for ever.
        var driver = new ScriptedDriver(extra: Resettable | DriverFeatures.Reopenable);
        var device = await Create(driver, "cycling");
        for (var i = 1; i <= 2; i++)
        {
            DriverOf("cycling").Tell(new DeviceDriver.Fail(-1, new BlockDeviceErrorException($"gone {i}", deviceGone: true)));
            var n = i;
            await AdvanceUntil(() => driver.ReopenCalls == n);
            await AwaitAssertAsync(async () => Assert.Equal("online", (await InfoOf("cycling")).Health));
        }

        await EventFilter.Error(contains: "stopped 3 times").ExpectOneAsync(async () =>
        {
            DriverOf("cycling").Tell(new DeviceDriver.Fail(-1, new BlockDeviceErrorException("gone 3", deviceGone: true)));
            await Until(() => device.Queue.IsDying);
        });

        Assert.Equal(2, driver.ReopenCalls);
        Assert.Equal(BlockStatus.Offline, await device.ExecuteAsync(BlockOp.Read, 0, 512, new byte[512]));
    }

    [Fact]
    public async Task An_nr_requests_write_while_the_driver_waits_to_be_reopened_goes_through_and_io_resumes()
    {
        // An outside audit (mailbox dispatch) raced an nr_requests write with supervision stopping
        // the driver actor to reopen it, and the queue stayed quiesced for good; the race itself
        // (a quiesce asking a dispatcher that dies) is MailboxQuiesceSpec's. Here the whole path:
        // virtual time holds the reopen back while the write goes through, then I/O resumes.
        var driver = new ScriptedDriver(extra: Resettable | DriverFeatures.Reopenable);
        var device = await Create(driver, "requeue");
        var old = await DriverOf("requeue").ResolveOne(TimeSpan.FromSeconds(30));
        Watch(old);
        old.Tell(new DeviceDriver.Fail(-1, new BlockDeviceErrorException("gone", deviceGone: true)));
        await ExpectTerminatedAsync(old);

        await Layer.WriteAttributeAsync("block/requeue/queue/nr_requests", "16").AsTask().WaitAsync(TimeSpan.FromSeconds(30));
        Assert.Equal(16, device.Queue.NrRequests);

        await AdvanceUntil(() => driver.ReopenCalls == 1);
        var read = device.ReadAsync(0, new byte[512]).AsTask();
        await Until(() => driver.InFlight.Count == 1);
        driver.CompleteAll();
        await read.WaitAsync(TimeSpan.FromSeconds(30));
        AssertTagsFree(device);
    }

    [Fact]
    public async Task Too_many_resets_in_the_window_stop_the_device()
    {
        var driver = new ScriptedDriver(extra: Resettable);
        var device = await Create(driver, "flaky");
        for (var i = 1; i <= 3; i++)
        {
            DriverOf("flaky").Tell(new DeviceDriver.Fail(-1, new BlockDeviceErrorException($"glitch {i}")));
            var n = i;
            await Until(() => driver.ResetCalls == n);
        }

        // The fourth failure within the minute is one more than max-resets = 3.
        DriverOf("flaky").Tell(new DeviceDriver.Fail(-1, new BlockDeviceErrorException("glitch 4")));
        await Until(() => device.Queue.IsDying);

        Assert.Equal(BlockStatus.Offline, await device.ExecuteAsync(BlockOp.Read, 0, 512, new byte[512]));
    }
}

/// <summary>Supervision in ring dispatch.</summary>
public sealed class RingSupervisionSpec(ITestOutputHelper output) : SupervisionSpec(DispatchMode.Ring, output);

/// <summary>Supervision in mailbox dispatch.</summary>
public sealed class MailboxSupervisionSpec(ITestOutputHelper output) : SupervisionSpec(DispatchMode.Mailbox, output)
{
    // An outside leak audit: one destroy in about 250 of an NBD client device (two connections)
    // whose server had just been killed waited the whole drain timeout. The first connection's
    // loss stopped its driver actor as gone while the device was still active, and the queue
    // stopped the other; the destroy arrived before that one was dead, so the last death, which
    // starts the reopen (or takes the device offline), came during the removal, where only the
    // first death counted as a loss and it had already happened. Nothing failed what the lost
    // device held until the drain timeout. Here the second driver actor is kept busy in a
    // dispatch round (mailbox dispatch, where the driver actor runs the rounds) until the
    // removal runs.
    [Fact]
    public async Task A_device_lost_just_before_a_destroy_fails_what_it_held_at_once_rather_than_at_the_drain_timeout()
    {
        using var gate = new ManualResetEventSlim();
        var driver = new ScriptedDriver(extra: Resettable | DriverFeatures.Reopenable) { HoldQueue = 1 };
        var device = await Create(driver, "lostbefore", new DeviceOptions { SubmitQueues = 2 });
        var cpu0 = device.Queue.HardwareContexts[0].CpuMask.First();
        var cpu1 = device.Queue.HardwareContexts[1].CpuMask.First();
        var queueActor = await Sys.ActorSelection("/user/actorblk/dev-lostbefore-*").ResolveOne(TimeSpan.FromSeconds(30));
        var driver0 = await DriverOf("lostbefore").ResolveOne(TimeSpan.FromSeconds(30));
        Watch(driver0);
        var held = device.ExecuteAsync(BlockOp.Read, 0, 512, new byte[512], cpu: cpu0).AsTask();
        await Until(() => driver.InFlight.Count == 1);
        driver.HoldGate = gate;
        Task<BlockStatus> busy = null!;
        Task<BlockStatus> failing = null!;
        Task<int> destroying = null!;
        try
        {
            busy = device.ExecuteAsync(BlockOp.Read, 65536, 512, new byte[512], cpu: cpu1).AsTask();
            await driver.Held.WaitAsync(TimeSpan.FromSeconds(30));
            driver.ThrowOnce = new BlockDeviceErrorException("connection reset by peer", deviceGone: true);
            failing = device.ExecuteAsync(BlockOp.Read, 131072, 512, new byte[512], cpu: cpu0).AsTask();

            // Driver 0 is gone, and the queue has its Terminated before the destroy: a dead actor
            // sends its parent's notice before its watchers', and the queue, answering an ask
            // after that notice, has turned it into a Terminated queued ahead of the destroy
            // (before, the spec waited for driver 0 not to resolve, which a slow answer or a dead
            // letter gave before the queue knew, and the destroy then came first). Driver 1,
            // stopped by the queue, is still in its round. Then the destroy.
            await ExpectTerminatedAsync(driver0, TimeSpan.FromSeconds(30));
            await queueActor.Ask<RequestQueueProtocol.Info>(RequestQueueProtocol.GetInfo.Instance, TimeSpan.FromSeconds(30));
            destroying = Layer.DestroyDeviceAsync("lostbefore");
            await Until(() => device.Queue.IsDying);

            // Driver 1 finishes its round and stops: the device is lost during the removal, and
            // what it held fails then (before, at the drain timeout, 10 s here: "3 request(s) did
            // not drain within 00:00:10").
            await EventFilter.Warning(contains: "lostbefore: the device was lost while being removed").ExpectOneAsync(async () =>
            {
                gate.Set();

                // The two the device held (the third, which met the error, waits in the queue
                // and fails as any pending request does).
                Assert.Equal(2, await destroying.WaitAsync(TimeSpan.FromSeconds(30)));
            });
        }
        finally
        {
            gate.Set();
        }

        Assert.Equal(BlockStatus.Offline, await held.WaitAsync(TimeSpan.FromSeconds(30)));
        Assert.Equal(BlockStatus.Offline, await busy.WaitAsync(TimeSpan.FromSeconds(30)));
        Assert.Equal(BlockStatus.Offline, await failing.WaitAsync(TimeSpan.FromSeconds(30)));
        Assert.Equal(0L, device.Queue.DoubleCompletions);
        AssertTagsFree(device);
    }
}
