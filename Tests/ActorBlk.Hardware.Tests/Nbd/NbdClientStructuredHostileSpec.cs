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
/// The NBD client driver's structured replies and block status against a scripted server
/// (<see cref="FakeNbdServer"/> with structured replies) that answers well or breaks the protocol.
/// A chunk the client can frame but that breaks the read (outside its range, over data already
/// given, DONE before the data covered it, an error) fails that request with an I/O error and
/// the connection goes on; one it cannot frame or that breaks a MUST (an unknown cookie, a length
/// beyond the request's, an unknown non-error type, NONE without DONE, a simple reply to a read)
/// loses the connection, and the read is retried whole on the next. No chunk is ever copied
/// outside its request. A block status answer that breaks its rules makes the map say it cannot tell.
/// </summary>
public sealed class NbdClientStructuredHostileSpec
{
    private const int Length = 4096;
    private const long At = 8192;
    private const ushort OffsetData = (ushort)NbdChunkType.OffsetData;
    private const ushort OffsetHole = (ushort)NbdChunkType.OffsetHole;
    private const ushort None = (ushort)NbdChunkType.None;
    private const ushort Error = (ushort)NbdChunkType.Error;
    private const ushort ErrorOffset = (ushort)NbdChunkType.ErrorOffset;
    private const ushort Status = (ushort)NbdChunkType.BlockStatus;
    private const uint HoleZero = (uint)(NbdAllocationFlags.Hole | NbdAllocationFlags.Zero);

    private static byte[] Hole(ulong offset, uint length)
    {
        var payload = new byte[12];
        BinaryPrimitives.WriteUInt64BigEndian(payload, offset);
        BinaryPrimitives.WriteUInt32BigEndian(payload.AsSpan(8), length);
        return payload;
    }

    private static byte[] Failure(NbdError error, string message, ulong? offset = null)
    {
        var text = System.Text.Encoding.UTF8.GetBytes(message);
        var payload = new byte[6 + text.Length + (offset is null ? 0 : 8)];
        BinaryPrimitives.WriteUInt32BigEndian(payload, (uint)error);
        BinaryPrimitives.WriteUInt16BigEndian(payload.AsSpan(4), (ushort)text.Length);
        text.CopyTo(payload, 6);
        if (offset is { } at)
        {
            BinaryPrimitives.WriteUInt64BigEndian(payload.AsSpan(6 + text.Length), at);
        }

        return payload;
    }

    // The first connection answers the first read as `answer` says, then every request well
    // (reads with 0x5a); later connections answer every request well.
    private static FakeNbdServer Server(Func<FakeNbdSession, FakeNbdRequest, Task> answer) => new(_ => Structured, async s =>
    {
        var first = s.Index == 0;
        while (await s.ReadRequestAsync() is { } request)
        {
            if (request.Command == NbdCommand.Disconnect)
            {
                return;
            }

            if (request.Command == NbdCommand.Read && first)
            {
                first = false;
                await answer(s, request);
                continue;
            }

            await (request.Command == NbdCommand.Read
                ? s.ChunkAsync(request.Cookie, done: true, OffsetData, Data(request.Offset, 0x5a, (int)request.Length))
                : s.ChunkAsync(request.Cookie, done: true, None, []));
        }
    });

    // Chunks in any order, a hole among them (zero-filled over what the buffer held), NONE last.
    [Fact]
    public async Task Chunks_in_any_order_with_a_hole_fill_the_read_and_the_hole_reads_as_zeroes()
    {
        await using var server = Server(async (s, r) =>
        {
            await s.ChunkAsync(r.Cookie, done: false, OffsetData, Data(r.Offset + 2048, 0x22, 2048));
            await s.ChunkAsync(r.Cookie, done: false, OffsetHole, Hole(r.Offset, 1024));
            await s.ChunkAsync(r.Cookie, done: false, OffsetData, Data(r.Offset + 1024, 0x11, 1024));
            await s.ChunkAsync(r.Cookie, done: true, None, []);
        });
        await using var devices = new RingDevices(2);
        var device = Open(devices, server);
        var buffer = Enumerable.Repeat((byte)0xee, Length).ToArray();

        Assert.Equal(BlockStatus.Ok, await device.ExecuteAsync(BlockOp.Read, At, Length, buffer).AsTask().WaitAsync(Condition.Timeout));
        Assert.All(buffer[..1024], b => Assert.Equal(0, b));
        Assert.All(buffer[1024..2048], b => Assert.Equal(0x11, b));
        Assert.All(buffer[2048..], b => Assert.Equal(0x22, b));
        Assert.True(((NbdClientDriver)device.Queue.Driver).Connections.Single().Structured);
        Assert.Equal(1, server.Accepted);
        Assert.Empty(server.Faults);
    }

    // Framed chunks that break the read: the read fails with an I/O error (or the server's
    // error), nothing lands outside the read's range, and the connection serves the next read.
    [Theory]
    [InlineData("data past the read", BlockStatus.IoError)]
    [InlineData("data before the read", BlockStatus.IoError)]
    [InlineData("a hole past the read", BlockStatus.IoError)]
    [InlineData("a hole of zero bytes", BlockStatus.IoError)]
    [InlineData("overlapping data", BlockStatus.IoError)]
    [InlineData("DONE before the data covered the read", BlockStatus.IoError)]
    [InlineData("an error chunk", BlockStatus.NoSpace)]
    [InlineData("an error chunk with an offset, after data", BlockStatus.Invalid)]
    [InlineData("an error chunk of error 0", BlockStatus.IoError)]
    [InlineData("an unknown type with the error bit", BlockStatus.IoError)]
    public async Task A_chunk_that_breaks_the_read_fails_it_and_the_connection_goes_on(string broken, BlockStatus expected)
    {
        await using var server = Server(async (s, r) =>
        {
            var (c, o) = (r.Cookie, r.Offset);
            switch (broken)
            {
                case "data past the read":
                    await s.ChunkAsync(c, false, OffsetData, Data(o + Length, 0x66, 512));
                    await s.ChunkAsync(c, true, OffsetData, Data(o, 0x66, Length));
                    break;
                case "data before the read":
                    await s.ChunkAsync(c, false, OffsetData, Data(o - 512, 0x66, 1024));
                    await s.ChunkAsync(c, true, OffsetData, Data(o + 512, 0x66, Length - 512));
                    break;
                case "a hole past the read":
                    await s.ChunkAsync(c, false, OffsetHole, Hole(o + 2048, Length));
                    await s.ChunkAsync(c, true, OffsetData, Data(o, 0x66, 2048));
                    break;
                case "a hole of zero bytes":
                    await s.ChunkAsync(c, false, OffsetHole, Hole(o, 0));
                    await s.ChunkAsync(c, true, OffsetData, Data(o, 0x66, Length));
                    break;
                case "overlapping data":
                    await s.ChunkAsync(c, false, OffsetData, Data(o, 0x66, 2048));
                    await s.ChunkAsync(c, false, OffsetData, Data(o + 1024, 0x66, 2048));
                    await s.ChunkAsync(c, true, OffsetData, Data(o + 3072, 0x66, 1024));
                    break;
                case "DONE before the data covered the read":
                    await s.ChunkAsync(c, true, OffsetData, Data(o, 0x66, 2048));
                    break;
                case "an error chunk":
                    await s.ChunkAsync(c, true, Error, Failure(NbdError.NoSpace, "full"));
                    break;
                case "an error chunk with an offset, after data":
                    await s.ChunkAsync(c, false, OffsetData, Data(o, 0x66, 2048));
                    await s.ChunkAsync(c, true, ErrorOffset, Failure(NbdError.Invalid, "bad", o + 2048));
                    break;
                case "an error chunk of error 0":
                    await s.ChunkAsync(c, true, Error, Failure(NbdError.None, string.Empty));
                    break;
                case "an unknown type with the error bit":
                    await s.ChunkAsync(c, true, 0x8042, [0, 0, 0, 5, 1, 2]);
                    break;
            }
        });
        await using var devices = new RingDevices(2);
        var device = Open(devices, server);
        var guard = new byte[3 * Length];
        var buffer = new Memory<byte>(guard, Length, Length);

        Assert.Equal(expected, await device.ExecuteAsync(BlockOp.Read, At, Length, buffer).AsTask().WaitAsync(Condition.Timeout));
        Assert.All(guard[..Length], b => Assert.Equal(0, b));
        Assert.All(guard[(2 * Length)..], b => Assert.Equal(0, b));

        var next = new byte[Length];
        Assert.Equal(BlockStatus.Ok, await device.ExecuteAsync(BlockOp.Read, At, Length, next).AsTask().WaitAsync(Condition.Timeout));
        Assert.All(next, b => Assert.Equal(0x5a, b));
        Assert.Equal(1, server.Accepted);
        Assert.Equal(1, ((NbdClientDriver)device.Queue.Driver).LiveConnections);
        Assert.Empty(server.Faults);
    }

    // Chunks that cannot be framed, or break a MUST: the connection is lost (nothing of the
    // claimed length is read or allocated), and the read is retried whole on the next connection,
    // where it reads what that server sends. DONE never sent: the read does not complete, and its
    // timeout closes the connection, as for any reply that does not come.
    [Theory]
    [InlineData("an unknown cookie")]
    [InlineData("a data chunk longer than the read")]
    [InlineData("an error chunk of 2 GiB")]
    [InlineData("an error chunk whose message overruns it")]
    [InlineData("an unknown non-error type")]
    [InlineData("NONE without DONE")]
    [InlineData("NONE with a payload")]
    [InlineData("a hole chunk of 16 bytes")]
    [InlineData("a block status chunk for a read")]
    [InlineData("a simple reply to a read")]
    [InlineData("DONE never sent")]
    public async Task A_chunk_that_breaks_the_framing_loses_the_connection_and_the_read_is_retried(string broken)
    {
        await using var server = Server(async (s, r) =>
        {
            var (c, o) = (r.Cookie, r.Offset);
            switch (broken)
            {
                case "an unknown cookie":
                    await s.ChunkAsync(c ^ 0x1234_0000_0000, true, OffsetData, Data(o, 0x66, Length));
                    break;
                case "a data chunk longer than the read":
                    await s.ChunkAsync(c, true, OffsetData, Data(o, 0x66, 16), length: 8 + Length + 4096);
                    break;
                case "an error chunk of 2 GiB":
                    await s.ChunkAsync(c, true, Error, Failure(NbdError.Io, "x"), length: 0x8000_0000);
                    break;
                case "an error chunk whose message overruns it":
                    var overrun = Failure(NbdError.Io, "abc");
                    BinaryPrimitives.WriteUInt16BigEndian(overrun.AsSpan(4), 100);
                    await s.ChunkAsync(c, true, Error, overrun);
                    break;
                case "an unknown non-error type":
                    await s.ChunkAsync(c, true, 0x0042, []);
                    break;
                case "NONE without DONE":
                    await s.ChunkAsync(c, false, None, []);
                    break;
                case "NONE with a payload":
                    await s.ChunkAsync(c, true, None, [1, 2, 3, 4]);
                    break;
                case "a hole chunk of 16 bytes":
                    await s.ChunkAsync(c, true, OffsetHole, [.. Hole(o, Length), 0, 0, 0, 0]);
                    break;
                case "a block status chunk for a read":
                    await s.ChunkAsync(c, true, Status, Extents(Context, (Length, 0)));
                    break;
                case "a simple reply to a read":
                    await s.ReplyAsync(r, NbdError.None, 0x66);
                    break;
                case "DONE never sent":
                    await s.ChunkAsync(c, false, OffsetData, Data(o, 0x66, Length));
                    break;
            }
        });
        await using var devices = new RingDevices(2);
        var device = Open(devices, server);
        var driver = (NbdClientDriver)device.Queue.Driver;
        var guard = new byte[3 * Length];
        var buffer = new Memory<byte>(guard, Length, Length);

        var read = device.ExecuteAsync(BlockOp.Read, At, Length, buffer).AsTask();
        if (broken == "DONE never sent")
        {
            // A later read on the connection is answered whole: the first's chunk came before it.
            var later = new byte[Length];
            Assert.Equal(BlockStatus.Ok, await device.ExecuteAsync(BlockOp.Read, 0, Length, later).AsTask().WaitAsync(Condition.Timeout));
            Assert.False(read.IsCompleted);

            // Its deadline long past: the scan calls the driver's timeout, which closes the connection.
            device.Queue.HardwareContexts[0].ScanTimeouts(long.MaxValue, device.Queue.Driver);
        }

        await Condition.EventuallyAsync(() => driver.LiveConnections == 0, "the connection is lost");
        Assert.False(read.IsCompleted);

        // What supervision does next: reconnect, and retry the read, which the new connection answers.
        driver.Reset();
        Assert.Equal((1, 0), device.Queue.ReclaimInFlight(BlockStatus.IoError));
        Assert.Equal(BlockStatus.Ok, await read.WaitAsync(Condition.Timeout));
        Assert.All(guard[Length..(2 * Length)], b => Assert.Equal(0x5a, b));
        Assert.All(guard[..Length], b => Assert.Equal(0, b));
        Assert.All(guard[(2 * Length)..], b => Assert.Equal(0, b));
        Assert.Equal(2, server.Accepted);
        Assert.Empty(server.Faults);
    }

    // NBD_CMD_BLOCK_STATUS with NBD_CMD_FLAG_REQ_ONE, answered for the negotiated context: a hole
    // (HOLE and ZERO), data, an extent past the range cut to it; a malformed answer (an extent of
    // zero bytes, another context's id, two chunks for the context, an error, no extent at all)
    // makes the map say it cannot tell, and the connection goes on.
    [Theory]
    [InlineData("a hole", 65536L, false)]
    [InlineData("a hole that may not read as zeroes", 65536L, true)]
    [InlineData("data past the range", 1L << 20, true)]
    [InlineData("two extents (the second ignored)", 4096L, false)]
    [InlineData("an extent of zero bytes", -1L, false)]
    [InlineData("another context", -1L, false)]
    [InlineData("two chunks for the context", -1L, false)]
    [InlineData("an error chunk", -1L, false)]
    [InlineData("a simple error reply", -1L, false)]
    [InlineData("NONE only", -1L, false)]
    public async Task Block_status_answers_the_map_or_cannot_tell(string answer, long length, bool data)
    {
        var asked = new TaskCompletionSource<FakeNbdRequest>(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var server = new FakeNbdServer(_ => Structured, async s =>
        {
            while (await s.ReadRequestAsync() is { } r)
            {
                if (r.Command != NbdCommand.BlockStatus)
                {
                    await s.ChunkAsync(r.Cookie, true, None, []);
                    continue;
                }

                asked.TrySetResult(r);
                var c = r.Cookie;
                switch (answer)
                {
                    case "a hole":
                        await s.ChunkAsync(c, true, Status, Extents(Context, (65536, HoleZero)));
                        break;
                    case "a hole that may not read as zeroes":
                        await s.ChunkAsync(c, true, Status, Extents(Context, (65536, (uint)NbdAllocationFlags.Hole)));
                        break;
                    case "data past the range":
                        await s.ChunkAsync(c, true, Status, Extents(Context, (4u << 20, 0)));
                        break;
                    case "two extents (the second ignored)":
                        await s.ChunkAsync(c, true, Status, Extents(Context, (4096, HoleZero), (4096, 0)));
                        break;
                    case "an extent of zero bytes":
                        await s.ChunkAsync(c, true, Status, Extents(Context, (0, HoleZero)));
                        break;
                    case "another context":
                        await s.ChunkAsync(c, true, Status, Extents(Context + 1, (65536, HoleZero)));
                        break;
                    case "two chunks for the context":
                        await s.ChunkAsync(c, false, Status, Extents(Context, (65536, HoleZero)));
                        await s.ChunkAsync(c, true, Status, Extents(Context, (65536, HoleZero)));
                        break;
                    case "an error chunk":
                        await s.ChunkAsync(c, true, Error, Failure(NbdError.Invalid, "no"));
                        break;
                    case "a simple error reply":
                        await s.ReplyAsync(r, NbdError.Invalid);
                        break;
                    case "NONE only":
                        await s.ChunkAsync(c, true, None, []);
                        break;
                }
            }
        });
        await using var devices = new RingDevices(2);
        var device = Open(devices, server);
        var driver = (NbdClientDriver)device.Queue.Driver;
        Assert.True(driver.HasAllocationMap);

        var extent = await ((IAllocationMap)driver).GetExtentAsync(1 << 20, 1 << 20).AsTask().WaitAsync(Condition.Timeout);
        Assert.Equal(length < 0 ? null : new AllocationExtent(length, data), extent);
        var request = await asked.Task.WaitAsync(Condition.Timeout);
        Assert.Equal((NbdCommandFlags.ReqOne, 1UL << 20, 1u << 20), (request.Flags, request.Offset, request.Length));

        // The synchronous map cannot tell (it would wait on the network).
        Assert.False(driver.TryGetExtent(0, 4096, out _, out _));
        Assert.Equal(1, server.Accepted);
        Assert.Equal(1, driver.LiveConnections);
        Assert.Equal(0, driver.Connections.Single().QueriesOutstanding);
        Assert.Empty(server.Faults);
    }

    // A block status answer that cannot be framed or breaks a MUST loses the connection; the
    // question's answer is "cannot tell".
    [Theory]
    [InlineData("a data chunk")]
    [InlineData("a simple reply without error")]
    [InlineData("a block status chunk of 10 bytes")]
    [InlineData("an unknown cookie")]
    public async Task A_block_status_answer_that_breaks_the_framing_loses_the_connection(string answer)
    {
        await using var server = new FakeNbdServer(_ => Structured, async s =>
        {
            while (await s.ReadRequestAsync() is { } r)
            {
                if (r.Command != NbdCommand.BlockStatus || s.Index > 0)
                {
                    await s.ChunkAsync(r.Cookie, true, r.Command == NbdCommand.BlockStatus ? Status : None, r.Command == NbdCommand.BlockStatus ? Extents(Context, (4096, 0)) : []);
                    continue;
                }

                switch (answer)
                {
                    case "a data chunk":
                        await s.ChunkAsync(r.Cookie, true, OffsetData, Data(r.Offset, 0x66, 512));
                        break;
                    case "a simple reply without error":
                        await s.ReplyAsync(r, NbdError.None);
                        break;
                    case "a block status chunk of 10 bytes":
                        await s.ChunkAsync(r.Cookie, true, Status, [.. Extents(Context, (4096, 0)).Take(10)]);
                        break;
                    case "an unknown cookie":
                        await s.ChunkAsync(r.Cookie + 1, true, Status, Extents(Context, (4096, 0)));
                        break;
                }
            }
        });
        await using var devices = new RingDevices(2);
        var device = Open(devices, server);
        var driver = (NbdClientDriver)device.Queue.Driver;

        Assert.Null(await ((IAllocationMap)driver).GetExtentAsync(0, 1 << 20).AsTask().WaitAsync(Condition.Timeout));
        await Condition.EventuallyAsync(() => driver.LiveConnections == 0, "the connection is lost");
        driver.Reset();
        Assert.Equal(2, server.Accepted);
        Assert.Equal(new AllocationExtent(4096, true), await ((IAllocationMap)driver).GetExtentAsync(0, 1 << 20).AsTask().WaitAsync(Condition.Timeout));
        Assert.Empty(server.Faults);
    }

    // An answer that does not come (DONE never sent, or late): the question gives up at its
    // timeout or its caller's cancellation ("cannot tell") without blocking a thread, its slot
    // stays taken until the answer comes, and a late answer is taken without harm: the
    // connection goes on and the next question is answered.
    [Fact]
    public async Task A_block_status_answer_that_does_not_come_is_given_up_and_a_late_one_does_no_harm()
    {
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var held = new TaskCompletionSource<FakeNbdRequest>(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var server = new FakeNbdServer(_ => Structured, async s =>
        {
            while (await s.ReadRequestAsync() is { } r)
            {
                if (r.Command == NbdCommand.BlockStatus && held.TrySetResult(r))
                {
                    _ = release.Task.ContinueWith(_ => s.ChunkAsync(r.Cookie, true, Status, Extents(Context, (4096, HoleZero))), TaskScheduler.Default).Unwrap();
                    continue;
                }

                await s.ChunkAsync(r.Cookie, true, r.Command == NbdCommand.BlockStatus ? Status : None, r.Command == NbdCommand.BlockStatus ? Extents(Context, (8192, 0)) : []);
            }
        });
        await using var devices = new RingDevices(2);
        var device = Open(devices, server);
        var driver = (NbdClientDriver)device.Queue.Driver;
        var connection = driver.Connections.Single();

        using var cancel = new CancellationTokenSource();
        var question = ((IAllocationMap)driver).GetExtentAsync(0, 1 << 20, cancel.Token).AsTask();
        await held.Task.WaitAsync(Condition.Timeout);
        Assert.False(question.IsCompleted);
        await cancel.CancelAsync();
        Assert.Null(await question.WaitAsync(Condition.Timeout));
        Assert.Equal(1, connection.QueriesOutstanding);

        release.SetResult();
        await Condition.EventuallyAsync(() => connection.QueriesOutstanding == 0, "the late answer frees the question's slot");
        Assert.Equal(new AllocationExtent(8192, true), await ((IAllocationMap)driver).GetExtentAsync(0, 1 << 20).AsTask().WaitAsync(Condition.Timeout));
        Assert.Equal(1, driver.LiveConnections);
        Assert.Equal(1, server.Accepted);
        Assert.Empty(server.Faults);
    }

    // A server that refuses structured replies (NBD_REP_ERR_UNSUP), or offers no base:allocation
    // context: simple replies as before, and a map that cannot tell; nothing is asked.
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Without_structured_replies_or_the_context_the_map_cannot_tell(bool structured)
    {
        await using var server = new FakeNbdServer(_ => FakeNbdExport.Default with { Structured = structured }, async s =>
        {
            while (await s.ReadRequestAsync() is { } r)
            {
                Assert.NotEqual(NbdCommand.BlockStatus, r.Command);
                if (r.Command == NbdCommand.Disconnect)
                {
                    return;
                }

                await (structured && r.Command == NbdCommand.Read
                    ? s.ChunkAsync(r.Cookie, true, OffsetData, Data(r.Offset, 0x5a, (int)r.Length))
                    : s.ReplyAsync(r, NbdError.None, 0x5a));
            }
        });
        await using var devices = new RingDevices(2);
        var device = Open(devices, server);
        var driver = (NbdClientDriver)device.Queue.Driver;

        Assert.Equal(structured, driver.Connections.Single().Structured);
        Assert.False(driver.HasAllocationMap);
        Assert.Null(await ((IAllocationMap)driver).GetExtentAsync(0, 4096).AsTask().WaitAsync(Condition.Timeout));
        var back = new byte[Length];
        Assert.Equal(BlockStatus.Ok, await device.ExecuteAsync(BlockOp.Read, At, Length, back).AsTask().WaitAsync(Condition.Timeout));
        Assert.All(back, b => Assert.Equal(0x5a, b));
        Assert.Empty(server.Faults);
    }

    private static byte[] OptionReply(NbdOption option, NbdReply type, byte[] data)
    {
        var reply = new byte[20 + data.Length];
        BinaryPrimitives.WriteUInt64BigEndian(reply, NbdProtocol.ReplyMagic);
        BinaryPrimitives.WriteUInt32BigEndian(reply.AsSpan(8), (uint)option);
        BinaryPrimitives.WriteUInt32BigEndian(reply.AsSpan(12), (uint)type);
        BinaryPrimitives.WriteUInt32BigEndian(reply.AsSpan(16), (uint)data.Length);
        data.CopyTo(reply, 20);
        return reply;
    }

    private static byte[] MetaContext(uint id, string name) => [.. BitConverter.IsLittleEndian ? BitConverter.GetBytes(id).Reverse() : BitConverter.GetBytes(id), .. System.Text.Encoding.UTF8.GetBytes(name)];

    // The greeting, then each option the client sends answered by `answer` until NBD_OPT_GO.
    private static async Task NegotiateAsync(Stream stream, Func<NbdOption, byte[][]> answer)
    {
        var greeting = new byte[18];
        BinaryPrimitives.WriteUInt64BigEndian(greeting, NbdProtocol.InitMagic);
        BinaryPrimitives.WriteUInt64BigEndian(greeting.AsSpan(8), NbdProtocol.OptionMagic);
        BinaryPrimitives.WriteUInt16BigEndian(greeting.AsSpan(16), (ushort)(NbdHandshakeFlags.FixedNewstyle | NbdHandshakeFlags.NoZeroes));
        await stream.WriteAsync(greeting);
        await stream.ReadExactlyAsync(new byte[4]);
        var header = new byte[16];
        while (true)
        {
            if (await stream.ReadAtLeastAsync(header, header.Length, throwOnEndOfStream: false) < header.Length)
            {
                return;
            }

            await stream.ReadExactlyAsync(new byte[BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(12))]);
            var option = (NbdOption)BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(8));
            foreach (var reply in answer(option))
            {
                await stream.WriteAsync(reply);
            }
        }
    }

    // A negotiation of structured replies or the context that breaks the protocol: refused at
    // open with a protocol error naming the server and the rule. Before, none was asked.
    [Theory]
    [InlineData("an acknowledgement with data", "NBD_REP_ACK to StructuredReply with 4 byte(s) of data")]
    [InlineData("a reply type that is no answer", "a reply of type 2 to StructuredReply")]
    [InlineData("a context for a name not asked", "the context 'base:other', which was not asked")]
    [InlineData("a second context", "a second NBD_REP_META_CONTEXT for base:allocation")]
    [InlineData("a context reply too short for its id", "an NBD_REP_META_CONTEXT reply of 2 byte(s)")]
    [InlineData("a context reply for another option", "where SetMetaContext (10) was asked")]
    public async Task A_negotiation_of_structured_replies_that_breaks_the_protocol_is_refused(string broken, string named)
    {
        byte[][] Answer(NbdOption option) => (option, broken) switch
        {
            (NbdOption.StructuredReply, "an acknowledgement with data") => [OptionReply(option, NbdReply.Ack, [1, 2, 3, 4])],
            (NbdOption.StructuredReply, "a reply type that is no answer") => [OptionReply(option, NbdReply.Server, [])],
            (NbdOption.StructuredReply, _) => [OptionReply(option, NbdReply.Ack, [])],
            (NbdOption.SetMetaContext, "a context for a name not asked") => [OptionReply(option, NbdReply.MetaContext, MetaContext(1, "base:other")), OptionReply(option, NbdReply.Ack, [])],
            (NbdOption.SetMetaContext, "a second context") => [OptionReply(option, NbdReply.MetaContext, MetaContext(1, NbdProtocol.BaseAllocation)), OptionReply(option, NbdReply.MetaContext, MetaContext(2, NbdProtocol.BaseAllocation)), OptionReply(option, NbdReply.Ack, [])],
            (NbdOption.SetMetaContext, "a context reply too short for its id") => [OptionReply(option, NbdReply.MetaContext, [0, 1])],
            (NbdOption.SetMetaContext, "a context reply for another option") => [OptionReply(NbdOption.ListMetaContext, NbdReply.MetaContext, MetaContext(1, NbdProtocol.BaseAllocation))],
            _ => [OptionReply(option, NbdReply.ErrUnsupported, [])],
        };
        await using var server = new FakeNbdServer(_ => Structured, s => s.ServeAsync(0)) { Handshake = (_, stream) => NegotiateAsync(stream, Answer) };
        var options = new NbdClientOptions { Uri = NbdUri.Parse(server.Uri("disk7")) };

        var error = Assert.Throws<NbdClientProtocolException>(() => new NbdClientDriver(options, "fake0").Dispose());
        Assert.Contains(server.Uri("disk7") + ": protocol error: ", error.Message, StringComparison.Ordinal);
        Assert.Contains(named, error.Message, StringComparison.Ordinal);
        Assert.Empty(server.Faults);
    }

    // NBD_REP_ERR_SHUTDOWN to NBD_OPT_STRUCTURED_REPLY: the server is going away, and the client
    // ends the negotiation with NBD_OPT_ABORT (a soft disconnect) rather than go on.
    [Fact]
    public async Task A_shutdown_answer_to_structured_replies_ends_the_negotiation_with_nbd_opt_abort()
    {
        var asked = new System.Collections.Concurrent.ConcurrentQueue<NbdOption>();
        byte[][] Answer(NbdOption option)
        {
            asked.Enqueue(option);
            return option == NbdOption.Abort ? [] : [OptionReply(option, NbdReply.ErrShutdown, [])];
        }

        await using var server = new FakeNbdServer(_ => Structured, s => s.ServeAsync(0)) { Handshake = (_, stream) => NegotiateAsync(stream, Answer) };
        var options = new NbdClientOptions { Uri = NbdUri.Parse(server.Uri()) };

        var error = Assert.Throws<IOException>(() => new NbdClientDriver(options, "fake0").Dispose());
        Assert.Contains("ErrShutdown", error.Message, StringComparison.Ordinal);
        await Condition.EventuallyAsync(() => asked.Count == 2, "the client sends NBD_OPT_ABORT");
        Assert.Equal([NbdOption.StructuredReply, NbdOption.Abort], asked);
    }

    private static BlockDevice Open(RingDevices devices, FakeNbdServer server) => StructuredReplies.Open(devices, server, "sr0");
}
