using System.CommandLine;
using Akka.Configuration;

namespace ActorBlk.Host.Commands;

/// <summary>
/// How a client command names the running node it talks to: <c>--node ADDRESS</c> (or
/// <c>HOST:PORT</c> where the command says so), else <c>--port N</c>, else the
/// remoting port of hocon.conf (<c>--config PATH</c> or the one <c>serve</c> would use), else 4053.
/// The options are recursive: <c>sysfs --port 1 list</c> and <c>sysfs list --port 1</c> are the same.
/// </summary>
internal sealed class NodeOptions
{
    /// <summary><c>--node</c>: the node's Akka address, or HOST:PORT.</summary>
    public Option<string?> Node { get; } = Recursive(CliOptions.Text("--node", "ADDRESS", "the node: akka.tcp://actorblk@HOST:PORT, or HOST:PORT"));

    /// <summary><c>--port</c>: the node's remoting port, on the host hocon.conf gives the node (else 127.0.0.1).</summary>
    public Option<int?> Port { get; } = Recursive(CliOptions.OptionalInt("--port", 1, 65535, "the node's remoting port (on the host hocon.conf gives the node, else 127.0.0.1)"));

    /// <summary><c>--config</c>: the node's hocon.conf, for its port, TLS settings and admin secret.</summary>
    public Option<string?> Config { get; } = Recursive(CliOptions.Text("--config", "PATH", "the node's hocon.conf: its port, TLS settings and admin secret"));

    /// <summary>Adds the three options to <paramref name="command"/>.</summary>
    public void AddTo(Command command)
    {
        command.Options.Add(Node);
        command.Options.Add(Port);
        command.Options.Add(Config);
    }

    /// <summary>The node's address from <c>--node</c>, <c>--port</c> or <c>--config</c> (see <see cref="NodeClient.AddressFrom"/>).</summary>
    /// <remarks>
    /// <c>--node HOST:PORT</c> becomes <c>akka.tcp://actorblk@HOST:PORT</c> (<c>akka.ssl.tcp</c>
    /// when the node configuration turns TLS on); a full address must parse as an Akka address.
    /// </remarks>
    /// <exception cref="UsageException"><c>--node</c> is neither.</exception>
    public string AddressFrom(ParseResult parse)
    {
        var text = parse.GetValue(Node);
        if (text is null)
        {
            return NodeClient.AddressFrom(parse.GetValue(Port), parse.GetValue(Config));
        }

        if (!text.Contains("://", StringComparison.Ordinal))
        {
            var tls = ConfigFrom(parse) is { } nodeConfig && ActorBlk.Actors.Serialization.ActorBlkRemoting.SslEnabled(nodeConfig);
            return $"{(tls ? "akka.ssl.tcp" : "akka.tcp")}://{NodeConfig.SystemName}@{NodeConfig.ParseEndpoint(text, "--node")}";
        }

        var address = text.TrimEnd('/');
        try
        {
            var parsed = Akka.Actor.Address.Parse(address);
            if (parsed.Host is null || parsed.Port is not (>= 1 and <= 65535))
            {
                throw new UriFormatException("no host or port");
            }
        }
        catch (Exception ex) when (ex is UriFormatException or FormatException or ArgumentException)
        {
            throw new UsageException($"option --node: '{text}' is not HOST:PORT or an address like akka.tcp://{NodeConfig.SystemName}@127.0.0.1:4053.");
        }

        return address;
    }

    /// <summary>The node configuration the client reads TLS settings and the admin secret from (see <see cref="NodeClient.ConfigFrom"/>).</summary>
    public Config? ConfigFrom(ParseResult parse) => NodeClient.ConfigFrom(parse.GetValue(Config));

    private static Option<T> Recursive<T>(Option<T> option)
    {
        option.Recursive = true;
        return option;
    }
}
