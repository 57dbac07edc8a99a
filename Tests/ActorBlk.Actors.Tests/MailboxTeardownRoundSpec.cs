using ActorBlk.Actors.Tests.Support;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;
using ActorBlk.Testing;
using Akka.Configuration;
using Xunit;
using Xunit.Abstractions;

namespace ActorBlk.Actors.Tests;

/// <summary>
/// Mailbox dispatch: a removal past its drain timeout fails what the driver holds only once no
/// dispatch round is in progress. A round already past its offline check when the queue detached
/// may still be handing a request to the driver, and a file device's driver hands it to the
/// kernel: failed meanwhile, its buffer would go back to its caller while the kernel takes it (a
/// review of the slow-disk fix, where the file driver's Abandon waits for what the kernel holds:
/// a request still on its way in was not counted yet). Here the round is held inside the driver's
/// QueueRq.
/// </summary>
public sealed class MailboxTeardownRoundSpec : Akka.TestKit.Xunit2.TestKit
{
    public MailboxTeardownRoundSpec(ITestOutputHelper output)
        : base(ConfigurationFactory.ParseString("actorblk.drain-timeout = 200ms").WithFallback(Configs.Simulated), output: output)
    {
    }

    [Fact]
    public async Task A_removal_past_its_drain_timeout_fails_nothing_while_a_dispatch_round_is_handing_it_to_the_driver()
    {
        var layer = BlockLayer.Get(Sys);
        using var gate = new ManualResetEventSlim();
        var driver = new ScriptedDriver { HoldGate = gate, HoldQueue = 0 };
        var device = await layer.CreateDeviceAsync(new DeviceOptions { Name = "round0", SubmitQueues = 1, Dispatch = DispatchMode.Mailbox, IoTimeoutMs = 600_000 }, driver);
        var read = device.ExecuteAsync(BlockOp.Read, 0, 4096, new byte[4096]).AsTask();
        Task<int> destroying;
        try
        {
            await driver.Held.WaitAsync(TimeSpan.FromSeconds(30));
            destroying = layer.DestroyDeviceAsync("round0");

            // The drain gives up after 200 ms; the teardown then waits for the round. (A bound on
            // something that must not happen: 3 s is fifteen drain timeouts.)
            Assert.NotSame(read, await Task.WhenAny(read, destroying, Task.Delay(TimeSpan.FromSeconds(3))));
            Assert.False(destroying.IsCompleted);
        }
        finally
        {
            gate.Set();
        }

        // The round ends with the driver holding the read; the teardown then tells the driver
        // (Abandon) and fails it, once. Before, the teardown did not wait: the read was neither
        // staged nor the driver's yet, so it failed nothing (0), told the driver to abandon its
        // requests before the driver had this one, and went on; the driver then took the read
        // after its Abandon (a file device: into the kernel, uncounted by the Abandon's wait).
        Assert.Equal(1, await destroying.WaitAsync(TimeSpan.FromSeconds(30)));
        Assert.Equal(BlockStatus.Offline, await read.WaitAsync(TimeSpan.FromSeconds(30)));
        Assert.Single(driver.Calls);
        Assert.Equal(0L, device.Queue.DoubleCompletions);
    }
}
