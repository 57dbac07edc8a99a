using System.Net;
using System.Net.Sockets;
using ActorBlk.Actors.Serialization;
using ActorBlk.Actors.Tests.Support;
using Akka.Actor;
using Akka.Configuration;
using Xunit;

namespace ActorBlk.Actors.Tests.Security;

/// <summary>
/// The remoting port caps the connections it holds that this node did not open (README,
/// "Security"; <c>actorblk.remote.max-inbound-connections</c> and <c>-per-host</c>). Before, Akka's
/// transport held every connection with a descriptor and a frame of buffer until the handshake
/// timed out: 400 idle connections aborted a node under <c>ulimit -n 400</c>, 10,000 half-sent
/// frames took 1.5 GB. One past the cap is closed as it arrives; closed connections give their
/// place back; a real peer's association counts like any other and still works under the cap.
/// </summary>
public sealed class InboundConnectionCapSpec : Akka.TestKit.Xunit2.TestKit, IAsyncLifetime
{
    private readonly List<ActorSystem> _systems = [];
    private readonly List<Socket> _sockets = [];

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync()
    {
        foreach (var socket in _sockets)
        {
            socket.Dispose();
        }

        foreach (var system in _systems)
        {
            await system.Terminate();
        }
    }

    // A remoting system with the library's defaults (which apply the cap) under the given HOCON.
    private ActorSystem Start(string name, string hocon = "")
    {
        var config = ConfigurationFactory.ParseString(hocon + """

            akka.actor.provider = remote
            akka.remote.dot-netty.tcp { hostname = 127.0.0.1, port = 0 }
            """)
            .WithFallback(Configs.Simulated)
            .WithFallback(ActorBlkSettings.DefaultConfig());
        var system = ActorSystem.Create(name, config);
        _systems.Add(system);
        return system;
    }

    private async Task<Socket> Connect(int port)
    {
        var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        _sockets.Add(socket);
        await socket.ConnectAsync(IPAddress.Loopback, port);
        return socket;
    }

    private static int PortOf(ActorSystem system) => ((ExtendedActorSystem)system).Provider.DefaultAddress.Port!.Value;

    private Task Until(Func<bool> condition) =>
        AwaitConditionAsync(() => Task.FromResult(condition()), TimeSpan.FromSeconds(30), TimeSpan.FromMilliseconds(10));

    // Whether the node closed the connection: a read that ends (0 bytes, or a reset) rather than
    // one still waiting when the bound runs out.
    private static async Task<bool> ClosedByPeer(Socket socket)
    {
        var buffer = new byte[16];
        try
        {
            return await socket.ReceiveAsync(buffer.AsMemory()).AsTask().WaitAsync(TimeSpan.FromSeconds(10)) == 0;
        }
        catch (SocketException)
        {
            return true;
        }
        catch (TimeoutException)
        {
            return false;
        }
    }

    [Fact]
    public async Task A_connection_past_the_per_host_cap_is_closed_as_it_arrives_and_closed_ones_give_their_place_back()
    {
        var node = Start("capped", "actorblk.remote.max-inbound-connections-per-host = 3");
        var cap = InboundConnectionCap.Of(node) ?? throw new InvalidOperationException("the cap was not applied");
        Assert.Equal(3, cap.MaxPerHost);
        var port = PortOf(node);

        var held = new List<Socket>();
        for (var i = 0; i < 3; i++)
        {
            held.Add(await Connect(port));
        }

        await Until(() => cap.Held == 3);

        // The fourth from the same address is closed at once (before, it was held until the
        // handshake timed out, 15 s, and nothing bounded how many).
        var fourth = await Connect(port);
        Assert.True(await ClosedByPeer(fourth), "the connection past the cap was not closed");
        Assert.Equal(1, cap.Refused);
        Assert.Equal(3, cap.Held);

        // Closed by the client, the three give their places back.
        foreach (var socket in held)
        {
            socket.Close();
        }

        await Until(() => cap.Held == 0);

        // A real peer associates, is counted while its association lives, and is let go.
        node.ActorOf(Props.Create(() => new Echo()), "echo");
        var client = Start("client");
        var echo = await client.ActorSelection($"akka.tcp://capped@127.0.0.1:{port}/user/echo").ResolveOne(TimeSpan.FromSeconds(20));
        Assert.Equal("ping", await echo.Ask<string>("ping", TimeSpan.FromSeconds(20)));
        Assert.Equal(1, cap.Held);
        await client.Terminate();
        await Until(() => cap.Held == 0);
        Assert.Equal(1, cap.Refused);
    }

    [Fact]
    public async Task The_total_cap_counts_every_address_and_the_open_file_limit_lowers_it()
    {
        var node = Start("total", "actorblk.remote { max-inbound-connections = 2, max-inbound-connections-per-host = 100 }");
        var cap = InboundConnectionCap.Of(node)!;
        Assert.Equal((2, 2), (cap.MaxTotal, cap.MaxPerHost)); // per host never above the total
        var port = PortOf(node);
        await Connect(port);
        await Connect(port);
        await Until(() => cap.Held == 2);
        Assert.True(await ClosedByPeer(await Connect(port)));

        // Under ulimit -n 400 the default total (1024) is (400 - 64) / 2 = 168.
        var defaults = ActorBlkSettings.DefaultConfig();
        Assert.Equal((168, 168), InboundConnectionCap.Limits(defaults, openFileLimit: 400));
        Assert.Equal((1024, 256), InboundConnectionCap.Limits(defaults, openFileLimit: 20_000));
    }

    [Fact]
    public async Task Refused_connections_are_logged_once_a_minute_the_first_one_at_once()
    {
        // The warning's rate limit started from long.MinValue, and "now - long.MinValue"
        // overflowed to a negative number: no refusal was ever logged (the README promises a
        // warning a minute at most, not none).
        var node = Start("logged", "actorblk.remote.max-inbound-connections-per-host = 1");
        var warnings = new System.Collections.Concurrent.ConcurrentQueue<string>();
        node.EventStream.Subscribe(node.ActorOf(Props.Create(() => new WarningLog(warnings))), typeof(Akka.Event.Warning));
        var cap = InboundConnectionCap.Of(node)!;
        var port = PortOf(node);
        await Connect(port);
        await Until(() => cap.Held == 1);
        for (var i = 0; i < 3; i++)
        {
            Assert.True(await ClosedByPeer(await Connect(port)));
        }

        // Each refusal's warning, if any, was published before its connection was closed; a
        // marker published now arrives after them.
        node.EventStream.Publish(new Akka.Event.Warning("spec", typeof(InboundConnectionCapSpec), "marker"));
        await Until(() => warnings.Contains("marker"));
        var refusals = warnings.Where(w => w.StartsWith("Remoting: closed a connection from", StringComparison.Ordinal)).ToList();
        var line = Assert.Single(refusals);
        Assert.Contains("1 refused so far", line, StringComparison.Ordinal);
        Assert.Equal(3, cap.Refused);
    }

    private sealed class WarningLog : ReceiveActor
    {
        public WarningLog(System.Collections.Concurrent.ConcurrentQueue<string> seen) =>
            Receive<Akka.Event.Warning>(w => seen.Enqueue(w.Message?.ToString() ?? string.Empty));
    }

    private sealed class Echo : ReceiveActor
    {
        public Echo() => Receive<string>(s => Sender.Tell(s));
    }
}
