using ActorBlk.Actors;
using Akka.Actor;
using Akka.Configuration;

namespace ActorBlk.Host.Commands;

/// <summary>
/// A short-lived client of a running <c>actorblk serve</c> node: an actor system with remoting on
/// loopback (an ephemeral port, no cluster membership) that talks to the node's sysfs actor.
/// </summary>
internal sealed class NodeClient : IAsyncDisposable
{
    /// <summary>How long a node may take to answer; a hotplug event drains every device first.</summary>
    public static readonly TimeSpan AnswerTimeout = TimeSpan.FromSeconds(60);

    private readonly ActorSystem _system;

    private NodeClient(ActorSystem system, string address)
    {
        _system = system;
        Address = address;
    }

    /// <summary>The node's address (<c>akka.tcp://actorblk@127.0.0.1:4053</c>).</summary>
    public string Address { get; }

    /// <summary>
    /// The node named by <c>--node ADDRESS</c>, else by <c>--port N</c> on 127.0.0.1, else by the
    /// remoting port of hocon.conf (<c>--config PATH</c> or the one <c>serve</c> would use), else 4053.
    /// </summary>
    public static string AddressFrom(CommandLine cl)
    {
        var node = cl.String("node");
        int? port = cl.Has("port") ? cl.Int("port", 4053, 1, 65535) : null;
        var configPath = cl.String("config");
        if (node is not null)
        {
            return node.TrimEnd('/');
        }

        if (port is null)
        {
            try
            {
                var path = configPath ?? NodeConfig.Locate();
                port = NodeConfig.Load(path, null).GetInt("akka.remote.dot-netty.tcp.port", 4053);
            }
            catch (UsageException) when (configPath is null)
            {
                port = 4053;
            }
        }

        return $"akka.tcp://{NodeConfig.SystemName}@127.0.0.1:{port}";
    }

    /// <summary>Starts the client actor system.</summary>
    public static NodeClient Connect(string address)
    {
        var config = ConfigurationFactory.ParseString("""
            akka.loglevel = ERROR
            akka.stdout-loglevel = OFF
            akka.log-dead-letters = off
            akka.actor.provider = remote
            akka.remote.dot-netty.tcp { hostname = 127.0.0.1, port = 0 }
            akka.remote.log-remote-lifecycle-events = off
            akka.actor.serializers.actorblk = "ActorBlk.Actors.Serialization.ActorBlkHyperionSerializer, ActorBlk.Actors"
            akka.actor.serialization-bindings { "ActorBlk.Actors.Serialization.IActorBlkMessage, ActorBlk.Actors" = actorblk }
            """);
        return new NodeClient(ActorSystem.Create("actorblk-client", config), address);
    }

    /// <summary>Sends <paramref name="message"/> to the node's sysfs actor and returns the answer.</summary>
    /// <exception cref="NodeUnreachableException">No node answered at the address.</exception>
    public async Task<object> AskAsync(object message)
    {
        var path = $"{Address}/user/{BlockLayer.GuardianName}/{Sysfs.ActorName}";
        IActorRef sysfs;
        try
        {
            sysfs = await _system.ActorSelection(path).ResolveOne(TimeSpan.FromSeconds(10)).ConfigureAwait(false);
        }
        catch (ActorNotFoundException)
        {
            throw new NodeUnreachableException($"no ActorBlk node answered at {Address} (is `actorblk serve` running there?).");
        }

        try
        {
            return await sysfs.Ask<object>(message, AnswerTimeout).ConfigureAwait(false);
        }
        catch (AskTimeoutException)
        {
            throw new NodeUnreachableException($"the node at {Address} did not answer within {AnswerTimeout.TotalSeconds:0} s.");
        }
    }

    /// <summary>Sends <paramref name="message"/> to the node's guardian (<c>/user/actorblk</c>) and returns the answer.</summary>
    /// <exception cref="NodeUnreachableException">No node answered at the address.</exception>
    public async Task<T> AskGuardianAsync<T>(object message)
    {
        var path = $"{Address}/user/{BlockLayer.GuardianName}";
        IActorRef guardian;
        try
        {
            guardian = await _system.ActorSelection(path).ResolveOne(TimeSpan.FromSeconds(10)).ConfigureAwait(false);
        }
        catch (ActorNotFoundException)
        {
            throw new NodeUnreachableException($"no ActorBlk node answered at {Address} (is `actorblk serve` running there?).");
        }

        try
        {
            return await guardian.Ask<T>(message, AnswerTimeout).ConfigureAwait(false);
        }
        catch (AskTimeoutException)
        {
            throw new NodeUnreachableException($"the node at {Address} did not answer within {AnswerTimeout.TotalSeconds:0} s.");
        }
    }

    /// <inheritdoc />
    public async ValueTask DisposeAsync() => await _system.Terminate().ConfigureAwait(false);
}

/// <summary>No node answered.</summary>
internal sealed class NodeUnreachableException(string message) : Exception(message);
