using System.Net;
using System.Net.Sockets;
using ActorBlk.Hardware.Interop;
using ActorBlk.Hardware.Nbd;
using Xunit;

namespace ActorBlk.Hardware.Tests.Nbd;

/// <summary>
/// A port a running listener holds is never bound a second time: .NET's ReuseAddress sets
/// SO_REUSEPORT on Linux, with which a second NBD server on the same port started beside the
/// first and the kernel shared the clients between them.
/// </summary>
public sealed class ListenSocketsSpec
{
    [Fact]
    public async Task A_second_nbd_server_on_the_port_of_a_running_one_fails_to_bind()
    {
        var first = NbdServer.Start(new NbdDeviceList([]), new NbdServerOptions { Listen = new IPEndPoint(IPAddress.Loopback, 0) });
        try
        {
            var taken = first.LocalEndPoint;
            var error = Assert.Throws<SocketException>(() => NbdServer.Start(new NbdDeviceList([]), new NbdServerOptions { Listen = taken }));
            Assert.Equal(SocketError.AddressAlreadyInUse, error.SocketErrorCode);
        }
        finally
        {
            await first.DisposeAsync();
        }
    }

    [Fact]
    public async Task A_stopped_server_port_can_be_bound_again_at_once()
    {
        // SO_REUSEADDR is kept: a restart does not wait for connections in TIME_WAIT.
        var first = NbdServer.Start(new NbdDeviceList([]), new NbdServerOptions { Listen = new IPEndPoint(IPAddress.Loopback, 0) });
        var port = first.LocalEndPoint;
        using (var client = new TcpClient())
        {
            await client.ConnectAsync(port);
            await Condition.EventuallyAsync(() => first.ConnectionCount == 1, "the connection is accepted");
            await first.DisposeAsync(); // the server closes first: its side waits in TIME_WAIT
        }

        var again = NbdServer.Start(new NbdDeviceList([]), new NbdServerOptions { Listen = port });
        await again.DisposeAsync();
    }

    [Fact]
    public void The_probe_sees_a_listener_that_set_reuse_port_as_akka_remoting_does()
    {
        using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        listener.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.ReuseAddress, true);
        listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        listener.Listen();
        var taken = (IPEndPoint)listener.LocalEndPoint!;

        // What Akka's transport does on Linux succeeds beside it ...
        using (var twin = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp))
        {
            twin.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.ReuseAddress, true);
            twin.Bind(taken);
        }

        // ... and the probe refuses it; a free port and port 0 pass.
        Assert.Equal(SocketError.AddressAlreadyInUse, Assert.Throws<SocketException>(() => ListenSockets.ThrowIfInUse(taken)).SocketErrorCode);
        ListenSockets.ThrowIfInUse(new IPEndPoint(IPAddress.Loopback, 0));
        listener.Close();
        ListenSockets.ThrowIfInUse(taken);
    }
}
