using System.Text;
using ActorBlk.Hardware.Nbd;

namespace ActorBlk.Hardware.Drivers.Nbd;

/// <summary>
/// An NBD export address, as the NBD URI specification writes it: <c>nbd://host[:port]/export</c>
/// over TCP, <c>nbd+unix:///export?socket=PATH</c> over a Unix domain socket, and <c>nbds://</c>
/// or <c>nbds+unix://</c> for TLS, with the specification's TLS query parameters
/// (<c>tls-type</c>, <c>tls-hostname</c>, <c>tls-verify-peer</c>) and libnbd's
/// <c>tls-certificates</c>. A query parameter the client does not understand is diagnosed, as the
/// specification asks.
/// </summary>
/// <param name="Host">Host name or address (empty for a Unix domain socket).</param>
/// <param name="Port">TCP port (10809 when the URI names none; 0 for a Unix domain socket).</param>
/// <param name="Export">Export name (empty: the server's default export).</param>
/// <param name="Tls">True for <c>nbds://</c> and <c>nbds+unix://</c>: NBD_OPT_STARTTLS before anything else.</param>
public sealed record NbdUri(string Host, int Port, string Export, bool Tls)
{
    /// <summary>The Unix domain socket of an <c>nbd+unix://</c> URI (<c>socket</c>; a leading NUL names one in the abstract namespace), else null.</summary>
    public string? Socket { get; init; }

    /// <summary>
    /// <c>tls-hostname</c>: the name the server's certificate must carry, in place of the URI's
    /// host. A Unix domain socket has no host: without it, the certificate's chain is checked and
    /// not its name, as libnbd does. Null when the URI has none.
    /// </summary>
    public string? TlsHostname { get; init; }

    /// <summary><c>tls-verify-peer</c>: false turns verification of the server's certificate off (insecure); null when the URI does not say (verification on).</summary>
    public bool? TlsVerifyPeer { get; init; }

    /// <summary>
    /// <c>tls-certificates</c> (libnbd's): a directory holding the trust anchors as
    /// <c>ca-cert.pem</c> and, optionally, the client's certificate as <c>client-cert.pem</c> with its
    /// key as <c>client-key.pem</c> (libnbd's, nbdkit's and qemu's layout). Null when the URI has none.
    /// </summary>
    public string? TlsCertificates { get; init; }

    /// <summary>The server name the TLS handshake sends: <see cref="TlsHostname"/>, else the host, else (a Unix socket) <c>localhost</c>.</summary>
    public string TlsTargetHost => TlsHostname ?? (Socket is null ? Host : "localhost");

    /// <summary>Whether the server certificate's name is checked: always over TCP; over a Unix socket only against <see cref="TlsHostname"/>.</summary>
    public bool ChecksTlsName => Socket is null || TlsHostname is not null;

    /// <summary>Parses <paramref name="text"/>.</summary>
    /// <exception cref="FormatException">
    /// It is not an NBD URI this client can use: another scheme, no host (TCP) or no socket (Unix),
    /// a socket name longer than a Unix domain socket's (107 bytes, 108 in the abstract namespace), a query parameter it does not understand or given twice, a TLS parameter on a URI without
    /// TLS, or TLS it does not have (<c>tls-type=anon</c> or <c>psk</c>, <c>tls-psk-file</c>).
    /// </exception>
    public static NbdUri Parse(string text)
    {
        ArgumentNullException.ThrowIfNull(text);

        // A URI never holds a control character as such (RFC 3986): .NET's Uri took a newline in the
        // path, and the export name carried it into the device's description and the log (a review).
        // An export name that has one (the protocol allows any UTF-8) is written percent-encoded,
        // as its UTF-8 bytes: U+0085 is %C2%85 (a bare %85 is no UTF-8 and stays "%85" in the name).
        if (ControlCharacters.IndexIn(text) is var at and >= 0)
        {
            throw new FormatException($"'{ControlCharacters.Escape(text)}' holds a control character (U+{(int)text[at]:X4}), which a URI never holds as such (percent-encode it: {Uri.EscapeDataString(text[at].ToString())}).");
        }

        var schemeEnd = text.IndexOf("://", StringComparison.Ordinal);
        var scheme = schemeEnd < 0 ? string.Empty : text[..schemeEnd].ToLowerInvariant();
        var unix = scheme is "nbd+unix" or "nbds+unix";
        var tls = scheme is "nbds" or "nbds+unix";
        string host;
        int port;
        if (unix)
        {
            // The specification: the authority "SHOULD NOT be used for Unix domain socket
            // connections", and what a client does with one is up to it: a host here would be
            // ignored, so it is refused rather than leave the reader thinking it counts.
            var start = schemeEnd + 3;
            var end = text.IndexOfAny(['/', '?', '#'], start);
            if ((end < 0 ? text.Length : end) > start)
            {
                throw new FormatException($"'{text}': an {scheme}:// URI names no host (nbd+unix:///EXPORT?socket=PATH); the socket is the 'socket' query parameter.");
            }

            (host, port) = (string.Empty, 0);
        }
        else if (scheme is "nbd" or "nbds" && Uri.TryCreate(text, UriKind.Absolute, out var uri) && uri.Host.Length > 0)
        {
            (host, port) = (uri.Host.Trim('[', ']'), uri.IsDefaultPort || uri.Port < 0 ? NbdProtocol.DefaultPort : uri.Port);
        }
        else
        {
            throw new FormatException($"'{text}' is not an NBD URI (nbd://HOST[:PORT]/EXPORT, nbd+unix:///EXPORT?socket=PATH, or nbds:// and nbds+unix:// for TLS).");
        }

        // The NBD URI specification: "the path part of the URI except for the leading `/`
        // character MUST be passed to the server as the export name" (nbd://h//disk names
        // "/disk"). Uri.AbsolutePath is canonicalised (dot segments removed), so the path is
        // taken from the text as written.
        var export = Uri.UnescapeDataString(RawExport(text));
        var parsed = new NbdUri(host, port, export, tls);
        parsed = WithQuery(parsed, text, scheme);
        if (unix && parsed.Socket is null)
        {
            throw new FormatException($"'{text}': an {scheme}:// URI MUST name its socket (?socket=PATH; the NBD URI specification).");
        }

        return parsed;
    }

    // The query's parameters. The specification: "Any other query parameters which the client
    // does not understand SHOULD be diagnosed by the parser"; before, every one was ignored, and
    // `nbds://...?tls-certificates=DIR` as libnbd's tools take it verified against the system's
    // trust store instead of DIR (the thirty-third session's TLS audit).
    private static NbdUri WithQuery(NbdUri uri, string text, string scheme)
    {
        // The query runs from the first '?' to the fragment (RFC 3986 section 3.5): a '?' in the
        // fragment starts none. It did: "nbd+unix:///#?socket=PATH" connected to PATH, and
        // "nbds://h/#?tls-verify-peer=0" turned verification off (libnbd refuses the first).
        var end = text.IndexOf('#', StringComparison.Ordinal);
        var start = end < 0 ? text.IndexOf('?', StringComparison.Ordinal) : text.IndexOf('?', 0, end);
        if (start < 0)
        {
            return uri;
        }

        var query = text[(start + 1)..(end < 0 ? text.Length : end)];
        var seen = new HashSet<string>(StringComparer.Ordinal);
        foreach (var pair in query.Split('&', ';')) // libnbd separates parameters with either
        {
            if (pair.Length == 0)
            {
                continue;
            }

            var equals = pair.IndexOf('=', StringComparison.Ordinal);
            var key = Uri.UnescapeDataString(equals < 0 ? pair : pair[..equals]);
            var value = equals < 0 ? null : Uri.UnescapeDataString(pair[(equals + 1)..]);
            if (!seen.Add(key))
            {
                throw new FormatException($"'{text}': the query parameter '{ControlCharacters.Escape(key)}' is given twice.");
            }

            if (key.StartsWith("tls-", StringComparison.Ordinal) && !uri.Tls && key is "tls-type" or "tls-hostname" or "tls-verify-peer" or "tls-certificates" or "tls-psk-file" or "tls-username")
            {
                throw new FormatException($"'{text}': {key} is a TLS parameter, and only an nbds:// or nbds+unix:// URI uses TLS; it would be ignored.");
            }

            uri = key switch
            {
                "socket" when scheme is not ("nbd+unix" or "nbds+unix") =>
                    throw new FormatException($"'{text}': socket names the Unix domain socket of an nbd+unix:// URI; an {scheme}:// URI connects over TCP."),
                "socket" => uri with { Socket = SocketName(text, NonEmpty(text, key, value)) },
                "tls-type" => NonEmpty(text, key, value) switch
                {
                    "x509" => uri,
                    "anon" or "psk" => throw new FormatException($"'{text}': tls-type={value} is not available: the NBD client does X.509 TLS only (.NET's SslStream has no {(value == "psk" ? "pre-shared key" : "anonymous")} TLS)."),
                    _ => throw new FormatException($"'{text}': tls-type '{ControlCharacters.Escape(value!)}' is not x509, anon or psk."),
                },
                "tls-hostname" => uri with { TlsHostname = NonEmpty(text, key, value) },
                "tls-verify-peer" => uri with { TlsVerifyPeer = Flag(text, key, value) },
                "tls-certificates" => uri with { TlsCertificates = NonEmpty(text, key, value) },
                "tls-psk-file" or "tls-username" =>
                    throw new FormatException($"'{text}': {key} is for TLS with a pre-shared key, which the NBD client does not have (.NET's SslStream has no PSK): use X.509 (tls-certificates)."),
                _ => throw new FormatException($"'{text}': the query parameter '{ControlCharacters.Escape(key)}' is not one this client understands (socket, tls-type, tls-hostname, tls-verify-peer, tls-certificates)."),
            };
        }

        return uri;
    }

    // sizeof(struct sockaddr_un.sun_path) on Linux.
    private const int MaxSocketNameBytes = 108;

    // A Unix domain socket's name fits sun_path's 108 bytes: a path 107 and its NUL, an abstract
    // name (a leading NUL) all 108, as UnixDomainSocketEndPoint takes them; and a path holds no
    // NUL, where the kernel would end it. A longer one escaped the connect as .NET's
    // ArgumentOutOfRangeException, a stack trace (a review; libnbd: "socket name too long").
    private static string SocketName(string text, string socket)
    {
        var abstractName = socket[0] == '\0';
        if (!abstractName && socket.Contains('\0', StringComparison.Ordinal))
        {
            throw new FormatException($"'{text}': the socket '{ControlCharacters.Escape(socket)}' holds a NUL (%00), which would end its path there; only a name in the abstract namespace starts with one.");
        }

        var bytes = Encoding.UTF8.GetByteCount(socket);
        var limit = abstractName ? MaxSocketNameBytes : MaxSocketNameBytes - 1;
        return bytes <= limit
            ? socket
            : throw new FormatException($"'{text}': the socket '{ControlCharacters.Escape(socket)}' is {bytes} bytes long, and a Unix domain socket's name holds at most {limit} ({(abstractName ? "108 in the abstract namespace" : "108 with the path's terminating NUL")}).");
    }

    private static string NonEmpty(string text, string key, string? value) =>
        string.IsNullOrEmpty(value) ? throw new FormatException($"'{text}': {key} needs a value ({key}=...).") : value;

    // libnbd reads a boolean parameter as 1/0, true/false, on/off or yes/no.
    private static bool Flag(string text, string key, string? value) =>
        value?.ToLowerInvariant() switch
        {
            "1" or "true" or "on" or "yes" => true,
            "0" or "false" or "off" or "no" => false,
            _ => throw new FormatException($"'{text}': {key} is 0 or 1, not '{ControlCharacters.Escape(value ?? string.Empty)}'."),
        };

    // The path of an nbd://authority/path?query#fragment text, without its one leading '/'.
    private static string RawExport(string text)
    {
        var start = text.IndexOf("://", StringComparison.Ordinal) + 3;
        var end = text.IndexOfAny(['?', '#'], start);
        end = end < 0 ? text.Length : end;
        var slash = text.IndexOf('/', start, end - start);
        return slash < 0 ? string.Empty : text[(slash + 1)..end];
    }

    /// <inheritdoc />
    /// <remarks>
    /// A control character of the export name (one written %0A, say) or of a parameter is written
    /// percent-encoded again, so the text stays one line; the text parses back to an equal URI.
    /// </remarks>
    public override string ToString()
    {
        var text = new StringBuilder();
        if (Socket is null)
        {
            text.Append(Tls ? "nbds://" : "nbd://").Append(Host.Contains(':', StringComparison.Ordinal) ? $"[{Host}]" : Host).Append(':').Append(Port);
        }
        else
        {
            text.Append(Tls ? "nbds+unix://" : "nbd+unix://");
        }

        text.Append('/').Append(Encode(Export, query: false));
        var separator = '?';
        void Add(string key, string? value)
        {
            if (value is not null)
            {
                text.Append(separator).Append(key).Append('=').Append(Encode(value, query: true));
                separator = '&';
            }
        }

        Add("socket", Socket);
        Add("tls-hostname", TlsHostname);
        Add("tls-verify-peer", TlsVerifyPeer is { } verify ? (verify ? "1" : "0") : null);
        Add("tls-certificates", TlsCertificates);
        return text.ToString();
    }

    // Percent-encodes what would change the text's meaning or break its line: control characters,
    // '%' and '#' everywhere, '?' in the export name, and in a query value also '&' and a blank. A
    // character outside ASCII of a query value is written as its UTF-8 bytes.
    private static string Encode(string value, bool query)
    {
        var text = new StringBuilder(value.Length);
        Span<byte> bytes = stackalloc byte[4];
        foreach (var rune in value.EnumerateRunes())
        {
            var c = rune.Value;
            var escape = Rune.IsControl(rune) || c is '%' or '#' || (query ? c is '&' or ' ' or > 0x7F : c == '?');
            if (!escape)
            {
                text.Append(rune.ToString());
                continue;
            }

            var length = rune.EncodeToUtf8(bytes);
            foreach (var b in bytes[..length])
            {
                text.Append('%').Append(b.ToString("X2", System.Globalization.CultureInfo.InvariantCulture));
            }
        }

        return text.ToString();
    }
}
