using System.Buffers.Binary;
using System.Collections.Concurrent;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers;
using ActorBlk.Hardware.Drivers.Nbd;
using ActorBlk.Hardware.Nbd;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;
using ActorBlk.Testing;
using Xunit;

using static ActorBlk.Hardware.Tests.Nbd.StructuredReplies;

namespace ActorBlk.Hardware.Tests.Nbd;

/// <summary>
/// What the NBD client takes from a server that is lawful but unusual, against a scripted server
/// (<see cref="FakeNbdServer"/> with structured replies and <c>base:allocation</c>): a block status
/// chunk with more extents than <c>NBD_CMD_FLAG_REQ_ONE</c> asked for (the first is the answer, the
/// rest read past, as qemu does; before, a chunk over 64 KiB lost the connection), an error chunk's
/// message (logged for the operator; before, dropped), and a read's data in many pieces out of
/// order (before, a 17th disjoint piece failed the read with EIO).
/// </summary>
public sealed class NbdClientStructuredLenienceSpec
{
    private const ushort OffsetData = (ushort)NbdChunkType.OffsetData;
    private const ushort None = (ushort)NbdChunkType.None;
    private const ushort Error = (ushort)NbdChunkType.Error;
    private const ushort ErrorOffset = (ushort)NbdChunkType.ErrorOffset;
    private const ushort Status = (ushort)NbdChunkType.BlockStatus;
    private const uint HoleZero = (uint)(NbdAllocationFlags.Hole | NbdAllocationFlags.Zero);

    // `count` extents of 4096 bytes: the first a hole, the rest data.
    private static byte[] ManyExtents(int count)
    {
        var payload = new byte[4 + (8 * count)];
        BinaryPrimitives.WriteUInt32BigEndian(payload, Context);
        for (var i = 0; i < count; i++)
        {
            BinaryPrimitives.WriteUInt32BigEndian(payload.AsSpan(4 + (8 * i)), 4096);
            BinaryPrimitives.WriteUInt32BigEndian(payload.AsSpan(8 + (8 * i)), i == 0 ? HoleZero : 0);
        }

        return payload;
    }

    // 10,000 extents in one chunk (80,004 bytes, over the 64 KiB that lost the connection before):
    // the first is the answer, and the connection serves on.
    [Fact]
    public async Task A_block_status_chunk_with_thousands_of_extents_answers_with_the_first_and_the_connection_goes_on()
    {
        var answered = 0;
        await using var server = Server(async (s, r) =>
        {
            if (r.Command != NbdCommand.BlockStatus || Interlocked.Increment(ref answered) > 1)
            {
                return false;
            }

            await s.ChunkAsync(r.Cookie, done: true, Status, ManyExtents(10_000));
            return true;
        });
        await using var devices = new RingDevices(2);
        var device = Open(devices, server);
        var driver = (NbdClientDriver)device.Queue.Driver;

        Assert.Equal(new AllocationExtent(4096, false), await ((IAllocationMap)driver).GetExtentAsync(0, 1 << 20).AsTask().WaitAsync(Condition.Timeout));
        var buffer = new byte[4096];
        Assert.Equal(BlockStatus.Ok, await device.ExecuteAsync(BlockOp.Read, 8192, 4096, buffer).AsTask().WaitAsync(Condition.Timeout));
        Assert.All(buffer, b => Assert.Equal(0x5a, b));
        Assert.Equal(new AllocationExtent(8192, true), await ((IAllocationMap)driver).GetExtentAsync(0, 8192).AsTask().WaitAsync(Condition.Timeout));
        Assert.Equal(1, driver.LiveConnections);
        Assert.Equal(1, server.Accepted);
        Assert.Equal(0, driver.Connections.Single().QueriesOutstanding);
        Assert.Empty(server.Faults);
    }

    // Past 2^25 bytes (the payload proto.md says SHOULD NOT be taken for a denial of service; 2^20
    // extents, which servers SHOULD NOT exceed, are 8 MiB) a block status chunk still loses the
    // connection, at its header: nothing of it is read.
    [Fact]
    public async Task A_block_status_chunk_longer_than_the_protocol_tolerates_loses_the_connection()
    {
        await using var server = Server(async (s, r) =>
        {
            if (r.Command != NbdCommand.BlockStatus)
            {
                return false;
            }

            await s.ChunkAsync(r.Cookie, done: true, Status, ManyExtents(1), length: (uint)NbdProtocol.MaxTolerablePayload + 4);
            return true;
        });
        await using var devices = new RingDevices(2);
        var device = Open(devices, server);
        var driver = (NbdClientDriver)device.Queue.Driver;

        Assert.Null(await ((IAllocationMap)driver).GetExtentAsync(0, 1 << 20).AsTask().WaitAsync(Condition.Timeout));
        await Condition.EventuallyAsync(() => driver.LiveConnections == 0, "the connection is lost");
        Assert.Empty(server.Faults);
    }

    // An error chunk's message is "suitable for display to a human user": the operator sees it
    // as a warning of the device's queue, on one line (control characters escaped), the first
    // and then a line a minute; the read fails with the server's error and the connection goes on.
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task An_error_chunk_s_message_is_logged_for_the_operator(bool withOffset)
    {
        const string Message = "quota exceeded\n\u001b[31mforged line";
        var failures = 0;
        await using var server = Server(async (s, r) =>
        {
            if (r.Command != NbdCommand.Read || Interlocked.Increment(ref failures) > 2)
            {
                return false;
            }

            var text = System.Text.Encoding.UTF8.GetBytes(Message);
            var payload = new byte[6 + text.Length + (withOffset ? 8 : 0)];
            BinaryPrimitives.WriteUInt32BigEndian(payload, (uint)NbdError.NoSpace);
            BinaryPrimitives.WriteUInt16BigEndian(payload.AsSpan(4), (ushort)text.Length);
            text.CopyTo(payload, 6);
            if (withOffset)
            {
                BinaryPrimitives.WriteUInt64BigEndian(payload.AsSpan(6 + text.Length), r.Offset + 512);
            }

            await s.ChunkAsync(r.Cookie, done: true, withOffset ? ErrorOffset : Error, payload);
            return true;
        });
        await using var devices = new RingDevices(2);
        var device = Open(devices, server);
        var events = new Warnings();
        device.Queue.Events = events;

        // Two failures: the second within the minute is counted, not logged.
        Assert.Equal(BlockStatus.NoSpace, await device.ExecuteAsync(BlockOp.Read, 8192, 4096, new byte[4096]).AsTask().WaitAsync(Condition.Timeout));
        Assert.Equal(BlockStatus.NoSpace, await device.ExecuteAsync(BlockOp.Read, 8192, 4096, new byte[4096]).AsTask().WaitAsync(Condition.Timeout));
        var buffer = new byte[4096];
        Assert.Equal(BlockStatus.Ok, await device.ExecuteAsync(BlockOp.Read, 8192, 4096, buffer).AsTask().WaitAsync(Condition.Timeout));
        Assert.All(buffer, b => Assert.Equal(0x5a, b));

        var at = withOffset ? " at offset 8704" : string.Empty;
        Assert.Equal(
            [$"hctx0 of le0: the NBD server failed a read with error 28{at}: \"quota exceeded\\x0a\\x1b[31mforged line\"; 1 error message(s) from the server so far"],
            events.Lines);
        Assert.Equal(1, ((NbdClientDriver)device.Queue.Driver).LiveConnections);
        Assert.Empty(server.Faults);
    }

    // proto.md: the server "MAY send the content chunks in any order". A 256 KiB read answered in
    // 64 chunks of 4 KiB, last first, shuffled, or every other one first (32 disjoint pieces at
    // once) fills the read. Past the 16 runs the client keeps, a chunk over one already given, or
    // outside the read, still fails it with EIO, and the connection goes on. Before, the 17th
    // disjoint piece failed the read with EIO.
    [Theory]
    [InlineData("in reverse")]
    [InlineData("shuffled")]
    [InlineData("even pieces first")]
    [InlineData("even pieces first, one given twice")]
    [InlineData("even pieces first, one over two others")]
    [InlineData("even pieces first, one past the read")]
    public async Task A_read_in_many_pieces_out_of_order_is_filled(string order)
    {
        const int Length = 256 << 10;
        const int Piece = 4096;
        const int Pieces = Length / Piece;
        var broken = order.Contains(',', StringComparison.Ordinal);
        var first = true;
        await using var server = Server(async (s, r) =>
        {
            if (r.Command != NbdCommand.Read || !first)
            {
                return false;
            }

            first = false;
            var count = (int)r.Length / Piece;
            var pieces = order switch
            {
                "in reverse" => Enumerable.Range(0, count).Reverse().ToArray(),
                "shuffled" => Enumerable.Range(0, count).OrderBy(i => (i * 37) % count).ToArray(),
                _ => [.. Enumerable.Range(0, count).Where(i => i % 2 == 0), .. Enumerable.Range(0, count).Where(i => i % 2 == 1)],
            };
            for (var i = 0; i < pieces.Length; i++)
            {
                if (i == count / 2 && broken)
                {
                    // The even pieces are all in: piece 10 is covered, piece 11 is not.
                    var (at, length) = order switch
                    {
                        "even pieces first, one given twice" => (r.Offset + (10 * Piece), Piece),
                        "even pieces first, one over two others" => (r.Offset + (10 * Piece) + 512, Piece),
                        _ => (r.Offset + r.Length - 512, Piece),
                    };
                    await s.ChunkAsync(r.Cookie, done: false, OffsetData, Data(at, 0xee, length));
                }

                await s.ChunkAsync(r.Cookie, done: false, OffsetData, Data(r.Offset + (ulong)(pieces[i] * Piece), (byte)(pieces[i] + 1), Piece));
            }

            await s.ChunkAsync(r.Cookie, done: true, None, []);
            return true;
        });
        await using var devices = new RingDevices(2);
        var device = Open(devices, server);
        var buffer = new byte[Length];

        var status = await device.ExecuteAsync(BlockOp.Read, 1 << 20, Length, buffer).AsTask().WaitAsync(Condition.Timeout);
        Assert.Equal(broken ? BlockStatus.IoError : BlockStatus.Ok, status);
        if (!broken)
        {
            for (var i = 0; i < Pieces; i++)
            {
                Assert.True(buffer.AsSpan(i * Piece, Piece).IndexOfAnyExcept((byte)(i + 1)) < 0, $"piece {i} holds its own bytes");
            }
        }

        var next = new byte[Length];
        Assert.Equal(BlockStatus.Ok, await device.ExecuteAsync(BlockOp.Read, 1 << 20, Length, next).AsTask().WaitAsync(Condition.Timeout));
        Assert.All(next, b => Assert.Equal(0x5a, b));
        Assert.Equal(1, ((NbdClientDriver)device.Queue.Driver).LiveConnections);
        Assert.Equal(1, server.Accepted);
        Assert.Empty(server.Faults);
    }

    private static BlockDevice Open(RingDevices devices, FakeNbdServer server) => StructuredReplies.Open(devices, server, "le0");

    private sealed class Warnings : IQueueEvents
    {
        private readonly ConcurrentQueue<string> _lines = new();

        public string[] Lines => [.. _lines];

        public void OnDeviceError(HardwareContext hctx, Exception error)
        {
        }

        public void OnAbort(HardwareContext hctx)
        {
        }

        public void OnDriverWarning(HardwareContext hctx, string message) => _lines.Enqueue($"{hctx}: {message}");
    }
}
