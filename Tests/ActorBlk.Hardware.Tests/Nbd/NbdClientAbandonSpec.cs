using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers;
using ActorBlk.Hardware.Drivers.Nbd;
using ActorBlk.Hardware.Nbd;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;
using ActorBlk.Hardware.Topology;
using ActorBlk.Testing;
using Xunit;

namespace ActorBlk.Hardware.Tests.Nbd;

/// <summary>
/// When the block layer fails the requests an NBD client still holds while the driver is alive
/// (a teardown past its drain timeout, which disposes the driver only afterwards; a device taken
/// offline with its requests in flight), the driver is told first (<see cref="IBlockDriver.Abandon"/>)
/// and its connections drop the replies that arrive: none is copied into a read that completed
/// with Offline, whose buffer is its caller's again. Before, a receiver in the middle of such a
/// reply went on copying into the request's bios after they were freed: one rented again by other
/// I/O took the data into that I/O's buffer; one not rented again had its buffer cleared, and the
/// copy threw and ended the receiver with it.
/// </summary>
public sealed class NbdClientAbandonSpec
{
    private const byte Marker = 0x5a;
    private const byte Data = 0x44;
    private const int Half = 2048;

    // The server sends half of the read's data, then the rest only once the teardown has run past
    // its drain timeout and failed the read with Offline; the driver is disposed later, so the
    // receiver, in the middle of the reply, went on copying the rest into the failed read's bio.
    [Fact]
    public async Task The_rest_of_a_reply_arriving_after_teardown_failed_its_read_at_the_drain_timeout_is_dropped()
    {
        var rest = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var server = new FakeNbdServer(_ => FakeNbdExport.Default, s => ServeSplitAsync(s, rest.Task));
        using var softIrq = new BlockSoftIrq(2);
        var options = new DeviceOptions { Name = "abandon0", Driver = "nbd", Uri = server.Uri() };
        var driver = new NbdClientDriver(new NbdClientOptions { Uri = NbdUri.Parse(server.Uri()) }, options.Name);
        try
        {
            var tagSet = DeviceBuilder.CreateTagSet(options, driver, CpuTopology.Simulated(2));
            var queue = DeviceBuilder.CreateQueue(options, tagSet, driver);
            tagSet.AddQueue(queue);
            queue.Start(new RingRuntime(softIrq));
            queue.Register();
            var device = new BlockDevice(queue, _ => ValueTask.CompletedTask);
            var connection = driver.Connections.Single();
            using var back = AlignedBuffer.For(device, 2 * Half);
            await ReadFailedMidReplyAsync(device, back, rest, async () =>
                Assert.Equal(1, await queue.ShutdownAsync(TimeSpan.FromMilliseconds(50)).WaitAsync(Condition.Timeout)));

            // The receiver ends, the reply dropped: never taken in full, nothing more copied.
            // (Before, the copy threw into the freed bio and the receiver died with it.)
            await connection.Receiver.WaitAsync(Condition.Timeout);
            Assert.Equal(1, connection.Outstanding);
            Assert.All(back.Memory[Half..].ToArray(), b => Assert.Equal(Marker, b));
        }
        finally
        {
            driver.Dispose();
        }
    }

    // Two connections: the device goes offline with a read in flight on the second, still open
    // (the loss was the first's, or the supervisor gave up), and the read fails with Offline.
    // Nothing had shut the second down, so its receiver went on copying the rest into its bio.
    [Fact]
    public async Task The_rest_of_a_reply_on_a_live_connection_arriving_after_the_device_went_offline_is_dropped()
    {
        var rest = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var multi = FakeNbdExport.Default with { Flags = FakeNbdExport.Default.Flags | NbdTransmissionFlags.CanMultiConn };
        await using var server = new FakeNbdServer(_ => multi, s => ServeSplitAsync(s, rest.Task));
        await using var devices = new RingDevices(2);
        var device = devices.Create(new DeviceOptions { Name = "abandon1", Driver = "nbd", Uri = server.Uri(), Connections = 2 }, CpuTopology.Simulated(2));
        var second = ((NbdClientDriver)device.Queue.Driver).Connections.Last();
        using var back = AlignedBuffer.For(device, 2 * Half);
        await ReadFailedMidReplyAsync(device, back, rest, () =>
        {
            Assert.Equal(1, device.Queue.SetOffline(failInFlight: true));
            return Task.CompletedTask;
        }, cpu: 1);

        await second.Receiver.WaitAsync(Condition.Timeout);
        Assert.Equal(1, second.Outstanding);
        Assert.All(back.Memory[Half..].ToArray(), b => Assert.Equal(Marker, b));
    }

    // Reads into back (filled with the marker first) until the first half of the data has landed,
    // runs failAll, which must fail the read with Offline, then lets the server send the rest.
    private static async Task ReadFailedMidReplyAsync(BlockDevice device, AlignedBuffer back, TaskCompletionSource rest, Func<Task> failAll, int cpu = 0)
    {
        back.Memory.Span.Fill(Marker);
        try
        {
            var read = device.ReadAsync(0, back.Memory, cpu: cpu).AsTask();
            await Condition.EventuallyAsync(() => !back.Memory.Span[..Half].ContainsAnyExcept(Data), "the first half of the data landed");
            await failAll();
            Assert.Equal(BlockStatus.Offline, (await Assert.ThrowsAsync<BlockIoException>(() => read.WaitAsync(Condition.Timeout))).Status);
            Assert.All(back.Memory[Half..].ToArray(), b => Assert.Equal(Marker, b));
        }
        finally
        {
            rest.TrySetResult();
        }
    }

    // Answers every read in two parts, the second once rest completes. A connection the client
    // shut down may refuse the second part: that ends the session.
    private static async Task ServeSplitAsync(FakeNbdSession session, Task rest)
    {
        try
        {
            while (await session.ReadRequestAsync() is { } request && request.Command != NbdCommand.Disconnect)
            {
                await session.ReplyInPartsAsync(request, Data, Half, rest);
            }
        }
        catch (IOException)
        {
        }
    }
}
