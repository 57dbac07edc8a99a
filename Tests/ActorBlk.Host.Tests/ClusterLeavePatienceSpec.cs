using ActorBlk.Host.Bench;
using ActorBlk.Host.Tests.Support;
using Akka.Configuration;
using Xunit;

namespace ActorBlk.Host.Tests;

/// <summary>
/// README, "Cluster": a member that leaves while another is unreachable waits for the split-brain
/// resolver to down that one (leaving needs the members' agreement, which an unreachable member
/// blocks) instead of giving up and vanishing as a second unreachable member; with Akka's 10 s
/// an outside audit saw a crash and a bench client's exit make the resolver down every node of a
/// 3-node cluster (reachability kept changing past stable-after + down-all-when-unstable). The
/// wait must outlast the resolver's decision: the configurations `serve` and `bench --join` run
/// with give it more than stable-after + down-all-when-unstable.
/// </summary>
public sealed class ClusterLeavePatienceSpec
{
    [Fact]
    public void The_shipped_configuration_waits_for_the_resolver_before_a_leave_gives_up()
    {
        var shipped = ConfigurationFactory.ParseString(File.ReadAllText(RepositoryFiles.Hocon()))
            .WithFallback(Actors.ActorBlkSettings.DefaultConfig())
            .WithFallback(ConfigurationFactory.Default());
        AssertPatience(shipped);
    }

    [Fact]
    public void A_bench_client_waits_too_even_with_a_configuration_that_does_not_say()
    {
        // A --config holding only what the client needs to reach the cluster, none of hocon.conf's settings.
        var path = Path.Combine(Path.GetTempPath(), $"actorblk-leave-{Guid.NewGuid():N}.conf");
        File.WriteAllText(path, """
            akka.actor.provider = cluster
            akka.cluster.downing-provider-class = "Akka.Cluster.SBR.SplitBrainResolverProvider, Akka.Cluster"
            akka.cluster.split-brain-resolver.stable-after = 20s
            actorblk.allow-insecure-remoting = on
            """);
        try
        {
            var client = ClusterJoin.Config("127.0.0.1:4053", path, ConfigurationFactory.Empty)
                .WithFallback(ConfigurationFactory.Default());
            AssertPatience(client);
        }
        finally
        {
            File.Delete(path);
        }
    }

    private static void AssertPatience(Config config)
    {
        var stableAfter = config.GetTimeSpan("akka.cluster.split-brain-resolver.stable-after");
        var unstable = config.GetString("akka.cluster.split-brain-resolver.down-all-when-unstable", "on") switch
        {
            "on" => stableAfter * 3 / 4, // Akka's default: on, 3/4 of stable-after
            "off" => TimeSpan.Zero,
            _ => config.GetTimeSpan("akka.cluster.split-brain-resolver.down-all-when-unstable"),
        };
        var exiting = config.GetTimeSpan("akka.coordinated-shutdown.phases.cluster-exiting.timeout");
        Assert.Equal(TimeSpan.FromSeconds(20), stableAfter);
        Assert.True(exiting > stableAfter + unstable, $"cluster-exiting {exiting} is not longer than stable-after {stableAfter} + down-all-when-unstable {unstable}");
    }
}
