using System.Buffers.Binary;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers;
using ActorBlk.Hardware.Drivers.Nbd;
using ActorBlk.Hardware.Nbd;
using ActorBlk.Hardware.Requests;
using ActorBlk.Testing;
using Xunit;

using static ActorBlk.Hardware.Tests.Nbd.StructuredReplies;

namespace ActorBlk.Hardware.Tests.Nbd;

/// <summary>
/// Defects a review of the NBD client's structured replies found, against a scripted server
/// (<see cref="FakeNbdServer"/> with structured replies and <c>base:allocation</c>): a connection
/// closing after <c>NBD_ESHUTDOWN</c> waited for a block status answer that never came, so it
/// never disconnected and the refused read hung; an error chunk with bytes after its message
/// (which proto.md allows and libnbd skips) lost the connection; an <c>NBD_ESHUTDOWN</c> answer to a
/// block status question did not start the soft disconnect proto.md requires.
/// </summary>
public sealed class NbdClientStructuredReviewSpec
{
    private const int Length = 4096;
    private const long At = 8192;
    private const ushort OffsetData = (ushort)NbdChunkType.OffsetData;
    private const ushort None = (ushort)NbdChunkType.None;
    private const ushort Error = (ushort)NbdChunkType.Error;
    private const ushort ErrorOffset = (ushort)NbdChunkType.ErrorOffset;
    private const ushort Status = (ushort)NbdChunkType.BlockStatus;

    // An error chunk's payload: error, message length, message, then `tail` (the offset of
    // ERROR_OFFSET, or bytes the message length does not cover).
    private static byte[] Failure(NbdError error, string message, byte[] tail)
    {
        var text = System.Text.Encoding.UTF8.GetBytes(message);
        var payload = new byte[6 + text.Length + tail.Length];
        BinaryPrimitives.WriteUInt32BigEndian(payload, (uint)error);
        BinaryPrimitives.WriteUInt16BigEndian(payload.AsSpan(4), (ushort)text.Length);
        text.CopyTo(payload, 6);
        tail.CopyTo(payload, 6 + text.Length);
        return payload;
    }

    // A block status question the server never answers is out when a read is refused with
    // NBD_ESHUTDOWN: the connection, which takes nothing new, disconnects softly once its
    // requests are answered, without waiting for the question (whose asker gets "cannot tell"),
    // and the read is retried on the next connection. Before, the question counted as outstanding:
    // NBD_CMD_DISC was never sent, the connection never reported lost, and the refused read, which
    // the connection no longer held (so its timeout blamed nothing), waited for ever.
    [Fact]
    public async Task A_connection_closing_after_eshutdown_does_not_wait_for_a_block_status_answer_that_does_not_come()
    {
        var asked = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var server = Server(async (s, r) =>
        {
            switch (r.Command)
            {
                case NbdCommand.BlockStatus:
                    asked.TrySetResult();
                    return true; // never answered
                case NbdCommand.Read:
                    await s.ChunkAsync(r.Cookie, done: true, Error, Failure(NbdError.Shutdown, "going away", []));
                    return true;
                default:
                    return false;
            }
        });
        await using var devices = new RingDevices(2);
        var device = Open(devices, server);
        var driver = (NbdClientDriver)device.Queue.Driver;

        var question = ((IAllocationMap)driver).GetExtentAsync(0, 1 << 20).AsTask();
        await asked.Task.WaitAsync(Condition.Timeout);
        var buffer = new byte[Length];
        var read = device.ExecuteAsync(BlockOp.Read, At, Length, buffer).AsTask();

        await Condition.EventuallyAsync(() => driver.LiveConnections == 0, "the connection disconnects after NBD_ESHUTDOWN and is lost");
        Assert.Null(await question.WaitAsync(Condition.Timeout));
        Assert.False(read.IsCompleted);

        driver.Reset();
        Assert.Equal((1, 0), device.Queue.ReclaimInFlight(BlockStatus.IoError));
        Assert.Equal(BlockStatus.Ok, await read.WaitAsync(Condition.Timeout));
        Assert.All(buffer, b => Assert.Equal(0x5a, b));
        Assert.Equal(2, server.Accepted);
        Assert.Empty(server.Faults);
    }

    // proto.md: an error chunk's message length is "no more than header length - 6" (or - 14
    // with the offset); libnbd skips what follows the message. The read fails with the server's
    // error and the connection goes on. Before, anything but an exact fit lost the connection,
    // and the read retried on the next connection met the same answer.
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task An_error_chunk_with_bytes_after_its_message_fails_the_read_and_the_connection_goes_on(bool withOffset)
    {
        var answered = false;
        await using var server = Server(async (s, r) =>
        {
            if (r.Command != NbdCommand.Read || answered)
            {
                return false;
            }

            answered = true;
            var offset = new byte[8];
            BinaryPrimitives.WriteUInt64BigEndian(offset, r.Offset);
            await (withOffset
                ? s.ChunkAsync(r.Cookie, done: true, ErrorOffset, Failure(NbdError.NoSpace, "full", [.. offset, 1, 2, 3, 4]))
                : s.ChunkAsync(r.Cookie, done: true, Error, Failure(NbdError.NoSpace, "full", [1, 2, 3, 4])));
            return true;
        });
        await using var devices = new RingDevices(2);
        var device = Open(devices, server);
        var driver = (NbdClientDriver)device.Queue.Driver;

        Assert.Equal(BlockStatus.NoSpace, await device.ExecuteAsync(BlockOp.Read, At, Length, new byte[Length]).AsTask().WaitAsync(Condition.Timeout));
        var next = new byte[Length];
        Assert.Equal(BlockStatus.Ok, await device.ExecuteAsync(BlockOp.Read, At, Length, next).AsTask().WaitAsync(Condition.Timeout));
        Assert.All(next, b => Assert.Equal(0x5a, b));
        Assert.Equal(1, driver.LiveConnections);
        Assert.Equal(1, server.Accepted);
        Assert.Empty(server.Faults);
    }

    // "If the client receives an NBD_ESHUTDOWN error it MUST initiate a soft disconnect": an
    // answer of ESHUTDOWN to a block status question (an error chunk, or a simple error reply)
    // makes the client send NBD_CMD_DISC and report the connection lost; the map cannot tell.
    // Before, the question's asker got "cannot tell" and the connection went on.
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task An_eshutdown_answer_to_a_block_status_question_starts_a_soft_disconnect(bool simple)
    {
        var sessions = new List<FakeNbdSession>();
        await using var server = Server(async (s, r) =>
        {
            lock (sessions)
            {
                if (!sessions.Contains(s))
                {
                    sessions.Add(s);
                }
            }

            if (r.Command != NbdCommand.BlockStatus)
            {
                return false;
            }

            await (simple
                ? s.ReplyAsync(r, NbdError.Shutdown)
                : s.ChunkAsync(r.Cookie, done: true, Error, Failure(NbdError.Shutdown, "going away", [])));
            return true;
        });
        await using var devices = new RingDevices(2);
        var device = Open(devices, server);
        var driver = (NbdClientDriver)device.Queue.Driver;

        Assert.Null(await ((IAllocationMap)driver).GetExtentAsync(0, 1 << 20).AsTask().WaitAsync(Condition.Timeout));
        await Condition.EventuallyAsync(() => driver.LiveConnections == 0, "the client disconnects after NBD_ESHUTDOWN");
        FakeNbdSession first;
        lock (sessions)
        {
            first = sessions.Single();
        }

        await Condition.EventuallyAsync(() => first.Received.Any(q => q.Command == NbdCommand.Disconnect), "NBD_CMD_DISC sent");
        Assert.Empty(server.Faults);
    }

    private static BlockDevice Open(RingDevices devices, FakeNbdServer server) => StructuredReplies.Open(devices, server, "rv0");
}
