using System.Buffers.Binary;
using System.Net;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers;
using ActorBlk.Hardware.Nbd;
using ActorBlk.Hardware.Topology;
using ActorBlk.Testing;
using Xunit;

namespace ActorBlk.Hardware.Tests.Nbd;

/// <summary>
/// Rules of the NBD protocol document (NetworkBlockDevice/nbd doc/proto.md) that an outside audit
/// found broken: each case quotes the rule it checks.
/// </summary>
public sealed class NbdProtocolRulesSpec
{
    private const uint HoleZero = (uint)(NbdAllocationFlags.Hole | NbdAllocationFlags.Zero);

    [Fact]
    public async Task Fua_is_accepted_on_every_command_reads_included()
    {
        // "NBD_CMD_FLAG_FUA ... is valid for all commands, provided NBD_FLAG_SEND_FUA has been
        // negotiated, in which case the server MUST accept all commands with this bit set."
        await using var fx = NbdExportFixture.Start();
        var (client, _, flags) = await RawNbdClient.OpenAsync(fx.Endpoint, "mem0");
        await using var _ = client;
        Assert.True(flags.HasFlag(NbdTransmissionFlags.SendFua));
        var data = Enumerable.Repeat((byte)0x5c, 4096).ToArray();
        await client.SendRequestAsync(NbdCommand.Write, 1, 8192, 4096, NbdCommandFlags.Fua, data);
        Assert.Equal(NbdError.None, (await client.ReadSimpleReplyAsync()).Error);
        await client.SendRequestAsync(NbdCommand.Read, 2, 8192, 4096, NbdCommandFlags.Fua);
        var read = await client.ReadSimpleReplyAsync(_ => 4096);
        Assert.Equal((NbdError.None, 2UL), (read.Error, read.Cookie));
        Assert.Equal(data, read.Data);
        await client.SendRequestAsync(NbdCommand.Flush, 3, 0, 0, NbdCommandFlags.Fua);
        Assert.Equal(NbdError.None, (await client.ReadSimpleReplyAsync()).Error);
        await client.SendRequestAsync(NbdCommand.Trim, 4, 8192, 4096, NbdCommandFlags.Fua);
        Assert.Equal(NbdError.None, (await client.ReadSimpleReplyAsync()).Error);

        // Flags a command does not take are still refused.
        await client.SendRequestAsync(NbdCommand.Write, 5, 8192, 4096, NbdCommandFlags.DontFragment, data);
        Assert.Equal(NbdError.Invalid, (await client.ReadSimpleReplyAsync()).Error);
    }

    [Fact]
    public async Task Writes_and_write_zeroes_past_the_end_get_enospc_and_other_commands_einval()
    {
        // "The server SHOULD return NBD_ENOSPC if it receives a write request including one or more
        // sectors beyond the size of the device", and the same for write zeroes.
        await using var fx = NbdExportFixture.Start();
        var (client, _, _) = await RawNbdClient.OpenAsync(fx.Endpoint, "mem0");
        await using var _ = client;
        var end = (ulong)NbdExportFixture.MemSize;
        await client.SendRequestAsync(NbdCommand.Write, 1, end, 512, payload: new byte[512]);
        await client.SendRequestAsync(NbdCommand.Write, 2, end - 512, 1024, payload: new byte[1024]);
        await client.SendRequestAsync(NbdCommand.WriteZeroes, 3, end - 512, 4096);
        await client.SendRequestAsync(NbdCommand.Read, 4, end - 512, 1024);
        await client.SendRequestAsync(NbdCommand.Trim, 5, end, 512);
        await client.SendRequestAsync(NbdCommand.Write, 6, 0, 0);
        await client.SendRequestAsync(NbdCommand.Write, 8, ulong.MaxValue - 511, 512, payload: new byte[512]); // 2^64 - 512
        await client.SendRequestAsync(NbdCommand.Flush, 9, 0, 0, (NbdCommandFlags)0x40);
        await client.SendRequestAsync(NbdCommand.Flush, 10, 0, 0, NbdCommandFlags.NoHole);
        await client.SendRequestAsync(NbdCommand.BlockStatus, 11, 0, 4096, (NbdCommandFlags)0x40);
        await client.SendRequestAsync(NbdCommand.Flush, 12, 0, 0, NbdCommandFlags.Fua);
        var errors = new Dictionary<ulong, NbdError>();
        for (var i = 0; i < 11; i++)
        {
            var reply = await client.ReadSimpleReplyAsync();
            errors[reply.Cookie] = reply.Error;
        }

        Assert.Equal(NbdError.NoSpace, errors[1]);
        Assert.Equal(NbdError.NoSpace, errors[2]);
        Assert.Equal(NbdError.NoSpace, errors[3]);
        Assert.Equal(NbdError.Invalid, errors[4]);
        Assert.Equal(NbdError.Invalid, errors[5]);
        Assert.Equal(NbdError.Invalid, errors[6]); // zero length is not a range question

        // An outside audit: a write far past the end got EINVAL (its offset read as negative), and
        // flush and block status took any flag; a flag unknown or not the command's SHOULD be
        // EINVAL, and FUA MUST be taken by every command.
        Assert.Equal(NbdError.NoSpace, errors[8]);
        Assert.Equal(NbdError.Invalid, errors[9]);
        Assert.Equal(NbdError.Invalid, errors[10]);
        Assert.Equal(NbdError.Invalid, errors[11]);
        Assert.Equal(NbdError.None, errors[12]);

        // Nothing was written: the last sector still reads as zeroes, and the connection goes on.
        await client.SendRequestAsync(NbdCommand.Read, 7, end - 512, 512);
        var read = await client.ReadSimpleReplyAsync(_ => 512);
        Assert.Equal(NbdError.None, read.Error);
        Assert.All(read.Data, b => Assert.Equal(0, b));
    }

    [Fact]
    public async Task Write_zeroes_with_no_hole_leaves_the_range_provisioned_and_without_it_may_free_it()
    {
        // "the client MAY set the command flag NBD_CMD_FLAG_NO_HOLE to inform the server that the
        // area MUST be fully provisioned". The memory-backed null device frees whole pages a plain
        // write-zeroes covers, and keeps them (zeroed) under NO_HOLE, which becomes REQ_NOUNMAP.
        await using var fx = NbdExportFixture.Start();
        var (client, _, _) = await RawNbdClient.OpenAsync(fx.Endpoint, "mem0", structured: true, allocation: true);
        await using var _ = client;
        var cookie = 1UL;
        async Task DoAsync(NbdCommand command, ulong offset, uint length, NbdCommandFlags flags = NbdCommandFlags.None, byte[]? payload = null)
        {
            var id = cookie++;
            await client.SendRequestAsync(command, id, offset, length, flags, payload);
            var done = await client.ReadChunkAsync();
            Assert.Equal((NbdChunkType.None, id), (done.Type, done.Cookie));
        }

        async Task<uint> FlagsAsync(ulong offset, uint length)
        {
            var id = cookie++;
            await client.SendRequestAsync(NbdCommand.BlockStatus, id, offset, length);
            var chunk = await client.ReadChunkAsync();
            Assert.Equal((NbdChunkType.BlockStatus, id), (chunk.Type, chunk.Cookie));
            Assert.Equal(length, BinaryPrimitives.ReadUInt32BigEndian(chunk.Data.AsSpan(4)));
            return BinaryPrimitives.ReadUInt32BigEndian(chunk.Data.AsSpan(8));
        }

        var data = Enumerable.Repeat((byte)0xaa, 65536).ToArray();
        await DoAsync(NbdCommand.Write, 1 << 20, 65536, payload: data);
        await DoAsync(NbdCommand.Write, 2 << 20, 65536, payload: data);
        await DoAsync(NbdCommand.WriteZeroes, 1 << 20, 65536, NbdCommandFlags.NoHole);
        await DoAsync(NbdCommand.WriteZeroes, 2 << 20, 65536);
        await DoAsync(NbdCommand.WriteZeroes, 3 << 20, 65536, NbdCommandFlags.NoHole); // never written: now allocated

        Assert.Equal(0u, await FlagsAsync(1 << 20, 65536) & (uint)NbdAllocationFlags.Hole);
        Assert.Equal(0u, await FlagsAsync(3 << 20, 65536) & (uint)NbdAllocationFlags.Hole);
        Assert.Equal(HoleZero, await FlagsAsync(2 << 20, 65536));
        foreach (var offset in new ulong[] { 1 << 20, 2 << 20, 3 << 20 })
        {
            var id = cookie++;
            await client.SendRequestAsync(NbdCommand.Read, id, offset, 65536);
            var chunk = await client.ReadChunkAsync();
            Assert.Equal(id, chunk.Cookie);
            Assert.All(chunk.Data.AsSpan(8).ToArray(), b => Assert.Equal(0, b));
        }
    }

    [Fact]
    public async Task A_failed_set_meta_context_clears_the_earlier_selection()
    {
        // "Issuing this command replaces all previously-set metadata contexts (including when this
        // command fails)", and block status without a context SHOULD get NBD_EINVAL.
        await using var fx = NbdExportFixture.Start();
        foreach (var failing in new[] { RawNbdClient.MetaContextRequest("nosuch", NbdProtocol.BaseAllocation), [0, 0, 0, 4, (byte)'m', (byte)'e', (byte)'m', (byte)'0', 0, 0, 0, 5] })
        {
            await using var client = await RawNbdClient.NegotiateAsync(fx.Endpoint);
            await client.SendOptionAsync(NbdOption.StructuredReply, []);
            Assert.Equal(NbdReply.Ack, (await client.ReadOptionReplyAsync()).Type);
            await client.SendOptionAsync(NbdOption.SetMetaContext, RawNbdClient.MetaContextRequest("mem0", NbdProtocol.BaseAllocation));
            Assert.Equal(NbdReply.MetaContext, (await client.ReadOptionReplyAsync()).Type);
            Assert.Equal(NbdReply.Ack, (await client.ReadOptionReplyAsync()).Type);

            await client.SendOptionAsync(NbdOption.SetMetaContext, failing);
            var refused = await client.ReadOptionReplyAsync();
            Assert.True((uint)refused.Type >= 1u << 31, $"expected an error reply, got {refused.Type}");

            await client.SendOptionAsync(NbdOption.Go, RawNbdClient.InfoRequest("mem0"));
            while ((await client.ReadOptionReplyAsync()).Type != NbdReply.Ack)
            {
            }

            await client.SendRequestAsync(NbdCommand.BlockStatus, 1, 0, 4096);
            var error = await client.ReadChunkAsync();
            Assert.Equal((NbdChunkType.Error, 1UL), (error.Type, error.Cookie));
            Assert.Equal((uint)NbdError.Invalid, BinaryPrimitives.ReadUInt32BigEndian(error.Data));
        }
    }

    [Fact]
    public async Task List_meta_context_replies_carry_the_reserved_id_zero_and_set_the_id_to_use()
    {
        // "The metadata context ID in these replies is reserved and SHOULD be set to zero" (LIST).
        await using var fx = NbdExportFixture.Start();
        await using var client = await RawNbdClient.NegotiateAsync(fx.Endpoint);
        await client.SendOptionAsync(NbdOption.StructuredReply, []);
        Assert.Equal(NbdReply.Ack, (await client.ReadOptionReplyAsync()).Type);
        await client.SendOptionAsync(NbdOption.ListMetaContext, RawNbdClient.MetaContextRequest("mem0"));
        var listed = await client.ReadOptionReplyAsync();
        Assert.Equal(NbdReply.MetaContext, listed.Type);
        Assert.Equal(0u, BinaryPrimitives.ReadUInt32BigEndian(listed.Data));
        Assert.Equal(NbdProtocol.BaseAllocation, System.Text.Encoding.UTF8.GetString(listed.Data, 4, listed.Data.Length - 4));
        Assert.Equal(NbdReply.Ack, (await client.ReadOptionReplyAsync()).Type);

        await client.SendOptionAsync(NbdOption.SetMetaContext, RawNbdClient.MetaContextRequest("mem0", NbdProtocol.BaseAllocation));
        var set = await client.ReadOptionReplyAsync();
        Assert.Equal(NbdReply.MetaContext, set.Type);
        Assert.Equal(NbdProtocol.BaseAllocationId, BinaryPrimitives.ReadUInt32BigEndian(set.Data));
        Assert.NotEqual(0u, NbdProtocol.BaseAllocationId);
    }

    [Fact]
    public async Task A_client_that_resets_stops_the_requests_it_had_buffered()
    {
        // A client that pipelines thousands of large reads and resets the connection gets no
        // reply, so the server must not go on reading its buffered requests: before the fix it ran
        // every one of them (minutes of work for 28 bytes each) after the client had gone.
        await using var fx = NbdExportFixture.Start(new NbdServerOptions { MaxInFlight = 4 });
        const int Requests = 2000;
        const uint Length = 256 << 10;
        var client = (await RawNbdClient.OpenAsync(fx.Endpoint, "mem0")).Client;
        var burst = new byte[Requests * 28];
        for (var i = 0; i < Requests; i++)
        {
            var h = burst.AsSpan(i * 28, 28);
            BinaryPrimitives.WriteUInt32BigEndian(h, NbdProtocol.RequestMagic);
            BinaryPrimitives.WriteUInt16BigEndian(h[6..], (ushort)NbdCommand.Read);
            BinaryPrimitives.WriteUInt64BigEndian(h[8..], (ulong)i);
            BinaryPrimitives.WriteUInt64BigEndian(h[16..], (ulong)(i % 200) * Length);
            BinaryPrimitives.WriteUInt32BigEndian(h[24..], Length);
        }

        await client.WriteAsync(burst);
        await Condition.EventuallyAsync(() => fx.Mem.Queue.Stats.Read().ReadIos >= 4, "the server takes the first reads");
        client.Vanish();
        await Condition.EventuallyAsync(() => fx.Server.ConnectionCount == 0, "the connection ends");

        var served = fx.Mem.Queue.Stats.Read().ReadIos;
        Assert.True(served < Requests / 2, $"{served} of {Requests} buffered reads were run for a client that had reset the connection");
        Assert.Equal(0, fx.Server.InFlight);
    }

    [Fact]
    public async Task At_shutdown_the_requests_in_flight_are_answered_before_the_connection_closes()
    {
        // "On a server shutdown, the server SHOULD wait for inflight requests to be serviced prior
        // to initiating a hard disconnect." Reads held 300 ms by the null device's timer mode are
        // in flight when the server is disposed; every one gets its whole reply, then the close.
        await using var devices = new RingDevices(2);
        var slow = devices.Create(new DeviceOptions { Name = "slow0", Size = 16 << 20, MemoryBacked = true, IrqMode = IrqMode.Timer, CompletionNsec = 300_000_000 }, CpuTopology.Simulated(2));
        var server = NbdServer.Start(new NbdDeviceList([slow]), new NbdServerOptions { Listen = new IPEndPoint(IPAddress.Loopback, 0) });
        var (client, _, _) = await RawNbdClient.OpenAsync(server.LocalEndPoint, "slow0", structured: true);
        await using var _ = client;
        await slow.WriteAsync(0, Enumerable.Repeat((byte)0x3c, 65536).ToArray());
        for (var i = 0; i < 8; i++)
        {
            await client.SendRequestAsync(NbdCommand.Read, (ulong)i, (ulong)i * 8192, 8192);
        }

        await Condition.EventuallyAsync(() => server.InFlight == 8, "eight reads in flight");
        var stopping = server.DisposeAsync().AsTask();
        var answered = new HashSet<ulong>();
        for (var i = 0; i < 8; i++)
        {
            var chunk = await client.ReadChunkAsync();
            Assert.Equal(NbdChunkType.OffsetData, chunk.Type);
            Assert.Equal(8 + 8192, chunk.Data.Length);
            Assert.All(chunk.Data.AsSpan(8).ToArray(), b => Assert.Equal(0x3c, b));
            Assert.True(answered.Add(chunk.Cookie));
        }

        Assert.True(await client.ClosedByServerAsync());
        await stopping;
        Assert.Equal(0, server.InFlight);
    }

    [Fact]
    public async Task At_shutdown_with_no_grace_the_connection_closes_at_once_and_the_requests_still_complete()
    {
        await using var devices = new RingDevices(2);
        var slow = devices.Create(new DeviceOptions { Name = "slow0", Size = 16 << 20, MemoryBacked = true, IrqMode = IrqMode.Timer, CompletionNsec = 300_000_000 }, CpuTopology.Simulated(2));
        var server = NbdServer.Start(new NbdDeviceList([slow]), new NbdServerOptions { Listen = new IPEndPoint(IPAddress.Loopback, 0), ShutdownGrace = TimeSpan.Zero });
        var (client, _, _) = await RawNbdClient.OpenAsync(server.LocalEndPoint, "slow0");
        await using var _ = client;
        for (var i = 0; i < 4; i++)
        {
            await client.SendRequestAsync(NbdCommand.Read, (ulong)i, (ulong)i * 4096, 4096);
        }

        await Condition.EventuallyAsync(() => server.InFlight == 4, "four reads in flight");
        await server.DisposeAsync();

        // Returned only once the block layer completed them; their replies were dropped.
        Assert.Equal(0, server.InFlight);
        Assert.True(await client.ClosedByServerAsync());
    }

    [Fact]
    public void A_negative_or_huge_shutdown_grace_is_refused()
    {
        Assert.Throws<ArgumentException>(() => new NbdServerOptions { ShutdownGrace = TimeSpan.FromSeconds(-1) }.Validate());
        Assert.Throws<ArgumentException>(() => new NbdServerOptions { ShutdownGrace = TimeSpan.FromHours(1) }.Validate());
    }
}
