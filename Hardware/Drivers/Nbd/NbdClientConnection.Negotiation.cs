using System.Buffers.Binary;
using System.Net.Security;
using System.Security.Authentication;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using System.Net.Sockets;
using System.Text;
using ActorBlk.Hardware.Nbd;

namespace ActorBlk.Hardware.Drivers.Nbd;

// Connect: the TCP or Unix socket connect (with the retry of a Unix socket whose backlog is full),
// the fixed newstyle negotiation with NBD_OPT_GO (falling back to NBD_OPT_EXPORT_NAME), STARTTLS
// with the server certificate's verification and the client certificate, and the option helpers.
internal sealed partial class NbdClientConnection
{
    // Why the verification callback refused the server's certificate, for the handshake's error.
    private sealed class Refusal
    {
        public string? Reason { get; set; }
    }

    /// <summary>
    /// Sets how the server certificate is checked: not at all when verification is off; against the
    /// CA file as the only trust anchors when one is given (the name must match too); otherwise
    /// by the system's default validation.
    /// </summary>
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
            var (structured, allocationContext) = NegotiateStructuredReplies(stream, uri, name);
            tlsUnanswered = false;
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
            var made = new NbdClientConnection(socket, stream, size, flags, minimum, maximum, description, clientCertificate)
            {
                Structured = structured,
                AllocationContext = allocationContext,
            };
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

    // A reply type with bit 31 set is an error (NBD_REP_ERR_*), known to this client or not.
    private static bool IsError(NbdReply type) => ((uint)type & 0x80000000u) != 0;

    /// <summary>
    /// Asks for structured replies (<c>NBD_OPT_STRUCTURED_REPLY</c>) and, once they are
    /// acknowledged, the <c>base:allocation</c> metadata context of the export
    /// (<c>NBD_OPT_SET_META_CONTEXT</c>), as libnbd and qemu do before <c>NBD_OPT_GO</c>. A server
    /// that refuses either (any <c>NBD_REP_ERR_*</c> but <c>NBD_REP_ERR_SHUTDOWN</c>) leaves the
    /// connection with simple replies, or with no allocation map. Extended headers are never asked.
    /// </summary>
    /// <returns>Whether structured replies were negotiated, and the context id the server gave <c>base:allocation</c> (null: none).</returns>
    /// <exception cref="NbdClientProtocolException">A reply breaks the protocol: an acknowledgement with data, a reply type that is neither an acknowledgement nor an error, a context for a name not asked, a second context, or an <c>NBD_REP_META_CONTEXT</c> too short for its id.</exception>
    /// <exception cref="IOException">The server is shutting down (<c>NBD_REP_ERR_SHUTDOWN</c>; a soft disconnect was sent).</exception>
    private static (bool Structured, uint? Context) NegotiateStructuredReplies(Stream stream, NbdUri uri, byte[] name)
    {
        SendOption(stream, NbdOption.StructuredReply, []);
        var reply = ReadOptionReply(stream, uri, NbdOption.StructuredReply);
        if (!Acknowledged(stream, uri, NbdOption.StructuredReply, reply))
        {
            return (false, null);
        }

        var context = Encoding.UTF8.GetBytes(NbdProtocol.BaseAllocation);
        var query = new byte[4 + name.Length + 4 + 4 + context.Length];
        BinaryPrimitives.WriteUInt32BigEndian(query, (uint)name.Length);
        name.CopyTo(query, 4);
        BinaryPrimitives.WriteUInt32BigEndian(query.AsSpan(4 + name.Length), 1);
        BinaryPrimitives.WriteUInt32BigEndian(query.AsSpan(8 + name.Length), (uint)context.Length);
        context.CopyTo(query, 12 + name.Length);
        SendOption(stream, NbdOption.SetMetaContext, query);
        uint? id = null;
        while (true)
        {
            reply = ReadOptionReply(stream, uri, NbdOption.SetMetaContext);
            if (reply.Type != NbdReply.MetaContext)
            {
                // An error after a context takes it back: the set is what the final reply says.
                return (true, Acknowledged(stream, uri, NbdOption.SetMetaContext, reply) ? id : null);
            }

            if (reply.Data.Length < 4)
            {
                throw new NbdClientProtocolException($"{uri}: protocol error: an NBD_REP_META_CONTEXT reply of {reply.Data.Length} byte(s), too short for its context id.");
            }

            if (!reply.Data.AsSpan(4).SequenceEqual(context))
            {
                throw new NbdClientProtocolException($"{uri}: protocol error: NBD_REP_META_CONTEXT for the context '{Printable(reply.Data[4..])}', which was not asked (only {NbdProtocol.BaseAllocation} was).");
            }

            if (id is not null)
            {
                throw new NbdClientProtocolException($"{uri}: protocol error: a second NBD_REP_META_CONTEXT for {NbdProtocol.BaseAllocation}.");
            }

            id = BinaryPrimitives.ReadUInt32BigEndian(reply.Data);
        }
    }

    // True for NBD_REP_ACK (without data), false for an error the client falls back from; a
    // shutdown ends the negotiation with a soft disconnect, anything else is a protocol error.
    private static bool Acknowledged(Stream stream, NbdUri uri, NbdOption option, (NbdReply Type, byte[] Data) reply)
    {
        if (reply.Type == NbdReply.Ack)
        {
            if (reply.Data.Length != 0)
            {
                throw new NbdClientProtocolException($"{uri}: protocol error: NBD_REP_ACK to {option} with {reply.Data.Length} byte(s) of data (it has none).");
            }

            return true;
        }

        if (!IsError(reply.Type))
        {
            throw new NbdClientProtocolException($"{uri}: protocol error: a reply of type {(uint)reply.Type} to {option}, which is answered by an acknowledgement or an error.");
        }

        if (reply.Type == NbdReply.ErrShutdown)
        {
            SoftDisconnect(stream);
            throw new IOException($"{uri}: {Describe(reply.Type, reply.Data)}.");
        }

        return false;
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
            return $"'{shown}' is {Interop.LibC.DescribeFileType(kind)}, not a socket";
        }

        return error.SocketErrorCode switch
        {
            SocketError.ConnectionRefused => $"nothing listens on the socket '{shown}' (Connection refused: its server is not running, and the socket file is one it left behind)",
            SocketError.AccessDenied => $"no permission to connect to the socket '{shown}' (Permission denied: the socket file needs write permission)",
            _ => $"the socket '{shown}': {error.Message}",
        };
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
}
