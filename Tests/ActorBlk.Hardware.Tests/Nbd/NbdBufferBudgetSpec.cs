using System.Buffers.Binary;
using ActorBlk.Hardware.Nbd;
using ActorBlk.Testing;
using Xunit;

namespace ActorBlk.Hardware.Tests.Nbd;

/// <summary>
/// The NBD server's payload memory over all connections (<see cref="NbdServerOptions.MaxBufferMemory"/>)
/// and the send timeout that frees what a client that stopped reading held
/// (<see cref="NbdServerOptions.StallTimeout"/>).
/// </summary>
public sealed class NbdBufferBudgetSpec
{
    private const long MiB = 1 << 20;

    // The stall timeout of the specs whose clients stop or trickle. Each spec must see a state
    // that lasts only until the server closes the stalled client (a reader waiting for memory, a
    // payload buffer taken), and a trickler's next byte must come within it; a test thread on a
    // loaded 2-core machine can be held off the CPU for seconds, so it is far above the pacing.
    private static readonly TimeSpan Stall = TimeSpan.FromSeconds(10);

    [Fact]
    public async Task Takes_that_fit_go_at_once_and_the_rest_wait_first_come_first_served()
    {
        var budget = new NbdBufferBudget(4 * MiB);
        Assert.True(budget.TakeAsync(3 * MiB, default).IsCompletedSuccessfully);
        var large = budget.TakeAsync(2 * MiB, default).AsTask();
        var small = budget.TakeAsync(MiB / 2, default).AsTask();

        // The small take would fit beside the 3 MiB, but the large one came first.
        Assert.False(large.IsCompleted);
        Assert.False(small.IsCompleted);
        Assert.Equal(2, budget.Waiting);
        Assert.Equal(2, budget.Waits);

        budget.Return(3 * MiB);
        await large.WaitAsync(Condition.Timeout);
        await small.WaitAsync(Condition.Timeout);
        Assert.Equal((2 * MiB) + (MiB / 2), budget.InUse);
        Assert.Equal(0, budget.Waiting);
    }

    [Fact]
    public async Task A_cancelled_taker_takes_nothing_and_lets_the_next_one_through()
    {
        var budget = new NbdBufferBudget(4 * MiB);
        Assert.True(budget.TakeAsync(3 * MiB, default).IsCompletedSuccessfully);
        using var cancel = new CancellationTokenSource();
        var large = budget.TakeAsync(4 * MiB, cancel.Token).AsTask();
        var small = budget.TakeAsync(MiB, default).AsTask();
        Assert.False(small.IsCompleted);

        await cancel.CancelAsync();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => large);
        await small.WaitAsync(Condition.Timeout);
        Assert.Equal(4 * MiB, budget.InUse);
    }

    [Fact]
    public void With_nothing_in_use_any_take_goes_at_once()
    {
        // A lone request never waits for itself, whatever its size.
        var budget = new NbdBufferBudget(8 << 10);
        Assert.True(budget.TakeAsync(64 << 10, default).IsCompletedSuccessfully);
        Assert.Equal(64 << 10, budget.InUse);
    }

    [Fact]
    public void Idle_slots_keep_buffers_only_within_a_quarter_of_the_capacity_and_never_while_a_taker_waits()
    {
        var budget = new NbdBufferBudget(4 * MiB);
        Assert.Equal(MiB, budget.KeepCapacity);
        Assert.True(budget.TakeAsync(3 * MiB, default).IsCompletedSuccessfully);

        Assert.True(budget.TryKeep(MiB / 2));
        Assert.True(budget.TryKeep(MiB / 2));
        Assert.False(budget.TryKeep(MiB / 2)); // a full megabyte is kept: this one is freed
        budget.Return(MiB / 2);
        Assert.Equal(MiB, budget.Kept);
        Assert.Equal(MiB + (MiB / 2), budget.InUse);

        // A kept buffer reused by a request counts as in use again; one freed at close leaves the count.
        budget.Unkeep(MiB / 2);
        Assert.Equal(MiB / 2, budget.Kept);
        Assert.Equal(2 * MiB, budget.InUse);
        budget.DropKept(MiB / 2);
        Assert.Equal(0, budget.Kept);

        // With a taker waiting, a finished buffer is freed so that its memory goes to the taker.
        var waiting = budget.TakeAsync(3 * MiB, default);
        Assert.False(waiting.IsCompleted);
        Assert.False(budget.TryKeep(MiB / 2));
    }

    [Fact]
    public async Task A_client_that_stops_reading_holds_at_most_the_budget_and_is_closed_after_the_send_timeout()
    {
        // Client A pipelines 64 reads of 1 MiB and never reads a reply. Before the budget the
        // server allocated a buffer for each of them (up to max-in-flight x max-payload per
        // connection, 4 GiB with the defaults) and kept them as long as the client lived. Now the
        // server's requests hold at most max-buffer-memory: A's reader waits for memory, and so
        // does client B's read behind it. After the send timeout with no reply byte taken, A is
        // closed, its memory is given back, and B is served.
        var options = new NbdServerOptions { MaxPayload = (int)MiB, MaxBufferMemory = 4 * MiB, StallTimeout = Stall, MaxInFlight = 64 };
        await using var fx = NbdExportFixture.Start(options);
        var pattern = Enumerable.Range(0, (int)MiB).Select(i => (byte)(i * 7)).ToArray();
        await fx.Mem.WriteAsync(8 * MiB, pattern);

        var a = (await RawNbdClient.OpenAsync(fx.Endpoint, "mem0", receiveBuffer: 4096)).Client;
        await using var _ = a;
        await a.WriteAsync(ReadBurst());
        await Condition.EventuallyAsync(() => fx.Server.Budget.Waiting >= 1, "client A's reader waits for memory");
        var bound = options.MaxBufferMemory + fx.Server.Budget.KeepCapacity;
        Assert.InRange(fx.Server.BufferBytesInUse, 0, bound);

        var (b, _, _) = await RawNbdClient.OpenAsync(fx.Endpoint, "mem0");
        await using var __ = b;
        await b.SendRequestAsync(NbdCommand.Read, 7, (ulong)(8 * MiB), (uint)MiB);
        var reply = b.ReadSimpleReplyAsync(_ => (int)MiB);

        await Condition.EventuallyAsync(() => fx.Server.ConnectionCount == 1, "client A, which read no reply, is closed");
        var (error, cookie, data) = await reply;
        Assert.Equal(NbdError.None, error);
        Assert.Equal(7ul, cookie);
        Assert.Equal(pattern, data);
        Assert.True(fx.Server.BufferWaits >= 1);

        await Condition.EventuallyAsync(() => fx.Server.InFlight == 0 && fx.Server.BufferBytesInUse == 0, "every request's memory is given back");
        Assert.InRange(fx.Server.BufferBytesKept, 0, fx.Server.Budget.KeepCapacity);
        await Condition.EventuallyAsync(() => fx.Mem.Queue.InFlightCount == 0, "every tag is free again");
        // Closed as stalled, or (when the client's kernel still takes a few bytes now and then)
        // as too slow at its deadline: the stall timeout plus 1 MiB at min-transfer-rate.
        lock (fx.Log)
        {
            Assert.Contains(fx.Log, line => line.Contains($"took no reply bytes for {Stall.TotalSeconds} s", StringComparison.Ordinal)
                                            || line.Contains("took a reply of", StringComparison.Ordinal));
        }
    }

    [Theory]
    [InlineData(NbdCommand.Write, false)]
    [InlineData(NbdCommand.Write, true)]
    [InlineData(NbdCommand.Read, false)]
    [InlineData(NbdCommand.Read, true)]
    public async Task A_client_that_hangs_up_while_its_request_waits_for_memory_is_let_go_at_once(NbdCommand command, bool reset)
    {
        // An outside audit: clients that pipelined 32 MiB reads and read no reply held the whole
        // budget; clients behind them that sent a write, gave up and closed stayed in CLOSE-WAIT,
        // each holding one of max-connections until the budget came back (up to the stall
        // timeout plus the transfer at min-transfer-rate, minutes), and a client opening such
        // connections one after another filled all 1,024 and locked everyone out. The waiting
        // connection now watches its client: a hang-up (a FIN with no NBD_CMD_DISC before it, or
        // a reset) lets it go at once, its request dropped unexecuted, long before the holder's
        // stall timeout.
        await using var fx = NbdExportFixture.Start(new NbdServerOptions { MaxPayload = (int)MiB, MaxBufferMemory = MiB, StallTimeout = TimeSpan.FromMinutes(5), MaxInFlight = 64 });
        await using var holder = await HoldTheBudgetAsync(fx);

        // A whole 64 KiB write (its payload in the server's socket queue, the FIN behind it), or a read.
        var (quitter, _, _) = await RawNbdClient.OpenAsync(fx.Endpoint, "mem0");
        await using var __ = quitter;
        await quitter.SendRequestAsync(command, 1, 40 * MiB, 64 << 10, payload: command == NbdCommand.Write ? new byte[64 << 10] : null);
        await Condition.EventuallyAsync(() => fx.Server.Budget.Waiting == 2, "the second client's request waits for memory behind the holder", () => State(fx));
        if (reset)
        {
            quitter.Vanish();
        }
        else
        {
            await quitter.DisposeAsync();
        }

        await Condition.EventuallyAsync(() => fx.Server.ConnectionCount == 2 && fx.Server.Budget.Waiting == 1, "the connection of the client that hung up is gone, the holder's are still there", () => State(fx));
        Assert.Equal(1, fx.Server.HungUpWhileWaiting);

        // Once the memory comes back nothing of the client that hung up runs: its write was dropped.
        holder.Vanish();
        await Condition.EventuallyAsync(() => fx.Server.ConnectionCount == 0 && fx.Server.InFlight == 0 && fx.Server.BufferBytesInUse == 0, "the holder is gone and its memory given back");
        Assert.Equal(0ul, fx.Mem.Queue.Stats.Read().WriteIos);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task A_client_that_sends_a_disconnect_and_shuts_its_writes_down_while_a_request_waits_for_memory_gets_its_reply(bool tls)
    {
        // libnbd sends NBD_CMD_DISC and then shuts its writes down while it reads the replies;
        // after NBD_CMD_DISC the server "MUST handle all outstanding requests" (a review of the
        // hang-up check above, which took that FIN for a hard disconnect): the FIN after a
        // disconnect is not a hang-up, and the write waiting for memory runs once it comes. Over
        // TLS too, where the input cannot be read ahead: libnbd sends its FIN after close_notify
        // (a verifying helper lost every write of an nbds:// client that way).
        using var certs = new TestCertificates();
        await using var fx = NbdExportFixture.Start(new NbdServerOptions { MaxPayload = (int)MiB, MaxBufferMemory = MiB, StallTimeout = TimeSpan.FromMinutes(5), MaxInFlight = 64, Tls = NbdTlsMode.On, Certificate = certs.Server });
        await using var holder = await HoldTheBudgetAsync(fx);

        var (polite, _, _) = await RawNbdClient.OpenAsync(fx.Endpoint, "mem0", tls: tls);
        await using var __ = polite;
        var data = Enumerable.Range(0, 64 << 10).Select(i => (byte)(i * 13)).ToArray();
        await polite.SendRequestAsync(NbdCommand.Write, 1, 40 * MiB, (uint)data.Length, payload: data);
        await polite.SendRequestAsync(NbdCommand.Disconnect, 2, 0, 0);
        polite.ShutdownSend();
        await Condition.EventuallyAsync(() => fx.Server.Budget.Waiting == 2, "the write waits for memory behind the holder", () => State(fx));
        var checks = Interlocked.Read(ref fx.Server.HangUpChecks);
        await Condition.EventuallyAsync(() => Interlocked.Read(ref fx.Server.HangUpChecks) >= checks + 8, "the waiting connections were checked for a hang-up, four times each");
        Assert.Equal((3, 0L), (fx.Server.ConnectionCount, fx.Server.HungUpWhileWaiting));

        // After the FIN the input is final: the disconnect before it is looked for once, not at
        // every check (plain TCP; over TLS the input is never read ahead).
        Assert.Equal(tls ? 0L : 1L, Interlocked.Read(ref fx.Server.DisconnectPeeks));

        holder.Vanish();
        var (error, cookie, _) = await polite.ReadSimpleReplyAsync();
        Assert.Equal((NbdError.None, 1UL), (error, cookie));
        Assert.True(await polite.ClosedByServerAsync());
        var back = new byte[data.Length];
        await fx.Mem.ReadAsync(40 * MiB, back);
        Assert.Equal(data, back);
    }

    [Theory]
    [InlineData(new byte[0], 0L, false)]
    [InlineData(new byte[] { 0x25, 0x60, 0x95, 0x13, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0 }, 0L, true)]
    [InlineData(new byte[] { 0x25, 0x60, 0x95, 0x13, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0 }, 1L, false)]
    [InlineData(new byte[] { 0x25, 0x60, 0x95, 0x13, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0xee, 0xee, 0x25, 0x60, 0x95, 0x13, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0 }, 0L, true)]
    [InlineData(new byte[] { 0x25, 0x60, 0x95, 0x13, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 40, 0xee, 0xee, 0x25, 0x60, 0x95, 0x13, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0 }, 0L, false)]
    public void A_disconnect_is_found_in_the_input_by_walking_headers_and_write_payloads(byte[] input, long skip, bool found) =>
        // A DISC alone; the same shifted by one byte of payload still to skip (framing lost); a
        // 2-byte write then a DISC; a 40-byte write whose payload swallows the DISC's bytes.
        Assert.Equal(found, NbdProtocol.HoldsDisconnect(input, skip));

    // The headers of 64 reads of 1 MiB over the first 32 MiB, cookies 0 to 63.
    private static byte[] ReadBurst()
    {
        var burst = new byte[64 * 28];
        for (var i = 0; i < 64; i++)
        {
            var h = burst.AsSpan(i * 28, 28);
            BinaryPrimitives.WriteUInt32BigEndian(h, NbdProtocol.RequestMagic);
            BinaryPrimitives.WriteUInt16BigEndian(h[6..], (ushort)NbdCommand.Read);
            BinaryPrimitives.WriteUInt64BigEndian(h[8..], (ulong)i);
            BinaryPrimitives.WriteUInt64BigEndian(h[16..], (ulong)(i % 32) * (ulong)MiB);
            BinaryPrimitives.WriteUInt32BigEndian(h[24..], (uint)MiB);
        }

        return burst;
    }

    // Holds the whole budget (max-buffer-memory = max-payload = 1 MiB) so that nothing gives
    // memory back until the holder vanishes: a 1 MiB write's header and half its payload, then
    // nothing, whose buffer stays taken until the stall timeout (minutes) closes the connection;
    // and on a second connection a 1 MiB read, whose reader waits for memory. A request sent
    // after is sure to wait behind it. (The holder was a client that pipelined 1 MiB reads and
    // read no reply, awaited until its reader waited for memory. But that was not yet the end of
    // it: the kernel's send buffer, autotuned on loopback, still took replies after that was first
    // seen; a reply that finished while the reader held no place in the queue left memory free,
    // and the next spec request took it and ran instead of waiting, now and then.)
    private static async Task<BudgetHolder> HoldTheBudgetAsync(NbdExportFixture fx)
    {
        Assert.Equal(MiB, fx.Server.Budget.Capacity);
        var writer = (await RawNbdClient.OpenAsync(fx.Endpoint, "mem0")).Client;
        await writer.SendRequestAsync(NbdCommand.Write, 0, 0, (uint)MiB, payload: new byte[MiB / 2]);
        await Condition.EventuallyAsync(() => fx.Server.BufferBytesInUse == MiB, "the holder's write takes the whole budget", () => State(fx));
        var reader = (await RawNbdClient.OpenAsync(fx.Endpoint, "mem0")).Client;
        await reader.SendRequestAsync(NbdCommand.Read, 0, 0, (uint)MiB);
        await Condition.EventuallyAsync(() => fx.Server.Budget.Waiting == 1, "the holder's reader waits for memory", () => State(fx));
        return new BudgetHolder(writer, reader);
    }

    private static string State(NbdExportFixture fx) =>
        $"(waiting {fx.Server.Budget.Waiting}, in use {fx.Server.BufferBytesInUse}, kept {fx.Server.BufferBytesKept}, in flight {fx.Server.InFlight}, "
        + $"connections {fx.Server.ConnectionCount}, waits {fx.Server.BufferWaits}, hung up while waiting {fx.Server.HungUpWhileWaiting}, mem0 writes {fx.Mem.Queue.Stats.Read().WriteIos})";

    /// <summary>The two clients of <see cref="HoldTheBudgetAsync"/>.</summary>
    private sealed class BudgetHolder(RawNbdClient writer, RawNbdClient reader) : IAsyncDisposable
    {
        public void Vanish()
        {
            writer.Vanish();
            reader.Vanish();
        }

        public async ValueTask DisposeAsync()
        {
            await writer.DisposeAsync();
            await reader.DisposeAsync();
        }
    }

    [Fact]
    public async Task A_client_that_stops_inside_a_write_payload_is_closed_after_the_stall_timeout_and_its_memory_given_back()
    {
        // Half of a 1 MiB write's payload, then nothing: the slot's buffer holds a quarter of the
        // budget meanwhile. Between requests a client may idle for ever; inside a payload it may not.
        await using var fx = NbdExportFixture.Start(new NbdServerOptions { MaxPayload = (int)MiB, MaxBufferMemory = 4 * MiB, StallTimeout = Stall });
        var (idle, _, _) = await RawNbdClient.OpenAsync(fx.Endpoint, "mem0");
        await using var _ = idle;
        var (client, _, _) = await RawNbdClient.OpenAsync(fx.Endpoint, "mem0");
        await using var __ = client;
        await client.SendRequestAsync(NbdCommand.Write, 1, 0, (uint)MiB, payload: new byte[MiB / 2]);
        await Condition.EventuallyAsync(() => fx.Server.BufferBytesInUse >= MiB, "the write's buffer is taken");

        Assert.True(await client.ClosedByServerAsync());
        await Condition.EventuallyAsync(() => fx.Server.ConnectionCount == 1 && fx.Server.BufferBytesInUse == 0, "the stalled connection is gone and its buffer given back");
        Assert.Equal(0ul, fx.Mem.Queue.Stats.Read().WriteIos);
        lock (fx.Log)
        {
            Assert.Contains(fx.Log, line => line.Contains("sent no bytes of a write's payload", StringComparison.Ordinal));
        }

        // The client that idles between requests is still served.
        await idle.SendRequestAsync(NbdCommand.Read, 2, 0, 4096);
        Assert.Equal(NbdError.None, (await idle.ReadSimpleReplyAsync(_ => 4096)).Error);
    }

    [Fact]
    public async Task A_client_that_trickles_a_write_payload_is_closed_at_its_deadline_and_the_others_are_served()
    {
        // An outside audit: two clients each sent a 1 MiB write's header and then a payload byte
        // every 2 s, never stalling for the whole stall-timeout; they held the 2 MiB budget, and a
        // third client's 4 KiB read got no reply. A payload of N bytes must now end within the
        // stall timeout plus N at min-transfer-rate: here 10 s + 1 MiB at 1 MiB/s = 11 s.
        await using var fx = NbdExportFixture.Start(new NbdServerOptions
        {
            MaxPayload = (int)MiB, MaxBufferMemory = 2 * MiB, StallTimeout = Stall, MinTransferRate = MiB,
        });
        var tricklers = new List<RawNbdClient>();
        for (var i = 0; i < 2; i++)
        {
            var (client, _, _) = await RawNbdClient.OpenAsync(fx.Endpoint, "mem0");
            tricklers.Add(client);
            await client.SendRequestAsync(NbdCommand.Write, (ulong)i, 0, (uint)MiB);
        }

        await Condition.EventuallyAsync(() => fx.Server.BufferBytesInUse >= 2 * MiB, "both writes' buffers are taken");
        var (victim, _, _) = await RawNbdClient.OpenAsync(fx.Endpoint, "mem0");
        await using var _ = victim;
        await victim.SendRequestAsync(NbdCommand.Read, 9, 0, 4096);
        var reply = victim.ReadSimpleReplyAsync(_ => 4096);

        // A byte from each every half second (pacing, not waiting) until the server closes them.
        var open = tricklers.ToList();
        for (var tick = 0; open.Count > 0 && tick < 120; tick++)
        {
            foreach (var t in open.ToList())
            {
                try
                {
                    await t.WriteAsync([0x5a]);
                }
                catch (IOException)
                {
                    open.Remove(t);
                }
            }

            await Task.WhenAny(reply, Task.Delay(500));
            if (reply.IsCompleted)
            {
                break;
            }
        }

        Assert.Equal(NbdError.None, (await reply.WaitAsync(Condition.Timeout)).Error);
        foreach (var t in tricklers)
        {
            Assert.True(await t.ClosedByServerAsync());
            await t.DisposeAsync();
        }

        lock (fx.Log)
        {
            Assert.Contains(fx.Log, line => line.Contains("sent a write's payload of 1048576 bytes too slowly", StringComparison.Ordinal));
        }

        Assert.Equal(0ul, fx.Mem.Queue.Stats.Read().WriteIos);
    }

    [Fact]
    public void Options_out_of_range_are_refused_with_the_key_named()
    {
        var low = Assert.Throws<ArgumentException>(() => new NbdServerOptions { MaxPayload = 1 << 20, MaxBufferMemory = 512 << 10 }.Validate());
        Assert.Contains("max-buffer-memory", low.Message, StringComparison.Ordinal);
        var zero = Assert.Throws<ArgumentException>(() => new NbdServerOptions { StallTimeout = TimeSpan.Zero }.Validate());
        Assert.Contains("stall-timeout", zero.Message, StringComparison.Ordinal);
        Assert.Throws<ArgumentException>(() => new NbdServerOptions { StallTimeout = TimeSpan.FromHours(2) }.Validate());
        new NbdServerOptions().Validate();
        Assert.Equal(1L << 30, new NbdServerOptions().MaxBufferMemory);
        Assert.Equal(TimeSpan.FromSeconds(60), new NbdServerOptions().StallTimeout);
        Assert.Equal(256 << 10, new NbdServerOptions().MinTransferRate);
        Assert.Contains("min-transfer-rate", Assert.Throws<ArgumentException>(() => new NbdServerOptions { MinTransferRate = -1 }.Validate()).Message, StringComparison.Ordinal);

        // 32 MiB at 256 KiB/s after a 60 s stall timeout: 188 s; off with 0.
        Assert.Equal(1000 + 60_000 + 128_000, new NbdServerOptions().TransferDeadline(1000, 32 << 20));
        Assert.Equal(long.MaxValue, new NbdServerOptions { MinTransferRate = 0 }.TransferDeadline(1000, 32 << 20));
    }
}
