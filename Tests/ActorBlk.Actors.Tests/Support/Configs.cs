using Akka.Configuration;

namespace ActorBlk.Actors.Tests.Support;

/// <summary>Actor-system configurations shared by the specs.</summary>
public static class Configs
{
    /// <summary>A simulated 4-CPU machine, quiet logging, over the library defaults.</summary>
    public static readonly Config Simulated = ConfigurationFactory.ParseString(SimulatedHocon).WithFallback(ActorBlkSettings.DefaultConfig());

    // TestKit's 3 s defaults (an ExpectMsg or AwaitAssert without a limit, an EventFilter's
    // leeway) bound how long a spec waits for something to happen, not how fast it must be: on
    // a loaded two-core CI machine a hotplug remap or a reset across actors can take longer.
    private const string SimulatedHocon = """
        akka.loglevel = WARNING
        akka.test.single-expect-default = 20s
        akka.test.filter-leeway = 20s
        akka.actor.serialize-messages = off
        actorblk {
          topology.source = simulated
          topology.simulated { cpus = 4, sockets = 2 }
          drain-timeout = 10s
        }
        """;

    /// <summary>Virtual time: <see cref="VirtualScheduler"/> drives timers and request deadlines.</summary>
    public static readonly Config VirtualTime = ConfigurationFactory.ParseString("""
        akka.scheduler.implementation = "ActorBlk.Actors.Tests.Support.VirtualScheduler, ActorBlk.Actors.Tests"
        actorblk.clock = scheduler
        """).WithFallback(Simulated);
}
