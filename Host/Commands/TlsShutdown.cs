using Akka.Actor;

namespace ActorBlk.Host.Commands;

/// <summary>
/// Akka.Remote (1.5.50 and later) runs coordinated shutdown of the whole actor system when a TLS
/// handshake fails on a connection this system opened (its <c>TlsHandshakeFailureReason</c>, exit
/// code 79): the peer at that address does not speak TLS, presents a certificate this node does
/// not accept, or closed the connection during the handshake. The node did not stop because it
/// was asked to, so <c>serve</c> reports it as a failure and <c>bench --join</c> stops waiting.
/// </summary>
internal static class TlsShutdown
{
    private const string ReasonType = "Akka.Remote.Transport.DotNetty.TlsHandshakeFailureReason";

    /// <summary>Akka's reason (<c>TLS handshake failed on outbound connection to [HOST:PORT]</c>) when it shut <paramref name="system"/> down, else null.</summary>
    public static string? Reason(ActorSystem system)
    {
        ArgumentNullException.ThrowIfNull(system);
        return CoordinatedShutdown.Get(system).ShutdownReason is { } reason && reason.GetType().FullName == ReasonType
            ? reason.ToString()
            : null;
    }

    /// <summary>What to check, after Akka's reason.</summary>
    public static string Explain(string reason) =>
        $"Akka.Remote shut this actor system down: {reason} (the process listening there does not speak TLS, presents a certificate this node does not accept, "
        + "or closed the connection during the handshake; check akka.remote.dot-netty.tcp.enable-ssl, the certificate and actorblk.remote.pin-certificate on both sides, README \"Security\")";
}
