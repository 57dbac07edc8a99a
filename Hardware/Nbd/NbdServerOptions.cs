using System.Globalization;
using System.Net;
using System.Security.Cryptography.X509Certificates;

namespace ActorBlk.Hardware.Nbd;

/// <summary>How an NBD server treats <c>NBD_OPT_STARTTLS</c>.</summary>
public enum NbdTlsMode
{
    /// <summary>No TLS: <c>NBD_OPT_STARTTLS</c> is answered <c>NBD_REP_ERR_UNSUP</c>.</summary>
    Off,

    /// <summary>TLS offered: a client may upgrade with <c>NBD_OPT_STARTTLS</c> or stay in plain text.</summary>
    On,

    /// <summary>TLS required: every option but STARTTLS and ABORT is refused with <c>NBD_REP_ERR_TLS_REQD</c> until the upgrade.</summary>
    Require,
}

/// <summary>Settings of an <see cref="NbdServer"/>.</summary>
public sealed record NbdServerOptions
{
    /// <summary>Default for <see cref="MaxPayload"/>: 32 MiB, the largest request the protocol document says clients may expect to work.</summary>
    public const int DefaultMaxPayload = 32 << 20;

    /// <summary>Where to listen; port 0 picks a free port (see <see cref="NbdServer.LocalEndPoint"/>). Not read when <see cref="UnixSocket"/> is set.</summary>
    public IPEndPoint Listen { get; init; } = new(IPAddress.Loopback, NbdProtocol.DefaultPort);

    /// <summary>
    /// A Unix domain socket to listen on instead of <see cref="Listen"/> (as <c>qemu-nbd -k PATH</c>
    /// and <c>nbdkit -U PATH</c>; clients use <c>nbd+unix:///EXPORT?socket=PATH</c>): an absolute
    /// path of at most <see cref="MaxUnixSocketBytes"/> bytes, or <c>@NAME</c> for a name in Linux's
    /// abstract namespace (no file; clients write <c>socket=%00NAME</c>). Null: TCP. See
    /// <see cref="NbdServer.Start"/> for the socket file's lifecycle.
    /// </summary>
    public string? UnixSocket { get; init; }

    /// <summary>The longest Unix socket path (or abstract name after its <c>@</c>), in UTF-8 bytes: <c>sun_path</c>'s 108 less the terminating (or, abstract, leading) NUL.</summary>
    public const int MaxUnixSocketBytes = 107;

    /// <summary>STARTTLS policy.</summary>
    public NbdTlsMode Tls { get; init; } = NbdTlsMode.Off;

    /// <summary>The server certificate (with its private key) when <see cref="Tls"/> is not <see cref="NbdTlsMode.Off"/>.</summary>
    public X509Certificate2? Certificate { get; init; }

    /// <summary>
    /// Allows listening on a non-loopback address without <see cref="NbdTlsMode.Require"/>. Off by
    /// default: an NBD export gives anyone who can connect full read and write access.
    /// </summary>
    public bool AllowInsecure { get; init; }

    /// <summary>Connections served at once; further connections are closed at accept.</summary>
    public int MaxConnections { get; init; } = 1024;

    /// <summary>Requests one connection keeps in flight; the connection stops reading when all are taken.</summary>
    public int MaxInFlight { get; init; } = 128;

    /// <summary>The largest read or write payload (advertised as the maximum block size).</summary>
    public int MaxPayload { get; init; } = DefaultMaxPayload;

    /// <summary>
    /// Payload memory the server's requests in flight may hold, over all connections together
    /// (at least <see cref="MaxPayload"/>). A connection whose next read or write would pass it waits,
    /// reading nothing more, until replies of any connection have gone out. Idle connections
    /// keep buffers for reuse within a quarter more. Default 1 GiB.
    /// </summary>
    public long MaxBufferMemory { get; init; } = 1L << 30;

    /// <summary>
    /// How long a client may stall in the middle of a transfer: a reply it takes no byte of (it
    /// stopped reading), or a write whose payload it sends no byte of. Its connection is then
    /// closed and the memory its requests held goes to the others. A client may idle between
    /// requests as long as it likes. Default 60 s.
    /// </summary>
    public TimeSpan StallTimeout { get; init; } = TimeSpan.FromSeconds(60);

    /// <summary>
    /// The slowest a client may send a write's payload or take a reply, in bytes a second, on top
    /// of <see cref="StallTimeout"/>: a transfer of N bytes must end within the stall timeout plus
    /// N over this rate. A client that trickles a byte now and then (never stalling for the whole
    /// timeout) would otherwise hold its buffer's share of <see cref="MaxBufferMemory"/> for ever.
    /// Default 256 KiB/s; 0 turns it off.
    /// </summary>
    public long MinTransferRate { get; init; } = 256 << 10;

    /// <summary>
    /// When a transfer of <paramref name="bytes"/> that starts at <paramref name="startMs"/>
    /// (<see cref="Environment.TickCount64"/>) must have ended, by <see cref="StallTimeout"/> and
    /// <see cref="MinTransferRate"/>; <see cref="long.MaxValue"/> when the rate is off.
    /// </summary>
    public long TransferDeadline(long startMs, long bytes) =>
        MinTransferRate <= 0 ? long.MaxValue : startMs + (long)StallTimeout.TotalMilliseconds + (bytes * 1000 / MinTransferRate);

    /// <summary>
    /// TCP keepalive of the accepted connections: after this long without traffic the kernel
    /// probes the client every third of it, and closes the connection after three probes go
    /// unanswered, so a connection whose client vanished without a word (a partition that lost
    /// its reset, a host that crashed) is closed about twice this long after it went quiet rather
    /// than held for ever. A live client idling between requests answers the probes and keeps its
    /// connection. Whole seconds; zero turns it off. Default 30 s.
    /// </summary>
    public TimeSpan KeepAlive { get; init; } = TimeSpan.FromSeconds(30);

    /// <summary>How long a client may take to finish negotiation.</summary>
    public TimeSpan HandshakeTimeout { get; init; } = TimeSpan.FromSeconds(30);

    /// <summary>
    /// At shutdown, how long connections may take to answer the requests they have in flight
    /// and then close gracefully (end of stream after the last reply, then waiting for the
    /// client's close while dropping what it still sends) before they are closed hard (zero: at
    /// once). They take no new request meanwhile.
    /// </summary>
    public TimeSpan ShutdownGrace { get; init; } = TimeSpan.FromSeconds(3);

    /// <summary>The clock that <see cref="ShutdownGrace"/> runs on (the system's; specs move their own by hand).</summary>
    internal TimeProvider GraceClock { get; init; } = TimeProvider.System;

    /// <summary>Checks the settings.</summary>
    /// <exception cref="ArgumentException">A setting is out of range, TLS lacks a certificate, a non-loopback address is used without TLS and without <see cref="AllowInsecure"/>, or <see cref="UnixSocket"/> is no usable socket name (see <see cref="UnixSocketProblem"/>).</exception>
    public void Validate()
    {
        if (UnixSocket is not null && UnixSocketProblem(UnixSocket) is { } problem)
        {
            throw new ArgumentException($"the Unix socket '{ControlCharacters.Escape(UnixSocket)}' {problem}.", nameof(UnixSocket));
        }

        ArgumentNullException.ThrowIfNull(Listen);
        if (MaxConnections < 1)
        {
            throw new ArgumentException($"max-connections must be at least 1, not {MaxConnections}.", nameof(MaxConnections));
        }

        if (MaxInFlight is < 1 or > 65536)
        {
            throw new ArgumentException($"max-in-flight must be 1 to 65536, not {MaxInFlight}.", nameof(MaxInFlight));
        }

        if (MaxPayload < 4096 || (MaxPayload & (MaxPayload - 1)) != 0 || MaxPayload > 1 << 30)
        {
            throw new ArgumentException($"max-payload must be a power of two from 4 KiB to 1 GiB, not {MaxPayload}.", nameof(MaxPayload));
        }

        if (MaxBufferMemory < MaxPayload || MaxBufferMemory > 1L << 40)
        {
            throw new ArgumentException($"max-buffer-memory must be from max-payload ({MaxPayload}) to 1 TiB, not {MaxBufferMemory}.", nameof(MaxBufferMemory));
        }

        if (StallTimeout < TimeSpan.FromSeconds(1) || StallTimeout > TimeSpan.FromHours(1))
        {
            throw new ArgumentException($"stall-timeout must be from 1 s to 1 hour, not {Seconds(StallTimeout)}.", nameof(StallTimeout));
        }

        if (MinTransferRate < 0 || MinTransferRate > 1L << 40)
        {
            throw new ArgumentException($"min-transfer-rate must be from 0 (off) to 1 TiB/s, not {MinTransferRate}.", nameof(MinTransferRate));
        }

        if (KeepAlive < TimeSpan.Zero || KeepAlive > TimeSpan.FromHours(2) || KeepAlive.Ticks % TimeSpan.TicksPerSecond != 0)
        {
            throw new ArgumentException($"keepalive must be whole seconds from 0 (off) to 2 hours, not {KeepAlive.TotalSeconds.ToString(System.Globalization.CultureInfo.InvariantCulture)} s.", nameof(KeepAlive));
        }

        if (HandshakeTimeout <= TimeSpan.Zero)
        {
            throw new ArgumentException("handshake-timeout must be positive.", nameof(HandshakeTimeout));
        }

        if (ShutdownGrace < TimeSpan.Zero || ShutdownGrace > TimeSpan.FromMinutes(10))
        {
            throw new ArgumentException($"shutdown-grace must be from 0 to 10 minutes, not {Seconds(ShutdownGrace)}.", nameof(ShutdownGrace));
        }

        if (!Enum.IsDefined(Tls))
        {
            throw new ArgumentException($"tls must be off, on or require, not {(int)Tls}.", nameof(Tls));
        }

        if (Tls != NbdTlsMode.Off && Certificate is null)
        {
            throw new ArgumentException($"tls = {Tls.ToString().ToLowerInvariant()} needs a certificate.", nameof(Certificate));
        }

        if (Certificate is { HasPrivateKey: false })
        {
            throw new ArgumentException("the TLS certificate has no private key.", nameof(Certificate));
        }

        // A Unix socket is reached from this machine only, through its file's permissions (or, in
        // the abstract namespace, by any process of the network namespace, as a loopback port).
        if (UnixSocket is null && !IPAddress.IsLoopback(Listen.Address) && Tls != NbdTlsMode.Require && !AllowInsecure)
        {
            throw new ArgumentException(
                $"refusing to export NBD on {Listen}, which is not a loopback address, without TLS: anyone who can reach it could read and write every device. " +
                "Set actorblk.nbd.tls = require (with a certificate), or actorblk.nbd.allow-insecure = on to accept the risk.", nameof(Listen));
        }
    }

    /// <summary>
    /// Why <paramref name="socket"/> cannot be a Unix socket to listen on, as the end of a sentence
    /// that names it (<c>is a relative path; ...</c>), or null when it can. A path must be absolute:
    /// a relative one would be resolved against whatever directory the node was started in, and
    /// clients given the same text elsewhere would miss it. It holds at most
    /// <see cref="MaxUnixSocketBytes"/> UTF-8 bytes (<c>sun_path</c>), no control character (a
    /// newline would forge log lines and break the URI clients are given) and does not end with
    /// <c>/</c>. <c>@NAME</c> names a socket in the abstract namespace, whose name has the same bounds.
    /// </summary>
    internal static string? UnixSocketProblem(string socket)
    {
        ArgumentNullException.ThrowIfNull(socket);
        if (socket.Length == 0)
        {
            return "names no path (e.g. unix:/run/actorblk/nbd.sock)";
        }

        var abstractName = socket[0] == '@';
        var name = abstractName ? socket[1..] : socket;
        if (abstractName && name.Length == 0)
        {
            return "names no socket after the @ (unix:@NAME names one in the abstract namespace)";
        }

        if (ControlCharacters.IndexIn(socket) is var at and >= 0)
        {
            return $"holds a control character (U+{(int)socket[at]:X4}), which a socket name here never takes";
        }

        if (!abstractName && socket[0] != '/')
        {
            return "is a relative path; a Unix socket's path must be absolute (e.g. unix:/run/actorblk/nbd.sock): a relative one would depend on the directory the node starts in";
        }

        if (!abstractName && socket[^1] == '/')
        {
            return "ends with '/', which names a directory, not a socket";
        }

        var bytes = System.Text.Encoding.UTF8.GetByteCount(name);
        return bytes <= MaxUnixSocketBytes
            ? null
            : $"is {bytes} bytes long{(abstractName ? " after the @" : string.Empty)}, and a Unix domain socket's {(abstractName ? "abstract name" : "path")} holds at most {MaxUnixSocketBytes} (sun_path's 108 with its {(abstractName ? "leading" : "terminating")} NUL)";
    }

    // A duration in a refusal: "infinite" (HOCON's word) rather than "-0.001 s".
    private static string Seconds(TimeSpan span) =>
        span == Timeout.InfiniteTimeSpan ? "infinite" : $"{span.TotalSeconds.ToString("0.###", CultureInfo.InvariantCulture)} s";
}
