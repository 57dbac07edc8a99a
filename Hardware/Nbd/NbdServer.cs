using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using ActorBlk.Hardware.Interop;

namespace ActorBlk.Hardware.Nbd;

/// <summary>
/// An NBD server: listens on a TCP endpoint or a Unix domain socket and serves every device of an
/// <see cref="INbdExportCatalog"/> with fixed newstyle negotiation. Each accepted socket is one
/// <see cref="NbdConnection"/>, which pipelines its requests into the block layer.
/// </summary>
public sealed class NbdServer : IAsyncDisposable
{
    private readonly Socket _listener;
    private readonly ConcurrentDictionary<long, NbdConnection> _connections = new();
    private readonly CancellationTokenSource _stopping = new();
    private readonly Task _acceptLoop;
    // Linux: an eventfd that becomes readable (for good) when the server stops: the blocking
    // request readers poll it beside their socket, so a stop wakes them without shutting the
    // sockets' receive side (which would hide the client's own end of stream). -1 elsewhere.
    private readonly int _stopEvent = -1;
    private readonly IPEndPoint? _localEndPoint;
    // The socket file bound for NbdServerOptions.UnixSocket (not for an abstract name), removed at the stop.
    private readonly NbdUnixListener.SocketFile? _socketFile;
    private long _nextId;
    private long _accepted;
    private long _refused;
    private int _disposed;

    private NbdServer(INbdExportCatalog catalog, NbdServerOptions options, Action<string>? log)
    {
        Catalog = catalog;
        Options = options;
        Log = log;
        Budget = new NbdBufferBudget(options.MaxBufferMemory);
        if (OperatingSystem.IsLinux())
        {
            _stopEvent = LibC.EventFd(0, LibC.EFD_CLOEXEC | LibC.EFD_NONBLOCK);
        }

        if (options.UnixSocket is { } unixSocket)
        {
            try
            {
                _listener = NbdUnixListener.Listen(unixSocket, 512, log, out _socketFile);
            }
            catch
            {
                CloseStopEvent();
                throw;
            }
        }
        else
        {
            try
            {
                _listener = new Socket(options.Listen.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
            }
            catch
            {
                CloseStopEvent();
                throw;
            }

            try
            {
                ListenSockets.AllowRestart(_listener);
                _listener.Bind(options.Listen);
                _listener.Listen(512);
            }
            catch
            {
                _listener.Dispose();
                CloseStopEvent();
                throw;
            }

            _localEndPoint = (IPEndPoint)_listener.LocalEndPoint!;
        }

        NbdMetrics.Add(this);
        _acceptLoop = Task.Run(AcceptLoopAsync);
    }

    /// <summary>The bound TCP endpoint (the real port when the options named port 0).</summary>
    /// <exception cref="InvalidOperationException">The server listens on a Unix socket (<see cref="UnixSocket"/>).</exception>
    public IPEndPoint LocalEndPoint => _localEndPoint ?? throw new InvalidOperationException($"the NBD server listens on {Address}, a Unix socket, not a TCP endpoint.");

    /// <summary>The Unix socket the server listens on (a path, or <c>@NAME</c> in the abstract namespace), or null over TCP.</summary>
    public string? UnixSocket => Options.UnixSocket;

    /// <summary>Where the server listens, as its log lines and metrics name it: <c>127.0.0.1:10809</c>, <c>[::1]:10809</c>, or <c>unix:/run/actorblk/nbd.sock</c>.</summary>
    public string Address => UnixSocket is { } socket ? $"unix:{socket}" : LocalEndPoint.ToString();

    /// <summary>
    /// The NBD URI a client opens <paramref name="export"/> with: <c>nbd://127.0.0.1:10809/disk0</c>,
    /// or <c>nbd+unix:///disk0?socket=/run/actorblk/nbd.sock</c> over a Unix socket (the socket
    /// percent-encoded but for <c>/</c>, an abstract name as <c>%00NAME</c>); <c>nbds</c> when the
    /// server requires TLS.
    /// </summary>
    public string ExportUri(string export)
    {
        ArgumentNullException.ThrowIfNull(export);
        var scheme = Options.Tls == NbdTlsMode.Require ? "nbds" : "nbd";
        if (UnixSocket is not { } socket)
        {
            return $"{scheme}://{LocalEndPoint}/{export}";
        }

        var name = socket[0] == '@' ? "%00" + EscapeQuery(socket[1..]) : EscapeQuery(socket);
        return $"{scheme}+unix:///{export}?socket={name}";
    }

    // Percent-encodes all but RFC 3986's unreserved characters and '/', as UTF-8.
    private static string EscapeQuery(string text) =>
        string.Join('/', text.Split('/').Select(Uri.EscapeDataString));

    /// <summary>The exports.</summary>
    public INbdExportCatalog Catalog { get; }

    /// <summary>The settings.</summary>
    public NbdServerOptions Options { get; }

    /// <summary>Connections open now.</summary>
    public int ConnectionCount => _connections.Count;

    /// <summary>Connections accepted since start.</summary>
    public long AcceptedConnections => Interlocked.Read(ref _accepted);

    private long _connectionLimitRefusals;
    private long _refusalLogged;
    private long _fileLimitRefusals;
    private long _fileLimitLogged;
    private long _acceptFailures;
    private long _acceptFailureLogged;
    private long _mapFailures;
    private long _mapFailureLogged;
    private readonly Lock _closeLog = new();
    private long _closeWindowStart = Environment.TickCount64;
    private int _closesLogged;
    private long _closesLeftOut;
    private long _unloggedCloses;

    /// <summary>
    /// Connections closed at accept because <see cref="NbdServerOptions.MaxConnections"/> were
    /// open, or because the process had fewer than 64 file descriptors left under its open-file limit.
    /// </summary>
    public long RefusedConnections => Interlocked.Read(ref _refused);

    /// <summary>The open connections, for specs.</summary>
    internal ICollection<NbdConnection> Connections => _connections.Values;

    /// <summary>Requests in flight in the block layer over all connections.</summary>
    public int InFlight => _connections.Values.Sum(c => c.InFlight);

    /// <summary>Payload bytes held by requests in flight, over all connections (at most <see cref="NbdServerOptions.MaxBufferMemory"/>, give or take kept buffers that a request reused).</summary>
    public long BufferBytesInUse => Budget.InUse;

    /// <summary>Payload bytes idle connections keep for reuse.</summary>
    public long BufferBytesKept => Budget.Kept;

    /// <summary>Requests that had to wait for payload memory since the server started.</summary>
    public long BufferWaits => Budget.Waits;

    internal NbdBufferBudget Budget { get; }

    /// <summary>Lines a minute <see cref="LogClose"/> logs at most.</summary>
    internal const int CloseLinesPerMinute = 10;

    internal Action<string>? Log { get; }

    /// <summary>
    /// Logs why a connection was closed for a fault of its client (bad magic, unknown flags, a
    /// stall): at most <see cref="CloseLinesPerMinute"/> lines a minute, so clients that send
    /// garbage connection after connection cannot flood the log (an outside audit: 4,299 lines in
    /// 90 s). The lines left out are counted in <see cref="UnloggedCloses"/> and reported with the
    /// next line logged.
    /// </summary>
    internal void LogClose(string line)
    {
        if (Log is null)
        {
            return;
        }

        long left;
        lock (_closeLog)
        {
            var now = Environment.TickCount64;
            if (now - _closeWindowStart >= 60_000)
            {
                _closeWindowStart = now;
                _closesLogged = 0;
            }

            if (_closesLogged >= CloseLinesPerMinute)
            {
                _closesLeftOut++;
                Interlocked.Increment(ref _unloggedCloses);
                return;
            }

            _closesLogged++;
            left = _closesLeftOut;
            _closesLeftOut = 0;
        }

        Log(left == 0 ? line : $"{line} ({left} more connection(s) closed for a fault of the client were not logged)");
    }

    /// <summary>
    /// File descriptors below the process's open-file limit (<c>RLIMIT_NOFILE</c>) that the server
    /// leaves to the rest of the node: a connection accepted into one of them is closed at once,
    /// counted as refused and logged (the first, then a line a minute).
    /// </summary>
    internal const int FileDescriptorReserve = 64;

    /// <summary>How long the accept loop waits after an accept failed (other than a connection reset before it was accepted).</summary>
    internal static readonly TimeSpan AcceptRetryDelay = TimeSpan.FromMilliseconds(100);

    /// <summary>For specs: when set, stands for the process's open-file limit (<c>RLIMIT_NOFILE</c>, soft).</summary>
    internal Func<long>? OpenFileLimitHook { get; set; }

    /// <summary>
    /// For specs: called with each accepted socket before its connection is set up (a throw stands
    /// for a failure setting it up).
    /// </summary>
    internal Action<Socket>? AcceptHook { get; set; }

    /// <summary>
    /// For specs: when set, a connection's write of a batch of replies calls this instead of
    /// writing to the socket (a throw or a faulted task stands for an unexpected error of the writer).
    /// </summary>
    internal Func<ValueTask>? WriteOutHook { get; set; }

    /// <summary>Checks of a waiting connection's client for a hang-up (every 250 ms of a wait for buffer memory), for specs.</summary>
    internal long HangUpChecks;

    /// <summary>Reads ahead of a waiting connection's input for an <c>NBD_CMD_DISC</c> after its client's FIN, for specs.</summary>
    internal long DisconnectPeeks;

    /// <summary>Connections let go because their client hung up while a request waited for buffer memory.</summary>
    internal long HangUpCloses;

    /// <summary>Connections let go because their client hung up while a request waited for buffer memory, since the server started.</summary>
    public long HungUpWhileWaiting => Interlocked.Read(ref HangUpCloses);

    /// <summary>Lines <see cref="LogClose"/> left out since the server started.</summary>
    public long UnloggedCloses => Interlocked.Read(ref _unloggedCloses);

    /// <summary>The eventfd that turns readable when the server stops (Linux), or -1 (see <see cref="NbdConnection.StopReading"/>).</summary>
    internal int StopEvent => _stopEvent;

    /// <summary>
    /// Validates <paramref name="options"/>, binds and starts accepting. On a Unix socket path
    /// (<see cref="NbdServerOptions.UnixSocket"/>): a socket file there that nothing listens on (a
    /// connection to it is refused: its server was killed) is removed, the removal logged, and the
    /// path bound again; a socket a server listens on, or anything that is not a socket, is
    /// refused and left alone. The socket file is created as <c>bind(2)</c> creates it, mode 0777
    /// less the process's umask (0755 under the usual 022: only its owner and root may connect,
    /// since connecting needs write permission), as <c>qemu-nbd -k</c>; <see cref="DisposeAsync"/>
    /// removes it while it is still this server's socket.
    /// </summary>
    /// <param name="catalog">The devices to export.</param>
    /// <param name="options">Settings.</param>
    /// <param name="log">Receives one line per notable event (connection errors, a stale socket removed); may be null.</param>
    /// <exception cref="ArgumentException">The options are invalid (see <see cref="NbdServerOptions.Validate"/>).</exception>
    /// <exception cref="SocketException">The TCP endpoint cannot be bound.</exception>
    /// <exception cref="IOException">The Unix socket cannot be listened on: another server listens there, the path is not a socket, or its directory is missing or not writable (the message says which).</exception>
    public static NbdServer Start(INbdExportCatalog catalog, NbdServerOptions options, Action<string>? log = null)
    {
        ArgumentNullException.ThrowIfNull(catalog);
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        return new NbdServer(catalog, options, log);
    }

    /// <summary>
    /// Closes the connections serving <paramref name="device"/>, which was destroyed: each takes no
    /// further request, sends the replies of those in flight and closes gracefully, so a client
    /// learns at once that the export it opened is gone (an idle client would otherwise learn it
    /// only at its next request, from <c>ESHUTDOWN</c>) and reconnects to whatever the name serves
    /// now, if anything. A connection that has selected the device (NBD_OPT_GO or
    /// NBD_OPT_EXPORT_NAME, selected before its reply is sent) is counted, and closed at once if
    /// it is still negotiating; one that was between the export's check and its selection checks
    /// the device again as it starts transmitting, and closes the same way.
    /// </summary>
    /// <returns>How many connections were closed.</returns>
    public int CloseConnectionsOf(Devices.IBlockDevice device)
    {
        ArgumentNullException.ThrowIfNull(device);
        var closed = 0;
        foreach (var connection in _connections.Values)
        {
            if (ReferenceEquals(connection.Device, device))
            {
                connection.StopReading(alone: true);
                closed++;
            }
        }

        return closed;
    }

    /// <summary>
    /// Stops accepting and stops every connection: each takes no further request, and the
    /// requests in flight complete and are answered before it closes, for at most
    /// <see cref="NbdServerOptions.ShutdownGrace"/>; connections still open then are closed hard
    /// (replies not yet sent are dropped). The close is a graceful one: after its last reply a
    /// connection ends its sending side (the client reads end of stream after the replies) and
    /// reads and drops whatever the client still sends (never executing it) until the client
    /// closes its end, so the client's late requests cannot make the close a reset that destroys
    /// replies it has not read yet. A connection still negotiating answers each further option but
    /// <c>NBD_OPT_ABORT</c> with <c>NBD_REP_ERR_SHUTDOWN</c> (and closes at an
    /// <c>NBD_OPT_EXPORT_NAME</c>) until its client ends the session, within the same grace.
    /// Returns when every connection's requests have completed
    /// in the block layer (they are never cancelled: every request completes and frees its tag).
    /// </summary>
    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        NbdMetrics.Remove(this);
        await _stopping.CancelAsync().ConfigureAwait(false);

        // The socket file goes first, while the listener still holds it, so no client meets a
        // socket nobody listens on in between; and only while the path is still this server's
        // socket (NbdUnixListener.Remove).
        if (_socketFile is { } file && NbdUnixListener.Remove(file) is { } failure)
        {
            Log?.Invoke($"NBD server on {Address}: {failure}");
        }

        _listener.Dispose();
        try
        {
            await _acceptLoop.ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is OperationCanceledException or ObjectDisposedException or SocketException)
        {
            // The listener was closed under the accept.
        }

        var open = _connections.Values.ToArray();
        foreach (var c in open)
        {
            c.StopReading();
        }

        SignalStopEvent();

        var all = Task.WhenAll(open.Select(c => c.Completion));
        try
        {
            await all.WaitAsync(Options.ShutdownGrace, Options.GraceClock).ConfigureAwait(false);
        }
        catch (TimeoutException)
        {
            foreach (var c in open)
            {
                c.Abort();
            }

            await all.ConfigureAwait(false);
        }

        // Every connection is closed: no reader polls the event any more.
        CloseStopEvent();
        _stopping.Dispose();
    }

    private unsafe void SignalStopEvent()
    {
        if (_stopEvent >= 0)
        {
            var one = 1UL;
            _ = LibC.Write(_stopEvent, &one, sizeof(ulong));
        }
    }

    private void CloseStopEvent()
    {
        if (_stopEvent >= 0)
        {
            _ = LibC.Close(_stopEvent);
        }
    }

    private async Task AcceptLoopAsync()
    {
        while (!_stopping.IsCancellationRequested)
        {
            Socket socket;
            try
            {
                socket = await _listener.AcceptAsync(_stopping.Token).ConfigureAwait(false);
            }
            catch (Exception ex) when (ex is OperationCanceledException or ObjectDisposedException)
            {
                return;
            }
#pragma warning disable CA1031 // the listener must outlive any failure of one accept
            catch (Exception ex) when (!_stopping.IsCancellationRequested)
#pragma warning restore CA1031
            {
                // A connection reset between SYN and accept: nothing to serve, keep listening.
                // Out of descriptors (EMFILE, ENFILE) or kernel memory (ENOBUFS, ENOMEM), or the
                // runtime unable to start a thread (OutOfMemoryException): the pending connection
                // stays queued and the listener stays readable, so accepting again at once failed
                // again at once, a line each time; the loop waits and tries again, and logs the
                // first failure and then a line a minute.
                LogAcceptFailure(ex);
                if (!(ex is SocketException { SocketErrorCode: SocketError.ConnectionAborted or SocketError.ConnectionReset }))
                {
                    try
                    {
                        await Task.Delay(AcceptRetryDelay, _stopping.Token).ConfigureAwait(false);
                    }
                    catch (OperationCanceledException)
                    {
                        return;
                    }
                }

                continue;
            }

            Interlocked.Increment(ref _accepted);
            if (NearOpenFileLimit(socket, out var fileLimit))
            {
                // Fewer than FileDescriptorReserve descriptors left: clients holding connections
                // had used up the rest, and the .NET runtime, which needs a descriptor to start a
                // thread, failed fast ("Out of memory.", exit 134) at its next thread (an outside
                // audit: 400 idle connections under ulimit -n 400 and one `actorblk devices` took
                // the node down with every device). The reserve is the node's own.
                Refuse(socket, ref _fileLimitRefusals, ref _fileLimitLogged,
                    $"fewer than {FileDescriptorReserve} file descriptors are left under the process's open-file limit ({fileLimit}, ulimit -n), kept for the node");
                continue;
            }

            if (_connections.Count >= Options.MaxConnections)
            {
                // Logged, or an operator whose clients are refused finds nothing (an outside audit
                // filled max-connections with idle clients): the first, then one line a minute.
                Refuse(socket, ref _connectionLimitRefusals, ref _refusalLogged, $"{Options.MaxConnections} connections are open (max-connections)");
                continue;
            }

            var id = Interlocked.Increment(ref _nextId);
            try
            {
                AcceptHook?.Invoke(socket);
                var connection = new NbdConnection(this, socket, id);
                _connections[id] = connection;
                connection.Start(); // the connection leaves the table as it completes (Forget)
            }
#pragma warning disable CA1031 // one connection's failure must not end the listener
            catch (Exception ex)
#pragma warning restore CA1031
            {
                // Setting up this connection failed (its socket reset before its options were
                // set, a bug): it is closed and logged, and the server goes on accepting. Before,
                // the exception ended the accept loop unobserved, and the server, still bound,
                // left every later client waiting for a greeting.
                _connections.TryRemove(id, out _);
                if (ex is SocketException or IOException or ObjectDisposedException or OutOfMemoryException)
                {
                    // The client's socket reset before it was set up, or its thread could not
                    // start (out of memory, threads or descriptors): rate-limited, as any close a
                    // client causes (a client can do it in a loop; an outside audit's 400
                    // connections near the open-file limit logged a stack trace for each).
                    LogClose($"NBD connection {id} from {EndpointOf(socket)} closed at accept: {ex.Message}");
                }
                else
                {
                    Log?.Invoke($"NBD connection {id} from {EndpointOf(socket)} closed at accept: {ex}");
                }
                socket.Dispose();
            }
        }
    }

    // Closes a connection refused at accept, counted in RefusedConnections, and logs the first of
    // its kind and then a line a minute (a client can connect in a loop).
    private void Refuse(Socket socket, ref long refusalsOfKind, ref long lastLogged, string why)
    {
        var refused = Interlocked.Increment(ref _refused);
        if (LogLimit.FirstOrAMinuteOn(Interlocked.Increment(ref refusalsOfKind), ref lastLogged))
        {
            Log?.Invoke($"NBD connection from {EndpointOf(socket)} refused: {why}; {refused} refused so far");
        }

        socket.Dispose();
    }

    private void LogAcceptFailure(Exception ex)
    {
        var failures = Interlocked.Increment(ref _acceptFailures);
        if (LogLimit.FirstOrAMinuteOn(failures, ref _acceptFailureLogged))
        {
            var reason = ex is SocketException socketError ? $"{socketError.Message} ({socketError.SocketErrorCode})" : $"{ex.GetType().Name}: {ex.Message}";
            Log?.Invoke($"NBD accept failed: {reason}; {failures} accept failure(s) so far, retrying");
        }
    }

    /// <summary>
    /// Takes a closing connection out of the table, just before its completion is signalled, so a
    /// stop (or anyone awaiting it) never finds it counted afterwards.
    /// </summary>
    internal void Forget(long id) => _connections.TryRemove(id, out _);

    /// <summary>
    /// Logs an allocation map that threw while a block status reply was built (answered as data):
    /// the first, then a line a minute. Without it a broken map (a custom driver's, or a bug of
    /// ours) only made every export look fully allocated, with nothing to tell the operator why.
    /// </summary>
    internal void LogMapFailure(string device, Exception ex)
    {
        var failures = Interlocked.Increment(ref _mapFailures);
        if (LogLimit.FirstOrAMinuteOn(failures, ref _mapFailureLogged))
        {
            Log?.Invoke($"NBD block status of {device}: its allocation map failed ({ex.GetType().Name}: {ex.Message}); the range was answered as data; {failures} map failure(s) so far");
        }
    }

    private bool NearOpenFileLimit(Socket socket, out long limit)
    {
        limit = long.MaxValue;
        if (!OperatingSystem.IsLinux())
        {
            return false;
        }

        // The kernel hands out the lowest free descriptor, so every number below this socket's
        // is taken: fewer than FileDescriptorReserve left when its number is that close to the limit.
        limit = OpenFileLimitHook?.Invoke() ?? LibC.OpenFileLimit();
        long fd;
        try
        {
            fd = socket.SafeHandle.DangerousGetHandle().ToInt64();
        }
        catch (ObjectDisposedException)
        {
            return false;
        }

        return fd >= limit - FileDescriptorReserve;
    }

    /// <summary>Who a connection comes from, for the log: the client's address and port over TCP, its process over a Unix socket (<see cref="NbdUnixListener.Peer"/>).</summary>
    internal static string EndpointOf(Socket socket)
    {
        if (socket.AddressFamily == AddressFamily.Unix)
        {
            return NbdUnixListener.Peer(socket);
        }

        try
        {
            return socket.RemoteEndPoint?.ToString() ?? "an unknown peer";
        }
        catch (SocketException)
        {
            return "a peer already gone";
        }
    }
}
