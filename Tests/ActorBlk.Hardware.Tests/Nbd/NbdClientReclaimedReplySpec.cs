using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers;
using ActorBlk.Hardware.Drivers.Nbd;
using ActorBlk.Hardware.Nbd;
using ActorBlk.Hardware.Requests;
using ActorBlk.Hardware.Topology;
using ActorBlk.Testing;
using Xunit;

namespace ActorBlk.Hardware.Tests.Nbd;

/// <summary>
/// A read's reply that reaches the NBD client after the block layer took its request back (a
/// reset requeued it, or the device went offline and failed it) writes nothing into the request's
/// buffers: they are the caller's again, or another I/O's. A review found the receiver copying
/// such a reply's data into them (the generation check stopped only the late completion), as the
/// kernel's nbd avoids with its per-command lock and NBD_CMD_INFLIGHT.
/// </summary>
public sealed class NbdClientReclaimedReplySpec
{
    // The receiver has the reply's header and data in hand when the reset closes its connection,
    // connects afresh and requeues the read, which the new connection answers. The old receiver
    // then went on and copied the old data over the retried read's: stale data in a buffer whose
    // read had completed with the new.
    [Fact]
    public async Task A_reply_in_hand_when_a_reset_requeues_its_read_is_not_copied_over_the_retried_read()
    {
        await using var server = new FakeNbdServer(_ => FakeNbdExport.Default, s => s.ServeAsync(s.Index == 0 ? (byte)0x11 : (byte)0x22));
        await using var devices = new RingDevices(2);
        var device = devices.Create(new DeviceOptions { Name = "race0", Driver = "nbd", Uri = server.Uri() }, CpuTopology.Simulated(2));
        var driver = (NbdClientDriver)device.Queue.Driver;
        var old = driver.Connections.Single();
        var inHand = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var resume = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        old.BeforeCopy = async () =>
        {
            inHand.TrySetResult();
            await resume.Task;
        };
        using var back = AlignedBuffer.For(device, 4096);
        try
        {
            var read = device.ReadAsync(0, back.Memory).AsTask();
            await inHand.Task.WaitAsync(Condition.Timeout);

            // What the device's supervision does after a reset: the driver reconnects, and the
            // block layer takes back what it held (the read is retried on the new connection).
            driver.Reset();
            Assert.Equal((1, 0), device.Queue.ReclaimInFlight(BlockStatus.IoError));
            await read.WaitAsync(Condition.Timeout);
            Assert.All(back.Memory.ToArray(), b => Assert.Equal(0x22, b));
        }
        finally
        {
            resume.TrySetResult();
        }

        // The old receiver goes on with the data it holds, and ends: none of it lands.
        await Condition.EventuallyAsync(() => old.StreamDisposed, "the old connection's receiver ended");
        Assert.All(back.Memory.ToArray(), b => Assert.Equal(0x22, b));
        Assert.Empty(server.Faults);
    }

    // Two connections; the reset's reconnect fails on the first (the export changed size), so the
    // device goes offline and its requests in flight fail. The second connection was left open,
    // and its receiver, holding the read's reply, copied it into the failed read's buffer.
    [Fact]
    public async Task A_reply_in_hand_on_a_connection_a_failed_reconnect_did_not_reach_is_not_copied_into_the_failed_read()
    {
        var multi = FakeNbdExport.Default with { Flags = FakeNbdExport.Default.Flags | NbdTransmissionFlags.CanMultiConn };
        await using var server = new FakeNbdServer(i => i < 2 ? multi : multi with { Size = 32 << 20 }, s => s.ServeAsync(0x33));
        await using var devices = new RingDevices(2);
        var device = devices.Create(new DeviceOptions { Name = "race1", Driver = "nbd", Uri = server.Uri(), Connections = 2 }, CpuTopology.Simulated(2));
        var driver = (NbdClientDriver)device.Queue.Driver;
        var second = driver.Connections.Last();
        var inHand = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var resume = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        second.BeforeCopy = async () =>
        {
            inHand.TrySetResult();
            await resume.Task;
        };
        using var back = AlignedBuffer.For(device, 4096);
        try
        {
            var read = device.ReadAsync(0, back.Memory, cpu: 1).AsTask();
            await inHand.Task.WaitAsync(Condition.Timeout);

            var refused = Assert.Throws<BlockDeviceErrorException>(driver.Reset);
            Assert.Contains("changed size", refused.Message, StringComparison.Ordinal);
            Assert.Equal(1, device.Queue.SetOffline(failInFlight: true));
            Assert.Equal(BlockStatus.Offline, (await Assert.ThrowsAsync<BlockIoException>(() => read.WaitAsync(Condition.Timeout))).Status);
        }
        finally
        {
            resume.TrySetResult();
        }

        // The receiver is done with the reply: answered, or its connection gone.
        await Condition.EventuallyAsync(() => second.Outstanding == 0 || second.IsDead, "the second connection answered the read or is closed");
        Assert.All(back.Memory.ToArray(), b => Assert.Equal(0, b));
        Assert.Empty(server.Faults);
    }
}
