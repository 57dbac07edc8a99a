namespace ActorBlk.Hardware.Nbd;

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
