using ActorBlk.Actors;
using ActorBlk.Actors.Serialization;
using Akka.Actor;
using Akka.Actor.Setup;
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
    private readonly Lazy<string?> _secret;

    private NodeClient(ActorSystem system, string address, Lazy<string?> secret)
    {
        _system = system;
        Address = address;
        _secret = secret;
    }

    /// <summary>The node's address (<c>akka.tcp://actorblk@127.0.0.1:4053</c>; <c>akka.ssl.tcp://</c> with TLS).</summary>
    public string Address { get; }

    /// <summary>
    /// The node at <c>--port N</c>, else at the remoting port of hocon.conf (<c>--config PATH</c>
    /// or the one <c>serve</c> would use), else 4053; on the host hocon.conf gives the node's
    /// address (<c>public-hostname</c>, else <c>hostname</c>), else 127.0.0.1. <c>--node</c> is
    /// read by <see cref="NodeOptions.AddressFrom"/>.
    /// </summary>
    public static string AddressFrom(int? port, string? configPath)
    {
        // The port, the host and the scheme (akka.ssl.tcp with TLS), from hocon.conf.
        var scheme = "akka.tcp";
        var host = "127.0.0.1";
        try
        {
            var config = NodeConfig.Load(configPath ?? NodeConfig.Locate(), null);
            // Read as serve reads it: `port = null` failed with "Value cannot be null." (an audit).
            port ??= config.HasPath("akka.remote.dot-netty.tcp.port") ? ActorBlkRemoting.Port(config) : 4053;
            scheme = ActorBlk.Actors.Serialization.ActorBlkRemoting.SslEnabled(config) ? "akka.ssl.tcp" : scheme;
            host = NodeHost(config) ?? host;
        }
        catch (UsageException) when (configPath is null)
        {
            port ??= 4053;
        }

        return $"{scheme}://{NodeConfig.SystemName}@{host}:{port}";
    }

    // The host of the address a node of this configuration has (Akka's: public-hostname, else
    // hostname), or null for none of its own (empty, every interface). A node answers only
    // messages addressed to its own address: with README's network set-up (hostname = 10.0.0.5,
    // TLS) a client given the node's --config asked 127.0.0.1, where nothing listens, and said
    // no node answered (an outside TLS audit).
    private static string? NodeHost(Config config)
    {
        var host = ActorBlkRemoting.HostName(config, "public-hostname") is { Length: > 0 } publicHost ? publicHost : ActorBlkRemoting.HostName(config);
        if (host.Length == 0 || (System.Net.IPAddress.TryParse(host, out var ip) && (ip.Equals(System.Net.IPAddress.Any) || ip.Equals(System.Net.IPAddress.IPv6Any))))
        {
            return null;
        }

        return host.Contains(':', StringComparison.Ordinal) && !host.StartsWith('[') ? $"[{host}]" : host;
    }

    /// <summary>
    /// The node configuration a client reads its TLS settings and admin secret from:
    /// <c>--config PATH</c>, else the hocon.conf <c>serve</c> would use, else none.
    /// </summary>
    public static Config? ConfigFrom(string? configPath)
    {
        try
        {
            return NodeConfig.Load(configPath ?? NodeConfig.Locate(), null);
        }
        catch (UsageException) when (configPath is null)
        {
            return null;
        }
    }

    /// <summary>
    /// Starts the client actor system: remoting on an ephemeral loopback port, untrusted mode (a
    /// client serves nothing), its Akka log on stderr (<see cref="ClientLogger"/>), ActorBlk's guarded serializers, and TLS with the node's certificate
    /// when <paramref name="nodeConfig"/> turns it on. The admin secret for writes and hotplug comes
    /// from <c>$ACTORBLK_ADMIN_SECRET</c>, else the node configuration (README, "Security").
    /// </summary>
    public static NodeClient Connect(string address, Config? nodeConfig = null)
    {
        var tls = nodeConfig is not null && ActorBlk.Actors.Serialization.ActorBlkRemoting.SslEnabled(nodeConfig);
        if (!tls && address.StartsWith("akka.ssl.tcp://", StringComparison.Ordinal))
        {
            throw new ConfigurationException($"{address} uses TLS: pass the node's hocon.conf (--config) for its certificate.");
        }
        var config = ConfigurationFactory.ParseString($$"""
            akka.loglevel = ERROR
            akka.stdout-loglevel = OFF
            akka.stdout-logger-class = "{{ClientFallbackLogger.TypeName}}"
            akka.loggers = ["{{ClientLogger.TypeName}}"]
            akka.log-dead-letters = off
            akka.actor.provider = remote
            akka.remote.dot-netty.tcp { hostname = 127.0.0.1, port = 0, enable-ssl = {{(tls ? "on" : "off")}} }
            akka.remote.log-remote-lifecycle-events = off
            akka.remote.untrusted-mode = on
            """).WithFallback(ActorBlkRemoting.SerializerConfig);
        if (tls)
        {
            var path = nodeConfig!.GetString("akka.remote.dot-netty.tcp.ssl.certificate.path", string.Empty);
            var password = nodeConfig.GetString("akka.remote.dot-netty.tcp.ssl.certificate.password", string.Empty);
            var pin = nodeConfig.GetBoolean("actorblk.remote.pin-certificate", true) ? "on" : "off";
            config = ConfigurationFactory.ParseString($$"""
                akka.remote.dot-netty.tcp.ssl.certificate { path = {{System.Text.Json.JsonSerializer.Serialize(path)}}, password = {{System.Text.Json.JsonSerializer.Serialize(password)}} }
                actorblk.remote.pin-certificate = {{pin}}
                """).WithFallback(config);
        }

        // Read when an administrative request needs it: a secret file the user may not read
        // fails a write or a hotplug (AdminSecretException), never a read such as iostat's.
        var secret = new Lazy<string?>(() => Environment.GetEnvironmentVariable(RemoteSurface.SecretVariable) is { Length: > 0 } fromEnv
            ? fromEnv.Trim()
            : nodeConfig is null ? null : RemoteSurface.ResolveSecret(nodeConfig, create: false));
        var setup = BootstrapSetup.Create().WithConfig(config);
        var system = ActorBlkRemoting.TlsSetup(config) is { } ssl
            ? ActorSystem.Create("actorblk-client", ActorSystemSetup.Create(setup, ssl))
            : ActorSystem.Create("actorblk-client", setup);
        return new NodeClient(system, address, secret);
    }

    /// <summary>Sends <paramref name="message"/> to the node's sysfs actor and returns the answer.</summary>
    /// <exception cref="NodeUnreachableException">No node answered at the address.</exception>
    /// <exception cref="ActorBlk.Actors.Serialization.AdminSecretException">An administrative request, and the secret file cannot be read.</exception>
    public async Task<object> AskAsync(object message)
    {
        // Administrative requests carry the admin secret; the node refuses them (EPERM) without it.
        // Read first, so a secret file that cannot be read is said before anything is sent.
        if (message is IActorBlkMessage admin && RemoteSurface.AdminTypes.Contains(message.GetType()) && _secret.Value is { } secret)
        {
            message = new RemoteSurface.Authenticated(secret, admin);
        }

        var path = $"{Address}/user/{BlockLayer.GuardianName}/{Sysfs.ActorName}";
        IActorRef sysfs;
        try
        {
            sysfs = await _system.ActorSelection(path).ResolveOne(TimeSpan.FromSeconds(10)).ConfigureAwait(false);
        }
        catch (ActorNotFoundException)
        {
            throw new NodeUnreachableException(Unanswered());
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

    // A node with TLS remoting drops a plain client's connection and a plain node a TLS client's,
    // which the client sees only as no answer: the hint names the setting to check.
    private string Unanswered() => Address.StartsWith("akka.ssl.tcp://", StringComparison.Ordinal)
        ? $"no ActorBlk node answered at {Address} (is `actorblk serve` running there, with TLS remoting and a certificate this client's --config accepts?)."
        : $"no ActorBlk node answered at {Address} (is `actorblk serve` running there? A node with TLS remoting answers only a client given a --config that turns TLS on).";

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
            throw new NodeUnreachableException(Unanswered());
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

    /// <summary>
    /// Reads <paramref name="paths"/> from the attribute tree of the node at <paramref name="address"/>
    /// (any node, not only <see cref="Address"/>), all at once. A path the node refuses (ENOENT ...)
    /// reads null, and so does every path of a node that does not answer within <paramref name="within"/>.
    /// </summary>
    public async Task<string?[]> ReadAttributesAsync(string address, IReadOnlyList<string> paths, TimeSpan within)
    {
        ArgumentNullException.ThrowIfNull(paths);
        IActorRef sysfs;
        try
        {
            sysfs = await _system.ActorSelection($"{address.TrimEnd('/')}/user/{BlockLayer.GuardianName}/{Sysfs.ActorName}").ResolveOne(within).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is ActorNotFoundException or TimeoutException)
        {
            return new string?[paths.Count];
        }

        return await Task.WhenAll(paths.Select(async path =>
        {
            try
            {
                return await sysfs.Ask<object>(new Sysfs.Read(path), within).ConfigureAwait(false) is Sysfs.Value value ? value.Text : null;
            }
            catch (AskTimeoutException)
            {
                return null;
            }
        })).ConfigureAwait(false);
    }

    /// <inheritdoc />
    public async ValueTask DisposeAsync() => await _system.Terminate().ConfigureAwait(false);
}

/// <summary>No node answered.</summary>
internal sealed class NodeUnreachableException(string message) : Exception(message);
