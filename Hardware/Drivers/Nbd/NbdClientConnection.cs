using System.Buffers;
using System.Buffers.Binary;
using System.IO.Pipelines;
using System.Net.Security;
using System.Security.Authentication;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using System.Net.Sockets;
using System.Text;
using ActorBlk.Hardware.Nbd;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;

namespace ActorBlk.Hardware.Drivers.Nbd;

/// <summary>
/// One NBD connection of the client driver, serving one hardware queue (as Linux's nbd driver
/// does): requests are written into a send pipe by the queue's dispatcher and pushed to the socket
/// by a pump; a receiver matches replies to requests by cookie (generation, tag and flush-sequence stage) and completes
/// them. Simple replies only, so a read's data follows its 16-byte reply header.
/// </summary>
internal sealed class NbdClientConnection : IDisposable
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
    }

    public ulong Size { get; }

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
    /// Sets how the server certificate is checked: not at all when verification is off; against the
    /// CA file as the only trust anchors when one is given (the name must match too); otherwise
    /// by the system's default validation.
    /// </summary>
    // Why the verification callback refused the server's certificate, for the handshake's error.
    private sealed class Refusal
    {
        public string? Reason { get; set; }
    }

    private static Refusal ConfigureVerification(SslClientAuthenticationOptions authentication, NbdClientOptions options)
    {
        var refusal = new Refusal();
        if (!options.VerifiesPeer)
        {
            authentication.RemoteCertificateValidationCallback = (_, _, _, _) => true; // tls_verify = off or tls-verify-peer=0: insecure by request
            return refusal;
        }

        // Over a Unix socket without tls-hostname there is no name to check: the chain alone, as libnbd.
        var checksName = options.Uri.ChecksTlsName;
        if (options.TrustAnchors is not { } file)
        {
            if (!checksName)
            {
                authentication.RemoteCertificateValidationCallback = (_, _, chain, errors) =>
                {
                    errors &= ~SslPolicyErrors.RemoteCertificateNameMismatch;
                    refusal.Reason = errors == SslPolicyErrors.None ? null : Describe(errors, chain);
                    return errors == SslPolicyErrors.None;
                };
            }

            return refusal;
        }

        var anchors = new X509Certificate2Collection();
        try
        {
            anchors.ImportFromPemFile(file);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException or CryptographicException or ArgumentException)
        {
            throw new NbdTlsException($"{options.Uri}: cannot read {options.TrustAnchorsSource}: {FileProblems.Describe(file, ex)}", ex);
        }

        if (anchors.Count == 0)
        {
            throw new NbdTlsException($"{options.Uri}: {options.TrustAnchorsSource} holds no PEM certificate.", null);
        }

        var policy = new X509ChainPolicy { TrustMode = X509ChainTrustMode.CustomRootTrust, RevocationMode = X509RevocationMode.NoCheck };
        policy.CustomTrustStore.AddRange(anchors);
        authentication.CertificateChainPolicy = policy;

        // The server's own certificate in tls_ca is trusted as itself (pinned), whoever issued
        // it: as a root of trust only a self-signed one chained (an outside audit got PartialChain
        // for a CA-signed server certificate given as tls_ca, which README said was accepted).
        // Its name must still match, its validity period hold, and the chain may lack nothing but
        // its issuer (PartialChain, UntrustedRoot): an expired pinned certificate is refused.
        authentication.RemoteCertificateValidationCallback = (_, certificate, chain, errors) =>
        {
            if (!checksName)
            {
                errors &= ~SslPolicyErrors.RemoteCertificateNameMismatch;
            }

            if (errors == SslPolicyErrors.None)
            {
                return true;
            }

            var statuses = chain?.ChainStatus.Select(s => s.Status).Where(s => s != X509ChainStatusFlags.NoError).Distinct().ToArray() ?? [];
            const X509ChainStatusFlags Unanchored = X509ChainStatusFlags.PartialChain | X509ChainStatusFlags.UntrustedRoot;
            if (errors == SslPolicyErrors.RemoteCertificateChainErrors && certificate is X509Certificate2 presented && IsPinned(anchors, presented)
                && statuses.All(s => (s & ~Unanchored) == 0) && DateTime.Now >= presented.NotBefore && DateTime.Now <= presented.NotAfter)
            {
                return true;
            }

            refusal.Reason = Describe(errors, chain);
            return false;
        };
        return refusal;
    }

    private static string Describe(SslPolicyErrors errors, X509Chain? chain)
    {
        var statuses = chain?.ChainStatus.Select(s => s.Status).Where(s => s != X509ChainStatusFlags.NoError).Distinct().ToArray() ?? [];
        return statuses.Length > 0 ? $"{errors}: {string.Join(", ", statuses)}" : errors.ToString();
    }

    // The client's certificate of a tls-certificates directory, as libnbd, nbdkit and qemu lay it
    // out: client-cert.pem with its key in client-key.pem, for a server that verifies its clients
    // (nbdkit --tls-verify-peer). Neither file: no client certificate; one without the other is an error.
    private static X509Certificate2? ClientCertificate(NbdClientOptions options)
    {
        if (options.Uri.TlsCertificates is not { } directory)
        {
            return null;
        }

        var certificate = Path.Combine(directory, "client-cert.pem");
        var key = Path.Combine(directory, "client-key.pem");
        if (!System.IO.File.Exists(certificate) && !System.IO.File.Exists(key))
        {
            return null;
        }

        try
        {
            return X509Certificate2.CreateFromPemFile(certificate, key);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException or CryptographicException or ArgumentException)
        {
            var missing = !System.IO.File.Exists(certificate) ? certificate : !System.IO.File.Exists(key) ? key : null;
            throw new NbdTlsException(missing is null
                ? $"{options.Uri}: cannot use the client certificate '{certificate}' with its key '{key}' (tls-certificates): {ex.Message}"
                : $"{options.Uri}: tls-certificates '{directory}' has {(missing == key ? "client-cert.pem without client-key.pem" : "client-key.pem without client-cert.pem")}: give both or neither.", ex);
        }
    }

    private static bool IsPinned(X509Certificate2Collection anchors, X509Certificate certificate)
    {
        var presented = certificate.GetRawCertData();
        foreach (var anchor in anchors)
        {
            if (anchor.RawData.AsSpan().SequenceEqual(presented))
            {
                return true;
            }
        }

        return false;
    }

    /// <summary>Connects and negotiates (NBD_OPT_GO, falling back to NBD_OPT_EXPORT_NAME).</summary>
    /// <exception cref="IOException">The server cannot be reached or refuses the export.</exception>
    /// <exception cref="NbdTlsException">TLS failed: the server certificate is not trusted, or the CA file cannot be read.</exception>
    /// <exception cref="NbdClientProtocolException">The server broke the negotiation's rules: a malformed option reply (bad magic, a reply for another option, an NBD_REP_INFO of the wrong length for its type), no NBD_INFO_EXPORT before the acknowledgement, or block size constraints that break proto.md's.</exception>
    /// <exception cref="OperationCanceledException"><paramref name="cancellationToken"/> was cancelled (the socket is shut down under a negotiation in progress).</exception>
    public static NbdClientConnection Connect(NbdClientOptions options, CancellationToken cancellationToken = default)
    {
        var uri = options.Uri;
        var timeout = options.ConnectTimeout;
        var socket = uri.Socket is null
            ? new Socket(SocketType.Stream, ProtocolType.Tcp) { NoDelay = true }
            : new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        Stream? stream = null;

        // The negotiation reads and writes synchronously (with the connect timeout on the socket):
        // a cancellation shuts the socket down, which ends a blocked receive at once. The connect
        // timeout bounds the whole negotiation too, not only each receive: a server that drips
        // its greeting a byte at a time, or sends option reply after option reply for ever, kept
        // every receive under the socket's timeout and the open (or a reconnect, holding the
        // driver's lock) waited for ever (an outside audit with a hostile server).
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        deadline.CancelAfter(timeout);
        var connected = false;
        var tlsUnanswered = false; // the TLS handshake completed, and nothing came over the session yet
        X509Certificate2? clientCertificate = null; // the connection's once it is made; disposed here otherwise
        var abort = default(CancellationTokenRegistration);
        try
        {
            if (uri.Socket is { } path)
            {
                ConnectUnix(ref socket, path, options, deadline.Token, cancellationToken);
            }
            else
            {
                socket.ConnectAsync(uri.Host, uri.Port, deadline.Token).AsTask().GetAwaiter().GetResult();
            }

            connected = true;

            // The connect observed the deadline itself; from here it shuts the socket down.
            abort = deadline.Token.Register(static s =>
            {
                try
                {
                    ((Socket)s!).Shutdown(SocketShutdown.Both);
                }
                catch (Exception ex) when (ex is SocketException or ObjectDisposedException)
                {
                    // Closed already.
                }
            }, socket);
            socket.ReceiveTimeout = (int)timeout.TotalMilliseconds;
            socket.SendTimeout = (int)timeout.TotalMilliseconds;
            stream = new NetworkStream(socket, ownsSocket: false);
            var greeting = ReadExactly(stream, 18);
            if (BinaryPrimitives.ReadUInt64BigEndian(greeting) != NbdProtocol.InitMagic || BinaryPrimitives.ReadUInt64BigEndian(greeting.AsSpan(8)) != NbdProtocol.OptionMagic)
            {
                throw new IOException($"{uri} is not a newstyle NBD server.");
            }

            var handshake = (NbdHandshakeFlags)BinaryPrimitives.ReadUInt16BigEndian(greeting.AsSpan(16));
            if ((handshake & NbdHandshakeFlags.FixedNewstyle) == 0)
            {
                throw new IOException($"{uri} does not speak fixed newstyle negotiation.");
            }

            var noZeroes = (handshake & NbdHandshakeFlags.NoZeroes) != 0;
            WriteU32(stream, (uint)(NbdClientFlags.FixedNewstyle | (noZeroes ? NbdClientFlags.NoZeroes : 0)));
            if (uri.Tls)
            {
                SendOption(stream, NbdOption.StartTls, []);
                var reply = ReadOptionReply(stream, uri, NbdOption.StartTls);
                if (reply.Type != NbdReply.Ack)
                {
                    SoftDisconnect(stream);
                    throw new IOException($"{uri}: the server refused STARTTLS ({Describe(reply.Type, reply.Data)}).");
                }

                var tls = new SslStream(stream, leaveInnerStreamOpen: false);
                stream = tls;
                clientCertificate = ClientCertificate(options);
                var authentication = new SslClientAuthenticationOptions { TargetHost = uri.TlsTargetHost, ClientCertificates = clientCertificate is null ? null : [clientCertificate] };
                var refusal = ConfigureVerification(authentication, options);
                try
                {
                    tls.AuthenticateAsClient(authentication);
                    tlsUnanswered = true;
                }
                catch (AuthenticationException ex)
                {
                    throw new NbdTlsException($"{uri}: TLS handshake failed: {ex.Message}" + (refusal.Reason is { } why ? $" ({why})" : string.Empty) +
                        (options.VerifiesPeer ? $" (server certificate checked against {options.TrustAnchorsSource}{(uri.TlsHostname is null ? string.Empty : $", for the name '{uri.TlsHostname}'")})" : string.Empty), ex);
                }
            }

            var name = Encoding.UTF8.GetBytes(uri.Export);
            // The block sizes, and the description: an ActorBlk server ends it with the device's
            // identity (DiskSequence), which a reconnect compares with the one it opened.
            var go = new byte[4 + name.Length + 2 + 4];
            BinaryPrimitives.WriteUInt32BigEndian(go, (uint)name.Length);
            name.CopyTo(go, 4);
            BinaryPrimitives.WriteUInt16BigEndian(go.AsSpan(4 + name.Length), 2);
            BinaryPrimitives.WriteUInt16BigEndian(go.AsSpan(6 + name.Length), (ushort)NbdInfo.BlockSize);
            BinaryPrimitives.WriteUInt16BigEndian(go.AsSpan(8 + name.Length), (ushort)NbdInfo.Description);
            SendOption(stream, NbdOption.Go, go);
            ulong size = 0;
            NbdTransmissionFlags flags = 0;
            uint minimum = 1, maximum = 32 << 20;
            string? description = null;
            var sawExport = false;
            while (true)
            {
                var reply = ReadOptionReply(stream, uri, NbdOption.Go);
                tlsUnanswered = false;
                if (reply.Type == NbdReply.Ack)
                {
                    if (!sawExport)
                    {
                        // proto.md: the server MUST send NBD_INFO_EXPORT before it acknowledges
                        // NBD_OPT_GO. Without it the device opened with 0 bytes and no flags.
                        throw new NbdClientProtocolException($"{uri}: protocol error: the server acknowledged NBD_OPT_GO without sending NBD_INFO_EXPORT (the export's size and flags).");
                    }

                    CheckBlockSizes(uri, minimum, maximum);
                    break;
                }

                if (reply.Type == NbdReply.ErrUnsupported)
                {
                    // An old server: NBD_OPT_EXPORT_NAME has no error path, it closes on failure.
                    SendOption(stream, NbdOption.ExportName, name);
                    var export = ReadExactly(stream, 10 + (noZeroes ? 0 : NbdProtocol.ExportNamePadding));
                    size = BinaryPrimitives.ReadUInt64BigEndian(export);
                    flags = (NbdTransmissionFlags)BinaryPrimitives.ReadUInt16BigEndian(export.AsSpan(8));
                    break;
                }

                if (reply.Type != NbdReply.Info)
                {
                    SoftDisconnect(stream);
                    throw new IOException($"{uri}: {Describe(reply.Type, reply.Data)}.");
                }

                switch (CheckInfo(uri, reply.Data))
                {
                    case NbdInfo.Export:
                        size = BinaryPrimitives.ReadUInt64BigEndian(reply.Data.AsSpan(2));
                        flags = (NbdTransmissionFlags)BinaryPrimitives.ReadUInt16BigEndian(reply.Data.AsSpan(10));
                        sawExport = true;
                        break;
                    case NbdInfo.BlockSize:
                        minimum = BinaryPrimitives.ReadUInt32BigEndian(reply.Data.AsSpan(2));
                        maximum = BinaryPrimitives.ReadUInt32BigEndian(reply.Data.AsSpan(10));
                        break;
                    case NbdInfo.Description:
                        description = Encoding.UTF8.GetString(reply.Data.AsSpan(2, Math.Min(reply.Data.Length - 2, NbdProtocol.MaxStringLength)));
                        break;
                }
            }

            // No shutdown after this: a deadline reached as the negotiation ended has cut it off.
            abort.Dispose();
            cancellationToken.ThrowIfCancellationRequested();
            if (deadline.IsCancellationRequested)
            {
                throw new OperationCanceledException(deadline.Token);
            }

            socket.ReceiveTimeout = 0;
            socket.SendTimeout = 0;
            var made = new NbdClientConnection(socket, stream, size, flags, minimum, maximum, description, clientCertificate);
            clientCertificate = null;
            return made;
        }
        catch (Exception ex) when (cancellationToken.IsCancellationRequested)
        {
            // Whatever the shut-down socket made the negotiation throw, the cause is the cancel.
            stream?.Dispose();
            socket.Dispose();
            throw new OperationCanceledException($"connecting to {uri} was cancelled", ex, cancellationToken);
        }
        catch (Exception ex) when (connected && deadline.IsCancellationRequested)
        {
            // The deadline shut the socket down under a negotiation still going on.
            stream?.Dispose();
            socket.Dispose();
            throw new IOException($"cannot connect to {uri}: the server accepted the connection but did not complete the negotiation within {timeout.TotalSeconds:0.###} s", ex);
        }
        catch (IOException ex) when (tlsUnanswered && ex is not (NbdTlsException or NbdClientProtocolException) && ex.InnerException is not SocketException { SocketErrorCode: SocketError.TimedOut })
        {
            // TLS 1.3: the server checks the client's certificate after the client's handshake has
            // completed, and one it refuses ends the session at the first write or read. The error
            // was "Unable to write data to the transport connection: Broken pipe." (a review).
            stream?.Dispose();
            socket.Dispose();
            var presented = options.Uri.TlsCertificates is { } directory && System.IO.File.Exists(Path.Combine(directory, "client-cert.pem"));
            throw new NbdTlsException($"{uri}: the server ended the TLS session right after its handshake ({ex.Message}): it refused this client, " +
                (presented
                    ? "most likely the client certificate (tls-certificates' client-cert.pem)"
                    : "most likely for presenting no certificate: a server that verifies its clients (nbdkit --tls-verify-peer) needs client-cert.pem and client-key.pem in the URI's tls-certificates directory"), ex);
        }
        catch (EndOfStreamException ex)
        {
            // "Unable to read beyond the end of the stream" said nothing of who closed it when.
            stream?.Dispose();
            socket.Dispose();
            throw new IOException($"cannot connect to {uri}: the server closed the connection during the negotiation", ex);
        }
        catch (OperationCanceledException ex)
        {
            // Not the caller's token (above): the connect timeout's own. A host that does not
            // answer the SYN (cut off, or gone from the network) said "The operation was canceled."
            stream?.Dispose();
            socket.Dispose();
            throw new IOException($"cannot connect to {uri}: connect timed out after {timeout.TotalSeconds:0.###} s (no answer from the server's host)",
                new TimeoutException($"connecting to {(uri.Socket is null ? $"{uri.Host}:{uri.Port}" : $"socket '{ControlCharacters.Escape(uri.Socket)}'")} got no answer within {timeout.TotalSeconds:0.###} s", ex));
        }
        catch (Exception ex) when (ex is SocketException or System.Security.Authentication.AuthenticationException)
        {
            stream?.Dispose();
            socket.Dispose();

            var why = ex is SocketException refused && !connected && uri.Socket is { } path ? UnixConnectProblem(path, refused) : ex.Message;
            throw new IOException($"cannot connect to {uri}: {why}", ex);
        }
        catch (IOException ex) when (ex.InnerException is SocketException { SocketErrorCode: SocketError.TimedOut })
        {
            // The socket's receive or send timeout during the negotiation: the server accepted
            // the connection but did not answer (one that takes a client at a time, a stalled one).
            stream?.Dispose();
            socket.Dispose();
            throw new IOException($"cannot connect to {uri}: the server accepted the connection but did not complete the negotiation within {timeout.TotalSeconds:0.###} s", ex);
        }
        catch
        {
            stream?.Dispose();
            socket.Dispose();
            throw;
        }
        finally
        {
            abort.Dispose();
            clientCertificate?.Dispose(); // not handed to a connection
        }
    }

    /// <summary>The first wait before a connect to a Unix socket whose backlog is full is tried again.</summary>
    internal static readonly TimeSpan BacklogRetryFirst = TimeSpan.FromMilliseconds(10);

    /// <summary>The longest wait between connects to a Unix socket whose backlog is full.</summary>
    internal static readonly TimeSpan BacklogRetryMax = TimeSpan.FromMilliseconds(200);

    // connect(2) to a Unix socket whose listener has its backlog full fails at once with EAGAIN
    // (a TCP listener leaves the SYN unanswered instead, and the client's kernel sends it again):
    // the open failed at once with "Resource temporarily unavailable", where a server busy
    // accepting would have taken the connection a moment later. EAGAIN is "not yet": the connect
    // is tried again on a fresh socket (.NET takes no second connect on a socket whose connect
    // failed) after a short wait, doubling up to BacklogRetryMax, until the connect timeout.
    private static void ConnectUnix(ref Socket socket, string path, NbdClientOptions options, CancellationToken deadline, CancellationToken cancellationToken)
    {
        var endpoint = new UnixDomainSocketEndPoint(path);
        var wait = BacklogRetryFirst;
        while (true)
        {
            try
            {
                socket.ConnectAsync(endpoint, deadline).AsTask().GetAwaiter().GetResult();
                return;
            }
            catch (SocketException ex) when (ex.SocketErrorCode == SocketError.WouldBlock)
            {
                options.BacklogFullHook?.Invoke();
                if (deadline.WaitHandle.WaitOne(wait))
                {
                    cancellationToken.ThrowIfCancellationRequested();
                    var timeout = options.ConnectTimeout.TotalSeconds;
                    var shown = ControlCharacters.Escape(path);
                    throw new IOException(
                        $"cannot connect to {options.Uri}: the socket '{shown}' kept its backlog of pending connections full for {timeout:0.###} s (connect: Resource temporarily unavailable, tried again until the connect timeout): its server accepts no connections, or not as fast as they come",
                        new TimeoutException($"the socket '{shown}' kept its backlog full for {timeout:0.###} s", ex));
                }

                wait = TimeSpan.FromTicks(Math.Min(wait.Ticks * 2, BacklogRetryMax.Ticks));
                socket.Dispose();
                socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            }
        }
    }

    // Why connect(2) to a Unix domain socket failed, naming the socket. .NET reported ENOENT as
    // "Cannot assign requested address" (a review); and an audit of the socket path's faults
    // found more: ECONNREFUSED comes both from a socket nobody listens on (a server killed, its
    // socket file left behind) and from a path that is no socket at all, where "Connection
    // refused" sent the user after a server; and a directory on the way the client may not
    // search (EACCES) or a file in place of one (ENOTDIR) was reported as "No such file or
    // directory". The path is looked at (statx, following links as connect does) only to say why.
    private static unsafe string UnixConnectProblem(string path, SocketException error)
    {
        var shown = ControlCharacters.Escape(path);
        if (path[0] == '\0')
        {
            return error.SocketErrorCode == SocketError.ConnectionRefused
                ? $"nothing listens on the abstract socket '{shown}' (Connection refused)"
                : error.Message;
        }

        var statx = default(Interop.LibC.Statx);
        if (Interop.LibC.StatX(Interop.LibC.AT_FDCWD, path, 0, Interop.LibC.STATX_BASIC_STATS, &statx) < 0)
        {
            var errno = Interop.LibC.LastErrno;
            return errno == Interop.LibC.ENOENT
                ? $"no socket at '{shown}' (No such file or directory)"
                : $"cannot reach the socket '{shown}' ({Interop.LibC.Describe(errno)}{(errno == Interop.LibC.EACCES ? ": a directory on its path is not searchable by this user" : string.Empty)})";
        }

        var kind = statx.Mode & Interop.LibC.S_IFMT;
        if (kind != Interop.LibC.S_IFSOCK)
        {
            var what = kind switch
            {
                Interop.LibC.S_IFREG => "a regular file",
                Interop.LibC.S_IFDIR => "a directory",
                Interop.LibC.S_IFIFO => "a FIFO",
                Interop.LibC.S_IFCHR => "a character device",
                Interop.LibC.S_IFBLK => "a block device",
                _ => $"a file of type 0x{kind:X4} (S_IFMT)",
            };
            return $"'{shown}' is {what}, not a socket";
        }

        return error.SocketErrorCode switch
        {
            SocketError.ConnectionRefused => $"nothing listens on the socket '{shown}' (Connection refused: its server is not running, and the socket file is one it left behind)",
            SocketError.AccessDenied => $"no permission to connect to the socket '{shown}' (Permission denied: the socket file needs write permission)",
            _ => $"the socket '{shown}': {error.Message}",
        };
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
        if (Interlocked.Exchange(ref _dead, 1) == 0 && Volatile.Read(ref _outstanding) == 0)
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
                var result = await reader.ReadAtLeastAsync(NbdProtocol.SimpleReplyHeaderLength).ConfigureAwait(false);
                var buffer = result.Buffer;
                if (buffer.Length < NbdProtocol.SimpleReplyHeaderLength)
                {
                    Lost(Volatile.Read(ref _killedBecause) ?? "the server closed the connection");
                    return;
                }

                var magicOk = ParseReply(buffer.Slice(0, NbdProtocol.SimpleReplyHeaderLength), out var error, out var cookie);
                reader.AdvanceTo(buffer.GetPosition(NbdProtocol.SimpleReplyHeaderLength));
                if (!magicOk)
                {
                    Lost("bad reply magic");
                    return;
                }

                var tag = (int)(cookie & 0xffff);
                var stage = (int)((cookie >> 16) & 0xffff);
                var generation = (uint)(cookie >> 32);
                if ((uint)tag >= MaxTags || Volatile.Read(ref _pending[tag].Request) is not { } request || _pending[tag].Generation != generation || _pending[tag].Stage != stage)
                {
                    // Framing depends on knowing the request (a read's data follows): a reply we
                    // cannot match leaves the stream unparseable.
                    Lost($"a reply for unknown cookie 0x{cookie:x}");
                    return;
                }

                var pending = _pending[tag];
                if (pending.Read && error == NbdError.None && !await ReadDataAsync(reader, request, pending.Length).ConfigureAwait(false))
                {
                    // The connection was killed or closed with the data unread: its requests are
                    // the block layer's now (requeued or failed), and nothing more is read here.
                    Lost(Volatile.Read(ref _killedBecause) ?? "the connection was closed");
                    return;
                }

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
                    lock (_sendLock)
                    {
                        _closing = true;
                    }
                }
                else
                {
                    request.Complete(NbdErrors.ToStatus(error), generation);
                }

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

    private static bool ParseReply(ReadOnlySequence<byte> bytes, out NbdError error, out ulong cookie)
    {
        Span<byte> header = stackalloc byte[NbdProtocol.SimpleReplyHeaderLength];
        bytes.CopyTo(header);
        error = (NbdError)BinaryPrimitives.ReadUInt32BigEndian(header[4..]);
        cookie = BinaryPrimitives.ReadUInt64BigEndian(header[8..]);
        return BinaryPrimitives.ReadUInt32BigEndian(header) == NbdProtocol.SimpleReplyMagic;
    }

    // Copies a read's data into its request's bios as it arrives; false, with the rest unread,
    // once the connection is fenced (Fence). Each piece is copied holding the copy word, taken
    // before the request's bios are touched at all and never held across a read of the socket:
    // a fence waits at most for one copy of bytes already received, and after it no byte lands
    // in a request the block layer may have taken back (requeued, failed, its bios freed and
    // reused by other I/O). Without it the receiver, holding a reply's data when a reset closed
    // the connection and reclaimed the request, copied it into a buffer that was another's (a
    // review). One compare-and-swap per piece, usually one per reply.
    private async ValueTask<bool> ReadDataAsync(PipeReader reader, Request request, int length)
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
                bio ??= request.Bio;
                while (left > 0 && taken < buffer.Length && bio is not null)
                {
                    var take = (int)Math.Min(buffer.Length - taken, bio.Size - offset);
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

    /// <summary>
    /// The information type of an <c>NBD_REP_INFO</c> payload, checked to be as long as proto.md
    /// fixes it for that type (NBD_INFO_EXPORT 12 bytes, NBD_INFO_BLOCK_SIZE 14); other types
    /// (name, description, later ones) are variable or unknown and not read.
    /// </summary>
    /// <exception cref="NbdClientProtocolException">The payload is too short for a type, or of the wrong length for its type.</exception>
    private static NbdInfo CheckInfo(NbdUri uri, byte[] data)
    {
        if (data.Length < 2)
        {
            throw new NbdClientProtocolException($"{uri}: protocol error: an NBD_REP_INFO reply of {data.Length} byte(s), too short for its information type.");
        }

        var info = (NbdInfo)BinaryPrimitives.ReadUInt16BigEndian(data);
        var (name, expected) = info switch
        {
            NbdInfo.Export => ("NBD_INFO_EXPORT", 12),
            NbdInfo.BlockSize => ("NBD_INFO_BLOCK_SIZE", 14),
            _ => (string.Empty, -1),
        };
        if (expected >= 0 && data.Length != expected)
        {
            throw new NbdClientProtocolException($"{uri}: protocol error: an NBD_REP_INFO reply for {name} of {data.Length} bytes (it is {expected} bytes).");
        }

        return info;
    }

    /// <summary>
    /// Checks <c>NBD_INFO_BLOCK_SIZE</c> against proto.md's constraints: the minimum a power of two
    /// of at most 64 KiB, the maximum at least the minimum. A minimum of 1000 opened a device of
    /// 1024-byte blocks whose every reconnect was then refused; a maximum below the minimum failed
    /// the device's creation with an ArgumentOutOfRangeException and its stack trace.
    /// </summary>
    /// <exception cref="NbdClientProtocolException">A constraint is broken.</exception>
    private static void CheckBlockSizes(NbdUri uri, uint minimum, uint maximum)
    {
        if (minimum == 0 || !System.Numerics.BitOperations.IsPow2(minimum) || minimum > 64 << 10)
        {
            throw new NbdClientProtocolException($"{uri}: protocol error: NBD_INFO_BLOCK_SIZE has a minimum block size of {minimum} bytes (it is a power of two from 1 to 65536).");
        }

        if (maximum < minimum)
        {
            throw new NbdClientProtocolException($"{uri}: protocol error: NBD_INFO_BLOCK_SIZE has a maximum block size of {maximum} bytes, below its minimum of {minimum}.");
        }
    }

    private static string Describe(NbdReply type, byte[] data)
    {
        // The reply's name, what it means for this client, and the server's own words if any.
        var meaning = type switch
        {
            NbdReply.ErrUnknown => " (the server does not offer that export)",
            NbdReply.ErrTlsRequired => " (the server requires TLS: use an nbds:// URI)",
            NbdReply.ErrPolicy => " (the server's policy refuses it)",
            NbdReply.ErrShutdown => " (the server is shutting down)",
            _ => string.Empty,
        };
        return data.Length > 0 ? $"{type}{meaning}: {Printable(data)}" : type + meaning;
    }

    // The server's error message as the user sees it: proto.md's string of at most 4096 bytes
    // (a hostile server's was taken whole, up to 1 MiB, into the error and the log), its control
    // characters escaped (terminal escape sequences went to the user's terminal as sent).
    private static string Printable(byte[] data)
    {
        var text = Encoding.UTF8.GetString(data, 0, Math.Min(data.Length, NbdProtocol.MaxStringLength));
        var printable = new StringBuilder(text.Length);
        foreach (var c in text)
        {
            if (char.IsControl(c))
            {
                printable.Append(System.Globalization.CultureInfo.InvariantCulture, $"\\x{(int)c:x2}");
            }
            else
            {
                printable.Append(c);
            }
        }

        return data.Length > NbdProtocol.MaxStringLength ? printable.Append(" ...").ToString() : printable.ToString();
    }

    private static byte[] ReadExactly(Stream stream, int count)
    {
        var buffer = new byte[count];
        stream.ReadExactly(buffer);
        return buffer;
    }

    private static void WriteU32(Stream stream, uint value)
    {
        Span<byte> b = stackalloc byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(b, value);
        stream.Write(b);
    }

    // An option refused (NBD_REP_ERR_*, NBD_REP_ERR_SHUTDOWN among them): the client "MUST
    // initiate a soft disconnect" (proto.md), NBD_OPT_ABORT, rather than drop the socket. As
    // qemu's nbd_send_opt_abort, its answer is not awaited (older servers just close), and a
    // server already gone is no error: the refusal is what the open reports.
    private static void SoftDisconnect(Stream stream)
    {
        try
        {
            SendOption(stream, NbdOption.Abort, []);
        }
        catch (Exception ex) when (ex is IOException or SocketException or ObjectDisposedException)
        {
            // Closed already.
        }
    }

    private static void SendOption(Stream stream, NbdOption option, byte[] data)
    {
        var header = new byte[16 + data.Length];
        BinaryPrimitives.WriteUInt64BigEndian(header, NbdProtocol.OptionMagic);
        BinaryPrimitives.WriteUInt32BigEndian(header.AsSpan(8), (uint)option);
        BinaryPrimitives.WriteUInt32BigEndian(header.AsSpan(12), (uint)data.Length);
        data.CopyTo(header, 16);
        stream.Write(header);
        stream.Flush();
    }

    // One option reply to <option>: its magic and option number are checked (a reply for another
    // option is a protocol error, proto.md: the reply carries "the option as sent by the client"),
    // and its length bounded, each failure naming the server and export.
    private static (NbdReply Type, byte[] Data) ReadOptionReply(Stream stream, NbdUri uri, NbdOption option)
    {
        var header = ReadExactly(stream, 20);
        if (BinaryPrimitives.ReadUInt64BigEndian(header) != NbdProtocol.ReplyMagic)
        {
            throw new NbdClientProtocolException($"{uri}: protocol error: bad option reply magic 0x{BinaryPrimitives.ReadUInt64BigEndian(header):x}.");
        }

        var answered = (NbdOption)BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(8));
        if (answered != option)
        {
            throw new NbdClientProtocolException($"{uri}: protocol error: an option reply for option {(uint)answered} where {option} ({(uint)option}) was asked.");
        }

        var length = BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(16));
        if (length > 1 << 20)
        {
            throw new NbdClientProtocolException($"{uri}: protocol error: an option reply of {length} bytes (at most 1 MiB is taken).");
        }

        return ((NbdReply)BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(12)), ReadExactly(stream, (int)length));
    }

    // A request's cookie: its generation, and its tag with the stage of its flush sequence (0 for
    // the first command sent, 1 and 2 for those sent after a reply). The stage tells a reply to the
    // stage outstanding from a second reply to one already answered: with one cookie for every
    // stage, a server that answered a preflush twice completed the write with the duplicate, before
    // the write was answered or even sent (an outside audit with a hostile server).
    private static ulong Cookie(uint generation, int tag, int stage) => ((ulong)generation << 32) | ((uint)stage << 16) | (uint)tag;

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

        // A flush sequence's stages still to send: the command after a preflush, a flush after
        // a command whose FUA the server cannot take.
        public (NbdCommand Command, NbdCommandFlags Flags)? Next;
        public bool PostFlush;
    }
}

/// <summary>
/// TLS with an NBD server failed: the server certificate is not trusted (wrong or missing CA,
/// name mismatch, expired) or the <c>tls_ca</c> file cannot be used. An <see cref="IOException"/>,
/// so opening the device reports it as an open failure with this message.
/// </summary>
public sealed class NbdTlsException : IOException
{
    /// <summary>Creates the error.</summary>
    /// <param name="message">What failed, naming the server and the trust anchors.</param>
    /// <param name="inner">The TLS or file error behind it.</param>
    public NbdTlsException(string message, Exception? inner)
        : base(message, inner)
    {
    }
}

/// <summary>
/// An NBD server broke the protocol while the client driver negotiated with it (a malformed
/// option reply). The message names the server and the export. An <see cref="IOException"/>, so
/// opening the device reports it as an open failure with this message, and a reconnect as a
/// failed attempt.
/// </summary>
public sealed class NbdClientProtocolException : IOException
{
    /// <summary>Creates the error.</summary>
    /// <param name="message">What the server sent, naming the server and the export.</param>
    public NbdClientProtocolException(string message)
        : base(message)
    {
    }
}
