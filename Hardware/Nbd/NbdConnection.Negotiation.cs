using System.Buffers;
using System.Buffers.Binary;
using System.IO.Pipelines;
using System.Net.Security;
using System.Security.Authentication;
using System.Text;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Queues;

namespace ActorBlk.Hardware.Nbd;

// The negotiation phase: the fixed newstyle handshake and the NBD_OPT_* options and their replies
// (export selection with EXPORT_NAME, INFO, GO and LIST; STARTTLS; structured replies; metadata contexts).
public sealed partial class NbdConnection
{
    /// <summary>Runs the handshake and the option haggling; true when the transmission phase starts.</summary>
    private async Task<bool> NegotiateAsync(CancellationToken ct)
    {
        var hello = new byte[18];
        BinaryPrimitives.WriteUInt64BigEndian(hello, NbdProtocol.InitMagic);
        BinaryPrimitives.WriteUInt64BigEndian(hello.AsSpan(8), NbdProtocol.OptionMagic);
        BinaryPrimitives.WriteUInt16BigEndian(hello.AsSpan(16), (ushort)(NbdHandshakeFlags.FixedNewstyle | NbdHandshakeFlags.NoZeroes));
        await _writer.WriteAsync(hello, ct).ConfigureAwait(false);

        var clientFlags = (NbdClientFlags)BinaryPrimitives.ReadUInt32BigEndian(await ReadExactAsync(4, ct).ConfigureAwait(false));
        if ((clientFlags & ~(NbdClientFlags.FixedNewstyle | NbdClientFlags.NoZeroes)) != 0)
        {
            throw new NbdProtocolException($"unknown client flags 0x{(uint)clientFlags:x}");
        }

        var noZeroes = (clientFlags & NbdClientFlags.NoZeroes) != 0;
        while (true)
        {
            var header = await ReadExactAsync(NbdProtocol.OptionHeaderLength, ct).ConfigureAwait(false);
            if (BinaryPrimitives.ReadUInt64BigEndian(header) != NbdProtocol.OptionMagic)
            {
                throw new NbdProtocolException("bad option magic");
            }

            var option = (NbdOption)BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(8));
            var length = BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(12));
            if (_stopRequested && option != NbdOption.Abort)
            {
                // The server is shutting down: "it ... SHOULD error further options received
                // (other than an NBD_OPT_ABORT) with NBD_REP_ERR_SHUTDOWN", and a client that gets
                // it "MUST initiate a soft disconnect" (proto.md). Before, the connection was
                // closed at once and the client read end of stream.
                if (!await ShutdownAnswerAsync(option, length, ct).ConfigureAwait(false))
                {
                    return false;
                }

                continue;
            }

            if (length > MaxOptionLength)
            {
                // Data up to 32 MiB is read past without a buffer and the option refused, and the
                // negotiation goes on (nbdkit does the same): closing with the data unread sent a
                // reset that threw the refusal away before the client read it (an outside audit).
                // More is refused unread (the connection closes) rather than read for gigabytes.
                var tooBig = Encoding.UTF8.GetBytes($"option data of {length} bytes is over the limit of {MaxOptionLength}");
                if (option == NbdOption.ExportName)
                {
                    // NBD_OPT_EXPORT_NAME has no error reply: "the server MUST terminate the session".
                    throw new NbdProtocolException($"NBD_OPT_EXPORT_NAME with {length} bytes of data");
                }

                if (Options.Tls == NbdTlsMode.Require && _tls is null && option is not NbdOption.StartTls)
                {
                    // Before the required STARTTLS the answer is NBD_REP_ERR_TLS_REQD, and an
                    // unauthenticated client is not read 32 MiB at a time: the connection closes
                    // after the answer, gracefully.
                    await ReplyAsync(option, NbdReply.ErrTlsRequired, Encoding.UTF8.GetBytes("this server requires TLS (NBD_OPT_STARTTLS)"), ct).ConfigureAwait(false);
                    _lingerOnClose = true;
                    throw new NbdProtocolException($"option {option} with {length} bytes of data before the required STARTTLS");
                }

                if (length > NbdProtocol.MaxTolerablePayload)
                {
                    // Closed gracefully (FIN after the answer, the input drained for at most
                    // shutdown-grace), or a client that did send the data gets a reset that loses
                    // the answer (a verifying helper, at 32 MiB + 1).
                    await ReplyAsync(option, NbdReply.ErrTooBig, tooBig, ct).ConfigureAwait(false);
                    _lingerOnClose = true;
                    throw new NbdProtocolException($"option {option} with {length} bytes of data");
                }

                await SkipAsync(length, ct).ConfigureAwait(false);
                await ReplyAsync(option, NbdReply.ErrTooBig, tooBig, ct).ConfigureAwait(false);
                continue;
            }

            var data = length == 0 ? [] : await ReadExactAsync((int)length, ct).ConfigureAwait(false);
            if (Options.Tls == NbdTlsMode.Require && _tls is null && option is not (NbdOption.StartTls or NbdOption.Abort))
            {
                if (option == NbdOption.ExportName)
                {
                    throw new NbdProtocolException("NBD_OPT_EXPORT_NAME before the required STARTTLS");
                }

                await ReplyAsync(option, NbdReply.ErrTlsRequired, Encoding.UTF8.GetBytes("this server requires TLS (NBD_OPT_STARTTLS)"), ct).ConfigureAwait(false);
                continue;
            }

            switch (option)
            {
                case NbdOption.ExportName:
                    return await ExportNameAsync(data, noZeroes, ct).ConfigureAwait(false);

                case NbdOption.Abort:
                    await ReplyAsync(option, NbdReply.Ack, [], ct).ConfigureAwait(false);
                    _clientEnded = true;
                    return false;

                case NbdOption.List:
                    await ListAsync(data, ct).ConfigureAwait(false);
                    break;

                case NbdOption.StartTls:
                    await StartTlsAsync(data, ct).ConfigureAwait(false);
                    break;

                case NbdOption.Info:
                case NbdOption.Go:
                    if (await InfoAsync(option, data, ct).ConfigureAwait(false))
                    {
                        return true;
                    }

                    break;

                case NbdOption.StructuredReply:
                    if (data.Length != 0)
                    {
                        await ReplyErrorAsync(option, NbdReply.ErrInvalid, "NBD_OPT_STRUCTURED_REPLY takes no data", ct).ConfigureAwait(false);
                    }
                    else if (_structured)
                    {
                        await ReplyErrorAsync(option, NbdReply.ErrInvalid, "structured replies are already negotiated", ct).ConfigureAwait(false);
                    }
                    else
                    {
                        _structured = true;
                        await ReplyAsync(option, NbdReply.Ack, [], ct).ConfigureAwait(false);
                    }

                    break;

                case NbdOption.ListMetaContext:
                case NbdOption.SetMetaContext:
                    await MetaContextAsync(option, data, ct).ConfigureAwait(false);
                    break;

                default:
                    await ReplyErrorAsync(option, NbdReply.ErrUnsupported, $"option {(uint)option} is not supported", ct).ConfigureAwait(false);
                    break;
            }
        }
    }

    /// <summary>
    /// Answers an option received while the server shuts down: its data is read past and it gets
    /// <c>NBD_REP_ERR_SHUTDOWN</c>; false when the connection closes instead
    /// (<c>NBD_OPT_EXPORT_NAME</c>, which has no error reply, or data over the option limit).
    /// </summary>
    private async Task<bool> ShutdownAnswerAsync(NbdOption option, uint length, CancellationToken ct)
    {
        if (option == NbdOption.ExportName)
        {
            // "If the server is unwilling to allow the export, it MUST terminate the session."
            if (length <= MaxOptionLength)
            {
                // Read first: a close with the name unread would be a reset.
                await SkipAsync(length, ct).ConfigureAwait(false);
            }

            return false;
        }

        var message = NbdProtocol.StringBytes("the server is shutting down");
        if (length > MaxOptionLength)
        {
            // Not read for gigabytes: answered, then closed gracefully (the answer is read).
            await ReplyAsync(option, NbdReply.ErrShutdown, message, ct).ConfigureAwait(false);
            _lingerOnClose = true;
            return false;
        }

        await SkipAsync(length, ct).ConfigureAwait(false);
        await ReplyAsync(option, NbdReply.ErrShutdown, message, ct).ConfigureAwait(false);
        return true;
    }

    private async Task<bool> ExportNameAsync(byte[] data, bool noZeroes, CancellationToken ct)
    {
        var name = Encoding.UTF8.GetString(data);
        if (!_server.Catalog.TryGetExport(name, out var device))
        {
            // NBD_OPT_EXPORT_NAME has no error reply: the only answer to an unknown name is to close.
            throw new NbdProtocolException($"no export named {NbdProtocol.Shown(name)}");
        }

        Select(device, name);
        var reply = new byte[10 + (noZeroes ? 0 : NbdProtocol.ExportNamePadding)];
        BinaryPrimitives.WriteUInt64BigEndian(reply, (ulong)device.Capacity);
        BinaryPrimitives.WriteUInt16BigEndian(reply.AsSpan(8), (ushort)_transmissionFlags);
        await _writer.WriteAsync(reply, ct).ConfigureAwait(false);
        return true;
    }

    private async Task ListAsync(byte[] data, CancellationToken ct)
    {
        if (data.Length != 0)
        {
            await ReplyErrorAsync(NbdOption.List, NbdReply.ErrInvalid, "NBD_OPT_LIST takes no data", ct).ConfigureAwait(false);
            return;
        }

        // NBD_REP_SERVER: the name, then the export's description as its "implementation-defined
        // details" (as nbdkit sends them; nbdinfo --list shows them).
        foreach (var device in _server.Catalog.Exports)
        {
            var name = Encoding.UTF8.GetBytes(device.Name);
            var details = Encoding.UTF8.GetBytes(Describe(device));
            var entry = new byte[4 + name.Length + details.Length];
            BinaryPrimitives.WriteUInt32BigEndian(entry, (uint)name.Length);
            name.CopyTo(entry, 4);
            details.CopyTo(entry, 4 + name.Length);
            WriteReply(NbdOption.List, NbdReply.Server, entry);
        }

        await ReplyAsync(NbdOption.List, NbdReply.Ack, [], ct).ConfigureAwait(false);
    }

    private async Task StartTlsAsync(byte[] data, CancellationToken ct)
    {
        if (data.Length != 0)
        {
            await ReplyErrorAsync(NbdOption.StartTls, NbdReply.ErrInvalid, "NBD_OPT_STARTTLS takes no data", ct).ConfigureAwait(false);
            return;
        }

        if (Options.Tls == NbdTlsMode.Off || Options.Certificate is null)
        {
            await ReplyErrorAsync(NbdOption.StartTls, NbdReply.ErrUnsupported, "TLS is off on this server", ct).ConfigureAwait(false);
            return;
        }

        if (_tls is not null)
        {
            await ReplyErrorAsync(NbdOption.StartTls, NbdReply.ErrInvalid, "TLS is already on", ct).ConfigureAwait(false);
            return;
        }

        await ReplyAsync(NbdOption.StartTls, NbdReply.Ack, [], ct).ConfigureAwait(false);

        // The client starts the TLS handshake only after our ACK, so the plain reader holds no
        // bytes beyond the option: it can be dropped and the pipes rebuilt over the TLS stream.
        await _reader.CompleteAsync().ConfigureAwait(false);
        await _writer.CompleteAsync().ConfigureAwait(false);

        // TLS records are written from completion threads through SslStream: from here on the
        // socket's I/O is asynchronous (the socket engine's), so a slow client never blocks them.
        _plain.Blocking = false;
        _tls = new SslStream(_stream, leaveInnerStreamOpen: true);
        await _tls.AuthenticateAsServerAsync(
            new SslServerAuthenticationOptions
            {
                ServerCertificate = Options.Certificate,
                ClientCertificateRequired = false,
                EnabledSslProtocols = SslProtocols.Tls12 | SslProtocols.Tls13,
            },
            ct).ConfigureAwait(false);
        _reader = PipeReader.Create(_tls, new StreamPipeReaderOptions(leaveOpen: true));
        _writer = PipeWriter.Create(_tls, new StreamPipeWriterOptions(leaveOpen: true));

        // Anything negotiated in plain text is forgotten after the upgrade (proto.md, STARTTLS).
        _structured = false;
        _allocationContext = false;
        _contextExport = null;
    }

    /// <summary>NBD_OPT_INFO and NBD_OPT_GO; true when GO succeeded.</summary>
    private async Task<bool> InfoAsync(NbdOption option, byte[] data, CancellationToken ct)
    {
        if (data.Length < 6)
        {
            await ReplyErrorAsync(option, NbdReply.ErrInvalid, "option data too short", ct).ConfigureAwait(false);
            return false;
        }

        var nameLength = BinaryPrimitives.ReadUInt32BigEndian(data);
        if (nameLength > (uint)(data.Length - 6))
        {
            await ReplyErrorAsync(option, NbdReply.ErrInvalid, "export name length does not fit the option", ct).ConfigureAwait(false);
            return false;
        }

        if (NbdProtocol.BadString(data.AsSpan(4, (int)nameLength)) is { } bad)
        {
            await ReplyErrorAsync(option, NbdReply.ErrInvalid, $"export name {bad}", ct).ConfigureAwait(false);
            return false;
        }

        var name = Encoding.UTF8.GetString(data, 4, (int)nameLength);
        var count = BinaryPrimitives.ReadUInt16BigEndian(data.AsSpan(4 + (int)nameLength));
        if (data.Length != 6 + nameLength + (2 * count))
        {
            await ReplyErrorAsync(option, NbdReply.ErrInvalid, "information request count does not match the option length", ct).ConfigureAwait(false);
            return false;
        }

        var requested = new HashSet<NbdInfo>();
        for (var i = 0; i < count; i++)
        {
            requested.Add((NbdInfo)BinaryPrimitives.ReadUInt16BigEndian(data.AsSpan(6 + (int)nameLength + (2 * i))));
        }

        if (!_server.Catalog.TryGetExport(name, out var device))
        {
            await ReplyErrorAsync(option, NbdReply.ErrUnknown, $"no export named {NbdProtocol.Shown(name)}", ct).ConfigureAwait(false);
            return false;
        }

        // An offline device (its backend is gone for good: an NBD server that went away, a lost
        // node) is not available; answering GO would let a reconnecting client loop through
        // ESHUTDOWN on every request (an outside audit).
        if (device.Queue.IsOffline)
        {
            await ReplyErrorAsync(option, NbdReply.ErrUnknown, $"export '{device.Name}' is offline: its device is gone", ct).ConfigureAwait(false);
            return false;
        }

        if (!device.Queue.AcceptsIo)
        {
            await ReplyErrorAsync(option, NbdReply.ErrShutdown, $"export '{device.Name}' is going away", ct).ConfigureAwait(false);
            return false;
        }

        var flags = TransmissionFlags(device);
        if (requested.Contains(NbdInfo.Name))
        {
            var n = Encoding.UTF8.GetBytes(device.Name);
            var info = new byte[2 + n.Length];
            BinaryPrimitives.WriteUInt16BigEndian(info, (ushort)NbdInfo.Name);
            n.CopyTo(info, 2);
            WriteReply(option, NbdReply.Info, info);
        }

        if (requested.Contains(NbdInfo.Description))
        {
            var d = Encoding.UTF8.GetBytes(Describe(device));
            var info = new byte[2 + d.Length];
            BinaryPrimitives.WriteUInt16BigEndian(info, (ushort)NbdInfo.Description);
            d.CopyTo(info, 2);
            WriteReply(option, NbdReply.Info, info);
        }

        // Block sizes are sent whether asked for or not (a client must ignore what it did not ask).
        var sizes = new byte[14];
        BinaryPrimitives.WriteUInt16BigEndian(sizes, (ushort)NbdInfo.BlockSize);
        var (minimum, preferred, maximum) = BlockSizes(device);
        BinaryPrimitives.WriteUInt32BigEndian(sizes.AsSpan(2), minimum);
        BinaryPrimitives.WriteUInt32BigEndian(sizes.AsSpan(6), preferred);
        BinaryPrimitives.WriteUInt32BigEndian(sizes.AsSpan(10), maximum);
        WriteReply(option, NbdReply.Info, sizes);

        var export = new byte[12];
        BinaryPrimitives.WriteUInt16BigEndian(export, (ushort)NbdInfo.Export);
        BinaryPrimitives.WriteUInt64BigEndian(export.AsSpan(2), (ulong)device.Capacity);
        BinaryPrimitives.WriteUInt16BigEndian(export.AsSpan(10), (ushort)flags);
        WriteReply(option, NbdReply.Info, export);
        if (option == NbdOption.Go)
        {
            // Selected before the reply: a client that has read it may be told the device is gone
            // (CloseConnectionsOf) at once, and this connection must be among those closed.
            Select(device, name);
        }

        await ReplyAsync(option, NbdReply.Ack, [], ct).ConfigureAwait(false);
        return option == NbdOption.Go;
    }

    private async Task MetaContextAsync(NbdOption option, byte[] data, CancellationToken ct)
    {
        if (option == NbdOption.SetMetaContext)
        {
            // "Issuing this command replaces all previously-set metadata contexts (including
            // when this command fails)."
            _allocationContext = false;
            _contextExport = null;
            if (!_structured)
            {
                await ReplyErrorAsync(option, NbdReply.ErrInvalid, "NBD_OPT_SET_META_CONTEXT needs structured replies first", ct).ConfigureAwait(false);
                return;
            }
        }

        var queries = ParseContextQueries(data, out var exportName);
        if (queries is null)
        {
            await ReplyErrorAsync(option, NbdReply.ErrInvalid, "malformed metadata context request", ct).ConfigureAwait(false);
            return;
        }

        if (!_server.Catalog.TryGetExport(exportName, out _))
        {
            await ReplyErrorAsync(option, NbdReply.ErrUnknown, $"no export named {NbdProtocol.Shown(exportName)}", ct).ConfigureAwait(false);
            return;
        }

        var selected = false;
        var context = Encoding.UTF8.GetBytes(NbdProtocol.BaseAllocation);
        var entry = new byte[4 + context.Length];

        // LIST's replies carry the reserved id 0 ("SHOULD be set to zero"); SET's the id to use.
        BinaryPrimitives.WriteUInt32BigEndian(entry, option == NbdOption.SetMetaContext ? NbdProtocol.BaseAllocationId : 0);
        context.CopyTo(entry, 4);
        var matches = option == NbdOption.ListMetaContext
            ? queries.Count == 0 || queries.Any(q => q is "base:" or NbdProtocol.BaseAllocation)
            : queries.Contains(NbdProtocol.BaseAllocation);
        if (matches)
        {
            WriteReply(option, NbdReply.MetaContext, entry);
            selected = true;
        }

        if (option == NbdOption.SetMetaContext)
        {
            // Each SET replaces the previous selection, for the export it names.
            _allocationContext = selected;
            _contextExport = exportName;
        }

        await ReplyAsync(option, NbdReply.Ack, [], ct).ConfigureAwait(false);
    }

    private static List<string>? ParseContextQueries(byte[] data, out string exportName)
    {
        exportName = string.Empty;
        if (data.Length < 8)
        {
            return null;
        }

        var nameLength = BinaryPrimitives.ReadUInt32BigEndian(data);
        if (nameLength > (uint)(data.Length - 8) || NbdProtocol.BadString(data.AsSpan(4, (int)nameLength)) is not null)
        {
            return null;
        }

        exportName = Encoding.UTF8.GetString(data, 4, (int)nameLength);
        var pos = 4 + (int)nameLength;
        var count = BinaryPrimitives.ReadUInt32BigEndian(data.AsSpan(pos));
        pos += 4;
        var queries = new List<string>();
        for (var i = 0u; i < count; i++)
        {
            if (data.Length - pos < 4)
            {
                return null;
            }

            var len = BinaryPrimitives.ReadUInt32BigEndian(data.AsSpan(pos));
            pos += 4;
            if (len > (uint)(data.Length - pos) || NbdProtocol.BadString(data.AsSpan(pos, (int)len)) is not null)
            {
                return null;
            }

            queries.Add(Encoding.UTF8.GetString(data, pos, (int)len));
            pos += (int)len;
        }

        return pos == data.Length ? queries : null;
    }

    private void Select(IBlockDevice device, string name)
    {
        _device = device;
        _transmissionFlags = TransmissionFlags(device);
        if (_contextExport != name && !(_contextExport?.Length == 0 && name.Length == 0))
        {
            // A context chosen for another export does not carry over to this one.
            _allocationContext = false;
        }
    }

    private NbdTransmissionFlags TransmissionFlags(IBlockDevice device)
    {
        var limits = device.Queue.Limits;

        // Every connection reaches the same request queue, and a flush is a flush of the device:
        // what one connection flushed is visible on every other, so multi-conn is true.
        var flags = NbdTransmissionFlags.HasFlags | NbdTransmissionFlags.SendFlush | NbdTransmissionFlags.SendFua |
                    NbdTransmissionFlags.CanMultiConn;
        if (device.IsReadOnly)
        {
            flags |= NbdTransmissionFlags.ReadOnly;
        }
        else
        {
            // The driver's discard, not the limit in use: discard_max_bytes = 0 makes trims no-ops.
            if (device.Queue.MaxHardwareDiscardSectors > 0)
            {
                flags |= NbdTransmissionFlags.SendTrim;
            }

            // Write-zeroes is always the device's own operation (never emulated with writes here); it
            // is fast unless the device is itself an NBD client whose server did not promise that.
            if (limits.MaxWriteZeroesSectors > 0)
            {
                flags |= NbdTransmissionFlags.SendWriteZeroes;
                if (limits.FastWriteZeroes)
                {
                    flags |= NbdTransmissionFlags.SendFastZero;
                }
            }
        }

        if (_structured)
        {
            // Reads are always answered in one chunk, so "don't fragment" costs nothing.
            flags |= NbdTransmissionFlags.SendDf;
        }

        return flags;
    }

    private (uint Minimum, uint Preferred, uint Maximum) BlockSizes(IBlockDevice device)
    {
        var limits = device.Queue.Limits;
        var minimum = (uint)device.LogicalBlockSize;
        var preferred = (uint)Math.Max(Math.Max(limits.PhysicalBlockSize, 4096), device.LogicalBlockSize);
        var maximum = (uint)Math.Max(Options.MaxPayload, device.LogicalBlockSize);
        return (minimum, preferred, maximum);
    }

    // Ends with the device's identity (DiskSequence): a client that reconnects can tell the device
    // it opened from another created under the same name since.
    private static string Describe(IBlockDevice device) =>
        $"ActorBlk {(device.Queue.BioDriver is null ? device.Queue.Driver.Kind : "stacked")} device {device.Name}, {device.LogicalBlockSize}-byte blocks, {DiskSequence.Identity(device.Queue.DiskSeq)}";

    private void WriteReply(NbdOption option, NbdReply type, ReadOnlySpan<byte> data)
    {
        var span = _writer.GetSpan(NbdProtocol.OptionReplyHeaderLength + data.Length);
        BinaryPrimitives.WriteUInt64BigEndian(span, NbdProtocol.ReplyMagic);
        BinaryPrimitives.WriteUInt32BigEndian(span[8..], (uint)option);
        BinaryPrimitives.WriteUInt32BigEndian(span[12..], (uint)type);
        BinaryPrimitives.WriteUInt32BigEndian(span[16..], (uint)data.Length);
        data.CopyTo(span[20..]);
        _writer.Advance(NbdProtocol.OptionReplyHeaderLength + data.Length);
    }

    private async ValueTask ReplyAsync(NbdOption option, NbdReply type, byte[] data, CancellationToken ct)
    {
        WriteReply(option, type, data);
        await _writer.FlushAsync(ct).ConfigureAwait(false);
    }

    // An error's message is a protocol string: no NUL, at most 4,096 bytes (the messages name what
    // the client sent through NbdProtocol.Shown, so this cut is a last guard).
    private ValueTask ReplyErrorAsync(NbdOption option, NbdReply type, string message, CancellationToken ct) =>
        ReplyAsync(option, type, NbdProtocol.StringBytes(message), ct);

    private async ValueTask<byte[]> ReadExactAsync(int count, CancellationToken ct)
    {
        var result = await _reader.ReadAtLeastAsync(count, ct).ConfigureAwait(false);
        var buffer = result.Buffer;
        if (buffer.Length < count)
        {
            _reader.AdvanceTo(buffer.End);
            throw new EndOfStreamException("the client closed the connection");
        }

        var bytes = buffer.Slice(0, count).ToArray();
        _reader.AdvanceTo(buffer.GetPosition(count));
        return bytes;
    }

    /// <summary>Reads past <paramref name="count"/> bytes of the input without keeping them.</summary>
    private async ValueTask SkipAsync(long count, CancellationToken ct)
    {
        while (count > 0)
        {
            var result = await _reader.ReadAsync(ct).ConfigureAwait(false);
            var take = Math.Min(count, result.Buffer.Length);
            _reader.AdvanceTo(result.Buffer.GetPosition(take));
            count -= take;
            if (count > 0 && result.IsCompleted)
            {
                throw new EndOfStreamException("the client closed the connection");
            }
        }
    }
}
