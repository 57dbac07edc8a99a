using ActorBlk.Hardware.Nbd;

namespace ActorBlk.Hardware.Drivers.Nbd;

/// <summary>An NBD export address: <c>nbd://host[:port]/export</c>, or <c>nbds://</c> for TLS.</summary>
/// <param name="Host">Host name or address.</param>
/// <param name="Port">TCP port (10809 when the URI names none).</param>
/// <param name="Export">Export name (empty: the server's default export).</param>
/// <param name="Tls">True for <c>nbds://</c>: NBD_OPT_STARTTLS before anything else.</param>
public sealed record NbdUri(string Host, int Port, string Export, bool Tls)
{
    /// <summary>Parses <paramref name="text"/>.</summary>
    /// <exception cref="FormatException">It is not an nbd:// or nbds:// URI with a host.</exception>
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

        if (!Uri.TryCreate(text, UriKind.Absolute, out var uri) || uri.Scheme is not ("nbd" or "nbds") || uri.Host.Length == 0)
        {
            throw new FormatException($"'{text}' is not an NBD URI (nbd://HOST[:PORT]/EXPORT or nbds://...).");
        }

        // The NBD URI specification: "the path part of the URI except for the leading `/`
        // character MUST be passed to the server as the export name" (nbd://h//disk names
        // "/disk"). Uri.AbsolutePath is canonicalised (dot segments removed), so the path is
        // taken from the text as written.
        var export = Uri.UnescapeDataString(RawExport(text));
        return new NbdUri(uri.Host.Trim('[', ']'), uri.IsDefaultPort || uri.Port < 0 ? NbdProtocol.DefaultPort : uri.Port, export, uri.Scheme == "nbds");
    }

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
    /// <remarks>A control character of the export name (one written %0A, say) is written percent-encoded again, so the text stays one line.</remarks>
    public override string ToString() => $"{(Tls ? "nbds" : "nbd")}://{(Host.Contains(':', StringComparison.Ordinal) ? $"[{Host}]" : Host)}:{Port}/{PercentEncodeControls(Export)}";

    private static string PercentEncodeControls(string text) =>
        ControlCharacters.IndexIn(text) < 0
            ? text
            : string.Concat(text.Select(c => char.IsControl(c) ? Uri.EscapeDataString(c.ToString()) : c.ToString()));
}
