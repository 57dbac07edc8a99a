using System.Net;
using System.Net.Sockets;
using ActorBlk.Host.Tests.Support;
using ActorBlk.Testing;
using Xunit;

namespace ActorBlk.Host.Tests;

/// <summary>
/// What <see cref="ReservedPort"/> promises the specs that start or restart a node on a port they
/// chose: while it is held the kernel gives the port to no one else (a bind to port 0, a
/// <c>connect()</c>, a plain bind), and `actorblk serve` starts on it, also after a node killed
/// there, and keeps it once it is released. Before it, the port was free from its choice (or the
/// node's kill) to the node's start, and a node of another spec could take it.
/// </summary>
[Collection(OwnResourceProcessesCollection.Name)]
public sealed class ReservedPortSpec
{
    private static readonly TimeSpan Within = TimeSpan.FromSeconds(120);

    // IP_LOCAL_PORT_RANGE (Linux 6.3): one socket's range of ports for the kernel to choose from.
    // Narrowed to the reserved port alone, a bind to port 0 or a connect() is given that port or fails.
    private const int IpProtoIp = 0;
    private const int IpLocalPortRange = 51;
    private const int SolSocket = 1;
    private const int SoReuseAddr = 2;

    private static Socket NarrowedTo(int port)
    {
        var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        try
        {
            socket.SetRawSocketOption(IpProtoIp, IpLocalPortRange, BitConverter.GetBytes((uint)port | ((uint)port << 16)));
            return socket;
        }
        catch (SocketException ex)
        {
            socket.Dispose();
            throw new SkipException($"IP_LOCAL_PORT_RANGE is not supported here (Linux 6.3 and later): {ex.SocketErrorCode}");
        }
    }

    private static SocketError BindError(Socket socket, IPEndPoint endpoint) =>
        Assert.Throws<SocketException>(() => socket.Bind(endpoint)).SocketErrorCode;

    // A TCP socket without SO_REUSEADDR, as most programs bind. .NET sets SO_REUSEADDR itself when
    // it binds a socket of ProtocolType.Tcp (a bind beside TIME_WAIT, as Windows allows); of
    // ProtocolType.Unspecified (the same TCP socket for the kernel) it does not.
    private static Socket Plain()
    {
        var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Unspecified);
        socket.SetRawSocketOption(SolSocket, SoReuseAddr, BitConverter.GetBytes(0));
        return socket;
    }

    private static int ReuseAddr(Socket socket)
    {
        var value = new byte[4];
        socket.GetRawSocketOption(SolSocket, SoReuseAddr, value);
        return BitConverter.ToInt32(value);
    }

    [SkippableFact]
    public void A_reserved_port_is_given_to_no_bind_to_port_0_no_connect_and_no_plain_bind()
    {
        Skip.IfNot(OperatingSystem.IsLinux(), "SO_REUSEPORT and IP_LOCAL_PORT_RANGE are Linux's");
        using var server = new TcpListener(IPAddress.Loopback, 0);
        server.Start();

        int port;
        using (var reserved = ReservedPort.Any())
        {
            port = reserved.Port;
            using var any = NarrowedTo(port);
            Assert.Equal(SocketError.AddressAlreadyInUse, BindError(any, new IPEndPoint(IPAddress.Loopback, 0)));
            using var client = NarrowedTo(port);
            Assert.Equal(SocketError.AddressNotAvailable, Assert.Throws<SocketException>(() => client.Connect(server.LocalEndpoint)).SocketErrorCode);
            using var plain = Plain();
            Assert.Equal(SocketError.AddressAlreadyInUse, BindError(plain, new IPEndPoint(IPAddress.Loopback, port)));
            Assert.Equal(0, ReuseAddr(plain));
            using var wildcard = Plain();
            Assert.Equal(SocketError.AddressAlreadyInUse, BindError(wildcard, new IPEndPoint(IPAddress.Any, port)));
        }

        // Released, the same narrowed bind to port 0 is given the port: the refusals were the reservation's.
        using var after = NarrowedTo(port);
        after.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        Assert.Equal(port, ((IPEndPoint)after.LocalEndPoint!).Port);
    }

    [Fact]
    public async Task Serve_starts_on_a_reserved_port_and_restarts_there_after_a_kill_and_keeps_it_once_released()
    {
        using var dir = new TempDirectory("reserved-port");
        var config = dir.File("node.conf");
        await File.WriteAllTextAsync(config, await File.ReadAllTextAsync(RepositoryFiles.Hocon()) + """

            actorblk.nbd.listen = off
            actorblk.topology.source = simulated
            actorblk.devices = [ { name = nullb0, driver = "null", size = 64m, irqmode = 0 } ]
            """);

        // Chosen and reserved: the node starts on it (serve's own check of the port, a bind without
        // SO_REUSEPORT, passes) and keeps it after the release.
        var reserved = ReservedPort.Any();
        var port = reserved.Port;
        await using var first = ActorBlkProcess.Start("serve", "--config", config, "--port", reserved.ToString());
        try
        {
            await WaitAddressableAsync(first, port);
        }
        finally
        {
            reserved.Dispose();
        }

        await AssertAnswersAsync(port);

        // Reserved beside the running node (its listener shares the port), killed, restarted on it.
        using (var kept = ReservedPort.Of(port))
        {
            await first.KillAsync();
            using (var plain = Plain())
            {
                Assert.Equal(SocketError.AddressAlreadyInUse, BindError(plain, new IPEndPoint(IPAddress.Loopback, port)));
            }

            await using var again = ActorBlkProcess.Start("serve", "--config", config, "--port", kept.ToString());
            await WaitAddressableAsync(again, port);
            kept.Dispose();

            await AssertAnswersAsync(port);
            again.Terminate();
            Assert.Equal(0, await again.WaitForExitAsync(Within));
        }
    }

    private static Task<string> WaitAddressableAsync(ActorBlkProcess node, int port) =>
        node.WaitForLineAsync(l => l.Contains($"Devices are addressable at akka.tcp://actorblk@127.0.0.1:{port}/user/actorblk", StringComparison.Ordinal), Within);

    // A client command reaches the node at the port and lists its device.
    private static async Task AssertAnswersAsync(int port)
    {
        await using var devices = ActorBlkProcess.Start("devices", "--node", $"127.0.0.1:{port}");
        Assert.True(await devices.WaitForExitAsync(Within) == 0, devices.Output);
        Assert.Contains("nullb0", devices.StandardOutput, StringComparison.Ordinal);
    }
}
