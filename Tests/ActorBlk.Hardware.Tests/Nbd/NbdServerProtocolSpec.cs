using System.Buffers.Binary;
using System.Text;
using ActorBlk.Hardware.Nbd;
using Xunit;

namespace ActorBlk.Hardware.Tests.Nbd;

/// <summary>
/// The NBD server at the byte level: fixed newstyle negotiation (every option the server knows
/// and the refusal of those it does not) and the transmission phase with simple and structured
/// replies, pipelined requests and error mapping.
/// </summary>
public sealed class NbdServerProtocolSpec
{
    [Fact]
    public async Task Greeting_offers_fixed_newstyle_and_no_zeroes()
    {
        await using var fx = NbdExportFixture.Start();
        await using var client = await RawNbdClient.NegotiateAsync(fx.Endpoint);
        Assert.Equal((ushort)(NbdHandshakeFlags.FixedNewstyle | NbdHandshakeFlags.NoZeroes), client.HandshakeFlags);
    }

    [Fact]
    public async Task List_names_every_export_then_acks()
    {
        await using var fx = NbdExportFixture.Start();
        await using var client = await RawNbdClient.NegotiateAsync(fx.Endpoint);
        await client.SendOptionAsync(NbdOption.List, []);
        var names = new List<string>();
        while (true)
        {
            var reply = await client.ReadOptionReplyAsync();
            if (reply.Type == NbdReply.Ack)
            {
                break;
            }

            Assert.Equal(NbdReply.Server, reply.Type);
            var length = (int)BinaryPrimitives.ReadUInt32BigEndian(reply.Data);
            names.Add(Encoding.UTF8.GetString(reply.Data, 4, length));

            // The rest is the export's description, as NBD_INFO_DESCRIPTION has it.
            Assert.Matches($@"^ActorBlk null device {names[^1]}, 512-byte blocks, diskseq \d+@[0-9a-f]{{32}}$", Encoding.UTF8.GetString(reply.Data, 4 + length, reply.Data.Length - 4 - length));
        }

        Assert.Equal(["mem0", "ro0"], names);
    }

    [Fact]
    public async Task Info_reports_size_flags_name_description_and_block_sizes()
    {
        await using var fx = NbdExportFixture.Start();
        await using var client = await RawNbdClient.NegotiateAsync(fx.Endpoint);
        await client.SendOptionAsync(NbdOption.Info, RawNbdClient.InfoRequest("mem0", NbdInfo.Name, NbdInfo.Description, NbdInfo.BlockSize));
        var infos = new Dictionary<NbdInfo, byte[]>();
        while (true)
        {
            var reply = await client.ReadOptionReplyAsync();
            if (reply.Type == NbdReply.Ack)
            {
                break;
            }

            Assert.Equal(NbdReply.Info, reply.Type);
            infos[(NbdInfo)BinaryPrimitives.ReadUInt16BigEndian(reply.Data)] = reply.Data;
        }

        Assert.Equal((ulong)NbdExportFixture.MemSize, BinaryPrimitives.ReadUInt64BigEndian(infos[NbdInfo.Export].AsSpan(2)));
        var flags = (NbdTransmissionFlags)BinaryPrimitives.ReadUInt16BigEndian(infos[NbdInfo.Export].AsSpan(10));
        Assert.Equal(
            NbdTransmissionFlags.HasFlags | NbdTransmissionFlags.SendFlush | NbdTransmissionFlags.SendFua | NbdTransmissionFlags.SendTrim |
            NbdTransmissionFlags.SendWriteZeroes | NbdTransmissionFlags.SendFastZero | NbdTransmissionFlags.CanMultiConn,
            flags);
        Assert.Equal("mem0", Encoding.UTF8.GetString(infos[NbdInfo.Name].AsSpan(2)));
        Assert.Contains("mem0", Encoding.UTF8.GetString(infos[NbdInfo.Description].AsSpan(2)), StringComparison.Ordinal);
        var sizes = infos[NbdInfo.BlockSize];
        Assert.Equal(512u, BinaryPrimitives.ReadUInt32BigEndian(sizes.AsSpan(2)));
        Assert.Equal(4096u, BinaryPrimitives.ReadUInt32BigEndian(sizes.AsSpan(6)));
        Assert.Equal((uint)NbdServerOptions.DefaultMaxPayload, BinaryPrimitives.ReadUInt32BigEndian(sizes.AsSpan(10)));

        // INFO leaves the client in negotiation: another option works.
        await client.SendOptionAsync(NbdOption.Info, RawNbdClient.InfoRequest("ro0"));
        var ro = (NbdTransmissionFlags)0;
        while (true)
        {
            var reply = await client.ReadOptionReplyAsync();
            if (reply.Type == NbdReply.Ack)
            {
                break;
            }

            if (BinaryPrimitives.ReadUInt16BigEndian(reply.Data) == (ushort)NbdInfo.Export)
            {
                ro = (NbdTransmissionFlags)BinaryPrimitives.ReadUInt16BigEndian(reply.Data.AsSpan(10));
            }
        }

        Assert.True(ro.HasFlag(NbdTransmissionFlags.ReadOnly));
        Assert.False(ro.HasFlag(NbdTransmissionFlags.SendTrim));
    }

    [Fact]
    public async Task An_export_whose_device_went_offline_is_refused_at_go_and_info()
    {
        // An outside audit: a re-exported NBD device whose server went away still answered GO, and
        // then every request with ESHUTDOWN, so a reconnecting client looped for ever.
        await using var fx = NbdExportFixture.Start();
        fx.Mem.Queue.SetOffline(failInFlight: true);
        await using var client = await RawNbdClient.NegotiateAsync(fx.Endpoint);
        foreach (var option in new[] { NbdOption.Info, NbdOption.Go })
        {
            await client.SendOptionAsync(option, RawNbdClient.InfoRequest("mem0"));
            var reply = await client.ReadOptionReplyAsync();
            Assert.Equal((option, NbdReply.ErrUnknown), (reply.Option, reply.Type));
            Assert.Contains("offline", System.Text.Encoding.UTF8.GetString(reply.Data), StringComparison.Ordinal);
        }
    }

    [Fact]
    public async Task Unknown_export_unknown_option_and_malformed_options_get_error_replies()
    {
        await using var fx = NbdExportFixture.Start();
        await using var client = await RawNbdClient.NegotiateAsync(fx.Endpoint);
        await client.SendOptionAsync(NbdOption.Go, RawNbdClient.InfoRequest("sdz"));
        Assert.Equal(NbdReply.ErrUnknown, (await client.ReadOptionReplyAsync()).Type);

        await client.SendOptionAsync((NbdOption)77, [1, 2, 3]);
        var unsup = await client.ReadOptionReplyAsync();
        Assert.Equal(((NbdOption)77, NbdReply.ErrUnsupported), (unsup.Option, unsup.Type));

        await client.SendOptionAsync(NbdOption.Go, [0, 0, 0, 9, 1, 2]);
        Assert.Equal(NbdReply.ErrInvalid, (await client.ReadOptionReplyAsync()).Type);

        await client.SendOptionAsync(NbdOption.List, [1]);
        Assert.Equal(NbdReply.ErrInvalid, (await client.ReadOptionReplyAsync()).Type);

        await client.SendOptionAsync(NbdOption.SetMetaContext, RawNbdClient.MetaContextRequest("mem0", NbdProtocol.BaseAllocation));
        Assert.Equal(NbdReply.ErrInvalid, (await client.ReadOptionReplyAsync()).Type); // needs structured replies first

        await client.SendOptionAsync(NbdOption.StartTls, []);
        Assert.Equal(NbdReply.ErrUnsupported, (await client.ReadOptionReplyAsync()).Type); // TLS is off

        // Still negotiating after all of that.
        await client.SendOptionAsync(NbdOption.Abort, []);
        Assert.Equal(NbdReply.Ack, (await client.ReadOptionReplyAsync()).Type);
        Assert.True(await client.ClosedByServerAsync());
    }

    [Fact]
    public async Task An_unknown_name_of_any_allowed_length_gets_a_short_error_and_a_name_that_breaks_the_string_rules_invalid()
    {
        // proto.md: a string "MUST NOT contain NUL characters, SHOULD be no longer than 256 bytes
        // and MUST be no longer than 4096 bytes. This applies to export names and error messages."
        // An outside audit: a 4,096-byte unknown name came back in a 4,114-byte error, and libnbd
        // dropped the connection ("option error string too long") instead of reporting it.
        await using var fx = NbdExportFixture.Start();
        await using var client = await RawNbdClient.NegotiateAsync(fx.Endpoint);
        var longest = new string('a', NbdProtocol.MaxStringLength);
        foreach (var option in new[] { NbdOption.Info, NbdOption.Go })
        {
            await client.SendOptionAsync(option, RawNbdClient.InfoRequest(longest));
            var reply = await client.ReadOptionReplyAsync();
            Assert.Equal((option, NbdReply.ErrUnknown), (reply.Option, reply.Type));
            Assert.InRange(reply.Data.Length, 1, 256);
            Assert.StartsWith("no export named 'aaaa", System.Text.Encoding.UTF8.GetString(reply.Data), StringComparison.Ordinal);
        }

        await client.SendOptionAsync(NbdOption.StructuredReply, []);
        Assert.Equal(NbdReply.Ack, (await client.ReadOptionReplyAsync()).Type);
        await client.SendOptionAsync(NbdOption.ListMetaContext, RawNbdClient.MetaContextRequest(longest, NbdProtocol.BaseAllocation));
        var meta = await client.ReadOptionReplyAsync();
        Assert.Equal(NbdReply.ErrUnknown, meta.Type);
        Assert.InRange(meta.Data.Length, 1, 256);

        // One byte over, and a NUL inside: invalid, saying which rule.
        await client.SendOptionAsync(NbdOption.Go, RawNbdClient.InfoRequest(longest + "a"));
        var over = await client.ReadOptionReplyAsync();
        Assert.Equal(NbdReply.ErrInvalid, over.Type);
        Assert.Contains("over the protocol's 4096", System.Text.Encoding.UTF8.GetString(over.Data), StringComparison.Ordinal);
        await client.SendOptionAsync(NbdOption.Go, RawNbdClient.InfoRequest("mem0\0x"));
        var nul = await client.ReadOptionReplyAsync();
        Assert.Equal(NbdReply.ErrInvalid, nul.Type);
        Assert.DoesNotContain((byte)0, nul.Data);
        await client.SendOptionAsync(NbdOption.Go, [0, 0, 0, 2, 0xff, 0xfe, 0, 0]); // "All strings are UTF-8"
        var notUtf8 = await client.ReadOptionReplyAsync();
        Assert.Equal(NbdReply.ErrInvalid, notUtf8.Type);
        Assert.Contains("not UTF-8", System.Text.Encoding.UTF8.GetString(notUtf8.Data), StringComparison.Ordinal);

        // Still negotiating: the device is there under its real name.
        await client.SendOptionAsync(NbdOption.Info, RawNbdClient.InfoRequest("mem0"));
        Assert.Equal(NbdReply.Info, (await client.ReadOptionReplyAsync()).Type);
    }

    [Fact]
    public void A_name_shown_in_a_message_is_quoted_escaped_and_cut()
    {
        Assert.Equal("'disk0'", NbdProtocol.Shown("disk0"));
        Assert.Equal("'a\\x00b\\x1b'", NbdProtocol.Shown("a\0b\x1b"));
        Assert.Equal("'it\\'s \\\\x00'", NbdProtocol.Shown("it's \\x00")); // not taken for an escape
        Assert.Equal("'a\\u{2028}b\\u{202e}'", NbdProtocol.Shown("a\u2028b\u202e"));
        Assert.Equal("'\U0001F600'", NbdProtocol.Shown("\U0001F600")); // one character, not two halves
        var cut = NbdProtocol.Shown(new string('x', 5000));
        Assert.Equal($"'{new string('x', 64)}'... (5000 characters)", cut);

        // A message is a protocol string however long: cut at a character boundary, no NUL.
        var bytes = NbdProtocol.StringBytes(new string('\u00e9', 3000) + "\0");
        Assert.True(bytes.Length <= NbdProtocol.MaxStringLength);
        Assert.Equal(0, bytes.Length % 2);
        Assert.Equal("\u00e9\u00e9", System.Text.Encoding.UTF8.GetString(bytes[^4..]));
        Assert.Equal("ok?", System.Text.Encoding.UTF8.GetString(NbdProtocol.StringBytes("ok\0")));
    }

    [Fact]
    public async Task Export_name_answers_size_flags_and_the_124_zero_bytes_unless_no_zeroes()
    {
        await using var fx = NbdExportFixture.Start();
        await using (var client = await RawNbdClient.NegotiateAsync(fx.Endpoint, NbdClientFlags.FixedNewstyle))
        {
            await client.SendOptionAsync(NbdOption.ExportName, Encoding.UTF8.GetBytes("ro0"));
            var reply = await client.ReadAsync(10 + 124);
            Assert.Equal(8UL << 20, BinaryPrimitives.ReadUInt64BigEndian(reply));
            Assert.True(((NbdTransmissionFlags)BinaryPrimitives.ReadUInt16BigEndian(reply.AsSpan(8))).HasFlag(NbdTransmissionFlags.ReadOnly));
            Assert.All(reply.Skip(10), b => Assert.Equal(0, b));
            await client.SendRequestAsync(NbdCommand.Read, 5, 0, 512);
            var read = await client.ReadSimpleReplyAsync(_ => 512);
            Assert.Equal((NbdError.None, 5UL), (read.Error, read.Cookie));
        }

        await using (var client = await RawNbdClient.NegotiateAsync(fx.Endpoint))
        {
            // The empty name is the default export, the first device; NO_ZEROES drops the padding.
            await client.SendOptionAsync(NbdOption.ExportName, []);
            var reply = await client.ReadAsync(10);
            Assert.Equal((ulong)NbdExportFixture.MemSize, BinaryPrimitives.ReadUInt64BigEndian(reply));
            await client.SendRequestAsync(NbdCommand.Flush, 6, 0, 0);
            var flushed = await client.ReadSimpleReplyAsync();
            Assert.Equal((NbdError.None, 6UL), (flushed.Error, flushed.Cookie));
        }

        await using (var client = await RawNbdClient.NegotiateAsync(fx.Endpoint))
        {
            // No error reply exists for NBD_OPT_EXPORT_NAME: an unknown name closes the connection.
            await client.SendOptionAsync(NbdOption.ExportName, Encoding.UTF8.GetBytes("sdz"));
            Assert.True(await client.ClosedByServerAsync());
        }
    }

    [Fact]
    public async Task Simple_replies_carry_writes_reads_trims_and_zeroes()
    {
        await using var fx = NbdExportFixture.Start();
        var (client, size, _) = await RawNbdClient.OpenAsync(fx.Endpoint, "mem0");
        await using var _ = client;
        Assert.Equal((ulong)NbdExportFixture.MemSize, size);
        var data = Enumerable.Range(0, 8192).Select(i => (byte)(i * 13 + 1)).ToArray();
        await client.SendRequestAsync(NbdCommand.Write, 1, 4096, 8192, NbdCommandFlags.Fua, data);
        Assert.Equal(NbdError.None, (await client.ReadSimpleReplyAsync()).Error);
        await client.SendRequestAsync(NbdCommand.Read, 2, 4096, 8192);
        var read = await client.ReadSimpleReplyAsync(_ => 8192);
        Assert.Equal(data, read.Data);

        await client.SendRequestAsync(NbdCommand.WriteZeroes, 3, 4096, 4096, NbdCommandFlags.NoHole | NbdCommandFlags.FastZero);
        Assert.Equal(NbdError.None, (await client.ReadSimpleReplyAsync()).Error);
        await client.SendRequestAsync(NbdCommand.Trim, 4, 8192, 4096);
        Assert.Equal(NbdError.None, (await client.ReadSimpleReplyAsync()).Error);
        await client.SendRequestAsync(NbdCommand.Read, 5, 4096, 8192);
        Assert.All((await client.ReadSimpleReplyAsync(_ => 8192)).Data, b => Assert.Equal(0, b));

        // What the NBD client wrote is on the device itself.
        var direct = new byte[512];
        await client.SendRequestAsync(NbdCommand.Write, 6, 0, 512, payload: Enumerable.Repeat((byte)0x5a, 512).ToArray());
        Assert.Equal(NbdError.None, (await client.ReadSimpleReplyAsync()).Error);
        await fx.Mem.ReadAsync(0, direct);
        Assert.All(direct, b => Assert.Equal(0x5a, b));

        await client.SendRequestAsync(NbdCommand.Disconnect, 7, 0, 0);
        Assert.True(await client.ClosedByServerAsync());
    }

    [Fact]
    public async Task Errors_map_to_einval_eperm_and_unknown_commands_get_einval()
    {
        await using var fx = NbdExportFixture.Start();
        var (client, _, _) = await RawNbdClient.OpenAsync(fx.Endpoint, "mem0");
        await using var _ = client;

        // Past the end, misaligned, zero length, unknown command, unknown flag, block status without a context.
        await client.SendRequestAsync(NbdCommand.Read, 1, (ulong)NbdExportFixture.MemSize - 512, 1024);
        await client.SendRequestAsync(NbdCommand.Read, 2, 100, 512);
        await client.SendRequestAsync(NbdCommand.Read, 3, 0, 0);
        await client.SendRequestAsync((NbdCommand)42, 4, 0, 512);
        await client.SendRequestAsync(NbdCommand.Read, 5, 0, 512, (NbdCommandFlags)0x100);
        await client.SendRequestAsync(NbdCommand.BlockStatus, 6, 0, 512);
        await client.SendRequestAsync(NbdCommand.Read, 7, ulong.MaxValue - 10, 512);
        var errors = new Dictionary<ulong, NbdError>();
        for (var i = 0; i < 7; i++)
        {
            var r = await client.ReadSimpleReplyAsync();
            errors[r.Cookie] = r.Error;
        }

        Assert.All(errors.Values, e => Assert.Equal(NbdError.Invalid, e));
        Assert.Equal(7, errors.Count);

        // The connection still serves good requests.
        await client.SendRequestAsync(NbdCommand.Read, 8, 0, 512);
        Assert.Equal(NbdError.None, (await client.ReadSimpleReplyAsync(_ => 512)).Error);

        var (ro, _, _) = await RawNbdClient.OpenAsync(fx.Endpoint, "ro0");
        await using var __ = ro;
        await ro.SendRequestAsync(NbdCommand.Write, 9, 0, 512, payload: new byte[512]);
        Assert.Equal(NbdError.Perm, (await ro.ReadSimpleReplyAsync()).Error);
        await ro.SendRequestAsync(NbdCommand.Trim, 10, 0, 512);
        Assert.Equal(NbdError.Perm, (await ro.ReadSimpleReplyAsync()).Error);
        await ro.SendRequestAsync(NbdCommand.Read, 11, 0, 512);
        Assert.Equal(NbdError.None, (await ro.ReadSimpleReplyAsync(_ => 512)).Error);
    }

    [Fact]
    public async Task Structured_replies_carry_data_errors_and_base_allocation_extents()
    {
        await using var fx = NbdExportFixture.Start();
        var (client, _, flags) = await RawNbdClient.OpenAsync(fx.Endpoint, "mem0", structured: true, allocation: true);
        await using var _ = client;
        Assert.True(flags.HasFlag(NbdTransmissionFlags.SendDf));
        var data = Enumerable.Range(0, 4096).Select(i => (byte)i).ToArray();
        await client.SendRequestAsync(NbdCommand.Write, 1, 1 << 20, 4096, payload: data);
        var done = await client.ReadChunkAsync();
        Assert.Equal((1, NbdChunkType.None, 1UL, 0), (done.Flags, done.Type, done.Cookie, done.Data.Length));

        await client.SendRequestAsync(NbdCommand.Read, 2, 1 << 20, 4096, NbdCommandFlags.DontFragment);
        var chunk = await client.ReadChunkAsync();
        Assert.Equal((1, NbdChunkType.OffsetData, 2UL), (chunk.Flags, chunk.Type, chunk.Cookie));
        Assert.Equal(1UL << 20, BinaryPrimitives.ReadUInt64BigEndian(chunk.Data));
        Assert.Equal(data, chunk.Data[8..]);

        await client.SendRequestAsync(NbdCommand.BlockStatus, 3, 0, 1 << 20);
        var status = await client.ReadChunkAsync();
        Assert.Equal((1, NbdChunkType.BlockStatus, 3UL), (status.Flags, status.Type, status.Cookie));
        Assert.Equal(NbdProtocol.BaseAllocationId, BinaryPrimitives.ReadUInt32BigEndian(status.Data));
        Assert.Equal(1u << 20, BinaryPrimitives.ReadUInt32BigEndian(status.Data.AsSpan(4)));

        await client.SendRequestAsync(NbdCommand.Read, 4, (ulong)NbdExportFixture.MemSize, 4096);
        var error = await client.ReadChunkAsync();
        Assert.Equal((1, NbdChunkType.Error, 4UL), (error.Flags, error.Type, error.Cookie));
        Assert.Equal((uint)NbdError.Invalid, BinaryPrimitives.ReadUInt32BigEndian(error.Data));
    }

    [Fact]
    public async Task Block_status_reports_the_memory_store_allocation_and_trim_and_write_zeroes_make_holes()
    {
        await using var fx = NbdExportFixture.Start();
        var (client, _, _) = await RawNbdClient.OpenAsync(fx.Endpoint, "mem0", structured: true, allocation: true);
        await using var _ = client;
        const uint HoleZero = (uint)(NbdAllocationFlags.Hole | NbdAllocationFlags.Zero);
        var cookie = 1UL;

        async Task<(uint Length, uint Flags)[]> StatusAsync(ulong offset, uint length, NbdCommandFlags flags = NbdCommandFlags.None)
        {
            var id = cookie++;
            await client.SendRequestAsync(NbdCommand.BlockStatus, id, offset, length, flags);
            var chunk = await client.ReadChunkAsync();
            Assert.Equal((1, NbdChunkType.BlockStatus, id), (chunk.Flags, chunk.Type, chunk.Cookie));
            Assert.Equal(NbdProtocol.BaseAllocationId, BinaryPrimitives.ReadUInt32BigEndian(chunk.Data));
            return Enumerable.Range(0, (chunk.Data.Length - 4) / 8)
                .Select(i => (BinaryPrimitives.ReadUInt32BigEndian(chunk.Data.AsSpan(4 + (8 * i))), BinaryPrimitives.ReadUInt32BigEndian(chunk.Data.AsSpan(8 + (8 * i)))))
                .ToArray();
        }

        async Task CommandAsync(NbdCommand command, ulong offset, uint length, byte[]? payload = null)
        {
            var id = cookie++;
            await client.SendRequestAsync(command, id, offset, length, payload: payload);
            var done = await client.ReadChunkAsync();
            Assert.Equal((NbdChunkType.None, id), (done.Type, done.Cookie));
        }

        // Nothing written yet: one hole.
        Assert.Equal([(4u << 20, HoleZero)], await StatusAsync(0, 4 << 20));

        await CommandAsync(NbdCommand.Write, 1 << 20, 4096, new byte[4096]);
        await CommandAsync(NbdCommand.Write, 3 << 20, 8192, Enumerable.Repeat((byte)7, 8192).ToArray());
        Assert.Equal(
            [((1u << 20), HoleZero), (4096u, 0u), ((2u << 20) - 4096, HoleZero), (8192u, 0u), ((1u << 20) - 8192, HoleZero)],
            await StatusAsync(0, 4 << 20));

        // A range that starts inside a page and ends inside the data.
        Assert.Equal([(512u, HoleZero), (2048u, 0u)], await StatusAsync((1 << 20) - 512, 2560));

        // NBD_CMD_FLAG_REQ_ONE: only the first extent.
        Assert.Equal([((1u << 20), HoleZero)], await StatusAsync(0, 4 << 20, NbdCommandFlags.ReqOne));

        // Trim and write-zeroes of whole pages free them.
        await CommandAsync(NbdCommand.Trim, 3 << 20, 4096);
        await CommandAsync(NbdCommand.WriteZeroes, 1 << 20, 4096);
        Assert.Equal([((3u << 20) + 4096, HoleZero), (4096u, 0u), ((1u << 20) - 8192, HoleZero)], await StatusAsync(0, 4 << 20));

        // A read-only export that is not memory-backed would answer data; the null store's size is
        // bounded, so the end of the device is reachable.
        Assert.Equal([(4096u, HoleZero)], await StatusAsync((ulong)NbdExportFixture.MemSize - 4096, 4096));
    }

    [Fact]
    public async Task Pipelined_requests_all_complete_and_every_cookie_is_answered_once()
    {
        await using var fx = NbdExportFixture.Start(queueDepth: 16);
        var (client, _, _) = await RawNbdClient.OpenAsync(fx.Endpoint, "mem0");
        await using var _ = client;
        const int Count = 512;
        for (var i = 0; i < Count; i++)
        {
            var payload = Enumerable.Repeat((byte)(i & 0xff), 4096).ToArray();
            await client.SendRequestAsync(NbdCommand.Write, (ulong)i, (ulong)i * 4096, 4096, payload: payload);
        }

        var seen = new HashSet<ulong>();
        for (var i = 0; i < Count; i++)
        {
            var r = await client.ReadSimpleReplyAsync();
            Assert.Equal(NbdError.None, r.Error);
            Assert.True(seen.Add(r.Cookie));
        }

        for (var i = 0; i < Count; i++)
        {
            await client.SendRequestAsync(NbdCommand.Read, (ulong)(Count + i), (ulong)i * 4096, 4096);
        }

        for (var i = 0; i < Count; i++)
        {
            var r = await client.ReadSimpleReplyAsync(_ => 4096);
            var index = (int)r.Cookie - Count;
            Assert.All(r.Data, b => Assert.Equal((byte)(index & 0xff), b));
        }

        await Condition.EventuallyAsync(() => fx.Mem.Queue.InFlightCount == 0, "every tag is free again");
    }

    [Fact]
    public async Task Bursts_larger_than_the_server_buffers_get_every_byte_back()
    {
        // Each burst is one client write. The writes (96 of 4 KiB, then one of 1 MiB) overrun the
        // server's 256 KiB input buffer, so payloads straddle its refills and the big one is
        // received straight into its slot. The reads come back in replies batched into one send
        // per round, and the 1 MiB read is larger than the reply buffer, so its payload follows
        // the batch. Every cookie is answered once with its own bytes, in both reply formats.
        await using var fx = NbdExportFixture.Start();
        const int Small = 96;
        const int Big = 1 << 20;
        const ulong BigOffset = 8 << 20;
        byte[] Pattern(int length, int seed) => Enumerable.Range(0, length).Select(i => (byte)((i * 7) + (seed * 13) + (i >> 12))).ToArray();

        var (client, _, _) = await RawNbdClient.OpenAsync(fx.Endpoint, "mem0");
        await using (client)
        {
            var writes = new List<byte>();
            for (var i = 0; i < Small; i++)
            {
                writes.AddRange(Request(NbdCommand.Write, (ulong)i, (ulong)i * 4096, 4096, Pattern(4096, i)));
            }

            writes.AddRange(Request(NbdCommand.Write, Small, BigOffset, Big, Pattern(Big, Small)));
            await client.WriteAsync([.. writes]);
            var answered = new HashSet<ulong>();
            for (var i = 0; i <= Small; i++)
            {
                var r = await client.ReadSimpleReplyAsync();
                Assert.Equal(NbdError.None, r.Error);
                Assert.True(answered.Add(r.Cookie), $"cookie {r.Cookie} answered twice");
            }

            var reads = new List<byte>();
            for (var i = 0; i < Small; i++)
            {
                reads.AddRange(Request(NbdCommand.Read, 1000 + (ulong)i, (ulong)i * 4096, 4096));
            }

            reads.AddRange(Request(NbdCommand.Read, 2000, BigOffset, Big));
            await client.WriteAsync([.. reads]);
            answered.Clear();
            for (var i = 0; i <= Small; i++)
            {
                var r = await client.ReadSimpleReplyAsync(cookie => cookie == 2000 ? Big : 4096);
                Assert.Equal(NbdError.None, r.Error);
                Assert.True(answered.Add(r.Cookie), $"cookie {r.Cookie} answered twice");
                Assert.Equal(r.Cookie == 2000 ? Pattern(Big, Small) : Pattern(4096, (int)r.Cookie - 1000), r.Data);
            }
        }

        var (structured, _, _) = await RawNbdClient.OpenAsync(fx.Endpoint, "mem0", structured: true);
        await using (structured)
        {
            await structured.WriteAsync([.. Request(NbdCommand.Read, 7, 4096, 4096), .. Request(NbdCommand.Read, 8, BigOffset, Big)]);
            for (var i = 0; i < 2; i++)
            {
                var chunk = await structured.ReadChunkAsync();
                Assert.Equal(NbdChunkType.OffsetData, chunk.Type);
                var expected = chunk.Cookie == 8 ? Pattern(Big, Small) : Pattern(4096, 1);
                Assert.Equal(chunk.Cookie == 8 ? BigOffset : 4096UL, BinaryPrimitives.ReadUInt64BigEndian(chunk.Data));
                Assert.Equal(expected, chunk.Data[8..]);
            }
        }

        await Condition.EventuallyAsync(() => fx.Mem.Queue.InFlightCount == 0, "every tag is free again");
    }

    [Fact]
    public async Task A_client_that_reads_its_replies_late_gets_them_all_once_it_reads()
    {
        // 400 reads of 64 KiB are 25 MiB of replies, more than the sockets buffer: the server's
        // sends find the socket full, finish from a thread that waits for room, and the reader
        // waits for slots meanwhile. Nothing is lost or doubled once the client reads.
        await using var fx = NbdExportFixture.Start();
        var (client, _, _) = await RawNbdClient.OpenAsync(fx.Endpoint, "mem0");
        await using var _ = client;
        const int Count = 400;
        const int Length = 64 << 10;
        await client.WriteAsync([.. Enumerable.Range(0, Count).SelectMany(i => Request(NbdCommand.Read, (ulong)i, (ulong)i * Length % (32 << 20), Length))]);
        var answered = new HashSet<ulong>();
        for (var i = 0; i < Count; i++)
        {
            var r = await client.ReadSimpleReplyAsync(_ => Length);
            Assert.Equal(NbdError.None, r.Error);
            Assert.True(answered.Add(r.Cookie), $"cookie {r.Cookie} answered twice");
        }

        Assert.Equal(Count, answered.Count);
        await Condition.EventuallyAsync(() => fx.Mem.Queue.InFlightCount == 0, "every tag is free again");
    }

    private static byte[] Request(NbdCommand command, ulong cookie, ulong offset, uint length, byte[]? payload = null)
    {
        var bytes = new byte[28 + (payload?.Length ?? 0)];
        BinaryPrimitives.WriteUInt32BigEndian(bytes, NbdProtocol.RequestMagic);
        BinaryPrimitives.WriteUInt16BigEndian(bytes.AsSpan(6), (ushort)command);
        BinaryPrimitives.WriteUInt64BigEndian(bytes.AsSpan(8), cookie);
        BinaryPrimitives.WriteUInt64BigEndian(bytes.AsSpan(16), offset);
        BinaryPrimitives.WriteUInt32BigEndian(bytes.AsSpan(24), length);
        payload?.CopyTo(bytes, 28);
        return bytes;
    }
}
