using System.Globalization;
using System.Net;
using System.Security.Cryptography.X509Certificates;
using ActorBlk.Hardware;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Nbd;
using Akka.Configuration;

namespace ActorBlk.Actors.Nbd;

/// <summary>The <c>actorblk.nbd</c> section: where and how a node exports its devices over NBD.</summary>
/// <param name="Listen">The TCP endpoint, or null when <c>listen = off</c> or a Unix socket (<see cref="UnixSocket"/>).</param>
/// <param name="Tls">STARTTLS policy.</param>
/// <param name="CertificatePath">The server certificate (PEM, or PKCS#12 for .pfx/.p12).</param>
/// <param name="KeyPath">The PEM private key when the certificate file holds none.</param>
/// <param name="AllowInsecure">Allow a non-loopback listen address without TLS.</param>
/// <param name="MaxConnections">Connections at once.</param>
/// <param name="MaxInFlight">Requests in flight per connection.</param>
/// <param name="MaxPayload">Largest read or write.</param>
/// <param name="HandshakeTimeout">Time a client has to finish negotiation.</param>
public sealed record NbdExportSettings(
    IPEndPoint? Listen,
    NbdTlsMode Tls,
    string CertificatePath,
    string KeyPath,
    bool AllowInsecure,
    int MaxConnections,
    int MaxInFlight,
    int MaxPayload,
    TimeSpan HandshakeTimeout)
{
    /// <summary>The Unix socket of <c>listen = "unix:PATH"</c> (a path, or <c>@NAME</c> in the abstract namespace), else null.</summary>
    public string? UnixSocket { get; init; }

    /// <summary>True when <c>listen = off</c>: neither a TCP endpoint nor a Unix socket.</summary>
    public bool IsOff => Listen is null && UnixSocket is null;

    /// <summary>At shutdown, how long connections may take to answer the requests in flight before they are closed (<c>shutdown-grace</c>).</summary>
    public TimeSpan ShutdownGrace { get; init; } = TimeSpan.FromSeconds(3);

    /// <summary>Payload memory of all connections' requests in flight (<c>max-buffer-memory</c>).</summary>
    public long MaxBufferMemory { get; init; } = 1L << 30;

    /// <summary>How long a client may stall inside a reply or a write payload before its connection is closed (<c>stall-timeout</c>).</summary>
    public TimeSpan StallTimeout { get; init; } = TimeSpan.FromSeconds(60);

    /// <summary>TCP keepalive of accepted connections (<c>keepalive</c>; 0 off): a client that vanished is closed about twice this long after it went quiet.</summary>
    public TimeSpan KeepAlive { get; init; } = TimeSpan.FromSeconds(30);

    /// <summary>The slowest a transfer (a write's payload, a reply) may go, in bytes a second, after <c>stall-timeout</c> (<c>min-transfer-rate</c>; 0 off).</summary>
    public long MinTransferRate { get; init; } = 256 << 10;

    /// <summary>Reads <c>actorblk.nbd</c> of <paramref name="config"/> over the library defaults.</summary>
    /// <exception cref="ConfigurationException">A key is malformed; the message names it.</exception>
    public static NbdExportSettings Create(Config config)
    {
        ArgumentNullException.ThrowIfNull(config);
        var actorblk = config.WithFallback(ActorBlkSettings.DefaultConfig()).GetConfig("actorblk");
        var c = actorblk.GetConfig("nbd");

        // HOCON's null reads as a null string: `listen = null` failed with "Value cannot be null."
        // naming no key (an audit helper's report).
        // A control character is refused but in a file path (ActorBlkSettings refuses it the same
        // way; this reader is also called alone).
        string Text(string key, string fallback)
        {
            var text = c.GetString(key, fallback) ?? throw new ConfigurationException($"actorblk.nbd.{key}: null is not a value here; remove the key for the default ({(fallback.Length == 0 ? "none" : fallback)}).");
            return key is not ("certificate" or "key") && ControlCharacters.Refusal(text) is { } refusal
                ? throw new ConfigurationException($"actorblk.nbd.{key}: {refusal}")
                : text;
        }

        var listenText = Text("listen", "off");
        var tls = Text("tls", "off").ToLowerInvariant() switch
        {
            "off" or "false" => NbdTlsMode.Off,
            "on" or "true" => NbdTlsMode.On,
            "require" => NbdTlsMode.Require,
            var other => throw new ConfigurationException($"actorblk.nbd.tls: '{other}' is not off, on or require."),
        };
        var payloadText = Text("max-payload", "32m");
        if (!ByteSize.TryParse(payloadText, out var payload) || payload > int.MaxValue)
        {
            throw new ConfigurationException($"actorblk.nbd.max-payload: '{payloadText}' is not a size.");
        }

        var memoryText = Text("max-buffer-memory", "1g");
        if (!ByteSize.TryParse(memoryText, out var memory))
        {
            throw new ConfigurationException($"actorblk.nbd.max-buffer-memory: '{memoryText}' is not a size.");
        }

        var rateText = Text("min-transfer-rate", "256k");
        if (!ByteSize.TryParse(rateText, out var rate))
        {
            throw new ConfigurationException($"actorblk.nbd.min-transfer-rate: '{rateText}' is not a size (bytes a second; 0 turns it off).");
        }

        return new NbdExportSettings(
            ParseListen(listenText, out var unixSocket),
            tls,
            Text("certificate", string.Empty),
            Text("key", string.Empty),
            c.GetBoolean("allow-insecure", false),
            ActorBlkSettings.Int(actorblk, "nbd.max-connections", 1024),
            ActorBlkSettings.Int(actorblk, "nbd.max-in-flight", 128),
            (int)payload,
            ActorBlkSettings.Span(actorblk, "nbd.handshake-timeout", TimeSpan.FromSeconds(30)))
        {
            ShutdownGrace = ActorBlkSettings.Span(actorblk, "nbd.shutdown-grace", TimeSpan.FromSeconds(3)),
            MaxBufferMemory = memory,
            StallTimeout = ActorBlkSettings.Span(actorblk, "nbd.stall-timeout", TimeSpan.FromSeconds(60)),
            MinTransferRate = rate,
            KeepAlive = ActorBlkSettings.Span(actorblk, "nbd.keepalive", TimeSpan.FromSeconds(30)),
            UnixSocket = unixSocket,
        };
    }

    /// <summary>Parses <c>host:port</c>, <c>[v6]:port</c> or <c>off</c> (null); a Unix socket is refused here (see the overload that returns it).</summary>
    /// <exception cref="ConfigurationException">The text is none of these (the empty text included), or names a Unix socket.</exception>
    public static IPEndPoint? ParseListen(string text)
    {
        var endpoint = ParseListen(text, out var unixSocket);
        return unixSocket is null
            ? endpoint
            : throw new ConfigurationException($"actorblk.nbd.listen: '{ControlCharacters.Escape(text)}' names a Unix socket, not ADDRESS:PORT or off.");
    }

    /// <summary>
    /// Parses <c>host:port</c>, <c>[v6]:port</c>, <c>unix:PATH</c> (an absolute path, as qemu's
    /// legacy <c>nbd:unix:PATH</c>; <c>unix:@NAME</c> in the abstract namespace) or <c>off</c>.
    /// </summary>
    /// <param name="text">The value of <c>actorblk.nbd.listen</c> (or <c>serve --nbd-listen</c>).</param>
    /// <param name="unixSocket">The Unix socket of <c>unix:PATH</c> (the path, or <c>@NAME</c>), else null.</param>
    /// <returns>The TCP endpoint; null for <c>off</c> and for a Unix socket.</returns>
    /// <exception cref="ConfigurationException">The text is none of these (the empty text included), or a Unix socket that cannot be one (<see cref="NbdServerOptions.UnixSocketProblem"/>: relative, over 107 bytes, ...).</exception>
    public static IPEndPoint? ParseListen(string text, out string? unixSocket)
    {
        ArgumentNullException.ThrowIfNull(text);
        unixSocket = null;
        if (text.StartsWith("unix:", StringComparison.Ordinal))
        {
            var socket = text["unix:".Length..];
            if (NbdServerOptions.UnixSocketProblem(socket) is { } problem)
            {
                throw new ConfigurationException($"actorblk.nbd.listen: '{ControlCharacters.Escape(text)}' {problem}.");
            }

            unixSocket = socket;
            return null;
        }

        // Off is spelled off (or HOCON's false): an empty value was taken as off, so `listen = ""`
        // and `serve --nbd-listen ''` turned the export off in silence (an outside CLI fuzzing audit).
        if (text is "off" or "false")
        {
            return null;
        }

        // An IPv6 address stands in brackets, both of them: "[::1:5" and "::1:10809" were taken
        // (the brackets trimmed, whichever were there, and the last colon's digits read as the
        // port), so a typo listened where nobody asked (an outside CLI fuzzing audit).
        var colon = text.LastIndexOf(':');
        var host = colon > 0 ? text[..colon] : string.Empty;
        var bracketed = host.Length > 2 && host[0] == '[' && host[^1] == ']';
        host = bracketed ? host[1..^1] : host;
        if (colon <= 0 || !int.TryParse(text.AsSpan(colon + 1), NumberStyles.None, CultureInfo.InvariantCulture, out var port) || port > 65535 ||
            host.AsSpan().IndexOfAny('[', ']') >= 0 || (!bracketed && host.Contains(':', StringComparison.Ordinal)) ||
            !IPAddress.TryParse(host, out var address) || (bracketed && address.AddressFamily != System.Net.Sockets.AddressFamily.InterNetworkV6))
        {
            throw new ConfigurationException($"actorblk.nbd.listen: '{ControlCharacters.Escape(text)}' is not ADDRESS:PORT (e.g. 127.0.0.1:10809, [::1]:10809), unix:PATH or off.");
        }

        return new IPEndPoint(address, port);
    }

    /// <summary>The server options, with the certificate loaded when TLS is on.</summary>
    /// <exception cref="InvalidOperationException">Listening is off.</exception>
    /// <exception cref="ConfigurationException">The certificate cannot be loaded.</exception>
    public NbdServerOptions ToServerOptions()
    {
        if (IsOff)
        {
            throw new InvalidOperationException("actorblk.nbd.listen is off.");
        }

        return new NbdServerOptions
        {
            Listen = Listen ?? new NbdServerOptions().Listen,
            UnixSocket = UnixSocket,
            Tls = Tls,
            Certificate = Tls == NbdTlsMode.Off ? null : LoadCertificate(),
            AllowInsecure = AllowInsecure,
            MaxConnections = MaxConnections,
            MaxInFlight = MaxInFlight,
            MaxPayload = MaxPayload,
            HandshakeTimeout = HandshakeTimeout,
            ShutdownGrace = ShutdownGrace,
            MaxBufferMemory = MaxBufferMemory,
            StallTimeout = StallTimeout,
            MinTransferRate = MinTransferRate,
            KeepAlive = KeepAlive,
        };
    }

    private X509Certificate2 LoadCertificate()
    {
        if (CertificatePath.Length == 0)
        {
            throw new ConfigurationException($"actorblk.nbd.tls = {Tls.ToString().ToLowerInvariant()} needs actorblk.nbd.certificate (a PEM or .pfx file).");
        }

        try
        {
            var ext = Path.GetExtension(CertificatePath).ToLowerInvariant();
            return ext is ".pfx" or ".p12"
                ? X509CertificateLoader.LoadPkcs12FromFile(CertificatePath, null)
                : X509Certificate2.CreateFromPemFile(CertificatePath, KeyPath.Length == 0 ? null : KeyPath);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException or System.Security.Cryptography.CryptographicException or ArgumentException)
        {
            throw new ConfigurationException($"actorblk.nbd.certificate: cannot load '{CertificatePath}'{(KeyPath.Length > 0 ? $" with key '{KeyPath}'" : string.Empty)}: {ActorBlk.Hardware.FileProblems.Describe(Directory.Exists(CertificatePath) || KeyPath.Length == 0 ? CertificatePath : KeyPath, ex)}");
        }
    }
}
