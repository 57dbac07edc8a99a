using System.Buffers.Binary;
using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using System.Text;
using ActorBlk.Hardware.Nbd;

namespace ActorBlk.Hardware.Tests.Nbd;

/// <summary>
/// A byte-level NBD client for protocol specs: it sends exactly what a test says (including
/// malformed input) and parses what comes back, with no protocol logic of its own beyond framing.
/// </summary>
public sealed class RawNbdClient : IAsyncDisposable
{
    public static readonly TimeSpan Timeout = TimeSpan.FromSeconds(60);

    private readonly Socket _socket;
    private Stream _stream;

    private RawNbdClient(Socket socket)
    {
        _socket = socket;
        if (socket.AddressFamily != AddressFamily.Unix)
        {
            _socket.NoDelay = true;
        }

        _stream = new NetworkStream(socket, ownsSocket: true);
    }

    public ushort HandshakeFlags { get; private set; }

    /// <param name="endpoint">The server: an <see cref="IPEndPoint"/>, or a <see cref="UnixDomainSocketEndPoint"/>.</param>
    /// <param name="receiveBuffer">SO_RCVBUF before connecting (0: the system's), to make a client that does not read fill up fast.</param>
    public static async Task<RawNbdClient> ConnectAsync(EndPoint endpoint, int receiveBuffer = 0)
    {
        var socket = new Socket(endpoint.AddressFamily, SocketType.Stream, endpoint is IPEndPoint ? ProtocolType.Tcp : ProtocolType.Unspecified);
        if (receiveBuffer > 0)
        {
            socket.ReceiveBufferSize = receiveBuffer;
        }

        await socket.ConnectAsync(endpoint).WaitAsync(Timeout);
        return new RawNbdClient(socket);
    }

    /// <summary>Connects, reads the greeting and sends the client flags.</summary>
    public static async Task<RawNbdClient> NegotiateAsync(EndPoint endpoint, NbdClientFlags flags = NbdClientFlags.FixedNewstyle | NbdClientFlags.NoZeroes, int receiveBuffer = 0)
    {
        var client = await ConnectAsync(endpoint, receiveBuffer);
        var hello = await client.ReadAsync(18);
        if (BinaryPrimitives.ReadUInt64BigEndian(hello) != NbdProtocol.InitMagic || BinaryPrimitives.ReadUInt64BigEndian(hello.AsSpan(8)) != NbdProtocol.OptionMagic)
        {
            throw new InvalidDataException("not an NBD newstyle greeting");
        }

        client.HandshakeFlags = BinaryPrimitives.ReadUInt16BigEndian(hello.AsSpan(16));
        await client.WriteU32Async((uint)flags);
        return client;
    }

    /// <summary>
    /// NBD_OPT_STARTTLS, then a TLS handshake that trusts any server certificate: what follows
    /// goes over TLS, so the server reads with its asynchronous (TLS) request reader.
    /// </summary>
    public async Task StartTlsAsync()
    {
        await SendOptionAsync(NbdOption.StartTls, []);
        var reply = await ReadOptionReplyAsync();
        if (reply.Type != NbdReply.Ack)
        {
            throw new InvalidDataException($"STARTTLS refused: {reply.Type}");
        }

        var tls = new SslStream(_stream, leaveInnerStreamOpen: false, (_, _, _, _) => true);
        await tls.AuthenticateAsClientAsync("localhost").WaitAsync(Timeout);
        _stream = tls;
    }

    /// <summary>Negotiates (over TLS when <paramref name="tls"/>) and enters transmission with NBD_OPT_GO; returns size and flags.</summary>
    public static async Task<(RawNbdClient Client, ulong Size, NbdTransmissionFlags Flags)> OpenAsync(EndPoint endpoint, string export = "", bool structured = false, bool allocation = false, int receiveBuffer = 0, bool tls = false)
    {
        var client = await NegotiateAsync(endpoint, receiveBuffer: receiveBuffer);
        if (tls)
        {
            await client.StartTlsAsync();
        }

        if (structured)
        {
            await client.SendOptionAsync(NbdOption.StructuredReply, []);
            var r = await client.ReadOptionReplyAsync();
            if (r.Type != NbdReply.Ack)
            {
                throw new InvalidDataException($"structured reply refused: {r.Type}");
            }
        }

        if (allocation)
        {
            await client.SendOptionAsync(NbdOption.SetMetaContext, MetaContextRequest(export, NbdProtocol.BaseAllocation));
            while ((await client.ReadOptionReplyAsync()).Type != NbdReply.Ack)
            {
            }
        }

        await client.SendOptionAsync(NbdOption.Go, InfoRequest(export));
        ulong size = 0;
        NbdTransmissionFlags flags = 0;
        while (true)
        {
            var reply = await client.ReadOptionReplyAsync();
            if (reply.Type == NbdReply.Ack)
            {
                return (client, size, flags);
            }

            if (reply.Type != NbdReply.Info)
            {
                throw new InvalidDataException($"GO failed: {reply.Type} {Encoding.UTF8.GetString(reply.Data)}");
            }

            if (BinaryPrimitives.ReadUInt16BigEndian(reply.Data) == (ushort)NbdInfo.Export)
            {
                size = BinaryPrimitives.ReadUInt64BigEndian(reply.Data.AsSpan(2));
                flags = (NbdTransmissionFlags)BinaryPrimitives.ReadUInt16BigEndian(reply.Data.AsSpan(10));
            }
        }
    }

    public static byte[] InfoRequest(string export, params NbdInfo[] infos)
    {
        var name = Encoding.UTF8.GetBytes(export);
        var data = new byte[4 + name.Length + 2 + (2 * infos.Length)];
        BinaryPrimitives.WriteUInt32BigEndian(data, (uint)name.Length);
        name.CopyTo(data, 4);
        BinaryPrimitives.WriteUInt16BigEndian(data.AsSpan(4 + name.Length), (ushort)infos.Length);
        for (var i = 0; i < infos.Length; i++)
        {
            BinaryPrimitives.WriteUInt16BigEndian(data.AsSpan(6 + name.Length + (2 * i)), (ushort)infos[i]);
        }

        return data;
    }

    public static byte[] MetaContextRequest(string export, params string[] queries)
    {
        using var ms = new MemoryStream();
        var name = Encoding.UTF8.GetBytes(export);
        Span<byte> u32 = stackalloc byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(u32, (uint)name.Length);
        ms.Write(u32);
        ms.Write(name);
        BinaryPrimitives.WriteUInt32BigEndian(u32, (uint)queries.Length);
        ms.Write(u32);
        foreach (var q in queries)
        {
            var b = Encoding.UTF8.GetBytes(q);
            BinaryPrimitives.WriteUInt32BigEndian(u32, (uint)b.Length);
            ms.Write(u32);
            ms.Write(b);
        }

        return ms.ToArray();
    }

    public async Task SendOptionAsync(NbdOption option, byte[] data, uint? length = null)
    {
        var header = new byte[16];
        BinaryPrimitives.WriteUInt64BigEndian(header, NbdProtocol.OptionMagic);
        BinaryPrimitives.WriteUInt32BigEndian(header.AsSpan(8), (uint)option);
        BinaryPrimitives.WriteUInt32BigEndian(header.AsSpan(12), length ?? (uint)data.Length);
        await WriteAsync(header);
        await WriteAsync(data);
    }

    public async Task<(NbdOption Option, NbdReply Type, byte[] Data)> ReadOptionReplyAsync()
    {
        var header = await ReadAsync(20);
        if (BinaryPrimitives.ReadUInt64BigEndian(header) != NbdProtocol.ReplyMagic)
        {
            throw new InvalidDataException("bad option reply magic");
        }

        var option = (NbdOption)BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(8));
        var type = (NbdReply)BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(12));
        var length = BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(16));
        return (option, type, await ReadAsync((int)length));
    }

    public async Task SendRequestAsync(NbdCommand command, ulong cookie, ulong offset, uint length, NbdCommandFlags flags = NbdCommandFlags.None, byte[]? payload = null, uint magic = NbdProtocol.RequestMagic)
    {
        var header = new byte[28 + (payload?.Length ?? 0)];
        BinaryPrimitives.WriteUInt32BigEndian(header, magic);
        BinaryPrimitives.WriteUInt16BigEndian(header.AsSpan(4), (ushort)flags);
        BinaryPrimitives.WriteUInt16BigEndian(header.AsSpan(6), (ushort)command);
        BinaryPrimitives.WriteUInt64BigEndian(header.AsSpan(8), cookie);
        BinaryPrimitives.WriteUInt64BigEndian(header.AsSpan(16), offset);
        BinaryPrimitives.WriteUInt32BigEndian(header.AsSpan(24), length);
        payload?.CopyTo(header, 28);
        await WriteAsync(header);
    }

    /// <summary>Reads a simple reply; <paramref name="dataFor"/> says how many data bytes follow a successful reply to a cookie.</summary>
    public async Task<(NbdError Error, ulong Cookie, byte[] Data)> ReadSimpleReplyAsync(Func<ulong, int>? dataFor = null)
    {
        var header = await ReadAsync(16);
        if (BinaryPrimitives.ReadUInt32BigEndian(header) != NbdProtocol.SimpleReplyMagic)
        {
            throw new InvalidDataException("bad simple reply magic");
        }

        var error = (NbdError)BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(4));
        var cookie = BinaryPrimitives.ReadUInt64BigEndian(header.AsSpan(8));
        var length = error == NbdError.None && dataFor is not null ? dataFor(cookie) : 0;
        return (error, cookie, await ReadAsync(length));
    }

    /// <summary>
    /// Reads a simple reply like <see cref="ReadSimpleReplyAsync"/>, or returns null when the server
    /// ended the stream cleanly (FIN) before one; a reset throws an <see cref="IOException"/>.
    /// </summary>
    public async Task<(NbdError Error, ulong Cookie, byte[] Data)?> ReadSimpleReplyOrEndAsync(Func<ulong, int>? dataFor = null)
    {
        var header = new byte[16];
        if (await _stream.ReadAsync(header.AsMemory(0, 1)).AsTask().WaitAsync(Timeout) == 0)
        {
            return null;
        }

        await _stream.ReadExactlyAsync(header.AsMemory(1)).AsTask().WaitAsync(Timeout);
        if (BinaryPrimitives.ReadUInt32BigEndian(header) != NbdProtocol.SimpleReplyMagic)
        {
            throw new InvalidDataException("bad simple reply magic");
        }

        var error = (NbdError)BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(4));
        var cookie = BinaryPrimitives.ReadUInt64BigEndian(header.AsSpan(8));
        var length = error == NbdError.None && dataFor is not null ? dataFor(cookie) : 0;
        return (error, cookie, await ReadAsync(length));
    }

    public async Task<(ushort Flags, NbdChunkType Type, ulong Cookie, byte[] Data)> ReadChunkAsync()
    {
        var header = await ReadAsync(20);
        if (BinaryPrimitives.ReadUInt32BigEndian(header) != NbdProtocol.StructuredReplyMagic)
        {
            throw new InvalidDataException("bad structured reply magic");
        }

        return (BinaryPrimitives.ReadUInt16BigEndian(header.AsSpan(4)), (NbdChunkType)BinaryPrimitives.ReadUInt16BigEndian(header.AsSpan(6)),
            BinaryPrimitives.ReadUInt64BigEndian(header.AsSpan(8)), await ReadAsync((int)BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(16))));
    }

    public async Task WriteU32Async(uint value)
    {
        var b = new byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(b, value);
        await WriteAsync(b);
    }

    public async Task WriteAsync(byte[] data) => await _stream.WriteAsync(data).AsTask().WaitAsync(Timeout);

    public async Task<byte[]> ReadAsync(int count)
    {
        var buffer = new byte[count];
        await _stream.ReadExactlyAsync(buffer).AsTask().WaitAsync(Timeout);
        return buffer;
    }

    /// <summary>
    /// For a connection still negotiating when the server begins to stop: sends NBD_OPT_LIST until
    /// the server answers one with NBD_REP_ERR_SHUTDOWN (true), or closes the connection (false;
    /// its shutdown grace ended first), so the caller knows the stop has begun.
    /// </summary>
    public async Task<bool> AwaitShutdownAsync()
    {
        try
        {
            while (true)
            {
                await SendOptionAsync(NbdOption.List, []);
                while (true)
                {
                    var reply = await ReadOptionReplyAsync();
                    if (reply.Type == NbdReply.ErrShutdown)
                    {
                        return true;
                    }

                    if (reply.Type == NbdReply.Ack)
                    {
                        break;
                    }
                }
            }
        }
        catch (IOException)
        {
            // End of stream (EndOfStreamException) or a reset: closed.
            return false;
        }
    }

    /// <summary>True when the server closed the connection (a read returns end of stream or a reset).</summary>
    public async Task<bool> ClosedByServerAsync()
    {
        try
        {
            var one = new byte[1];
            return await _stream.ReadAsync(one).AsTask().WaitAsync(Timeout) == 0;
        }
        catch (IOException)
        {
            return true;
        }
    }

    /// <summary>Every byte the server still sends until it closes the connection (end of stream or reset).</summary>
    public async Task<byte[]> ReadUntilClosedAsync()
    {
        var all = new MemoryStream();
        var buffer = new byte[8192];
        try
        {
            for (int read; (read = await _stream.ReadAsync(buffer).AsTask().WaitAsync(Timeout)) > 0;)
            {
                all.Write(buffer, 0, read);
            }
        }
        catch (IOException)
        {
            // Reset: closed too.
        }

        return all.ToArray();
    }

    /// <summary>
    /// Every byte the server still sends until it closes the connection, read from the socket
    /// under any TLS session: after a TLS session's last reply, what the server sends to end it
    /// (close_notify, an alert record) and nothing else.
    /// </summary>
    public async Task<byte[]> ReadRawUntilClosedAsync()
    {
        var all = new MemoryStream();
        var buffer = new byte[8192];
        try
        {
            for (int read; (read = await _socket.ReceiveAsync(buffer, SocketFlags.None).WaitAsync(Timeout)) > 0;)
            {
                all.Write(buffer, 0, read);
            }
        }
        catch (SocketException)
        {
            // Reset: closed too.
        }

        return all.ToArray();
    }

    /// <summary>Shuts the sending side down (FIN), as libnbd does after NBD_CMD_DISC; replies can still be read.</summary>
    public void ShutdownSend() => _socket.Shutdown(SocketShutdown.Send);

    /// <summary>Drops the connection at once (RST), as a crashed client would.</summary>
    public void Vanish()
    {
        _socket.LingerState = new LingerOption(true, 0);
        _socket.Close();
    }

    public async ValueTask DisposeAsync()
    {
        await _stream.DisposeAsync();
    }
}
