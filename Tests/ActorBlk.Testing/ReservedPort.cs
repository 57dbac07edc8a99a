using System.Globalization;
using System.Net;
using System.Net.Sockets;

namespace ActorBlk.Testing;

/// <summary>
/// A port on 127.0.0.1 kept from every other process while a spec starts an ActorBlk node on it
/// (Akka's remoting transport), or restarts a killed node at its old address: a TCP socket bound
/// to the port with <c>SO_REUSEADDR</c> and <c>SO_REUSEPORT</c>, never listening.
/// </summary>
/// <remarks>
/// A spec that picked a free port (a listener on port 0, stopped) and started its nodes on it
/// later, or restarted a killed node at its old port once the cluster had removed it (seconds
/// later), left the port free in between: a bind to port 0 or a <c>connect()</c> of another spec
/// (the test assemblies run their collections in parallel, and start nodes) could take it, and
/// the node then failed to start with the address in use. While this socket is bound the kernel's
/// choice of a free port (bind to port 0, a <c>connect()</c>'s local port) passes the port over,
/// and a bind to it without <c>SO_REUSEADDR</c> fails with EADDRINUSE (ReservedPortSpec).
/// A node still binds it: Akka's DotNetty transport listens with <c>SO_REUSEPORT</c> on Linux
/// (tcp-reuse-addr = off-for-windows), which the kernel lets sockets of one user share, and serve's
/// own checks pass (ListenSockets.ThrowIfInUse is refused by a listening socket only, and the lock
/// file of RemotingPortLock is not this). It can be bound beside a running node as well, so a spec
/// takes it before it kills the node, and no moment is left between the kill and the restart. Not
/// listening, it never receives a connection meant for the node. What it does not stop: a bind
/// to the port by its number with <c>SO_REUSEADDR</c> (which .NET sets on every bind of a TCP
/// socket), by a process that learnt the number before the reservation (a port probed free and
/// released by another spec: PrometheusSpec's and NbdClientDriverSpec's FreePort). Linux
/// semantics.
/// </remarks>
public sealed class ReservedPort : IDisposable
{
    private const int SolSocket = 1;
    private const int SoReusePort = 15;

    private readonly Socket _socket;

    private ReservedPort(int port)
    {
        _socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        try
        {
            // .NET's ReuseAddress sets SO_REUSEADDR and SO_REUSEPORT on Linux; SO_REUSEPORT is set
            // again by its number so the reservation does not rest on that mapping.
            _socket.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.ReuseAddress, true);
            if (OperatingSystem.IsLinux())
            {
                _socket.SetRawSocketOption(SolSocket, SoReusePort, BitConverter.GetBytes(1));
            }

            _socket.Bind(new IPEndPoint(IPAddress.Loopback, port));
            Port = ((IPEndPoint)_socket.LocalEndPoint!).Port;
        }
        catch
        {
            _socket.Dispose();
            throw;
        }
    }

    /// <summary>The reserved port.</summary>
    public int Port { get; }

    /// <summary>A free port, chosen by the kernel (bind to port 0) and reserved from that moment.</summary>
    public static ReservedPort Any() => new(0);

    /// <summary>
    /// <paramref name="port"/>, reserved: the port of a node that is running (its listener shares
    /// it) or was killed, to be restarted there.
    /// </summary>
    /// <exception cref="SocketException">Another process holds the port in a way that cannot be shared (<see cref="SocketError.AddressAlreadyInUse"/>).</exception>
    public static ReservedPort Of(int port)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(port);
        return new(port);
    }

    /// <summary>The port in decimal, as <c>--port</c> takes it.</summary>
    public override string ToString() => Port.ToString(CultureInfo.InvariantCulture);

    /// <summary>Releases the port: the node that listens on it keeps it.</summary>
    public void Dispose() => _socket.Dispose();
}
