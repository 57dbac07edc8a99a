using System.Buffers.Binary;
using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using ActorBlk.Hardware.Nbd;

namespace ActorBlk.Testing;

/// <summary>What a <see cref="FakeNbdServer"/> negotiates on one connection.</summary>
/// <param name="Size">The export size (NBD_INFO_EXPORT).</param>
/// <param name="Flags">The transmission flags (NBD_FLAG_HAS_FLAGS is added).</param>
/// <param name="MinimumBlock">NBD_INFO_BLOCK_SIZE minimum.</param>
/// <param name="PreferredBlock">NBD_INFO_BLOCK_SIZE preferred.</param>
/// <param name="MaximumPayload">NBD_INFO_BLOCK_SIZE maximum.</param>
public sealed record FakeNbdExport(ulong Size, NbdTransmissionFlags Flags, uint MinimumBlock = 1, uint PreferredBlock = 4096, uint MaximumPayload = 32 << 20)
{
    /// <summary>
    /// When set, the NBD_REP_INFO payloads sent in answer to NBD_OPT_GO instead of the well-formed
    /// ones (for malformed replies).
    /// </summary>
    public IReadOnlyList<byte[]>? RawInfos { get; init; }

    /// <summary>When set, an NBD_INFO_DESCRIPTION with this text follows the well-formed payloads.</summary>
    public string? Description { get; init; }

    /// <summary>
    /// NBD_OPT_STRUCTURED_REPLY is acknowledged (otherwise it is unsupported, as every other
    /// option but NBD_OPT_GO): the script then answers with chunks (<see cref="FakeNbdSession.ChunkAsync"/>).
    /// </summary>
    public bool Structured { get; init; }

    /// <summary>
    /// With <see cref="Structured"/>: NBD_OPT_SET_META_CONTEXT is answered with
    /// <c>base:allocation</c> under this context id, then acknowledged (null: acknowledged with no context).
    /// </summary>
    public uint? AllocationContext { get; init; }

    /// <summary>A writable 16 MiB export with flush, FUA, trim and write-zeroes.</summary>
    public static FakeNbdExport Default { get; } = new(16 << 20,
        NbdTransmissionFlags.SendFlush | NbdTransmissionFlags.SendFua | NbdTransmissionFlags.SendTrim | NbdTransmissionFlags.SendWriteZeroes);
}

/// <summary>One request a <see cref="FakeNbdServer"/> received.</summary>
/// <param name="Flags">Command flags.</param>
/// <param name="Command">The command.</param>
/// <param name="Cookie">The cookie to answer with.</param>
/// <param name="Offset">Offset.</param>
/// <param name="Length">Length.</param>
public sealed record FakeNbdRequest(NbdCommandFlags Flags, NbdCommand Command, ulong Cookie, ulong Offset, uint Length);

/// <summary>
/// A scripted NBD server for client specs: fixed newstyle, NBD_OPT_GO (anything else is
/// unsupported), simple replies; or, for an export that says so, structured replies and the
/// base:allocation context too. Each accepted connection negotiates the export its index picks and
/// then runs the spec's script, which reads requests and answers (or misbehaves) as it likes.
/// </summary>
public sealed class FakeNbdServer : IAsyncDisposable
{
    private readonly TcpListener _listener;
    private readonly Func<int, FakeNbdExport> _export;
    private readonly Func<FakeNbdSession, Task> _script;
    private readonly CancellationTokenSource _stop = new();
    private readonly ConcurrentBag<Task> _sessions = [];
    private readonly ConcurrentBag<TcpClient> _clients = [];
    private readonly Task _accept;
    private int _accepted;

    /// <summary>Listens on 127.0.0.1 with a free port.</summary>
    /// <param name="export">The export negotiated on connection <c>i</c> (0 first).</param>
    /// <param name="script">Runs on each connection after negotiation.</param>
    public FakeNbdServer(Func<int, FakeNbdExport> export, Func<FakeNbdSession, Task> script)
    {
        _export = export;
        _script = script;
        _listener = new TcpListener(IPAddress.Loopback, 0);
        _listener.Start();
        _accept = Task.Run(AcceptAsync);
    }

    /// <summary>The port listened on.</summary>
    public int Port => ((IPEndPoint)_listener.LocalEndpoint).Port;

    /// <summary>
    /// When it returns true for connection <c>i</c>, that connection is accepted and never
    /// greeted (a server frozen after its accept): the client waits in its negotiation.
    /// </summary>
    public Func<int, bool>? Mute { get; init; }

    /// <summary>
    /// When set, runs in place of the negotiation on each connection (its index and stream): a
    /// hostile server's own handshake, well-formed up to the point it chooses. The transmission
    /// script does not run after it; the connection closes when it returns.
    /// </summary>
    public Func<int, Stream, Task>? Handshake { get; init; }

    /// <summary>
    /// When set, connection <c>i</c> is greeted only once the task it returns for <c>i</c> completes
    /// (a server frozen after its accept, then resumed): the client waits in its negotiation.
    /// </summary>
    public Func<int, Task>? Greeting { get; init; }

    /// <summary>Connections accepted so far.</summary>
    public int Accepted => Volatile.Read(ref _accepted);

    /// <summary>Exceptions the scripts threw (a spec asserts this is empty).</summary>
    public ConcurrentQueue<Exception> Faults { get; } = new();

    /// <summary>An nbd:// URI of the export.</summary>
    public string Uri(string export = "fake") => $"nbd://127.0.0.1:{Port}/{export}";

    /// <inheritdoc />
    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync();
        _listener.Stop();
        foreach (var client in _clients)
        {
            client.Dispose();
        }

        try
        {
            await _accept.ConfigureAwait(false);
            await Task.WhenAll(_sessions).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is OperationCanceledException or SocketException or ObjectDisposedException or IOException)
        {
        }

        _stop.Dispose();
    }

    private async Task AcceptAsync()
    {
        try
        {
            while (!_stop.IsCancellationRequested)
            {
                var client = await _listener.AcceptTcpClientAsync(_stop.Token).ConfigureAwait(false);
                client.NoDelay = true;
                _clients.Add(client);
                var index = Interlocked.Increment(ref _accepted) - 1;
                _sessions.Add(Task.Run(() => RunAsync(client, index)));
            }
        }
        catch (Exception ex) when (ex is OperationCanceledException or SocketException or ObjectDisposedException)
        {
        }
    }

    private async Task RunAsync(TcpClient client, int index)
    {
        var session = new FakeNbdSession(client, index);
        try
        {
            if (Mute?.Invoke(index) == true)
            {
                await Task.Delay(System.Threading.Timeout.Infinite, _stop.Token).ConfigureAwait(false);
            }

            if (Greeting?.Invoke(index) is { } greeting)
            {
                await greeting.WaitAsync(_stop.Token).ConfigureAwait(false);
            }

            if (Handshake is { } handshake)
            {
                await handshake(index, client.GetStream()).ConfigureAwait(false);
            }
            else if (await session.NegotiateAsync(_export(index)).ConfigureAwait(false))
            {
                await _script(session).ConfigureAwait(false);
            }
        }
        catch (Exception ex) when (ex is IOException or SocketException or ObjectDisposedException or EndOfStreamException or OperationCanceledException)
        {
            // The client went away: that is for the script's assertions to judge.
        }
        catch (Exception ex)
        {
            Faults.Enqueue(ex);
        }
        finally
        {
            client.Dispose();
        }
    }
}

/// <summary>One connection of a <see cref="FakeNbdServer"/> in transmission.</summary>
public sealed class FakeNbdSession
{
    private readonly TcpClient _client;
    private readonly Stream _stream;
    private readonly SemaphoreSlim _write = new(1, 1);

    internal FakeNbdSession(TcpClient client, int index)
    {
        _client = client;
        _stream = client.GetStream();
        Index = index;
    }

    /// <summary>The connection's index, 0 for the first accepted.</summary>
    public int Index { get; }

    /// <summary>Every request received, in order (NBD_CMD_DISC included).</summary>
    public ConcurrentQueue<FakeNbdRequest> Received { get; } = new();

    /// <summary>Reads the next request (and a write's payload); null when the client closed the connection.</summary>
    public async Task<FakeNbdRequest?> ReadRequestAsync()
    {
        var header = new byte[NbdProtocol.RequestHeaderLength];
        var got = await _stream.ReadAtLeastAsync(header, header.Length, throwOnEndOfStream: false).ConfigureAwait(false);
        if (got < header.Length)
        {
            return null;
        }

        if (BinaryPrimitives.ReadUInt32BigEndian(header) != NbdProtocol.RequestMagic)
        {
            throw new InvalidDataException("bad request magic from the client");
        }

        var request = new FakeNbdRequest(
            (NbdCommandFlags)BinaryPrimitives.ReadUInt16BigEndian(header.AsSpan(4)),
            (NbdCommand)BinaryPrimitives.ReadUInt16BigEndian(header.AsSpan(6)),
            BinaryPrimitives.ReadUInt64BigEndian(header.AsSpan(8)),
            BinaryPrimitives.ReadUInt64BigEndian(header.AsSpan(16)),
            BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(24)));
        if (request.Command == NbdCommand.Write)
        {
            await _stream.ReadExactlyAsync(new byte[request.Length]).ConfigureAwait(false);
        }

        Received.Enqueue(request);
        return request;
    }

    /// <summary>Sends a simple reply; a successful read's reply carries <paramref name="fill"/> bytes.</summary>
    public async Task ReplyAsync(FakeNbdRequest request, NbdError error, byte fill = 0)
    {
        var data = request.Command == NbdCommand.Read && error == NbdError.None ? (int)request.Length : 0;
        var reply = new byte[NbdProtocol.SimpleReplyHeaderLength + data];
        BinaryPrimitives.WriteUInt32BigEndian(reply, NbdProtocol.SimpleReplyMagic);
        BinaryPrimitives.WriteUInt32BigEndian(reply.AsSpan(4), (uint)error);
        BinaryPrimitives.WriteUInt64BigEndian(reply.AsSpan(8), request.Cookie);
        reply.AsSpan(NbdProtocol.SimpleReplyHeaderLength).Fill(fill);
        await _write.WaitAsync().ConfigureAwait(false);
        try
        {
            await _stream.WriteAsync(reply).ConfigureAwait(false);
        }
        finally
        {
            _write.Release();
        }
    }

    /// <summary>
    /// Sends a successful read's reply in two writes: the header and the first
    /// <paramref name="firstPart"/> bytes of data (<paramref name="fill"/>), then the rest once
    /// <paramref name="rest"/> completes.
    /// </summary>
    public async Task ReplyInPartsAsync(FakeNbdRequest request, byte fill, int firstPart, Task rest)
    {
        ArgumentNullException.ThrowIfNull(request);
        ArgumentNullException.ThrowIfNull(rest);
        var reply = new byte[NbdProtocol.SimpleReplyHeaderLength + (int)request.Length];
        BinaryPrimitives.WriteUInt32BigEndian(reply, NbdProtocol.SimpleReplyMagic);
        BinaryPrimitives.WriteUInt64BigEndian(reply.AsSpan(8), request.Cookie);
        reply.AsSpan(NbdProtocol.SimpleReplyHeaderLength).Fill(fill);
        var split = NbdProtocol.SimpleReplyHeaderLength + firstPart;
        await _write.WaitAsync().ConfigureAwait(false);
        try
        {
            await _stream.WriteAsync(reply.AsMemory(0, split)).ConfigureAwait(false);
            await rest.ConfigureAwait(false);
            await _stream.WriteAsync(reply.AsMemory(split)).ConfigureAwait(false);
        }
        finally
        {
            _write.Release();
        }
    }

    /// <summary>
    /// Answers every request successfully (reads with <paramref name="fill"/>) until NBD_CMD_DISC
    /// or the end of the connection; true if it ended with NBD_CMD_DISC.
    /// </summary>
    public async Task<bool> ServeAsync(byte fill)
    {
        while (await ReadRequestAsync().ConfigureAwait(false) is { } request)
        {
            if (request.Command == NbdCommand.Disconnect)
            {
                return true;
            }

            await ReplyAsync(request, NbdError.None, fill).ConfigureAwait(false);
        }

        return false;
    }

    /// <summary>
    /// Sends one structured reply chunk (header and payload as given, however malformed), as one
    /// write so chunks of concurrent replies do not interleave inside each other.
    /// </summary>
    /// <param name="cookie">The cookie.</param>
    /// <param name="done">Sets NBD_REPLY_FLAG_DONE.</param>
    /// <param name="type">The chunk type (any 16-bit value).</param>
    /// <param name="payload">The payload.</param>
    /// <param name="length">The length field, when it is to differ from the payload's length.</param>
    public async Task ChunkAsync(ulong cookie, bool done, ushort type, byte[] payload, uint? length = null)
    {
        ArgumentNullException.ThrowIfNull(payload);
        var chunk = new byte[NbdProtocol.StructuredReplyHeaderLength + payload.Length];
        BinaryPrimitives.WriteUInt32BigEndian(chunk, NbdProtocol.StructuredReplyMagic);
        BinaryPrimitives.WriteUInt16BigEndian(chunk.AsSpan(4), (ushort)(done ? 1 : 0));
        BinaryPrimitives.WriteUInt16BigEndian(chunk.AsSpan(6), type);
        BinaryPrimitives.WriteUInt64BigEndian(chunk.AsSpan(8), cookie);
        BinaryPrimitives.WriteUInt32BigEndian(chunk.AsSpan(16), length ?? (uint)payload.Length);
        payload.CopyTo(chunk, NbdProtocol.StructuredReplyHeaderLength);
        await _write.WaitAsync().ConfigureAwait(false);
        try
        {
            await _stream.WriteAsync(chunk).ConfigureAwait(false);
        }
        finally
        {
            _write.Release();
        }
    }

    /// <summary>Closes the connection (a hard disconnect).</summary>
    public void Close() => _client.Dispose();

    internal async Task<bool> NegotiateAsync(FakeNbdExport export)
    {
        var greeting = new byte[18];
        BinaryPrimitives.WriteUInt64BigEndian(greeting, NbdProtocol.InitMagic);
        BinaryPrimitives.WriteUInt64BigEndian(greeting.AsSpan(8), NbdProtocol.OptionMagic);
        BinaryPrimitives.WriteUInt16BigEndian(greeting.AsSpan(16), (ushort)(NbdHandshakeFlags.FixedNewstyle | NbdHandshakeFlags.NoZeroes));
        await _stream.WriteAsync(greeting).ConfigureAwait(false);
        await _stream.ReadExactlyAsync(new byte[4]).ConfigureAwait(false);
        while (true)
        {
            var header = new byte[16];
            await _stream.ReadExactlyAsync(header).ConfigureAwait(false);
            var option = (NbdOption)BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(8));
            var length = BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(12));
            await _stream.ReadExactlyAsync(new byte[length]).ConfigureAwait(false);
            if (option == NbdOption.Abort)
            {
                await OptionReplyAsync(option, NbdReply.Ack, []).ConfigureAwait(false);
                return false;
            }

            if (option == NbdOption.StructuredReply && export.Structured)
            {
                await OptionReplyAsync(option, NbdReply.Ack, []).ConfigureAwait(false);
                continue;
            }

            if (option == NbdOption.SetMetaContext && export.Structured)
            {
                if (export.AllocationContext is { } id)
                {
                    var name = System.Text.Encoding.UTF8.GetBytes(NbdProtocol.BaseAllocation);
                    var context = new byte[4 + name.Length];
                    BinaryPrimitives.WriteUInt32BigEndian(context, id);
                    name.CopyTo(context, 4);
                    await OptionReplyAsync(option, NbdReply.MetaContext, context).ConfigureAwait(false);
                }

                await OptionReplyAsync(option, NbdReply.Ack, []).ConfigureAwait(false);
                continue;
            }

            if (option != NbdOption.Go)
            {
                await OptionReplyAsync(option, NbdReply.ErrUnsupported, []).ConfigureAwait(false);
                continue;
            }

            var infos = export.RawInfos
                ?? (export.Description is { } description ? [ExportInfo(export), BlockSizeInfo(export), DescriptionInfo(description)] : [ExportInfo(export), BlockSizeInfo(export)]);
            foreach (var info in infos)
            {
                await OptionReplyAsync(option, NbdReply.Info, info).ConfigureAwait(false);
            }

            await OptionReplyAsync(option, NbdReply.Ack, []).ConfigureAwait(false);
            return true;
        }
    }

    /// <summary>A well-formed NBD_INFO_EXPORT payload.</summary>
    public static byte[] ExportInfo(FakeNbdExport export)
    {
        ArgumentNullException.ThrowIfNull(export);
        var info = new byte[12];
        BinaryPrimitives.WriteUInt16BigEndian(info, (ushort)NbdInfo.Export);
        BinaryPrimitives.WriteUInt64BigEndian(info.AsSpan(2), export.Size);
        BinaryPrimitives.WriteUInt16BigEndian(info.AsSpan(10), (ushort)(export.Flags | NbdTransmissionFlags.HasFlags));
        return info;
    }

    /// <summary>An NBD_INFO_DESCRIPTION payload.</summary>
    public static byte[] DescriptionInfo(string description)
    {
        var text = System.Text.Encoding.UTF8.GetBytes(description);
        var info = new byte[2 + text.Length];
        BinaryPrimitives.WriteUInt16BigEndian(info, (ushort)NbdInfo.Description);
        text.CopyTo(info, 2);
        return info;
    }

    /// <summary>A well-formed NBD_INFO_BLOCK_SIZE payload.</summary>
    public static byte[] BlockSizeInfo(FakeNbdExport export)
    {
        ArgumentNullException.ThrowIfNull(export);
        var info = new byte[14];
        BinaryPrimitives.WriteUInt16BigEndian(info, (ushort)NbdInfo.BlockSize);
        BinaryPrimitives.WriteUInt32BigEndian(info.AsSpan(2), export.MinimumBlock);
        BinaryPrimitives.WriteUInt32BigEndian(info.AsSpan(6), export.PreferredBlock);
        BinaryPrimitives.WriteUInt32BigEndian(info.AsSpan(10), export.MaximumPayload);
        return info;
    }

    private async Task OptionReplyAsync(NbdOption option, NbdReply type, byte[] data)
    {
        var reply = new byte[20 + data.Length];
        BinaryPrimitives.WriteUInt64BigEndian(reply, NbdProtocol.ReplyMagic);
        BinaryPrimitives.WriteUInt32BigEndian(reply.AsSpan(8), (uint)option);
        BinaryPrimitives.WriteUInt32BigEndian(reply.AsSpan(12), (uint)type);
        BinaryPrimitives.WriteUInt32BigEndian(reply.AsSpan(16), (uint)data.Length);
        data.CopyTo(reply, 20);
        await _stream.WriteAsync(reply).ConfigureAwait(false);
    }
}
