using System.Buffers;
using System.Buffers.Binary;
using System.IO.Pipelines;
using System.Security.Cryptography.X509Certificates;
using System.Net.Sockets;
using System.Runtime.CompilerServices;
using ActorBlk.Hardware.Nbd;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;

namespace ActorBlk.Hardware.Drivers.Nbd;

// The connection's state and construction, the transmission phase (the send pipe, the pump, the
// receiver and its replies) and the connection's end (kill, close, disconnect, loss). Connect and
// the negotiation are in NbdClientConnection.Negotiation.cs.

/// <summary>
/// One NBD connection of the client driver, serving one hardware queue (as Linux's nbd driver
/// does): requests are written into a send pipe by the queue's dispatcher and pushed to the socket
/// by a pump; a receiver matches replies to requests by cookie (generation, tag and flush-sequence stage) and completes
/// them. With structured replies negotiated (<see cref="Structured"/>) a read's data comes in
/// <c>NBD_REPLY_TYPE_OFFSET_DATA</c> and <c>NBD_REPLY_TYPE_OFFSET_HOLE</c> chunks, in any order, and
/// with the <c>base:allocation</c> context (<see cref="AllocationContext"/>) the connection answers
/// block status questions (<see cref="GetExtentAsync"/>); otherwise a read's data follows its
/// 16-byte simple reply header.
/// </summary>
internal sealed partial class NbdClientConnection : IDisposable
{
    private const int MaxTags = 1 << 14;

    private readonly Socket _socket;
    private readonly Stream _stream;
    private readonly Pipe _send = new(new PipeOptions(pauseWriterThreshold: 0, resumeWriterThreshold: 0, useSynchronizationContext: false));
    private readonly Pending[] _pending = new Pending[MaxTags];
    private readonly Lock _sendLock = new();
    private HardwareContext? _hctx;
    private Task _pump = Task.CompletedTask;
    private Task _receiver = Task.CompletedTask;
    private int _started;
    private int _dead;

    // Why this client shut the connection down (Kill(why)), for the loss the receiver reports.
    private string? _killedBecause;

    // The pump and the receiver still using _stream; the last to end disposes it (a TLS stream
    // holds native state the socket's close does not free).
    private int _streamUsers;
    private int _streamDisposed;

    // The receiver copying a read's data into a request (CopyBusy), or fenced off from requests for
    // good once the connection is killed or closed (CopyFenced): see ReadDataAsync and Fence.
    private const int CopyOpen = 0;
    private const int CopyBusy = 1;
    private const int CopyFenced = 2;
    private int _copy;

    // Requests sent (or in the send pipe) whose reply has not come; the receiver's alone to lower.
    private int _outstanding;

    // Block status questions sent whose answer has not come (GetExtentAsync); the receiver's alone
    // to lower. Not in _outstanding: a connection closing after NBD_ESHUTDOWN waits for its
    // requests only. A question is no request of the block layer, has no io_timeout, and its slot
    // stays taken until its answer: counted there, one the server never answered kept the closing
    // connection from ever disconnecting, and the request refused with ESHUTDOWN (which the
    // connection no longer holds, so its timeout blames nothing) waited for ever (a review).
    private int _questions;

    // No more requests go out (NBD_ESHUTDOWN seen): the outstanding ones are let finish, then
    // NBD_CMD_DISC. Written under _sendLock.
    private bool _closing;

    // NBD_CMD_DISC is in the send pipe and its writer completed: nothing more may be written.
    private bool _disconnected;

    // The client certificate of a tls-certificates directory (with its key), disposed with the stream.
    private readonly X509Certificate2? _clientCertificate;

    private NbdClientConnection(Socket socket, Stream stream, ulong size, NbdTransmissionFlags flags, uint minimumBlock, uint maximumPayload, string? description, X509Certificate2? clientCertificate)
    {
        _clientCertificate = clientCertificate;
        Description = description;
        _socket = socket;
        _stream = stream;
        Size = size;
        Flags = flags;
        MinimumBlock = minimumBlock;
        MaximumPayload = maximumPayload;
        for (var i = 0; i < _pending.Length; i++)
        {
            _pending[i] = new Pending();
        }

        for (var i = 0; i < _queries.Length; i++)
        {
            _queries[i] = new StatusQuery();
        }
    }

    public ulong Size { get; }

    /// <summary>Structured replies were negotiated (<c>NBD_OPT_STRUCTURED_REPLY</c> acknowledged).</summary>
    public bool Structured { get; private init; }

    /// <summary>The id the server gave the <c>base:allocation</c> metadata context, or null when none was negotiated.</summary>
    public uint? AllocationContext { get; private init; }

    public NbdTransmissionFlags Flags { get; }

    public uint MinimumBlock { get; }

    public uint MaximumPayload { get; }

    /// <summary>The export's description (<c>NBD_INFO_DESCRIPTION</c>), or null when the server sent none.</summary>
    public string? Description { get; }

    public bool IsDead => Volatile.Read(ref _dead) != 0;

    /// <summary>
    /// The server said it is shutting down (an <c>NBD_ESHUTDOWN</c> reply): no new request is
    /// taken, and once the outstanding ones are answered the connection disconnects and is
    /// reported lost.
    /// </summary>
    public bool IsClosing => Volatile.Read(ref _closing);

    /// <summary>Requests sent whose reply has not come, for specs.</summary>
    internal int Outstanding => Volatile.Read(ref _outstanding);

    /// <summary>
    /// True while this incarnation of <paramref name="request"/> (its tag and generation) went out
    /// on this connection and its reply has not come: the connection a timeout of it may blame.
    /// </summary>
    public bool Holds(Request request)
    {
        ArgumentNullException.ThrowIfNull(request);
        var tag = request.Tag;
        if ((uint)tag >= MaxTags)
        {
            return false;
        }

        var pending = _pending[tag];
        return ReferenceEquals(Volatile.Read(ref pending.Request), request) && pending.Generation == request.Generation;
    }

    /// <summary>
    /// Starts the pump and the receiver for <paramref name="hctx"/>, once: a later call only
    /// updates the hardware queue. (A reconnect starts its fresh connection, and in mailbox
    /// dispatch the new driver actor's first round calls InitHardwareContext, which started it
    /// again: two receivers then split one socket's replies between them.)
    /// </summary>
    public void Start(HardwareContext hctx)
    {
        _hctx = hctx;
        if (Interlocked.CompareExchange(ref _started, 1, 0) != 0)
        {
            return; // started already, or closed before it was started (2)
        }

        Volatile.Write(ref _streamUsers, 2);
        _pump = Task.Run(PumpAsync);
        _receiver = Task.Run(ReceiveAsync);
    }

    // The pump or the receiver ended: the last of them disposes the stream, which nothing else
    // reads or writes once both are gone (NBD_CMD_DISC at a close is written before the pump ends).
    private void ReleaseStream()
    {
        if (Interlocked.Decrement(ref _streamUsers) == 0)
        {
            DisposeStream();
        }
    }

    private void DisposeStream()
    {
        try
        {
            _stream.Dispose();
        }
        catch (Exception ex) when (ex is IOException or SocketException or ObjectDisposedException or InvalidOperationException)
        {
            // The socket is closed already; nothing is left to say to the peer.
        }

        _clientCertificate?.Dispose();
        Volatile.Write(ref _streamDisposed, 1);
    }

    /// <summary>
    /// For specs: awaited by the receiver with a read's data in hand, before it copies any into the
    /// request. A throw from it is an unexpected error of the receiver (the connection is lost).
    /// </summary>
    internal Func<Task>? BeforeCopy { get; set; }

    /// <summary>The receiver, which ends when the connection does, for specs.</summary>
    internal Task Receiver => _receiver;

    /// <summary>The connection's socket, for specs that look at its kernel queues.</summary>
    internal Socket Transport => _socket;

    /// <summary>True once the connection's stream (a TLS stream's native state with it) is disposed, for specs.</summary>
    internal bool StreamDisposed => Volatile.Read(ref _streamDisposed) != 0;

    /// <summary>How often <see cref="Start"/> started the pump and the receiver (at most once).</summary>
    internal int Started => Volatile.Read(ref _started) == 1 ? 1 : 0;

    /// <summary>
    /// Writes one request into the send pipe (the dispatcher's thread); sent at <see cref="Push"/>.
    /// False, with nothing written, once the connection takes no more requests (closing after
    /// <c>NBD_ESHUTDOWN</c>, disconnected, or dead).
    /// </summary>
    /// <remarks>
    /// The kernel's flush sequence (blk-flush.c) for a device with a volatile cache: with
    /// <paramref name="preFlush"/> an <c>NBD_CMD_FLUSH</c> goes first and the command only once the
    /// flush is answered; with <paramref name="postFlush"/> (FUA the server cannot take) a flush
    /// follows once the command is answered. The request completes with the last reply, or the
    /// first error.
    /// </remarks>
    public bool TryEnqueue(Request request, NbdCommand command, NbdCommandFlags flags, bool preFlush, bool postFlush) => preFlush
        ? TryWrite(request, NbdCommand.Flush, NbdCommandFlags.None, (command, flags), postFlush, stage: 0, push: false)
        : TryWrite(request, command, flags, next: null, postFlush, stage: 0, push: false);

    // Writes one stage of a request, remembering the stages after it; with push, hands it to the
    // pump at once (the receiver sending a flush sequence's next stage). False when the connection
    // takes no more requests.
    private bool TryWrite(Request request, NbdCommand command, NbdCommandFlags flags, (NbdCommand Command, NbdCommandFlags Flags)? next, bool postFlush, int stage, bool push)
    {
        lock (_sendLock)
        {
            if (_closing || _disconnected || IsDead)
            {
                return false;
            }

            var pending = Write(request, command, flags, stage);
            pending.Next = next;
            pending.PostFlush = postFlush;
            if (push)
            {
                Flush();
            }

            return true;
        }
    }

    private Pending Write(Request request, NbdCommand command, NbdCommandFlags flags, int stage)
    {
        var tag = request.Tag;
        var generation = request.Generation;
        var pending = _pending[tag];

        // The request is published last, with a release store, and the receiver reads it first,
        // with an acquire load: a receiver that sees this request sees its generation, stage and
        // length too. Written first (as it was), a duplicate reply to the tag's previous request
        // arriving while the slot was refilled could be matched against the new request with the
        // old generation still visible, and complete it with that reply (an outside audit with a
        // hostile server; a race of nanoseconds, no spec).
        pending.Generation = generation;
        pending.Stage = stage;
        pending.Read = command == NbdCommand.Read;
        pending.Length = command == NbdCommand.Read ? request.Bytes : 0;
        pending.Offset = request.Offset;
        pending.Error = NbdError.None;
        pending.Covered = 0;
        pending.RunCount = 0;
        pending.Mapped = false;
        Volatile.Write(ref pending.Request, request);
        Interlocked.Increment(ref _outstanding);
        var writer = _send.Writer;
        var span = writer.GetSpan(NbdProtocol.RequestHeaderLength);
        BinaryPrimitives.WriteUInt32BigEndian(span, NbdProtocol.RequestMagic);
        BinaryPrimitives.WriteUInt16BigEndian(span[4..], (ushort)flags);
        BinaryPrimitives.WriteUInt16BigEndian(span[6..], (ushort)command);
        BinaryPrimitives.WriteUInt64BigEndian(span[8..], Cookie(generation, tag, stage));
        BinaryPrimitives.WriteUInt64BigEndian(span[16..], command == NbdCommand.Flush ? 0 : (ulong)request.Offset);
        BinaryPrimitives.WriteUInt32BigEndian(span[24..], command == NbdCommand.Flush ? 0 : (uint)request.Bytes);
        writer.Advance(NbdProtocol.RequestHeaderLength);
        if (command == NbdCommand.Write)
        {
            foreach (var bio in request.Bios)
            {
                writer.Write(bio.Buffer.Span[..bio.Size]);
            }
        }

        return pending;
    }

    /// <summary>Hands what was enqueued to the pump (the doorbell).</summary>
    public void Push()
    {
        lock (_sendLock)
        {
            if (!_disconnected)
            {
                Flush();
            }
        }
    }

    private void Flush()
    {
        // The send pipe never pauses its writer (pauseWriterThreshold 0), so this completes at once.
        var flush = _send.Writer.FlushAsync();
        if (flush.IsCompleted)
        {
            flush.GetAwaiter().GetResult();
        }
        else
        {
            _ = flush.AsTask();
        }
    }

    /// <summary>
    /// Initiates a soft disconnect (proto.md): writes <c>NBD_CMD_DISC</c> (offset and length zero,
    /// no reply) as the last thing in the send pipe and completes it, so the pump sends it and
    /// stops. Nothing is written after it. False if it was sent already.
    /// </summary>
    private bool SendDisconnect()
    {
        lock (_sendLock)
        {
            if (_disconnected)
            {
                return false;
            }

            _closing = true;
            _disconnected = true;
            var writer = _send.Writer;
            WriteDisconnect(writer.GetSpan(NbdProtocol.RequestHeaderLength));
            writer.Advance(NbdProtocol.RequestHeaderLength);
            Flush();
            writer.Complete();
            return true;
        }
    }

    /// <summary>
    /// Closes the socket abortively (a reset: requests the kernel has not delivered to the server
    /// yet are dropped, never delivered later); the receiver then reports the connection lost.
    /// </summary>
    public void Kill() => Kill(null);

    /// <summary>
    /// Shuts the connection down as <see cref="Kill()"/>, saying why: the loss the receiver then
    /// reports names this client's reason rather than "the server closed the connection" (a
    /// verifying helper saw every timeout reported as the server's close).
    /// </summary>
    public void Kill(string? why) => Kill(why, abortive: true);

    // A killed connection is closed abortively (SO_LINGER 0: the kernel drops what it has not
    // delivered yet and resets the connection). Its requests are failed or sent again on a new
    // connection, so none of its bytes may reach the server later. A plain shutdown queued its FIN
    // behind them, and the kernel kept sending them after the client had given the server up: an
    // outside partition audit cut a mirror's remote leg off for 14 s under writes; the writes in
    // flight failed on that leg (the mirror acknowledged them from the other), the leg came back
    // and was resynced from the bitmap, and then the old connection's retransmissions delivered
    // those stale writes to the leg's owner, which applied them over the resynced data: the legs
    // differed in 13 blocks while md said 2/2 in sync. Only an orderly close (NBD_CMD_DISC sent
    // with nothing outstanding) keeps the graceful shutdown.
    private void Kill(string? why, bool abortive)
    {
        if (why is not null)
        {
            Interlocked.CompareExchange(ref _killedBecause, why, null);
        }

        try
        {
            if (abortive)
            {
                _socket.LingerState = new LingerOption(true, 0);
            }

            _socket.Shutdown(SocketShutdown.Both);
        }
        catch (Exception ex) when (ex is SocketException or ObjectDisposedException)
        {
        }

        if (abortive)
        {
            // The close is what drops the send queue and resets; the shutdown above has already
            // woken the receiver, which reports the loss.
            _socket.Dispose();
        }

        Fence();
        AbandonQueries();
    }

    /// <summary>
    /// Shuts the connection down as <see cref="Kill(string)"/> for a block layer that is failing its
    /// requests itself (<see cref="IBlockDriver.Abandon"/>): once this returns the receiver copies
    /// nothing more into them and drops the replies it gets, and the connection is dead without
    /// being reported lost.
    /// </summary>
    internal void Abandon(string why)
    {
        Interlocked.Exchange(ref _dead, 1);
        Kill(why);
    }

    /// <summary>
    /// Closes the connection with a soft disconnect while it is alive and nothing is outstanding
    /// (<see cref="Close"/>), without waiting for the server's own close: a dispose runs on the
    /// thread that destroys the device (an actor's), which must not wait for a peer.
    /// </summary>
    public void Dispose() => Close();

    /// <summary>
    /// Closes the connection. While it is alive this is an orderly close (proto.md's soft
    /// disconnect): <c>NBD_CMD_DISC</c> goes out after everything already enqueued, the sending side
    /// is shut down (waiting at most <see cref="DisconnectWait"/> for it to go out), and the
    /// connection closes without waiting for the server's own close. A dead connection, or one
    /// with requests outstanding, is closed abortively (a reset; what the kernel has not delivered
    /// is dropped, see <see cref="Kill(string)"/>): proto.md has the client wait for its requests before a soft disconnect, and a
    /// reconnect retries them on the new connection, where the server's finishing the old ones
    /// after the disconnect could reorder them.
    /// </summary>
    public void Close()
    {
        var orderly = false;
        if (Interlocked.Exchange(ref _dead, 1) == 0 && Volatile.Read(ref _outstanding) == 0 && Volatile.Read(ref _questions) == 0)
        {
            try
            {
                Disconnect();
                orderly = true;
            }
            catch (Exception ex) when (ex is IOException or SocketException or ObjectDisposedException or InvalidOperationException or AggregateException)
            {
                // Going away anyway: the disconnect is a courtesy to the server.
            }
        }

        // A close with requests outstanding (or a dead connection) is a kill: abortive, so the
        // server never gets them after the client has moved on.
        Kill(null, abortive: !orderly);
        lock (_sendLock)
        {
            _disconnected = true;
            _send.Writer.Complete();
        }

        _socket.Dispose();
        if (Interlocked.CompareExchange(ref _started, 2, 0) == 0)
        {
            // Never started (and now never will be): no pump or receiver owns the stream.
            DisposeStream();
        }
    }

    /// <summary>How long an orderly close waits for NBD_CMD_DISC to go out.</summary>
    internal static readonly TimeSpan DisconnectWait = TimeSpan.FromSeconds(2);

    private void Disconnect()
    {
        if (Volatile.Read(ref _started) == 0)
        {
            // Never started (a driver refusing the export after negotiation): no pump, so the
            // request goes to the stream directly; nothing was sent before it.
            lock (_sendLock)
            {
                if (_disconnected)
                {
                    return;
                }

                _disconnected = true;
            }

            var disc = new byte[NbdProtocol.RequestHeaderLength];
            WriteDisconnect(disc);
            _socket.SendTimeout = (int)DisconnectWait.TotalMilliseconds;
            _stream.Write(disc);
            _stream.Flush();
            _socket.Shutdown(SocketShutdown.Send);
            return;
        }

        if (!SendDisconnect())
        {
            return; // sent already (NBD_ESHUTDOWN), and the receiver reports the connection lost
        }

        if (!_pump.Wait(DisconnectWait))
        {
            return;
        }

        _socket.Shutdown(SocketShutdown.Send);
    }

    // NBD_CMD_DISC: offset, length and cookie zero, no reply.
    private static void WriteDisconnect(Span<byte> header)
    {
        header[..NbdProtocol.RequestHeaderLength].Clear();
        BinaryPrimitives.WriteUInt32BigEndian(header, NbdProtocol.RequestMagic);
        BinaryPrimitives.WriteUInt16BigEndian(header[6..], (ushort)NbdCommand.Disconnect);
    }

    private async Task PumpAsync()
    {
        var reader = _send.Reader;
        try
        {
            while (true)
            {
                var result = await reader.ReadAsync().ConfigureAwait(false);
                foreach (var segment in result.Buffer)
                {
                    await _stream.WriteAsync(segment).ConfigureAwait(false);
                }

                reader.AdvanceTo(result.Buffer.End);
                if (result.IsCompleted)
                {
                    return;
                }
            }
        }
        catch (Exception ex) when (ex is IOException or SocketException or ObjectDisposedException or InvalidOperationException)
        {
            Lost(ex.Message);
        }
        catch (Exception ex)
        {
            // A bug (no other exception is expected here): the connection is lost all the same.
            Lost("the send pump", ex);
        }
        finally
        {
            await reader.CompleteAsync().ConfigureAwait(false);
            ReleaseStream();
        }
    }

    private async Task ReceiveAsync()
    {
        var reader = PipeReader.Create(_stream, new StreamPipeReaderOptions(leaveOpen: true));
        try
        {
            while (true)
            {
                // A simple reply's header is the shorter: a structured chunk's is read on once its
                // magic says so (waiting for 20 bytes held a write's 16-byte reply back).
                var result = await reader.ReadAtLeastAsync(NbdProtocol.SimpleReplyHeaderLength).ConfigureAwait(false);
                var buffer = result.Buffer;
                if (buffer.Length < NbdProtocol.SimpleReplyHeaderLength)
                {
                    Lost(Volatile.Read(ref _killedBecause) ?? "the server closed the connection");
                    return;
                }

                Step step;
                if (ReadMagic(buffer) == NbdProtocol.StructuredReplyMagic && Structured)
                {
                    // Nothing consumed: the chunk's header is read again whole.
                    reader.AdvanceTo(buffer.Start);
                    step = await ReceiveChunkAsync(reader).ConfigureAwait(false);
                }
                else
                {
                    step = await ReceiveSimpleAsync(reader, buffer).ConfigureAwait(false);
                }

                if (step == Step.Stop)
                {
                    return;
                }
            }
        }
        catch (Exception ex) when (ex is IOException or SocketException or ObjectDisposedException or InvalidOperationException or OperationCanceledException)
        {
            // A connection this client killed (a request timed out) often ends in a reset or an
            // error of the shut-down socket, not an end of stream: the reason is still ours.
            Lost(Volatile.Read(ref _killedBecause) ?? ex.Message);
        }
        catch (Exception ex)
        {
            // A bug (an ArgumentOutOfRangeException copying a reply's data, a NullReferenceException):
            // ended unobserved, the receiver left the connection looking alive and its requests
            // waiting for ever with no io_timeout. It is lost, and the usual loss path runs.
            Lost("the receiver", ex);
        }
        finally
        {
            await reader.CompleteAsync().ConfigureAwait(false);
            ReleaseStream();
        }
    }

    // What the receiver does after a reply or chunk: read the next, or stop (the connection is lost).
    private enum Step
    {
        Next,
        Stop,
    }

    private static uint ReadMagic(ReadOnlySequence<byte> buffer)
    {
        Span<byte> magic = stackalloc byte[4];
        buffer.Slice(0, 4).CopyTo(magic);
        return BinaryPrimitives.ReadUInt32BigEndian(magic);
    }

    // A simple reply (16 bytes, in the buffer): a read's data follows it when structured replies
    // are not negotiated; with them, proto.md has the server answer NBD_CMD_READ with a structured
    // reply only ("MUST NOT use a simple reply for NBD_CMD_READ (even for the case of an early
    // EINVAL)"), and NBD_CMD_BLOCK_STATUS's success is a NBD_REPLY_TYPE_BLOCK_STATUS chunk.
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    private async ValueTask<Step> ReceiveSimpleAsync(PipeReader reader, ReadOnlySequence<byte> buffer)
    {
        var magicOk = ParseReply(buffer.Slice(0, NbdProtocol.SimpleReplyHeaderLength), out var error, out var cookie);
        reader.AdvanceTo(buffer.GetPosition(NbdProtocol.SimpleReplyHeaderLength));
        if (!magicOk)
        {
            Lost("bad reply magic");
            return Step.Stop;
        }

        var tag = (int)(cookie & 0xffff);
        var stage = (int)((cookie >> 16) & 0xffff);
        var generation = (uint)(cookie >> 32);
        if (stage == QueryStage)
        {
            if (QueryOf(tag, generation) is not { } query)
            {
                Lost($"a reply for unknown cookie 0x{cookie:x}");
                return Step.Stop;
            }

            if (error == NbdError.None)
            {
                Lost("a simple reply without error to NBD_CMD_BLOCK_STATUS (its answer is an NBD_REPLY_TYPE_BLOCK_STATUS chunk)");
                return Step.Stop;
            }

            query.Failed = true;
            if (error == NbdError.Shutdown)
            {
                ShutdownSeen();
            }

            return await FinishQueryAsync(query).ConfigureAwait(false);
        }

        if ((uint)tag >= MaxTags || Volatile.Read(ref _pending[tag].Request) is not { } request || _pending[tag].Generation != generation || _pending[tag].Stage != stage)
        {
            // Framing depends on knowing the request (a read's data follows): a reply we
            // cannot match leaves the stream unparseable.
            Lost($"a reply for unknown cookie 0x{cookie:x}");
            return Step.Stop;
        }

        var pending = _pending[tag];
        if (pending.Read && Structured)
        {
            Lost($"a simple reply to NBD_CMD_READ (cookie 0x{cookie:x}) after structured replies were negotiated");
            return Step.Stop;
        }

        if (pending.Read && error == NbdError.None && !await ReadDataAsync(reader, request, 0, pending.Length).ConfigureAwait(false))
        {
            // The connection was killed or closed with the data unread: its requests are
            // the block layer's now (requeued or failed), and nothing more is read here.
            Lost(Volatile.Read(ref _killedBecause) ?? "the connection was closed");
            return Step.Stop;
        }

        return await FinishAsync(pending, request, generation, error).ConfigureAwait(false);
    }

    // The largest error chunk this client takes (read whole into the reader's buffer): a message
    // of at most 4096 bytes with its fixed part fits well. Past it the peer claims a length no
    // error chunk has: the connection is lost.
    private const int MaxControlPayload = 64 << 10;

    // The largest block status chunk this client takes: 2^25 bytes, the payload proto.md says
    // "SHOULD NOT be considered a denial of service attack" (its 2^20 extents, which servers
    // "SHOULD NOT" exceed, are 8 MiB). Only the first extent is kept (NBD_CMD_FLAG_REQ_ONE asks for
    // one; qemu's nbd_parse_blockstatus_payload ignores the extras) and the rest is read past
    // without a buffer. Past it the connection is lost (a denial of service, which the protocol
    // lets the client end). Before, a chunk over 64 KiB (8,191 extents) lost the connection.
    private const int MaxBlockStatusPayload = NbdProtocol.MaxTolerablePayload;

    // NBD_REPLY_FLAG_DONE: the last chunk of a reply.
    private const ushort ReplyFlagDone = 1;

    // One structured reply chunk (proto.md, "Structured reply chunk message"), its 20-byte header
    // in the reader. Every length the peer claims is checked against the request's own before
    // anything is read or taken: a data chunk outside the read's range, overlapping another, or a
    // read whose DONE comes before its data covered it fails that request (EIO) and nothing is
    // copied; a chunk that cannot be framed or breaks a MUST (an unknown cookie, an oversized
    // length, a fixed-size chunk of another size, an unknown non-error type, NONE without DONE, a
    // data chunk for a command that has none) loses the connection, as a bad simple reply does.
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    private async ValueTask<Step> ReceiveChunkAsync(PipeReader reader)
    {
        var result = await reader.ReadAtLeastAsync(NbdProtocol.StructuredReplyHeaderLength).ConfigureAwait(false);
        var buffer = result.Buffer;
        if (buffer.Length < NbdProtocol.StructuredReplyHeaderLength)
        {
            Lost(Volatile.Read(ref _killedBecause) ?? "the server closed the connection inside a reply chunk's header");
            return Step.Stop;
        }

        Span<byte> header = stackalloc byte[NbdProtocol.StructuredReplyHeaderLength];
        buffer.Slice(0, NbdProtocol.StructuredReplyHeaderLength).CopyTo(header);
        reader.AdvanceTo(buffer.GetPosition(NbdProtocol.StructuredReplyHeaderLength));
        var done = (BinaryPrimitives.ReadUInt16BigEndian(header[4..]) & ReplyFlagDone) != 0;
        var type = (NbdChunkType)BinaryPrimitives.ReadUInt16BigEndian(header[6..]);
        var cookie = BinaryPrimitives.ReadUInt64BigEndian(header[8..]);
        var length = BinaryPrimitives.ReadUInt32BigEndian(header[16..]);
        var tag = (int)(cookie & 0xffff);
        var stage = (int)((cookie >> 16) & 0xffff);
        var generation = (uint)(cookie >> 32);
        if (stage == QueryStage)
        {
            return QueryOf(tag, generation) is { } query
                ? await QueryChunkAsync(reader, query, type, length, done).ConfigureAwait(false)
                : LostStep($"a reply chunk for unknown cookie 0x{cookie:x}");
        }

        if ((uint)tag >= MaxTags || Volatile.Read(ref _pending[tag].Request) is not { } request || _pending[tag].Generation != generation || _pending[tag].Stage != stage)
        {
            return LostStep($"a reply chunk for unknown cookie 0x{cookie:x}");
        }

        var pending = _pending[tag];
        switch (type)
        {
            case NbdChunkType.OffsetData when pending.Read:
            {
                if (length <= 8 || length - 8 > (uint)pending.Length)
                {
                    return LostStep($"an NBD_REPLY_TYPE_OFFSET_DATA chunk of {length} bytes for a read of {pending.Length}");
                }

                var offset = await ReadU64Async(reader).ConfigureAwait(false);
                if (offset is not { } at)
                {
                    return LostStep(Volatile.Read(ref _killedBecause) ?? "the server closed the connection inside a reply chunk");
                }

                var size = (int)(length - 8);
                if (!pending.Take(at, size))
                {
                    // Outside the read, or over data already given: the request fails; the chunk
                    // is read past, never copied.
                    await SkipAsync(reader, size).ConfigureAwait(false);
                }
                else if (!await ReadDataAsync(reader, request, (int)(at - (ulong)pending.Offset), size).ConfigureAwait(false))
                {
                    return LostStep(Volatile.Read(ref _killedBecause) ?? "the connection was closed");
                }

                break;
            }

            case NbdChunkType.OffsetHole when pending.Read:
            {
                if (length != 12)
                {
                    return LostStep($"an NBD_REPLY_TYPE_OFFSET_HOLE chunk of {length} bytes (it is 12)");
                }

                if (await ReadPayloadAsync(reader, 12).ConfigureAwait(false) is not { } payload)
                {
                    return LostStep(Volatile.Read(ref _killedBecause) ?? "the server closed the connection inside a reply chunk");
                }

                var at = ReadU64(payload);
                var size = ReadU32(payload.Slice(8));
                reader.AdvanceTo(payload.End);
                if (pending.Take(at, (long)size) && !ZeroFill(request, (int)(at - (ulong)pending.Offset), (int)size))
                {
                    return LostStep(Volatile.Read(ref _killedBecause) ?? "the connection was closed");
                }

                break;
            }

            case NbdChunkType.None:
                if (length != 0 || !done)
                {
                    return LostStep(length != 0 ? $"an NBD_REPLY_TYPE_NONE chunk of {length} bytes (it has none)" : "an NBD_REPLY_TYPE_NONE chunk without NBD_REPLY_FLAG_DONE");
                }

                break;

            default:
                if (((ushort)type & 0x8000) == 0)
                {
                    return LostStep(type is NbdChunkType.OffsetData or NbdChunkType.OffsetHole or NbdChunkType.BlockStatus
                        ? $"a reply chunk of type {type} for a command that takes none"
                        : $"a reply chunk of unknown type {(ushort)type}");
                }

                if (await ReadErrorAsync(reader, type, length, pending.Read ? "a read" : "a request").ConfigureAwait(false) is not { } error)
                {
                    return Step.Stop;
                }

                pending.Fail(error);
                break;
        }

        if (!done)
        {
            return Step.Next;
        }

        // A read is answered only when its data (and holes) covered it; DONE before that is the
        // server's failure to send the rest, an I/O error of the request.
        var outcome = pending.Error != NbdError.None ? pending.Error : pending.Read && pending.Covered != pending.Length ? NbdError.Io : NbdError.None;
        return await FinishAsync(pending, request, generation, outcome).ConfigureAwait(false);
    }

    private Step LostStep(string why)
    {
        Lost(why);
        return Step.Stop;
    }

    // An error chunk (NBD_REPLY_TYPE_ERROR, ERROR_OFFSET, or an unknown type with the error bit,
    // which proto.md has the client take as an error): its 32-bit error, and for the known types
    // a message length that fits the chunk ("no more than header length - 6", or - 14). Bytes
    // after the message are skipped, as libnbd does ("ignoring unexpected slop after error
    // message"); a message longer than the chunk loses the connection. Required to frame the
    // chunk exactly, an error with trailing bytes lost the connection, and the read retried on
    // the next got the same answer (a review). A zero error is EIO. A message is logged for the
    // operator (WarnServerMessage). Null when the connection is lost.
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    private async ValueTask<NbdError?> ReadErrorAsync(PipeReader reader, NbdChunkType type, uint length, string what)
    {
        var fixedPart = type switch
        {
            NbdChunkType.Error => 6,
            NbdChunkType.ErrorOffset => 14,
            _ => 4,
        };
        if (length < fixedPart || length > MaxControlPayload)
        {
            Lost($"an error chunk of type {(ushort)type} of {length} bytes");
            return null;
        }

        if (await ReadPayloadAsync(reader, (int)length).ConfigureAwait(false) is not { } payload)
        {
            Lost(Volatile.Read(ref _killedBecause) ?? "the server closed the connection inside a reply chunk");
            return null;
        }

        var error = (NbdError)ReadU32(payload);
        var message = fixedPart > 4 ? ReadU16(payload.Slice(4)) : 0;
        if (fixedPart > 4 && message > length - fixedPart)
        {
            reader.AdvanceTo(payload.End);
            Lost($"an error chunk of type {type} of {length} bytes with a message of {message}");
            return null;
        }

        if (message > 0)
        {
            WarnServerMessage(what, error, payload.Slice(6, message), type == NbdChunkType.ErrorOffset ? ReadU64(payload.Slice(6 + message)) : null);
        }

        reader.AdvanceTo(payload.End);
        return error == NbdError.None ? NbdError.Io : error;
    }

    // The longest part of a server's error message shown: proto.md's string limit.
    private const int MaxMessageBytes = 4096;

    // Error messages the server sent on this connection, and when the last was logged (LogLimit).
    private long _serverMessages;
    private long _serverMessageLogged;

    // An error chunk's message, "suitable for display to a human user": the operator sees the
    // server's reason as a warning (IQueueEvents.OnDriverWarning), the first and then a line a
    // minute (a server can fail every request), on one line (control characters escaped), at
    // most 4096 bytes of it. Before, only the error number reached the request's error.
    private void WarnServerMessage(string what, NbdError error, ReadOnlySequence<byte> text, ulong? offset)
    {
        var count = Interlocked.Increment(ref _serverMessages);
        if (_hctx is not { Queue.Events: { } events } hctx || !LogLimit.FirstOrAMinuteOn(count, ref _serverMessageLogged))
        {
            return;
        }

        var shown = ControlCharacters.Escape(System.Text.EncodingExtensions.GetString(System.Text.Encoding.UTF8, text.Slice(0, Math.Min(text.Length, MaxMessageBytes))));
        var at = offset is { } where ? $" at offset {where}" : string.Empty;
        try
        {
            events.OnDriverWarning(hctx, $"the NBD server failed {what} with error {(uint)error}{at}: \"{shown}\"; {count} error message(s) from the server so far");
        }
#pragma warning disable CA1031 // the log's failure must not end the receiver (IQueueEvents: an exception is dropped)
        catch (Exception)
#pragma warning restore CA1031
        {
        }
    }

    // A block status question's chunk: one NBD_REPLY_TYPE_BLOCK_STATUS for the negotiated
    // context (qemu's nbd_parse_blockstatus_payload: an extent of zero length, another context's
    // id, or a second chunk fail the question; an extent past the range asked is cut to it; with
    // NBD_CMD_FLAG_REQ_ONE extents after the first are ignored), NONE, or an error.
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    private async ValueTask<Step> QueryChunkAsync(PipeReader reader, StatusQuery query, NbdChunkType type, uint length, bool done)
    {
        switch (type)
        {
            case NbdChunkType.BlockStatus:
            {
                if (length < 12 || (length - 4) % 8 != 0 || length > MaxBlockStatusPayload)
                {
                    return LostStep($"an NBD_REPLY_TYPE_BLOCK_STATUS chunk of {length} bytes");
                }

                if (await ReadPayloadAsync(reader, 12).ConfigureAwait(false) is not { } payload)
                {
                    return LostStep(Volatile.Read(ref _killedBecause) ?? "the server closed the connection inside a reply chunk");
                }

                var context = ReadU32(payload);
                var extent = ReadU32(payload.Slice(4));
                var state = (NbdAllocationFlags)ReadU32(payload.Slice(8));
                reader.AdvanceTo(payload.End);

                // Extents after the first (NBD_CMD_FLAG_REQ_ONE asked for one) are read past
                // unbuffered, as qemu ignores them.
                await SkipAsync(reader, length - 12).ConfigureAwait(false);
                if (context != AllocationContext || query.Answered || extent == 0)
                {
                    query.Failed = true;
                }

                query.Answered = true;
                const NbdAllocationFlags Hole = NbdAllocationFlags.Hole | NbdAllocationFlags.Zero;
                query.Extent = new AllocationExtent(Math.Min(extent, query.Length), (state & Hole) != Hole);
                break;
            }

            case NbdChunkType.None:
                if (length != 0 || !done)
                {
                    return LostStep(length != 0 ? $"an NBD_REPLY_TYPE_NONE chunk of {length} bytes (it has none)" : "an NBD_REPLY_TYPE_NONE chunk without NBD_REPLY_FLAG_DONE");
                }

                break;

            default:
                if (((ushort)type & 0x8000) == 0)
                {
                    return LostStep(type is NbdChunkType.OffsetData or NbdChunkType.OffsetHole
                        ? $"a reply chunk of type {type} for NBD_CMD_BLOCK_STATUS"
                        : $"a reply chunk of unknown type {(ushort)type}");
                }

                if (await ReadErrorAsync(reader, type, length, "a block status question").ConfigureAwait(false) is not { } error)
                {
                    return Step.Stop;
                }

                if (error == NbdError.Shutdown)
                {
                    ShutdownSeen();
                }

                query.Failed = true;
                break;
        }

        return done ? await FinishQueryAsync(query).ConfigureAwait(false) : Step.Next;
    }

    // The payload of a chunk, whole in the reader's buffer (at most MaxControlPayload bytes): the
    // caller advances past it. Null at the end of the stream.
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    private static async ValueTask<ReadOnlySequence<byte>?> ReadPayloadAsync(PipeReader reader, int length)
    {
        var result = await reader.ReadAtLeastAsync(length).ConfigureAwait(false);
        if (result.Buffer.Length < length)
        {
            reader.AdvanceTo(result.Buffer.Start, result.Buffer.End);
            return null;
        }

        return result.Buffer.Slice(0, length);
    }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    private static async ValueTask<ulong?> ReadU64Async(PipeReader reader)
    {
        if (await ReadPayloadAsync(reader, 8).ConfigureAwait(false) is not { } payload)
        {
            return null;
        }

        var value = ReadU64(payload);
        reader.AdvanceTo(payload.End);
        return value;
    }

    private static ulong ReadU64(ReadOnlySequence<byte> bytes)
    {
        Span<byte> b = stackalloc byte[8];
        bytes.Slice(0, 8).CopyTo(b);
        return BinaryPrimitives.ReadUInt64BigEndian(b);
    }

    private static uint ReadU32(ReadOnlySequence<byte> bytes)
    {
        Span<byte> b = stackalloc byte[4];
        bytes.Slice(0, 4).CopyTo(b);
        return BinaryPrimitives.ReadUInt32BigEndian(b);
    }

    private static ushort ReadU16(ReadOnlySequence<byte> bytes)
    {
        Span<byte> b = stackalloc byte[2];
        bytes.Slice(0, 2).CopyTo(b);
        return BinaryPrimitives.ReadUInt16BigEndian(b);
    }

    // Reads past count bytes of a chunk not taken (a data chunk of a request that failed).
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private static async ValueTask SkipAsync(PipeReader reader, long count)
    {
        while (count > 0)
        {
            var result = await reader.ReadAsync().ConfigureAwait(false);
            var take = Math.Min(count, result.Buffer.Length);
            reader.AdvanceTo(result.Buffer.GetPosition(take));
            count -= take;
            if (count > 0 && result.IsCompleted)
            {
                throw new EndOfStreamException("the server closed the connection inside a reply chunk");
            }
        }
    }

    // A request's reply is complete (a simple reply, or the chunk with NBD_REPLY_FLAG_DONE): the
    // flush sequence's next stage goes out, or the request completes, or (ESHUTDOWN) it waits for
    // the reconnect; then a closing connection with nothing outstanding disconnects.
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    private async ValueTask<Step> FinishAsync(Pending pending, Request request, uint generation, NbdError error)
    {
        pending.ReleaseMap();
        pending.Request = null;
        Interlocked.Decrement(ref _outstanding);
        if (error == NbdError.None && (pending.Next is not null || pending.PostFlush))
        {
            var (command, flags) = pending.Next ?? (NbdCommand.Flush, NbdCommandFlags.None);
            if (!TryWrite(request, command, flags, next: null, postFlush: pending.Next is not null && pending.PostFlush, stage: pending.Stage + 1, push: true))
            {
                // The connection takes no more (closing, or gone): the request stays in
                // flight and the reconnect retries it whole, as one the server refused.
                request.RetryNotCounted = true;
            }
        }
        else if (error == NbdError.Shutdown)
        {
            // The server never ran it: its retry after the reconnect is not counted.
            request.RetryNotCounted = true;
            // The server is shutting down (proto.md: the client MUST initiate a soft
            // disconnect). The request is not completed: it stays in flight, and the
            // reconnect after the disconnect takes it back and retries it, as for a lost
            // connection. No new request goes out here; the outstanding ones may finish.
            ShutdownSeen();
        }
        else
        {
            request.Complete(NbdErrors.ToStatus(error), generation);
        }

        return await DisconnectIfDrainedAsync().ConfigureAwait(false);
    }

    // NBD_ESHUTDOWN came (to a request or a block status question): "the client MUST initiate a
    // soft disconnect". No new request or question goes out; once the outstanding requests are
    // answered, DisconnectIfDrainedAsync sends NBD_CMD_DISC. Before, an ESHUTDOWN answer to a
    // block status question was taken as "cannot tell" and the connection went on (a review).
    private void ShutdownSeen()
    {
        lock (_sendLock)
        {
            _closing = true;
        }
    }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    private async ValueTask<Step> DisconnectIfDrainedAsync()
    {
        if (Volatile.Read(ref _closing) && Volatile.Read(ref _outstanding) == 0)
        {
            // Every outstanding request is answered (TryEnqueue takes none once closing):
            // disconnect softly, let the pump send it, then report the connection lost so
            // supervision reconnects and retries what the server refused.
            if (SendDisconnect())
            {
                try
                {
                    // Bounded: a server that stopped reading must not keep the connection
                    // from being reported lost (every request meanwhile answers Resource).
                    await _pump.WaitAsync(DisconnectWait).ConfigureAwait(false);
                }
                catch (TimeoutException)
                {
                }
            }

            // Nothing is outstanding: closed in order, so the NBD_CMD_DISC proto.md asks
            // for is not dropped by a reset.
            Lost("the server is shutting down (NBD_ESHUTDOWN)", orderly: true);
            return Step.Stop;
        }

        return Step.Next;
    }

    private static bool ParseReply(ReadOnlySequence<byte> bytes, out NbdError error, out ulong cookie)
    {
        Span<byte> header = stackalloc byte[NbdProtocol.SimpleReplyHeaderLength];
        bytes.CopyTo(header);
        error = (NbdError)BinaryPrimitives.ReadUInt32BigEndian(header[4..]);
        cookie = BinaryPrimitives.ReadUInt64BigEndian(header[8..]);
        return BinaryPrimitives.ReadUInt32BigEndian(header) == NbdProtocol.SimpleReplyMagic;
    }

    // Copies a read's data into its request's bios as it arrives, from byte position of the
    // request on (0 for a simple reply's data, a chunk's offset within the read for
    // NBD_REPLY_TYPE_OFFSET_DATA); false, with the rest unread, once the connection is fenced
    // (Fence). Each piece is copied holding the copy word, taken before the request's bios are
    // touched at all and never held across a read of the socket: a fence waits at most for one
    // copy of bytes already received, and after it no byte lands in a request the block layer may
    // have taken back (requeued, failed, its bios freed and reused by other I/O). Without it the
    // receiver, holding a reply's data when a reset closed the connection and reclaimed the
    // request, copied it into a buffer that was another's (a review). One compare-and-swap per
    // piece, usually one per reply.
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    private async ValueTask<bool> ReadDataAsync(PipeReader reader, Request request, int position, int length)
    {
        Bio? bio = null;
        var offset = 0;
        var left = length;
        while (left > 0)
        {
            var result = await reader.ReadAsync().ConfigureAwait(false);
            if (BeforeCopy is { } hook)
            {
                await hook().ConfigureAwait(false);
            }

            if (Interlocked.CompareExchange(ref _copy, CopyBusy, CopyOpen) != CopyOpen)
            {
                return false;
            }

            var buffer = result.Buffer;
            long taken = 0;
            try
            {
                if (bio is null && left == length)
                {
                    (bio, offset) = Seek(request, position, length);
                }

                while (left > 0 && taken < buffer.Length && bio is not null)
                {
                    var take = (int)Math.Min(Math.Min(buffer.Length - taken, bio.Size - offset), left);
                    buffer.Slice(taken, take).CopyTo(bio.Buffer.Span.Slice(offset, take));
                    taken += take;
                    offset += take;
                    left -= take;
                    if (offset == bio.Size)
                    {
                        bio = bio.Next;
                        offset = 0;
                    }
                }

                if (left > 0 && bio is null)
                {
                    throw new IOException($"a read of {length} bytes has bios for only {length - left} of them");
                }
            }
            finally
            {
                Volatile.Write(ref _copy, CopyOpen);
            }

            reader.AdvanceTo(buffer.GetPosition(taken));
            if (left > 0 && result.IsCompleted)
            {
                throw new EndOfStreamException("the server closed the connection inside a read's data");
            }
        }

        return true;
    }

    // The bio holding byte position of the request, and the offset in it; the bios must hold
    // position + length bytes (the request's own length bounds both, checked by Pending.Take).
    private static (Bio Bio, int Offset) Seek(Request request, int position, int length)
    {
        var bio = request.Bio;
        var offset = position;
        while (bio is not null && offset >= bio.Size)
        {
            offset -= bio.Size;
            bio = bio.Next;
        }

        return bio is null
            ? throw new IOException($"a read's data at byte {position} (for {length} bytes) lies past its bios")
            : (bio, offset);
    }

    // Zeroes length bytes of the request from byte position on (an NBD_REPLY_TYPE_OFFSET_HOLE),
    // under the copy word as a copy is; false once the connection is fenced.
    private bool ZeroFill(Request request, int position, int length)
    {
        if (Interlocked.CompareExchange(ref _copy, CopyBusy, CopyOpen) != CopyOpen)
        {
            return false;
        }

        try
        {
            var (bio, offset) = Seek(request, position, length);
            var left = length;
            while (left > 0)
            {
                if (bio is null)
                {
                    throw new IOException($"a hole of {length} bytes in a read has bios for only {length - left} of them");
                }

                var take = Math.Min(bio.Size - offset, left);
                bio.Buffer.Span.Slice(offset, take).Clear();
                left -= take;
                bio = bio.Next;
                offset = 0;
            }
        }
        finally
        {
            Volatile.Write(ref _copy, CopyOpen);
        }

        return true;
    }

    // No more copying into requests (Kill, and so Close and Lost): waits for a copy in progress,
    // which holds the word only while it copies bytes already received, never across a read, so a
    // stalled receiver cannot hold a reset up. Before this returns no request of this connection is
    // reclaimed; after it, none is written by the receiver.
    private void Fence()
    {
        var spin = default(SpinWait);
        while (Interlocked.CompareExchange(ref _copy, CopyFenced, CopyOpen) == CopyBusy)
        {
            spin.SpinOnce();
        }
    }

    /// <summary>
    /// The connection is gone: tell the block layer (once). Its supervision reopens the device
    /// with back-off and retries the requests that were in flight, or takes the device offline.
    /// </summary>
    private void Lost(string why, bool orderly = false)
    {
        if (Interlocked.Exchange(ref _dead, 1) != 0 || _hctx is not { } hctx)
        {
            return;
        }

        Kill(null, abortive: !orderly);
        hctx.Queue.Events?.OnDeviceError(hctx, new BlockDeviceErrorException($"{hctx}: NBD connection lost: {why}", deviceGone: true));
    }

    /// <summary>
    /// <paramref name="loop"/> (the receiver or the pump) ended on an exception it does not expect:
    /// the connection is lost as in <see cref="Lost(string, bool)"/>, reported as a
    /// <see cref="DriverFaultException"/>, which the block layer logs at error level with the
    /// exception. Nothing is reported for a connection already dead (closed, killed or abandoned).
    /// </summary>
    private void Lost(string loop, Exception fault)
    {
        if (Interlocked.Exchange(ref _dead, 1) != 0 || _hctx is not { } hctx)
        {
            return;
        }

        Kill();
        hctx.Queue.Events?.OnDeviceError(hctx, new DriverFaultException(
            $"{hctx}: NBD connection lost: an internal error of {loop} ({fault.GetType().Name}: {fault.Message})", fault));
    }

    // A request's cookie: its generation, and its tag with the stage of its flush sequence (0 for
    // the first command sent, 1 and 2 for those sent after a reply). The stage tells a reply to the
    // stage outstanding from a second reply to one already answered: with one cookie for every
    // stage, a server that answered a preflush twice completed the write with the duplicate, before
    // the write was answered or even sent (an outside audit with a hostile server).
    private static ulong Cookie(uint generation, int tag, int stage) => ((ulong)generation << 32) | ((uint)stage << 16) | (uint)tag;

    // The stage of a block status question's cookie: no request's stage (0 to 2) has it, and its
    // tag is the question's slot.
    private const int QueryStage = 0xffff;

    // Block status questions a connection has out at once; past it a question is not asked (null).
    private const int MaxQueries = 16;

    private readonly StatusQuery[] _queries = new StatusQuery[MaxQueries];

    /// <summary>Block status questions sent whose answer has not come, for specs.</summary>
    internal int QueriesOutstanding => _queries.Count(q => Volatile.Read(ref q.Busy) != 0);

    /// <summary>
    /// Asks the server the <c>base:allocation</c> state of the extent at <paramref name="offset"/>
    /// (<c>NBD_CMD_BLOCK_STATUS</c> with <c>NBD_CMD_FLAG_REQ_ONE</c>, at most
    /// <paramref name="length"/> bytes), without blocking a thread. Null when it cannot tell: no
    /// context was negotiated, the connection takes no more requests or is lost, too many
    /// questions are out, the server answered with an error or a malformed answer, or no answer
    /// came within <paramref name="timeout"/> or before <paramref name="cancellationToken"/> (the
    /// question's slot is then freed only by its answer, or with the connection).
    /// </summary>
    public async Task<AllocationExtent?> GetExtentAsync(long offset, uint length, TimeSpan timeout, CancellationToken cancellationToken)
    {
        if (AllocationContext is null || length == 0 || cancellationToken.IsCancellationRequested)
        {
            return null;
        }

        StatusQuery? query = null;
        var index = 0;
        for (; index < _queries.Length; index++)
        {
            if (Interlocked.CompareExchange(ref _queries[index].Busy, 1, 0) == 0)
            {
                query = _queries[index];
                break;
            }
        }

        if (query is null)
        {
            return null;
        }

        var completion = new TaskCompletionSource<AllocationExtent?>(TaskCreationOptions.RunContinuationsAsynchronously);
        lock (_sendLock)
        {
            if (_closing || _disconnected || IsDead)
            {
                Volatile.Write(ref query.Busy, 0);
                return null;
            }

            query.Length = length;
            query.Answered = false;
            query.Failed = false;
            query.Extent = default;
            query.Completion = completion;
            var generation = ++query.Generation;
            Interlocked.Increment(ref _questions);
            var span = _send.Writer.GetSpan(NbdProtocol.RequestHeaderLength);
            BinaryPrimitives.WriteUInt32BigEndian(span, NbdProtocol.RequestMagic);
            BinaryPrimitives.WriteUInt16BigEndian(span[4..], (ushort)NbdCommandFlags.ReqOne);
            BinaryPrimitives.WriteUInt16BigEndian(span[6..], (ushort)NbdCommand.BlockStatus);
            BinaryPrimitives.WriteUInt64BigEndian(span[8..], Cookie(generation, index, QueryStage));
            BinaryPrimitives.WriteUInt64BigEndian(span[16..], (ulong)offset);
            BinaryPrimitives.WriteUInt32BigEndian(span[24..], length);
            _send.Writer.Advance(NbdProtocol.RequestHeaderLength);

            // Published before it can be answered; a kill after this completes it (AbandonQueries).
            Volatile.Write(ref query.Generation, generation);
            Volatile.Write(ref query.Open, 1);
            Flush();
        }

        if (IsDead)
        {
            // Killed while it was written: the kill may have looked before it was open.
            completion.TrySetResult(null);
        }

        try
        {
            return await completion.Task.WaitAsync(timeout, cancellationToken).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is TimeoutException or OperationCanceledException)
        {
            return null;
        }
    }

    // The question a cookie names, or null when none with that generation is out.
    private StatusQuery? QueryOf(int index, uint generation) =>
        (uint)index < (uint)_queries.Length && _queries[index] is var query && Volatile.Read(ref query.Open) != 0 && query.Generation == generation ? query : null;

    // A question's answer is complete (its DONE chunk, or a simple error reply): its asker gets
    // the extent (or null), and its slot is free again.
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    private async ValueTask<Step> FinishQueryAsync(StatusQuery query)
    {
        var answer = query.Answered && !query.Failed ? query.Extent : (AllocationExtent?)null;
        var completion = query.Completion;
        query.Completion = null;
        Volatile.Write(ref query.Open, 0);
        Volatile.Write(ref query.Busy, 0);
        Interlocked.Decrement(ref _questions);
        completion?.TrySetResult(answer);
        return await DisconnectIfDrainedAsync().ConfigureAwait(false);
    }

    // The connection is shut down: every question out gets null (its slot stays taken; the
    // connection takes no more).
    private void AbandonQueries()
    {
        foreach (var query in _queries)
        {
            if (Volatile.Read(ref query.Open) != 0)
            {
                query.Completion?.TrySetResult(null);
            }
        }
    }

    /// <summary>A block status question in flight (<see cref="GetExtentAsync"/>).</summary>
    private sealed class StatusQuery
    {
        // Taken by an asker (1) until its answer is complete; Open once its request is written.
        public int Busy;
        public int Open;
        public uint Generation;
        public uint Length;
        public bool Answered;
        public bool Failed;
        public AllocationExtent Extent;
        public TaskCompletionSource<AllocationExtent?>? Completion;
    }

    /// <summary>What the receiver needs to know about a request in flight.</summary>
    private sealed class Pending
    {
        public Request? Request;
        public uint Generation;

        // The flush sequence's stage sent last (Cookie).
        public int Stage;
        public bool Read;

        // A read's length as sent: its data's length in the stream, whoever holds the request now.
        public int Length;

        // A read's offset as sent: a structured chunk's offset is checked against it.
        public long Offset;

        // The first error of a structured reply (an error chunk, or a chunk that broke the read's
        // range): the request completes with it at NBD_REPLY_FLAG_DONE.
        public NbdError Error;

        // Bytes of a structured read covered by data and hole chunks so far, and the runs they
        // cover (start and end pairs, disjoint): a chunk over a run is refused. In-order chunks
        // keep to one run; the array is the slot's, made at its first structured read and reused.
        public long Covered;
        public long[]? Runs;
        public int RunCount;

        // Past this many runs (chunks far out of order, which proto.md allows: "MAY send the
        // content chunks in any order") the coverage moves to a bitmap of the read, a bit a byte
        // (Length / 8 bytes, rented from the pool and given back when the reply is complete), so
        // a read takes any number of pieces, each checked and marked in time proportional to its
        // size. Before, a 17th disjoint run failed the read with EIO (a review).
        private const int MaxRuns = 16;

        // The coverage is in Bitmap (Runs no longer used for this read).
        public bool Mapped;
        public ulong[]? Bitmap;

        public void Fail(NbdError error)
        {
            if (Error == NbdError.None)
            {
                Error = error;
            }
        }

        /// <summary>
        /// Takes a data or hole chunk of <paramref name="size"/> bytes at the device offset
        /// <paramref name="at"/>: true when it lies within the read, covers nothing covered
        /// before, and the request has not failed (then its bytes may be written into the
        /// request); otherwise the request fails with EIO and false.
        /// </summary>
        public bool Take(ulong at, long size)
        {
            if (Error != NbdError.None)
            {
                return false;
            }

            if (size <= 0 || at < (ulong)Offset || at - (ulong)Offset > (ulong)Length || (long)(at - (ulong)Offset) + size > Length)
            {
                Fail(NbdError.Io);
                return false;
            }

            var start = (long)(at - (ulong)Offset);
            var end = start + size;
            if (Mapped)
            {
                return TakeMapped(start, end);
            }

            Runs ??= new long[2 * MaxRuns];
            for (var i = 0; i < RunCount; i++)
            {
                if (start < Runs[(2 * i) + 1] && Runs[2 * i] < end)
                {
                    Fail(NbdError.Io);
                    return false;
                }
            }

            for (var i = 0; i < RunCount; i++)
            {
                if (Runs[(2 * i) + 1] == start)
                {
                    Runs[(2 * i) + 1] = end;
                    Merge(i);
                    Covered += size;
                    return true;
                }

                if (Runs[2 * i] == end)
                {
                    Runs[2 * i] = start;
                    Merge(i);
                    Covered += size;
                    return true;
                }
            }

            if (RunCount == MaxRuns)
            {
                MapRuns();
                return TakeMapped(start, end);
            }

            Runs[2 * RunCount] = start;
            Runs[(2 * RunCount) + 1] = end;
            RunCount++;
            Covered += size;
            return true;
        }

        /// <summary>Gives the bitmap back to the pool (the reply is complete).</summary>
        public void ReleaseMap()
        {
            if (Bitmap is { } bitmap)
            {
                Bitmap = null;
                ArrayPool<ulong>.Shared.Return(bitmap);
            }

            Mapped = false;
        }

        // Run i grew: joins it with a run it now touches, if any (the last run takes the gap).
        private void Merge(int i)
        {
            for (var j = 0; j < RunCount; j++)
            {
                if (j != i && (Runs![(2 * j) + 1] == Runs[2 * i] || Runs[2 * j] == Runs[(2 * i) + 1]))
                {
                    Runs[2 * i] = Math.Min(Runs[2 * i], Runs[2 * j]);
                    Runs[(2 * i) + 1] = Math.Max(Runs[(2 * i) + 1], Runs[(2 * j) + 1]);
                    RunCount--;
                    Runs[2 * j] = Runs[2 * RunCount];
                    Runs[(2 * j) + 1] = Runs[(2 * RunCount) + 1];
                    return;
                }
            }
        }

        // The runs are full: the coverage so far goes into a bitmap of the read.
        private void MapRuns()
        {
            var words = (int)((Length + 63L) >> 6);
            if (Bitmap is null || Bitmap.Length < words)
            {
                ReleaseMap();
                Bitmap = ArrayPool<ulong>.Shared.Rent(words);
            }

            Array.Clear(Bitmap, 0, words);
            for (var i = 0; i < RunCount; i++)
            {
                Mark(Runs![2 * i], Runs[(2 * i) + 1], set: true);
            }

            Mapped = true;
        }

        // A chunk over [start, end) of the read, the coverage in the bitmap.
        private bool TakeMapped(long start, long end)
        {
            if (!Mark(start, end, set: false))
            {
                Fail(NbdError.Io);
                return false;
            }

            Mark(start, end, set: true);
            Covered += end - start;
            return true;
        }

        // Sets the bits of [start, end), or (set false) tells whether none of them is set yet.
        private bool Mark(long start, long end, bool set)
        {
            var bitmap = Bitmap!;
            for (var word = start >> 6; word <= (end - 1) >> 6; word++)
            {
                var from = Math.Max(start, word << 6) - (word << 6);
                var to = Math.Min(end, (word + 1) << 6) - (word << 6);
                var mask = (to - from == 64 ? ulong.MaxValue : ((1UL << (int)(to - from)) - 1)) << (int)from;
                if (set)
                {
                    bitmap[word] |= mask;
                }
                else if ((bitmap[word] & mask) != 0)
                {
                    return false;
                }
            }

            return true;
        }

        // A flush sequence's stages still to send: the command after a preflush, a flush after
        // a command whose FUA the server cannot take.
        public (NbdCommand Command, NbdCommandFlags Flags)? Next;
        public bool PostFlush;
    }
}
