using Akka.Configuration;

namespace ActorBlk.Actors.Tests.Support;

/// <summary>Actor-system configurations shared by the specs.</summary>
public static class Configs
{
    /// <summary>A simulated 4-CPU machine, quiet logging, over the library defaults.</summary>
    public static readonly Config Simulated = ConfigurationFactory.ParseString(SimulatedHocon).WithFallback(ActorBlkSettings.DefaultConfig());

    private const string SimulatedHocon = """
        akka.loglevel = WARNING
        akka.actor.serialize-messages = off
        actorblk {
          topology.source = simulated
          topology.simulated { cpus = 4, sockets = 2 }
          drain-timeout = 10s
        }
        """;

    /// <summary>Virtual time: the TestKit scheduler drives timers and request deadlines.</summary>
    public static readonly Config VirtualTime = ConfigurationFactory.ParseString("""
        akka.scheduler.implementation = "Akka.TestKit.TestScheduler, Akka.TestKit"
        actorblk.clock = scheduler
        """).WithFallback(Simulated);
}
