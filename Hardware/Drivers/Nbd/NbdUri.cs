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
        if (!Uri.TryCreate(text, UriKind.Absolute, out var uri) || uri.Scheme is not ("nbd" or "nbds") || uri.Host.Length == 0)
        {
            throw new FormatException($"'{text}' is not an NBD URI (nbd://HOST[:PORT]/EXPORT or nbds://...).");
        }

        var export = Uri.UnescapeDataString(uri.AbsolutePath.TrimStart('/'));
        return new NbdUri(uri.Host.Trim('[', ']'), uri.IsDefaultPort || uri.Port < 0 ? NbdProtocol.DefaultPort : uri.Port, export, uri.Scheme == "nbds");
    }

    /// <inheritdoc />
    public override string ToString() => $"{(Tls ? "nbds" : "nbd")}://{(Host.Contains(':', StringComparison.Ordinal) ? $"[{Host}]" : Host)}:{Port}/{Export}";
}
