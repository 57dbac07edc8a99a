using ActorBlk.Actors.Serialization;
using Akka.Actor;
using Akka.Event;
using DataPlane = ActorBlk.Hardware.Queues;
using TopologySnapshot = ActorBlk.Hardware.Topology.CpuTopology;

namespace ActorBlk.Actors;

/// <summary>
/// Protocol of the CPU-topology actor: it holds the current topology snapshot and the request
/// queues registered against it, so that a change of CPUs can re-map every one of them.
/// </summary>
public static class CpuTopology
{
    /// <summary>Register a queue (reply <see cref="Registered"/>). Local only.</summary>
    public sealed record Register(DataPlane.RequestQueue Queue) : INoSerializationVerificationNeeded;

    /// <summary>The queue is registered against topology <paramref name="Version"/>.</summary>
    public sealed record Registered(string Queue, long Version) : IActorBlkMessage;

    /// <summary>Unregister a queue (reply <see cref="Unregistered"/>). Local only.</summary>
    public sealed record Unregister(DataPlane.RequestQueue Queue) : INoSerializationVerificationNeeded;

    /// <summary>The queue is no longer re-mapped.</summary>
    public sealed record Unregistered(string Queue) : IActorBlkMessage;

    /// <summary>Asks for the current topology.</summary>
    public sealed record GetTopology : IActorBlkQuery
    {
        /// <summary>The instance.</summary>
        public static readonly GetTopology Instance = new();
    }

    /// <summary>The topology, with CPU sets in the kernel's cpulist form.</summary>
    public sealed record TopologyInfo(long Version, string Source, int PossibleCpus, string Present, string Online, int NumaNodes, string[] Queues) : IActorBlkMessage;

    /// <summary>Props of the actor starting from <paramref name="initial"/>.</summary>
    public static Props Props(TopologySnapshot initial) => Akka.Actor.Props.Create(() => new CpuTopologyActor(initial));
}

/// <summary>The CPU-topology actor.</summary>
internal sealed class CpuTopologyActor : ReceiveActor
{
    private readonly ILoggingAdapter _log = Context.GetLogger();
    private readonly List<DataPlane.RequestQueue> _queues = [];
    private TopologySnapshot _topology;
    private long _version = 1;

    public CpuTopologyActor(TopologySnapshot initial)
    {
        _topology = initial;
        Receive<CpuTopology.Register>(HandleRegister);
        Receive<CpuTopology.Unregister>(HandleUnregister);
        Receive<CpuTopology.GetTopology>(_ => Sender.Tell(new CpuTopology.TopologyInfo(_version, _topology.Source, _topology.PossibleCount,
            _topology.Present.ToCpuListString(), _topology.Online.ToCpuListString(), _topology.NumaNodeCount, _queues.Select(q => q.Name).ToArray())));
    }

    protected override void PreStart() => _log.Info("CPU topology: {Topology}", _topology.Describe());

    private void HandleRegister(CpuTopology.Register register)
    {
        if (!_queues.Contains(register.Queue))
        {
            _queues.Add(register.Queue);
        }

        Sender.Tell(new CpuTopology.Registered(register.Queue.Name, _version));
    }

    private void HandleUnregister(CpuTopology.Unregister unregister)
    {
        _queues.Remove(unregister.Queue);
        Sender.Tell(new CpuTopology.Unregistered(unregister.Queue.Name));
    }
}
