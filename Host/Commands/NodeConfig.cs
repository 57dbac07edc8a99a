using Akka.Configuration;

namespace ActorBlk.Host.Commands;

/// <summary>Finds and loads the node configuration (hocon.conf).</summary>
internal static class NodeConfig
{
    /// <summary>The actor system name every node uses; it is part of every node address.</summary>
    public const string SystemName = "actorblk";

    /// <summary>The default configuration file name.</summary>
    public const string FileName = "hocon.conf";

    /// <summary>hocon.conf in the working directory, else the copy next to the executable.</summary>
    public static string Locate()
    {
        var local = Path.Combine(Environment.CurrentDirectory, FileName);
        if (File.Exists(local))
        {
            return local;
        }

        var shipped = Path.Combine(AppContext.BaseDirectory, FileName);
        return File.Exists(shipped) ? shipped : throw new UsageException($"no {FileName} in {Environment.CurrentDirectory} or {AppContext.BaseDirectory}; pass --config PATH.");
    }

    // How long a configuration may take to parse.
    private static readonly TimeSpan ParseLimit = TimeSpan.FromSeconds(20);

    /// <summary>
    /// Loads <paramref name="path"/>. A port override replaces the remoting port and, when no
    /// <paramref name="seeds"/> are given, clears the seed list so the node joins itself once
    /// bound, whatever port and seeds the file names (README: "without --seed, --port N makes a
    /// node that joins itself"). <paramref name="seeds"/> (<c>HOST:PORT</c> each)
    /// replace <c>akka.cluster.seed-nodes</c>; <paramref name="hostname"/> replaces the remoting
    /// hostname (the host part of the node's address).
    /// </summary>
    public static Config Load(string path, int? port, IReadOnlyList<string>? seeds = null, string? hostname = null)
    {
        ArgumentNullException.ThrowIfNull(path);
        if (!File.Exists(path))
        {
            throw new UsageException($"configuration file '{path}' {(Directory.Exists(path) ? "is a directory" : "does not exist")}.");
        }

        Config config;
        try
        {
            var text = File.ReadAllText(path);
            HoconBrackets.Check(text);

            // Akka's parser has looped for ever on malformed input (a '}' closing a '['): bounded,
            // so a node never hangs silently on its configuration.
            var parse = Task.Run(() => ConfigurationFactory.ParseString(text, IncludesFrom(Path.GetDirectoryName(Path.GetFullPath(path))!, depth: 0)));
            if (!((IAsyncResult)parse).AsyncWaitHandle.WaitOne(ParseLimit))
            {
                throw new ConfigurationException($"the parser did not finish within {ParseLimit.TotalSeconds:0} s (malformed input it does not report).");
            }

            config = parse.GetAwaiter().GetResult(); // the parser's own exception, unwrapped
            HoconBrackets.CheckCycles(config.Root);
        }
        catch (Exception ex) when (ex is ConfigurationException or FormatException or InvalidOperationException or NullReferenceException or IOException)
        {
            // Akka's parser throws a NullReferenceException for an include it has no callback for,
            // and for some malformed input: either way the file is what is wrong.
            // "Unresolved substitution: HOME": ${HOME} names a key, as Akka.NET reads HOCON.
            var hint = ex is FormatException && ex.Message.StartsWith("Unresolved substitution", StringComparison.Ordinal)
                ? " (a substitution names a key of the configuration: Akka.NET's HOCON parser reads no environment variables)"
                : string.Empty;
            throw new UsageException($"{path} is not valid HOCON: {ex.Message}{hint}");
        }

        if (hostname is not null)
        {
            config = ConfigurationFactory.ParseString($"akka.remote.dot-netty.tcp.hostname = {Quote(hostname)}").WithFallback(config);
        }

        if (seeds is { Count: > 0 })
        {
            var scheme = ActorBlk.Actors.Serialization.ActorBlkRemoting.SslEnabled(config) ? "akka.ssl.tcp" : "akka.tcp";
            var list = string.Join(", ", seeds.Select(s => Quote($"{scheme}://{SystemName}@{s}")));
            config = ConfigurationFactory.ParseString($"akka.cluster.seed-nodes = [{list}]").WithFallback(config);
        }

        // Before, only a port other than the file's cleared the seeds: a file naming its own port
        // and another node's seeds, with that same --port, joined that node's cluster in silence
        // (an outside audit).
        if (port is { } p)
        {
            var clear = seeds is { Count: > 0 } ? string.Empty : "\nakka.cluster.seed-nodes = []";
            config = ConfigurationFactory.ParseString($"akka.remote.dot-netty.tcp.port = {p}{clear}").WithFallback(config);
        }

        return config;
    }

    /// <summary>
    /// The configuration of a cluster node (<c>serve</c>, <c>bench --join</c>): a file without
    /// <c>akka.actor.provider</c> gets <c>cluster</c>, and one naming another provider is refused.
    /// A file written from scratch without the provider failed the start with Akka.Hosting's
    /// 40-line stack trace about ClusterSettings (an outside audit).
    /// </summary>
    /// <exception cref="UsageException">The file names a provider other than <c>cluster</c>.</exception>
    /// <exception cref="ConfigurationException">The provider is HOCON's null, a list or a section (it was taken for no provider).</exception>
    public static Config AsClusterNode(Config config)
    {
        ArgumentNullException.ThrowIfNull(config);
        var provider = ActorBlk.Actors.ActorBlkSettings.AkkaText(config, "akka.actor.provider", "cluster");
        if (string.IsNullOrWhiteSpace(provider))
        {
            return ConfigurationFactory.ParseString("akka.actor.provider = cluster").WithFallback(config);
        }

        return provider == "cluster" || provider.StartsWith("Akka.Cluster.ClusterActorRefProvider", StringComparison.Ordinal)
            ? config
            : throw new UsageException($"akka.actor.provider: '{provider}' is not cluster; an ActorBlk node is a cluster member (hocon.conf sets provider = cluster).");
    }

    /// <summary>
    /// Parses <c>--seed HOST:PORT[,HOST:PORT...]</c>: each a host name or IPv4 address (an IPv6
    /// address in brackets) and a port from 1 to 65535.
    /// </summary>
    public static IReadOnlyList<string> ParseSeeds(string text)
    {
        var seeds = new List<string>();
        foreach (var part in text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            seeds.Add(ParseEndpoint(part, "--seed"));
        }

        return seeds.Count > 0 ? seeds : throw new UsageException("option --seed: expected HOST:PORT[,HOST:PORT...].");
    }

    /// <summary>Checks one <c>HOST:PORT</c> and returns it.</summary>
    public static string ParseEndpoint(string text, string option)
    {
        var colon = text.LastIndexOf(':');
        if (colon <= 0 || !int.TryParse(text[(colon + 1)..], System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var port)
            || port is < 1 or > 65535 || !IsHostName(text[..colon]))
        {
            throw new UsageException($"option {option}: '{text}' is not HOST:PORT (a port from 1 to 65535).");
        }

        return text;
    }

    /// <summary>True for a host name, an IPv4 address, or an IPv6 address in brackets.</summary>
    public static bool IsHostName(string host) =>
        host.Length is > 0 and <= 253
        && (host.StartsWith('[') && host.EndsWith(']') && System.Net.IPAddress.TryParse(host[1..^1], out _)
            || host.All(c => char.IsAsciiLetterOrDigit(c) || c is '.' or '-'));

    private static string Quote(string text) => System.Text.Json.JsonSerializer.Serialize(text);

    // HOCON's include "FILE": the file, relative to the including file's directory, parsed with
    // the same rule for its own includes (at most 16 deep: a file that includes itself is refused).
    private static Func<string, Akka.Configuration.Hocon.HoconRoot> IncludesFrom(string directory, int depth) => name =>
    {
        if (depth >= 16)
        {
            throw new ConfigurationException($"include \"{name}\": includes nest more than 16 deep.");
        }

        var file = Path.GetFullPath(Path.Combine(directory, name.Trim().Trim('"')));
        if (!File.Exists(file))
        {
            throw new ConfigurationException($"include \"{name}\": {file} {(Directory.Exists(file) ? "is a directory" : "does not exist")}.");
        }

        var text = File.ReadAllText(file);
        try
        {
            HoconBrackets.Check(text);
        }
        catch (ConfigurationException ex)
        {
            throw new ConfigurationException($"include \"{name}\" ({file}): {ex.Message}");
        }

        return Akka.Configuration.Hocon.Parser.Parse(text, IncludesFrom(Path.GetDirectoryName(file)!, depth + 1));
    };
}
