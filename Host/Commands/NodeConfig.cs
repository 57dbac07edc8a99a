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

    /// <summary>
    /// Loads <paramref name="path"/>. A port override replaces the remoting port and, when it
    /// differs from the configured one, clears the seed list so the node joins itself once bound.
    /// </summary>
    public static Config Load(string path, int? port)
    {
        if (!File.Exists(path))
        {
            throw new UsageException($"configuration file '{path}' does not exist.");
        }

        Config config;
        try
        {
            config = ConfigurationFactory.ParseString(File.ReadAllText(path));
        }
        catch (Exception ex) when (ex is ConfigurationException or FormatException or InvalidOperationException)
        {
            throw new UsageException($"{path} is not valid HOCON: {ex.Message}");
        }

        if (port is { } p && p != config.GetInt("akka.remote.dot-netty.tcp.port", 4053))
        {
            config = ConfigurationFactory.ParseString($"akka.remote.dot-netty.tcp.port = {p}\nakka.cluster.seed-nodes = []").WithFallback(config);
        }

        return config;
    }
}
