using System.Net;
using System.Net.Sockets;

namespace ActorBlk.Hardware.Interop;

/// <summary>
/// Listening sockets that a restarted process can bind again at once, and that a second process
/// can never bind beside the first.
/// </summary>
/// <remarks>
/// On Linux, .NET's <see cref="SocketOptionName.ReuseAddress"/> sets <c>SO_REUSEPORT</c> as well
/// as <c>SO_REUSEADDR</c>, and with <c>SO_REUSEPORT</c> a second process of the same user binds
/// the same address and port and the kernel shares the connections between the two: a client of
/// one node's NBD export could reach another node's devices. <c>SO_REUSEADDR</c> alone is what
/// a restart needs (a port whose old connections wait in TIME_WAIT), and it refuses a second
/// listener with EADDRINUSE.
/// </remarks>
public static class ListenSockets
{
    private const int SolSocket = 1;
    private const int SoReuseAddr = 2;

    /// <summary>Sets <c>SO_REUSEADDR</c> alone on Linux (see the remarks); nothing elsewhere.</summary>
    public static void AllowRestart(Socket socket)
    {
        ArgumentNullException.ThrowIfNull(socket);
        if (OperatingSystem.IsLinux())
        {
            socket.SetRawSocketOption(SolSocket, SoReuseAddr, BitConverter.GetBytes(1));
        }
    }

    /// <summary>
    /// Fails when another socket listens on <paramref name="endpoint"/> (port 0 is never in use):
    /// binds a probe with <c>SO_REUSEADDR</c> alone and closes it. For a listener this process
    /// does not create itself (Akka's remoting transport sets <c>SO_REUSEPORT</c> on Linux, so its
    /// own bind would succeed beside another node's).
    /// </summary>
    /// <exception cref="SocketException">The address is in use (<see cref="SocketError.AddressAlreadyInUse"/>) or cannot be bound.</exception>
    public static void ThrowIfInUse(IPEndPoint endpoint)
    {
        ArgumentNullException.ThrowIfNull(endpoint);
        if (endpoint.Port == 0)
        {
            return;
        }

        using var probe = new Socket(endpoint.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        AllowRestart(probe);
        probe.Bind(endpoint);
    }
}
