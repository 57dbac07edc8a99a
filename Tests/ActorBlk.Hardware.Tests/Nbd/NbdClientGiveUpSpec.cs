using System.Net.Sockets;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers.Nbd;
using ActorBlk.Hardware.Nbd;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;
using ActorBlk.Hardware.Topology;
using ActorBlk.Testing;
using Xunit;

namespace ActorBlk.Hardware.Tests.Nbd;

/// <summary>
/// A connection the client gives up (its server's node is unreachable, a request timed out, the
/// device goes offline with requests in flight) is reset, not shut down: the requests the kernel
/// still held unsent or unacknowledged are dropped, never delivered after the client has failed
/// them. Found by an outside partition audit: a mirror's remote leg cut off for 14 s under writes;
/// the writes in flight failed on that leg, which was resynced from the bitmap once the partition
/// healed, and then the old connection's retransmissions (behind its FIN) delivered those writes to
/// the leg's owner, which applied them over the resynced data: the legs differed while the mirror
/// said it was in sync.
/// </summary>
public sealed class NbdClientGiveUpSpec
{
    private const int Writes = 64;
    private const int WriteBytes = 256 << 10;

    // The server reads nothing until the client has given it up, as a peer behind a partition
    // receives nothing: 16 MiB of writes, far more than its unread receive buffer holds, stay
    // queued in the client's socket. Once it reads, it must meet a reset after what its own kernel
    // had taken in, not every write followed by an orderly end of stream.
    [Fact]
    public async Task Writes_still_queued_in_the_socket_when_the_client_gives_the_server_up_never_reach_it()
    {
        var read = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var ended = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
        var received = 0;
        await using var server = new FakeNbdServer(_ => FakeNbdExport.Default, async session =>
        {
            await read.Task;
            try
            {
                while (await session.ReadRequestAsync() is { Command: NbdCommand.Write })
                {
                    received++;
                }

                ended.TrySetResult("an end of stream");
            }
            catch (IOException ex) when (ex.InnerException is SocketException { SocketErrorCode: SocketError.ConnectionReset })
            {
                ended.TrySetResult("a reset");
            }
            catch (IOException ex)
            {
                ended.TrySetResult($"an end of stream ({ex.GetType().Name})");
            }
        });
        await using var devices = new RingDevices(2);
        var device = devices.Create(new DeviceOptions { Name = "giveup0", Driver = "nbd", Uri = server.Uri(), HwQueueDepth = Writes, NoMerges = MergePolicy.Off }, CpuTopology.Simulated(2));
        var driver = (NbdClientDriver)device.Queue.Driver;
        var connection = driver.Connections.Single();
        using var data = AlignedBuffer.For(device, WriteBytes);
        data.Memory.Span.Fill(0x77);
        var writes = Enumerable.Range(0, Writes).Select(i => device.WriteAsync((long)i * WriteBytes, data.Memory).AsTask()).ToArray();
        await Condition.EventuallyAsync(() => connection.Outstanding == Writes, "every write sent to the connection");

        // Writes queued in the client's socket, unsent (the server's receive window is full): the
        // case this spec is about. With the socket's queue empty at the give-up (its sender slow
        // to start on a loaded machine), the shutdown's FIN goes out at once and the server meets
        // an end of stream after what its kernel had taken in, with nothing left to deliver: a CI
        // run saw 10 writes, then the end of stream.
        await Condition.EventuallyAsync(() => Unsent(connection.Transport) > 0, "writes queued unsent in the client's socket");

        driver.Retire("its node is unreachable");
        device.Queue.SetOffline(failInFlight: true);
        foreach (var write in writes)
        {
            Assert.Equal(BlockStatus.Offline, (await Assert.ThrowsAsync<BlockIoException>(() => write.WaitAsync(Condition.Timeout))).Status);
        }

        read.SetResult();
        var end = await ended.Task.WaitAsync(Condition.Timeout);

        // A reset after what the server's own kernel had taken in (the old orderly close delivered
        // everything the client's kernel held, then an end of stream). Only when the client's
        // sender had written nothing to the socket yet can the shutdown's FIN go out first, and
        // the server then meets an end of stream having received nothing.
        Assert.True(end == "a reset" || received == 0, $"the server got {received} of the {Writes} failed writes, then {end}");
        Assert.True(received < Writes, $"the server got {received} of the {Writes} failed writes, then {end}");
        Assert.Empty(server.Faults);
    }

    // SIOCOUTQ: the bytes in the socket's send queue not yet acknowledged by the peer.
    private static unsafe int Unsent(Socket socket)
    {
        const ulong SiocOutq = 0x5411;
        var bytes = 0;
        return ActorBlk.Hardware.Interop.LibC.IoctlPointer((int)socket.Handle, SiocOutq, &bytes) == 0 ? bytes : 0;
    }
}
