using ActorBlk.Actors;
using ActorBlk.Actors.Clustering;
using ActorBlk.Actors.Serialization;
using ActorBlk.Hardware.Devices;
using ActorBlk.Host.Commands;
using Akka.Actor;
using Akka.Configuration;
using AkkaCluster = Akka.Cluster.Cluster;

namespace ActorBlk.Host.Bench;

/// <summary>
/// <c>actorblk bench --join HOST:PORT --device NAME</c>: the bench joins the cluster as a member of
/// role <c>client</c> that owns no devices, waits until the registry shows <c>NAME</c>, and opens it
/// wherever it lives (<see cref="BlockLayer.OpenAsync(string, DeviceOptions?, CancellationToken)"/>):
/// another node's device is driven through a local queue on the NBD client driver.
/// </summary>
internal static class ClusterJoin
{
    /// <summary>How long joining and finding the device may take.</summary>
    public static readonly TimeSpan Patience = TimeSpan.FromSeconds(60);

    /// <summary>The role the bench joins with.</summary>
    public const string Role = "client";

    /// <summary>
    /// The node configuration (hocon.conf, or <paramref name="configPath"/>: the cluster's remoting,
    /// TLS and serializer settings) with the seed replaced by <paramref name="join"/>, an ephemeral
    /// port, the client role and no devices of its own.
    /// </summary>
    public static Config Config(string join, string? configPath, Config overrides)
    {
        var node = NodeConfig.AsClusterNode(NodeConfig.Load(configPath ?? NodeConfig.Locate(), port: 0, seeds: [NodeConfig.ParseEndpoint(join, "--join")]));
        ActorBlkRemoting.CheckSettings(node); // Akka's keys that ActorBlk reads, as serve checks them
        return overrides
            .WithFallback(ConfigurationFactory.ParseString($"""
                akka.cluster.roles = [{Role}]
                akka.cluster.log-info = off
                actorblk.devices = []
                actorblk.stacked-devices = []
                """))
            .WithFallback(node)
            // The library's defaults, for a --config that lacks them (the leave's patience with an
            // unreachable member among them: README, "Cluster").
            .WithFallback(ActorBlkSettings.DefaultConfig())
            // Gossip may arrive before anything touches Distributed Data: its serializer must be known from the start.
            .WithFallback(Akka.DistributedData.DistributedData.DefaultConfig());
    }

    /// <summary>
    /// Refuses a device address that cannot name a cluster device before anything starts: an
    /// empty name, or a node part (after <c>@</c>) that is not <c>HOST:PORT</c>. Without it a
    /// malformed address waited the full <see cref="Patience"/> for a device that cannot appear.
    /// </summary>
    /// <exception cref="UsageException">The address is malformed.</exception>
    public static void CheckDeviceAddress(string device)
    {
        ArgumentNullException.ThrowIfNull(device);
        var at = device.IndexOf('@', StringComparison.Ordinal);
        if (at == 0 || device.Length == 0)
        {
            throw new UsageException($"option --device: '{device}' is not NAME or NAME@HOST:PORT.");
        }

        if (at > 0)
        {
            NodeConfig.ParseEndpoint(device[(at + 1)..], "--device");
        }
    }

    /// <summary>Waits until this node is Up and the registry resolves <paramref name="name"/>, then opens it.</summary>
    /// <exception cref="CommandFailedException">The cluster or the device did not appear within <paramref name="within"/>, or it cannot be reached (no NBD export).</exception>
    /// <exception cref="UsageException">The name is ambiguous.</exception>
    public static async Task<ClusterBlockDevice> OpenAsync(ActorSystem system, string name, DeviceOptions template, TimeSpan within)
    {
        await WaitUpAsync(system, within).ConfigureAwait(false);
        var layer = BlockLayer.Get(system);
        using var wait = new CancellationTokenSource(within);
        try
        {
            await layer.ClusterDevices.WaitForAsync(devices => Resolves(devices, name), wait.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            throw new CommandFailedException(NotFound(system, name, within));
        }

        try
        {
            return await layer.OpenAsync(name, template).ConfigureAwait(false);
        }
        catch (AmbiguousClusterDeviceException ex)
        {
            throw new UsageException($"option --device: {ex.Message}");
        }
        catch (ClusterDeviceNotFoundException ex)
        {
            // Listed but not reachable (no NBD export): a failure (1), not a stack trace.
            throw new CommandFailedException($"option --device: {ex.Message}");
        }
    }

    /// <summary>Waits until this node is Up.</summary>
    /// <exception cref="CommandFailedException">It did not join within <paramref name="within"/>.</exception>
    public static async Task WaitUpAsync(ActorSystem system, TimeSpan within)
    {
        var cluster = AkkaCluster.Get(system);
        var up = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        cluster.RegisterOnMemberUp(() => up.TrySetResult());
        try
        {
            // Or until the system stops: Akka.Remote shuts it down when a TLS handshake with the
            // seed fails (another certificate, TLS on one side only), and the wait ran on for the
            // full patience with a message that did not say so (an outside TLS audit).
            // ActorBlk's transport turns the failure into an association failure before Akka's own
            // handshake, which a member retries; a client stops at the first.
            var tls = InboundConnectionCap.Of(system)?.FirstTlsFailure;
            var first = await Task.WhenAny(tls is null ? [up.Task, system.WhenTerminated] : [up.Task, system.WhenTerminated, tls]).WaitAsync(within).ConfigureAwait(false);
            if (first == tls && !up.Task.IsCompleted)
            {
                throw new CommandFailedException($"option --join: this node did not join the cluster: {await tls.ConfigureAwait(false)}.");
            }
        }
        catch (TimeoutException)
        {
            throw new CommandFailedException($"option --join: this node did not join the cluster within {within.TotalSeconds} s (is a node listening at {string.Join(", ", cluster.Settings.SeedNodes)}, with the same remoting and TLS settings as this node's --config, and the same admin secret: a node refuses a join that does not prove its admin secret?).");
        }

        if (!up.Task.IsCompleted)
        {
            throw new CommandFailedException(TlsShutdown.Reason(system) is { } tls
                ? $"option --join: this node did not join the cluster: {TlsShutdown.Explain(tls)}."
                : $"option --join: this node stopped before it joined the cluster (is a node listening at {string.Join(", ", cluster.Settings.SeedNodes)}?).");
        }
    }

    /// <summary>
    /// Why no device <paramref name="name"/> appeared, with the likely cause: the registry ignoring
    /// other nodes' entries signed with another admin secret, no other node in the cluster, or a
    /// name that matches none of the devices it shows.
    /// </summary>
    internal static string NotFound(ActorSystem system, string name, TimeSpan within)
    {
        var layer = BlockLayer.Get(system);
        var cluster = AkkaCluster.Get(system);
        var devices = layer.ClusterDevices.Snapshot;
        var text = $"option --device: no device {name} appeared in the cluster within {within.TotalSeconds} s; it has {(devices.Count == 0 ? "none" : string.Join(", ", devices.Select(d => d.Id)))}.";
        var secret = SecretSource(system.Settings.Config);
        if (layer.ClusterDevices.UnverifiedNodes is { Count: > 0 } unverified)
        {
            return $"{text} This node ignores the devices of {string.Join(", ", unverified)}: they are not signed with its admin secret ({secret}), so it most likely differs from the cluster's; use the nodes' --config (or the same admin secret).";
        }

        var others = cluster.State.Members.Where(m => !m.Address.Equals(cluster.SelfAddress) && !m.HasRole(Role)).Select(m => $"{m.Address.Host}:{m.Address.Port}").ToArray();
        if (others.Length == 0)
        {
            return $"{text} No node serving devices is a member of this cluster: check that --join names a node's remoting address (HOST:PORT).";
        }

        return devices.Count == 0
            ? $"{text} The cluster's node(s) {string.Join(", ", others)} show no device here: they serve none, or this node was refused (an admin secret ({secret}) or configuration that differs from theirs: use their --config)."
            : $"{text} Check --device (NAME or NAME@HOST:PORT).";
    }

    // Where this node's admin secret comes from, for the hint.
    private static string SecretSource(Config config)
    {
        if (config.GetString(Actors.Serialization.RemoteSurface.SecretKey, string.Empty).Length > 0)
        {
            return Actors.Serialization.RemoteSurface.SecretKey;
        }

        var file = config.GetString(Actors.Serialization.RemoteSurface.SecretFileKey, string.Empty);
        return file.Length > 0 ? $"{Actors.Serialization.RemoteSurface.SecretFileKey} = {file}" : $"none set: {Actors.Serialization.RemoteSurface.SecretKey}";
    }

    // True once the name matches a device (an ambiguous name matches: opening it then says so).
    private static bool Resolves(IReadOnlyList<ClusterDevice> devices, string name)
    {
        var at = name.IndexOf('@', StringComparison.Ordinal);
        return at >= 0 ? devices.Any(d => d.Id == name) : devices.Any(d => d.Name == name);
    }
}

/// <summary>Where the device of a <c>bench --join</c> run lives.</summary>
/// <param name="Device">The device's cluster id, <c>name@host:port</c>.</param>
/// <param name="Owner">The owner node, <c>host:port</c>.</param>
/// <param name="Remote">True when the device is another node's, driven over NBD.</param>
/// <param name="NbdEndpoint">The owner's NBD export of the device.</param>
/// <param name="LocalQueue">The local queue's name on the bench node.</param>
internal sealed record ClusterFigures(string Device, string Owner, bool Remote, string NbdEndpoint, string LocalQueue);
