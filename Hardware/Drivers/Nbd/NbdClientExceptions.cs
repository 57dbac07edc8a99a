namespace ActorBlk.Hardware.Drivers.Nbd;

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
