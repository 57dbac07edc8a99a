using System.Net.Sockets;

namespace ActorBlk.Testing;

/// <summary>Unix domain sockets for specs that start a server on one (nbdkit <c>-U</c>).</summary>
public static class UnixSockets
{
    /// <summary>Whether something accepts connections on the socket at <paramref name="path"/>.</summary>
    public static bool Listens(string path)
    {
        try
        {
            using var client = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            client.Connect(new UnixDomainSocketEndPoint(path));
            return true;
        }
        catch (SocketException)
        {
            return false;
        }
    }
}
