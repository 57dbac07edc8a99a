using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Tags;
using ActorBlk.Hardware.Topology;
using ActorBlk.Testing;
using Akka.Actor;

namespace ActorBlk.Actors.Tests.Support;


/// <summary>
/// A data-plane queue wired for mailbox dispatch, whose software-context actors and hardware
/// queue dispatchers are each either the real actor or a probe supplied by the spec.
/// </summary>
public sealed class MailboxRig
{
    public MailboxRig(ScriptedDriver driver, CpuTopology topology, QueueOptions? options = null, int depth = 16, BlockClock? clock = null, int hardwareQueues = 1)
    {
        Driver = driver;
        TagSet = new TagSet(new TagSetOptions { QueueDepth = depth, Seed = 5, HardwareQueues = hardwareQueues }, topology, driver.InitRequest);
        Queue = new RequestQueue("rig0", TagSet, driver, options ?? new QueueOptions { MergePolicy = MergePolicy.Off }, clock);
        TagSet.AddQueue(Queue);
        Device = new BlockDevice(Queue);
    }

    public ScriptedDriver Driver { get; }

    public TagSet TagSet { get; }

    public RequestQueue Queue { get; }

    public BlockDevice Device { get; }

    public IActorRef[] Contexts { get; private set; } = [];

    public IActorRef[] Dispatchers { get; private set; } = [];

    internal MailboxRuntime Runtime { get; private set; } = null!;

    /// <summary>Starts the queue on mailbox dispatch with the given actors (a dispatcher per hardware queue).</summary>
    public void Start(IActorRef[] contexts, IActorRef[] dispatchers)
    {
        Contexts = contexts;
        Dispatchers = dispatchers;
        Runtime = new MailboxRuntime(contexts, dispatchers, TimeSpan.FromSeconds(5));
        Queue.Start(Runtime);
    }
}
