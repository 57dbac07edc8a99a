using System.Net;
using System.Threading.Channels;
using ActorBlk.Actors.Nbd;
using ActorBlk.Hardware.Nbd;
using ActorBlk.Actors.Clustering;
using Akka.Actor;
using Akka.Cluster;
using Akka.Configuration;
using AkkaCluster = Akka.Cluster.Cluster;

namespace ActorBlk.Actors.Tests.MultiNode;

/// <summary>
/// One member of an in-process test cluster: an actor system with remoting on 127.0.0.1 (an
/// ephemeral port) in untrusted mode with ActorBlk's guarded serializers (as `actorblk serve`),
/// the split-brain resolver of the repository's hocon.conf with a short stable-after, and the
/// block layer with its registry. Cluster events are read from a channel.
/// </summary>
internal sealed class ClusterNode : IAsyncDisposable
{
    private readonly Channel<ClusterEvent.IMemberEvent> _events = Channel.CreateUnbounded<ClusterEvent.IMemberEvent>();
    private readonly IActorRef _pump;

    private ClusterNode(ActorSystem system)
    {
        System = system;
        Cluster = AkkaCluster.Get(system);
        Layer = BlockLayer.Get(system);
        _pump = system.ActorOf(Props.Create(() => new EventPump(_events.Writer)), "test-member-events");
    }

    public ActorSystem System { get; }

    public AkkaCluster Cluster { get; }

    public BlockLayer Layer { get; }

    public ClusterDevices Devices => Layer.ClusterDevices;

    /// <summary>The node name registry entries carry, <c>127.0.0.1:port</c>.</summary>
    public string Name => DeviceRegistryActor.NodeName(Cluster.SelfAddress);

    /// <summary>The node's NBD export, once <see cref="ExportNbd"/> started it.</summary>
    public NbdServer? Nbd { get; private set; }

    public static ClusterNode Start(string name, int port = 0, string hocon = "") => new(ActorSystem.Create("actorblk", ConfigurationFactory
        .ParseString($"akka.remote.dot-netty.tcp.port = {port}\n{hocon}").WithFallback(Config())));

    /// <summary>Exports this node's devices over NBD on 127.0.0.1 (port 0: a free one) and publishes the endpoint, as `serve` does.</summary>
    public NbdServer ExportNbd()
    {
        var (_, server) = NbdExport.Start(Layer, new NbdServerOptions { Listen = new IPEndPoint(IPAddress.Loopback, 0) });
        Layer.SetNbdEndpoint($"nbd://{server.LocalEndPoint}");
        Nbd = server;
        return server;
    }

    /// <summary>
    /// The cluster section of the repository's hocon.conf (seed nodes cleared, stable-after 2 s) over
    /// the specs' simulated machine, with fast registry gossip.
    /// </summary>
    public static Config Config()
    {
        var shipped = ConfigurationFactory.ParseString(File.ReadAllText(RepositoryFile("hocon.conf")));
        var sbr = $$"""
            akka.cluster {
              seed-nodes = []
              log-info = off
              min-nr-of-members = 1
              downing-provider-class = "{{shipped.GetString("akka.cluster.downing-provider-class")}}"
              split-brain-resolver {
                active-strategy = {{shipped.GetString("akka.cluster.split-brain-resolver.active-strategy")}}
                keep-oldest.down-if-alone = {{(shipped.GetBoolean("akka.cluster.split-brain-resolver.keep-oldest.down-if-alone") ? "on" : "off")}}
                stable-after = 2s
              }
            }
            """;
        var cluster = ConfigurationFactory.ParseString(sbr);
        return ConfigurationFactory.ParseString($$"""
            akka.loglevel = WARNING
            akka.stdout-loglevel = WARNING
            akka.log-dead-letters = off
            akka.actor.provider = cluster
            akka.remote.dot-netty.tcp { hostname = 127.0.0.1, port = 0 }
            akka.remote.log-remote-lifecycle-events = off
            # The specs run beside the suite's other specs (three at a time, on 2 cores): a
            # heartbeat may be late by seconds there. A longer pause than the default 3 s keeps a busy
            # node from being taken for a crashed one (and downed by the split-brain resolver); a real
            # crash is still detected within about 10 s, far inside the specs' liveness bounds.
            akka.cluster.failure-detector.acceptable-heartbeat-pause = 8s
            akka.cluster.distributed-data { gossip-interval = 500ms, notify-subscribers-interval = 100ms, delta-crdt.enabled = {{(shipped.GetBoolean("akka.cluster.distributed-data.delta-crdt.enabled", true) ? "on" : "off")}}, max-delta-elements = {{shipped.GetInt("akka.cluster.distributed-data.max-delta-elements", 500)}} }
            # A test crash: the system stops without leaving the cluster.
            akka.coordinated-shutdown.run-by-actor-system-terminate = off
            actorblk.cluster.registry.poll-interval = 200ms
            """).WithFallback(cluster)
            .WithFallback(ActorBlk.Actors.Serialization.ActorBlkRemoting.SerializerConfig)
            .WithFallback(ActorBlk.Actors.Serialization.ActorBlkRemoting.UntrustedModeConfig)
            .WithFallback(Support.Configs.Simulated);
    }

    /// <summary>A file at the repository root.</summary>
    public static string RepositoryFile(string name)
    {
        var dir = new DirectoryInfo(AppContext.BaseDirectory);
        while (dir is not null && !File.Exists(Path.Combine(dir.FullName, "ActorBlk.sln")))
        {
            dir = dir.Parent;
        }

        return Path.Combine(dir?.FullName ?? throw new DirectoryNotFoundException("repository root"), name);
    }

    /// <summary>Joins <paramref name="seed"/> (itself to form a cluster) and waits until this node is Up.</summary>
    public async Task JoinAsync(ClusterNode seed, TimeSpan within)
    {
        var up = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        Cluster.RegisterOnMemberUp(() => up.TrySetResult());
        await Cluster.JoinAsync(seed.Cluster.SelfAddress).WaitAsync(within);
        await up.Task.WaitAsync(within);
    }

    /// <summary>Reads this node's member events until one matches.</summary>
    public async Task<ClusterEvent.IMemberEvent> WaitForEventAsync(Func<ClusterEvent.IMemberEvent, bool> match, TimeSpan within)
    {
        using var cts = new CancellationTokenSource(within);
        await foreach (var e in _events.Reader.ReadAllAsync(cts.Token))
        {
            if (match(e))
            {
                return e;
            }
        }

        throw new InvalidOperationException("the event stream ended");
    }

    /// <summary>
    /// The cluster state as the node's event publisher holds it now. <see cref="AkkaCluster.State"/>
    /// is a read view fed by its own subscription, so it may not yet show an event that
    /// <see cref="WaitForEventAsync"/> returned; the publisher's state, asked after, always does.
    /// </summary>
    public async Task<ClusterEvent.CurrentClusterState> CurrentStateAsync(TimeSpan within)
    {
        var reply = new TaskCompletionSource<ClusterEvent.CurrentClusterState>(TaskCreationOptions.RunContinuationsAsynchronously);
        _pump.Tell(new EventPump.AskState(reply));
        return await reply.Task.WaitAsync(within);
    }

    /// <summary>Waits until this node's registry snapshot satisfies <paramref name="condition"/>.</summary>
    public async Task<IReadOnlyList<ClusterDevice>> WaitForDevicesAsync(Func<IReadOnlyList<ClusterDevice>, bool> condition, TimeSpan within)
    {
        using var cts = new CancellationTokenSource(within);
        try
        {
            return await Devices.WaitForAsync(condition, cts.Token);
        }
        catch (OperationCanceledException)
        {
            throw new TimeoutException($"{Name}: the registry did not get there within {within}; it holds {string.Join(", ", Devices.Snapshot)}");
        }
    }

    /// <summary>
    /// A crash as far as the cluster can tell: the registry stops first (so nothing is withdrawn),
    /// the devices are destroyed (to release their memory and threads), and the system stops
    /// without leaving the cluster. The others see it unreachable; the split-brain resolver decides.
    /// </summary>
    public async Task CrashAsync()
    {
        var registry = await System.ActorSelection($"/user/{DeviceRegistryActor.ActorName}").ResolveOne(TimeSpan.FromSeconds(30));
        await registry.GracefulStop(TimeSpan.FromSeconds(30));

        // The NBD export vanishes at once: its connections close under their clients, as at a kill -9.
        if (Nbd is { } nbd)
        {
            await nbd.DisposeAsync();
        }

        foreach (var device in Layer.Devices.ToArray())
        {
            try
            {
                await Layer.DestroyDeviceAsync(device.Name);
            }
            catch (KeyNotFoundException)
            {
                // Destroyed meanwhile: a local queue of another node's device, released by its
                // remote-device actor as the registry or the export went away.
            }
        }

        await System.Terminate().WaitAsync(TimeSpan.FromSeconds(60));
    }

    public async ValueTask DisposeAsync()
    {
        if (!System.WhenTerminated.IsCompleted)
        {
            await CoordinatedShutdown.Get(System).Run(CoordinatedShutdown.ClrExitReason.Instance).WaitAsync(TimeSpan.FromSeconds(60));
            await System.Terminate().WaitAsync(TimeSpan.FromSeconds(60));
        }
    }

    private sealed class EventPump : ReceiveActor
    {
        private readonly Queue<TaskCompletionSource<ClusterEvent.CurrentClusterState>> _asks = new();

        public EventPump(ChannelWriter<ClusterEvent.IMemberEvent> writer)
        {
            Receive<ClusterEvent.IMemberEvent>(e => writer.TryWrite(e));
            Receive<AskState>(ask =>
            {
                _asks.Enqueue(ask.Reply);
                AkkaCluster.Get(Context.System).SendCurrentClusterState(Self);
            });

            // Only replies to AskState arrive here: the subscription sends its initial state as events.
            Receive<ClusterEvent.CurrentClusterState>(state =>
            {
                if (_asks.TryDequeue(out var reply))
                {
                    reply.TrySetResult(state);
                }
            });
        }

        public sealed record AskState(TaskCompletionSource<ClusterEvent.CurrentClusterState> Reply);

        protected override void PreStart() =>
            AkkaCluster.Get(Context.System).Subscribe(Self, ClusterEvent.SubscriptionInitialStateMode.InitialStateAsEvents, typeof(ClusterEvent.IMemberEvent));
    }
}
