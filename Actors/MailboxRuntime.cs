using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;
using ActorBlk.Hardware.Topology;
using Akka.Actor;

namespace ActorBlk.Actors;

/// <summary>
/// Mailbox dispatch (<see cref="DispatchMode.Mailbox"/>): I/O arrives as messages. A bio goes to
/// its software-context actor (the bio itself is the message), which builds the request and
/// stages it in the hardware queue's ring; the first request staged on an idle queue sends one
/// <see cref="HardwareQueue.Run"/> to that queue's driver actor, which takes, issues and finishes
/// whole batches in its own mailbox turn. A redirected completion goes to the software-context
/// actor of the submitting CPU (the request itself is the message).
/// </summary>
/// <remarks>
/// Each hardware queue has one dispatcher at a time: its driver actor, or, while no driver actor
/// lives (the device is gone), its hardware-queue actor, which fails what is staged once the
/// device is offline and otherwise lets it wait for the reopened device's driver actor.
/// </remarks>
internal sealed class MailboxRuntime : IQueueRuntime
{
    // Depth of submissions run inline on this thread (see Submit): one level at most, so a bio that
    // completes within its submission and whose end-io submits again goes through the mailbox.
    [ThreadStatic]
    private static int t_inline;

    private readonly IActorRef[] _contexts;
    private readonly MailboxDispatcher?[] _threads;
    private readonly Slot[] _slots;
    private readonly TimeSpan _askTimeout;

    /// <summary>Creates the runtime.</summary>
    /// <param name="contexts">The software-context actors, by CPU.</param>
    /// <param name="dispatchers">The first dispatcher of each hardware queue, by index (its driver actor).</param>
    /// <param name="askTimeout">How long a quiesce waits for a dispatcher to answer.</param>
    /// <param name="threads">
    /// The per-CPU thread each software-context actor runs on, by CPU (null entries, or null, on
    /// Akka's default dispatcher): a bio submitted on its context's own thread is run there at once.
    /// </param>
    public MailboxRuntime(IActorRef[] contexts, IActorRef[] dispatchers, TimeSpan askTimeout, MailboxDispatcher?[]? threads = null)
    {
        _contexts = contexts;
        _threads = threads ?? new MailboxDispatcher?[contexts.Length];
        _slots = dispatchers.Select(d => new Slot(d)).ToArray();
        _askTimeout = askTimeout;
    }

    public DispatchMode Mode => DispatchMode.Mailbox;

    public void Attach(RequestQueue queue)
    {
    }

    // A bio submitted on the thread that runs its context actor (an end-io on that CPU submitting
    // the next I/O from a driver actor's turn) runs the submission path at once: that thread would
    // run the message next anyway, so the context stays served by one thread at a time and the
    // message is saved. Any other submitter sends the bio to the context actor.
    public void Submit(SoftwareContext ctx, Bio bio)
    {
        var cpu = ctx.Cpu;
        var thread = _threads[cpu];
        if (thread is null || t_inline != 0 || !thread.IsCurrentThread)
        {
            _contexts[cpu].Tell(bio);
            return;
        }

        t_inline = 1;
        thread.InlineSubmissions++;
        try
        {
            using var bind = CurrentCpu.Bind(cpu);
            ctx.Queue.SubmitBio(bio);
        }
        finally
        {
            t_inline = 0;
        }
    }

    public void ResumeBio(Bio bio) => _contexts[bio.Cpu].Tell(bio);

    // Staging is a publish to the hardware queue's ring (any thread may); only the first request
    // staged since the dispatcher's last turn costs a message.
    public void Stage(HardwareContext hctx, Request request)
    {
        hctx.Stage(request);
        Kick(hctx);
    }

    public void StageBatch(HardwareContext hctx, ReadOnlySpan<Request> requests)
    {
        foreach (var rq in requests)
        {
            hctx.Stage(rq);
        }

        Kick(hctx);
    }

    public void Kick(HardwareContext hctx)
    {
        var slot = _slots[hctx.Index];
        if (Interlocked.Exchange(ref slot.Scheduled, 1) == 0)
        {
            Volatile.Read(ref slot.Dispatcher).Tell(HardwareQueue.Run.Instance, ActorRefs.NoSender);
        }
    }

    public void DeliverCompletion(SoftwareContext target, Request request) => _contexts[target.Cpu].Tell(request);

    // A dispatcher runs a round within one message, so the answer to this one means no round is
    // in progress.
    public Task WaitDispatchIdleAsync(HardwareContext hctx) =>
        Volatile.Read(ref _slots[hctx.Index].Dispatcher).Ask<HardwareQueue.DispatchIdle>(HardwareQueue.WaitIdle.Instance, _askTimeout);

    public Task DetachAsync() => Task.CompletedTask;

    /// <summary>
    /// Called by the dispatcher of hardware queue <paramref name="index"/> at the start of its turn,
    /// before it takes a batch: a request staged from now on sends another <see cref="HardwareQueue.Run"/>.
    /// </summary>
    public void BeginTurn(int index) => Interlocked.Exchange(ref _slots[index].Scheduled, 0);

    /// <summary>True when <paramref name="actor"/> is the dispatcher of hardware queue <paramref name="index"/>.</summary>
    public bool IsDispatcher(int index, IActorRef actor) => Volatile.Read(ref _slots[index].Dispatcher).Equals(actor);

    /// <summary>
    /// Makes <paramref name="dispatcher"/> the dispatcher of hardware queue <paramref name="index"/>
    /// (the previous one is dead) and runs it.
    /// </summary>
    public void SetDispatcher(int index, IActorRef dispatcher)
    {
        var slot = _slots[index];
        Volatile.Write(ref slot.Dispatcher, dispatcher);
        Interlocked.Exchange(ref slot.Scheduled, 1);
        dispatcher.Tell(HardwareQueue.Run.Instance, ActorRefs.NoSender);
    }

    private sealed class Slot(IActorRef dispatcher)
    {
        public IActorRef Dispatcher = dispatcher;

        // 1 while a Run is on its way to the dispatcher (or it is in its turn before BeginTurn).
        public int Scheduled;
    }
}
