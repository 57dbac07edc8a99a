using System.Buffers;
using System.Buffers.Binary;
using System.IO.Pipelines;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Authentication;
using System.Text;
using System.Threading.Channels;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers;
using ActorBlk.Hardware.Interop;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;

namespace ActorBlk.Hardware.Nbd;

/// <summary>
/// One client connection of an <see cref="NbdServer"/>: fixed newstyle negotiation, then the
/// transmission phase. Requests are pipelined: the reader takes a slot per request (at most
/// <see cref="NbdServerOptions.MaxInFlight"/>), submits it to the device as one bio (the same
/// path as any caller: tags, merging, timeouts and hotplug apply) and reads on; the writer sends
/// the replies in completion order.
/// </summary>
/// <remarks>
/// A client that vanishes never leaves anything behind: requests already submitted complete in
/// the block layer and free their tags, their replies are dropped, and the slots' buffers are
/// freed once the last one has come back.
/// </remarks>
public sealed class NbdConnection
{
    /// <summary>The longest option payload accepted; NBD strings are at most 4 KiB, so this is generous.</summary>
    internal const int MaxOptionLength = 64 << 10;

    // How often a connection whose request waits for buffer memory checks that its client is still there.
    private static readonly TimeSpan HangUpCheckInterval = TimeSpan.FromMilliseconds(250);

    /// <summary>Unflushed reply bytes after which the writer flushes before taking the next reply.</summary>
    private const int FlushThreshold = 256 << 10;

    /// <summary>
    /// Size of the reply buffer: replies are copied into it and sent with one write per batch.
    /// Room for a flush threshold's worth plus one more small reply or block status chunk.
    /// </summary>
    private const int ReplyBufferSize = FlushThreshold + (8 << 10);

    /// <summary>Size of the blocking reader's input buffer.</summary>
    private const int InputBufferSize = 256 << 10;

    /// <summary>Size of the blocking reader's buffer for a refused write's payload.</summary>
    private const int SkipBufferSize = 64 << 10;

    /// <summary>Most extents in one block status reply; a longer map is cut short, as the protocol allows.</summary>
    private const int MaxExtents = 512;

    private static readonly UnboundedChannelOptions SlotChannelOptions = new() { SingleReader = true, AllowSynchronousContinuations = false };

    private readonly NbdServer _server;
    private readonly Socket _socket;
    private readonly TaskCompletionSource _completion = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly Channel<NbdRequestSlot> _completed = Channel.CreateUnbounded<NbdRequestSlot>(SlotChannelOptions);
    private readonly Channel<NbdRequestSlot> _free = Channel.CreateUnbounded<NbdRequestSlot>(SlotChannelOptions);
    private readonly List<NbdRequestSlot> _slots = [];
    private readonly CancellationTokenSource _abort = new();

    // Cancelled by StopReading (server shutdown) and by Abort: ends the reader's waits.
    private readonly CancellationTokenSource _stopReading;
    private readonly TaskCompletionSource _drained = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private NbdRequestSlot[] _batch = [];
    private int _batchCount;
    private byte[] _out = [];
    private int _outLength;
    private ReadOnlyMemory<byte> _outTail;
    private int _corked;
    private byte[] _in = [];

    // Where the blocking reader drops an oversized write's payload; allocated at the first one.
    private byte[]? _skip;
    private int _inStart;
    private int _inEnd;
    private bool _inputEmpty;
    private int _writing;
    private Stream _stream;
    private readonly BlockingStream _plain;
    private int _threadId;
    private PipeReader _reader;
    private PipeWriter _writer;
    private SslStream? _tls;
    private IBlockDevice? _device;
    private bool _structured;
    private bool _allocationContext;
    private string? _contextExport;
    private NbdTransmissionFlags _transmissionFlags;
    private int _references = 1;
    private int _inFlight;
    private volatile bool _broken;
    private volatile bool _transmitting;
    private volatile bool _stopRequested;

    // Linux, plain TCP: the blocking reader's own eventfd, polled beside its socket and made
    // readable (for good) by StopReading; -1 before the reader made it, after it closed it, or
    // when it could not be made. _wakeTried: the reader has passed the point of making it.
    private readonly object _wakeLock = new();
    private int _wakeEvent = -1;
    private bool _wakeTried;

    // Over a Unix socket: the client's process (SO_PEERCRED, a Unix peer has no address), read
    // once at the start, while the socket is open; null over TCP.
    private readonly string? _unixPeer;

    // A refusal was answered and the connection closes after it: gracefully, so the answer is read.
    private bool _lingerOnClose;

    // The client ended the session itself (NBD_CMD_DISC, or NBD_OPT_ABORT answered): over TLS the
    // session is shut down (close_notify) before the TCP connection closes.
    private volatile bool _clientEnded;
    private bool _inPayload;
    private long _payloadStart;
    private long _payloadDeadline;
    private long _payloadBytes;

    /// <summary>Unanswered keepalive probes after which the kernel closes a connection.</summary>
    internal const int KeepAliveProbes = 3;

    internal NbdConnection(NbdServer server, Socket socket, long id)
    {
        _server = server;
        _socket = socket;
        Id = id;
        _stopReading = CancellationTokenSource.CreateLinkedTokenSource(_abort.Token);
        // Over a Unix socket there is no Nagle to turn off and no keepalive: the kernel closes the
        // connection when its peer process goes, and a peer on the same machine cannot be partitioned away.
        var tcp = socket.AddressFamily != AddressFamily.Unix;
        if (tcp)
        {
            socket.NoDelay = true;
        }
        else
        {
            _unixPeer = NbdServer.EndpointOf(socket);
        }

        if (tcp && server.Options.KeepAlive > TimeSpan.Zero)
        {
            // A client that vanished without a word (a partition that lost its reset) is closed
            // by the kernel once its probes go unanswered, not held for ever (an outside
            // partition audit found such half-open connections left on the owner of a leg).
            var idle = (int)server.Options.KeepAlive.TotalSeconds;
            socket.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.KeepAlive, true);
            socket.SetSocketOption(SocketOptionLevel.Tcp, SocketOptionName.TcpKeepAliveTime, idle);
            socket.SetSocketOption(SocketOptionLevel.Tcp, SocketOptionName.TcpKeepAliveInterval, Math.Max(1, idle / 3));
            socket.SetSocketOption(SocketOptionLevel.Tcp, SocketOptionName.TcpKeepAliveRetryCount, KeepAliveProbes);
        }

        _plain = new BlockingStream(new NetworkStream(socket, ownsSocket: false), server.Options.StallTimeout);
        _stream = _plain;
        _reader = PipeReader.Create(_stream, new StreamPipeReaderOptions(leaveOpen: true));
        _writer = PipeWriter.Create(_stream, new StreamPipeWriterOptions(leaveOpen: true));
    }

    /// <summary>The connection number (in accept order).</summary>
    public long Id { get; }

    /// <summary>Completes when the connection is closed and every request it submitted has completed.</summary>
    public Task Completion => _completion.Task;

    /// <summary>Requests of this connection in the block layer or waiting for their reply.</summary>
    public int InFlight => Volatile.Read(ref _inFlight);

    /// <summary>The device the client selected, once in the transmission phase.</summary>
    public IBlockDevice? Device => _device;

    private NbdServerOptions Options => _server.Options;

    /// <summary>
    /// Runs the connection on a thread of its own. Until STARTTLS (if ever) its socket I/O is
    /// blocking system calls on that thread, so the socket is never registered with .NET's socket
    /// engine: an arriving request wakes this thread and nothing else (an engine-registered
    /// socket wakes the engine's thread and a thread-pool worker for every arrival).
    /// </summary>
    internal void Start() =>
        new Thread(() =>
        {
            _threadId = Environment.CurrentManagedThreadId;
            _ = RunAsync();
        })
        {
            IsBackground = true,
            Name = $"actorblk/nbd{Id}",
        }.Start();

    /// <summary>Closes the socket; requests in flight still complete in the block layer.</summary>
    internal void Abort()
    {
        _broken = true;
        CancelQuietly(_abort);
        ShutdownQuietly(SocketShutdown.Both);
    }

    /// <summary>
    /// The server is shutting down: take no further request, let the requests in flight complete
    /// and send their replies, then close (the protocol's "wait for inflight requests to be
    /// serviced prior to initiating a hard disconnect"), gracefully (see <see cref="LingerAsync"/>).
    /// A connection still negotiating has nothing in flight: it stays open and answers every
    /// further option but <c>NBD_OPT_ABORT</c> with <c>NBD_REP_ERR_SHUTDOWN</c> (an
    /// <c>NBD_OPT_EXPORT_NAME</c>, which has no error reply, with a close), until its client ends
    /// the session; one stopped <paramref name="alone"/> is closed at once.
    /// <see cref="Abort"/> after a grace period ends what is left.
    /// </summary>
    /// <remarks>
    /// The blocking reader (plain TCP on Linux) is woken by its own eventfd, which it polls beside
    /// the socket (the server's stop event when it could not make one), and the TLS reader by the
    /// cancelled token. Only where neither applies (a plain connection off Linux, or no eventfd)
    /// is the receive side shut down to wake the reader, which makes the lingering close end at
    /// the first pause in the client's input, and Linux then answers what the client sends after
    /// the FIN with a reset (an outside audit: libnbd clients of a device destroyed under load
    /// went DEAD with their last replies unread, when the receive side was shut down for every
    /// connection stopped alone).
    /// </remarks>
    /// <param name="alone">
    /// Only this connection stops (its device was destroyed), so the server's stop event does not
    /// wake its reader: its own event does, or, without one, the receive side is shut down.
    /// </param>
    internal void StopReading(bool alone = false)
    {
        _stopRequested = true;

        // Pairs with the barrier after _transmitting is set (RunAsync): one of the two threads
        // sees the other's write, so a connection entering transmission now is stopped by one.
        Interlocked.MemoryBarrier();
        if (!_transmitting)
        {
            if (alone)
            {
                // Its device is gone (CloseConnectionsOf): nothing to negotiate any more.
                Abort();
            }

            // Else the server is shutting down: the negotiation answers the client's next option
            // with NBD_REP_ERR_SHUTDOWN (see NegotiateAsync); the server's grace bounds the wait.
            return;
        }

        CancelQuietly(_stopReading);
        if (_tls is null && OperatingSystem.IsLinux())
        {
            lock (_wakeLock)
            {
                if (_wakeEvent >= 0)
                {
                    // The blocking reader polls its own event: the socket's receive side stays
                    // open, so the linger that follows sees the client's close (see LingerAsync).
                    SignalWake();
                    return;
                }

                if (!_wakeTried)
                {
                    // The reader has not made its event yet: it sees _stopRequested when it does.
                    return;
                }
            }
        }

        if (alone || (_tls is null && (_server.StopEvent < 0 || !OperatingSystem.IsLinux())))
        {
            // Wakes a reader blocked in a read; the replies still go out on the sending side.
            // (Only where the reader has no event: once the receive side is shut down, Linux
            // answers what the client sends after this side's FIN with a reset.)
            ShutdownQuietly(SocketShutdown.Receive);
        }
    }

    private unsafe void SignalWake()
    {
        var one = 1UL;
        _ = LibC.Write(_wakeEvent, &one, sizeof(ulong));
    }

    /// <summary>
    /// Makes the blocking reader's event (see <see cref="StopReading"/>); false when a stop was
    /// asked for before it could be polled, so the reader takes no request.
    /// </summary>
    private bool OpenWakeEvent()
    {
        lock (_wakeLock)
        {
            _wakeTried = true;
            // Without one (out of descriptors) a later stop shuts the receive side down, as before.
            _wakeEvent = LibC.EventFd(0, LibC.EFD_CLOEXEC | LibC.EFD_NONBLOCK);
            return !_stopRequested;
        }
    }

    private void CloseWakeEvent()
    {
        lock (_wakeLock)
        {
            if (_wakeEvent >= 0)
            {
                _ = LibC.Close(_wakeEvent);
                _wakeEvent = -1;
            }
        }
    }

    // Both run from other threads (the server's shutdown, a timer) and may meet a connection that
    // has just closed: a disposed token source or socket means there is nothing left to do.
    private static void CancelQuietly(CancellationTokenSource source)
    {
        try
        {
            source.Cancel();
        }
        catch (ObjectDisposedException)
        {
        }
    }

    private void ShutdownQuietly(SocketShutdown how)
    {
        try
        {
            _socket.Shutdown(how);
        }
        catch (Exception ex) when (ex is SocketException or ObjectDisposedException)
        {
        }
    }

    /// <summary>
    /// Called by a slot when the block layer completed its last part (on the completion context)
    /// or by the reader for a request answered at once. The reply is written from here when no
    /// other thread is writing: a separate writer task would cost one more thread wake-up per reply.
    /// </summary>
    internal void Completed(NbdRequestSlot slot)
    {
        _completed.Writer.TryWrite(slot);
        Drain();
    }

    private async Task RunAsync()
    {
        var transmitted = false;
        try
        {
            bool transmit;
            using (var handshake = CancellationTokenSource.CreateLinkedTokenSource(_abort.Token))
            {
                // A blocking receive does not see the token: the timeout shuts the socket down.
                using var timeout = handshake.Token.UnsafeRegister(static c => ((NbdConnection)c!).Abort(), this);
                handshake.CancelAfter(Options.HandshakeTimeout);
                transmit = await NegotiateAsync(handshake.Token).ConfigureAwait(false);
            }

            if (transmit)
            {
                _batch = new NbdRequestSlot[Options.MaxInFlight];
                _out = new byte[ReplyBufferSize];
                for (var i = 0; i < Options.MaxInFlight; i++)
                {
                    var slot = new NbdRequestSlot(this);
                    _slots.Add(slot);
                    _free.Writer.TryWrite(slot);
                }

                transmitted = true;
                _transmitting = true;
                Interlocked.MemoryBarrier(); // see StopReading
                if (_stopRequested)
                {
                    // The server began to stop during the negotiation's last step.
                    Abort();
                }
                else if (_device is { } selected && (!selected.Queue.AcceptsIo || selected.Queue.IsDying))
                {
                    // Destroyed between GO's check and here: the server's close of its connections
                    // (CloseConnectionsOf) may have come before this one had selected it.
                    StopReading(alone: true);
                }

                if (_tls is null && OperatingSystem.IsLinux() && Environment.CurrentManagedThreadId == _threadId)
                {
                    // Still on the connection's thread (every await so far completed at once).
                    ReadRequestsBlocking();
                }
                else if (_tls is null && OperatingSystem.IsLinux())
                {
                    await ReadOnThreadAsync().ConfigureAwait(false);
                }
                else
                {
                    await ReadRequestsAsync().ConfigureAwait(false);
                }
            }
        }
#pragma warning disable CA1031 // A connection's failure of any kind must end that connection only, never the node.
        catch (Exception ex)
#pragma warning restore CA1031
        {
            if (ex is NbdStallException or NbdProtocolException or AuthenticationException)
            {
                // The client's fault (a stall, a protocol breach, a failed TLS handshake):
                // rate-limited, a client can send garbage in a loop.
                _server.LogClose($"NBD connection {Id} from {RemoteEndPoint()} closed: {ex.Message}");
            }
            else if (ex is not (IOException or SocketException or OperationCanceledException or ObjectDisposedException))
            {
                // Anything else is the server's: every one is logged, with its stack.
                _server.Log?.Invoke($"NBD connection {Id} from {RemoteEndPoint()} closed: {ex}");
            }

            if (ex is NbdStallException)
            {
                // The read that timed out is still pending on the stream: end it before the
                // pipes are completed and their buffers go back to the pool.
                Abort();
            }
        }
        finally
        {
            // Replies held back while the reader went through its buffer go out now.
            Uncork();

            // The reader's reference: once every in-flight request has replied, the writer stops.
            Release();
        }

        if (transmitted)
        {
            // Every request this connection submitted has completed and its reply went out (or was dropped).
            await _drained.Task.ConfigureAwait(false);
        }

        if (!_broken)
        {
            // The server's stop (transmission) or a refusal it answered (negotiation) ends
            // gracefully; a session the client ended gets TLS's close_notify.
            if (transmitted ? _stopRequested : _lingerOnClose)
            {
                await LingerAsync().ConfigureAwait(false);
            }
            else if (_clientEnded)
            {
                await EndTlsAsync().ConfigureAwait(false);
            }
        }

        await CloseAsync().ConfigureAwait(false);
    }

    /// <summary>
    /// The end of a session the client ended (<c>NBD_CMD_DISC</c> once every reply went out, or
    /// <c>NBD_OPT_ABORT</c> once answered): over TLS, sends <c>close_notify</c> before the TCP
    /// connection closes, for at most <see cref="NbdServerOptions.ShutdownGrace"/>.
    /// </summary>
    /// <remarks>
    /// NBD_CMD_DISC: "The server MUST handle all outstanding requests, shut down the TLS session
    /// (if one is running), and close the TCP session". Disposing the <see cref="SslStream"/>
    /// sends no <c>close_notify</c>, so the client saw the session end in a truncation (an
    /// outside audit: OpenSSL's "unexpected EOF while reading").
    /// </remarks>
    private async Task EndTlsAsync()
    {
        if (_tls is null)
        {
            return;
        }

        using var limit = CancellationTokenSource.CreateLinkedTokenSource(_abort.Token);
        limit.CancelAfter(Options.ShutdownGrace);
        try
        {
            var shutdown = _tls.ShutdownAsync();

            // A shutdown given up on below fails once the stream is disposed: observed here.
            _ = shutdown.ContinueWith(static t => _ = t.Exception, CancellationToken.None, TaskContinuationOptions.OnlyOnFaulted | TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
            await shutdown.WaitAsync(limit.Token).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is IOException or SocketException or OperationCanceledException or ObjectDisposedException or InvalidOperationException)
        {
            // The client reset the connection, or takes no bytes: it closes as before.
        }
#pragma warning disable CA1031 // see LingerAsync
        catch (Exception ex)
#pragma warning restore CA1031
        {
            // Anything else is a bug; the connection must still close (the caller's CloseAsync),
            // or the server's stop would wait for it for ever.
            _server.Log?.Invoke($"NBD connection {Id} from {RemoteEndPoint()}: ending its TLS session failed: {ex}");
        }
    }

    /// <summary>
    /// The graceful end of a connection the server's shutdown stopped, once its last reply was
    /// written: ends TLS (close_notify) and the sending side (FIN after the replies), then reads
    /// and drops what the client still sends until it closes its end, for at most
    /// <see cref="NbdServerOptions.ShutdownGrace"/> (or until <see cref="Abort"/>).
    /// </summary>
    /// <remarks>
    /// Closing a socket whose receive buffer holds unread bytes (requests the client sent after
    /// the stop, which are never executed) sends a reset instead of a FIN, and a reset throws away
    /// the replies still in the socket's send buffer: a client that reads slowly lost the replies
    /// of requests that had completed (an outside audit: 1 of 20 arrived). The requests read here
    /// are not parsed: NBD_ESHUTDOWN answers are a "MAY" of the protocol, and the FIN already
    /// tells the client that no further reply comes.
    /// </remarks>
    private async Task LingerAsync()
    {
        using var limit = CancellationTokenSource.CreateLinkedTokenSource(_abort.Token);
        limit.CancelAfter(Options.ShutdownGrace);
        try
        {
            if (_tls is not null)
            {
                // "it SHOULD shut down the TLS session first"
                await _tls.ShutdownAsync().WaitAsync(limit.Token).ConfigureAwait(false);
            }

            _socket.Shutdown(SocketShutdown.Send);

            // The readers are done (the drain waited for them), so the scratch buffer is free.
            var scratch = _skip ??= new byte[SkipBufferSize];
            while (await _socket.ReceiveAsync(scratch, SocketFlags.None, limit.Token).ConfigureAwait(false) > 0)
            {
            }
        }
        catch (Exception ex) when (ex is IOException or SocketException or OperationCanceledException or ObjectDisposedException or InvalidOperationException)
        {
            // The client reset the connection, or it kept it open past the limit: close as before.
        }
#pragma warning disable CA1031 // the close that follows must run: a throw here left the connection open for good
        catch (Exception ex)
#pragma warning restore CA1031
        {
            // A bug (nothing else is expected): logged, and the connection closes all the same.
            _server.Log?.Invoke($"NBD connection {Id} from {RemoteEndPoint()}: its graceful close failed: {ex}");
        }
    }

    private string RemoteEndPoint()
    {
        if (_unixPeer is not null)
        {
            return _unixPeer;
        }

        try
        {
            return _socket.RemoteEndPoint?.ToString() ?? "?";
        }
        catch (ObjectDisposedException)
        {
            return "?";
        }
    }

    // Whatever fails here, the socket is closed and the connection completes: the server's stop
    // and its connection count wait for that (an exception other than those expected once left
    // the connection's completion unset, and a stop of the server waited for ever).
    private async Task CloseAsync()
    {
        try
        {
            // Every slot came back (the drain waited for them), so the buffers left are kept ones.
            foreach (var slot in _slots)
            {
                var kept = slot.BufferBytes;
                slot.ReleaseBuffer();
                _server.Budget.DropKept(kept);
            }

            try
            {
                await _reader.CompleteAsync().ConfigureAwait(false);
                await _writer.CompleteAsync().ConfigureAwait(false);
            }
            catch (Exception ex) when (ex is IOException or SocketException or ObjectDisposedException or InvalidOperationException)
            {
            }

            try
            {
                if (_tls is not null)
                {
                    await _tls.DisposeAsync().ConfigureAwait(false);
                }

                await _stream.DisposeAsync().ConfigureAwait(false);
            }
            catch (Exception ex) when (ex is IOException or SocketException or ObjectDisposedException)
            {
            }
        }
#pragma warning disable CA1031 // a bug: logged; the connection still closes and completes below
        catch (Exception ex)
#pragma warning restore CA1031
        {
            _server.Log?.Invoke($"NBD connection {Id} from {RemoteEndPoint()}: closing it failed: {ex}");
        }
        finally
        {
            _socket.Dispose();
            _stopReading.Dispose();
            _abort.Dispose();
            _completion.TrySetResult();
        }
    }

    private void Release()
    {
        if (Interlocked.Decrement(ref _references) == 0)
        {
            _completed.Writer.TryComplete();
            _drained.TrySetResult();
        }
    }

    // ---------------------------------------------------------------- negotiation

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

    // ---------------------------------------------------------------- transmission

    private async Task ReadRequestsAsync()
    {
        var device = _device!;
        var ct = _stopReading.Token;
        while (!_broken && !_stopRequested)
        {
            // Requests already buffered are taken without waiting, and their replies are held
            // back (corked) until the buffer is used up: then one write sends them all. Before
            // any wait the cork comes off, so a reply never waits for the client's next request.
            var read = _reader.ReadAtLeastAsync(NbdProtocol.RequestHeaderLength, ct);
            if (!read.IsCompleted)
            {
                Uncork();
            }

            var result = await read.ConfigureAwait(false);
            Cork();
            var buffer = result.Buffer;
            if (buffer.Length < NbdProtocol.RequestHeaderLength)
            {
                _reader.AdvanceTo(buffer.End);
                return; // the client went away between requests
            }

            var header = new RequestHeader(buffer.Slice(0, NbdProtocol.RequestHeaderLength));
            _reader.AdvanceTo(buffer.GetPosition(NbdProtocol.RequestHeaderLength));
            if (!Accept(header))
            {
                return; // in-flight requests still complete and reply; then the writer closes
            }

            if (!_free.Reader.TryRead(out var slot))
            {
                // Slots come back when their replies were written: those held back must go now.
                Uncork();
                slot = await _free.Reader.ReadAsync(ct).ConfigureAwait(false);
            }

            Start(slot, header);
            var error = Check(device, slot);
            try
            {
                await PrepareBufferAsync(device, slot, error, ct).ConfigureAwait(false);
                if (header.Command == NbdCommand.Write)
                {
                    await ReadPayloadAsync(Oversized(slot) ? Memory<byte>.Empty : slot.Payload, (int)slot.Length, ct).ConfigureAwait(false);
                }
            }
            catch
            {
                // Never submitted: give the slot back without a reply.
                Recycle(slot);
                throw;
            }

            Dispatch(device, slot, error);
        }
    }

    /// <summary>Checks a request header; false for NBD_CMD_DISC. Throws when the framing is lost.</summary>
    private bool Accept(in RequestHeader header)
    {
        if (header.Magic != NbdProtocol.RequestMagic)
        {
            // Framing is lost: nothing after this can be parsed, so the protocol requires closing.
            throw new NbdProtocolException($"bad request magic 0x{header.Magic:x8}");
        }

        if (header.Command == NbdCommand.Disconnect)
        {
            _clientEnded = true;
            return false;
        }

        if (header.Command == NbdCommand.Write && header.Length > (uint)Math.Max(Options.MaxPayload, NbdProtocol.MaxTolerablePayload))
        {
            // Over the maximum payload and over 32 MiB: "either the server or the client MAY
            // initiate a hard disconnect if a payload length ... would be large enough to be
            // deemed a denial of service attack". A smaller write over a configured max-payload
            // is read past and refused (see Oversized).
            throw new NbdProtocolException($"write of {header.Length} bytes is over the maximum payload of {Options.MaxPayload}");
        }

        return true;
    }

    /// <summary>
    /// A write over the advertised maximum payload (a client's breach: it "MUST NOT request a
    /// length larger than the maximum payload size") that is still at most 32 MiB, which "SHOULD
    /// NOT be considered a denial of service attack": its payload is read past without a buffer
    /// and the request refused with EINVAL, so the connection goes on.
    /// </summary>
    private bool Oversized(NbdRequestSlot slot) => slot.Command == NbdCommand.Write && slot.Length > (uint)Options.MaxPayload;

    private void Start(NbdRequestSlot slot, in RequestHeader header)
    {
        Interlocked.Increment(ref _references);
        Interlocked.Increment(ref _inFlight);
        _server.Budget.Unkeep(slot.BufferBytes);
        slot.Reset(header.Cookie, header.Command, header.Flags, (long)header.Offset, header.Length);
    }

    /// <summary>
    /// Gives the slot a buffer its request can use: a write's payload, or a read that will run (one
    /// the checks refuse needs none). A larger buffer than the slot has is taken from the server's
    /// budget first, which waits while other requests hold it; replies held back go out before.
    /// </summary>
    private ValueTask PrepareBufferAsync(IBlockDevice device, NbdRequestSlot slot, NbdError error, CancellationToken ct)
    {
        var size = slot.Command switch
        {
            NbdCommand.Write when !Oversized(slot) => NbdRequestSlot.BufferSizeFor(slot.Length),
            NbdCommand.Read when error == NbdError.None => NbdRequestSlot.BufferSizeFor(slot.Length),
            _ => 0,
        };
        if (slot.BufferBytes >= size)
        {
            return default;
        }

        var budget = _server.Budget;
        var old = slot.BufferBytes;
        slot.ReleaseBuffer();
        budget.Return(old);
        if (budget.TryTake(size))
        {
            AllocateBuffer(device, slot, size);
            return default;
        }

        Uncork();
        return AllocateAfterAsync(device, slot, size, ct);
    }

    /// <summary>
    /// Waits for the budget to give a request's buffer, watching the client meanwhile: the
    /// connection reads nothing while it waits, so a client that hangs up would otherwise go
    /// unnoticed until memory came back, which under clients that pipeline large reads and read
    /// no reply is up to <c>stall-timeout</c> plus their transfer at <c>min-transfer-rate</c>
    /// (minutes). Each such connection stayed in CLOSE-WAIT holding one of
    /// <c>max-connections</c>, so clients that gave up on a write and closed filled the server and
    /// locked everyone out (an outside audit). A hang-up (see <see cref="HangUp"/>) lets the
    /// connection go at once, the request and whatever follows it in the input dropped
    /// unexecuted, as after a reset.
    /// </summary>
    private async ValueTask AllocateAfterAsync(IBlockDevice device, NbdRequestSlot slot, int size, CancellationToken ct)
    {
        var budget = _server.Budget;
        using (var waiting = CancellationTokenSource.CreateLinkedTokenSource(ct))
        {
            var take = budget.TakeAsync(size, waiting.Token).AsTask();
            if (!OperatingSystem.IsLinux())
            {
                await take.ConfigureAwait(false);
            }

            string? how = null;

            // Once the client's FIN is in, its input is final: a disconnect found queued before it
            // stays queued for the rest of the wait, and later checks only look for a reset.
            var disconnectQueued = false;
            while (!take.IsCompleted)
            {
                try
                {
                    await take.WaitAsync(HangUpCheckInterval, ct).ConfigureAwait(false);
                    break;
                }
                catch (TimeoutException)
                {
                }
                catch (OperationCanceledException)
                {
                    // The connection is ending (stop, abort): the take's own cancellation is
                    // linked, so it settles below, granted or not.
                    break;
                }

                Interlocked.Increment(ref _server.HangUpChecks);
                if (!take.IsCompleted && (how = HangUp(slot, ref disconnectQueued)) is not null)
                {
                    break;
                }
            }

            if (how is not null || ct.IsCancellationRequested)
            {
                waiting.Cancel();
                try
                {
                    // Granted just before the cancel: the bytes go back, as nothing will use them.
                    await take.ConfigureAwait(false);
                    budget.Return(size);
                }
                catch (OperationCanceledException)
                {
                }

                if (how is null)
                {
                    ct.ThrowIfCancellationRequested();
                }

                Interlocked.Increment(ref _server.HangUpCloses);
                throw new IOException($"the client {how} while a request of {size} bytes waited for buffer memory (max-buffer-memory)");
            }

            await take.ConfigureAwait(false);
        }

        AllocateBuffer(device, slot, size);
    }

    /// <summary>
    /// How the client hung up, or null while it may still want replies (Linux: <c>POLLRDHUP</c>;
    /// elsewhere never). A reset always counts. A closed sending side (FIN) counts unless the
    /// input before it holds an <c>NBD_CMD_DISC</c>: libnbd sends the disconnect and then shuts
    /// its writes down while it reads the replies, and after <c>NBD_CMD_DISC</c> the server "MUST
    /// handle all outstanding requests" (a review). Without one the FIN is the protocol's hard
    /// disconnect (the client "drops the TCP session"). Over TLS the input cannot be read ahead
    /// and libnbd sends a FIN after <c>close_notify</c>, so there only a reset counts.
    /// <paramref name="disconnectQueued"/> remembers, for one wait, that the input before the FIN
    /// holds a disconnect, so it is read ahead once rather than at every check.
    /// </summary>
    private string? HangUp(NbdRequestSlot waiting, ref bool disconnectQueued)
    {
        var handle = _socket.SafeHandle;
        var added = false;
        try
        {
            handle.DangerousAddRef(ref added);
            var fd = (int)handle.DangerousGetHandle();
            var events = LibC.PollNow(fd, LibC.POLLRDHUP);
            if (events < 0)
            {
                return null;
            }

            // Over a Unix socket a client's close() shuts both directions here (POLLHUP) whether or
            // not it left replies unread, and only with replies unread does the kernel also set an
            // error (ECONNRESET: POLLERR), TCP's reset; a close with nothing unread is TCP's FIN,
            // and counts as one below (a write then NBD_CMD_DISC, then close(), is served). Taken
            // for a reset, such a write was dropped (NbdServerUnixSocketSpec), as a TLS client's
            // would be when it closes after close_notify.
            if ((events & (_unixPeer is null ? LibC.POLLERR | LibC.POLLHUP : LibC.POLLERR)) != 0)
            {
                return "reset the connection";
            }

            if ((events & LibC.POLLRDHUP) == 0)
            {
                return null;
            }

            // Over TLS the input cannot be read ahead, and libnbd closes a TLS session with
            // close_notify and then a FIN (strace of libnbd 1.14 by a verifying helper): a FIN
            // there may follow a DISC, so only a reset counts.
            if (_tls is not null || disconnectQueued)
            {
                return null;
            }

            disconnectQueued = DisconnectQueued(fd, waiting);
            return disconnectQueued ? null : "closed its end";
        }
        catch (ObjectDisposedException)
        {
            return "closed its end";
        }
        finally
        {
            if (added)
            {
                handle.DangerousRelease();
            }
        }
    }

    /// <summary>
    /// Whether what the client sent before it closed its end (the input buffer's unread bytes
    /// and the socket's queue, peeked) holds an <c>NBD_CMD_DISC</c> after the waiting request's
    /// own payload. Plain TCP only (the blocking reader's buffer).
    /// </summary>
    private unsafe bool DisconnectQueued(int fd, NbdRequestSlot waiting)
    {
        Interlocked.Increment(ref _server.DisconnectPeeks);
        var buffered = _inEnd - _inStart;
        var queued = Math.Max(0, _socket.Available);
        var input = new byte[buffered + queued];
        _in.AsSpan(_inStart, buffered).CopyTo(input);
        var peeked = 0L;
        if (queued > 0)
        {
            fixed (byte* p = &input[buffered])
            {
                peeked = Math.Max(0, LibC.Recv(fd, p, queued, LibC.MSG_PEEK | LibC.MSG_DONTWAIT));
            }
        }

        var payload = waiting.Command == NbdCommand.Write ? waiting.Length : 0;
        return NbdProtocol.HoldsDisconnect(input.AsSpan(0, buffered + (int)peeked), payload);
    }

    private void AllocateBuffer(IBlockDevice device, NbdRequestSlot slot, int size)
    {
        try
        {
            slot.AllocateBuffer(device, size);
        }
        catch
        {
            _server.Budget.Return(size);
            throw;
        }
    }

    // ------------------------------------------------------------ blocking reader (plain TCP)

    /// <summary>
    /// Runs the transmission phase's reader on a thread of its own that blocks in the kernel
    /// (poll and recv on the socket), as nbdkit does: an arriving request wakes this thread
    /// directly, which submits it (and, when the hardware queue issues directly and the driver
    /// completes inline, writes its reply) without a hop through the socket engine's thread
    /// and the thread pool. TLS connections keep the pipe reader over the TLS stream.
    /// </summary>
    private Task ReadOnThreadAsync()
    {
        var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        new Thread(() =>
        {
            try
            {
                ReadRequestsBlocking();
                done.TrySetResult();
            }
#pragma warning disable CA1031 // handed to RunAsync, which ends the connection for any failure
            catch (Exception ex)
#pragma warning restore CA1031
            {
                done.TrySetException(ex);
            }
        })
        {
            IsBackground = true,
            Name = $"actorblk/nbd{Id}",
        }.Start();
        return done.Task;
    }

    private void ReadRequestsBlocking()
    {
        var device = _device!;
        var handle = _socket.SafeHandle;
        var added = false;
        handle.DangerousAddRef(ref added);
        try
        {
            var fd = (int)handle.DangerousGetHandle();
            if (!OpenWakeEvent())
            {
                return;
            }

            _in = GC.AllocateUninitializedArray<byte>(InputBufferSize, pinned: true);

            // Bytes the negotiation's pipe reader already took from the socket come first.
            if (_reader.TryRead(out var pending))
            {
                var buffered = pending.Buffer;
                if (buffered.Length > _in.Length)
                {
                    _in = GC.AllocateUninitializedArray<byte>((int)buffered.Length, pinned: true);
                }

                buffered.CopyTo(_in);
                _inEnd = (int)buffered.Length;
                _reader.AdvanceTo(buffered.End);
            }

            while (Fill(fd, NbdProtocol.RequestHeaderLength))
            {
                var header = new RequestHeader(_in.AsSpan(_inStart, NbdProtocol.RequestHeaderLength));
                _inStart += NbdProtocol.RequestHeaderLength;
                if (!Accept(header))
                {
                    return;
                }

                if (!_free.Reader.TryRead(out var slot))
                {
                    // Slots come back when their replies were written: those held back must go now.
                    Uncork();
                    slot = _free.Reader.ReadAsync(_stopReading.Token).AsTask().GetAwaiter().GetResult();
                }

                Start(slot, header);
                var error = Check(device, slot);
                try
                {
                    var prepare = PrepareBufferAsync(device, slot, error, _stopReading.Token);
                    if (!prepare.IsCompletedSuccessfully)
                    {
                        prepare.AsTask().GetAwaiter().GetResult();
                    }

                    if (header.Command == NbdCommand.Write)
                    {
                        ReceivePayload(fd, Oversized(slot) ? Span<byte>.Empty : slot.Payload.Span, (int)slot.Length);
                    }
                }
                catch
                {
                    // Never submitted: give the slot back without a reply.
                    Recycle(slot);
                    throw;
                }

                Dispatch(device, slot, error);
            }
        }
        finally
        {
            CloseWakeEvent();
            if (added)
            {
                handle.DangerousRelease();
            }
        }
    }

    /// <summary>Makes the input buffer hold at least <paramref name="count"/> unread bytes; false at the end of the stream.</summary>
    private bool Fill(int fd, int count)
    {
        // A broken connection (its replies cannot be delivered: the client reset it) takes no more
        // of what it had buffered, and a stopping server takes no new request.
        if (_broken || _stopRequested)
        {
            return false;
        }

        while (_inEnd - _inStart < count)
        {
            if (_in.Length - _inStart < count)
            {
                _in.AsSpan(_inStart, _inEnd - _inStart).CopyTo(_in);
                _inEnd -= _inStart;
                _inStart = 0;
            }

            var n = Receive(fd, _in.AsSpan(_inEnd));
            if (n == 0)
            {
                return false; // the client went away
            }

            _inEnd += n;
        }

        return true;
    }

    /// <summary>Receives a write's <paramref name="length"/> payload bytes into <paramref name="target"/>, or past them when it is empty.</summary>
    private void ReceivePayload(int fd, Span<byte> target, int length)
    {
        // The payload's buffer holds budget the other connections may wait for: a client that
        // stops sending it is closed after the stall timeout, and one that sends it slower than
        // min-transfer-rate at its deadline (between requests it may idle).
        _inPayload = true;
        _payloadStart = Environment.TickCount64;
        _payloadDeadline = Options.TransferDeadline(_payloadStart, length);
        _payloadBytes = length;
        try
        {
            if (!target.IsEmpty)
            {
                ReceivePayloadCore(fd, target);
                return;
            }

            var scratch = _skip ??= new byte[SkipBufferSize];
            for (var left = length; left > 0;)
            {
                var n = Math.Min(left, scratch.Length);
                ReceivePayloadCore(fd, scratch.AsSpan(0, n));
                left -= n;
            }
        }
        finally
        {
            _inPayload = false;
        }
    }

    private void ReceivePayloadCore(int fd, Span<byte> target)
    {
        var copied = Math.Min(_inEnd - _inStart, target.Length);
        _in.AsSpan(_inStart, copied).CopyTo(target);
        _inStart += copied;
        while (copied < target.Length)
        {
            var rest = target.Length - copied;
            if (rest <= _in.Length / 4)
            {
                // A small rest comes through the input buffer, with whatever follows it.
                if (!Fill(fd, rest))
                {
                    throw new EndOfStreamException("the client closed the connection inside a write payload");
                }

                _in.AsSpan(_inStart, rest).CopyTo(target[copied..]);
                _inStart += rest;
                return;
            }

            var n = Receive(fd, target[copied..]);
            if (n == 0)
            {
                throw new EndOfStreamException("the client closed the connection inside a write payload");
            }

            copied += n;
        }
    }

    /// <summary>
    /// Receives what the socket holds, waiting in poll when it holds nothing; 0 at the end of the
    /// stream or after <see cref="Abort"/> (which shuts the socket down, ending any wait). Replies
    /// held back while requests kept coming are released before a wait.
    /// </summary>
    private unsafe int Receive(int fd, Span<byte> target)
    {
        fixed (byte* p = target)
        {
            while (true)
            {
                if (_inputEmpty)
                {
                    // The last receive left the socket empty (it returned less than asked): wait
                    // in poll at once instead of finding out with a receive that fails.
                    _inputEmpty = false;
                    Uncork();
                    if (!Poll(fd))
                    {
                        return 0;
                    }
                }

                var n = LibC.Recv(fd, p, target.Length, LibC.MSG_DONTWAIT);
                if (n > 0)
                {
                    Cork();
                    _inputEmpty = n < target.Length;
                    return (int)n;
                }

                if (n == 0 || _broken)
                {
                    return 0;
                }

                if (n != -LibC.EAGAIN && n != -LibC.EINTR)
                {
                    throw new IOException($"NBD connection {Id}: recv failed: {LibC.Describe((int)n)}");
                }

                if (n == -LibC.EAGAIN)
                {
                    Uncork();
                    if (!Poll(fd))
                    {
                        return 0;
                    }
                }
            }
        }
    }

    /// <summary>Waits until the socket is readable (or shut down); false after <see cref="Abort"/> or when the server stops.</summary>
    private bool Poll(int fd)
    {
        var timeout = -1;
        var slow = false;
        if (_inPayload)
        {
            var left = _payloadDeadline - Environment.TickCount64;
            if (left <= 0)
            {
                throw NbdStallException.Slow("sent a write's payload", _payloadBytes, Environment.TickCount64 - _payloadStart, Options);
            }

            timeout = (int)Math.Min(Options.StallTimeout.TotalMilliseconds, left);
            slow = left < Options.StallTimeout.TotalMilliseconds;
        }

        var stopEvent = _wakeEvent >= 0 ? _wakeEvent : _server.StopEvent;
        var polled = stopEvent >= 0 ? LibC.PollOneOrWake(fd, LibC.POLLIN, stopEvent, timeout) : LibC.PollOne(fd, LibC.POLLIN, timeout);
        if (polled == 2)
        {
            return false; // the server stops: no further request (or rest of a write's payload) is read
        }

        if (polled == 0)
        {
            throw slow
                ? NbdStallException.Slow("sent a write's payload", _payloadBytes, Environment.TickCount64 - _payloadStart, Options)
                : NbdStallException.Payload(Options.StallTimeout);
        }

        if (polled < 0 && polled != -LibC.EINTR)
        {
            throw new IOException($"NBD connection {Id}: poll failed: {LibC.Describe(polled)}");
        }

        return !_broken;
    }

    /// <summary>Reads a write's <paramref name="length"/> payload bytes into <paramref name="target"/>, or past them when it is empty.</summary>
    private async ValueTask ReadPayloadAsync(Memory<byte> target, int length, CancellationToken ct)
    {
        var copied = 0;
        var start = Environment.TickCount64;
        var deadline = Options.TransferDeadline(start, length);
        while (copied < length)
        {
            var read = _reader.ReadAsync(ct);
            ReadResult result;
            if (read.IsCompleted)
            {
                result = await read.ConfigureAwait(false);
            }
            else
            {
                Uncork();
                var left = deadline - Environment.TickCount64;
                if (left <= 0)
                {
                    throw NbdStallException.Slow("sent a write's payload", length, Environment.TickCount64 - start, Options);
                }

                var wait = TimeSpan.FromMilliseconds(Math.Min(Options.StallTimeout.TotalMilliseconds, left));
                try
                {
                    result = await read.AsTask().WaitAsync(wait, ct).ConfigureAwait(false);
                }
                catch (TimeoutException)
                {
                    throw wait < Options.StallTimeout
                        ? NbdStallException.Slow("sent a write's payload", length, Environment.TickCount64 - start, Options)
                        : NbdStallException.Payload(Options.StallTimeout);
                }
            }

            var buffer = result.Buffer;
            var take = (int)Math.Min(buffer.Length, length - copied);
            if (!target.IsEmpty)
            {
                buffer.Slice(0, take).CopyTo(target.Span[copied..]);
            }

            _reader.AdvanceTo(buffer.GetPosition(take));
            copied += take;
            if (copied < length && result.IsCompleted)
            {
                throw new EndOfStreamException("the client closed the connection inside a write payload");
            }
        }
    }

    /// <summary>Checks a request and submits it to the block layer, or answers it at once.</summary>
    // The request was checked once, before its buffer was decided (a read the checks refuse gets none).
    private void Dispatch(IBlockDevice device, NbdRequestSlot slot, NbdError error)
    {
        if (error != NbdError.None)
        {
            slot.Error = error;
            Completed(slot);
            return;
        }

        var flags = (slot.Flags & NbdCommandFlags.Fua) != 0 ? RequestFlags.Fua : RequestFlags.None;
        switch (slot.Command)
        {
            case NbdCommand.Read:
                // PrepareBufferAsync gave every read that passed the checks its buffer.
                Submit(device, slot, BlockOp.Read, slot.Offset, slot.Length, slot.Payload, RequestFlags.None);
                break;
            case NbdCommand.Write:
                Submit(device, slot, BlockOp.Write, slot.Offset, slot.Length, slot.Payload, flags);
                break;
            case NbdCommand.Flush:
                Submit(device, slot, BlockOp.Flush, 0, 0, default, RequestFlags.None);
                break;
            case NbdCommand.Trim:
                if (device.Queue.Limits.MaxDiscardSectors == 0)
                {
                    // Discard turned off since the export was opened (queue/discard_max_bytes = 0):
                    // a trim is advisory ("a client MUST NOT make any assumptions about the
                    // contents"), so it succeeds doing nothing, and the trim the export advertised
                    // stays (taking it away would refuse every client's reconnect).
                    Completed(slot);
                    break;
                }

                FlushAfterIfFua(device, slot);
                Submit(device, slot, BlockOp.Discard, slot.Offset, slot.Length, default, RequestFlags.None);
                break;
            case NbdCommand.WriteZeroes:
                // NO_HOLE: "the area MUST be fully provisioned", which REQ_NOUNMAP asks of the driver.
                // FAST_ZERO: fail at once rather than zero slowly, which REQ_NOFALLBACK asks.
                FlushAfterIfFua(device, slot);
                Submit(device, slot, BlockOp.WriteZeroes, slot.Offset, slot.Length, default,
                    ((slot.Flags & NbdCommandFlags.NoHole) != 0 ? RequestFlags.NoUnmap : 0)
                    | ((slot.Flags & NbdCommandFlags.FastZero) != 0 ? RequestFlags.NoFallback : 0));
                break;
            case NbdCommand.BlockStatus:
                // Answered by the writer from the driver's allocation map (or as one data extent).
                Completed(slot);
                break;
            default:
                slot.Error = NbdError.Invalid;
                Completed(slot);
                break;
        }
    }

    // "A server MUST NOT reply to a command that has NBD_CMD_FLAG_FUA set in its command flags
    // until the data (if any) written by that command is persisted" (proto.md; write zeroes: "The
    // server MAY send the reply message before the data has reached permanent storage, unless
    // NBD_CMD_FLAG_FUA is in use"). The block layer keeps FUA for writes (Linux's submit_bio_noacct
    // refuses REQ_FUA on any other operation; the file driver, a volatile cache, and the mirror's
    // legs honour it only there), so a FUA trim or write zeroes is carried out and then followed by
    // a flush of the device, as qemu-nbd does; the reply waits for that flush.
    private static void FlushAfterIfFua(IBlockDevice device, NbdRequestSlot slot)
    {
        if ((slot.Flags & NbdCommandFlags.Fua) != 0)
        {
            slot.FlushAfter(device);
        }
    }

    private NbdError Check(IBlockDevice device, NbdRequestSlot slot)
    {
        var command = slot.Command;
        if (Oversized(slot))
        {
            return NbdError.Invalid;
        }

        if (command is not (NbdCommand.Read or NbdCommand.Write or NbdCommand.Flush or NbdCommand.Trim or NbdCommand.WriteZeroes or NbdCommand.BlockStatus))
        {
            return NbdError.Invalid;
        }

        // FUA "is valid for all commands, provided NBD_FLAG_SEND_FUA has been negotiated, in which
        // case the server MUST accept all commands with this bit set (even by ignoring the bit)";
        // a flag unknown, or not defined for the command, SHOULD be EINVAL (flush and block status
        // included: an outside audit found them taking any flag).
        var allowed = NbdCommandFlags.Fua | command switch
        {
            NbdCommand.WriteZeroes => NbdCommandFlags.NoHole | NbdCommandFlags.FastZero,
            NbdCommand.Read => NbdCommandFlags.DontFragment,
            NbdCommand.BlockStatus => NbdCommandFlags.ReqOne,
            _ => NbdCommandFlags.None,
        };
        if ((slot.Flags & ~allowed) != 0)
        {
            return NbdError.Invalid;
        }

        // DF "MUST NOT be set unless the transmission flags include NBD_FLAG_SEND_DF" (advertised
        // with structured replies only): a flag not applicable here, EINVAL as nbdkit answers it
        // (an outside audit's differential run found it taken).
        if ((slot.Flags & NbdCommandFlags.DontFragment) != 0 && (_transmissionFlags & NbdTransmissionFlags.SendDf) == 0)
        {
            return NbdError.Invalid;
        }

        if (command == NbdCommand.Flush)
        {
            return NbdError.None;
        }

        var writes = command is NbdCommand.Write or NbdCommand.Trim or NbdCommand.WriteZeroes;
        if (writes && device.IsReadOnly)
        {
            return NbdError.Perm;
        }

        if (slot.Length == 0)
        {
            return NbdError.Invalid;
        }

        // An offset of 2^63 or more (negative here) is beyond any device too.
        if (slot.Offset < 0 || slot.Offset > device.Capacity - slot.Length)
        {
            // "The server SHOULD return NBD_ENOSPC if it receives a write [or write zeroes]
            // request including one or more sectors beyond the size of the device."
            return command is NbdCommand.Write or NbdCommand.WriteZeroes ? NbdError.NoSpace : NbdError.Invalid;
        }

        if (command == NbdCommand.Read && slot.Length > (uint)Options.MaxPayload)
        {
            return _structured ? NbdError.Overflow : NbdError.Invalid;
        }

        if (command == NbdCommand.BlockStatus)
        {
            return _allocationContext ? NbdError.None : NbdError.Invalid;
        }

        if (command == NbdCommand.Trim && (_transmissionFlags & NbdTransmissionFlags.SendTrim) == 0)
        {
            return NbdError.Invalid;
        }

        if (command == NbdCommand.WriteZeroes && (_transmissionFlags & NbdTransmissionFlags.SendWriteZeroes) == 0)
        {
            // FAST_ZERO was not advertised either: EINVAL, not ENOTSUP (proto.md, "Zero writes").
            return NbdError.Invalid;
        }

        if (command == NbdCommand.WriteZeroes && (slot.Flags & NbdCommandFlags.FastZero) != 0 && (_transmissionFlags & NbdTransmissionFlags.SendFastZero) == 0)
        {
            // "If the server did not advertise NBD_FLAG_SEND_FAST_ZERO ... the server SHOULD fail
            // with NBD_EINVAL" (a write-zeroes export of an NBD client device without fast zero).
            return NbdError.Invalid;
        }

        return (slot.Offset | slot.Length) % device.LogicalBlockSize != 0 ? NbdError.Invalid : NbdError.None;
    }

    /// <summary>
    /// Submits one request; trims and write-zeroes longer than one bio can carry go as several
    /// bios, and the reply waits for the last.
    /// </summary>
    private static void Submit(IBlockDevice device, NbdRequestSlot slot, BlockOp op, long offset, long length, Memory<byte> buffer, RequestFlags flags)
    {
        var chunk = BlockDevice.MaxIoBytes & ~(long)(device.LogicalBlockSize - 1);
        var parts = op.HasData() || length == 0 ? 1 : (int)((length + chunk - 1) / chunk);
        slot.ExpectParts(parts);
        for (var i = 0; i < parts; i++)
        {
            var partOffset = offset + (i * chunk);
            var partLength = parts == 1 ? length : Math.Min(chunk, length - (i * chunk));
            slot.SubmitPart(device, op, partOffset, partLength, buffer, flags);
        }
    }

    // ---------------------------------------------------------------- replies

    /// <summary>Holds replies back while the reader takes requests that are already buffered.</summary>
    private void Cork() => Volatile.Write(ref _corked, 1);

    /// <summary>Lets held-back replies go: writes them unless another thread is writing (which then does).</summary>
    private void Uncork()
    {
        // Full fence, pairing with the one in Drain after _writing is cleared: either this
        // Drain gets the writer, or the thread that had it sees the cork off and writes.
        Interlocked.Exchange(ref _corked, 0);
        Drain();
    }

    /// <summary>
    /// Copies completed replies into the reply buffer and sends them with one write, then recycles
    /// the slots (so a slot's buffer is reused only after its data left). While the reader is
    /// corked the write waits until it uncorks, unless the buffer or the batch is full. One thread
    /// at a time; a write that cannot finish at once continues asynchronously and drains again after it.
    /// </summary>
    private void Drain()
    {
        while (Interlocked.CompareExchange(ref _writing, 1, 0) == 0)
        {
            var full = false;
            while (_batchCount < _batch.Length && _completed.Reader.TryPeek(out var slot))
            {
                if (!_broken)
                {
                    var size = ReplySize(slot);
                    if (_outLength + size > _out.Length && _outLength > 0)
                    {
                        full = true; // send what is there first
                        break;
                    }

                    try
                    {
                        WriteReply(slot);
                    }
#pragma warning disable CA1031 // any failure ends this connection (WriteFailed), never the completing thread
                    catch (Exception ex)
#pragma warning restore CA1031
                    {
                        WriteFailed(ex);
                    }
                }

                _completed.Reader.TryRead(out _);
                _batch[_batchCount++] = slot;
                if (!_outTail.IsEmpty || _outLength >= FlushThreshold)
                {
                    full = true;
                    break;
                }
            }

            var count = _batchCount;
            if (count > 0 && (_broken || full || count == _batch.Length || Volatile.Read(ref _corked) == 0))
            {
                _batchCount = 0;
                if (!_broken)
                {
                    ValueTask write;
                    try
                    {
                        write = WriteOut();
                    }
#pragma warning disable CA1031 // any failure ends this connection (WriteFailed), never the completing thread
                    catch (Exception ex)
#pragma warning restore CA1031
                    {
                        WriteFailed(ex);
                        write = default;
                    }

                    if (!write.IsCompleted)
                    {
                        _ = FinishWriteAsync(write, count);
                        return;
                    }

                    EndWrite(write);
                }

                _outLength = 0;
                _outTail = default;
                RecycleBatch(count);
            }

            // Full fence: the writer is free before the cork and the queue are looked at again
            // (pairs with Uncork, and with Completed's write to the queue before its Drain).
            Interlocked.Exchange(ref _writing, 0);
            if (!_completed.Reader.TryPeek(out _) && (Volatile.Read(ref _batchCount) == 0 || Volatile.Read(ref _corked) != 0))
            {
                return;
            }
        }
    }

    /// <summary>Sends the reply buffer (and a large read's payload after it) in one write, or two.</summary>
    private ValueTask WriteOut()
    {
        if (_server.WriteOutHook is { } hook)
        {
            return hook();
        }

        var head = _out.AsMemory(0, _outLength);
        var tail = _outTail;
        if (_plain.Blocking && OperatingSystem.IsLinux())
        {
            return SendRaw(head, tail);
        }

        var output = (Stream?)_tls ?? _stream;
        return tail.IsEmpty ? output.WriteAsync(head) : WriteWithTailAsync(output, head, tail);
    }

    /// <summary>
    /// Sends without blocking (the caller may be a dispatch loop serving other connections); what
    /// the socket cannot take at once is sent by a thread-pool thread that waits in poll for room.
    /// </summary>
    private ValueTask SendRaw(ReadOnlyMemory<byte> head, ReadOnlyMemory<byte> tail)
    {
        var fd = (int)_socket.SafeHandle.DangerousGetHandle();
        var sent = TrySend(fd, head.Span);
        if (sent == head.Length)
        {
            var sentTail = tail.IsEmpty ? 0 : TrySend(fd, tail.Span);
            if (sentTail == tail.Length)
            {
                return default;
            }

            var restTail = tail[sentTail..];
            return new ValueTask(SendLater(fd, default, restTail));
        }

        var restHead = head[sent..];
        return new ValueTask(SendLater(fd, restHead, tail));
    }

    // A thread of its own, not the pool's: it may wait up to the send timeout for a client that
    // stopped reading, and a few such clients must not starve the pool the actors run on.
    private Task SendLater(int fd, ReadOnlyMemory<byte> head, ReadOnlyMemory<byte> tail) =>
        Task.Factory.StartNew(() => SendBlocking(fd, head, tail), CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default);

    private unsafe int TrySend(int fd, ReadOnlySpan<byte> data)
    {
        var sent = 0;
        fixed (byte* p = data)
        {
            while (sent < data.Length)
            {
                var n = LibC.Send(fd, p + sent, data.Length - sent, LibC.MSG_DONTWAIT | LibC.MSG_NOSIGNAL);
                if (n > 0)
                {
                    sent += (int)n;
                }
                else if (n == -LibC.EAGAIN)
                {
                    break;
                }
                else if (n != -LibC.EINTR)
                {
                    throw new IOException($"NBD connection {Id}: send failed: {LibC.Describe((int)n)}");
                }
            }
        }

        return sent;
    }

    /// <summary>
    /// Sends the rest of a reply, waiting for room in the socket. A client that takes no byte of it
    /// for <see cref="NbdServerOptions.StallTimeout"/> has stopped reading: the send fails and the
    /// connection is aborted, which gives its slots and their buffers back.
    /// </summary>
    private void SendBlocking(int fd, ReadOnlyMemory<byte> head, ReadOnlyMemory<byte> tail)
    {
        var timeout = Options.StallTimeout;
        var start = Environment.TickCount64;
        var lastProgress = start;
        var deadline = Options.TransferDeadline(start, head.Length + tail.Length);
        foreach (var part in (ReadOnlyMemory<byte>[])[head, tail])
        {
            var rest = part;
            while (!rest.IsEmpty)
            {
                if (_broken)
                {
                    throw new IOException($"NBD connection {Id} was closed");
                }

                var sent = TrySend(fd, rest.Span);
                rest = rest[sent..];
                var now = Environment.TickCount64;
                if (sent > 0)
                {
                    lastProgress = now;
                }

                if (rest.IsEmpty)
                {
                    break;
                }

                var left = (long)timeout.TotalMilliseconds - (now - lastProgress);
                if (left <= 0)
                {
                    throw NbdStallException.Reply(timeout);
                }

                // A client that takes a byte now and then still holds the reply's buffer: it must
                // take the reply at min-transfer-rate at least.
                if (now >= deadline)
                {
                    throw NbdStallException.Slow("took a reply", head.Length + tail.Length, now - start, Options);
                }

                left = Math.Min(left, deadline - now);

                // In slices, so an abort (which sets _broken) is seen within a second.
                var polled = LibC.PollOne(fd, LibC.POLLOUT, (int)Math.Min(left, 1000));
                if (polled < 0 && polled != -LibC.EINTR)
                {
                    throw new IOException($"NBD connection {Id}: poll failed: {LibC.Describe(polled)}");
                }
            }
        }
    }

    private static async ValueTask WriteWithTailAsync(Stream output, ReadOnlyMemory<byte> head, ReadOnlyMemory<byte> tail)
    {
        await output.WriteAsync(head).ConfigureAwait(false);
        await output.WriteAsync(tail).ConfigureAwait(false);
    }

    private async Task FinishWriteAsync(ValueTask write, int count)
    {
        try
        {
            await write.ConfigureAwait(false);
        }
#pragma warning disable CA1031 // any failure ends this connection (WriteFailed); unobserved, it left the writer taken for good
        catch (Exception ex)
#pragma warning restore CA1031
        {
            if (ex is NbdStallException && !_broken)
            {
                _server.LogClose($"NBD connection {Id} from {RemoteEndPoint()} closed: {ex.Message}");
            }

            WriteFailed(ex);
        }

        _outLength = 0;
        _outTail = default;
        RecycleBatch(count);
        Interlocked.Exchange(ref _writing, 0);
        Drain();
    }

    private void EndWrite(ValueTask write)
    {
        try
        {
            write.GetAwaiter().GetResult();
        }
#pragma warning disable CA1031 // any failure ends this connection (WriteFailed), never the completing thread
        catch (Exception ex)
#pragma warning restore CA1031
        {
            // The client is gone: drop the remaining replies, keep returning slots.
            WriteFailed(ex);
        }
    }

    /// <summary>An unexpected exception of the server's own (a bug) while serving a request: logged with its stack.</summary>
    internal void LogFault(string what, Exception ex) =>
        _server.Log?.Invoke($"NBD connection {Id} from {RemoteEndPoint()}: {what} failed: {ex}");

    /// <summary>
    /// Writing replies failed: the connection is aborted, its remaining replies dropped while its
    /// slots keep coming back, so it drains and closes. An I/O error is the client going away; any
    /// other exception is the server's (a bug) and is logged with its stack (after the abort no
    /// more replies are written). Before, such an exception escaped Drain with the writer still
    /// taken, into the block layer's completion or faulting the write's task unobserved: no reply
    /// went out on the connection again, and it never closed.
    /// </summary>
    private void WriteFailed(Exception ex)
    {
        if (ex is not (IOException or SocketException or ObjectDisposedException or InvalidOperationException))
        {
            _server.Log?.Invoke($"NBD connection {Id} from {RemoteEndPoint()} closed: writing its replies failed: {ex}");
        }

        Abort();
    }

    private void RecycleBatch(int count)
    {
        for (var i = 0; i < count; i++)
        {
            var slot = _batch[i];
            _batch[i] = null!;
            Recycle(slot);
        }
    }

    private void Recycle(NbdRequestSlot slot)
    {
        // A buffer stays with the slot for the next request when it is small and the server's
        // budget lets idle slots keep it; otherwise it is freed and its bytes go to any waiter.
        var bytes = slot.BufferBytes;
        if (bytes > 0 && (bytes > NbdRequestSlot.KeepBytes || !_server.Budget.TryKeep(bytes)))
        {
            slot.ReleaseBuffer();
            _server.Budget.Return(bytes);
        }

        Interlocked.Decrement(ref _inFlight);
        _free.Writer.TryWrite(slot);
        Release();
    }

    /// <summary>Bytes of <paramref name="slot"/>'s reply, payload included.</summary>
    private int ReplySize(NbdRequestSlot slot)
    {
        var data = slot.Error == NbdError.None && slot.Command == NbdCommand.Read ? (int)slot.Length : 0;
        if (!_structured)
        {
            return NbdProtocol.SimpleReplyHeaderLength + data;
        }

        return NbdProtocol.StructuredReplyHeaderLength + (slot.Error != NbdError.None ? 6 : slot.Command switch
        {
            NbdCommand.Read => 8 + data,
            NbdCommand.BlockStatus => 4 + (8 * ((slot.Flags & NbdCommandFlags.ReqOne) != 0 ? 1 : MaxExtents)),
            _ => 0,
        });
    }

    /// <summary>The free part of the reply buffer.</summary>
    private Span<byte> Free => _out.AsSpan(_outLength);

    /// <summary>Appends a read's payload, or sends it after the buffer when it does not fit.</summary>
    private void AppendPayload(ReadOnlyMemory<byte> payload)
    {
        if (payload.Length <= _out.Length - _outLength)
        {
            payload.Span.CopyTo(Free);
            _outLength += payload.Length;
        }
        else
        {
            _outTail = payload; // the slot is recycled only after the write
        }
    }

    private void WriteReply(NbdRequestSlot slot)
    {
        var error = slot.Error;
        if (!_structured)
        {
            var data = error == NbdError.None && slot.Command == NbdCommand.Read ? (int)slot.Length : 0;
            var span = Free;
            BinaryPrimitives.WriteUInt32BigEndian(span, NbdProtocol.SimpleReplyMagic);
            BinaryPrimitives.WriteUInt32BigEndian(span[4..], (uint)error);
            BinaryPrimitives.WriteUInt64BigEndian(span[8..], slot.Cookie);
            _outLength += NbdProtocol.SimpleReplyHeaderLength;
            if (data > 0)
            {
                AppendPayload(slot.Payload);
            }

            return;
        }

        if (error != NbdError.None)
        {
            var span = WriteChunkHeader(slot.Cookie, NbdChunkType.Error, 6);
            BinaryPrimitives.WriteUInt32BigEndian(span, (uint)error);
            BinaryPrimitives.WriteUInt16BigEndian(span[4..], 0);
            _outLength += 6;
            return;
        }

        switch (slot.Command)
        {
            case NbdCommand.Read:
            {
                var span = WriteChunkHeader(slot.Cookie, NbdChunkType.OffsetData, 8 + slot.Length);
                BinaryPrimitives.WriteUInt64BigEndian(span, (ulong)slot.Offset);
                _outLength += 8;
                AppendPayload(slot.Payload);
                break;
            }

            case NbdCommand.BlockStatus:
                WriteBlockStatus(slot);
                break;

            default:
                WriteChunkHeader(slot.Cookie, NbdChunkType.None, 0);
                break;
        }
    }

    /// <summary>
    /// Writes a <c>base:allocation</c> block status chunk: the extents of the requested range as
    /// the driver's allocation map reports them (holes as <c>NBD_STATE_HOLE | NBD_STATE_ZERO</c>),
    /// or one data extent when the driver does not track allocation (proto.md, base:allocation).
    /// At most <see cref="MaxExtents"/> extents, one with <c>NBD_CMD_FLAG_REQ_ONE</c>; the last
    /// may end before the range does, which the protocol allows.
    /// </summary>
    private void WriteBlockStatus(NbdRequestSlot slot)
    {
        var max = (slot.Flags & NbdCommandFlags.ReqOne) != 0 ? 1 : MaxExtents;
        var header = NbdProtocol.StructuredReplyHeaderLength;
        var span = Free[..(header + 4 + (8 * max))];
        var offset = slot.Offset;
        var end = slot.Offset + slot.Length;
        var count = 0;

        // Asked per request: a stacked device's table (and with it its map) can be swapped.
        var map = _device is null ? null : IAllocationMap.Of(_device);

        while (offset < end && count < max)
        {
            long length;
            bool allocated;
            try
            {
                if (map is null || !map.TryGetExtent(offset, end - offset, out length, out allocated))
                {
                    (length, allocated) = (end - offset, true);
                }
            }
            catch (Exception ex) when (ex is ArgumentOutOfRangeException or ObjectDisposedException)
            {
                (length, allocated) = (end - offset, true); // the device changed under us: claim data, which is always safe
            }

            var entry = span[(header + 4 + (8 * count))..];
            BinaryPrimitives.WriteUInt32BigEndian(entry, (uint)length);
            BinaryPrimitives.WriteUInt32BigEndian(entry[4..], (uint)(allocated ? NbdAllocationFlags.Data : NbdAllocationFlags.Hole | NbdAllocationFlags.Zero));
            offset += length;
            count++;
        }

        BinaryPrimitives.WriteUInt32BigEndian(span, NbdProtocol.StructuredReplyMagic);
        BinaryPrimitives.WriteUInt16BigEndian(span[4..], 1); // NBD_REPLY_FLAG_DONE
        BinaryPrimitives.WriteUInt16BigEndian(span[6..], (ushort)NbdChunkType.BlockStatus);
        BinaryPrimitives.WriteUInt64BigEndian(span[8..], slot.Cookie);
        BinaryPrimitives.WriteUInt32BigEndian(span[16..], (uint)(4 + (8 * count)));
        BinaryPrimitives.WriteUInt32BigEndian(span[header..], NbdProtocol.BaseAllocationId);
        _outLength += header + 4 + (8 * count);
    }

    /// <summary>Writes a final chunk's header and returns the span after it (room for the chunk's fixed part).</summary>
    private Span<byte> WriteChunkHeader(ulong cookie, NbdChunkType type, uint length)
    {
        var span = Free;
        BinaryPrimitives.WriteUInt32BigEndian(span, NbdProtocol.StructuredReplyMagic);
        BinaryPrimitives.WriteUInt16BigEndian(span[4..], 1); // NBD_REPLY_FLAG_DONE
        BinaryPrimitives.WriteUInt16BigEndian(span[6..], (ushort)type);
        BinaryPrimitives.WriteUInt64BigEndian(span[8..], cookie);
        BinaryPrimitives.WriteUInt32BigEndian(span[16..], length);
        _outLength += NbdProtocol.StructuredReplyHeaderLength;
        return Free;
    }

    /// <summary>A parsed 28-byte request header.</summary>
    private readonly struct RequestHeader
    {
        public RequestHeader(ReadOnlySequence<byte> bytes)
            : this(Copy(bytes, stackalloc byte[NbdProtocol.RequestHeaderLength]))
        {
        }

        public RequestHeader(ReadOnlySpan<byte> h)
        {
            Magic = BinaryPrimitives.ReadUInt32BigEndian(h);
            Flags = (NbdCommandFlags)BinaryPrimitives.ReadUInt16BigEndian(h[4..]);
            Command = (NbdCommand)BinaryPrimitives.ReadUInt16BigEndian(h[6..]);
            Cookie = BinaryPrimitives.ReadUInt64BigEndian(h[8..]);
            Offset = BinaryPrimitives.ReadUInt64BigEndian(h[16..]);
            Length = BinaryPrimitives.ReadUInt32BigEndian(h[24..]);
        }

        public uint Magic { get; }

        private static ReadOnlySpan<byte> Copy(ReadOnlySequence<byte> bytes, Span<byte> target)
        {
            bytes.CopyTo(target);
            return target;
        }

        public NbdCommandFlags Flags { get; }

        public NbdCommand Command { get; }

        public ulong Cookie { get; }

        public ulong Offset { get; }

        public uint Length { get; }
    }
}

/// <summary>
/// A socket stream whose asynchronous reads and writes are blocking calls while
/// <see cref="Blocking"/> is set (the connection's own thread makes them), so the socket is never
/// registered with .NET's socket engine; cleared, it is the plain asynchronous stream.
/// </summary>
internal sealed class BlockingStream(NetworkStream inner, TimeSpan stallTimeout) : Stream
{
    public bool Blocking { get; set; } = true;

    /// <summary>How long an asynchronous write may wait for the peer to take its bytes.</summary>
    public TimeSpan StallTimeout { get; } = stallTimeout;

    public override bool CanRead => true;

    public override bool CanWrite => true;

    public override bool CanSeek => false;

    public override long Length => throw new NotSupportedException();

    public override long Position
    {
        get => throw new NotSupportedException();
        set => throw new NotSupportedException();
    }

    public override int Read(byte[] buffer, int offset, int count) => inner.Read(buffer, offset, count);

    public override int Read(Span<byte> buffer) => inner.Read(buffer);

    public override void Write(byte[] buffer, int offset, int count) => inner.Write(buffer, offset, count);

    public override void Write(ReadOnlySpan<byte> buffer) => inner.Write(buffer);

    public override ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        if (!Blocking)
        {
            return inner.ReadAsync(buffer, cancellationToken);
        }

        try
        {
            cancellationToken.ThrowIfCancellationRequested();
            return new ValueTask<int>(inner.Read(buffer.Span));
        }
        catch (Exception ex) when (ex is IOException or SocketException or ObjectDisposedException or OperationCanceledException)
        {
            return ValueTask.FromException<int>(ex);
        }
    }

    public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    public override ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
    {
        if (!Blocking)
        {
            var write = inner.WriteAsync(buffer, cancellationToken);
            return write.IsCompleted ? write : WithStallTimeoutAsync(write);
        }

        try
        {
            cancellationToken.ThrowIfCancellationRequested();
            inner.Write(buffer.Span);
            return default;
        }
        catch (Exception ex) when (ex is IOException or SocketException or ObjectDisposedException or OperationCanceledException)
        {
            return ValueTask.FromException(ex);
        }
    }

    public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        WriteAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    // TLS writes one record (at most 16 KiB) per call: a record the peer does not take within the
    // timeout means it stopped reading. The connection is then aborted, which ends the write.
    private async ValueTask WithStallTimeoutAsync(ValueTask write)
    {
        try
        {
            await write.AsTask().WaitAsync(StallTimeout).ConfigureAwait(false);
        }
        catch (TimeoutException)
        {
            throw NbdStallException.Reply(StallTimeout);
        }
    }

    public override void Flush()
    {
    }

    public override Task FlushAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

    public override void SetLength(long value) => throw new NotSupportedException();

    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            inner.Dispose();
        }

        base.Dispose(disposing);
    }
}

/// <summary>
/// A client stalled in the middle of a transfer for longer than
/// <see cref="NbdServerOptions.StallTimeout"/>: it took no byte of a reply, or sent no byte of a
/// write's payload. Its connection is closed.
/// </summary>
public sealed class NbdStallException : IOException
{
    private NbdStallException(string message)
        : base(message)
    {
    }

    /// <summary>The client took no byte of a reply.</summary>
    public static NbdStallException Reply(TimeSpan timeout) =>
        new($"the client took no reply bytes for {timeout.TotalSeconds:0.###} s (stall-timeout): it stopped reading");

    /// <summary>The client sent no byte of a write's payload.</summary>
    public static NbdStallException Payload(TimeSpan timeout) =>
        new($"the client sent no bytes of a write's payload for {timeout.TotalSeconds:0.###} s (stall-timeout)");

    /// <summary>The client moved a transfer slower than <see cref="NbdServerOptions.MinTransferRate"/> allows.</summary>
    internal static NbdStallException Slow(string what, long bytes, long elapsedMs, NbdServerOptions options) =>
        new($"the client {what} of {bytes} bytes too slowly: not done after {elapsedMs / 1000.0:0.###} s " +
            $"(stall-timeout {options.StallTimeout.TotalSeconds:0.###} s plus min-transfer-rate {options.MinTransferRate} bytes/s)");
}

/// <summary>The peer broke the NBD protocol in a way that ends the connection.</summary>
public sealed class NbdProtocolException(string message) : Exception(message);
